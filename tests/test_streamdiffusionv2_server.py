"""``streamdiffusionv2`` behind the real server, with aiortc peers: video in, video out.

The server's output is compared with an in-kernel stream of the same pipeline (same weights,
seed and prompt) fed the same frames. For that the server must take exactly the frames the test
feeds the kernel, chunk by chunk. A free-running camera cannot promise it: the server samples
whatever arrived since its previous chunk. :class:`ChunkPacedTrack` therefore sends the next
chunk's frames only once the server reports (``input_frames_used``) that it took the previous
chunk's, so the ring holds exactly one chunk's four frames whenever a chunk takes its input
(``take`` of four buffered frames takes all four, in order). Nothing depends on timing: the
track waits for the server's count, and the test checks afterwards that no input was dropped.
Output frames are compared on 8x8 block means, where the codec's loss (on the way in and out)
averages out and the picture stays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

import scope
from scope.streaming.paced import PacedVideoTrack
from scope.streaming.pattern import PatternTrack
from tests.conftest import wait_for_status
from tests.polling import wait_until
from tests.rtc import ScopeRtcClient, connected
from tests.test_longlive_server import blocks

pytestmark = pytest.mark.usefixtures("jp_serverapp")

PIPELINE = "streamdiffusionv2"
SMALL = {"height": 64, "width": 64}
PROMPT = "a watercolour harbour"
#: Input frames per chunk (one latent frame); output frames of the first chunk and of the others.
INPUT_PER_CHUNK, FIRST_OUTPUT, OUTPUT_PER_CHUNK = 4, 5, 4
CHUNKS = 6
#: Pixels the test input scrolls per frame: enough motion to saturate the noise controller
#: (RMSE between frames over 0.2), so the codec's loss on the input cannot move its noise scale.
SPEED = 6


@pytest.fixture
def scope_extra_config(synthetic_models):
    return {"models_dir": str(synthetic_models)}


@pytest.fixture(scope="module")
def kernel(synthetic_models):
    """The same pipeline loaded in this process (64x64, the default seed), for reference streams."""
    pipeline = scope.load_pipeline(PIPELINE, models_dir=synthetic_models, synthetic=True, **SMALL)
    yield pipeline
    pipeline.unload()


async def load(api, load_params: dict | None = None) -> dict:
    body = {"pipeline_id": PIPELINE, **({"load_params": load_params} if load_params is not None else {})}
    reply = await api("POST", "api/v1/pipeline/load", body)
    assert reply.status == 200, reply.body
    return await wait_for_status(api, "loaded", timeout=60)


async def session_info(api, session_id: str) -> dict:
    sessions = (await api("GET", "api/v1/webrtc/sessions")).json["sessions"]
    return next(s for s in sessions if s["id"] == session_id)


def moving_frame(index: int, height: int = 64, width: int = 64, *, vertical: bool = False) -> np.ndarray:
    """A smooth colour wave scrolling ``SPEED`` pixels a frame (sideways, or ``vertical``ly)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(float)
    along, across = (ys, xs) if vertical else (xs, ys)
    phase = 2 * np.pi * (along + SPEED * index) / 48
    red = 128 + 100 * np.sin(phase)
    green = 128 + 100 * np.cos(phase + across / 20)
    blue = np.full_like(xs, 64.0 if vertical else 192.0)
    return np.stack([red, green, blue], axis=-1).round().astype(np.uint8)


def moving_clip(count: int, **kwargs) -> np.ndarray:
    return np.stack([moving_frame(i, **kwargs) for i in range(count)])


class MovingTrack(PacedVideoTrack):
    """A free-running camera: :func:`moving_frame` at 30 fps."""

    def __init__(self, vertical: bool = False):
        super().__init__(30.0)
        self.vertical = vertical

    async def next_frame(self) -> np.ndarray:
        return moving_frame(self.index, vertical=self.vertical)


