"""Server-side recordings of sessions: start, stop, list, download (the later reference's paths).

A recording is a folder named after its session's UUID, so no path a client sends ever names a
file: an id that is no UUID is simply not found.
"""

from __future__ import annotations

import asyncio
import shutil

from jupyter_server.auth.decorator import allow_unauthenticated

from scope.recording.recorder import INPUT_FILE, PROVENANCE_FILE, TIMELINE_FILE, VIDEO_FILE
from scope.recording.service import RecordingError, RecordingService
from scope.server_ext.api_models import RecordingInfo, RecordingsResponse
from scope.server_ext.handlers.base import ApiError, Operation, ScopeHandler
from scope.server_ext.handlers.webrtc import SESSION_ID

NOT_FOUND = "No recording of session {} (recordings are kept per session id)"


def recording_error(exc: RecordingError) -> ApiError:
    return ApiError(exc.status, str(exc))


class RecordingHandler(ScopeHandler):
    """What the recordings handlers share: the service, a session, a recording's folder."""

    @property
    def recordings(self) -> RecordingService:
        return self.scope.sessions.recordings

    def live_session(self, session_id: str):
        session = self.scope.sessions.sessions.get(session_id)
        if session is None or session.closed:
            raise ApiError(404, f"Session {session_id} not found (or ended)")
        return session

    async def send_file(self, session_id: str, name: str, content_type: str) -> None:
        """Stream one file of a recording (a running one's MP4: what is written so far)."""
        directory = self.recordings.directory(session_id)
        if directory is None:
            raise ApiError(404, NOT_FOUND.format(session_id))
        missing = f"{NOT_FOUND.format(session_id)}: no {name}"
        await self.send_download(directory / name, content_type, f"{session_id}-{name}", missing)


class RecordingsHandler(RecordingHandler):
    pattern = openapi_path = "/api/v1/recordings"
    operations = {"get": Operation("Every recording, newest first", RecordingsResponse, tags=("recordings",))}

    @allow_unauthenticated
    async def get(self) -> None:
        self.reply({"recordings": await asyncio.to_thread(self.recordings.listing)})


class RecordingStartHandler(RecordingHandler):
    pattern = rf"/api/v1/recordings/{SESSION_ID}/start"
    openapi_path = "/api/v1/recordings/{session_id}/start"
    operations = {
        "post": Operation(
            "Record a session server-side from its next chunk: the frames as generated, its input in "
            "video mode, its timeline and provenance",
            RecordingInfo,
            errors={
                404: "Unknown or ended session",
                409: "The session records already, or has a finished recording",
                507: "The recordings directory has reached its quota (recordings_quota_bytes)",
            },
            tags=("recordings",),
        )
    }

    @allow_unauthenticated
    async def post(self, session_id: str) -> None:
        session = self.live_session(session_id)
        try:
            self.reply(await session.start_recording())
        except RecordingError as exc:
            raise recording_error(exc) from None


class RecordingStopHandler(RecordingHandler):
    pattern = rf"/api/v1/recordings/{SESSION_ID}/stop"
    openapi_path = "/api/v1/recordings/{session_id}/stop"
    operations = {
        "post": Operation(
            "Stop a session's recording; returns once its files are complete",
            RecordingInfo,
            errors={404: "Unknown or ended session", 409: "The session is not recording"},
            tags=("recordings",),
        )
    }

    @allow_unauthenticated
    async def post(self, session_id: str) -> None:
        session = self.live_session(session_id)
        info = await session.stop_recording("requested")
        if info is None:
            raise ApiError(409, f"Session {session_id} is not recording")
        self.reply({**info, "bytes": await asyncio.to_thread(self._bytes, session_id)})

    def _bytes(self, session_id: str) -> int:
        info = self.recordings.info(session_id)
        return info["bytes"] if info else 0


class RecordingVideoHandler(RecordingHandler):
    pattern = rf"/api/v1/recordings/{SESSION_ID}"
    openapi_path = "/api/v1/recordings/{session_id}"
    operations = {
        "get": Operation(
            "Download a recording's MP4 (while it records: what is written so far)",
            content="video/mp4",
            errors={404: "No recording of this session"},
            tags=("recordings",),
        ),
        "delete": Operation(
            "Delete a recording's files",
            status=204,
            errors={404: "No recording of this session", 409: "It is still recording"},
            tags=("recordings",),
        ),
    }

    @allow_unauthenticated
    async def get(self, session_id: str) -> None:
        await self.send_file(session_id, VIDEO_FILE, "video/mp4")

    @allow_unauthenticated
    async def delete(self, session_id: str) -> None:
        directory = self.recordings.directory(session_id)
        if directory is None or not directory.is_dir():
            raise ApiError(404, NOT_FOUND.format(session_id))
        if session_id in self.recordings.active:
            raise ApiError(409, f"Session {session_id} is recording: stop it first")
        await asyncio.to_thread(shutil.rmtree, directory)
        self.set_status(204)
        self.finish()


def sidecar_handler(name: str, file: str, content_type: str, summary: str) -> type[RecordingHandler]:
    """A handler serving one file of a recording at ``/api/v1/recordings/{session_id}/<name>``."""

    class Handler(RecordingHandler):
        pattern = rf"/api/v1/recordings/{SESSION_ID}/{name}"
        openapi_path = f"/api/v1/recordings/{{session_id}}/{name}"
        operations = {"get": Operation(summary, content=content_type, errors={404: f"No {file} for this session"}, tags=("recordings",))}

        @allow_unauthenticated
        async def get(self, session_id: str) -> None:
            await self.send_file(session_id, file, content_type)

    Handler.__name__ = Handler.__qualname__ = f"Recording{name.capitalize()}Handler"
    return Handler


RecordingTimelineHandler = sidecar_handler(
    "timeline", TIMELINE_FILE, "application/json",
    "A recording's timeline (scope-timeline/1): render it again with POST /api/v1/render or `daydream-scope render`",
)
RecordingProvenanceHandler = sidecar_handler(
    "provenance", PROVENANCE_FILE, "application/json", "What produced a recording: weights' sha256, versions, device, dtype, threads"
)
RecordingInputHandler = sidecar_handler(
    "input", INPUT_FILE, "video/x-matroska", "A video-mode recording's input frames, lossless (FFV1), as the chunks consumed them"
)
