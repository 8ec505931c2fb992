"""The client end of a WebSocket session: what :class:`~scope.client.peer.ScopePeer` does, over
one WebSocket instead of WebRTC, for networks that carry no UDP (SSH tunnels, notebook proxies).

Text messages are the data channel's JSON; binary messages are video frames behind a 16-byte
header (:data:`FRAME_HEADER`). Output frames (JPEG, or H.264 access units in Annex B) are decoded
here and each is acknowledged, which is what lets the server send more: it stays at most a few
frames ahead of the last ``ack``. Input frames go out as JPEG images at the source's pace.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from PIL import Image
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from scope.client.errors import ScopeApiError
from scope.client.peer import MessageInbox, ReceivedFrame
from scope.streaming.websocket_peer import FRAME_HEADER, INPUT_FRAME, OUTPUT_FRAME, frame_header

__all__ = ["FRAME_HEADER", "WebSocketPeer", "frame_header", "socket_url"]

logger = logging.getLogger(__name__)

INPUT_JPEG_QUALITY = 85
#: How long closing waits for the server to answer the close handshake.
CLOSE_WAIT_SECONDS = 2.0


def socket_url(base_url: str, path: str) -> str:
    """The ``ws://`` (or ``wss://``) URL of ``path`` below an ``http(s)://`` base URL."""
    scheme, rest = base_url.split("://", 1)
    return ("wss" if scheme == "https" else "ws") + "://" + rest + path.lstrip("/")


def refusal(error: HTTPClientError, url: str) -> ScopeApiError:
    """The :class:`ScopeApiError` of a handshake the server answered with an error status."""
    body = error.response.body if error.response is not None else b""
    try:
        detail = json.loads(body).get("detail", body.decode(errors="replace"))
    except (ValueError, AttributeError):
        detail = body.decode(errors="replace").strip()[:500] or error.message
    return ScopeApiError(error.code, detail, method="GET", url=url)