class ChunkPacedTrack(PacedVideoTrack):
    """Sends ``frames`` as fast as the server takes them, so each chunk takes exactly its four.

    An aiortc receiver hands a video frame on when the next frame's first packet arrives, so the
    server holds frames ``0..n-2`` after ``n`` were sent. Frame ``n`` (n >= 1) therefore goes out
    once every chunk before the one frame ``n-1`` belongs to has taken its input: the ring then
    fills with that chunk's four frames and no fifth. Frame 0 waits for the data channel to open,
    long after the offer set the session opening its stream (which empties the ring). The last
    frame only pushes the one before it out; after it the track sends nothing more.
    """

    def __init__(self, frames: np.ndarray, client: Callable[[], ScopeRtcClient], used: Callable[[], Awaitable[int]]):
        super().__init__(30.0)
        self.frames = frames
        self._client = client
        self._used = used

    async def next_frame(self) -> np.ndarray:
        n = self.index
        if n >= len(self.frames):
            await asyncio.Event().wait()  # done: stays silent until the connection closes
        if n == 0:
            await asyncio.wait_for(self._client().channel_open.wait(), 30)
        else:
            wanted = INPUT_PER_CHUNK * ((n - 1) // INPUT_PER_CHUNK)
            what = f"the server to take {wanted} input frames"
            await wait_until(lambda used: used >= wanted, 60, what, value=self._used)
        return self.frames[n]


def kernel_video(kernel, clip: np.ndarray, chunks: int) -> np.ndarray:
    """The in-kernel stream's frames for ``clip`` fed four frames a chunk, video-mode defaults."""
    stream = kernel.open_stream()
    try:
        out = [stream.generate(clip[:INPUT_PER_CHUNK], prompts=PROMPT).frames]
        for k in range(1, chunks):
            out.append(stream.generate(clip[k * INPUT_PER_CHUNK : (k + 1) * INPUT_PER_CHUNK]).frames)
    finally:
        stream.close()
    assert [len(f) for f in out] == [FIRST_OUTPUT] + [OUTPUT_PER_CHUNK] * (chunks - 1)
    return np.concatenate(out)


def kernel_text(kernel, chunks: int) -> np.ndarray:
    stream = kernel.open_stream()
    try:
        out = [stream.generate(prompts=PROMPT).frames for _ in range(chunks)]
    finally:
        stream.close()
    assert [len(f) for f in out] == [FIRST_OUTPUT] + [OUTPUT_PER_CHUNK] * (chunks - 1)
    return np.concatenate(out)


def block_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of the 8x8 block means, in grey levels."""
    return float(np.mean(np.abs(blocks(a) - blocks(b))))


def distances(received: list, expected: np.ndarray) -> list[float]:
    """Each received frame against the expected frame at the same position."""
    return [round(block_distance(f.array, e), 2) for f, e in zip(received, expected)]


def output_count(chunks: int) -> int:
    return FIRST_OUTPUT + OUTPUT_PER_CHUNK * (chunks - 1)


async def test_a_moving_pattern_comes_back_at_the_default_512x512(api):
    """Default load parameters: 512x512 frames, made from the peer's pattern in video mode."""
    status = await load(api)
    assert (status["load_params"]["height"], status["load_params"]["width"]) == (512, 512)
    async with connected(api, {"prompts": PROMPT}, send_track=PatternTrack(fps=15, width=512, height=512)) as client:
        # The first chunk's frames but its last, which the receiver holds until a next one comes.
        frames = await client.wait_frames(FIRST_OUTPUT - 1, timeout=120)
        assert {f.array.shape for f in frames} == {(512, 512, 3)}
        assert len({f.array.tobytes() for f in frames}) == len(frames), "every frame sent is a new one"
        info = await session_info(api, client.session_id)
    assert info["input_mode"] == "video", "the pipeline's default mode"
    assert (info["parameters"]["noise_scale"], info["parameters"]["noise_controller"]) == (0.7, True)
    stats = info["stats"]
    assert stats["chunk"] >= 1 and stats["input_frames_used"] >= INPUT_PER_CHUNK * stats["chunk"]
    buffered = stats["input_frames_received"] - stats["input_frames_used"] - stats["input_frames_dropped"]
    assert 0 <= buffered <= 30, stats


async def test_different_moving_inputs_give_different_pictures(api):
    """Same seed and prompt, two cameras showing different motion: the pictures differ clearly.

    Per frame of one session, the closest frame of the other is still far; within one session
    the frames also differ from one another (the input moves)."""
    await load(api, SMALL)
    params = {"prompts": PROMPT}
    async with (
        connected(api, params, send_track=MovingTrack()) as sideways,
        connected(api, params, send_track=MovingTrack(vertical=True)) as upwards,
    ):
        await sideways.wait_frames(24, timeout=90)
        await upwards.wait_frames(24, timeout=90)
    apart = [min(block_distance(f.array, g.array) for g in upwards.frames[4:24]) for f in sideways.frames[4:24]]
    # Measured about 20 levels apart; the codec moves block means by about 1.
    # Measured 6 to 12 levels apart; the codec's loss is under 2 (the next test).
    assert min(apart) > 3.0 and np.median(apart) > 5.0, f"different input gave the same pictures: {apart}"
    steps = [block_distance(a.array, b.array) for a, b in zip(sideways.frames[4:23], sideways.frames[5:24])]
    assert np.median(steps) > 1.0, f"the output does not move with the input: {steps}"


async def test_the_output_is_the_in_kernel_stream_fed_the_same_frames(api, kernel):
    """Each chunk takes exactly the frames the kernel is fed: the outputs match frame by frame,
    within the codec's loss, and stand far from what another input gives."""
    await load(api, SMALL)
    clip = moving_clip(INPUT_PER_CHUNK * CHUNKS + 2)  # one more to push the last one out, one for `late`
    client = ScopeRtcClient(api)

    async def used() -> int:
        return (await session_info(api, client.session_id))["stats"]["input_frames_used"]

    client.send_track = ChunkPacedTrack(clip[: INPUT_PER_CHUNK * CHUNKS + 1], lambda: client, used)
    await client.connect({"prompts": PROMPT})
    try:
        # The last output frame stays in the receiver until a next one comes (none does).
        received = await client.wait_frames(output_count(CHUNKS) - 1, timeout=90)
        stats = await wait_until(lambda s: s["chunk"] == CHUNKS, 30, f"{CHUNKS} chunks",
                                 value=lambda: _stats(api, client.session_id))
    finally:
        await client.close()
    assert (stats["input_frames_used"], stats["input_frames_dropped"]) == (INPUT_PER_CHUNK * CHUNKS, 0), stats

    expected = kernel_video(kernel, clip, CHUNKS)
    other = kernel_video(kernel, moving_clip(INPUT_PER_CHUNK * CHUNKS, vertical=True), CHUNKS)
    n = output_count(CHUNKS) - 1
    same, apart = distances(received[:n], expected), distances(received[:n], other)
    # Measured: under 2 levels from the kernel's frames, 15 and more from another input's.
    # What a server taking each chunk's frames one frame late would have sent.
    late = distances(received[:n], kernel_video(kernel, clip[1:], CHUNKS))
    # Measured: 1.2 to 1.6 levels from the kernel's frames (the output codec's loss), medians of
    # 5 from the late input's and 9 from the other input's.
    assert len(same) == n and max(same) < 3.0, f"the server's output is not the kernel's: {same}"
    assert np.median(late) > 2.5 * np.median(same), f"a one-frame-late input is as close: {late} vs {same}"
    assert np.median(apart) > 4 * np.median(same), f"another input's output is as close: {apart} vs {same}"


async def _stats(api, session_id: str) -> dict:
    return (await session_info(api, session_id))["stats"]


async def test_text_mode_streams_five_then_four_frames_a_chunk(api, kernel):
    """``input_mode: text`` without a camera: the in-kernel text stream, frame by frame (its first
    chunk five frames, then four), so the server's chunks are the kernel's."""
    await load(api, SMALL)
    chunks = 5
    async with connected(api, {"input_mode": "text", "prompts": PROMPT}, recvonly=True) as client:
        received = await client.wait_frames(output_count(chunks), timeout=90)
        info = await session_info(api, client.session_id)
    assert info["input_mode"] == "text"
    assert info["stats"]["input_frames_received"] == 0
    expected = kernel_text(kernel, chunks)
    same = distances(received[: len(expected)], expected)
    # Measured 1.1 to 2 levels (the codec's loss); one frame off, 6 and more.
    assert len(same) == len(expected) and max(same) < 3.0, f"the text stream is not the kernel's: {same}"
    shifted = distances(received[1 : len(expected)], expected)
    assert min(shifted) > 2 * max(same), f"frames one position off match as well: {shifted}"


async def test_a_receive_only_peer_without_an_input_mode_gets_text_mode(api):
    """The pipeline's default is video, but a ``recvonly`` offer has nothing to send: the session
    takes text mode and streams, instead of waiting for input forever. A peer that sends video
    still gets the default."""
    await load(api, SMALL)
    async with connected(api, {"prompts": PROMPT}, recvonly=True) as watcher:
        await watcher.wait_frames(FIRST_OUTPUT, timeout=90)
        assert (await session_info(api, watcher.session_id))["input_mode"] == "text"
    async with connected(api, {"prompts": PROMPT}, send_track=PatternTrack(width=64, height=64)) as sender:
        info = await session_info(api, sender.session_id)
    assert info["input_mode"] == "video"
