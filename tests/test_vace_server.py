"""VACE behind the real server: ``longlive`` loaded with ``vace_enabled`` on synthetic weights (64x64),
real aiortc peers, inputs named by the paths the assets endpoint returns.

The yardstick is the in-kernel stream: with the same seed and inputs, ``load_pipeline(...)
.open_stream().generate(...)`` makes the pictures a session must show, up to the codec's noise.
A session matching the in-kernel run with a reference (or control video) and far from the one
without shows the server passed that input through as it was sent.
"""

from __future__ import annotations

import asyncio
import io
import statistics
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import scope
from scope.models.artifacts import VACE as VACE_ARTIFACT
from tests.conftest import wait_for_status
from tests.polling import wait_until
from tests.rtc import ScopeRtcClient, connected
from tests.test_longlive_server import blocks, load
from tests.video_inputs import INPUT_LEADS, StillTrack, gradient

pytestmark = [pytest.mark.usefixtures("jp_serverapp", "one_thread"), pytest.mark.timeout(300)]

SIZE = {"height": 64, "width": 64, "seed": 3}
VACE = {**SIZE, "vace_enabled": True}
PROMPT = "a lighthouse in a storm"
#: A strong scale: the synthetic VACE layers move the first chunks' pictures far beyond the codec's noise.
STRONG = 2.0
#: The frames compared: the first two chunks (9 + 12), which the inputs condition most.
OPENING = 21
#: The VACE module's file, as the models directory holds it.
VACE_FILE = VACE_ARTIFACT.files[0]


@pytest.fixture
def scope_extra_config(request, synthetic_models, tmp_path):
    """The synthetic weights; with ``without_vace`` (indirect), a copy lacking the VACE module."""
    if getattr(request, "param", None) != "without_vace":
        return {"models_dir": str(synthetic_models)}
    models = tmp_path / "models-without-vace"
    for source in synthetic_models.rglob("*"):
        if source.is_file() and not source.name.startswith(VACE_FILE):
            target = models / source.relative_to(synthetic_models)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
    return {"models_dir": str(models)}


@pytest.fixture(scope="module")
def kernel(synthetic_models):
    """The same pipeline loaded in this process: the frames each session must show."""
    return scope.load_pipeline("longlive", models_dir=synthetic_models, **VACE)


def kernel_frames(pipeline, chunks: int = 2, video: np.ndarray | None = None, **first) -> list[np.ndarray]:
    """The frames of a fresh stream's first ``chunks`` chunks, ``first`` sent with the first."""
    stream = pipeline.open_stream()
    frames = []
    for index in range(chunks):
        updates = {"prompts": PROMPT, **first} if index == 0 else {}
        frames.extend(stream.generate(video, **updates).frames)
    stream.close()
    return frames


def nearest(frame: np.ndarray, candidates: list[np.ndarray]) -> float:
    """Block-mean distance to the closest candidate (the codec averages out, content stays)."""
    return min(float(np.mean((blocks(frame) - blocks(c)) ** 2)) for c in candidates)


def assert_shows(received, expected, instead, what: str) -> None:
    """The received opening frames are ``expected``'s (codec noise apart), not ``instead``'s."""
    arrays = [f.array for f in received[:OPENING]]
    near = [nearest(a, expected) for a in arrays]
    far = [nearest(a, instead) for a in arrays]
    # Measured medians: 2 to 5 from the frames meant (15 where the input track's coding adds its
    # own noise), 90 and more from the others.
    assert statistics.median(near) < 30.0, f"{what}: the frames are not the in-kernel ones: {near}"
    assert statistics.median(far) > 3 * statistics.median(near) + 20, f"{what}: indistinguishable: {near} {far}"


