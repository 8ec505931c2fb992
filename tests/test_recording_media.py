"""Recording files written and read back with PyAV: timing, bit-exact input, and surviving SIGKILL."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from scope.client.recording import video_codec
from scope.recording.media import (
    BackgroundEncoder,
    LosslessInputReader,
    LosslessInputWriter,
    VideoWriter,
    probe,
)
from scope.streaming.pattern import pattern_frame
from tests.polling import wait_until_sync

REPO = Path(__file__).resolve().parents[1]
EXPECTED_CODEC = {"libx264": "h264", "mpeg4": "mpeg4"}[video_codec()]

#: Writes 48 frames of the moving test pattern (3 s at 16 fps) in chunks of 4, says so, then
#: waits to be killed. Smooth motion: no scene cut adds keyframes the writer did not ask for.
WRITE_THEN_WAIT = """
import os, sys, time
import numpy as np
from scope.recording.media import {writer}
from scope.streaming.pattern import pattern_frame
writer = {writer}(sys.argv[1], 64, 48, 16)
for start in range(0, 48, 4):
    writer.write(np.stack([pattern_frame(index, 64, 48) for index in range(start, start + 4)]))
with open(sys.argv[2] + ".tmp", "w") as ready:
    ready.write(str(writer.frames))
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
time.sleep(600)
"""


def write_then_kill(writer: str, path: Path) -> None:
    """Run WRITE_THEN_WAIT with ``writer`` into ``path`` and SIGKILL it before it closes the file."""
    ready = path.with_name(path.name + ".ready")
    process = subprocess.Popen(
        [sys.executable, "-c", WRITE_THEN_WAIT.format(writer=writer), str(path), str(ready)],
        cwd=REPO,
    )
    try:
        wait_until_sync(
            lambda: ready.exists() or process.poll() is not None, what=f"{writer} to write 48 frames"
        )
        assert process.poll() is None, f"the writing process exited early with {process.returncode}"
        assert ready.read_text() == "48"
    finally:
        process.kill()  # SIGKILL: no close, no trailer, no flush of anything still in memory
        process.wait()


def random_frames(count: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def frame_times(path: Path, fps: int) -> list[float]:
    """Each decoded frame's presentation time, in frames."""
    with av.open(str(path)) as container:
        return [frame.time * fps for frame in container.decode(video=0)]


def test_mp4_has_every_frame_at_its_index(tmp_path):
    path = tmp_path / "recording.mp4"
    writer = VideoWriter(path, 64, 48, 16)
    for chunk in np.split(random_frames(12, 64, 48), 3):
        writer.write(chunk)
    assert writer.frames == 12
    writer.close()
    writer.close()  # closing again is harmless

    info = probe(path)
    assert (info.frames, info.width, info.height, info.fps, info.codec) == (12, 64, 48, 16.0, EXPECTED_CODEC)
    assert info.duration_s == pytest.approx(0.75)
    assert frame_times(path, 16) == list(range(12))


def test_mp4_drops_an_odd_row_and_column_and_rejects_other_sizes(tmp_path):
    path = tmp_path / "odd.mp4"
    with VideoWriter(path, 65, 33, 30000 / 1001) as writer:
        with pytest.raises(ValueError, match=r"\(T, 33, 65, 3\)"):
            writer.write(random_frames(2, 64, 32))
        writer.write(random_frames(3, 65, 33))

    info = probe(path)
    assert (info.frames, info.width, info.height) == (3, 64, 32)
    assert info.fps == pytest.approx(29.97, abs=0.001)


def test_mp4_of_a_killed_process_keeps_all_but_the_last_second(tmp_path):
    path = tmp_path / "killed.mp4"
    write_then_kill("VideoWriter", path)

    # A keyframe each second closes a fragment: at least the first two seconds are on disk.
    info = probe(path)
    assert 32 <= info.frames <= 48, info
    assert (info.width, info.height, info.codec) == (64, 48, EXPECTED_CODEC)
    assert frame_times(path, 16) == list(range(info.frames))


