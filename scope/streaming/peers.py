"""The other end of a session, whatever carries it: a WebRTC peer, a WebSocket, or nobody.

A :class:`~scope.streaming.session.StreamSession` generates, keeps parameters and records the
same way for every transport; what differs is how its messages and frames leave and how it
learns that the other end has gone. That part is a :class:`SessionPeer`.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiortc import RTCDataChannel, RTCPeerConnection

from scope.streaming.liveness import watch_peer
from scope.streaming.tracks import RateMeter

if TYPE_CHECKING:
    from scope.streaming.session import StreamSession

#: Seconds over which ``bytes_per_s`` is measured.
BYTE_RATE_WINDOW_S = 2.0


class ByteRate:
    """Bytes per second sent over the last :data:`BYTE_RATE_WINDOW_S` seconds."""

    def __init__(self, window: float = BYTE_RATE_WINDOW_S):
        self._window = window
        self._sent: collections.deque[tuple[float, int]] = collections.deque()
        self.total = 0

    def add(self, count: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._sent.append((now, count))
        self.total += count
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._sent and now - self._sent[0][0] > self._window:
            self._sent.popleft()

    @property
    def per_second(self) -> float:
        now = time.monotonic()
        self._trim(now)
        return round(sum(count for _, count in self._sent) / self._window, 1)


class SessionPeer:
    """What a session needs of its other end: send messages, report the connection, close."""

    #: The ``transport`` the session's stats report.
    transport = ""

    def __init__(self) -> None:
        self.session: StreamSession | None = None
        #: Output frames not sent because the link or reader was behind.
        self.link_frames_dropped = 0
        self.bytes = ByteRate()
        #: When output frames left (the ``fps`` a session reports is what reached its peer).
        self.sent = RateMeter(min_samples=2)

    def bind(self, session: StreamSession) -> None:
        self.session = session

    @property
    def connection_state(self) -> str:
        raise NotImplementedError

    @property
    def message_open(self) -> bool:
        """Messages sent now reach the other end (else the session keeps them until it opens)."""
        raise NotImplementedError

    @property
    def gone(self) -> bool:
        """The other end has closed or failed: nothing will reach it any more."""
        return self.connection_state in ("closed", "failed")

    def send_text(self, text: str) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        """Give messages just sent a moment to leave before the connection closes."""

    def liveness(self, timeout: float, on_gone: Callable[[float], None]) -> Coroutine[Any, Any, None] | None:
        """A task that calls ``on_gone`` once the other end has gone silently (None: no need)."""
        return None

    @property
    def frames_sent(self) -> int:
        raise NotImplementedError

    @property
    def bytes_per_s(self) -> float | None:
        return self.bytes.per_second

    @property
    def fps(self) -> float:
        return self.sent.fps or 0.0

    async def close(self) -> None:
        """Close the connection (the session has stopped everything else)."""


class WebRTCPeer(SessionPeer):
    """A browser or aiortc peer: RTP video, and the ``parameters`` data channel for messages."""

    transport = "webrtc"

    def __init__(self, pc: RTCPeerConnection):
        super().__init__()
        self.pc = pc
        self.channel: RTCDataChannel | None = None

    def attach_channel(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        session = self.session

        @channel.on("open")
        def _flush() -> None:
            session.flush_outbox()

        @channel.on("message")
        def _message(message: str | bytes) -> None:
            session.handle_message(message)

        if channel.readyState == "open":
            session.flush_outbox()

    @property
    def connection_state(self) -> str:
        return self.pc.connectionState

    @property
    def message_open(self) -> bool:
        return self.channel is not None and self.channel.readyState == "open"

    def send_text(self, text: str) -> None:
        self.channel.send(text)

    async def drain(self, timeout: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        await asyncio.sleep(0.05)
        while self.channel.bufferedAmount > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def liveness(self, timeout: float, on_gone: Callable[[float], None]):
        return watch_peer(self.pc, timeout, on_gone)

    @property
    def frames_sent(self) -> int:
        return self.session.track.frames_sent

    @property
    def fps(self) -> float:
        return self.session.track.sent.fps or 0.0  # aiortc's encoder takes every frame the track gives

    @property
    def bytes_per_s(self) -> float | None:
        return None  # aiortc's encoder decides; its RTP byte counts are not the session's to read

    async def close(self) -> None:
        await self.pc.close()