def png(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    return buffer.getvalue()


def halves(left=(255, 0, 0), right=(0, 0, 255), height: int = 48, width: int = 64) -> np.ndarray:
    """Two flat halves: a reference unlike anything the stream makes by itself."""
    picture = np.zeros((height, width, 3), np.uint8)
    picture[:, : width // 2] = left
    picture[:, width // 2 :] = right
    return picture


def mp4(frames: np.ndarray) -> bytes:
    """``frames`` (T, H, W, 3) as an H.264 mp4, written with PyAV."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def control_clip(count: int = 16) -> np.ndarray:
    """A white bar sweeping across black."""
    frames = np.zeros((count, 64, 64, 3), np.uint8)
    for index in range(count):
        left = index * 48 // count
        frames[index, :, left : left + 16] = 255
    return frames


async def upload(api, name: str, data: bytes) -> str:
    reply = await api("POST", f"api/v1/assets?filename={name}", body=data, headers={"Content-Type": "application/octet-stream"})
    assert reply.status == 200, reply.body
    return reply.json["path"]


async def opening(api, params: dict, **options) -> list:
    """The first frames of a session started with ``params`` (nothing refused on the way)."""
    async with connected(api, params, **options) as client:
        await client.wait_frames(OPENING, timeout=120)
        refused = [m for m in client.messages if m.get("type") in ("parameters_rejected", "stream_stopped")]
        refused += [m for m in client.messages if m.get("event") == "chunk_failed"]
        assert not refused, refused
        return list(client.frames)


async def test_reference_in_initial_parameters_conditions_the_opening_frames(api, kernel, scope_dirs):
    plain, referenced = kernel_frames(kernel), None
    ref = await upload(api, "reference.png", png(halves()))
    assert Path(ref).parent == scope_dirs["assets"]
    referenced = kernel_frames(kernel, vace_ref_images=[ref], vace_context_scale=STRONG)
    await load(api, VACE)
    with_ref = await opening(api, {"prompts": PROMPT, "vace_ref_images": [ref], "vace_context_scale": STRONG}, recvonly=True)
    assert_shows(with_ref, referenced, plain, "with the reference")
    without = await opening(api, {"prompts": PROMPT, "vace_context_scale": STRONG}, recvonly=True)
    assert_shows(without, plain, referenced, "without the reference")


async def test_data_channel_reference_conditions_the_next_chunk(api):
    """A twin session (same seed and prompt) is the yardstick; a relative name reads the asset too."""
    await upload(api, "reference.png", png(halves((0, 255, 0), (255, 0, 255))))
    await load(api, VACE)
    params = {"prompts": PROMPT, "vace_context_scale": STRONG}
    async with connected(api, params, recvonly=True) as twin, connected(api, params, recvonly=True) as client:
        await client.wait_frames(OPENING, timeout=120)
        await twin.wait_frames(OPENING, timeout=120)
        before = [nearest(f.array, [t.array for t in twin.frames]) for f in client.frames[:OPENING]]
        assert statistics.median(before) < 15.0, f"the twins differ before any reference: {before}"
        await asyncio.wait_for(client.channel_open.wait(), 10)

        async def parameters() -> dict:
            live = (await api("GET", "api/v1/webrtc/sessions")).json["sessions"]
            return next(s for s in live if s["id"] == client.session_id)

        chunk = (await parameters())["stats"]["chunk"]
        client.send({"vace_ref_images": ["reference.png"]})
        # One-shot: the next chunk takes it (and it is gone from the session's parameters).
        taken = await wait_until(lambda s: s["stats"]["chunk"] > chunk + 1, 60, "two chunks after the reference",
                                 value=parameters)
        assert "vace_ref_images" not in taken["parameters"], taken["parameters"]
        sent = len(client.frames)
        await client.wait_frames(sent + 30, timeout=120)
        await twin.wait_frames(len(twin.frames) + 30, timeout=120)
        twin_frames = [t.array for t in twin.frames]
        after = [nearest(f.array, twin_frames) for f in client.frames[sent : sent + 30]]
        # Measured: before, 0 to 6 apart; after, the conditioned frames are up to 180 from every twin frame.
        assert max(after) > 40.0 and max(after) > 4 * statistics.median(before), f"no chunk changed: {after}"
        assert not [m for m in client.messages if m.get("type") == "parameters_rejected" or m.get("event") == "chunk_failed"]


async def test_video_asset_plays_as_the_control_video(api, kernel):
    clip = control_clip()
    path = await upload(api, "sweep.mp4", mp4(clip))
    listed = (await api("GET", "api/v1/assets?type=video")).json["assets"]
    assert [(a["path"], a["type"]) for a in listed] == [(path, "video")]
    assert (await api("GET", "api/v1/assets?type=image")).json["assets"] == []
    plain = kernel_frames(kernel, vace_context_scale=STRONG)
    controlled = kernel_frames(kernel, vace_input_frames=path, vace_context_scale=STRONG)
    await load(api, VACE)
    received = await opening(api, {"prompts": PROMPT, "vace_input_frames": path, "vace_context_scale": STRONG}, recvonly=True)
    assert_shows(received, controlled, plain, "the video asset as control")


async def test_input_track_is_the_control_video_only_when_asked(api, kernel):
    picture = gradient(64, 64)
    await load(api, VACE)
    base = {"input_mode": "video", "prompts": PROMPT, "vace_context_scale": STRONG, **INPUT_LEADS}
    control = await opening(api, {**base, "vace_use_input_video": True}, send_track=StillTrack(picture))
    v2v = await opening(api, {**base, "vace_use_input_video": False}, send_track=StillTrack(picture))
    # In-kernel, the still as control (text-mode latents) and as video-to-video input.
    still = np.repeat(picture[None], 12, axis=0)
    as_control = kernel_frames(kernel, video=still, **{**base, "vace_use_input_video": True})
    as_input = kernel_frames(kernel, video=still, **base)
    assert_shows(control, as_control, as_input, "vace_use_input_video true")
    assert_shows(v2v, as_input, as_control, "vace_use_input_video false")


async def test_unreadable_assets_are_refused_naming_the_parameter_and_the_file(api, scope_dirs):
    (scope_dirs["assets"] / "broken.png").write_bytes(b"not a png")
    (scope_dirs["assets"] / "broken.mp4").write_bytes(b"not a video")
    (scope_dirs["assets"] / "good.png").write_bytes(png(halves()))
    await load(api, VACE)
    for params, loc, name in (
        ({"vace_ref_images": ["good.png", "broken.png"]}, ["vace_ref_images", 1], "broken.png"),
        ({"vace_input_frames": "broken.mp4"}, ["vace_input_frames"], "broken.mp4"),
        ({"vace_input_masks": "missing.png"}, ["vace_input_masks"], "missing.png"),
        ({"first_frame_image": "broken.mp4"}, ["first_frame_image"], "broken.mp4"),
    ):
        async with connected(api, {"prompts": PROMPT}, recvonly=True) as client:
            await client.wait_frames(3, timeout=60)
            await asyncio.wait_for(client.channel_open.wait(), 10)
            client.send(params)
            client.send({"prompts": "after the refusal"})  # held behind the read, applied after it
            rejected = await client.wait_message(lambda m: m.get("type") == "parameters_rejected", timeout=30)
            [error] = rejected["errors"]
            assert error["loc"] == loc and name in error["msg"], error

            async def prompt() -> str:
                live = (await api("GET", "api/v1/webrtc/sessions")).json["sessions"]
                return next(s for s in live if s["id"] == client.session_id)["parameters"]["prompts"][0]["text"]

            await wait_until(lambda text: text == "after the refusal", 30, "the next message applied", value=prompt)
        body = {"prompts": PROMPT, **params}
        reply = await ScopeRtcClient(api, recvonly=True).connect(body, expect_status=422)
        [error] = reply.json["detail"]
        assert error["loc"] == ["body", "initialParameters", *loc] and name in error["msg"], error
    async def listed() -> list:
        return (await api("GET", "api/v1/webrtc/sessions")).json["sessions"]

    await wait_until(lambda live: live == [], 30, "no session left (a refused offer opens none)", value=listed)


async def test_messages_after_one_naming_files_wait_for_its_read(api, scope_dirs, services, monkeypatch):
    """The files are read off the event loop; updates still apply in the order they were sent."""
    import threading

    from scope.streaming import session as session_module

    (scope_dirs["assets"] / "good.png").write_bytes(png(halves()))
    release, reads = threading.Event(), []

    def slow_read(*args, **kwargs):
        reads.append(args)
        assert release.wait(30), "never released"
        return session_module.unreadable_assets.__wrapped__(*args, **kwargs)

    slow_read.__wrapped__ = session_module.unreadable_assets
    monkeypatch.setattr(session_module, "unreadable_assets", slow_read)
    await load(api, VACE)
    async with connected(api, {"prompts": PROMPT}, recvonly=True) as client:
        await asyncio.wait_for(client.channel_open.wait(), 10)
        for message in ({"vace_input_frames": "good.png"}, {"vace_input_frames": None}, {"prompts": "last"}):
            client.send(message)
        session = services.sessions.sessions[client.session_id]

        def arrived() -> bool:  # held behind the read (or, wrongly, applied at once)
            return len(session._held or []) == 2 or session.parameters.snapshot()["prompts"][0]["text"] == "last"

        await wait_until(arrived, 30, "the two later messages")
        release.set()
        await wait_until(lambda: session._held is None, 30, "the read to end and what it held to be handled")
        assert len(reads) == 1 and session.parameters.snapshot().get("vace_input_frames") is None, "a later update must win"


@pytest.mark.parametrize(
    "params,loc",
    [
        ({"vace_ref_images": ["ref.png"]}, ["vace_ref_images"]),
        ({"vace_input_frames": "ref.png"}, ["vace_input_frames"]),
        ({"vace_input_masks": "ref.png"}, ["vace_input_masks"]),
        ({"first_frame_image": "ref.png"}, ["first_frame_image"]),
        ({"last_frame_image": "ref.png"}, ["last_frame_image"]),
    ],
)
async def test_vace_inputs_without_vace_loaded_are_refused_naming_the_field(api, scope_dirs, params, loc):
    (scope_dirs["assets"] / "ref.png").write_bytes(png(halves()))
    await load(api, SIZE)
    reply = await ScopeRtcClient(api, recvonly=True).connect({"prompts": PROMPT, **params}, expect_status=422)
    [error] = reply.json["detail"]
    assert error["loc"] == ["body", "initialParameters", *loc] and "vace_enabled" in error["msg"], error
    async with connected(api, {"prompts": PROMPT}, recvonly=True) as client:
        await asyncio.wait_for(client.channel_open.wait(), 10)
        client.send(params)
        rejected = await client.wait_message(lambda m: m.get("type") == "parameters_rejected", timeout=30)
        assert [e["loc"] for e in rejected["errors"]] == [loc], rejected
        await client.wait_frames(len(client.frames) + 5, timeout=60)


async def test_streamdiffusionv2_takes_vace_in_text_mode_only(api, scope_dirs):
    (scope_dirs["assets"] / "ref.png").write_bytes(png(halves()))
    await load(api, {**VACE}, "streamdiffusionv2")
    for params, loc in (
        ({"input_mode": "video", "vace_ref_images": ["ref.png"]}, ["vace_ref_images"]),
        ({"input_mode": "video", "vace_use_input_video": True}, ["vace_use_input_video"]),
        ({"vace_ref_images": ["ref.png"]}, ["vace_ref_images"]),  # a sent track: the default video mode
    ):
        reply = await ScopeRtcClient(api, send_track=StillTrack(gradient(64, 64))).connect(
            {"prompts": PROMPT, **params}, expect_status=422
        )
        locs = [e["loc"] for e in reply.json["detail"]]
        assert ["body", "initialParameters", *loc] in locs and "text mode only" in reply.json["detail"][0]["msg"], locs


@pytest.mark.parametrize("scope_extra_config", ["without_vace"], indirect=True)
async def test_vace_without_its_module_file_says_how_to_get_it(api):
    reply = await api("POST", "api/v1/pipeline/load", {"pipeline_id": "longlive", "load_params": VACE})
    assert reply.status == 200, reply.body
    status = await wait_for_status(api, "error")
    error = status["error"]
    assert "model files for longlive are missing" in error and VACE_FILE in error, error
    assert "download_models --pipeline longlive" in error and "--synthetic" in error, error
    # The same files load without VACE: only the module is missing.
    assert (await load(api, SIZE))["load_params"]["vace_enabled"] is False
