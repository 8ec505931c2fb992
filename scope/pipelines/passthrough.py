"""``passthrough``: returns its input frames unchanged. No weights; useful to test the path."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scope.params import StreamParameters
from scope.pipelines.base import Chunk, LoadContext, Pipeline, PipelineInfo, Stream
from scope.pipelines.config_schema import PipelineConfig
from scope.pipelines.registry import register

CHUNK_FRAMES = 4
#: The nominal output size, for the load parameters and the configuration schema alike.
DEFAULT_SIZE = 512


class PassthroughLoadParams(BaseModel):
    """Load parameters of ``passthrough``: stored, but the output keeps the input's size."""

    model_config = ConfigDict(extra="forbid")

    height: int = Field(DEFAULT_SIZE, ge=1, le=4096, description="Nominal output height (the input's size is kept).")
    width: int = Field(DEFAULT_SIZE, ge=1, le=4096, description="Nominal output width (the input's size is kept).")


PassthroughConfig = PipelineConfig.variant(
    "PassthroughConfig",
    "Configuration schema advertised for ``passthrough`` (UI hints); it generates nothing, so "
    "only the size applies.",
    height=DEFAULT_SIZE,
    width=DEFAULT_SIZE,
)


class PassthroughParameters(StreamParameters):
    """Passthrough generates nothing: it acts only on the session's own parameters
    (``input_mode``, ``paused``, ``reset_cache``); the others are reported unused."""

    takes = frozenset()


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
    parameters_model = PassthroughParameters

    @classmethod
    def load(cls, load_params: BaseModel, context: LoadContext) -> "PassthroughPipeline":
        return cls(load_params)

    def open_stream(self) -> Stream:
        return PassthroughStream()
