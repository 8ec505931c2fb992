"""Pipeline loading, status and schemas."""

from __future__ import annotations

from jupyter_server.auth.decorator import allow_unauthenticated
from pydantic import ValidationError

from scope.params import validation_errors
from scope.pipelines.registry import UnknownPipeline, all_schemas, get_pipeline_class, pipeline_ids
from scope.server_ext.api_models import (
    LoadRequest,
    MessageResponse,
    PipelineSchemasResponse,
    PipelineStatusResponse,
    UnloadRequest,
)
from scope.server_ext.handlers.base import ApiError, Operation, ScopeHandler
from scope.streaming.manager import LoadConflict, NotInPool, NoWorker, OverBudget, TargetErrors


def unknown_pipeline_error(pipeline_id: str, loc: list[str]) -> ApiError:
    known = pipeline_ids()
    return ApiError(
        422,
        [{"loc": loc, "msg": f"Unknown pipeline id '{pipeline_id}'. Known pipelines: {', '.join(known)}", "type": "unknown_pipeline", "known": known}],
    )


class LoadHandler(ScopeHandler):
    pattern = openapi_path = "/api/v1/pipeline/load"
    operations = {
        "post": Operation(
            "Load a pipeline into the pool and make it current (the status is 'loading' when this answers)",
            MessageResponse,
            request=LoadRequest,
            errors={
                409: "A different load of the current pipeline is in progress, or the pipeline does not fit the "
                "memory budget beside the pipelines sessions use (the error lists them)",
                422: "Unknown pipeline or invalid load_params",
                503: "Every worker is lost: none is left to load on",
            },
            tags=("pipeline",),
            null_origin=True,
        )
    }

    @allow_unauthenticated
    async def post(self) -> None:
        body: LoadRequest = self.json_body(LoadRequest)
        if body.pipeline_ids is not None:
            if not body.pipeline_ids:
                raise ApiError(422, [{"loc": ["body", "pipeline_ids"], "msg": "must contain one pipeline id", "type": "too_short"}])
            if len(body.pipeline_ids) > 1:
                raise ApiError(
                    422,
                    [{"loc": ["body", "pipeline_ids"], "msg": "pipeline chains (preprocessors) are not supported yet: send one id", "type": "too_long"}],
                )
            loc = ["body", "pipeline_ids", 0]
        elif body.pipeline_id:
            loc = ["body", "pipeline_id"]
        else:
            raise ApiError(422, [{"loc": ["body", "pipeline_id"], "msg": "Field required", "type": "missing"}])
        pipeline_id = body.target_id
        try:
            started = await self.scope.manager.request_load(pipeline_id, body.load_params)
        except UnknownPipeline:
            raise unknown_pipeline_error(pipeline_id, loc) from None
        except ValidationError as exc:
            raise ApiError(422, validation_errors(exc, prefix=("body", "load_params"))) from None
        except LoadConflict as exc:
            raise ApiError(409, str(exc)) from None
        except OverBudget as exc:
            raise ApiError(409, exc.errors(loc)) from None
        except NoWorker as exc:
            raise ApiError(503, str(exc)) from None
        message = "Pipeline loading initiated successfully" if started else "Pipeline already loaded or loading"
        self.reply({"message": message})


class UnloadHandler(ScopeHandler):
    pattern = openapi_path = "/api/v1/pipeline/unload"
    operations = {
        "post": Operation(
            "Unload the current pipeline, or the one the body names, and free its memory; one that "
            "sessions use unloads when the last of them ends",
            MessageResponse,
            request=UnloadRequest,
            errors={
                404: "The named pipeline with these load_params is not loaded",
                409: "That pipeline is loading",
                422: "Unknown pipeline or invalid load_params",
            },
            tags=("pipeline",),
        )
    }

    @allow_unauthenticated
    async def post(self) -> None:
        body = self.json_body(UnloadRequest) if self.request.body.strip() else UnloadRequest()
        manager = self.scope.manager
        try:
            named = body.pipeline_id is not None or body.load_params is not None
            target = manager.validate_named(body.pipeline_id, body.load_params)[2] if named else None
            message = await manager.unload(target)
        except TargetErrors as exc:
            raise ApiError(422, exc.errors) from None
        except NotInPool as exc:
            raise ApiError(404, str(exc)) from None
        except LoadConflict as exc:
            raise ApiError(409, str(exc)) from None
        self.reply({"message": message})


class StatusHandler(ScopeHandler):
    pattern = openapi_path = "/api/v1/pipeline/status"
    operations = {
        "get": Operation(
            "The current pipeline's status, and every pipeline of the pool", PipelineStatusResponse, tags=("pipeline",), null_origin=True
        )
    }

    @allow_unauthenticated
    def get(self) -> None:
        self.reply(self.scope.manager.status_dict())


class SchemasHandler(ScopeHandler):
    pattern = openapi_path = "/api/v1/pipelines/schemas"
    operations = {
        "get": Operation("Schemas of every registered pipeline", PipelineSchemasResponse, tags=("pipeline",), null_origin=True)
    }

    @allow_unauthenticated
    def get(self) -> None:
        self.reply(all_schemas())


def known_pipeline(pipeline_id: str, loc: list[str]):
    try:
        return get_pipeline_class(pipeline_id)
    except UnknownPipeline:
        raise unknown_pipeline_error(pipeline_id, loc) from None
