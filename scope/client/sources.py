"""Video to send into a stream: a looping file, looping arrays, the test pattern."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Union

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from scope.streaming.paced import PacedVideoTrack
from scope.streaming.pattern import PatternTrack
from scope.streaming.tracks import DEFAULT_FPS, clamp_fps

#: What ``ScopeClient.stream(input=...)`` accepts.
StreamInput = Union[None, str, Path, np.ndarray, Iterable[np.ndarray], MediaStreamTrack]


class ArrayTrack(PacedVideoTrack):
    """Sends RGB uint8 frames (``(N, H, W, 3)``, or a list of ``(H, W, 3)``) in a loop at ``fps``."""

    def __init__(self, frames: np.ndarray | Iterable[np.ndarray], fps: float = DEFAULT_FPS):
        super().__init__(fps)
        self.frames = as_frame_list(frames)

    async def next_frame(self) -> np.ndarray:
        return self.frames[self.index % len(self.frames)]


def as_frame_list(frames: np.ndarray | Iterable[np.ndarray]) -> list[np.ndarray]:
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = frames[None]
    listed = [np.asarray(frame) for frame in frames]
    if not listed:
        raise ValueError("no frames to send")
    for frame in listed:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames must be RGB uint8 arrays of shape (H, W, 3), got {frame.dtype} {frame.shape}")
    return listed


class VideoFileTrack(PacedVideoTrack):
    """Sends a video file's frames in a loop at the file's frame rate (decoded off the event loop)."""

    def __init__(self, path: str | Path, fps: float | None = None):
        self.path = Path(path)
        self._container = av.open(str(self.path))
        if not self._container.streams.video:
            self._container.close()
            raise ValueError(f"{self.path} has no video stream")
        stream = self._container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        super().__init__(fps or clamp_fps(float(rate) if rate else DEFAULT_FPS))
        self._lock = threading.Lock()
        self._closed = False
        self._frames = self._decode()

    def _decode(self):
        return self._container.decode(self._container.streams.video[0])

    def _next(self) -> av.VideoFrame:
        with self._lock:
            if self._closed:
                raise MediaStreamError
            for attempt in range(2):
                try:
                    return next(self._frames)
                except StopIteration:
                    if attempt:
                        break
                    self._container.seek(0)
                    self._frames = self._decode()
            raise ValueError(f"{self.path} has no frames to decode")

    async def next_frame(self) -> av.VideoFrame:
        return await asyncio.to_thread(self._next)

    def stop(self) -> None:
        super().stop()
        with self._lock:
            self._closed = True
            self._container.close()


def input_track(source: StreamInput) -> tuple[MediaStreamTrack | None, bool]:
    """The track to send for ``source``, and whether it was made here (then the stream stops it)."""
    if source is None:
        return None, False
    if isinstance(source, MediaStreamTrack):
        return source, False
    if isinstance(source, str) and source == "pattern":
        return PatternTrack(), True
    if isinstance(source, (str, Path)):
        return VideoFileTrack(source), True
    return ArrayTrack(source), True
