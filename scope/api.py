"""The in-kernel API: load a pipeline and generate chunks without a server.

    import scope
    pipeline = scope.load_pipeline("longlive", height=320, width=576, seed=7)
    stream = pipeline.open_stream()
    chunk = stream.generate(prompts="a red fox in the snow")   # uint8 frames (T, H, W, 3)
    chunk = stream.generate(transition={"target_prompts": "a city at night", "num_steps": 4})

Parameters are the data channel's (``scope.params.StreamParameters``); streams are
independent and deterministic for a given seed. A timeline (a recording's, or written by hand)
renders again headlessly with ``scope.render("timeline.json", "clip.mp4")``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from scope.params import ParameterErrors, validation_errors
from scope.pipelines.base import LoadContext, Pipeline

if TYPE_CHECKING:
    from scope.recording.render import RenderResult
    from scope.recording.timeline import Timeline


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
    from scope.pipelines.registry import get_pipeline_class
    from scope.streaming.local_worker import ensure_synthetic

    cls = get_pipeline_class(pipeline_id)
    try:
        params = cls.load_params_model.model_validate(load_params)
    except ValidationError as exc:
        raise ParameterErrors(validation_errors(exc)) from None
    context = load_context(models_dir)
    if synthetic and cls.artifacts:
        ensure_synthetic(context.models_dir, cls.artifacts)
    pipeline = cls.load(params, context)
    for message in pipeline.load_warnings:
        warnings.warn(message, LoadWarning, stacklevel=2)
    return pipeline


def load_context(models_dir: str | Path | None = None) -> LoadContext:
    """Where loads find their files: the server's settings (environment included), with
    ``models_dir`` instead of the configured models directory when given."""
    from scope.config import ScopeSettings

    settings = ScopeSettings()
    if models_dir is not None:
        settings.models_dir = str(models_dir)
    return LoadContext(settings.models_path, settings.lora_path, settings.assets_path)


def render(
    timeline: str | Path | dict[str, Any] | Timeline,
    output: str | Path | None = None,
    *,
    models_dir: str | Path | None = None,
    synthetic: bool = False,
    pipeline: Pipeline | None = None,
    check: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> RenderResult:
    """Generate a timeline's chunks again in this process (blocking) and return their hashes.

    ``timeline`` is a timeline file, its parsed JSON or a :class:`Timeline` (a video-mode one
    finds its stored input beside the file, else from the working directory). With ``output``
    the frames are written there as an MP4, with ``<stem>.provenance.json`` beside it.
    ``pipeline`` renders on an already loaded pipeline; otherwise the timeline's is loaded
    (``synthetic=True`` writes missing weights first). ``check=True`` raises
    :class:`~scope.recording.render.HashMismatch` when a chunk differs from the recording's.
    An invalid timeline raises :class:`~scope.recording.timeline.InvalidTimeline`.
    """
    from scope.recording.render_file import render_to_file
    from scope.recording.timeline import parse_timeline, read_timeline

    if isinstance(timeline, (str, Path)):
        parsed, cls, load_params = read_timeline(timeline)
        timeline_dir = Path(timeline).resolve().parent
    else:
        document = timeline.model_dump(mode="json") if isinstance(timeline, BaseModel) else timeline
        parsed, cls, load_params = parse_timeline(document)
        timeline_dir = Path.cwd()
    result = render_to_file(
        parsed,
        cls,
        load_params,
        Path(output) if output is not None else None,
        pipeline=pipeline,
        context=load_context(models_dir),
        timeline_dir=timeline_dir,
        progress=progress,
        synthetic=synthetic,
    )
    if check:
        result.check()
    return result
