"""Generate a timeline's chunks again, headlessly, exactly as the live session took them.

The renderer replays the session's own bookkeeping: a :class:`ParameterState` seeded with the
initial parameters takes each event at its chunk, one-shot keys act once, a transition that
ends hands its targets over as the prompts, and the first chunk (or one asking
``reset_cache``) starts from fresh caches. Fed the same updates at the same chunks, with the
same input frames, on the same device, dtype and thread count, the stream draws the same noise
and does the same arithmetic: the frames are bit-identical, which each chunk's hash shows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scope.pipelines.base import Pipeline
from scope.recording.timeline import Timeline, chunk_hash
from scope.streaming.parameter_state import ParameterState, for_stream_only


class RenderCancelled(Exception):
    """The render was cancelled between two chunks."""


class HashMismatch(AssertionError):
    """A rendered chunk differs from the recording's (``check=True``)."""


@dataclass(frozen=True)
class RenderedChunk:
    """One generated chunk: its index from the stream's start, frames, hash and, for a
    recording, the hash the live session recorded (None where there is none to compare)."""

    index: int
    frames: np.ndarray
    sha256: str
    recorded: str | None = None

    @property
    def matches(self) -> bool | None:
        return None if self.recorded is None else self.recorded == self.sha256


@dataclass
class RenderResult:
    """What a render made: chunk hashes by index, and where they differ from the recording's."""

    chunks: int = 0
    frames: int = 0
    hashes: dict[int, str] = field(default_factory=dict)
    #: ``(chunk, recorded, rendered)`` for every chunk whose hash differs from the recording's.
    mismatches: list[tuple[int, str, str]] = field(default_factory=list)
    #: Chunks with a recorded hash to compare against.
    compared: int = 0
    seconds: float = 0.0
    #: Why the render may not reproduce the recording (another device, dtype or thread count,
    #: a video-mode recording whose input starts after the stream's first chunk).
    notes: list[str] = field(default_factory=list)

    def add(self, chunk: RenderedChunk) -> None:
        self.chunks += 1
        self.frames += len(chunk.frames)
        self.hashes[chunk.index] = chunk.sha256
        if chunk.recorded is not None:
            self.compared += 1
            if chunk.recorded != chunk.sha256:
                self.mismatches.append((chunk.index, chunk.recorded, chunk.sha256))

    @property
    def reproduced(self) -> bool:
        """Every recorded chunk was generated again bit for bit."""
        return self.compared > 0 and not self.mismatches

    def check(self) -> None:
        """Raise :class:`HashMismatch` naming the first chunk that differs."""
        if self.mismatches:
            chunk, recorded, rendered = self.mismatches[0]
            raise HashMismatch(
                f"chunk {chunk} differs from the recording ({rendered[:12]} rendered, {recorded[:12]} recorded); "
                f"{len(self.mismatches)} of {self.compared} chunks differ"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "chunks": self.chunks,
            "frames": self.frames,
            "compared": self.compared,
            "mismatched_chunks": [chunk for chunk, _, _ in self.mismatches],
            "reproduced": self.reproduced,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
        }


def replay_start(timeline: Timeline) -> int:
    """The chunk a render starts generating at: the stream's first, unless a video-mode
    recording's stored input begins later (the earlier input was never kept)."""
    return timeline.input.first_chunk if timeline.input is not None else 0


def render_chunks(
    timeline: Timeline,
    pipeline: Pipeline,
    *,
    input_frames: Callable[[int], np.ndarray] | None = None,
    assets_dir: Path | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Iterator[RenderedChunk]:
    """Yield the timeline's chunks from :func:`replay_start` to its end, generated on ``pipeline``.

    ``input_frames(count)`` returns the next ``count`` stored input frames (video mode).
    ``assets_dir`` resolves asset paths in the parameters as the server does. ``cancelled`` is
    asked before each chunk. Each chunk runs as one call, so a caller may interleave other work.
    """
    from scope.streaming.asset_parameters import resolved_assets

    if timeline.input is not None and input_frames is None:
        raise ValueError("this timeline replays stored input frames: pass input_frames")
    records = {record.chunk: record for record in timeline.chunks}
    state = ParameterState(for_stream_only(timeline.initial_parameters))
    start = replay_start(timeline)
    for index in range(start):  # a late video recording: the updates before it still count
        _take(state, timeline, index)
    stream = pipeline.open_stream()
    try:
        for index in range(start, timeline.end_chunk):
            if cancelled is not None and cancelled():
                raise RenderCancelled(f"cancelled before chunk {index}")
            params = _take(state, timeline, index)
            record = records.get(index)
            video = None
            if timeline.input is not None:
                video = input_frames(record.input_frames) if record is not None and record.input_frames else None
            init_cache = bool(params.pop("reset_cache", False)) or index == start
            for_stream = resolved_assets(params, assets_dir) if assets_dir is not None else params
            chunk = stream.run_chunk(for_stream, video, init_cache=init_cache)
            if "transition" in params and not chunk.transition_active:
                state.finish_transition()
            comparable = index >= timeline.first_chunk and start == 0
            recorded = record.sha256 if record is not None and comparable else None
            yield RenderedChunk(index, chunk.frames, chunk_hash(chunk.frames), recorded)
    finally:
        stream.close()


def _take(state: ParameterState, timeline: Timeline, index: int) -> dict[str, Any]:
    for update in timeline.events_at(index):
        state.update(for_stream_only(update))
    return state.take_chunk()


def environment_notes(timeline: Timeline, device: str, dtype: str, torch_threads: int) -> list[str]:
    """Why frames rendered here may differ from those recorded: another device, dtype or
    thread count than the timeline's (each changes the arithmetic's rounding)."""
    notes = []
    for name, recorded, here in (("device", timeline.device, device), ("dtype", timeline.dtype, dtype), ("torch_threads", timeline.torch_threads, torch_threads)):
        if recorded is not None and recorded != here:
            notes.append(f"recorded with {name}={recorded}, rendered with {name}={here}: frames may differ in rounding")
    if timeline.input is not None and timeline.input.first_chunk > 0:
        notes.append(
            f"the stored input starts at chunk {timeline.input.first_chunk} (the recording began after the "
            "video stream's first chunk): the render starts there with fresh caches, so it cannot match the live frames"
        )
    return notes


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with torch's intra-op thread count at ``count`` (None: as it is), then restore it."""
    import torch

    before = torch.get_num_threads()
    if count is not None and count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