def encode_jpeg(rgb: np.ndarray, quality: int = INPUT_JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class FrameDecoder:
    """Turns output frames of one encoding into RGB arrays (an H.264 decoder keeps its state)."""

    def __init__(self, encoding: str):
        if encoding not in ("h264", "jpeg"):
            raise ValueError(f"cannot decode the {encoding!r} encoding (known: h264, jpeg)")
        self.encoding = encoding
        self._h264 = av.CodecContext.create("h264", "r") if encoding == "h264" else None

    def decode(self, payload: bytes) -> list[np.ndarray]:
        if self._h264 is None:
            with Image.open(io.BytesIO(payload)) as image:
                return [np.asarray(image.convert("RGB"))]
        # One access unit per message: decoding it whole shows the frame at once, where a
        # parser would hold it back until the next one starts.
        return [frame.to_ndarray(format="rgb24") for frame in self._h264.decode(av.Packet(payload))]


class WebSocketPeer(MessageInbox):
    """Owns the socket of one session: messages, decoding and acks, sending input, closing.

    ``channel_open`` is set once the server's ``session`` message arrived (then updates may be
    sent); ``on_frame`` gets every decoded :class:`ReceivedFrame`, ``on_ended`` is called once
    when the server closes the socket. Messages are kept in ``messages`` in arrival order.
    """

    def __init__(
        self,
        url: str,
        encoding: str,
        send_track: MediaStreamTrack | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        on_frame: Callable[[ReceivedFrame], None] | None = None,
        on_ended: Callable[[], None] | None = None,
    ):
        super().__init__()
        self.url = url
        self.headers = dict(headers or {})
        self.channel_open = asyncio.Event()
        self.frames_decoded = 0
        self.decode_errors = 0
        self._decoder = FrameDecoder(encoding)
        self._send_track = send_track
        self._on_frame = on_frame
        self._on_ended = on_ended
        self._socket: WebSocketClientConnection | None = None
        self._receiver: asyncio.Task | None = None
        self._sender: asyncio.Task | None = None
        self._closing = False
        self._socket_closed = False

    @property
    def connection_state(self) -> str:
        if self._socket is None:
            return "closed" if self._closing else "new"
        return "closed" if self._socket_closed else "connected"

    async def connect(self, timeout: float) -> None:
        """Open the socket; a refused handshake raises :class:`ScopeApiError` (403, 404, 409)."""
        request = HTTPRequest(self.url, headers=self.headers, connect_timeout=timeout, request_timeout=timeout)
        try:
            self._socket = await websocket_connect(request)
        except HTTPClientError as exc:
            raise refusal(exc, self.url) from None
        self._receiver = asyncio.ensure_future(self._receive())
        if self._send_track is not None:
            self._sender = asyncio.ensure_future(self._send_input(self._send_track))

    def send(self, message: Mapping[str, Any]) -> None:
        """Send one JSON message (a parameter update) on the socket."""
        if self._socket is None or self._socket_closed or not self.channel_open.is_set():
            raise RuntimeError(
                f"The WebSocket is {self.connection_state}, not open: wait until the stream is "
                "connected (and not closed) before sending parameters."
            )
        self._write(json.dumps(dict(message)))

    async def close(self) -> None:
        """Close the socket and stop sending and receiving (safe to call twice)."""
        self._closing = True
        await _cancelled(self._sender)
        if self._socket is not None and not self._socket_closed:
            self._socket.close()
        if self._receiver is not None:
            # The receiver ends when the server answers the close; a server that does not is cut off.
            await asyncio.wait({self._receiver}, timeout=CLOSE_WAIT_SECONDS)
            await _cancelled(self._receiver)

    # Receiving --------------------------------------------------------------------------

    async def _receive(self) -> None:
        try:
            while (message := await self._socket.read_message()) is not None:
                if isinstance(message, bytes):
                    self._take_frame(message)
                else:
                    self._keep_message(message)
        finally:
            self._socket_closed = True
            self._wake_waiters()
        if not self._closing and self._on_ended is not None:
            self._on_ended()

    def _keep_message(self, raw: str | bytes) -> dict | None:
        message = super()._keep_message(raw)
        if message is not None and message.get("type") == "session":
            self.channel_open.set()  # the server has attached the socket: updates may go
        return message

    def _take_frame(self, data: bytes) -> None:
        if len(data) < FRAME_HEADER.size:
            return
        kind, _flags, _reserved, seq, _at_ms = FRAME_HEADER.unpack_from(data)
        if kind != OUTPUT_FRAME:
            return
        try:
            pictures = self._decoder.decode(data[FRAME_HEADER.size:])
        except (av.FFmpegError, OSError, ValueError):
            # A frame that does not decode is still consumed: the ack keeps the server sending.
            self.decode_errors += 1
            pictures = []
        arrived = time.monotonic()
        for picture in pictures:
            self.frames_decoded += 1
            if self._on_frame is not None:
                self._on_frame(ReceivedFrame(picture, arrived))
        self._write(json.dumps({"type": "ack", "seq": seq}))

    # Sending ----------------------------------------------------------------------------

    async def _send_input(self, track: MediaStreamTrack) -> None:
        """Send the track's frames as they come (the track keeps its pace) until either ends."""
        seq = 0
        while not self._socket_closed:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            captured_ms = time.time() * 1000
            image = await asyncio.to_thread(encode_jpeg, frame.to_ndarray(format="rgb24"))
            try:
                await self._socket.write_message(frame_header(INPUT_FRAME, seq, at_ms=captured_ms) + image, binary=True)
            except WebSocketClosedError:
                return
            seq += 1

    def _write(self, message: str) -> None:
        try:
            written = self._socket.write_message(message)
        except WebSocketClosedError:
            return  # the socket is closing: its end is reported by the receiver
        written.add_done_callback(_ignore_closed)


def _ignore_closed(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # a write to a socket that closed meanwhile: nothing to report


async def _cancelled(task: asyncio.Task | None) -> None:
    """Cancel ``task`` and wait for it; what it raised is logged, not left to the garbage collector."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        logger.exception("A WebSocket stream task failed")
