"""The client end of one Scope session's peer connection, without the HTTP signalling.

What the API expects of a peer: a ``parameters`` data channel (created by the client, before
the offer) and one video transceiver (``sendrecv`` with a track to send, else ``recvonly`` or
``sendrecv``). aiortc gathers its candidates before the offer is created, so no trickle is
needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from scope.streaming.host_addresses import drop_unreachable_candidates, install_from_env

MessageMatch = Callable[[dict], bool]


@dataclass
class ReceivedFrame:
    """A decoded frame (RGB uint8, H x W x 3) and when it arrived (``time.monotonic()``)."""

    array: np.ndarray
    at: float


class MessageInbox:
    """The server's JSON messages in arrival order, and a wait for one (every transport's peer)."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self._message_arrived = asyncio.Event()

    def _keep_message(self, raw: str | bytes) -> dict | None:
        """Keep a message (None: not a JSON object, which the API never sends)."""
        try:
            message = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(message, dict):
            return None
        self.messages.append(message)
        self._message_arrived.set()
        return message

    def _wake_waiters(self) -> None:
        """Let every wait look again (the connection ended: no message will come)."""
        self._message_arrived.set()

    async def wait_message(self, match: MessageMatch, timeout: float = 10.0, since: int = 0) -> dict:
        """The first message from index ``since`` on that ``match`` accepts; waits up to ``timeout``."""
        seen = since
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for message in self.messages[seen:]:
                        if match(message):
                            return message
                    seen = len(self.messages)
                    self._message_arrived.clear()
                    await self._message_arrived.wait()
        except TimeoutError:
            kinds = [m.get("type") for m in self.messages[since:]]
            raise TimeoutError(f"No matching message within {timeout} s; received: {kinds}") from None


class ScopePeer(MessageInbox):
    """Owns the ``RTCPeerConnection``: data channel, video transceiver, receive task, closing.

    ``on_frame`` is called with every :class:`ReceivedFrame`, ``on_ended`` once when the
    server's track ends. Data-channel messages are kept in ``messages`` in arrival order.
    """

    def __init__(
        self,
        send_track: MediaStreamTrack | None = None,
        *,
        recvonly: bool = False,
        ice_servers: Sequence[Mapping[str, Any]] = (),
        on_frame: Callable[[ReceivedFrame], None] | None = None,
        on_ended: Callable[[], None] | None = None,
    ):
        super().__init__()
        install_from_env()  # DAYDREAM_SCOPE_ICE_HOST_ADDRESSES restricts this process's candidates
        servers = [RTCIceServer(s["urls"], s.get("username"), s.get("credential")) for s in ice_servers]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers) if servers else None)
        self.channel = self.pc.createDataChannel("parameters", ordered=True)
        self.channel_open = asyncio.Event()
        self.connected = asyncio.Event()
        self._on_frame = on_frame
        self._on_ended = on_ended
        self._receiver: asyncio.Task | None = None
        self.channel.on("open", self.channel_open.set)
        self.channel.on("message", self._keep_message)
        self.pc.on("track", self._start_receiving)
        self.pc.on("connectionstatechange", self._note_state)
        if send_track is not None:
            self.pc.addTrack(send_track)
        else:
            self.pc.addTransceiver("video", direction="recvonly" if recvonly else "sendrecv")

    @property
    def connection_state(self) -> str:
        return self.pc.connectionState

    def _note_state(self) -> None:
        if self.pc.connectionState == "connected":
            self.connected.set()

    async def create_offer(self) -> dict[str, str]:
        """The local offer with every candidate in it: ``{"sdp", "type"}``."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}

    async def accept_answer(self, sdp: str, type: str = "answer") -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=drop_unreachable_candidates(sdp), type=type))

    def send(self, message: Mapping[str, Any]) -> None:
        """Send one JSON message on the ``parameters`` channel."""
        if self.channel.readyState != "open":
            raise RuntimeError(
                f"The parameters data channel is {self.channel.readyState}, not open: "
                "wait until the stream is connected (and not closed) before sending parameters."
            )
        self.channel.send(json.dumps(dict(message)))

    async def close(self) -> None:
        """Close the connection and stop receiving (safe to call twice)."""
        await self.pc.close()
        if self._receiver is not None:
            self._receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._receiver

    def _start_receiving(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and self._receiver is None:
            self._receiver = asyncio.ensure_future(self._receive(track))

    async def _receive(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            if self._on_frame is not None:
                self._on_frame(ReceivedFrame(frame.to_ndarray(format="rgb24"), time.monotonic()))
        if self._on_ended is not None:
            self._on_ended()
