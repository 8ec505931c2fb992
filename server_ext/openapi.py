"""The OpenAPI 3.1 document, generated from the handlers' operations and pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from scope import __version__
from scope.server_ext.api_models import ErrorResponse
from scope.server_ext.handlers.base import Operation, ScopeHandler

REF = "#/components/schemas/{model}"


#: What "Try it out" asks for in a path; a session id is the ``sessionId`` of an offer's answer.
PATH_PARAMETERS = {
    "session_id": "The sessionId from the answer to POST /api/v1/webrtc/offer.",
    "asset_path": "A path from GET /api/v1/assets, or one relative to the assets directory.",
    "job_id": "The job_id from the answer to POST /api/v1/render.",
    "name": "A LoRA file's name from GET /api/v1/loras: with its extension (and folder), or its stem alone.",
}


def _path_parameters(path: str) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
    return [
        {"name": n, "in": "path", "required": True, "description": PATH_PARAMETERS[n], "schema": {"type": "string"}}
        for n in names
    ]


def request_example(model: type[BaseModel]) -> Any:
    """The request model's first example: the body ``/docs`` fills in for "Try it out"."""
    extra = model.model_config.get("json_schema_extra")
    examples = extra.get("examples") if isinstance(extra, dict) else None
    if not examples:
        raise ValueError(f"{model.__name__} has no example for /docs: give it json_schema_extra examples")
    return examples[0]


def common_errors(method: str, op: Operation) -> dict[int, str]:
    """Statuses the shared base handler can answer for any operation of this kind."""
    errors = {403: "Origin not allowed (open API), or not authenticated (Jupyter's auth)"}
    if method == "post":
        errors[415] = "Content-Type is a form type or missing (open API): send application/json"
    if op.request is not None:
        errors[400] = "Malformed JSON, or JSON nested too deeply"
        errors[422] = "Missing or invalid body"
    return errors


def build_openapi(handlers: list[type[ScopeHandler]]) -> dict[str, Any]:
    models: set[type[BaseModel]] = {ErrorResponse}
    for handler in handlers:
        for op in handler.operations.values():
            models.update(m for m in (op.request, op.response) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    keyed, schema = models_json_schema([(m, "validation") for m in ordered], ref_template=REF)
    refs = {model: keyed[(model, "validation")] for model in ordered}

    def content(model: type[BaseModel] | None, media: str) -> dict[str, Any]:
        if model is None:
            binary = not media.startswith("text/") and "json" not in media
            body = {"type": "string", "format": "binary"} if binary else {"type": "string"}
            return {media: {"schema": body}}
        return {media: {"schema": refs[model]}}

    paths: dict[str, Any] = {}
    for handler in handlers:
        item = paths.setdefault(handler.openapi_path, {})
        for method, op in handler.operations.items():
            operation: dict[str, Any] = {
                "summary": op.summary,
                "operationId": f"{method}_{handler.__name__.removesuffix('Handler')}",
                "tags": list(op.tags),
                "responses": {},
                # Whether a page opened from a file (Origin: null) may call it on the open API.
                "x-scope-null-origin": op.null_origin,
            }
            params = _path_parameters(handler.openapi_path) + [
                {"name": name, "in": "query", "required": required, "description": doc, "schema": {"type": typ}}
                for name, (typ, required, doc) in op.query.items()
            ]
            if params:
                operation["parameters"] = params
            if op.request is not None:
                body = content(op.request, op.request_content)
                body[op.request_content]["example"] = request_example(op.request)
                operation["requestBody"] = {"required": True, "content": body}
            elif op.request_content != "application/json":
                operation["requestBody"] = {"required": True, "content": content(None, op.request_content)}
            ok: dict[str, Any] = {"description": "Success"}
            if op.status != 204:
                media_types = (op.content,) if isinstance(op.content, str) else op.content
                ok["content"] = {k: v for media in media_types for k, v in content(op.response, media).items()}
            operation["responses"][str(op.status)] = ok
            errors = {**common_errors(method, op), **op.errors}
            for code, why in sorted(errors.items()):
                operation["responses"][str(code)] = {"description": why, "content": content(ErrorResponse, "application/json")}
            item[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Scope", "version": __version__, "description": "Scope Workbench server API."},
        "paths": paths,
        "components": {"schemas": schema.get("$defs", {})},
    }
