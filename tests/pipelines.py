"""Pipelines that exist only in tests, to exercise what passthrough cannot.

They are registered through the registry's public API by the ``test_pipelines`` fixture and
removed afterwards; nothing outside the tests knows about them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scope.models.artifacts import Artifact
from scope.pipelines import registry
from scope.pipelines.base import Chunk, LoadContext, Pipeline, PipelineInfo, Stream
from scope.pipelines.passthrough import PassthroughConfig
from scope.pipelines.sizes import multiple_of

#: Sizes the pattern pipeline accepts: the same check as the real pipelines, smaller bounds.
PatternSize = multiple_of(16, 16, 512)


class PatternLoadParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    height: PatternSize = 64
    width: PatternSize = 96
    seed: int = Field(42, ge=0)
    load_seconds: float = Field(0.0, ge=0, le=30, description="How long loading takes.")
    fail_load: bool = False
    fail_chunks: list[int] = Field(default_factory=list, description="Chunk numbers that raise.")
    fatal_chunk: int | None = Field(None, description="Chunk number that raises an out-of-memory error.")


def prompt_level(params: dict[str, Any]) -> int:
    """A brightness derived from the prompt text, so a prompt change shows in the pixels."""
    prompts = params.get("prompts") or [{"text": ""}]
    return (sum(map(ord, prompts[0]["text"])) * 37) % 200 + 30


class PatternStream(Stream):
    """Text mode: frames whose brightness encodes the prompt and whose corner counts chunks."""

    def __init__(self, pipeline: "PatternPipeline"):
        self.pipeline = pipeline
        self.chunk = 0
        self.seen: list[dict[str, Any]] = []

    def frames_needed(self, params: dict[str, Any]) -> int:
        return 2

    def run_chunk(self, params, video=None, *, init_cache=False) -> Chunk:
        p = self.pipeline.load_params
        self.chunk += 1
        self.seen.append({"params": params, "init_cache": init_cache, "video": None if video is None else video.shape})
        if self.chunk in p.fail_chunks:
            raise ValueError(f"chunk {self.chunk} failed on purpose")
        if p.fatal_chunk == self.chunk:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        frames = np.full((3, p.height, p.width, 3), prompt_level(params), dtype=np.uint8)
        if video is not None:
            frames[:, : video.shape[1] // 4, : video.shape[2] // 4] = 255 - prompt_level(params)
        frames[:, :8, :8] = (self.chunk * 10) % 256
        time.sleep(0.02)
        return Chunk(frames=frames, transition_active=False)


class PatternPipeline(Pipeline):
    info = PipelineInfo(
        id="test-pattern",
        name="Test pattern",
        description="Prompt-coloured frames (tests only).",
        supported_modes=("text", "video"),
        default_mode="text",
        requires_models=False,
        supports_cache_management=True,
    )
    load_params_model = PatternLoadParams
    config_model = PassthroughConfig
    default_parameters = {"denoising_step_list": [1000, 750, 500, 250]}
    mode_defaults = {"video": {"height": 64, "width": 64, "noise_scale": 0.7, "noise_controller": True}}
    loads = 0
    streams: list[PatternStream] = []
    gate: threading.Event | None = None

    @classmethod
    def load(cls, load_params, context: LoadContext) -> "PatternPipeline":
        cls.loads += 1
        if cls.gate is not None:
            cls.gate.wait(30)
        time.sleep(load_params.load_seconds)
        if load_params.fail_load:
            raise RuntimeError("weights are corrupt (on purpose)")
        return cls(load_params)

    def open_stream(self) -> Stream:
        stream = PatternStream(self)
        type(self).streams.append(stream)
        return stream


class DownloadablePipeline(PatternPipeline):
    """Needs files from a (fake) hub."""

    info = PipelineInfo(
        id="test-download",
        name="Test download",
        description="Needs model files (tests only).",
        supported_modes=("text",),
        default_mode="text",
    )
    artifacts = (
        Artifact("test-org/tiny-base", ("config.json", "weights.safetensors", "google")),
        Artifact("test-org/tiny-extra", ("extra.pt",)),
    )


TEST_PIPELINES = (PatternPipeline, DownloadablePipeline)


@contextlib.contextmanager
def registered(cls: type[Pipeline]) -> Iterator[type[Pipeline]]:
    """Register one more test pipeline (its ``streams`` list emptied) for the ``with`` block."""
    cls.streams = []
    registry.register(cls)
    try:
        yield cls
    finally:
        registry.unregister(cls.info.id)
