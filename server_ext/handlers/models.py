"""Model files: are they on disk, and downloading them from the hub."""

from __future__ import annotations

import asyncio

from jupyter_server.auth.decorator import allow_unauthenticated

from scope.models.artifacts import is_downloaded
from scope.models.download import DownloadInProgress
from scope.models.synthetic.writer import can_write, uses_synthetic
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
            self.reply({"downloaded": False, "progress": progress, "synthetic": False})
            return
        models_dir = self.scope.settings.models_path
        downloaded, synthetic = await asyncio.get_running_loop().run_in_executor(
            None, _on_disk, models_dir, cls.artifacts
        )
        if downloaded and progress and not progress.get("error"):
            downloads.clear_finished(pipeline_id)
            progress = None
        self.reply({"downloaded": downloaded, "progress": progress, "synthetic": synthetic})


def _on_disk(models_dir, artifacts) -> tuple[bool, bool]:
    """Whether the files are all there, and whether any of them is synthetic."""
    return is_downloaded(models_dir, artifacts), uses_synthetic(models_dir, artifacts)


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
        if body.synthetic and not can_write(cls.artifacts):
            msg = f"no synthetic weights are available for {body.pipeline_id}"
            raise ApiError(422, [{"loc": ["body", "synthetic"], "msg": msg, "type": "value_error"}])
        try:
            self.scope.downloads.start(body.pipeline_id, cls.artifacts, synthetic=body.synthetic)
        except DownloadInProgress:
            raise ApiError(409, f"Download already in progress for {body.pipeline_id}") from None
        what = "Synthetic weights" if body.synthetic else "Model download"
        self.reply({"message": f"{what} started for {body.pipeline_id}"})
