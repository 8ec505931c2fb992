"""Which pipeline of a server's pool a client means, and finding it in ``pipeline/status``.

A server holds several pipelines at once; ``pipeline/load`` makes one *current*, and an offer
that names none streams from it. A client that loaded a pipeline names it in its offers
instead, so its streams keep that pipeline whatever another client loads after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic_core import to_jsonable_python

from scope.server_ext.api_models import PipelineStatusResponse, PooledPipeline

__all__ = ["OWN_PIPELINE", "PipelineLike", "PipelineTarget", "find_in_pool", "holds", "pipeline_target"]


@dataclass(frozen=True)
class PipelineTarget:
    """A pipeline and its load parameters (``None``: its defaults), as a load or an offer names them."""

    pipeline_id: str
    load_params: Mapping[str, Any] | None = None

    def offer_fields(self) -> dict[str, Any]:
        """The offer's ``pipeline_id`` and ``load_params``."""
        return {"pipeline_id": self.pipeline_id, "load_params": to_jsonable_python(dict(self.load_params or {}))}


#: What names a pipeline: its id (default parameters), ``(id, load_params)``, a
#: :class:`PipelineTarget`, or anything with ``pipeline_id`` and ``load_params`` (an entry of
#: ``pipeline_status().pipelines``, or a status itself: its current pipeline).
PipelineLike = str | tuple[str, Mapping[str, Any] | None] | PipelineTarget | PooledPipeline | PipelineStatusResponse


class _Own:
    """A ``pipeline=`` argument left out: the client's own pipeline (the current one while it has none)."""

    def __repr__(self) -> str:
        return "<the client's pipeline>"


OWN_PIPELINE: Any = _Own()


def pipeline_target(pipeline: PipelineLike) -> PipelineTarget:
    """``pipeline`` as a :class:`PipelineTarget` (TypeError for anything else)."""
    if isinstance(pipeline, PipelineTarget):
        return pipeline
    if isinstance(pipeline, str):
        return PipelineTarget(pipeline)
    if isinstance(pipeline, tuple) and len(pipeline) == 2 and isinstance(pipeline[0], str):
        return PipelineTarget(pipeline[0], pipeline[1])
    pipeline_id = getattr(pipeline, "pipeline_id", None)
    if isinstance(pipeline_id, str):
        return PipelineTarget(pipeline_id, getattr(pipeline, "load_params", None))
    raise TypeError(
        f"pipeline must be an id, (id, load_params), a PipelineTarget or a pipeline-status entry, got {pipeline!r}"
    )


def holds(have: Any, wanted: Any) -> bool:
    """Whether ``have`` holds every value ``wanted`` sets, mappings inside included: normalised
    load parameters (defaults filled in) hold what a load asked for."""
    if isinstance(wanted, Mapping) and isinstance(have, Mapping):
        return all(key in have and holds(have[key], value) for key, value in wanted.items())
    if isinstance(wanted, (list, tuple)) and isinstance(have, (list, tuple)):
        return len(have) == len(wanted) and all(holds(h, w) for h, w in zip(have, wanted))
    return have == wanted


def find_in_pool(status: PipelineStatusResponse, target: PipelineTarget) -> PooledPipeline | None:
    """``target``'s entry in the status's ``pipelines`` (the current one first, when several hold
    what it asked for), or None when it is not loaded nor loading."""
    wanted = to_jsonable_python(dict(target.load_params or {}))
    matching = [p for p in status.pipelines if p.pipeline_id == target.pipeline_id and holds(p.load_params, wanted)]
    matching.sort(key=lambda p: not p.current)
    return matching[0] if matching else None
