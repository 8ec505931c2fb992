"""Recording files: the generated video (H.264 MP4) and the consumed input (lossless FFV1 MKV).

Both writers flush every packet to disk as soon as the muxer lets go of it, so a process that is
killed (SIGKILL, power loss) leaves a readable file that lacks at most about a second. The
:class:`BackgroundEncoder` moves encoding onto its own thread, so neither the event loop nor the
device thread ever waits on it.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import av
import numpy as np

from scope.client.recording import video_codec

#: Fragmented MP4: a fragment (moof + mdat) is written at each keyframe, so everything up to the
#: last keyframe is readable without the index a clean close would write.
MP4_OPTIONS = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
#: RGB with a padding byte: FFV1 codes it losslessly (the only 8-bit RGB format it encodes here).
LOSSLESS_PIX_FMT = "bgr0"


def frame_rate(fps: float) -> Fraction:
    """The exact rate for ``fps`` (29.97 -> 30000/1001); the time base is its inverse."""
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return Fraction(fps).limit_denominator(1001)


def _checked(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Frames the writer can take: uint8 (T, height, width, 3), else a ValueError saying why."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (height, width, 3):
        raise ValueError(
            f"expected uint8 frames of shape (T, {height}, {width}, 3), "
            f"got {frames.dtype} {tuple(frames.shape)}"
        )
    return frames


class _FrameWriter:
    """What both writers share: one video stream in a container that flushes every packet,
    timestamps counting the frames written, size checks, and an idempotent close."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float, container_format: str, options: dict[str, str]):
        self.path = Path(path)
        self.width, self.height = width, height
        self.rate = frame_rate(fps)
        self.frames = 0
        self._closed = False
        self._container = av.open(str(self.path), "w", format=container_format, options=options)
        try:
            self._stream = self._add_stream()
            self._stream.time_base = 1 / self.rate
            self._stream.codec_context.time_base = 1 / self.rate
        except BaseException:
            self._container.close()
            raise

    def _add_stream(self):
        raise NotImplementedError

    def _video_frame(self, array: np.ndarray) -> av.VideoFrame:
        raise NotImplementedError

    def write(self, frames: np.ndarray) -> None:
        """Encode uint8 (T, H, W, 3) RGB frames of the writer's size."""
        if self._closed:
            raise ValueError(f"{self.path.name} is closed")
        for array in _checked(frames, self.width, self.height):
            video = self._video_frame(array)
            video.pts, video.time_base = self.frames, 1 / self.rate
            for packet in self._stream.encode(video):
                self._container.mux(packet)
            self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file; closing twice does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class VideoWriter(_FrameWriter):
    """Frames as generated into a fragmented H.264 MP4 (constant frame rate).

    A frame's timestamp is its index among the generated frames, not its arrival time: the file
    plays the output as the pipeline made it, whatever pace it was delivered at.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float):
        # yuv420p needs even sizes; an odd last row or column is dropped.
        self.encoded_width, self.encoded_height = width - width % 2, height - height % 2
        self._gop = max(1, round(fps))  # a keyframe, hence a fragment, at least every second
        super().__init__(path, width, height, fps, "mp4", MP4_OPTIONS)

    def _add_stream(self):
        codec = video_codec()
        if codec == "libx264":
            # No B-frames: a fragmented MP4 has no edit list to hide their decoding delay,
            # so the first frame would not start at 0. Few threads: each one holds back a
            # frame, and held-back frames are what a killed process loses.
            options = {"crf": "18", "preset": "veryfast", "bf": "0", "threads": "2"}
        else:
            options = {"qscale": "3", "flags": "+qscale"}
        stream = self._container.add_stream(codec, rate=self.rate, options=options)
        stream.width, stream.height = self.encoded_width, self.encoded_height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = self._gop
        return stream

    def _video_frame(self, array: np.ndarray) -> av.VideoFrame:
        cropped = np.ascontiguousarray(array[: self.encoded_height, : self.encoded_width])
        return av.VideoFrame.from_ndarray(cropped, format="rgb24")


class LosslessInputWriter(_FrameWriter):
    """The input frames a video-mode session consumed, bit-exact (FFV1 in Matroska), so a render can replay them.

    Every frame is a keyframe (FFV1 otherwise carries its coder state from frame to frame), so
    each one decodes on its own and a killed process loses only the frames not yet on disk.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float):
        super().__init__(path, width, height, fps, "matroska", {"flush_packets": "1"})

    def _add_stream(self):
        # Level 3 with slice CRCs: a damaged frame is detected rather than decoded as garbage.
        stream = self._container.add_stream("ffv1", rate=self.rate, options={"level": "3", "slicecrc": "1"})
        stream.width, stream.height = self.width, self.height
        stream.pix_fmt = LOSSLESS_PIX_FMT
        stream.codec_context.gop_size = 1
        return stream

    def _video_frame(self, array: np.ndarray) -> av.VideoFrame:
        rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
        return rgb.reformat(format=LOSSLESS_PIX_FMT)  # a byte shuffle: nothing is lost


