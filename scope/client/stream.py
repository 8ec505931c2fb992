"""``ScopeStream``: one session of a loaded pipeline, read, steered and recorded from Python.

The session travels over WebRTC or over one WebSocket (:mod:`scope.client.ws_peer`, for networks
that carry no UDP); everything else is the same on both. Everything here runs on the caller's
event loop (a notebook cell's ``await`` works); REST calls run in a worker thread so they never
stall the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import httpx
import numpy as np

from scope.client.auth import is_loopback
from scope.client.errors import ScopeApiError, StreamClosed
from scope.client.frames import FrameQueue
from scope.client.parameters import wire_parameters
from scope.client.peer import ReceivedFrame, ScopePeer
from scope.client.pipelines import PipelineTarget
from scope.client.recording import Mp4Writer, RecordingInfo
from scope.client.sources import StreamInput, input_track
from scope.client.ws_peer import WebSocketPeer, socket_url
from scope.server_ext.api_models import SessionInfo, SessionStats

if TYPE_CHECKING:
    from scope.client.rest import ScopeClient

__all__ = ["ScopeStream", "StreamInput", "Transport"]

Transport = Literal["webrtc", "websocket", "auto"]
TRANSPORTS: tuple[str, ...] = get_args(Transport)
CONNECT_TIMEOUT = 30.0
#: Output encodings a WebSocket stream asks for, preferred first: both decode here.
WEBSOCKET_ENCODINGS = ("h264", "jpeg")
#: Frames a recording may fall behind by before the oldest are dropped.
RECORD_BUFFER_FRAMES = 256


class ScopeStream:
    """One session: ``async with client.stream("a red fox") as s: frames = await s.read(30)``.

    Frames are received in the background from the moment the connection is up; each
    :meth:`read` or :meth:`record` gets the frames that arrive after it is called. Entering the
    ``async with`` (or ``await s.open()``) returns once the ``parameters`` channel is open;
    leaving it (or ``await s.close()``) deletes the session on the server and closes the peer.
    ``pipeline`` is the pipeline the session streams from until it ends (``None``: the server's
    current one when the offer arrives). ``transport`` is ``"webrtc"``, ``"websocket"`` or
    ``"auto"`` (WebRTC, then the WebSocket when the peer does not connect within the server's
    ``webrtc_fallback_timeout``); :attr:`transport` is the one in use once open.
    """

    def __init__(
        self,
        client: ScopeClient,
        initial_parameters: Mapping[str, Any],
        input: StreamInput = None,
        *,
        pipeline: PipelineTarget | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        transport: Transport = "webrtc",
        encodings: tuple[str, ...] = WEBSOCKET_ENCODINGS,
    ):
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(map(repr, TRANSPORTS))}, got {transport!r}")
        self.client = client
        self.requested_transport = transport
        #: The transport in use: ``"webrtc"`` or ``"websocket"`` once open, ``None`` before.
        self.transport: str | None = None
        #: The WebSocket's output encoding (``"h264"`` or ``"jpeg"``); ``None`` over WebRTC.
        self.encoding: str | None = None
        self.encodings = tuple(encodings)
        self.initial_parameters = dict(initial_parameters)
        self.pipeline = pipeline
        self.connect_timeout = connect_timeout
        self.session_id: str | None = None
        self.frames_received = 0
        self.last_frame: ReceivedFrame | None = None
        self._input = input
        self._source = None
        self._owns_source = False
        self._peer: ScopePeer | WebSocketPeer | None = None
        self._readers: set[FrameQueue] = set()
        self._ended: str | None = None
        self._closing = False

    # Opening and closing ----------------------------------------------------------------

    async def __aenter__(self) -> ScopeStream:
        return await self.open()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def open(self) -> ScopeStream:
        """Start the session and wait until parameters can be sent (its channel or socket is open)."""
        if self._peer is not None:
            raise RuntimeError("This stream was opened already; ask the client for a new one.")
        self._source, self._owns_source = input_track(self._input)
        try:
            if self.requested_transport == "websocket":
                await self._open_websocket()
            elif self.requested_transport == "auto":
                await self._open_either()
            else:
                await self._open_webrtc()
        except BaseException:
            await self.close()
            raise
        return self

    async def _open_either(self) -> None:
        """WebRTC, or the WebSocket when its peer is not connected within the server's fallback time."""
        offered = await asyncio.to_thread(self.client.transports)
        if "websocket" not in offered.transports:
            await self._open_webrtc()
            return
        fallback = offered.webrtc_fallback_timeout
        try:
            await self._open_webrtc(fallback=fallback)
        except _NotConnected:
            # Its slot is freed before the WebSocket asks for one: a client never holds two.
            await self._drop_session()
            await self._open_websocket()

    async def _open_webrtc(self, fallback: float | None = None) -> None:
        # A server on this machine is reached through host candidates; STUN would only add delay.
        ice = [] if is_loopback(self.client.url) else await asyncio.to_thread(self.client.ice_servers)
        self._peer = peer = ScopePeer(
            self._source,
            recvonly=self._source is None,
            ice_servers=[server.model_dump() for server in ice],
            on_frame=self._deliver,
            on_ended=self._track_ended,
        )
        self.transport = "webrtc"
        offer = await peer.create_offer()
        answer = await asyncio.to_thread(
            self.client.offer, offer["sdp"], self.initial_parameters, pipeline=self.pipeline
        )
        self.session_id = answer.sessionId
        self.client._open_streams.add(self)  # its session is the client's to record
        await peer.accept_answer(answer.sdp, answer.type)
        if fallback is not None:
            try:
                await asyncio.wait_for(peer.connected.wait(), fallback)
            except TimeoutError:
                raise _NotConnected from None
        await self._wait_connected()

    async def _open_websocket(self) -> None:
        answer = await asyncio.to_thread(
            self.client.websocket_offer, self.initial_parameters, pipeline=self.pipeline,
            sends_video=self._source is not None, encodings=self.encodings,
        )
        self.session_id = answer.sessionId
        self.client._open_streams.add(self)
        self.transport, self.encoding = "websocket", answer.encoding
        self._peer = WebSocketPeer(
            socket_url(self.client.url, answer.url),
            answer.encoding,
            self._source,
            headers=self.client.auth_headers,
            on_frame=self._deliver,
            on_ended=self._track_ended,
        )
        await self._peer.connect(self.connect_timeout)
        await self._wait_connected()

    async def _drop_session(self) -> None:
        """Delete the session and close its connection, keeping the input source for the next one."""
        try:
            if self.session_id is not None:
                await asyncio.to_thread(self._delete_session)
        finally:
            self.client._open_streams.discard(self)
            self.session_id = None
            if self._peer is not None:
                peer, self._peer = self._peer, None
                await peer.close()
            self.transport = None

    async def _wait_connected(self) -> None:
        try:
            await asyncio.wait_for(self._peer.channel_open.wait(), self.connect_timeout)
        except TimeoutError:
            state = self._peer.connection_state
            raise TimeoutError(
                f"The stream did not connect within {self.connect_timeout} s (connection state: {state})."
            ) from None

    async def close(self) -> None:
        """Delete the session on the server and close the peer connection (idempotent)."""
        if self._ended is not None and self._peer is None:
            return
        self._closing = True  # the server's end of a session this side deletes is no stop
        try:
            if self.session_id is not None:
                await asyncio.to_thread(self._delete_session)
        finally:
            if self._peer is not None:
                await self._peer.close()
                self._peer = None
            if self._owns_source and self._source is not None:
                self._source.stop()
            self._end("The stream was closed.")
            self.client._open_streams.discard(self)

    @property
    def live(self) -> bool:
        """Open, and not ended by this side or the server."""
        return self._peer is not None and self._ended is None

    def _delete_session(self) -> None:
        try:
            self.client.delete_session(self.session_id)
        except ScopeApiError as exc:
            if exc.status != 404:  # 404: the server ended it already
                raise
        except httpx.TransportError:
            pass  # the server is gone, and the session with it

    # Frames -----------------------------------------------------------------------------

    def _deliver(self, frame: ReceivedFrame) -> None:
        self.frames_received += 1
        self.last_frame = frame
        for reader in self._readers:
            reader.put(frame)

    def _track_ended(self) -> None:
        if self._closing:
            return
        stopped = [m for m in self.messages if m.get("type") == "stream_stopped"]
        reason = stopped[-1].get("error_message") if stopped else None
        self._end(f"The server stopped the stream: {reason}" if reason else "The server stopped the stream.")

    def _end(self, reason: str) -> None:
        if self._ended is None:
            self._ended = reason
        for reader in self._readers:
            reader.close(self._ended)

    @contextlib.contextmanager
    def _reader(self, maxsize: int) -> Iterator[FrameQueue]:
        if self._peer is None:
            raise RuntimeError("The stream is not open: use `async with client.stream(...) as s`.")
        if self._ended is not None:
            raise StreamClosed(self._ended)
        reader = FrameQueue(maxsize)
        self._readers.add(reader)
        try:
            yield reader
        finally:
            self._readers.discard(reader)

    async def read(self, n: int = 1, timeout: float = 30.0) -> np.ndarray:
        """The next ``n`` frames to arrive, as uint8 ``(n, H, W, 3)``."""
        if n < 1:
            raise ValueError(f"read() needs n >= 1, got {n}")
        frames: list[ReceivedFrame] = []
        with self._reader(n) as reader:
            try:
                async with asyncio.timeout(timeout):
                    while len(frames) < n:
                        frames.append(await reader.get())
            except TimeoutError:
                raise TimeoutError(f"Received {len(frames)} of {n} frames within {timeout} s.") from None
        return np.stack([frame.array for frame in frames])

    async def record(
        self, path: str | Path, seconds: float | None = None, frames: int | None = None, *, timeout: float = 30.0
    ) -> RecordingInfo:
        """Write the frames that arrive from now on to an MP4 file, for ``seconds`` or ``frames``.

        Timestamps are the arrival times, so the file plays at the pace the stream had.
        ``timeout`` bounds the wait for the first frame and between frames.
        """
        if seconds is None and frames is None:
            raise ValueError("record() needs seconds=, frames= or both")
        with self._reader(RECORD_BUFFER_FRAMES) as reader:
            first = await _next_frame(reader, None, timeout)
            height, width = first.array.shape[:2]
            writer = await asyncio.to_thread(Mp4Writer, path, width, height, self._nominal_fps())
            until = None if seconds is None else first.at + seconds
            try:
                frame: ReceivedFrame | None = first
                while frame is not None and (frames is None or writer.frames < frames):
                    if writer.accepts(frame):
                        await asyncio.to_thread(writer.write, frame)
                    frame = await _next_frame(reader, until, timeout)
            finally:
                info = await asyncio.to_thread(writer.close)
        return info

    def _nominal_fps(self) -> float:
        stats = self.stats()
        return stats.fps if stats is not None and stats.fps > 0 else 30.0

    # Parameters and messages -------------------------------------------------------------

    @property
    def messages(self) -> list[dict]:
        """The server's messages (the data channel's, or the socket's), in arrival order."""
        return self._peer.messages if self._peer is not None else []

    def update(self, parameters: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        """Send parameters on the data channel or socket (``s.update(prompts="a blue whale", noise_scale=0.5)``)."""
        if self._peer is None:
            raise RuntimeError("The stream is not open: parameters can only be sent while it streams.")
        self._peer.send(wire_parameters({**(parameters or {}), **more}))

    async def wait_message(
        self, match: str | Callable[[dict], bool], timeout: float = 10.0, *, since: int | None = None
    ) -> dict:
        """The first message of type ``match`` (or accepted by it) arriving after the call.

        ``since`` is an index into :attr:`messages` to look from instead (``0``: all of them).
        """
        if self._peer is None:
            raise RuntimeError("The stream is not open.")
        accept = (lambda m: m.get("type") == match) if isinstance(match, str) else match
        start = len(self.messages) if since is None else since
        return await self._peer.wait_message(accept, timeout, since=start)

    def stats(self) -> SessionStats | None:
        """The latest ``stats`` message of the server (``None`` before the first)."""
        for message in reversed(self.messages):
            if message.get("type") == "stats":
                return SessionStats.model_validate(message)
        return None

    def info(self) -> SessionInfo:
        """This session as the server describes it: its applied ``parameters``, state and stats."""
        if self.session_id is None:
            raise RuntimeError("The stream has no session yet: open it first.")
        return self.client.session(self.session_id)


async def _next_frame(reader: FrameQueue, until: float | None, timeout: float) -> ReceivedFrame | None:
    """The next frame arriving before ``until`` (``None`` once it passes); at most ``timeout`` s apart."""
    wait = timeout if until is None else min(timeout, max(0.0, until - time.monotonic()))
    try:
        frame = await asyncio.wait_for(reader.get(), wait)
    except TimeoutError:
        if until is not None and time.monotonic() >= until:
            return None
        raise TimeoutError(f"No frame arrived within {timeout} s.") from None
    return None if until is not None and frame.at >= until else frame


class _NotConnected(Exception):
    """The WebRTC peer did not connect within the fallback time."""