@pytest.mark.parametrize("width, height", [(64, 48), (65, 33)])
def test_lossless_input_round_trips_bit_exact(tmp_path, width, height):
    frames = random_frames(12, width, height, seed=width)
    path = tmp_path / "input.mkv"
    with LosslessInputWriter(path, width, height, 16) as writer:
        writer.write(frames[:7])
        with pytest.raises(ValueError, match="uint8 frames of shape"):
            writer.write(frames[:2, :-1])
        writer.write(frames[7:])
        assert writer.frames == 12

    with LosslessInputReader(path) as reader:
        assert (reader.width, reader.height, reader.fps) == (width, height, 16.0)
        chunks = [reader.read(5), reader.read(3), reader.read(4)]
        with pytest.raises(EOFError, match="held 12 frames"):
            reader.read(1)
    assert [chunk.shape for chunk in chunks] == [(n, height, width, 3) for n in (5, 3, 4)]
    np.testing.assert_array_equal(np.concatenate(chunks), frames)

    with LosslessInputReader(path) as reader:
        reader.read(5)
        reader.read(3)
        with pytest.raises(EOFError, match="held 12 frames"):
            reader.read(5)  # four remain


def test_lossless_input_of_a_killed_process_is_bit_exact_up_to_the_kill(tmp_path):
    path = tmp_path / "killed.mkv"
    write_then_kill("LosslessInputWriter", path)

    expected = np.stack([pattern_frame(index, 64, 48) for index in range(48)])
    with LosslessInputReader(path) as reader:
        read = []
        try:
            while True:
                read.append(reader.read(1)[0])
        except EOFError:
            pass
    assert 24 <= len(read) <= 48
    np.testing.assert_array_equal(np.stack(read), expected[: len(read)])
    with av.open(str(path)) as container:  # each frame decodes on its own: a torn one costs only itself
        assert all(packet.is_keyframe for packet in container.demux(video=0) if packet.size)


class GatedWriter(VideoWriter):
    """A real writer whose writes wait for ``gate``: encoding that has fallen behind."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.writing, self.gate = threading.Event(), threading.Event()

    def write(self, frames):
        self.writing.set()
        assert self.gate.wait(60), "the test never opened the gate"
        super().write(frames)


def test_background_encoder_never_makes_the_caller_wait(tmp_path):
    writer = GatedWriter(tmp_path / "behind.mp4", 64, 48, 16)
    encoder = BackgroundEncoder(writer, "test-encoder", max_queued=2)
    chunks = np.split(random_frames(16, 64, 48), 4)
    encoder.put(chunks[0])
    wait_until_sync(writer.writing.is_set, what="the encoder to start writing")

    # The writer is stuck on the first chunk: two more are queued, the fourth is dropped.
    caller = threading.Thread(target=lambda: [encoder.put(chunk) for chunk in chunks[1:]])
    caller.start()
    caller.join(30)
    assert not caller.is_alive(), "put() waited for the writer"
    assert encoder.dropped == 4

    writer.gate.set()
    encoder.close(timeout=30)
    encoder.close(timeout=30)
    assert encoder.error is None
    assert probe(writer.path).frames == 12
    encoder.put(chunks[0])  # after close: counted, not written
    assert encoder.dropped == 8


class FailingWriter(VideoWriter):
    """A real writer whose second write fails, as a full disk would."""

    def write(self, frames):
        if self.frames:
            raise OSError("No space left on device")
        super().write(frames)


def test_background_encoder_reports_a_failed_write_and_still_closes(tmp_path):
    writer = FailingWriter(tmp_path / "failing.mp4", 64, 48, 16)
    encoder = BackgroundEncoder(writer, "test-encoder")
    for chunk in np.split(random_frames(12, 64, 48), 3):
        encoder.put(chunk)
    encoder.close(timeout=30)

    assert isinstance(encoder.error, OSError)
    assert encoder.dropped == 8
    encoder.put(random_frames(4, 64, 48))
    assert encoder.dropped == 12
    assert probe(writer.path).frames == 4  # what was written before the failure is a whole file
