"""Timelines: what a stream was asked, chunk by chunk, so it can be generated again.

A timeline names the pipeline and its load parameters, the parameters the stream started with,
the run environment that decides the arithmetic (device, dtype, torch thread count), then the
updates the stream took, each at the chunk that took it. A recording's sidecar is a timeline
written as the session runs, with each generated chunk's frame count and hash; rendering it
again reproduces those hashes (``scope/recording/render.py``).

The document is validated in two steps. The model below checks its shape (and generates the
published JSON Schema); :func:`parse_timeline` then checks what only the named pipeline knows:
its load parameters and every parameter update, through the same models the server uses.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from scope.params import ParameterErrors, parse_parameters, validation_errors

FORMAT = "scope-timeline/1"
#: The most chunks a hand-written timeline may ask for (hours of video): a render is always bounded.
MAX_CHUNKS = 100_000
#: The Wan pipelines' output frame rate; a timeline without ``fps`` plays at it.
DEFAULT_FPS = 16.0


class InvalidTimeline(ValueError):
    """A timeline that cannot be rendered; ``errors`` are ``{"loc", "msg", "type"}`` from the document root."""

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc'])) or '(document)'}: {e['msg']}" for e in errors))


class TimelineEvent(BaseModel):
    """Parameter updates the stream took before generating chunk ``chunk`` (the data channel's
    parameters, validated by the pipeline's model; ``paused`` is kept as a note only)."""

    model_config = ConfigDict(extra="forbid")

    chunk: int = Field(ge=0, description="The chunk (counted from the stream's first, 0) that took the updates.")
    parameters: dict[str, Any] = Field(description="The updates, as the data channel carries them.")


class ChunkRecord(BaseModel):
    """One generated chunk of a recording, to check a render against."""

    model_config = ConfigDict(extra="forbid")

    chunk: int = Field(ge=0)
    frames: int = Field(ge=1, description="Frames the chunk generated.")
    sha256: str = Field(pattern="^[0-9a-f]{64}$", description="chunk_hash of the generated frames.")
    input_frames: int = Field(0, ge=0, description="Video mode: input frames the chunk consumed (from the stored input).")


class InputRef(BaseModel):
    """The stored input of a video-mode recording: the frames each chunk consumed, in order."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="The lossless input file, relative to the timeline's folder.")
    first_chunk: int = Field(0, ge=0, description="The chunk whose input the file starts with.")
    frames: int = Field(0, ge=0, description="Frames the file holds.")


class Timeline(BaseModel):
    """A stream's recipe: pipeline, load, environment, initial parameters and timed updates."""

    model_config = ConfigDict(extra="forbid", title="Scope timeline")

    format: Literal["scope-timeline/1"] = FORMAT
    pipeline_id: str = Field(min_length=1)
    load_params: dict[str, Any] = Field(default_factory=dict, description="The load parameters (the pipeline's defaults fill the rest).")
    initial_parameters: dict[str, Any] = Field(default_factory=dict, description="The stream's parameters before its first chunk.")
    torch_threads: int | None = Field(None, ge=1, description="torch's intra-op thread count; a render applies it.")
    device: str | None = Field(None, description="'cpu' or 'cuda': the device the frames were generated on.")
    dtype: str | None = Field(None, description="The compute dtype, e.g. 'float32' or 'bfloat16'.")
    fps: float = Field(DEFAULT_FPS, gt=0, le=240, description="The frame rate videos of this timeline play at.")
    input: InputRef | None = Field(None, description="Video mode: the stored input frames.")
    first_chunk: int = Field(0, ge=0, description="The first chunk a recording kept (earlier ones are generated, not written).")
    events: list[TimelineEvent] = Field(default_factory=list, description="Updates in chunk order.")
    chunks: list[ChunkRecord] = Field(default_factory=list, description="A recording's generated chunks, to check a render.")
    length_chunks: int | None = Field(None, ge=1, le=MAX_CHUNKS, description="Chunks to render when ``chunks`` is empty (a hand-written timeline).")

    @model_validator(mode="after")
    def _in_order(self) -> "Timeline":
        for index in range(1, len(self.events)):
            if self.events[index].chunk < self.events[index - 1].chunk:
                raise _Located(["events", index, "chunk"], "events must be in chunk order", "events_order")
        for index, record in enumerate(self.chunks):
            expected = self.first_chunk + index
            if record.chunk != expected:
                raise _Located(["chunks", index, "chunk"], f"expected chunk {expected}: chunks are consecutive from first_chunk", "chunks_order")
        if not self.chunks and self.length_chunks is None:
            raise _Located(["length_chunks"], "a timeline without recorded chunks says how many to render", "missing")
        return self

    @property
    def end_chunk(self) -> int:
        """One past the last chunk to generate."""
        if self.chunks:
            return self.chunks[-1].chunk + 1
        return self.first_chunk + (self.length_chunks or 0)

    def events_at(self, chunk: int) -> list[dict[str, Any]]:
        return [event.parameters for event in self.events if event.chunk == chunk]


class _Located(ValueError):
    """An order error that names its field (pydantic would locate it at the document)."""

    def __init__(self, loc: list[Any], msg: str, kind: str):
        super().__init__(msg)
        self.loc, self.msg, self.kind = loc, msg, kind


def timeline_schema() -> dict[str, Any]:
    """The published JSON Schema of the timeline document."""
    schema = Timeline.model_json_schema()
    schema["$id"] = "https://daydream.live/schemas/scope-timeline-1.json"
    return schema


def parse_timeline(data: Any, validation_context: dict[str, Any] | None = None):
    """Validate a timeline document; returns ``(Timeline, pipeline class, load params model)``.

    Raises :class:`InvalidTimeline` naming every field that is wrong, located from the document
    root: an unknown pipeline, a bad load parameter, a bad parameter in an event, events out of
    order. ``validation_context`` keeps paths inside the server's directories (as for requests).
    """
    from scope.pipelines.registry import UnknownPipeline, get_pipeline_class

    if not isinstance(data, dict):
        raise InvalidTimeline([{"loc": [], "msg": "a timeline is a JSON object", "type": "dict_type"}])
    try:
        timeline = Timeline.model_validate(data)
    except ValidationError as exc:
        raise InvalidTimeline(_shape_errors(exc)) from None
    try:
        cls = get_pipeline_class(timeline.pipeline_id)
    except UnknownPipeline as exc:
        raise InvalidTimeline([{"loc": ["pipeline_id"], "msg": str(exc), "type": "unknown_pipeline"}]) from None
    errors: list[dict[str, Any]] = []
    load_params = None
    try:
        load_params = cls.load_params_model.model_validate(timeline.load_params, context=validation_context)
    except ValidationError as exc:
        errors += validation_errors(exc, prefix=("load_params",))
    updates = [(["initial_parameters"], timeline.initial_parameters)]
    updates += [(["events", index, "parameters"], event.parameters) for index, event in enumerate(timeline.events)]
    for loc, update in updates:
        errors += _parameter_errors(cls, update, loc, validation_context)
    if errors:
        raise InvalidTimeline(errors)
    return timeline, cls, load_params


def _parameter_errors(cls, update: dict[str, Any], loc: list[Any], context: dict[str, Any] | None) -> list[dict[str, Any]]:
    try:
        _, unknown = parse_parameters(update, cls.parameters_model, context=context)
    except ParameterErrors as exc:
        return [{**e, "loc": [*loc, *e["loc"]]} for e in exc.errors]
    return [{"loc": [*loc, key], "msg": "unknown parameter", "type": "extra_forbidden"} for key in unknown]


def _shape_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """The model's errors; one raised by its order check keeps the location it names."""
    errors = []
    for error in exc.errors(include_url=False, include_input=False):
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, _Located):
            errors.append({"loc": [*error["loc"], *cause.loc], "msg": cause.msg, "type": cause.kind})
        else:
            errors.append({"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]})
    return errors


def read_timeline(path: str | Path, validation_context: dict[str, Any] | None = None):
    """Read and validate a timeline file (see :func:`parse_timeline`); JSON that does not
    parse is an :class:`InvalidTimeline` too."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidTimeline([{"loc": [], "msg": f"cannot read {Path(path).name}: {exc}", "type": "json_invalid"}]) from None
    return parse_timeline(data, validation_context)


def chunk_hash(frames: np.ndarray) -> str:
    """sha256 of one chunk's uint8 ``(T, H, W, 3)`` frames, their shape included."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    digest = hashlib.sha256(json.dumps(list(frames.shape)).encode())
    digest.update(memoryview(frames).cast("B"))
    return digest.hexdigest()
