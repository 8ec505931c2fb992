"""WebRTC signalling endpoints and session management."""

from __future__ import annotations

from jupyter_server.auth.decorator import allow_unauthenticated

from scope.server_ext.api_models import (
    IceCandidatesRequest,
    IceServersResponse,
    OfferRequest,
    OfferResponse,
    SessionsResponse,
)
from scope.server_ext.handlers.base import ApiError, Operation, ScopeHandler
from scope.streaming.webrtc import SignallingError

#: Any single path segment: an id the service does not know is its JSON 404, never a route miss
#: (which Jupyter answers with an HTML page).
SESSION_ID = r"(?P<session_id>[^/]+)"


def signalling_error(exc: SignallingError) -> ApiError:
    return ApiError(exc.status, exc.detail)


class IceServersHandler(ScopeHandler):
    pattern = openapi_path = "/api/v1/webrtc/ice-servers"
    operations = {
        "get": Operation(
            "ICE servers for clients (TURN when configured, else STUN)", IceServersResponse, tags=("webrtc",), null_origin=True
        )
    }

    @allow_unauthenticated
    async def get(self) -> None:
        self.reply({"iceServers": await self.scope.ice.client_ice_servers()})


class OfferHandler(ScopeHandler):
    pattern = openapi_path = "/api/v1/webrtc/offer"
    operations = {
        "post": Operation(
            "Send an SDP offer; the answer starts a streaming session",
            OfferResponse,
            request=OfferRequest,
            errors={
                400: "No pipeline loaded, unsupported input_mode, malformed or deeply nested JSON, or an "
                "unusable SDP offer (unparsable, no usable video section, no DTLS fingerprint or ICE credentials)",
                409: "The current pipeline is loading (an offer naming no pipeline), or the named pipeline "
                "does not fit the memory budget beside the pipelines sessions use (the error lists them)",
                422: "Invalid initialParameters, pipeline_id or load_params, naming the field: a bad value, a path outside the assets "
                "directory or a file the stream cannot read, VACE inputs the loaded pipeline does not take",
                503: "Too many streaming sessions (max_sessions) or pending offers (max_pending_sessions)",
            },
            tags=("webrtc",),
            null_origin=True,
        )
    }

    @allow_unauthenticated
    async def post(self) -> None:
        body: OfferRequest = self.json_body(OfferRequest)
        # Validated again against the loaded pipeline's own parameters model.
        initial = self.raw_json.get("initialParameters")
        try:
            answer = await self.scope.sessions.create(
                body.sdp, body.type, initial, pipeline_id=body.pipeline_id, load_params=body.load_params
            )
        except SignallingError as exc:
            raise signalling_error(exc) from None
        self.reply(answer)


class CandidatesHandler(ScopeHandler):
    pattern = rf"/api/v1/webrtc/offer/{SESSION_ID}"
    openapi_path = "/api/v1/webrtc/offer/{session_id}"
    operations = {
        "patch": Operation(
            "Add trickled ICE candidates (an empty candidate ends them)",
            request=IceCandidatesRequest,
            status=204,
            errors={400: "Unparsable candidate, or malformed or deeply nested JSON", 404: "Unknown or closed session"},
            tags=("webrtc",),
            null_origin=True,
        )
    }

    @allow_unauthenticated
    async def patch(self, session_id: str) -> None:
        body: IceCandidatesRequest = self.json_body(IceCandidatesRequest)
        try:
            await self.scope.sessions.add_candidates(session_id, [c.model_dump() for c in body.candidates])
        except SignallingError as exc:
            raise signalling_error(exc) from None
        self.set_status(204)
        self.finish()


class SessionsHandler(ScopeHandler):
    pattern = openapi_path = "/api/v1/webrtc/sessions"
    operations = {"get": Operation("Streaming sessions with their parameters and stats", SessionsResponse, tags=("webrtc",))}

    @allow_unauthenticated
    def get(self) -> None:
        self.reply({"sessions": [s.describe() for s in self.scope.sessions.sessions.values()]})


class SessionHandler(ScopeHandler):
    pattern = rf"/api/v1/webrtc/sessions/{SESSION_ID}"
    openapi_path = "/api/v1/webrtc/sessions/{session_id}"
    operations = {"delete": Operation("Stop a session", status=204, errors={404: "Unknown session"}, tags=("webrtc",))}

    @allow_unauthenticated
    async def delete(self, session_id: str) -> None:
        try:
            await self.scope.sessions.close(session_id)
        except SignallingError as exc:
            raise signalling_error(exc) from None
        self.set_status(204)
        self.finish()
