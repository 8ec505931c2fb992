"""Workers on a Ray cluster: one actor per GPU (or per unit of a custom resource), anywhere.

The API server (REST, signalling, media encoding and sending) stays on its machine; each worker
is an actor of :class:`~scope.streaming.ray_host.PipelineHost` that Ray places by resources, so
the GPUs of every node serve sessions. A loaded pipeline is a :class:`RemotePipeline` on the
server: the facts the server reports and checks parameters against, and streams
(:class:`RemoteStream`) whose chunks run in the actor. Per chunk, the merged parameters and the
input frames go to the actor and the output frames come back through Ray's object store.

Each worker's calls go through one thread of the server, so its sessions take turns in order
as on a local worker. An actor that dies (killed, its process or node gone) raises
:class:`~scope.streaming.worker.WorkerLost` from the call that finds it, and a health check
finds it between calls; the worker is then lost once, and only its sessions end.

Ray is an optional extra (``pip install "daydream-scope[ray]"``); nothing here is imported
without ``ray_address``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import types
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from scope.pipelines.base import Chunk, LoadContext, Pipeline, Stream
from scope.streaming.memory_budget import budget_from_free
from scope.streaming.ray_host import MAX_CONCURRENCY, PipelineHost
from scope.streaming.worker import Worker, WorkerLost

if TYPE_CHECKING:
    from scope.streaming.pool import LoadTarget

logger = logging.getLogger(__name__)

#: Seconds between health checks of an actor (which also refresh its free memory).
HEALTH_INTERVAL_S = 1.0
#: How long a new actor may take to start (a node may first have to import torch).
START_TIMEOUT_S = 300.0
#: Ray's namespace for Scope's actors.
NAMESPACE = "scope"


def import_ray():
    # The server stops gracefully on SIGTERM (its sessions told, its actors ended): Ray's own
    # crash handler, read when Ray is imported, would take the signal and print a stack trace.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        import ray
    except ImportError:
        raise RuntimeError(
            "ray_address needs Ray, an optional extra: pip install \"daydream-scope[ray]\""
        ) from None
    return ray


def start_ray_workers(
    address: str,
    context: LoadContext,
    *,
    resource: str = "GPU",
    count: int = 0,
    threads: int = 0,
    synthetic_fallback: bool = False,
    max_sessions: int = 0,
) -> list["RayWorker"]:
    """Connect to the cluster at ``address`` and start ``count`` worker actors, each taking one
    ``resource`` (0: one per unit the cluster has); blocks until they have started."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING)
    total = ray.cluster_resources().get(resource, 0)
    count = count or int(total)
    if count < 1:
        raise RuntimeError(f"the Ray cluster at {address} has no '{resource}' resource to place workers on")
    placement = {"num_gpus": 1} if resource == "GPU" else {"resources": {resource: 1}}
    actor_class = ray.remote(PipelineHost).options(num_cpus=0, max_concurrency=MAX_CONCURRENCY, **placement)
    actors = [actor_class.remote(context, threads, synthetic_fallback) for _ in range(count)]
    try:
        places = ray.get([actor.where.remote() for actor in actors], timeout=START_TIMEOUT_S)
    except Exception:
        for actor in actors:
            ray.kill(actor)
        raise
    workers = [RayWorker(f"ray-{index}", actor, place, max_sessions=max_sessions) for index, (actor, place) in enumerate(zip(actors, places))]
    for worker in workers:
        logger.info("worker %s: a Ray actor on node %s (%s, pid %s)", worker.id, worker.node_ip, worker.device, worker.pid)
    return workers


def disconnect_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


