"""``reward-forcing``: Reward Forcing on the Wan2.1 causal core (EMA sink, bounded positions).

What differs from LongLive: a 9-frame cache whose keys are stored without RoPE, the attended
window rotated at positions ``0..N-1`` (so positions stay bounded however long the stream
runs); a sink that is not frozen but follows the evicted frames as an exponential moving
average; no KV re-cache on a prompt change (only the cross-attention cache is rebuilt); and a
first video chunk whose fourth latent frame the next chunk overwrites.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scope.models.artifacts import PIPELINE_ARTIFACTS, REWARD_FORCING_GENERATOR
from scope.pipelines.registry import register
from scope.pipelines.wan.causal_pipeline import CausalLoadParams, CausalWanPipeline, causal_config, causal_info
from scope.pipelines.wan.causal_stream import CausalStreamSettings
from scope.pipelines.wan.kv_cache import LayerKV

#: The sink's memory of itself per eviction (the reference's `compression_alpha`).
SINK_ALPHA = 0.999


@dataclass(frozen=True)
class EmaSink:
    """Blend what a roll evicts into the sink: ``sink <- alpha*sink + (1-alpha)*evicted``.

    Applies to keys (un-rotated) and values alike, when exactly a sink's worth of tokens is
    evicted, the normal case of three frames per chunk. Any other count overwrites the first
    ``min(evicted, sink)`` sink tokens with the evicted ones, as the reference does.
    """

    alpha: float = SINK_ALPHA

    def __call__(self, layer: LayerKV, evicted_k: torch.Tensor, evicted_v: torch.Tensor, sink: int) -> None:
        count = evicted_k.shape[1]
        if count == sink:
            layer.k[:, :sink] = self.alpha * layer.k[:, :sink] + (1 - self.alpha) * evicted_k
            layer.v[:, :sink] = self.alpha * layer.v[:, :sink] + (1 - self.alpha) * evicted_v
        else:
            kept = min(count, sink)
            layer.k[:, :kept] = evicted_k[:, :kept]
            layer.v[:, :kept] = evicted_v[:, :kept]


#: Reward Forcing's model.yaml and attention.
SETTINGS = CausalStreamSettings(
    frames_per_block=3,
    local_attn_size=9,
    sink_size=3,
    timestep_shift=5.0,
    recache_on_prompt_change=False,
    relative_positions=True,
    on_evict=EmaSink(),
    # The reference advances the first video chunk (4 latent frames) by 3: its authors found
    # it helps video-to-video and kept it deliberately. Kept here for the same output.
    first_video_chunk_overlap=1,
)


class RewardForcingLoadParams(CausalLoadParams):
    """Load parameters of ``reward-forcing`` (those every causal Wan pipeline has)."""


RewardForcingConfig = causal_config("RewardForcingConfig", "reward-forcing")


@register
class RewardForcingPipeline(CausalWanPipeline):
    info = causal_info(
        id="reward-forcing",
        name="RewardForcing",
        description="Streaming text-to-video on Wan2.1-1.3B distilled with Rewarded Distribution "
        "Matching: an EMA-updated frame sink and a 9-frame window with bounded positions.",
        docs_url="https://github.com/daydreamlive/scope/blob/main/src/scope/core/pipelines/reward_forcing/docs/usage.md",
    )
    load_params_model = RewardForcingLoadParams
    config_model = RewardForcingConfig
    artifacts = PIPELINE_ARTIFACTS["reward-forcing"]
    settings = SETTINGS
    generator_file = (REWARD_FORCING_GENERATOR, "rewardforcing.pt")
