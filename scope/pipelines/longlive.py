"""``longlive``: LongLive on the Wan2.1 causal core (frame sink, local window, KV re-cache).

Each chunk denoises three latent frames in four steps against a KV cache of twelve frames whose
first three (the sink) are never evicted, then runs the generator once more at t=0 so the cache
holds keys of the clean frames. A prompt change re-computes the cache of the last twelve frames
under the new prompt ("KV re-cache") so the scene follows the new text without a cut.
"""

from __future__ import annotations

from scope.models.artifacts import LONGLIVE_GENERATOR, PIPELINE_ARTIFACTS
from scope.pipelines.registry import register
from scope.pipelines.wan.causal_pipeline import CausalLoadParams, CausalWanPipeline, causal_config, causal_info
from scope.pipelines.wan.causal_stream import CausalStreamSettings

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


LongLiveConfig = causal_config("LongLiveConfig", "longlive")


@register
class LongLivePipeline(CausalWanPipeline):
    info = causal_info(
        id="longlive",
        name="LongLive",
        description="Long interactive text-to-video on Wan2.1-1.3B: a frame sink, a short local "
        "attention window and KV re-cache on prompt switches.",
        docs_url="https://github.com/daydreamlive/scope/blob/main/src/scope/core/pipelines/longlive/docs/usage.md",
    )
    load_params_model = LongLiveLoadParams
    config_model = LongLiveConfig
    artifacts = PIPELINE_ARTIFACTS["longlive"]
    settings = SETTINGS
    generator_file = (LONGLIVE_GENERATOR, "models/longlive_base.pt")
    lora_file = (LONGLIVE_GENERATOR, "models/lora.pt")
