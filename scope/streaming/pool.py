"""The pool of loaded pipelines: several at once, within a memory budget per device.

Each pipeline of the pool sits in a :class:`PipelineSlot` with its load state, the sessions bound
to it and what it holds. A load first estimates what the pipeline needs
(``Pipeline.memory_estimate``, corrected by what earlier loads and streams of the same pipeline
actually took), makes room by unloading the least recently used pipelines that no session uses,
and is refused with :class:`OverBudget`, naming what holds the memory, when that is not enough.
After a load the pool measures the tensors the pipeline holds; sessions measure their streams.

Each pool belongs to one worker (:mod:`scope.streaming.worker`), a device with its own budget.
Loads run one at a time beside the worker's generation thread, so a session of another pipeline
keeps streaming while one loads instead of freezing for the whole load (tens of seconds at real
size). Unloads run on the generation thread, between chunks.

A slot's pipeline never changes: a session bound to a slot keeps its pipeline until it ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from scope.pipelines.base import LoadContext, MemoryEstimate, Pipeline

if TYPE_CHECKING:
    from scope.streaming.worker import Worker

logger = logging.getLogger(__name__)

NOT_LOADED, LOADING, LOADED, ERROR = "not_loaded", "loading", "loaded", "error"

SlotListener = Callable[[str, str], None]
#: How many failed loads the status keeps listing.
MAX_FAILED = 8


@dataclass(frozen=True)
class LoadTarget:
    """What a load asks for: a pipeline id and its normalised load parameters."""

    pipeline_id: str
    load_params: dict[str, Any]

    @property
    def key(self) -> str:
        return json.dumps([self.pipeline_id, self.load_params], sort_keys=True)


class OverBudget(Exception):
    """A load (or another stream) does not fit: every pipeline holding the memory is in use."""

    def __init__(self, target: LoadTarget, needed: int, budget: int, holders: list[dict[str, Any]]):
        super().__init__(
            f"Not enough memory for pipeline '{target.pipeline_id}': it needs about {_gib(needed)} of a "
            f"{_gib(budget)} budget, and the pipelines holding the rest are in use by sessions."
        )
        self.target, self.needed, self.budget, self.holders = target, needed, budget, holders

    def errors(self, loc: list[Any]) -> list[dict[str, Any]]:
        """The refusal as the API's JSON errors: the field, why, and what holds the memory."""
        return [
            {
                "loc": loc,
                "msg": str(self),
                "type": "memory_budget",
                "needed_bytes": self.needed,
                "budget_bytes": self.budget,
                "holders": self.holders,
            }
        ]


class SlotMemory:
    """What a slot holds: estimated before its load, then measured (the weights once loaded, a
    stream's caches once its first stream has run)."""

    def __init__(self, raw: MemoryEstimate, estimated: MemoryEstimate):
        #: The pipeline's own estimate, and the one corrected by earlier measurements.
        self.raw, self.estimated = raw, estimated
        self.measured_weights: int | None = None
        self.measured_stream: int | None = None

    @property
    def weights(self) -> int:
        return self.measured_weights if self.measured_weights is not None else self.estimated.weights_bytes

    @property
    def stream(self) -> int:
        return self.measured_stream if self.measured_stream is not None else self.estimated.stream_bytes

    def held(self, sessions: int) -> int:
        """Weights, shared caches at their full size, and one stream's caches per session (one at
        least: a loaded pipeline is there to stream)."""
        return self.weights + self.estimated.cache_bytes + self.stream * max(1, sessions)

    def describe(self, sessions: int) -> dict[str, Any]:
        return {
            "held_bytes": self.held(sessions),
            "estimated_weights_bytes": self.estimated.weights_bytes,
            "measured_weights_bytes": self.measured_weights,
            "cache_bytes": self.estimated.cache_bytes,
            "stream_bytes": self.stream,
            "estimated_stream_bytes": self.estimated.stream_bytes,
            "measured_stream_bytes": self.measured_stream,
        }


