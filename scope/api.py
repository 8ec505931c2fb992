"""The in-kernel API: load a pipeline and generate chunks without a server.

    import scope
    pipeline = scope.load_pipeline("longlive", height=320, width=576, seed=7)
    stream = pipeline.open_stream()
    chunk = stream.generate(prompts="a red fox in the snow")   # uint8 frames (T, H, W, 3)
    chunk = stream.generate(transition={"target_prompts": "a city at night", "num_steps": 4})

Parameters are the data channel's (``scope.params.StreamParameters``); streams are
independent and deterministic for a given seed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scope.params import ParameterErrors, validation_errors
from scope.pipelines.base import LoadContext, Pipeline


class LoadWarning(UserWarning):
    """What a load advises (the pipeline status's ``warnings``), e.g. fp8 on a small GPU."""


def load_pipeline(
    pipeline_id: str,
    *,
    models_dir: str | Path | None = None,
    synthetic: bool = False,
    **load_params: Any,
) -> Pipeline:
    """Load ``pipeline_id`` in this process (blocking) and return it.

    ``models_dir`` defaults to the server's setting of that name (``DAYDREAM_SCOPE_MODELS_DIR``,
    see docs/configuration.md). ``synthetic=True`` first writes synthetic weights for any
    missing file. Invalid load parameters raise :class:`scope.params.ParameterErrors`.
    """
    from scope.config import ScopeSettings
    from scope.pipelines.registry import get_pipeline_class
    from scope.streaming.manager import ensure_synthetic

    settings = ScopeSettings()
    if models_dir is not None:
        settings.models_dir = str(models_dir)
    cls = get_pipeline_class(pipeline_id)
    try:
        params = cls.load_params_model.model_validate(load_params)
    except ValidationError as exc:
        raise ParameterErrors(validation_errors(exc)) from None
    context = LoadContext(settings.models_path, settings.lora_path, settings.assets_path)
    if synthetic and cls.artifacts:
        ensure_synthetic(context.models_dir, cls.artifacts)
    pipeline = cls.load(params, context)
    for message in pipeline.load_warnings:
        warnings.warn(message, LoadWarning, stacklevel=2)
    return pipeline
