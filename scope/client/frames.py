"""Received frames on their way to one reader."""

from __future__ import annotations

import asyncio
import collections

from scope.client.errors import StreamClosed
from scope.client.peer import ReceivedFrame


class FrameQueue:
    """Frames for one reader, oldest first.

    Bounded: when the reader falls behind the oldest frame is dropped (and counted), so a slow
    reader never holds up receiving and never sees stale video pile up.
    """

    def __init__(self, maxsize: int):
        self._frames: collections.deque[ReceivedFrame] = collections.deque(maxlen=max(1, maxsize))
        self._changed = asyncio.Event()
        self._closed: str | None = None
        self.dropped = 0

    def put(self, frame: ReceivedFrame) -> None:
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append(frame)
        self._changed.set()

    def close(self, reason: str) -> None:
        """No more frames will come; a reader waiting on an empty queue gets :class:`StreamClosed`."""
        self._closed = reason
        self._changed.set()

    async def get(self) -> ReceivedFrame:
        while not self._frames:
            if self._closed is not None:
                raise StreamClosed(self._closed)
            self._changed.clear()
            await self._changed.wait()
        return self._frames.popleft()
