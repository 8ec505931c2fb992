"""A worker: one device with its own pool of pipelines, memory budget and generation thread.

The server spreads its pipelines over workers: one per CUDA device of the machine (the CPU when
there is none, :mod:`scope.streaming.local_worker`), or one per Ray actor placed on the GPUs of
a cluster (:mod:`scope.streaming.ray_worker`). Every chunk a worker runs goes through its
``executor``, a single thread on the server, so the sessions of one worker take turns on its
device exactly as they did on the one device thread, while two workers compute at once.

A worker can be lost (its Ray actor killed, its process gone). It then says so once, through
``on_lost``; the manager fails its pipelines, which ends their sessions with the reason, and
places later loads on the workers that remain.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from scope.pipelines.base import Pipeline, Stream

if TYPE_CHECKING:
    from scope.streaming.pool import LoadTarget, PipelinePool

logger = logging.getLogger(__name__)

READY, LOST = "ready", "lost"


class WorkerLost(Exception):
    """The worker that ran a call is gone; every session on it ends."""


class Worker(ABC):
    """One device's pipelines; subclasses say how they load, run and free them."""

    #: ``local`` (a thread of the server) or ``ray`` (an actor of a Ray cluster).
    kind = "local"

    def __init__(self, worker_id: str, device: str, *, max_sessions: int = 0):
        self.id = worker_id
        #: The device the worker computes on, as torch names it (``cuda:1``, ``cpu``).
        self.device = device
        #: Most sessions (and renders) at once on this worker; 0: only the server's limit.
        self.max_sessions = max_sessions
        self.state = READY
        self.error: str | None = None
        #: Set by the pool that the worker serves (a pool needs its worker to load).
        self.pool: PipelinePool | None = None
        #: Called once, on the event loop, when the worker is found lost (the manager's).
        self.on_lost: Callable[[Worker, str], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # What the pool and the sessions call ---------------------------------------------------

    @property
    @abstractmethod
    def executor(self) -> Executor:
        """The thread this worker's chunks (and stream openings and closings) run on, one at a time."""

    @abstractmethod
    async def load(self, cls: type[Pipeline], params: BaseModel, target: LoadTarget) -> tuple[Pipeline, int]:
        """Load a pipeline on this worker's device: the pipeline (or its stand-in) and the bytes
        its weights measure there."""

    @abstractmethod
    async def free(self, pipeline: Pipeline) -> None:
        """Unload ``pipeline`` and give its memory back."""

    @abstractmethod
    def stream_bytes(self, stream: Stream, pipeline: Pipeline) -> int:
        """What ``stream`` holds beyond its pipeline (blocking: runs on :attr:`executor`)."""

    @abstractmethod
    def budget_bytes(self, configured: int, pool_bytes: int) -> int:
        """What the pool may hold on the device: ``configured`` when not 0, else the device's
        free memory plus ``pool_bytes``, less a margin."""

    async def start(self) -> None:
        """Work the worker needs the event loop for (watching its health)."""
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        """Stop the worker's threads (and its actor)."""

    # Loss -----------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.state == READY

    def lost(self, reason: str) -> None:
        """Mark the worker lost (from any thread); the first report wins."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._mark_lost(reason)
        else:
            loop.call_soon_threadsafe(self._mark_lost, reason)

    def _mark_lost(self, reason: str) -> None:
        if self.state == LOST:
            return
        self.state, self.error = LOST, reason
        logger.error("worker %s (%s) lost: %s", self.id, self.device, reason)
        if self.on_lost is not None:
            self.on_lost(self, reason)

    # Reporting ------------------------------------------------------------------------

    def sessions(self) -> int:
        """Sessions and renders bound to this worker's pipelines."""
        return sum(len(slot.sessions) for slot in self.pool.slots.values()) if self.pool is not None else 0

    def has_room_for_session(self) -> bool:
        return self.alive and (not self.max_sessions or self.sessions() < self.max_sessions)

    def details(self) -> dict[str, Any]:
        """Where the worker runs, for ``pipeline/status`` (subclasses add theirs)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """The worker as ``pipeline/status`` lists it under ``workers``."""
        pool = self.pool
        return {
            "id": self.id,
            "kind": self.kind,
            "device": self.device,
            "state": self.state,
            "error": self.error,
            "sessions": self.sessions(),
            "max_sessions": self.max_sessions or None,
            "pipelines": len(pool.slots) if pool is not None else 0,
            "held_bytes": pool.held_bytes() if pool is not None else 0,
            "memory_budget_bytes": pool.budget_bytes() if pool is not None and self.alive else 0,
            **self.details(),
        }
