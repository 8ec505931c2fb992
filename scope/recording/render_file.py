"""Render a timeline headlessly into an MP4, with its provenance beside it.

The in-kernel ``scope.render`` and the ``daydream-scope render`` command both come here; the
server's render jobs reuse the pieces (:func:`open_input`, :func:`render_provenance`) but run
each chunk on the device thread themselves. Nothing half-written ever carries the final name:
frames go to ``<output>.partial``, which replaces the output only once the video is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from scope.paths import InvalidPath, PathOutside, resolve_inside
from scope.pipelines.base import LoadContext, Pipeline
from scope.recording import provenance as provenance_module
from scope.recording.media import LosslessInputReader, VideoWriter
from scope.recording.render import RenderResult, environment_notes, render_chunks, replay_start, torch_threads
from scope.recording.timeline import InvalidTimeline, Timeline

PARTIAL_SUFFIX = ".partial"


def partial_path(output: Path) -> Path:
    """Where frames go while the video is incomplete."""
    return output.with_name(output.name + PARTIAL_SUFFIX)


def provenance_path(output: Path) -> Path:
    """``clip.mp4`` -> ``clip.provenance.json``, beside it."""
    return output.with_name(output.stem + ".provenance.json")


def load_for_render(pipeline_class, load_params: BaseModel, context: LoadContext, synthetic: bool = False) -> Pipeline:
    """Load the timeline's pipeline (blocking). Missing weight files raise the pipeline's own
    ``FileNotFoundError``, which names every missing file; ``synthetic`` writes them first."""
    if synthetic and pipeline_class.artifacts:
        from scope.streaming.local_worker import ensure_synthetic

        ensure_synthetic(context.models_dir, pipeline_class.artifacts)
    return pipeline_class.load(load_params, context)


def open_input(timeline: Timeline, timeline_dir: Path | None) -> LosslessInputReader | None:
    """The stored input of a video-mode timeline, found inside ``timeline_dir`` (None in text mode).

    A path that leaves the folder is an :class:`InvalidTimeline` naming ``input.path``; a file
    that is not there is a ``FileNotFoundError`` naming it.
    """
    if timeline.input is None:
        return None
    if timeline_dir is None:
        raise InvalidTimeline([{"loc": ["input", "path"], "msg": "a video-mode timeline is read from its folder: give the timeline as a file", "type": "no_folder"}])
    try:
        path = resolve_inside(timeline_dir, timeline.input.path)
    except (PathOutside, InvalidPath) as exc:
        raise InvalidTimeline([{"loc": ["input", "path"], "msg": f"must name a file inside the timeline's folder: {exc}", "type": "path_outside"}]) from None
    if not path.is_file():
        raise FileNotFoundError(f"the timeline's stored input {timeline.input.path} is missing (looked for {path})")
    return LosslessInputReader(path)


def render_provenance(
    timeline: Timeline,
    pipeline_class,
    load_params: BaseModel,
    context: LoadContext,
    environment: dict[str, Any],
    *,
    load_s: float,
    render_s: float,
    frames: int,
    digests: provenance_module.FileDigests | None = None,
) -> dict[str, Any]:
    """The provenance document of a render: what answered the timeline, and how long it took
    (``fps`` is the rate frames were generated at, not the video's)."""
    return provenance_module.provenance(
        pipeline_class=pipeline_class,
        load_params=load_params,
        context=context,
        initial_parameters=timeline.initial_parameters,
        seeds=provenance_module.seeds_of(load_params),
        device=environment["device"],
        dtype=environment["dtype"],
        torch_threads=environment["torch_threads"],
        timings={"load_s": load_s, "render_s": render_s, "frames": frames, "fps": frames / render_s if render_s > 0 else 0.0},
        digests=digests or provenance_module.FileDigests(),
    )


def write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    temporary = partial_path(path)
    try:
        temporary.write_text(json.dumps(document, indent=2) + "\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def render_to_file(
    timeline: Timeline,
    pipeline_class,
    load_params_model: BaseModel,
    output: Path | None,
    *,
    pipeline: Pipeline | None = None,
    context: LoadContext,
    timeline_dir: Path | None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    synthetic: bool = False,
) -> RenderResult:
    """Generate the timeline's chunks; write those from ``first_chunk`` on to ``output`` (an MP4
    at the timeline's fps) and its provenance beside it. ``output=None`` only hashes them.

    ``pipeline`` is used as given (and kept); otherwise the timeline's is loaded, and unloaded
    at the end. The recorded torch thread count applies while rendering. ``progress(done,
    total)`` follows the chunks; ``cancelled()`` is asked before each (RenderCancelled).
    """
    started = time.monotonic()
    with torch_threads(timeline.torch_threads), contextlib.ExitStack() as stack:
        reader = open_input(timeline, timeline_dir)
        if reader is not None:
            stack.callback(reader.close)
        own = pipeline is None
        if own:
            pipeline = load_for_render(pipeline_class, load_params_model, context, synthetic)
            stack.callback(pipeline.unload)
        load_s = time.monotonic() - started
        environment = provenance_module.run_environment()
        result = RenderResult(notes=environment_notes(timeline, environment["device"], environment["dtype"], environment["torch_threads"]))
        rendering = time.monotonic()
        chunks = render_chunks(
            timeline, pipeline, input_frames=reader.read if reader is not None else None, assets_dir=context.assets_dir, cancelled=cancelled
        )
        total = timeline.end_chunk - replay_start(timeline)
        with _video_sink(output, timeline) as write:
            for chunk in chunks:
                result.add(chunk)
                if chunk.index >= timeline.first_chunk:
                    write(chunk.frames)
                if progress is not None:
                    progress(result.chunks, total)
        result.seconds = time.monotonic() - rendering
    if output is not None:
        document = render_provenance(
            timeline, pipeline_class, load_params_model, context, environment, load_s=load_s, render_s=result.seconds, frames=result.frames
        )
        write_json_atomically(provenance_path(output), document)
    return result


@contextlib.contextmanager
def _video_sink(output: Path | None, timeline: Timeline) -> Iterator[Callable[[Any], None]]:
    """A ``write(frames)`` into ``<output>.partial``, renamed to ``output`` when the block ends
    cleanly and removed when it raises (cancelled, failed). Nothing is written for None."""
    if output is None:
        yield lambda frames: None
        return
    partial = partial_path(output)
    writer: VideoWriter | None = None

    def write(frames) -> None:
        nonlocal writer
        if writer is None:
            writer = VideoWriter(partial, frames.shape[2], frames.shape[1], timeline.fps)
        writer.write(frames)

    try:
        yield write
        if writer is None:
            raise ValueError("the timeline generated no frames to write")
        writer.close()
        os.replace(partial, output)
    finally:
        if writer is not None:
            with contextlib.suppress(Exception):  # the error that stopped the render is the one to see
                writer.close()
        partial.unlink(missing_ok=True)
