"""``longlive``: LongLive on the Wan2.1 causal core (frame sink, local window, KV re-cache).

Each chunk denoises three latent frames in four steps against a KV cache of twelve frames whose
first three (the sink) are never evicted, then runs the generator once more at t=0 so the cache
holds keys of the clean frames. A prompt change re-computes the cache of the last twelve frames
under the new prompt ("KV re-cache") so the scene follows the new text without a cut.
"""

from __future__ import annotations

from scope.models.artifacts import LONGLIVE_GENERATOR, PIPELINE_ARTIFACTS
from scope.pipelines.base import PipelineInfo
from scope.pipelines.registry import register
from scope.pipelines.wan.causal_pipeline import (
    DEFAULT_HEIGHT,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    DEFAULT_WIDTH,
    CausalLoadParams,
    CausalWanPipeline,
)
from scope.pipelines.wan.causal_stream import CausalStreamSettings
from scope.pipelines.wan.config_schema import WanPipelineConfig

#: LongLive's model.yaml.
SETTINGS = CausalStreamSettings(
    frames_per_block=3,
    local_attn_size=12,
    sink_size=3,
    timestep_shift=5.0,
    recache_on_prompt_change=True,
)


class LongLiveLoadParams(CausalLoadParams):
    """Load parameters of ``longlive`` (those every causal Wan pipeline has)."""


LongLiveConfig = WanPipelineConfig.variant(
    "LongLiveConfig",
    "The configuration schema advertised for ``longlive`` (UI hints and defaults).",
    height=DEFAULT_HEIGHT,
    width=DEFAULT_WIDTH,
    base_seed=DEFAULT_SEED,
    denoising_steps=DEFAULT_STEPS,
)


@register
class LongLivePipeline(CausalWanPipeline):
    info = PipelineInfo(
        id="longlive",
        name="LongLive",
        description="Long interactive text-to-video on Wan2.1-1.3B: a frame sink, a short local "
        "attention window and KV re-cache on prompt switches.",
        supported_modes=("text", "video"),
        default_mode="text",
        docs_url="https://github.com/daydreamlive/scope/blob/main/src/scope/core/pipelines/longlive/docs/usage.md",
        estimated_vram_gb=20.0,
        requires_models=True,
        supports_lora=False,
        supports_vace=False,
        supports_cache_management=True,
        supports_quantization=True,
        min_dimension=16,
        modified=True,
    )
    load_params_model = LongLiveLoadParams
    config_model = LongLiveConfig
    artifacts = PIPELINE_ARTIFACTS["longlive"]
    settings = SETTINGS
    generator_file = (LONGLIVE_GENERATOR, "models/longlive_base.pt")
    lora_file = (LONGLIVE_GENERATOR, "models/lora.pt")
