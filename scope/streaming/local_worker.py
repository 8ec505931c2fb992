"""A worker in the server's own process: one device, a generation thread and a loader thread.

Both threads are bound to the worker's device (``torch.cuda.set_device`` is per thread, so a
pipeline loaded here and every chunk of it run on that GPU) and, when asked, to a number of
torch threads (also per thread), so two CPU workers of one process compute side by side without
oversubscribing the cores. Loads run on the loader thread, beside the generation thread, so the
worker's sessions keep streaming while another of its pipelines loads.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel

from scope.models.artifacts import format_bytes, is_downloaded
from scope.models.synthetic.writer import write_synthetic
from scope.pipelines.base import LoadContext, Pipeline, Stream
from scope.streaming.memory_budget import device_budget, held_bytes
from scope.streaming.worker import Worker

if TYPE_CHECKING:
    from scope.streaming.pool import LoadTarget

logger = logging.getLogger(__name__)


def local_devices(spec: str) -> list[str]:
    """The devices ``spec`` names, one worker each: ``auto`` is every CUDA device (the CPU when
    there is none); otherwise a comma-separated list (``cuda:0,cuda:1``; ``cpu,cpu`` is two CPU
    workers). ValueError for a device this machine lacks."""
    spec = spec.strip()
    if spec in ("", "auto"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{index}" for index in range(count)] or ["cpu"]
    devices = []
    for name in (part.strip() for part in spec.split(",")):
        device = torch.device(name)
        if device.type == "cuda":
            index = 0 if device.index is None else device.index
            if not torch.cuda.is_available() or index >= torch.cuda.device_count():
                raise ValueError(f"workers: this machine has no CUDA device {index}")
            devices.append(f"cuda:{index}")
        elif device.type == "cpu":
            devices.append("cpu")
        else:
            raise ValueError(f"workers: '{name}' is not a device Scope computes on (cpu, cuda:N)")
    if not devices:
        raise ValueError("workers: name at least one device")
    return devices


def bind_thread(device: str, threads: int) -> None:
    """Make the calling thread compute on ``device`` with ``threads`` torch threads (0: torch's
    default); both are per-thread settings of torch."""
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if threads:
        torch.set_num_threads(threads)


class LocalWorker(Worker):
    """One device of this machine, served by two threads of the server process."""

    kind = "local"

    def __init__(
        self,
        worker_id: str,
        device: str,
        context: LoadContext,
        *,
        threads: int = 0,
        synthetic_fallback: bool = False,
        max_sessions: int = 0,
    ):
        super().__init__(worker_id, device, max_sessions=max_sessions)
        self.context = context
        self.threads = threads
        self.synthetic_fallback = synthetic_fallback
        name = worker_id.replace(":", "")
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"scope-device-{name}", initializer=bind_thread, initargs=(device, threads)
        )
        self.loader = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"scope-load-{name}", initializer=bind_thread, initargs=(device, threads)
        )

    @property
    def executor(self) -> Executor:
        return self._executor

    async def load(self, cls: type[Pipeline], params: BaseModel, target: LoadTarget) -> tuple[Pipeline, int]:
        loop = asyncio.get_running_loop()
        if self.synthetic_fallback and cls.artifacts:
            # Off the generation thread: writing files must not hold up other streams' chunks.
            await loop.run_in_executor(None, ensure_synthetic, self.context.models_dir, cls.artifacts)

        def load_and_measure() -> tuple[Pipeline, int]:
            pipeline = cls.load(params, self.context)
            return pipeline, pipeline.memory_held()

        return await loop.run_in_executor(self.loader, load_and_measure)

    async def free(self, pipeline: Pipeline) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, free_pipeline, pipeline)

    def stream_bytes(self, stream: Stream, pipeline: Pipeline) -> int:
        return held_bytes(stream, exclude=pipeline, device=torch.device(self.device).type)

    def budget_bytes(self, configured: int, pool_bytes: int) -> int:
        return device_budget(torch.device(self.device), configured, pool_bytes)

    async def close(self) -> None:
        self.loader.shutdown(wait=False, cancel_futures=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def details(self) -> dict[str, object]:
        return {"torch_threads": self.threads or None}


def ensure_synthetic(models_dir: Path, artifacts) -> None:
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


def free_pipeline(pipeline: Pipeline) -> None:
    """Unload a pipeline and give its memory back (on the thread of its worker's device)."""
    heavy = pipeline.info.requires_models
    pipeline.unload()
    del pipeline
    if not heavy:
        return  # nothing large to reclaim: skip a full collection, which stalls every thread
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
