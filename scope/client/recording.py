"""Received frames into an MP4 file, encoded as they arrive."""

from __future__ import annotations

import fractions
import functools
from dataclasses import dataclass
from pathlib import Path

import av

from scope.client.peer import ReceivedFrame

#: Timestamps in the file are milliseconds after the first frame's arrival.
TIME_BASE = fractions.Fraction(1, 1000)


@dataclass(frozen=True)
class RecordingInfo:
    """What was written: the file, its frame count, the measured frame rate and the size."""

    path: Path
    frames: int
    fps: float
    width: int
    height: int


@functools.cache
def video_codec() -> str:
    """H.264 where PyAV's FFmpeg has libx264, else MPEG-4 part 2 (always built in)."""
    try:
        av.codec.Codec("libx264", "w")
    except ValueError:  # UnknownCodecError
        return "mpeg4"
    return "libx264"


class Mp4Writer:
    """Encodes RGB frames with their arrival times (so the file plays at the pace they came)."""

    def __init__(self, path: str | Path, width: int, height: int, fps_hint: float = 30.0):
        self.path = Path(path)
        # yuv420p needs even sizes; an odd last row or column is dropped.
        self.width, self.height = width - width % 2, height - height % 2
        self.frames = 0
        self._first_at: float | None = None
        self._last_at = 0.0
        self._last_pts = -1
        self._container = av.open(str(self.path), "w", format="mp4")
        codec = video_codec()
        options = {"preset": "veryfast", "tune": "zerolatency"} if codec == "libx264" else {}
        self._stream = self._container.add_stream(codec, rate=max(1, round(fps_hint)), options=options)
        self._stream.width, self._stream.height, self._stream.pix_fmt = self.width, self.height, "yuv420p"
        self._stream.time_base = TIME_BASE
        self._stream.codec_context.time_base = TIME_BASE

    def accepts(self, frame: ReceivedFrame) -> bool:
        """Frames of another size (the pipeline was reloaded at a new size) are not written."""
        height, width = frame.array.shape[:2]
        return (width - width % 2, height - height % 2) == (self.width, self.height)

    def write(self, frame: ReceivedFrame) -> None:
        if self._first_at is None:
            self._first_at = frame.at
        pts = max(self._last_pts + 1, round((frame.at - self._first_at) * 1000))
        video = av.VideoFrame.from_ndarray(frame.array[: self.height, : self.width], format="rgb24")
        video.pts, video.time_base = pts, TIME_BASE
        for packet in self._stream.encode(video):
            self._container.mux(packet)
        self._last_pts, self._last_at = pts, frame.at
        self.frames += 1

    def close(self) -> RecordingInfo:
        """Flush the encoder and finish the file."""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        span = self._last_at - (self._first_at or 0.0)
        fps = (self.frames - 1) / span if self.frames > 1 and span > 0 else float(self._stream.average_rate or 0)
        return RecordingInfo(self.path, self.frames, fps, self.width, self.height)
