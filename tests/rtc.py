"""An aiortc client for the Scope API, used by the streaming tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError


@dataclass
class ReceivedFrame:
    array: np.ndarray
    at: float


@dataclass
class ScopeRtcClient:
    """Offers, receives frames and data-channel messages; closes cleanly."""

    api: Any
    send_track: MediaStreamTrack | None = None
    recvonly: bool = False
    frames: list[ReceivedFrame] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    session_id: str | None = None

    async def connect(self, initial_parameters: dict | None = None, expect_status: int = 200):
        self.pc = RTCPeerConnection()
        self.channel = self.pc.createDataChannel("parameters", ordered=True)
        self.channel_open = asyncio.Event()
        self.channel.on("open", self.channel_open.set)
        self.channel.on("message", lambda m: self.messages.append(json.loads(m)))
        if self.send_track is not None:
            self.pc.addTrack(self.send_track)
        else:
            self.pc.addTransceiver("video", direction="recvonly" if self.recvonly else "sendrecv")
        self._reader: asyncio.Task | None = None

        @self.pc.on("track")
        def _on_track(track) -> None:
            self._reader = asyncio.ensure_future(self._read(track))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        if initial_parameters is not None:
            body["initialParameters"] = initial_parameters
        reply = await self.api("POST", "api/v1/webrtc/offer", body)
        if reply.status != expect_status:
            await self.pc.close()
            raise AssertionError(f"offer answered {reply.status}: {reply.body!r}")
        if reply.status != 200:
            await self.pc.close()
            return reply
        answer = reply.json
        self.session_id = answer["sessionId"]
        self.answer_sdp = answer["sdp"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return reply

    async def _read(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.frames.append(ReceivedFrame(frame.to_ndarray(format="rgb24"), time.monotonic()))

    def send(self, message: dict) -> None:
        self.channel.send(json.dumps(message))

    async def wait_frames(self, count: int, timeout: float = 20.0) -> list[ReceivedFrame]:
        deadline = time.monotonic() + timeout
        while len(self.frames) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"received {len(self.frames)} frames, wanted {count}")
            await asyncio.sleep(0.02)
        return self.frames

    async def wait_message(self, predicate, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching message in {self.messages}")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()


@contextlib.asynccontextmanager
async def connected(api: Any, initial_parameters: dict | None = None, **options: Any):
    """A connected :class:`ScopeRtcClient`, closed on the way out."""
    client = ScopeRtcClient(api, **options)
    await client.connect(initial_parameters)
    try:
        yield client
    finally:
        await client.close()
