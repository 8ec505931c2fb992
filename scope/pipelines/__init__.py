"""Pipelines: the shared interface, the registry and the built-in pipelines."""

from scope.pipelines.base import Chunk, LoadContext, Pipeline, PipelineInfo, Stream
from scope.pipelines.registry import (
    UnknownPipeline,
    get_pipeline_class,
    pipeline_ids,
    register,
    unregister,
)

__all__ = [
    "Chunk",
    "LoadContext",
    "Pipeline",
    "PipelineInfo",
    "Stream",
    "UnknownPipeline",
    "get_pipeline_class",
    "pipeline_ids",
    "register",
    "unregister",
]
