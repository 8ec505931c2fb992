"""WebSocket sessions: an offer without SDP, then a socket that carries frames and messages.

A mixin of :class:`~scope.streaming.webrtc.SessionService`. Like a WebRTC session, a WebSocket
session is *pending* from its offer until its socket opens (``connect_timeout`` closes it if
none does) and *streaming* from then on, so both kinds share ``max_pending_sessions`` and
``max_sessions``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scope.streaming.frame_codecs import output_encodings
from scope.streaming.session_errors import SignallingError
from scope.streaming.websocket_peer import FrameSocket, WebSocketPeer, socket_path

if TYPE_CHECKING:
    from scope.pipelines.base import Pipeline
    from scope.streaming.session import StreamSession


def choose_encoding(wanted: list[str]) -> str:
    """The first of the client's encodings the server can send (422 naming ``encodings``)."""
    offered = output_encodings()
    for name in wanted:
        if name in offered:
            return name
    raise SignallingError(
        422,
        [{"loc": ["body", "encodings"], "msg": f"none of {wanted} can be sent; this server sends {offered}", "type": "value_error"}],
    )


class WebSocketSessions:
    """Open WebSocket sessions and attach their sockets."""

    async def create_websocket(
        self,
        raw_parameters: dict[str, Any] | None,
        pipeline_id: str | None = None,
        load_params: dict[str, Any] | None = None,
        sends_video: bool = False,
        encodings: list[str] | None = None,
    ) -> dict[str, Any]:
        """Open a pending WebSocket session; its client then opens the socket at ``url``."""
        chosen: list[str] = []

        def check(cls: type[Pipeline]) -> None:
            chosen.append(choose_encoding(encodings or ["jpeg"]))

        async def make_peer() -> WebSocketPeer:
            return WebSocketPeer(chosen[0], self.disconnect_timeout)

        session = await self.open_session(
            raw_parameters, pipeline_id, load_params, make_peer, check=check, sends_video=lambda: sends_video
        )
        return {"sessionId": session.id, "encoding": chosen[0], "url": socket_path(session.id)}

    def socket_session(self, session_id: str) -> StreamSession:
        """The WebSocket session a socket may attach to (404 unknown or ended, 409 taken)."""
        session = self.sessions.get(session_id)
        if session is None or session.closed or not isinstance(session.peer, WebSocketPeer):
            raise SignallingError(404, f"WebSocket session {session_id} not found")
        if session.peer.connection_state != "new":
            raise SignallingError(409, f"Session {session_id} already has its socket")
        return session

    def attach_socket(self, session: StreamSession, socket: FrameSocket) -> None:
        """The client's socket opened: the session streams (or is refused when ``max_sessions``
        others already do, with ``stream_stopped`` saying so, as for a WebRTC peer)."""
        full = self.streaming_count() >= self.max_sessions
        session.peer.attach(socket)
        if full:
            session.refuse(self._streaming_full_message())
            return
        session.connection_state_changed("connected", self.disconnect_timeout)

    def socket_closed(self, session: StreamSession) -> None:
        session.peer.socket_closed()
        session.connection_state_changed("closed", self.disconnect_timeout)
