"""The headless session API (the later reference's paths): a session driven over plain HTTP.

None of these endpoints is open to ``null`` origins: a page opened from a file streams over
WebRTC like the Quick Start page, and sandboxed iframes of any site send ``null`` too.
"""

from __future__ import annotations

import asyncio
import contextlib

from jupyter_server.auth.decorator import allow_unauthenticated
from tornado.iostream import StreamClosedError

from scope.server_ext.api_models import (
    HeadlessParametersResponse,
    HeadlessParametersUpdate,
    HeadlessStartRequest,
    HeadlessStartResponse,
    HeadlessStopResponse,
    HeadlessUpdateResponse,
    MetricsResponse,
)
from scope.server_ext.handlers.base import ApiError, Operation, ScopeHandler
from scope.server_ext.handlers.webrtc import signalling_error
from scope.streaming.frame_codecs import encode_still
from scope.streaming.session import UpdateRefused
from scope.streaming.session_errors import SignallingError

TAGS = ("headless",)
NO_SESSION = {404: "No headless session runs"}
NO_FRAME = "No frame available (no headless session, or it has not produced a frame yet)"


def gpu_memory() -> dict[str, float]:
    """The GPU's memory in MiB, as the reference's metrics report it (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    mib = 1024 * 1024
    return {
        "vram_allocated_mb": round(torch.cuda.memory_allocated() / mib, 1),
        "vram_reserved_mb": round(torch.cuda.memory_reserved() / mib, 1),
        "vram_total_mb": round(torch.cuda.get_device_properties(0).total_memory / mib, 1),
    }


class HeadlessHandler(ScopeHandler):
    """Maps the session service's refusals onto their statuses."""

    def headless(self):
        try:
            return self.scope.sessions.require_headless()
        except SignallingError as exc:
            raise signalling_error(exc) from None


class HeadlessStartHandler(HeadlessHandler):
    pattern = openapi_path = "/api/v1/session/start"
    operations = {
        "post": Operation(
            "Start the headless session (no client connection: read it with frame, metrics and output.ts)",
            HeadlessStartResponse,
            request=HeadlessStartRequest,
            errors={
                400: "No pipeline loaded (none named), or malformed or deeply nested JSON",
                409: "A headless session runs already, the current pipeline is loading, or the named "
                "pipeline does not fit the memory budget",
                422: "Invalid parameters, pipeline_id, load_params or input_mode (only text), naming the field",
                503: "Too many streaming sessions (max_sessions)",
            },
            tags=TAGS,
        )
    }

    @allow_unauthenticated
    async def post(self) -> None:
        body: HeadlessStartRequest = self.json_body(HeadlessStartRequest)
        try:
            session = await self.scope.sessions.start_headless(
                self.raw_json.get("parameters"),
                prompts=body.prompts,
                input_mode=body.input_mode,
                pipeline_id=body.pipeline_id,
                load_params=body.load_params,
            )
        except SignallingError as exc:
            raise signalling_error(exc) from None
        self.reply(
            {
                "status": "ok",
                "session_id": session.id,
                "pipeline_id": session.slot.target.pipeline_id,
                "load_params": session.slot.target.load_params,
                "input_mode": session.parameters.input_mode or "text",
            }
        )


class HeadlessStopHandler(HeadlessHandler):
    pattern = openapi_path = "/api/v1/session/stop"
    operations = {"post": Operation("Stop the headless session", HeadlessStopResponse, errors=NO_SESSION, tags=TAGS)}

    @allow_unauthenticated
    async def post(self) -> None:
        await self.headless().close()
        self.reply({"status": "ok", "message": "Headless session stopped"})


