"""The loaded pipelines, and the one that is current.

Each worker (:mod:`scope.streaming.worker`: a device of this machine, or a Ray actor) has a pool
(:mod:`scope.streaming.pool`) that holds several pipelines at once within its memory budget; loads
and sessions are placed on the workers by :mod:`scope.streaming.placement`. Of the pipelines, one
is *current*: what ``pipeline/load`` last asked for, what ``pipeline/status``
describes, and what an offer that names no pipeline streams from, so a client of the spec sees
one pipeline as it always did. Loading runs on the device worker thread; the current status
becomes ``loading`` before the request that started it is answered, so a client polling right
after a 200 never sees the old state. While the current pipeline loads, a load of another one is
a conflict; the same target is idempotent. An ``error`` stays until the next load.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from pydantic import BaseModel, ValidationError

from scope.pipelines.base import LoadContext, Pipeline
from scope.params import validation_errors
from scope.pipelines.registry import UnknownPipeline, get_pipeline_class
from scope.streaming.local_worker import LocalWorker, local_devices
from scope.streaming.placement import NoWorker, for_load, for_session
from scope.streaming.pool import ERROR, LOADED, LOADING, NOT_LOADED, LoadTarget, OverBudget, PipelinePool, PipelineSlot
from scope.streaming.worker import Worker

logger = logging.getLogger(__name__)

__all__ = [
    "ERROR", "LOADED", "LOADING", "NOT_LOADED", "LoadConflict", "LoadTarget", "NoWorker", "NotInPool", "OverBudget",
    "PipelineManager", "TargetErrors",
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
    """Owns the workers and their pools of loaded pipelines, and says which pipeline is current."""

    def __init__(
        self,
        context: LoadContext,
        workers: list[Worker] | None = None,
        *,
        memory_budget_bytes: int = 0,
        synthetic_fallback: bool = False,
    ):
        self.context = context
        #: The workers write synthetic weights for a pipeline whose files are missing, before loading it.
        self.synthetic_fallback = synthetic_fallback
        #: The devices pipelines load on (by default one local worker per device of this machine).
        self.workers = workers or [
            LocalWorker(f"local-{index}", device, context, synthetic_fallback=synthetic_fallback)
            for index, device in enumerate(local_devices("auto"))
        ]
        #: Each pool's budget per device; 0 takes it from the device's free memory.
        self.memory_budget_bytes = memory_budget_bytes
        for worker in self.workers:
            PipelinePool(context, worker, budget=functools.partial(self._budget, worker))
            worker.on_lost = self._worker_lost
        #: The slot ``pipeline/load`` last asked for (it may have failed, or been unloaded since).
        self.current: PipelineSlot | None = None

    def _budget(self, worker: Worker, pool_bytes: int) -> int:
        return worker.budget_bytes(self.memory_budget_bytes, pool_bytes)

    @property
    def pools(self) -> list[PipelinePool]:
        return [worker.pool for worker in self.workers]

    def slots(self) -> list[PipelineSlot]:
        """Every loading or loaded pipeline, on every worker."""
        return [slot for pool in self.pools for slot in pool.slots.values()]

    def find(self, target: LoadTarget) -> PipelineSlot | None:
        """A slot of ``target`` (the loaded one first), on whichever worker holds it."""
        found = [slot for pool in self.pools if (slot := pool.get(target)) is not None]
        return next((slot for slot in found if slot.status == LOADED), found[0] if found else None)

    async def start(self) -> None:
        for worker in self.workers:
            await worker.start()

    async def close(self) -> None:
        for worker in self.workers:
            await worker.close()

    def _worker_lost(self, worker: Worker, reason: str) -> None:
        """Fail what the lost worker held: its sessions end with the reason, and later loads
        and sessions go to the workers that remain."""
        worker.pool.fail_all(f"Worker {worker.id} was lost: {reason}")

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
        worker = for_load(self.workers, target)
        slot, started = await self._admit(worker, cls, params, target, keep=current)
        slot.unload_when_idle = False
        self.current = slot
        if started:
            slot.notify("loading", f"Loading pipeline {pipeline_id}")
        return started

    async def slot_for(self, pipeline_id: str, load_params: dict[str, Any] | None, session_id: str) -> PipelineSlot:
        """A slot for a session (or render) that names its pipeline, with ``session_id`` bound to
        it: on the least-loaded worker holding the pipeline, else loaded on the worker with the
        most room (the current pipeline stays as it is). :class:`NoWorker` when every worker is
        at its session limit."""
        cls, params, target = self.validate(pipeline_id, load_params)
        return await self._place_session(cls, params, target, session_id)

    async def bind_current(self, session_id: str) -> PipelineSlot:
        """A slot of the current pipeline for a session whose offer names none, placed as
        :meth:`slot_for` places it; LookupError when the current pipeline was unloaded."""
        current = self.current
        if current is None or current.worker is None or current.worker.pool.get(current.target) is not current:
            raise LookupError("no pipeline is loaded")
        return await self._place_session(current.pipeline_class, current.params, current.target, session_id)

    async def _place_session(self, cls: type[Pipeline], params: BaseModel, target: LoadTarget, session_id: str) -> PipelineSlot:
        worker = for_session(self.workers, target)
        keep = self.current if self.current is not None and self.current.worker is worker else None
        slot, started = await self._admit(worker, cls, params, target, keep=keep, session_id=session_id)
        if started:
            slot.notify("loading", f"Loading pipeline {target.pipeline_id}")
        return slot

    async def _admit(self, worker: Worker, cls, params, target: LoadTarget, **options) -> tuple[PipelineSlot, bool]:
        slot, started = await worker.pool.admit(cls, params, target, **options)
        if started:  # tried again: a failure of it on another worker is no longer the news
            for pool in self.pools:
                pool.failed.pop(target.key, None)
        return slot, started

    async def release(self, slot: PipelineSlot, session_id: str) -> None:
        await slot.worker.pool.release(slot, session_id)

    # Unloading --------------------------------------------------------------------------

    async def unload(self, target: LoadTarget | None = None) -> str:
        """Unload the current pipeline, or ``target`` (from :meth:`validate_named`).

        One that sessions use is marked to unload when the last of them ends. Returns what was
        done, for the reply. Raises :class:`LoadConflict` while it loads, :class:`NotInPool` for
        a named one that is not loaded.
        """
        if target is None:
            current = self.current
            slot = current if current is not None and current.worker is not None and current.worker.pool.get(current.target) is current else None
            if slot is None:
                self.current = None
                return "Pipeline unloaded"
            return await self._unload_slot(slot)
        slots = [slot for pool in self.pools if (slot := pool.get(target)) is not None]
        if not slots:
            failed = [slot for pool in self.pools if (slot := pool.failed.pop(target.key, None)) is not None]
            if not failed:
                raise NotInPool(f"Pipeline '{target.pipeline_id}' with these load_params is not loaded.")
            if self.current in failed:
                self.current = None
            return "Failed load dismissed"
        if any(slot.status == LOADING for slot in slots):
            raise LoadConflict(f"Pipeline '{target.pipeline_id}' is loading; unload it once it has finished.")
        # Every worker's copy goes (or goes once its sessions end).
        replies = [await self._unload_slot(slot) for slot in slots]
        return next((reply for reply in replies if reply != "Pipeline unloaded"), "Pipeline unloaded")

    async def _unload_slot(self, slot: PipelineSlot) -> str:
        if slot.status == LOADING:
            raise LoadConflict(f"Pipeline '{slot.target.pipeline_id}' is loading; unload it once it has finished.")
        if slot is self.current:
            self.current = None
        if slot.sessions:
            slot.unload_when_idle = True
            count = len(slot.sessions)
            ending = "its session ends" if count == 1 else f"its {count} sessions end"
            return f"Pipeline {slot.target.pipeline_id} unloads when {ending}"
        await slot.worker.pool.unload(slot)
        return "Pipeline unloaded"

    async def unload_all(self) -> None:
        """Unload every pipeline (on shutdown, once the sessions have closed)."""
        await self.wait_idle()
        for pool in self.pools:
            for slot in list(pool.slots.values()):
                await pool.unload(slot)
        self.current = None

    async def wait_idle(self) -> None:
        """Wait for running loads to finish (used on shutdown and by tests)."""
        for pool in self.pools:
            await pool.wait_idle()

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
                for pool in self.pools
                for slot in (*pool.slots.values(), *pool.failed.values())
            ],
            "memory_budget_bytes": self._budget_worker().pool.budget_bytes(),
            "workers": [worker.describe() for worker in self.workers],
        }

    def _budget_worker(self) -> Worker:
        """The worker the top-level budget describes: the current pipeline's, else the first alive."""
        current = self.current
        if current is not None and current.worker is not None and current.worker.alive:
            return current.worker
        return next((worker for worker in self.workers if worker.alive), self.workers[0])