class RayWorker(Worker):
    """A worker whose device is a Ray actor's, wherever Ray placed it."""

    kind = "ray"

    def __init__(self, worker_id: str, actor, place: dict[str, Any], *, max_sessions: int = 0):
        super().__init__(worker_id, place["device"], max_sessions=max_sessions)
        self.actor = actor
        self.node_ip, self.pid, self.gpu_ids = place["node_ip"], place["pid"], place["gpu_ids"]
        self._free_bytes = int(place["free_bytes"])
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"scope-{worker_id}")
        self._health: asyncio.Task | None = None

    @property
    def executor(self) -> Executor:
        return self._executor

    # Calls ----------------------------------------------------------------------------

    def call(self, method: str, *args: Any) -> Any:
        """Call the actor and wait (blocking: on :attr:`executor` or another thread)."""
        import ray

        try:
            return ray.get(getattr(self.actor, method).remote(*args))
        except Exception as exc:
            raise self._translate(exc) from None

    async def call_async(self, method: str, *args: Any) -> Any:
        """Call the actor from the event loop."""
        try:
            return await getattr(self.actor, method).remote(*args)
        except Exception as exc:
            raise self._translate(exc) from None

    def _translate(self, exc: Exception) -> Exception:
        """A dead actor loses the worker; an error inside a call is the call's own error."""
        from ray.exceptions import RayActorError, RayTaskError

        if isinstance(exc, RayActorError):
            reason = _first_line(exc)
            self.lost(reason)
            return WorkerLost(f"Worker {self.id} was lost: {reason}")
        if isinstance(exc, RayTaskError) and isinstance(exc.cause, Exception):
            return exc.cause
        return exc

    # The pool's side ------------------------------------------------------------------

    async def load(self, cls: type[Pipeline], params: BaseModel, target: LoadTarget) -> tuple[Pipeline, int]:
        facts = await self.call_async("load", cls, target.load_params)
        return RemotePipeline(self, cls, params, facts), int(facts["measured_bytes"])

    async def free(self, pipeline: Pipeline) -> None:
        try:
            await self.call_async("free", pipeline.handle)
        except WorkerLost:
            pass  # its memory went with the actor

    def stream_bytes(self, stream: Stream, pipeline: Pipeline) -> int:
        return int(self.call("stream_bytes", stream.stream_id))

    def budget_bytes(self, configured: int, pool_bytes: int) -> int:
        if configured:
            return configured
        return budget_from_free(self._free_bytes, pool_bytes)

    # Life -----------------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        self._health = asyncio.get_running_loop().create_task(self._watch(), name=f"scope-{self.id}-health")

    async def _watch(self) -> None:
        """Find a dead actor between calls, and keep its free memory current."""
        while self.alive:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            try:
                self._free_bytes = int(await self.call_async("free_bytes"))
            except WorkerLost:
                return
            except Exception as exc:  # the cluster is unwell, but the actor is not known dead
                logger.warning("worker %s: health check failed: %s", self.id, exc)

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.alive:
            import ray

            try:
                ray.kill(self.actor, no_restart=True)
            except Exception as exc:  # the cluster may already be gone
                logger.debug("worker %s: could not stop its actor: %s", self.id, exc)

    def details(self) -> dict[str, Any]:
        return {"node_ip": self.node_ip, "pid": self.pid, "gpu_ids": self.gpu_ids}


class RemotePipeline:
    """A pipeline loaded in a worker's actor, as the server sees it.

    It carries the facts the server reports (``synthetic``, ``load_warnings``, LoRAs) and checks
    parameters the way the pipeline does: ``check_parameters`` reads only those facts, the load
    parameters and the class's own attributes, all of which are here.
    """

    def __init__(self, worker: RayWorker, cls: type[Pipeline], params: BaseModel, facts: dict[str, Any]):
        self.worker = worker
        self.pipeline_class = cls
        self.load_params = params
        self.handle = facts["handle"]
        self.synthetic = bool(facts["synthetic"])
        self.load_warnings = list(facts["load_warnings"])
        self.loaded_lora_adapters = facts["loaded_lora_adapters"]
        self.lora_dir = worker.pool.context.lora_dir if worker.pool is not None else None

    def __getattr__(self, name: str) -> Any:
        # The pipeline's class-level facts (info, parameters_model, vace_in_video_mode, ...),
        # and its helper methods, bound to these facts.
        value = getattr(self.pipeline_class, name)
        return types.MethodType(value, self) if inspect.isfunction(value) else value

    def check_parameters(self, update: dict[str, Any]) -> list[dict[str, Any]]:
        return self.pipeline_class.check_parameters(self, update)

    def open_stream(self) -> "RemoteStream":
        """Open a stream in the actor (blocking: on the worker's thread)."""
        stream_id, frames_needed = self.worker.call("open_stream", self.handle)
        stream = RemoteStream(self.worker, stream_id, frames_needed)
        stream.parameters_model = self.pipeline_class.parameters_model
        stream.check_parameters = self.check_parameters
        return stream


class RemoteStream(Stream):
    """A stream whose state lives in a worker's actor; its chunks run there."""

    def __init__(self, worker: RayWorker, stream_id: int, frames_needed: int):
        self.worker = worker
        self.stream_id = stream_id
        self._frames_needed = frames_needed
        #: The stream's LoRA scales, as its last chunk applied them.
        self.lora_scales: dict[str, float] = {}

    def frames_needed(self, params: dict[str, Any]) -> int:
        """What the stream said it takes next (the pipelines' counts are fixed once a stream opens)."""
        return self._frames_needed

    def run_chunk(self, params: dict[str, Any], video: np.ndarray | None = None, *, init_cache: bool = False) -> Chunk:
        chunk, self._frames_needed, scales = self.worker.call("run_chunk", self.stream_id, params, video, init_cache)
        if scales is not None:
            self.lora_scales = scales
        return chunk

    def close(self) -> None:
        try:
            self.worker.call("close_stream", self.stream_id)
        except WorkerLost:
            pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line[:300]
