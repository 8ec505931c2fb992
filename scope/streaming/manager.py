"""The loaded pipelines, and the one that is current.

The pool (:mod:`scope.streaming.pool`) holds several pipelines at once within a memory budget.
Of them, one is *current*: what ``pipeline/load`` last asked for, what ``pipeline/status``
describes, and what an offer that names no pipeline streams from, so a client of the spec sees
one pipeline as it always did. Loading runs on the device worker thread; the current status
becomes ``loading`` before the request that started it is answered, so a client polling right
after a 200 never sees the old state. While the current pipeline loads, a load of another one is
a conflict; the same target is idempotent. An ``error`` stays until the next load.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from concurrent.futures import Executor
from typing import Any

from pydantic import BaseModel, ValidationError

from scope.models.artifacts import format_bytes, is_downloaded
from scope.models.synthetic.writer import write_synthetic
from scope.pipelines.base import LoadContext, Pipeline
from scope.params import validation_errors
from scope.pipelines.registry import UnknownPipeline, get_pipeline_class
from scope.streaming.memory_budget import budget_device, device_budget
from scope.streaming.pool import ERROR, LOADED, LOADING, NOT_LOADED, LoadTarget, OverBudget, PipelinePool, PipelineSlot

logger = logging.getLogger(__name__)

__all__ = [
    "ERROR", "LOADED", "LOADING", "NOT_LOADED", "LoadConflict", "LoadTarget", "NotInPool", "OverBudget", "PipelineManager",
    "TargetErrors",
]


class LoadConflict(Exception):
    """A different load of the current pipeline is in progress, or an unload meets a load."""


class NotInPool(Exception):
    """An unload named a pipeline (and load parameters) that is not loaded."""


class TargetErrors(ValueError):
    """A request named its pipeline badly; ``errors`` name the fields under ``body``."""

    def __init__(self, errors: list[dict[str, Any]]):
        super().__init__("; ".join(e["msg"] for e in errors))
        self.errors = errors


class PipelineManager:
    """Owns the pool of loaded pipelines and says which one is current."""

    def __init__(
        self,
        context: LoadContext,
        executor: Executor,
        *,
        synthetic_fallback: bool = False,
        memory_budget_bytes: int = 0,
    ):
        self.context = context
        self.executor = executor
        #: Write synthetic weights for a pipeline whose files are missing, before loading it.
        self.synthetic_fallback = synthetic_fallback
        #: The pool's budget per device; 0 takes it from the device's free memory.
        self.memory_budget_bytes = memory_budget_bytes
        self.pool = PipelinePool(context, executor, budget=self._budget, prepare=self._prepare, free=_free)
        #: The slot ``pipeline/load`` last asked for (it may have failed, or been unloaded since).
        self.current: PipelineSlot | None = None

    # The current pipeline, as the spec's single pipeline ----------------------------------

    @property
    def status(self) -> str:
        return self.current.status if self.current is not None else NOT_LOADED

    @property
    def pipeline(self) -> Pipeline | None:
        return self.current.pipeline if self.current is not None else None

    @property
    def target(self) -> LoadTarget | None:
        return self.current.target if self.status in (LOADING, LOADED) else None

    @property
    def error(self) -> str | None:
        return self.current.error if self.status == ERROR else None

    # Loading ----------------------------------------------------------------------------

    def validate(self, pipeline_id: str, load_params: dict[str, Any] | None) -> tuple[type[Pipeline], BaseModel, LoadTarget]:
        """Resolve the pipeline class and validate its load params (raises on bad input).

        Paths in the parameters must name files inside the server's directories.
        """
        cls = get_pipeline_class(pipeline_id)
        params = cls.load_params_model.model_validate(load_params or {}, context=self.context.validation_context())
        return cls, params, LoadTarget(pipeline_id, params.model_dump(mode="json"))

    def validate_named(self, pipeline_id: Any, load_params: Any) -> tuple[type[Pipeline], BaseModel, LoadTarget]:
        """:meth:`validate` for a request body's ``pipeline_id`` and ``load_params`` (an offer's,
        an unload's): :class:`TargetErrors` naming the field for a missing or unknown id and
        invalid params."""
        if not isinstance(pipeline_id, str) or not pipeline_id:
            raise TargetErrors([{"loc": ["body", "pipeline_id"], "msg": "a pipeline id is required with load_params", "type": "missing"}])
        if load_params is not None and not isinstance(load_params, dict):
            raise TargetErrors([{"loc": ["body", "load_params"], "msg": "must be an object", "type": "dict_type"}])
        try:
            return self.validate(pipeline_id, load_params)
        except UnknownPipeline as exc:
            raise TargetErrors([{"loc": ["body", "pipeline_id"], "msg": str(exc), "type": "unknown_pipeline"}]) from None
        except ValidationError as exc:
            raise TargetErrors(validation_errors(exc, prefix=("body", "load_params"))) from None

    async def request_load(self, pipeline_id: str, load_params: dict[str, Any] | None) -> bool:
        """Make ``pipeline_id`` with ``load_params`` current, loading it unless the pool has it.

        Returns True if a load was started. Raises :class:`LoadConflict` if the current
        pipeline is loading another target, :class:`OverBudget` when it does not fit, and the
        validation errors of :meth:`validate`.
        """
        cls, params, target = self.validate(pipeline_id, load_params)
        current = self.current
        if current is not None and current.status == LOADING and current.target != target:
            raise LoadConflict(
                f"Pipeline '{current.target.pipeline_id}' is loading; wait for it before loading another."
            )
        slot, started = await self.pool.admit(cls, params, target, keep=current)
        slot.unload_when_idle = False
        self.current = slot
        if started:
            slot.notify("loading", f"Loading pipeline {pipeline_id}")
        return started

    async def slot_for(self, pipeline_id: str, load_params: dict[str, Any] | None, session_id: str) -> PipelineSlot:
        """The pool's slot for an offer that names its pipeline, loading it if needed, with the
        offer's session bound to it (the current pipeline stays as it is)."""
        cls, params, target = self.validate(pipeline_id, load_params)
        slot, started = await self.pool.admit(cls, params, target, keep=self.current, session_id=session_id)
        if started:
            slot.notify("loading", f"Loading pipeline {pipeline_id}")
        return slot

    async def bind(self, slot: PipelineSlot, session_id: str) -> None:
        await self.pool.bind(slot, session_id)

    async def release(self, slot: PipelineSlot, session_id: str) -> None:
        await self.pool.release(slot, session_id)

    async def _prepare(self, cls: type[Pipeline]) -> None:
        if self.synthetic_fallback and cls.artifacts:
            # Off the device thread: writing files must not hold up other streams' chunks.
            await asyncio.get_running_loop().run_in_executor(None, ensure_synthetic, self.context.models_dir, cls.artifacts)

    def _budget(self, pool_bytes: int) -> int:
        return device_budget(budget_device(), self.memory_budget_bytes, pool_bytes)

    # Unloading --------------------------------------------------------------------------

    async def unload(self, target: LoadTarget | None = None) -> str:
        """Unload the current pipeline, or ``target`` (from :meth:`validate_named`).

        One that sessions use is marked to unload when the last of them ends. Returns what was
        done, for the reply. Raises :class:`LoadConflict` while it loads, :class:`NotInPool` for
        a named one that is not loaded.
        """
        if target is None:
            slot = self.current if self.current is not None and self.pool.get(self.current.target) is self.current else None
            if slot is None:
                self.current = None
                return "Pipeline unloaded"
        else:
            slot = self.pool.get(target)
            failed = self.pool.failed.pop(target.key, None) if slot is None else None
            if failed is not None:
                if failed is self.current:
                    self.current = None
                return "Failed load dismissed"
            if slot is None:
                raise NotInPool(f"Pipeline '{target.pipeline_id}' with these load_params is not loaded.")
        if slot.status == LOADING:
            raise LoadConflict(f"Pipeline '{slot.target.pipeline_id}' is loading; unload it once it has finished.")
        if slot is self.current:
            self.current = None
        if slot.sessions:
            slot.unload_when_idle = True
            count = len(slot.sessions)
            ending = "its session ends" if count == 1 else f"its {count} sessions end"
            return f"Pipeline {slot.target.pipeline_id} unloads when {ending}"
        await self.pool.unload(slot)
        return "Pipeline unloaded"

    async def unload_all(self) -> None:
        """Unload every pipeline (on shutdown, once the sessions have closed)."""
        await self.pool.wait_idle()
        for slot in list(self.pool.slots.values()):
            await self.pool.unload(slot)
        self.current = None

    async def wait_idle(self) -> None:
        """Wait for running loads to finish (used on shutdown and by tests)."""
        await self.pool.wait_idle()

    # Reporting --------------------------------------------------------------------------

    def status_dict(self) -> dict[str, Any]:
        target, pipeline = self.target, self.pipeline
        return {
            "status": self.status,
            "pipeline_id": target.pipeline_id if target else None,
            "load_params": target.load_params if target else None,
            "loaded_lora_adapters": pipeline.loaded_lora_adapters if pipeline else None,
            "error": self.error,
            "synthetic": bool(pipeline and pipeline.synthetic),
            "warnings": list(pipeline.load_warnings) if pipeline else [],
            "pipelines": [
                {**slot.describe(), "current": slot is self.current}
                for slot in (*self.pool.slots.values(), *self.pool.failed.values())
            ],
            "memory_budget_bytes": self.pool.budget_bytes(),
        }


def ensure_synthetic(models_dir, artifacts) -> None:
    """Write synthetic weights when some of a pipeline's files are missing."""
    if is_downloaded(models_dir, artifacts):
        return
    logger.info("weights missing in %s: writing synthetic ones", models_dir)
    started, sizes = time.monotonic(), []
    write_synthetic(models_dir, artifacts, on_file=lambda path, size: sizes.append(size))
    logger.info(
        "synthetic weights written: %d files, %s, in %.1f s",
        len(sizes), format_bytes(sum(sizes)), time.monotonic() - started,
    )


def _free(pipeline: Pipeline) -> None:
    """Unload a pipeline and give its memory back (runs on the device thread)."""
    heavy = pipeline.info.requires_models
    pipeline.unload()
    del pipeline
    if not heavy:
        return  # nothing large to reclaim: skip a full collection, which stalls every thread
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