class LosslessInputReader:
    """Reads back what :class:`LosslessInputWriter` wrote, in chunks of any size."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._container = av.open(str(self.path), "r")
        try:
            stream = self._container.streams.video[0]
        except IndexError:
            self._container.close()
            raise ValueError(f"{self.path.name} holds no video stream") from None
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        self.fps = float(stream.average_rate or stream.guessed_rate or 0)
        self.frames = 0  # frames read so far
        self._decoded = self._container.decode(stream)

    def read(self, count: int) -> np.ndarray:
        """The next ``count`` frames, uint8 (count, H, W, 3) RGB; EOFError when fewer remain."""
        if count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        chunk = np.empty((count, self.height, self.width, 3), dtype=np.uint8)
        for index in range(count):
            frame = next(self._decoded, None)
            if frame is None:
                raise EOFError(
                    f"{self.path.name} held {self.frames} frames; "
                    f"asked for {count} with {index} left"
                )
            chunk[index] = frame.to_ndarray(format="rgb24")
            self.frames += 1
        return chunk

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> LosslessInputReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Writer(Protocol):
    def write(self, frames: np.ndarray) -> None: ...

    def close(self) -> None: ...


class BackgroundEncoder:
    """Runs a writer's write/close on its own thread, so the caller (event loop, device thread) never waits on encoding.

    When encoding falls behind by ``max_queued`` chunks, new chunks are dropped and counted
    rather than making the caller wait: a live stream matters more than its recording.
    """

    def __init__(self, writer: Writer, name: str, max_queued: int = 64):
        self.writer = writer
        self.max_queued = max_queued
        self.error: BaseException | None = None
        self.dropped = 0  # frames not written: the queue was full, the writer failed or was closed
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._changed = threading.Condition()
        self._closing = False
        # A daemon: a caller that never closes must not keep the process alive.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, frames: np.ndarray) -> None:
        """Queue uint8 (T, H, W, 3) frames; the caller must not modify them afterwards."""
        with self._changed:
            if self._closing or self.error is not None or len(self._queue) >= self.max_queued:
                self.dropped += len(frames)
                return
            self._queue.append(frames)
            self._changed.notify()

    def close(self, timeout: float | None = None) -> None:
        """Wait for everything queued to be written, then close the writer; idempotent.

        Raises TimeoutError when the writer is still busy after ``timeout`` seconds.
        """
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"{self._thread.name} still encoding after {timeout} s")

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    break
                frames = self._queue.popleft()
            if self.error is None:
                try:
                    self.writer.write(frames)
                    continue
                except BaseException as error:  # noqa: BLE001 - kept for the owner to report
                    self.error = error
            with self._changed:
                self.dropped += len(frames)
        try:
            self.writer.close()
        except BaseException as error:  # noqa: BLE001
            if self.error is None:
                self.error = error


@dataclass(frozen=True)
class MediaInfo:
    """What a media file holds, counted by decoding it (a killed recording has no index to trust)."""

    frames: int
    width: int
    height: int
    fps: float
    codec: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0


def probe(path: str | Path) -> MediaInfo:
    """Decode the first video stream of ``path`` and describe it."""
    with av.open(str(path), "r") as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        rate = stream.average_rate or stream.guessed_rate or 0
        return MediaInfo(
            frames=frames,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(rate),
            codec=stream.codec_context.name,
        )
