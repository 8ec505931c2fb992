"""A video track that sends frames at a fixed rate, for sources that carry no timing of their own."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from aiortc import MediaStreamTrack
from av import VideoFrame

from scope.streaming.tracks import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE


class PacedVideoTrack(MediaStreamTrack):
    """Sends ``next_frame()`` every ``1 / fps`` seconds with 90 kHz timestamps.

    The schedule is fixed from the first frame on, so a late frame is followed by an early one
    and the rate holds on average.
    """

    kind = "video"

    def __init__(self, fps: float = 30.0):
        super().__init__()
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = fps
        self.index = 0
        self._start: float | None = None

    async def next_frame(self) -> VideoFrame | np.ndarray:
        """The frame to send as number ``self.index`` (an RGB uint8 array or a ``VideoFrame``)."""
        raise NotImplementedError

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self.index / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = await self.next_frame()
        if isinstance(frame, np.ndarray):
            frame = VideoFrame.from_ndarray(frame, format="rgb24")
        frame.pts = int(self.index * VIDEO_CLOCK_RATE / self.fps)
        frame.time_base = VIDEO_TIME_BASE
        self.index += 1
        return frame