class HeadlessParametersHandler(HeadlessHandler):
    pattern = openapi_path = "/api/v1/session/parameters"
    operations = {
        "get": Operation("The headless session's parameters", HeadlessParametersResponse, errors=NO_SESSION, tags=TAGS),
        "post": Operation(
            "Update the headless session's parameters (a data-channel message; the next chunk takes it)",
            HeadlessUpdateResponse,
            request=HeadlessParametersUpdate,
            errors={
                **NO_SESSION,
                400: "No parameters, or malformed or deeply nested JSON",
                422: "An invalid value, naming the field (as parameters_rejected does)",
            },
            tags=TAGS,
        ),
    }

    @allow_unauthenticated
    def get(self) -> None:
        self.reply({"parameters": self.headless().parameters.snapshot()})

    @allow_unauthenticated
    async def post(self) -> None:
        message = self.json_body()
        session = self.headless()
        if not isinstance(message, dict) or not message:
            raise ApiError(400, "No parameters provided: send a JSON object of stream parameters.")
        try:
            update, warnings = await session.apply_request(message)
        except UpdateRefused as exc:
            raise ApiError(422, [{**e, "loc": ["body", *e["loc"]], "type": "value_error"} for e in exc.errors]) from None
        self.reply({"status": "ok", "applied_parameters": update, "warnings": warnings})


class HeadlessFrameHandler(HeadlessHandler):
    pattern = openapi_path = "/api/v1/session/frame"
    operations = {
        "get": Operation(
            "The headless session's latest output frame as an image",
            errors={404: NO_FRAME, 422: "format is not jpeg or png, or quality is not 1..100"},
            query={
                "format": ("string", False, "jpeg (default) or png"),
                "quality": ("integer", False, "JPEG quality, 1..100 (default 85)"),
            },
            content=("image/jpeg", "image/png"),
            tags=TAGS,
        )
    }

    @allow_unauthenticated
    async def get(self) -> None:
        image_format = (self.query("format") or "jpeg").lower()
        if image_format not in ("jpeg", "jpg", "png"):
            raise ApiError(422, [{"loc": ["query", "format"], "msg": "format must be jpeg or png", "type": "value_error"}])
        quality_text = self.query("quality") or "85"
        quality = int(quality_text) if quality_text.isdigit() else 0
        if not 1 <= quality <= 100:
            raise ApiError(422, [{"loc": ["query", "quality"], "msg": "quality must be an integer 1..100", "type": "value_error"}])
        session = self.scope.sessions.headless
        frame = session.peer.latest if session is not None else None
        if frame is None:
            raise ApiError(404, NO_FRAME)
        image_format = "png" if image_format == "png" else "jpeg"
        data = await asyncio.to_thread(encode_still, frame, image_format, quality)
        self.set_header("Cache-Control", "no-store")
        self.finish(data, set_content_type=f"image/{image_format}")


class HeadlessMetricsHandler(ScopeHandler):
    pattern = openapi_path = "/api/v1/session/metrics"
    operations = {"get": Operation("Every session's stats, and the GPU's memory", MetricsResponse, tags=TAGS)}

    @allow_unauthenticated
    async def get(self) -> None:
        sessions = self.scope.sessions
        metrics = {}
        for session in list(sessions.sessions.values()):
            entry = session.stats()
            if session is sessions.headless:
                entry.update(headless=True, events=list(session.peer.events))
            metrics[session.id] = entry
        gpu = await asyncio.to_thread(gpu_memory)
        self.reply({"sessions": metrics, "gpu": gpu, "ended_headless": sessions.ended_headless})


class HeadlessOutputHandler(HeadlessHandler):
    pattern = openapi_path = "/api/v1/session/output.ts"
    operations = {
        "get": Operation(
            "The headless session's output as a live MPEG-TS stream (H.264) until it ends",
            errors=NO_SESSION,
            content="video/mp2t",
            tags=TAGS,
        )
    }

    @allow_unauthenticated
    async def get(self) -> None:
        session = self.headless()
        peer = session.peer
        reader = peer.open_reader()
        self.set_header("Content-Type", "video/mp2t")
        self.set_header("Cache-Control", "no-store")
        try:
            async with contextlib.aclosing(reader.chunks()) as chunks:
                async for data in chunks:
                    self.write(data)
                    peer.bytes.add(len(data))
                    await self.flush()  # waits for a slow reader: its queue fills, its frames drop
        except StreamClosedError:
            return  # the reader went away
        finally:
            peer.close_reader(reader)
        self.finish(set_content_type="video/mp2t")
