"""What a Ray worker actor runs: the pipelines of one worker and the streams open on them.

The server (:mod:`scope.streaming.ray_worker`) sends it loads, stream openings and chunks; the
weights and every stream's caches stay in this process, on the device Ray gave it, and only
parameters, input frames and output frames cross the network. The actor takes several calls at
once (``max_concurrency``), so a load runs beside the chunks of the streams already open and a
health check never waits behind either; a lock keeps the device to one chunk at a time, as a
local worker's generation thread does.
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any

import numpy as np
import torch

from scope.pipelines.base import Chunk, LoadContext, Pipeline, Stream
from scope.streaming.local_worker import ensure_synthetic, free_pipeline
from scope.streaming.memory_budget import budget_device, free_device_bytes, held_bytes

#: Calls the actor runs at once: a load, the device's chunk, and health checks beside them.
MAX_CONCURRENCY = 4


class PipelineHost:
    """One worker's pipelines and streams, inside its actor (a plain class: Ray wraps it)."""

    def __init__(self, context: LoadContext, threads: int = 0, synthetic_fallback: bool = False):
        self.context = context
        self.threads = threads
        self.synthetic_fallback = synthetic_fallback
        self.pipelines: dict[int, Pipeline] = {}
        self.streams: dict[int, tuple[Stream, int]] = {}
        self._ids = itertools.count(1)
        #: The device runs one chunk (or opening, closing, freeing) at a time.
        self._device = threading.Lock()
        #: Loads run one at a time, beside the chunks.
        self._loading = threading.Lock()
        self._bound = threading.local()

    def _bind(self) -> None:
        """Torch's thread count is per thread, and the actor's calls run on several threads."""
        if self.threads and not getattr(self._bound, "done", False):
            torch.set_num_threads(self.threads)
            self._bound.done = True

    # Facts --------------------------------------------------------------------------------

    def where(self) -> dict[str, Any]:
        """Where this worker runs: node, process, device and the device's free memory."""
        import ray

        context = ray.get_runtime_context()
        return {
            "node": context.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
            "device": str(_indexed(budget_device())),
            "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
            "free_bytes": self.free_bytes(),
        }

    def free_bytes(self) -> int:
        """The device's free memory; also the health check."""
        return free_device_bytes(budget_device())

    # Pipelines ----------------------------------------------------------------------------

    def load(self, cls: type[Pipeline], load_params: dict[str, Any]) -> dict[str, Any]:
        """Load a pipeline from its (normalised) load parameters: its handle and facts.

        The server sends the class itself (by reference: its module must be importable here),
        so a pipeline registered on the server loads on its workers too."""
        self._bind()
        params = cls.load_params_model.model_validate(load_params, context=self.context.validation_context())
        with self._loading:
            if self.synthetic_fallback and cls.artifacts:
                ensure_synthetic(self.context.models_dir, cls.artifacts)
            pipeline = cls.load(params, self.context)
            measured = pipeline.memory_held()
        handle = next(self._ids)
        self.pipelines[handle] = pipeline
        return {
            "handle": handle,
            "measured_bytes": measured,
            "synthetic": pipeline.synthetic,
            "load_warnings": list(pipeline.load_warnings),
            "loaded_lora_adapters": pipeline.loaded_lora_adapters,
        }

    def free(self, handle: int) -> None:
        pipeline = self.pipelines.pop(handle, None)
        if pipeline is not None:
            with self._device:
                free_pipeline(pipeline)

    # Streams ------------------------------------------------------------------------------

    def open_stream(self, handle: int) -> tuple[int, int]:
        """Open a stream on a loaded pipeline: its id, and the input frames its chunks take."""
        self._bind()
        with self._device:
            stream = self.pipelines[handle].open_stream()
        stream_id = next(self._ids)
        self.streams[stream_id] = (stream, handle)
        return stream_id, stream.frames_needed({})

    def run_chunk(
        self, stream_id: int, params: dict[str, Any], video: np.ndarray | None, init_cache: bool
    ) -> tuple[Chunk, int, dict[str, float] | None]:
        """One chunk: the chunk, the frames the stream takes next, and its LoRA scales."""
        self._bind()
        stream, _ = self.streams[stream_id]
        with self._device:
            chunk = stream.run_chunk(params, video, init_cache=init_cache)
        scales = getattr(stream, "lora_scales", None)
        return chunk, stream.frames_needed(params), {str(k): v for k, v in scales.items()} if scales is not None else None

    def stream_bytes(self, stream_id: int) -> int:
        stream, handle = self.streams[stream_id]
        with self._device:
            return held_bytes(stream, exclude=self.pipelines.get(handle), device=budget_device().type)

    def close_stream(self, stream_id: int) -> None:
        entry = self.streams.pop(stream_id, None)
        if entry is not None:
            with self._device:
                entry[0].close()


def _indexed(device: torch.device) -> torch.device:
    """``cuda`` as the GPU it means here (``cuda:0``: Ray shows each actor its own GPUs)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device
