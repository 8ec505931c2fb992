"""The headless session's peer: nobody at the other end, so the output is kept and handed out.

The session runs exactly as if a client watched it: its output track paces the frames, and this
peer takes each one as it is due. The newest frame answers ``GET /session/frame``; every reader
of ``GET /session/output.ts`` gets each frame through a short queue of its own, so a slow reader
loses frames instead of holding the server's memory or slowing anyone else.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import AsyncIterator

import numpy as np
from aiortc.mediastreams import MediaStreamError

from scope.streaming.frame_codecs import TsMuxer
from scope.streaming.peers import SessionPeer

logger = logging.getLogger(__name__)

#: Frames an output.ts reader may fall behind by before frames are dropped for it.
READER_QUEUE_FRAMES = 8
#: Messages other than ``stats`` the session keeps for ``/session/metrics``.
EVENTS_KEPT = 20


class TsReader:
    """One ``output.ts`` reader: frames wait in a short queue for its own MPEG-TS muxer."""

    def __init__(self, capacity: int = READER_QUEUE_FRAMES):
        self._frames: asyncio.Queue[tuple[np.ndarray, int] | None] = asyncio.Queue(capacity)
        self.ended = False

    def offer(self, array: np.ndarray, pts: int) -> bool:
        """Queue a frame; False when the reader is too far behind to take it."""
        try:
            self._frames.put_nowait((array, pts))
        except asyncio.QueueFull:
            return False
        return True

    def end(self) -> None:
        """The session ended: the stream finishes after the frames already queued."""
        self.ended = True
        while True:
            try:
                self._frames.put_nowait(None)
                return
            except asyncio.QueueFull:
                self._frames.get_nowait()  # the end matters more than the stalest frame

    async def chunks(self) -> AsyncIterator[bytes]:
        """MPEG-TS bytes as frames are muxed (encoding runs off the event loop)."""
        written: list[bytes] = []
        muxer: TsMuxer | None = None
        try:
            while (item := await self._frames.get()) is not None:
                if muxer is None:
                    muxer = await asyncio.to_thread(TsMuxer, written.append)
                await asyncio.to_thread(muxer.add, *item)
                if written:
                    data = b"".join(written)
                    written.clear()
                    yield data
        finally:
            if muxer is not None:
                await asyncio.to_thread(muxer.close)
        if written:
            yield b"".join(written)


class HeadlessPeer(SessionPeer):
    """Keeps the session's newest frame and recent events, and feeds ``output.ts`` readers."""

    transport = "headless"

    def __init__(self) -> None:
        super().__init__()
        self._state = "connected"
        self._taken = 0
        #: The newest output frame (uint8 RGB), None before the first.
        self.latest: np.ndarray | None = None
        #: The session's recent messages other than ``stats``, oldest first.
        self.events: collections.deque[dict] = collections.deque(maxlen=EVENTS_KEPT)
        self._readers: set[TsReader] = set()

    @property
    def connection_state(self) -> str:
        return self._state

    @property
    def message_open(self) -> bool:
        return self._state == "connected"

    def send_text(self, text: str) -> None:
        message = json.loads(text)
        if message.get("type") != "stats":
            self.events.append(message)

    @property
    def frames_sent(self) -> int:
        return self._taken

    def start_output(self) -> None:
        self.session.spawn_task(self._take_output(), "output")

    async def _take_output(self) -> None:
        track = self.session.track
        while True:
            try:
                array, pts = await track.next_array()
            except MediaStreamError:
                return
            self.latest = array
            self._taken += 1
            self.sent.tick()
            for reader in list(self._readers):
                if not reader.offer(array, pts):
                    self.link_frames_dropped += 1

    def open_reader(self) -> TsReader:
        reader = TsReader()
        if self._state != "connected":
            reader.end()
        else:
            self._readers.add(reader)
        return reader

    def close_reader(self, reader: TsReader) -> None:
        self._readers.discard(reader)

    async def close(self) -> None:
        self._state = "closed"
        for reader in self._readers:
            reader.end()
        self._readers.clear()
