"""``passthrough``: returns its input frames unchanged. No weights; useful to test the path."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scope.params import MAX_SEED, AssetPath
from scope.pipelines.base import Chunk, LoadContext, Pipeline, PipelineInfo, Stream
from scope.pipelines.registry import register

CHUNK_FRAMES = 4


class PassthroughLoadParams(BaseModel):
    """Load parameters of ``passthrough``: stored, but the output keeps the input's size."""

    model_config = ConfigDict(extra="forbid")

    height: int = Field(512, ge=1, le=4096, description="Nominal output height (the input's size is kept).")
    width: int = Field(512, ge=1, le=4096, description="Nominal output width (the input's size is kept).")


class PassthroughConfig(BaseModel):
    """Configuration schema advertised for ``passthrough`` (UI hints)."""

    model_config = ConfigDict(extra="forbid")

    height: int = Field(512, ge=1, description="Output height in pixels.")
    width: int = Field(512, ge=1, description="Output width in pixels.")
    manage_cache: bool = Field(True, description="Reset caches automatically when conditioning changes.")
    base_seed: int = Field(42, ge=0, le=MAX_SEED, description="Random seed (0..2**63-1).")
    denoising_steps: list[int] | None = Field(None, description="Denoising timesteps (unused).")
    noise_scale: float | None = Field(None, ge=0.0, le=1.0, description="Noise added to input latents (unused).")
    noise_controller: bool | None = Field(None, description="Automatic noise adjustment (unused).")
    input_size: int | None = Field(1, ge=1, description="Input frames per block.")
    ref_images: list[AssetPath] | None = Field(None, description="VACE reference images (unused).")
    vace_context_scale: float = Field(1.0, ge=0.0, le=2.0, description="VACE strength (unused).")


class PassthroughStream(Stream):
    def frames_needed(self, params: dict[str, Any]) -> int:
        return CHUNK_FRAMES

    def run_chunk(self, params: dict[str, Any], video: np.ndarray | None = None, *, init_cache: bool = False) -> Chunk:
        if video is None or len(video) == 0:
            raise ValueError("passthrough needs input video frames")
        return Chunk(frames=np.ascontiguousarray(video, dtype=np.uint8))


@register
class PassthroughPipeline(Pipeline):
    info = PipelineInfo(
        id="passthrough",
        name="Passthrough",
        description="Returns the input video unchanged, four frames per chunk. Needs no weights.",
        supported_modes=("video",),
        default_mode="video",
        supports_prompts=False,
        requires_models=False,
        min_dimension=1,
    )
    load_params_model = PassthroughLoadParams
    config_model = PassthroughConfig

    @classmethod
    def load(cls, load_params: BaseModel, context: LoadContext) -> "PassthroughPipeline":
        return cls(load_params)

    def open_stream(self) -> Stream:
        return PassthroughStream()
