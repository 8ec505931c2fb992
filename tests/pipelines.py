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
from scope.streaming.pattern import read_index, stamp

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
    load_warnings: list[str] = Field(default_factory=list, description="What the load advises (pipeline/status warnings).")


def prompt_level(params: dict[str, Any]) -> int:
    """A brightness derived from the prompt text, so a prompt change shows in the pixels."""
    prompts = params.get("prompts") or [{"text": ""}]
    return (sum(map(ord, prompts[0]["text"])) * 37) % 200 + 30


def pattern_level(frame: np.ndarray) -> float:
    """The brightness a pattern frame shows (its prompt's), away from the corner that counts chunks."""
    return float(np.median(frame[16:, 16:]))


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
        pipeline = cls(load_params)
        pipeline.load_warnings = list(load_params.load_warnings)
        return pipeline

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


class EchoLoadParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    frames: int = Field(2, ge=1, le=8, description="Input frames a chunk takes (and returns).")
    chunk_seconds: float = Field(0.0, ge=0, le=5, description="How long each chunk takes.")


class EchoStream(Stream):
    """Returns its input frames, like passthrough, but as slowly as a real model would, with the
    chunk's number stamped into their bottom rows (read it with :func:`echo_chunk`)."""

    def __init__(self, pipeline: "EchoPipeline"):
        self.pipeline = pipeline
        self.chunks = 0
        self.at_gate = False

    def frames_needed(self, params: dict[str, Any]) -> int:
        return self.pipeline.load_params.frames

    def run_chunk(self, params, video=None, *, init_cache=False) -> Chunk:
        if video is None:
            raise ValueError("test-echo needs input video frames")
        self.chunks += 1
        number = self.chunks
        gate = type(self.pipeline).gate
        if gate is not None:
            self.at_gate = True
            passed = gate.acquire(timeout=30)
            self.at_gate = False
            if not passed:
                raise TimeoutError("the test never let this chunk run")
        time.sleep(self.pipeline.load_params.chunk_seconds)
        frames = np.array(video, dtype=np.uint8)
        for frame in frames:
            stamp(frame[::-1], number)  # upside down: the bottom rows, clear of the input's stamp
        return Chunk(frames=frames)


def echo_chunk(frame: np.ndarray) -> int:
    """The number of the ``test-echo`` chunk a (decoded) frame came from."""
    return read_index(frame[::-1])


class EchoPipeline(Pipeline):
    """A slow video-to-video pipeline whose output shows which input frames each chunk took.

    ``gate`` (a semaphore, when set) lets the test decide when each chunk may finish.
    """

    info = PipelineInfo(
        id="test-echo",
        name="Test echo",
        description="Returns its input after a delay (tests only).",
        supported_modes=("video",),
        default_mode="video",
        requires_models=False,
    )
    load_params_model = EchoLoadParams
    config_model = PassthroughConfig
    streams: list[EchoStream] = []
    gate: threading.Semaphore | None = None

    @classmethod
    def load(cls, load_params, context: LoadContext) -> "EchoPipeline":
        return cls(load_params)

    def open_stream(self) -> Stream:
        stream = EchoStream(self)
        type(self).streams.append(stream)
        return stream


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
