"""Model files: are they on disk, and downloading them from the hub."""

from __future__ import annotations

import asyncio

from jupyter_server.auth.decorator import allow_unauthenticated

from scope.models.artifacts import is_downloaded
from scope.models.download import DownloadInProgress
from scope.server_ext.api_models import DownloadRequest, MessageResponse, ModelsStatusResponse
from scope.server_ext.handlers.base import ApiError, Operation, ScopeHandler
from scope.server_ext.handlers.pipeline import known_pipeline


class ModelsStatusHandler(ScopeHandler):
    pattern = openapi_path = "/api/v1/models/status"
    operations = {
        "get": Operation(
            "Are a pipeline's files downloaded, and how far is its download",
            ModelsStatusResponse,
            query={"pipeline_id": ("string", True, "Pipeline id")},
            errors={422: "Missing or unknown pipeline_id"},
            tags=("models",),
        )
    }

    @allow_unauthenticated
    async def get(self) -> None:
        pipeline_id = self.query("pipeline_id", required=True)
        cls = known_pipeline(pipeline_id, ["query", "pipeline_id"])
        downloads = self.scope.downloads
        progress = downloads.progress(pipeline_id)
        if progress and progress["is_downloading"]:
            self.reply({"downloaded": False, "progress": progress})
            return
        models_dir = self.scope.settings.models_path
        downloaded = await asyncio.get_running_loop().run_in_executor(None, is_downloaded, models_dir, cls.artifacts)
        if downloaded and progress and not progress.get("error"):
            downloads.clear_finished(pipeline_id)
            progress = None
        self.reply({"downloaded": downloaded, "progress": progress})


class ModelsDownloadHandler(ScopeHandler):
    pattern = openapi_path = "/api/v1/models/download"
    operations = {
        "post": Operation(
            "Start downloading a pipeline's files",
            MessageResponse,
            request=DownloadRequest,
            errors={409: "That pipeline is already downloading", 422: "Missing or unknown pipeline_id"},
            tags=("models",),
        )
    }

    @allow_unauthenticated
    def post(self) -> None:
        body: DownloadRequest = self.json_body(DownloadRequest)
        cls = known_pipeline(body.pipeline_id, ["body", "pipeline_id"])
        if not cls.artifacts:
            self.reply({"message": f"Pipeline {body.pipeline_id} needs no model files"})
            return
        try:
            self.scope.downloads.start(body.pipeline_id, cls.artifacts)
        except DownloadInProgress:
            raise ApiError(409, f"Download already in progress for {body.pipeline_id}") from None
        self.reply({"message": f"Model download started for {body.pipeline_id}"})
