"""A session's peer over a WebSocket: frames and messages through any HTTP(S) connection.

For clients that cannot reach the server over UDP (an SSH tunnel, JupyterHub's proxy, a cloud
notebook's proxy). Output frames leave as binary messages behind a 16-byte header (see
``docs/server.md``), at the pace of the session's output track. The client acknowledges the
frames it has decoded; the server keeps at most :data:`FRAMES_IN_FLIGHT` frames ahead of its
acknowledgements, and drops a frame that would go further *before* encoding it, so a slow link
costs frames, never latency or memory, and H.264 stays decodable.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import struct
import time
from typing import Any, Protocol

from aiortc.mediastreams import MediaStreamError

from scope.streaming.frame_codecs import InputImageError, decode_input, make_encoder
from scope.streaming.peers import SessionPeer

logger = logging.getLogger(__name__)

#: Before every frame: kind (u8), flags (u8), reserved (u16), sequence number (u32), wall-clock
#: milliseconds since the epoch (f64), big-endian. The Python client reads and writes it too.
FRAME_HEADER = struct.Struct(">BBHId")
OUTPUT_FRAME, INPUT_FRAME = 1, 2
KEY_FRAME = 0x01
#: Frames the server sends ahead of the client's last acknowledgement (200 ms at 30 fps).
FRAMES_IN_FLIGHT = 6
#: At most one ``input_rejected`` message per this many seconds.
REJECTION_INTERVAL_S = 1.0


class FrameSocket(Protocol):
    """What the peer needs of the server's socket handler."""

    def write_message(self, message: bytes | str, binary: bool = False) -> Any: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


def frame_header(kind: int, seq: int, *, key: bool = True, at_ms: float | None = None) -> bytes:
    """The 16 bytes before a frame; ``at_ms`` defaults to now."""
    stamp = time.time() * 1000.0 if at_ms is None else at_ms
    return FRAME_HEADER.pack(kind, KEY_FRAME if key else 0, 0, seq & 0xFFFFFFFF, stamp)


class WebSocketPeer(SessionPeer):
    """The server's end of a session's WebSocket (attached once the client opens it)."""

    transport = "websocket"

    def __init__(self, encoding: str, disconnect_timeout: float):
        super().__init__()
        self.encoding = encoding
        self.disconnect_timeout = disconnect_timeout
        self.socket: FrameSocket | None = None
        self._state = "new"
        self._encoder = make_encoder(encoding)
        self._sent = 0
        self._acked = -1
        #: When each frame not yet acknowledged was sent (``time.monotonic()``), oldest first.
        self._unacked: collections.deque[tuple[int, float]] = collections.deque()
        self._rejected_at = 0.0
        self._decoding: asyncio.Task | None = None
        self._next_input: bytes | None = None

    # The connection ---------------------------------------------------------------------

    def attach(self, socket: FrameSocket) -> None:
        """The client opened the socket: messages flow, and so do frames."""
        session = self.session
        self.socket = socket
        self._state = "connected"
        self.send_text(json.dumps({"type": "session", "sessionId": session.id, "transport": self.transport, "encoding": self.encoding}))
        session.flush_outbox()
        session.spawn_task(self._send_output(), "output")

    def socket_closed(self) -> None:
        self._state = "closed"
        self.socket = None

    @property
    def connection_state(self) -> str:
        return self._state

    @property
    def message_open(self) -> bool:
        return self.socket is not None and self._state == "connected"

    def send_text(self, text: str) -> None:
        try:
            self.socket.write_message(text)
        except Exception:  # closed meanwhile: the session hears it from the handler
            logger.debug("session %s: a message found the socket closed", self.session.id)

    @property
    def frames_sent(self) -> int:
        return self._sent

    async def close(self) -> None:
        socket, self.socket = self.socket, None
        self._state = "closed"
        if socket is not None:
            socket.close(1000, "session ended")

    # Messages from the client -----------------------------------------------------------

    def on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._on_input(message)
            return
        ack = _ack_of(message)
        if ack is None:
            self.session.handle_message(message)
        elif isinstance(ack, int):
            self._acknowledge(ack)
        else:
            self.session.send({"type": "parameters_rejected", "errors": [{"loc": ["seq"], "msg": ack}]})

    def _acknowledge(self, seq: int) -> None:
        """Frames up to ``seq`` have been decoded (acknowledgements are cumulative)."""
        self._acked = max(self._acked, seq)
        while self._unacked and self._unacked[0][0] <= self._acked:
            self._unacked.popleft()

    def _on_input(self, message: bytes) -> None:
        if len(message) < FRAME_HEADER.size or message[0] != INPUT_FRAME:
            self._reject("a binary message must be an input frame: a 16-byte header of kind 2, then an image")
            self.session.put_input(None)
            return
        if not self.session.wants_input():
            self.session.put_input(None)  # text mode: only the rate counts
            return
        if self._decoding is not None:
            if self._next_input is not None:
                self.session.put_input(None)  # superseded before it was decoded
            self._next_input = message[FRAME_HEADER.size:]
            return
        self._decoding = self.session.spawn_task(self._decode(message[FRAME_HEADER.size:]), "input")

    async def _decode(self, payload: bytes) -> None:
        """Decode input frames off the event loop, one at a time, the newest waiting next."""
        try:
            while payload is not None:
                try:
                    frame = await asyncio.to_thread(decode_input, payload)
                except InputImageError as exc:
                    self._reject(f"input frame dropped: {exc}")
                    frame = None
                self.session.put_input(frame)
                payload, self._next_input = self._next_input, None
        finally:
            self._decoding = None

    def _reject(self, message: str) -> None:
        now = time.monotonic()
        if now - self._rejected_at >= REJECTION_INTERVAL_S:
            self._rejected_at = now
            self.session.send({"type": "input_rejected", "message": message})

    # Frames to the client ---------------------------------------------------------------

    def _behind(self) -> bool:
        return len(self._unacked) >= FRAMES_IN_FLIGHT

    async def _send_output(self) -> None:
        track = self.session.track
        while self.message_open:
            try:
                array, pts = await track.next_array()
            except MediaStreamError:
                return
            if not self.message_open:
                return
            now = time.monotonic()
            if self._behind():
                self.link_frames_dropped += 1
                silent = now - self._unacked[0][1]
                if silent >= self.disconnect_timeout:
                    self.session.peer_gone(silent)
                    return
                continue
            sent_ms = time.time() * 1000.0
            payload, key = await asyncio.to_thread(self._encoder.encode, array, pts)
            if not self.message_open:
                return
            seq = self._sent
            try:
                self.socket.write_message(frame_header(OUTPUT_FRAME, seq, key=key, at_ms=sent_ms) + payload, binary=True)
            except Exception:  # the socket is closing: its handler ends the session
                return
            self._unacked.append((seq, now))
            self._sent += 1
            self.sent.tick()
            self.bytes.add(len(payload) + FRAME_HEADER.size)


def _ack_of(message: str) -> int | str | None:
    """The sequence number an ``ack`` message acknowledges, an error text for a malformed one,
    or None for any other message (it goes to the session)."""
    if '"ack"' not in message:
        return None
    try:
        data = json.loads(message)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("type") != "ack":
        return None
    seq = data.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        return "an ack's seq must be the sequence number of a frame received (an integer >= 0)"
    return seq


def socket_path(session_id: str) -> str:
    """The socket's path relative to the server's base URL."""
    return f"api/v1/websocket/{session_id}"

