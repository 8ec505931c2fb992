"""The pipeline load state machine.

One pipeline is loaded at a time. Loading runs on the device worker thread; the state becomes
``loading`` before the request that started it is answered, so a client polling right after a
200 never sees the old state. A load of a different target while loading is a conflict; the
same target is idempotent. An ``error`` stays until the next load.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from scope.models.artifacts import format_bytes, is_downloaded
from scope.models.synthetic.writer import write_synthetic
from scope.pipelines.base import LoadContext, Pipeline
from scope.pipelines.registry import get_pipeline_class

logger = logging.getLogger(__name__)

NOT_LOADED, LOADING, LOADED, ERROR = "not_loaded", "loading", "loaded", "error"


class LoadConflict(Exception):
    """A different load is already in progress."""


@dataclass(frozen=True)
class LoadTarget:
    pipeline_id: str
    load_params: dict[str, Any]


PipelineListener = Callable[[str, str], None]


class PipelineManager:
    """Owns the loaded pipeline and its status."""

    def __init__(self, context: LoadContext, executor: Executor, *, synthetic_fallback: bool = False):
        self.context = context
        self.executor = executor
        #: Write synthetic weights for a pipeline whose files are missing, before loading it.
        self.synthetic_fallback = synthetic_fallback
        self.status = NOT_LOADED
        self.target: LoadTarget | None = None
        self.pipeline: Pipeline | None = None
        self.error: str | None = None
        #: Increases on every successful load; streams opened on an older one are stale.
        self.generation = 0
        self._listeners: list[PipelineListener] = []
        self._task: asyncio.Task | None = None
        self._changed = asyncio.Event()

    # Observers --------------------------------------------------------------------------

    def add_listener(self, listener: PipelineListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: PipelineListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self, event: str, message: str) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        for listener in list(self._listeners):
            try:
                listener(event, message)
            except Exception:  # a broken listener must not break loading
                logger.exception("pipeline listener failed")

    async def wait_changed(self) -> None:
        """Wait until the status changes (load started, finished or failed)."""
        await self._changed.wait()

    # Loading ----------------------------------------------------------------------------

    def validate(self, pipeline_id: str, load_params: dict[str, Any] | None) -> tuple[type[Pipeline], BaseModel]:
        """Resolve the pipeline class and validate its load params (raises on bad input).

        Paths in the parameters must name files inside the server's directories.
        """
        cls = get_pipeline_class(pipeline_id)
        return cls, cls.load_params_model.model_validate(load_params or {}, context=self.context.validation_context())

    def request_load(self, pipeline_id: str, load_params: dict[str, Any] | None) -> bool:
        """Start loading unless the same target is loading or loaded.

        Returns True if a load was started. Raises :class:`LoadConflict` if a different load
        is in progress, and the validation errors of :meth:`validate`.
        """
        cls, params = self.validate(pipeline_id, load_params)
        target = LoadTarget(pipeline_id, params.model_dump(mode="json"))
        if self.status == LOADING:
            if target == self.target:
                return False
            raise LoadConflict(
                f"Pipeline '{self.target.pipeline_id}' is loading; wait for it before loading another."
            )
        if self.status == LOADED and target == self.target:
            return False
        self.status, self.target, self.error = LOADING, target, None
        self._notify("loading", f"Loading pipeline {pipeline_id}")
        self._task = asyncio.get_running_loop().create_task(self._load(cls, params, target))
        return True

    async def _load(self, cls: type[Pipeline], params: BaseModel, target: LoadTarget) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        logger.info("loading pipeline %s", target.pipeline_id)
        logger.debug("pipeline %s load parameters: %s", target.pipeline_id, target.load_params)
        await self._release_current()
        try:
            if self.synthetic_fallback and cls.artifacts:
                # Off the device thread: writing files must not hold up other streams' chunks.
                await loop.run_in_executor(None, ensure_synthetic, self.context.models_dir, cls.artifacts)
            pipeline = await loop.run_in_executor(self.executor, cls.load, params, self.context)
        except Exception as exc:
            logger.exception("loading %s failed", target.pipeline_id)
            self.status = ERROR
            self.error = f"Failed to load pipeline {target.pipeline_id}: {exc}"
            self._notify("load_failed", self.error)
            return
        self.pipeline = pipeline
        self.generation += 1
        self.status = LOADED
        logger.info("pipeline %s loaded in %.1f s", target.pipeline_id, time.monotonic() - started)
        self._notify("loaded", f"Pipeline {target.pipeline_id} loaded")

    async def _release_current(self) -> None:
        pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None:
            await asyncio.get_running_loop().run_in_executor(self.executor, _free, pipeline)

    async def unload(self) -> None:
        """Drop the loaded pipeline and free its memory (no-op while a load runs)."""
        if self.status == LOADING:
            raise LoadConflict("A pipeline is loading; unload it once it has finished.")
        await self._release_current()
        self.status, self.target, self.error = NOT_LOADED, None, None
        self._notify("unloaded", "Pipeline unloaded")

    async def wait_idle(self) -> None:
        """Wait for a running load to finish (used on shutdown and by tests)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    # Reporting --------------------------------------------------------------------------

    def status_dict(self) -> dict[str, Any]:
        target = self.target
        return {
            "status": self.status,
            "pipeline_id": target.pipeline_id if target and self.status in (LOADING, LOADED) else None,
            "load_params": target.load_params if target and self.status in (LOADING, LOADED) else None,
            "loaded_lora_adapters": self.pipeline.loaded_lora_adapters if self.pipeline else None,
            "error": self.error,
            "synthetic": bool(self.pipeline and self.pipeline.synthetic),
            "warnings": list(self.pipeline.load_warnings) if self.pipeline else [],
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
