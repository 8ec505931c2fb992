"""Render jobs: a timeline rendered into an MP4 on the server, beside the live sessions.

Job ids are the server's own UUIDs; an id it did not hand out is a 404, never a path.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.utils import url_path_join

from scope.recording.jobs import DONE, RenderJob, RenderJobs, TooManyJobs
from scope.recording.recorder import TIMELINE_FILE
from scope.recording.service import RecordingError, folder_name
from scope.recording.timeline import InvalidTimeline, parse_timeline, read_timeline
from scope.server_ext.api_models import ProvenanceDocument, RenderJobAccepted, RenderJobStatus, RenderRequest
from scope.server_ext.handlers.base import ApiError, Operation, ScopeHandler

BASE = "/api/v1/render"
JOB_ID = r"(?P<job_id>[^/]+)"


class RenderHandlerBase(ScopeHandler):
    @property
    def jobs(self) -> RenderJobs:
        return self.scope.renders

    @property
    def jobs_url(self) -> str:
        """Where the jobs are, under this server's base URL (Jupyter's may not be ``/``)."""
        return url_path_join(self.base_url, BASE)

    def job(self, job_id: str) -> RenderJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"No render job {job_id}")
        return job

    def finished(self, job_id: str) -> RenderJob:
        job = self.job(job_id)
        if job.status != DONE:
            raise ApiError(409, f"Render job {job_id} is {job.status}: its files exist once it is done")
        return job


class RenderHandler(RenderHandlerBase):
    pattern = openapi_path = BASE
    operations = {
        "post": Operation(
            "Render a timeline (or a recording's) into an MP4 on the server; poll the job's URL",
            RenderJobAccepted,
            request=RenderRequest,
            status=202,
            errors={
                422: "An invalid timeline (every wrong field named, under body.timeline), an unknown "
                "recording, or neither or both of timeline and recording",
                429: "As many render jobs as allowed are queued or running",
                507: "The recordings directory (which holds renders too) has reached its quota (recordings_quota_bytes)",
            },
            tags=("render",),
        )
    }

    @allow_unauthenticated
    async def post(self) -> None:
        body = self.json_body()
        timeline, cls, load_params, folder = await self.timeline_of(body)
        try:
            await self.scope.sessions.recordings.check_room("delete recordings or forget finished renders to render more")
        except RecordingError as exc:
            raise ApiError(exc.status, str(exc)) from None
        try:
            job = self.jobs.submit(timeline, cls, load_params, folder)
        except TooManyJobs as exc:
            raise ApiError(429, str(exc)) from None
        self.reply({"job_id": job.id, "status": job.status, "url": f"{self.jobs_url}/{job.id}"}, status=202)

    async def timeline_of(self, body: Any):
        """The validated timeline a request names, with the folder its stored input is read from."""
        if not isinstance(body, dict):
            raise ApiError(422, [{"loc": ["body"], "msg": "an object with timeline or recording", "type": "dict_type"}])
        extra = sorted(set(body) - set(RenderRequest.model_fields))
        if extra:
            raise ApiError(422, [{"loc": ["body", key], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"} for key in extra])
        given = [key for key in ("timeline", "recording") if body.get(key) is not None]
        if len(given) != 1:
            raise ApiError(422, [{"loc": ["body", "timeline"], "msg": "give either timeline or recording", "type": "missing" if not given else "ambiguous"}])
        context = self.scope.manager.context.validation_context()
        if given[0] == "timeline":
            loc, folder = ["body", "timeline"], self.scope.settings.assets_path
            parse = lambda: parse_timeline(body["timeline"], context)  # noqa: E731
        else:
            loc, folder = ["body", "recording"], self.recording_folder(body["recording"])
            parse = lambda: read_timeline(folder / TIMELINE_FILE, context)  # noqa: E731
        try:
            timeline, cls, load_params = await asyncio.get_running_loop().run_in_executor(None, parse)
        except InvalidTimeline as exc:
            raise ApiError(422, [{**error, "loc": [*loc, *error["loc"]]} for error in exc.errors]) from None
        except RecursionError:
            raise ApiError(400, "Malformed JSON body: nested too deeply") from None
        if timeline.input is not None:
            stored = folder / timeline.input.path
            if not os.path.isfile(stored) or not Path(os.path.realpath(stored)).is_relative_to(folder.resolve()):
                where = "the recording's folder" if given[0] == "recording" else "the assets directory"
                msg = f"must name a file in {where}"
                raise ApiError(422, [{"loc": [*loc, "input", "path"], "msg": msg, "type": "input_missing"}])
        return timeline, cls, load_params, folder

    def recording_folder(self, session_id: Any) -> Path:
        name = folder_name(session_id) if isinstance(session_id, str) else None
        folder = self.scope.settings.recordings_path / name if name is not None else None
        if folder is None or not (folder / TIMELINE_FILE).is_file():
            raise ApiError(422, [{"loc": ["body", "recording"], "msg": f"no recording with a timeline for session {session_id!r}", "type": "unknown_recording"}])
        return folder


class RenderJobHandler(RenderHandlerBase):
    pattern = rf"{BASE}/{JOB_ID}"
    openapi_path = BASE + "/{job_id}"
    operations = {
        "get": Operation("A render job's status, progress and, once done, its result", RenderJobStatus, errors={404: "Unknown job"}, tags=("render",)),
        "delete": Operation(
            "Cancel a queued or running render job (it stops between chunks; its files are removed), or forget a finished one and its files",
            RenderJobStatus,
            errors={404: "Unknown job"},
            tags=("render",),
        ),
    }

    @allow_unauthenticated
    def get(self, job_id: str) -> None:
        self.reply(self.job(job_id).describe(self.jobs_url))

    @allow_unauthenticated
    async def delete(self, job_id: str) -> None:
        job = self.job(job_id)
        await self.jobs.delete(job)
        self.reply(job.describe(self.jobs_url))


class RenderFileHandler(RenderHandlerBase):
    """A finished job's file, streamed in blocks."""

    async def send(self, path: Path, content_type: str, name: str) -> None:
        await self.send_download(path, content_type, name, f"{name} is gone")


class RenderVideoHandler(RenderFileHandler):
    pattern = rf"{BASE}/{JOB_ID}/video"
    openapi_path = BASE + "/{job_id}/video"
    operations = {
        "get": Operation(
            "A finished render job's MP4", content="video/mp4", errors={404: "Unknown job", 409: "The job is not done"}, tags=("render",)
        )
    }

    @allow_unauthenticated
    async def get(self, job_id: str) -> None:
        job = self.finished(job_id)
        await self.send(job.video, "video/mp4", f"render-{job.id}.mp4")


class RenderProvenanceHandler(RenderHandlerBase):
    pattern = rf"{BASE}/{JOB_ID}/provenance"
    openapi_path = BASE + "/{job_id}/provenance"
    operations = {
        "get": Operation(
            "What produced a finished render job's frames: weights' sha256, versions, device, dtype, threads, timings",
            ProvenanceDocument,
            errors={404: "Unknown job", 409: "The job is not done"},
            tags=("render",),
        )
    }

    @allow_unauthenticated
    async def get(self, job_id: str) -> None:
        job = self.finished(job_id)
        try:
            document = json.loads(await asyncio.to_thread(job.provenance.read_text))
        except (OSError, ValueError):
            raise ApiError(404, "the job's provenance is gone") from None
        self.reply(document)
