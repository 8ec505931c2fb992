"""An aiortc client for the Scope API, used by the streaming tests.

The peer connection is the Python client's own (:class:`scope.client.peer.ScopePeer`); this
module adds signalling through the tests' in-process ``api`` fixture, which answers any status
instead of raising, and keeps every received frame for the assertions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection

from scope.client.peer import ReceivedFrame, ScopePeer
from tests.polling import wait_until

__all__ = ["ReceivedFrame", "ScopeRtcClient", "connected", "cut_network"]


@dataclass
class ScopeRtcClient:
    """Offers, receives frames and data-channel messages; closes cleanly."""

    api: Any
    send_track: MediaStreamTrack | None = None
    recvonly: bool = False
    #: More fields of the offer's body beside ``sdp`` and ``type`` (``pipeline_id``, ``load_params``).
    offer_fields: dict[str, Any] = field(default_factory=dict)
    frames: list[ReceivedFrame] = field(default_factory=list)
    session_id: str | None = None
    peer: ScopePeer | None = None

    @property
    def pc(self):
        return self.peer.pc

    @property
    def channel_open(self) -> asyncio.Event:
        return self.peer.channel_open

    @property
    def messages(self) -> list[dict]:
        return self.peer.messages if self.peer is not None else []

    async def connect(self, initial_parameters: dict | None = None, expect_status: int = 200):
        self.peer = ScopePeer(self.send_track, recvonly=self.recvonly, on_frame=self.frames.append)
        body = {**await self.peer.create_offer(), **self.offer_fields}
        if initial_parameters is not None:
            body["initialParameters"] = initial_parameters
        reply = await self.api("POST", "api/v1/webrtc/offer", body)
        if reply.status != expect_status:
            await self.peer.close()
            raise AssertionError(f"offer answered {reply.status}: {reply.body!r}")
        if reply.status != 200:
            await self.peer.close()
            return reply
        answer = reply.json
        self.session_id = answer["sessionId"]
        self.answer_sdp = answer["sdp"]
        await self.peer.accept_answer(answer["sdp"], answer["type"])
        return reply

    def send(self, message: dict) -> None:
        self.peer.send(message)

    async def wait_frames(self, count: int, timeout: float = 30.0) -> list[ReceivedFrame]:
        await wait_until(lambda n: n >= count, timeout, f"{count} received frames", value=lambda: len(self.frames))
        return self.frames

    async def wait_message(self, predicate, timeout: float = 30.0) -> dict:
        """The first message so far (or to come) that ``predicate`` accepts."""
        return await self.peer.wait_message(predicate, timeout)

    async def close(self) -> None:
        await self.peer.close()


@contextlib.asynccontextmanager
async def connected(api: Any, initial_parameters: dict | None = None, **options: Any):
    """A connected :class:`ScopeRtcClient`, closed on the way out."""
    client = ScopeRtcClient(api, **options)
    await client.connect(initial_parameters)
    try:
        yield client
    finally:
        await client.close()


async def cut_network(pc: RTCPeerConnection) -> None:
    """Close the peer's ICE sockets: it falls silent as a killed process or a pulled cable would,
    without the DTLS close or SCTP abort a clean ``close()`` sends."""
    transports = {t.receiver.transport.transport for t in pc.getTransceivers()}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport.transport)
    for ice in transports:
        await ice.stop()
