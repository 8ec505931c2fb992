"""The WebSocket transport: what the server offers, the offer, and the session's socket."""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated
from tornado.websocket import WebSocketHandler

from scope.server_ext.api_models import TransportsResponse, WebSocketOfferRequest, WebSocketOfferResponse
from scope.server_ext.handlers.base import ApiError, Operation, ScopeHandler
from scope.server_ext.handlers.webrtc import SESSION_ID, signalling_error
from scope.streaming.frame_codecs import output_encodings
from scope.streaming.session_errors import SignallingError

#: Seconds between the server's pings on a session's socket; a client that misses them for as
#: long is gone (a half-open TCP connection after a network change).
PING_INTERVAL_S = 10.0
#: The largest message a client may send: an input frame of at most 4096 pixels a side.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class TransportsHandler(ScopeHandler):
    pattern = openapi_path = "/api/v1/transports"
    operations = {
        "get": Operation(
            "How clients may stream: the transports, the WebSocket's output encodings, the WebRTC fallback timeout",
            TransportsResponse,
            tags=("websocket",),
        )
    }

    @allow_unauthenticated
    def get(self) -> None:
        self.reply(
            {
                "transports": ["webrtc", "websocket", "headless"],
                "encodings": output_encodings(),
                "webrtc_fallback_timeout": self.scope.settings.webrtc_fallback_timeout,
            }
        )


class WebSocketOfferHandler(ScopeHandler):
    pattern = openapi_path = "/api/v1/websocket/offer"
    operations = {
        "post": Operation(
            "Start a streaming session over a WebSocket (no UDP needed); its socket is the answer's url",
            WebSocketOfferResponse,
            request=WebSocketOfferRequest,
            errors={
                400: "No pipeline loaded, unsupported input_mode, or malformed or deeply nested JSON",
                409: "The current pipeline is loading (an offer naming no pipeline), or the named pipeline "
                "does not fit the memory budget beside the pipelines sessions use (the error lists them)",
                422: "Invalid initialParameters, pipeline_id, load_params or encodings, naming the field",
                503: "Too many streaming sessions (max_sessions) or pending offers (max_pending_sessions)",
            },
            tags=("websocket",),
        )
    }

    @allow_unauthenticated
    async def post(self) -> None:
        body: WebSocketOfferRequest = self.json_body(WebSocketOfferRequest)
        try:
            answer = await self.scope.sessions.create_websocket(
                self.raw_json.get("initialParameters"),
                pipeline_id=body.pipeline_id,
                load_params=body.load_params,
                sends_video=body.sends_video,
                encodings=body.encodings,
            )
        except SignallingError as exc:
            raise signalling_error(exc) from None
        self.reply(answer)


class SessionSocketHandler(WebSocketHandler, ScopeHandler):
    """A WebSocket session's socket. Auth is the REST API's: ``ScopeHandler.prepare`` runs before
    the handshake (Jupyter's token or cookie and origin check, or the open API's origin policy),
    and an unknown or taken session is a JSON 404 or 409 before any upgrade."""

    pattern = rf"/api/v1/websocket/{SESSION_ID}"

    session = None

    @property
    def ping_interval(self) -> float:
        return PING_INTERVAL_S

    @property
    def ping_timeout(self) -> float:
        return PING_INTERVAL_S

    @property
    def max_message_size(self) -> int:
        return MAX_MESSAGE_BYTES

    def set_default_headers(self) -> None:
        """No page headers (CSP and the like) on a socket's handshake."""

    def check_origin(self, origin: str = "") -> bool:
        return ScopeHandler.check_origin(self, origin)

    def check_xsrf_cookie(self) -> None:
        """A socket opens with a GET; the origin check is its cross-site guard."""

    @allow_unauthenticated
    async def get(self, session_id: str, *args: Any, **kwargs: Any) -> None:
        try:
            self.session = self.scope.sessions.socket_session(session_id)
        except SignallingError as exc:
            raise signalling_error(exc) from None
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            raise ApiError(400, "This is a WebSocket: open it with an Upgrade: websocket request.")
        await WebSocketHandler.get(self, session_id, *args, **kwargs)

    def open(self, session_id: str) -> None:
        session = self.session
        if session.closed or session.peer.connection_state != "new":
            self.close(4409, "the session ended or already has its socket")
            return
        self.set_nodelay(True)
        self.scope.sessions.attach_socket(session, self)

    def on_message(self, message: str | bytes) -> None:
        if self.session is not None and not self.session.closed:
            self.session.peer.on_message(message)

    def on_close(self) -> None:
        if self.session is not None and self.session.peer.socket is self:
            self.scope.sessions.socket_closed(self.session)

    def write_message(self, message: bytes | str | dict[str, Any], binary: bool = False) -> asyncio.Future:
        future = super().write_message(message, binary=binary)
        future.add_done_callback(_retrieve)  # a write the closing socket cut short is no error
        return future


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: asyncio logs nothing
