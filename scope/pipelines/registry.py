"""The pipeline registry: which pipeline ids exist and what they are.

Built-in pipelines register themselves when this module is first used. Tests and plugins add
their own with :func:`register` and remove them with :func:`unregister`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from scope.pipelines.base import Pipeline

#: Modules of the built-in pipelines, in the order they are listed.
BUILTIN_MODULES = (
    "scope.pipelines.passthrough",
    "scope.pipelines.longlive",
    "scope.pipelines.reward_forcing",
    "scope.pipelines.memflow",
    "scope.pipelines.streamdiffusionv2",
    "scope.pipelines.krea_realtime_video",
)

_registry: dict[str, type[Pipeline]] = {}
_builtins_loaded = False


class UnknownPipeline(KeyError):
    """No pipeline is registered under that id."""

    def __init__(self, pipeline_id: str):
        super().__init__(pipeline_id)
        self.pipeline_id = pipeline_id

    def __str__(self) -> str:
        known = ", ".join(pipeline_ids())
        return f"Unknown pipeline id '{self.pipeline_id}'. Known pipelines: {known}"


def _ensure_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def register(cls: type[Pipeline]) -> type[Pipeline]:
    """Register a pipeline class under ``cls.info.id`` (usable as a decorator)."""
    _registry[cls.info.id] = cls
    return cls


def unregister(pipeline_id: str) -> None:
    _registry.pop(pipeline_id, None)


def get_pipeline_class(pipeline_id: str) -> type[Pipeline]:
    _ensure_builtins()
    try:
        return _registry[pipeline_id]
    except KeyError:
        raise UnknownPipeline(pipeline_id) from None


def pipeline_ids() -> list[str]:
    _ensure_builtins()
    return list(_registry)


def pipeline_classes() -> Iterator[type[Pipeline]]:
    _ensure_builtins()
    yield from list(_registry.values())


def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(mode="validation")


def schema_entry(cls: type[Pipeline]) -> dict[str, Any]:
    """The documented per-pipeline object of ``/api/v1/pipelines/schemas``."""
    info = cls.info
    entry: dict[str, Any] = {
        "id": info.id,
        "name": info.name,
        "description": info.description,
        "version": info.version,
        "supported_modes": list(info.supported_modes),
        "default_mode": info.default_mode,
        "supports_prompts": info.supports_prompts,
        "default_temporal_interpolation_method": info.default_temporal_interpolation_method,
        "default_temporal_interpolation_steps": info.default_temporal_interpolation_steps,
        "docs_url": info.docs_url,
        "estimated_vram_gb": info.estimated_vram_gb,
        "requires_models": info.requires_models,
        "supports_lora": info.supports_lora,
        "supports_vace": info.supports_vace,
        "supports_cache_management": info.supports_cache_management,
        "supports_kv_cache_bias": info.supports_kv_cache_bias,
        "supports_quantization": info.supports_quantization,
        "min_dimension": info.min_dimension,
        "recommended_quantization_vram_threshold": info.recommended_quantization_vram_threshold,
        "modified": info.modified,
        "config_schema": _json_schema(cls.config_model),
    }
    mode_defaults = {
        mode: {k: v for k, v in values.items() if v is not None}
        for mode, values in cls.mode_defaults.items()
        if values
    }
    if mode_defaults:
        entry["mode_defaults"] = mode_defaults
    entry["load_params_schema"] = _json_schema(cls.load_params_model)
    entry["parameters_schema"] = _json_schema(cls.parameters_model)
    return entry


def all_schemas() -> dict[str, Any]:
    return {"pipelines": {cls.info.id: schema_entry(cls) for cls in pipeline_classes()}}