class PipelineSlot:
    """One pipeline of the pool: its load state, the sessions bound to it, what it holds.

    Sessions use a slot as their pipeline source: ``status``, ``pipeline``, ``error`` and the
    listeners tell them when it has loaded or failed.
    """

    def __init__(
        self,
        target: LoadTarget,
        context: LoadContext,
        memory: SlotMemory,
        cls: type[Pipeline],
        on_stream_measured: Callable[["PipelineSlot"], None] | None = None,
        worker: Worker | None = None,
        params: BaseModel | None = None,
    ):
        self.target = target
        #: The validated load parameters (a copy on another worker loads from them).
        self.params = params
        self.context = context
        #: The worker whose device holds the pipeline and runs its chunks.
        self.worker = worker
        #: The pipeline's class: its parameter model and modes are known before it has loaded.
        self.pipeline_class = cls
        self.status = LOADING
        self.pipeline: Pipeline | None = None
        self.error: str | None = None
        self.sessions: set[str] = set()
        self.last_used = time.monotonic()
        #: Unload once the last session ends (an unload asked for while sessions use it).
        self.unload_when_idle = False
        self.memory = memory
        self._on_stream_measured = on_stream_measured
        self.task: asyncio.Task | None = None
        self._listeners: list[SlotListener] = []
        self._changed = asyncio.Event()

    @property
    def executor(self):
        """The thread the pipeline's chunks run on: its worker's."""
        return self.worker.executor

    @property
    def held_bytes(self) -> int:
        """What the slot holds, or will once loaded."""
        return self.memory.held(len(self.sessions))

    def stream_measured(self, size: int) -> None:
        """A stream of this pipeline was measured: it holds ``size`` bytes beyond the pipeline's."""
        self.memory.measured_stream = max(self.memory.measured_stream or 0, size)
        if self._on_stream_measured is not None:
            self._on_stream_measured(self)

    # Observers --------------------------------------------------------------------------

    def add_listener(self, listener: SlotListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: SlotListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def notify(self, event: str, message: str) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        for listener in list(self._listeners):
            try:
                listener(event, message)
            except Exception:  # a broken listener must not break loading
                logger.exception("pipeline listener failed")

    async def wait_changed(self) -> None:
        """Wait until the status changes (loaded, failed or unloaded)."""
        await self._changed.wait()

    # Reporting --------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The slot as ``pipeline/status`` lists it under ``pipelines``."""
        pipeline = self.pipeline
        return {
            "pipeline_id": self.target.pipeline_id,
            "load_params": self.target.load_params,
            "status": self.status,
            "error": self.error,
            "sessions": sorted(self.sessions),
            "unload_when_idle": self.unload_when_idle,
            "synthetic": bool(pipeline and pipeline.synthetic),
            "loaded_lora_adapters": pipeline.loaded_lora_adapters if pipeline else None,
            "warnings": list(pipeline.load_warnings) if pipeline else [],
            "memory": self.memory.describe(len(self.sessions)),
            "worker": self.worker.id if self.worker is not None else None,
        }

    def holder(self) -> dict[str, Any]:
        """The slot as an :class:`OverBudget` refusal names it."""
        return {
            "pipeline_id": self.target.pipeline_id,
            "load_params": self.target.load_params,
            "sessions": sorted(self.sessions),
            "held_bytes": self.held_bytes,
            "worker": self.worker.id if self.worker is not None else None,
        }


class PipelinePool:
    """One worker's loading and loaded pipelines, keyed by target, and the budget they share."""

    def __init__(self, context: LoadContext, worker: Worker, *, budget: Callable[[int], int]):
        self.context = context
        #: Loads, runs and frees this pool's pipelines on its device.
        self.worker = worker
        worker.pool = self
        #: The budget in bytes, given what the pool holds now.
        self._budget = budget
        self.slots: dict[str, PipelineSlot] = {}
        #: The latest failed loads (they hold nothing), until loaded again or dismissed by an unload.
        self.failed: dict[str, PipelineSlot] = {}
        #: Per pipeline id: measured ÷ estimated weights of its last load, and of its streams.
        self.weight_corrections: dict[str, float] = {}
        self.stream_corrections: dict[str, float] = {}
        self._admission = asyncio.Lock()

    def get(self, target: LoadTarget) -> PipelineSlot | None:
        return self.slots.get(target.key)

    def held_bytes(self) -> int:
        return sum(slot.held_bytes for slot in self.slots.values())

    def budget_bytes(self) -> int:
        return self._budget(self.held_bytes())

    def room_bytes(self) -> int:
        """What a load could take here: the budget left, plus what unloading the idle pipelines would free."""
        idle = sum(slot.held_bytes for slot in self.slots.values() if slot.status == LOADED and not slot.sessions)
        return self.budget_bytes() - self.held_bytes() + idle

    def holds(self, target: LoadTarget) -> bool:
        """Whether ``target`` is loaded or loading here."""
        return self.get(target) is not None

    def estimate(self, cls: type[Pipeline], params: BaseModel, pipeline_id: str) -> SlotMemory:
        """``cls``'s estimate, scaled by what earlier loads and streams of ``pipeline_id`` measured."""
        raw = cls.memory_estimate(params, self.context)
        return SlotMemory(
            raw,
            MemoryEstimate(
                int(raw.weights_bytes * self.weight_corrections.get(pipeline_id, 1.0)),
                int(raw.stream_bytes * self.stream_corrections.get(pipeline_id, 1.0)),
                raw.cache_bytes,
            ),
        )

    def _stream_measured(self, slot: PipelineSlot) -> None:
        raw = slot.memory.raw.stream_bytes
        if raw > 0 and slot.memory.measured_stream:
            self.stream_corrections[slot.target.pipeline_id] = slot.memory.measured_stream / raw

    async def admit(
        self,
        cls: type[Pipeline],
        params: BaseModel,
        target: LoadTarget,
        keep: PipelineSlot | None = None,
        session_id: str | None = None,
    ) -> tuple[PipelineSlot, bool]:
        """The slot of ``target``, loading it first when the pool lacks it (True then), with
        ``session_id`` bound to it in the same step (so no other load can evict it between).

        Room is made by unloading idle pipelines, least recently used first and ``keep`` (the
        current pipeline) last; :class:`OverBudget` when the pipelines in use leave too little.
        """
        async with self._admission:
            slot = self.get(target)
            if slot is not None:
                if session_id is not None:
                    await self._add_session(slot, session_id)
                slot.last_used = time.monotonic()
                return slot, False
            memory = self.estimate(cls, params, target.pipeline_id)
            await self._make_room(memory.held(1), target, last=keep)
            self.failed.pop(target.key, None)  # tried again
            slot = PipelineSlot(target, self.context, memory, cls, self._stream_measured, self.worker, params)
            if session_id is not None:
                slot.sessions.add(session_id)
            self.slots[target.key] = slot
            slot.task = asyncio.get_running_loop().create_task(self._load(slot, cls, params))
            return slot, True

    async def bind(self, slot: PipelineSlot, session_id: str) -> None:
        """Count a session on ``slot``, which must still be in the pool (LookupError otherwise);
        another stream's caches must fit too (:class:`OverBudget`)."""
        async with self._admission:
            if self.get(slot.target) is not slot:
                raise LookupError(f"Pipeline '{slot.target.pipeline_id}' is no longer loaded.")
            await self._add_session(slot, session_id)

    async def _add_session(self, slot: PipelineSlot, session_id: str) -> None:
        if slot.sessions:
            await self._make_room(slot.memory.stream, slot.target, spare=slot)
        slot.sessions.add(session_id)
        slot.last_used = time.monotonic()

    async def release(self, slot: PipelineSlot, session_id: str) -> None:
        """A session ended: the slot is used as of now; unload it if that was asked for."""
        slot.sessions.discard(session_id)
        slot.last_used = time.monotonic()
        if slot.unload_when_idle and not slot.sessions and self.get(slot.target) is slot and slot.status == LOADED:
            logger.info("pipeline %s: its last session ended; unloading it as asked", slot.target.pipeline_id)
            await self.unload(slot)

    async def _make_room(
        self, needed: int, target: LoadTarget, *, spare: PipelineSlot | None = None, last: PipelineSlot | None = None
    ) -> None:
        """Unload idle pipelines, least recently used first and ``last`` last, never ``spare``,
        until ``needed`` more bytes fit; :class:`OverBudget` (and nothing unloaded) when even
        all of them would not make enough room."""
        budget = self.budget_bytes()
        idle = sorted(
            (s for s in self.slots.values() if s.status == LOADED and not s.sessions and s is not spare),
            key=lambda s: (s is last, s.last_used),
        )
        if self.held_bytes() - sum(slot.held_bytes for slot in idle) + needed > budget:
            # Even with every idle pipeline gone it would not fit: refuse, and unload nothing.
            raise OverBudget(target, needed, budget, [slot.holder() for slot in self.slots.values()])
        while self.held_bytes() + needed > budget and idle:
            evicted = idle.pop(0)
            logger.info(
                "unloading idle pipeline %s (%s) to make room for %s",
                evicted.target.pipeline_id, _gib(evicted.held_bytes), target.pipeline_id,
            )
            await self.unload(evicted)

    async def _load(self, slot: PipelineSlot, cls: type[Pipeline], params: BaseModel) -> None:
        started = time.monotonic()
        pipeline_id = slot.target.pipeline_id
        logger.info("loading pipeline %s on worker %s (about %s)", pipeline_id, self.worker.id, _gib(slot.held_bytes))
        logger.debug("pipeline %s load parameters: %s", pipeline_id, slot.target.load_params)
        try:
            pipeline, measured = await self.worker.load(cls, params, slot.target)
        except Exception as exc:
            logger.exception("loading %s failed", pipeline_id)
            if slot.status == LOADING:  # not already failed with its worker
                self.fail(slot, f"Failed to load pipeline {pipeline_id}: {exc}")
            return
        if slot.status != LOADING:  # unloaded (server shutting down, worker lost) while it loaded
            if self.worker.alive:
                await self.worker.free(pipeline)
            return
        raw = slot.memory.raw.weights_bytes
        if raw > 0 and measured > 0:
            self.weight_corrections[pipeline_id] = measured / raw
        slot.pipeline, slot.status = pipeline, LOADED
        slot.memory.measured_weights = measured
        logger.info(
            "pipeline %s loaded in %.1f s (weights estimated at %s, measured %s)",
            pipeline_id, time.monotonic() - started, _gib(slot.memory.estimated.weights_bytes), _gib(measured),
        )
        slot.notify("loaded", f"Pipeline {pipeline_id} loaded")

    def fail(self, slot: PipelineSlot, error: str) -> None:
        """``slot`` failed (its load, or its worker): it holds nothing and is listed with
        ``error`` until loaded again or dismissed; its sessions end with the error."""
        self.slots.pop(slot.target.key, None)
        slot.pipeline, slot.status, slot.error = None, ERROR, error
        self.failed[slot.target.key] = slot
        while len(self.failed) > MAX_FAILED:
            self.failed.pop(next(iter(self.failed)))
        slot.notify("load_failed", error)

    def fail_all(self, error: str) -> None:
        """The worker is gone: every pipeline of the pool fails with ``error``."""
        for slot in list(self.slots.values()):
            self.fail(slot, error)

    async def unload(self, slot: PipelineSlot) -> None:
        """Drop ``slot`` from the pool and free its pipeline on the worker's device, between chunks."""
        self.slots.pop(slot.target.key, None)
        pipeline, slot.pipeline = slot.pipeline, None
        slot.status = NOT_LOADED
        if pipeline is not None and self.worker.alive:
            await self.worker.free(pipeline)
        slot.notify("unloaded", f"Pipeline {slot.target.pipeline_id} unloaded")

    async def wait_idle(self) -> None:
        """Wait for every running load to finish."""
        tasks = [slot.task for slot in self.slots.values() if slot.task is not None and not slot.task.done()]
        if tasks:
            await asyncio.gather(*(asyncio.shield(t) for t in tasks), return_exceptions=True)


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"
