"""``krea-realtime-video``: Krea Realtime Video, Self-Forcing on Wan2.1-T2V-14B, on the causal core.

What differs from LongLive: the 14B generator (its architecture from the 14B ``config.json``,
its weights one flat ``model.``-prefixed safetensors file, q/k/v fused into one projection after
load); 3-frame chunks against a 6-frame window with no sink that is *recomputed* before every
chunk after the first, at t=0 from three context latents under the current prompt (the
stream's first latent, or later the oldest of its last nine decoded frames re-encoded alone,
then its two newest latents), so each chunk denoises at frame positions 3..5 for ever and
needs no clean pass; and ``kv_cache_attention_bias``, ``log(bias)`` on the logits of the cached
frames except the first (see ``wan/attention_bias.py``). The warm-up the reference runs in its
constructor (three chunks of "a majestic sunset") runs in the load, on a stream of its own.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import torch
from pydantic import Field
from pydantic.fields import FieldInfo

from scope.models.artifacts import KREA_GENERATOR, PIPELINE_ARTIFACTS, WAN_14B_CONFIG
from scope.params import StreamParameters
from scope.pipelines.registry import register
from scope.pipelines.sizes import multiple_of
from scope.pipelines.wan.causal_pipeline import DEFAULT_SEED, CausalWanPipeline, WanLoadParams, causal_info
from scope.pipelines.wan.causal_stream import STREAM_PARAMETERS, CausalStreamSettings
from scope.pipelines.wan.config_schema import WanPipelineConfig

logger = logging.getLogger(__name__)

#: Krea's default ``kv_cache_attention_bias`` (the reference pipeline's).
DEFAULT_KV_CACHE_ATTENTION_BIAS = 0.3

#: Krea's model.yaml (shift 5, 3-frame chunks, 3 context frames, a 6-frame window) and its
#: attention (no sink).
SETTINGS = CausalStreamSettings(
    frames_per_block=3,
    local_attn_size=6,
    sink_size=0,
    timestep_shift=5.0,
    recache_on_prompt_change=False,
    recompute_context_frames=3,
    clean_pass=False,
    attention_bias=DEFAULT_KV_CACHE_ATTENTION_BIAS,
)

#: The load's size when none is given: the reference server's fallback (its schema hints 320x576).
DEFAULT_SIZE = 512
SCHEMA_HEIGHT, SCHEMA_WIDTH = 320, 576
DEFAULT_STEPS = [1000, 750, 500, 250]
VIDEO_MODE_DEFAULTS = {"height": 256, "width": 256, "noise_scale": 0.7, "noise_controller": True, "denoising_steps": [1000, 750]}
#: Below this much GPU memory the 14B generator should be stored in fp8 (the schema's advice).
FP8_RECOMMENDED_BELOW_GB = 40.0
#: The reference's warm-up: enough chunks to fill the window once and recompute it.
WARMUP_PROMPT = "a majestic sunset"
WARMUP_CHUNKS = SETTINGS.local_attn_size // SETTINGS.frames_per_block + 1

FrameSize = multiple_of(16, 16, 2048)


class KreaRealtimeVideoLoadParams(WanLoadParams):
    """Load parameters of ``krea-realtime-video``: the causal Wan ones without VACE, 512x512 by
    default, and the bias's padding switch."""

    height: FrameSize = Field(DEFAULT_SIZE, description="Output height in pixels (a multiple of 16).")
    width: FrameSize = Field(DEFAULT_SIZE, description="Output width in pixels (a multiple of 16).")
    quantization: Literal["fp8_e4m3fn"] | None = Field(
        None,
        description="Store the generator's linear weights in fp8 (computed in the compute dtype). "
        f"Recommended on GPUs with less than {FP8_RECOMMENDED_BELOW_GB:.0f} GB: the 14B needs about 29 GB in bf16.",
    )
    kv_cache_attention_bias_mask_padding: bool = Field(
        False,
        description="kv_cache_attention_bias: mask the zero keys the reference pads its biased attention "
        "with (to a multiple of 128 tokens). Off reproduces the reference's numbers.",
    )


class KreaRealtimeVideoParameters(StreamParameters):
    """Stream parameters of ``krea-realtime-video``: the causal ones and the KV-cache bias."""

    takes = STREAM_PARAMETERS | {"kv_cache_attention_bias"}
    kv_cache_attention_bias: float | None = FieldInfo.merge_field_infos(
        StreamParameters.model_fields["kv_cache_attention_bias"],
        description=f"log(bias) added to the attention scores of the cached frames except the first "
        f"(default {DEFAULT_KV_CACHE_ATTENTION_BIAS}); lower leans less on the recent past; 1.0: plain attention.",
    )


KreaRealtimeVideoConfig = WanPipelineConfig.variant(
    "KreaRealtimeVideoConfig",
    "The configuration schema advertised for ``krea-realtime-video`` (UI hints and defaults).",
    height=SCHEMA_HEIGHT,
    width=SCHEMA_WIDTH,
    base_seed=DEFAULT_SEED,
    denoising_steps=DEFAULT_STEPS,
)


def fp8_advice(quantization: str | None, gpu_memory_gb: float | None) -> str | None:
    """The warning a load without fp8 on a GPU of ``gpu_memory_gb`` gets (None: no advice)."""
    if quantization is not None or gpu_memory_gb is None or gpu_memory_gb >= FP8_RECOMMENDED_BELOW_GB:
        return None
    return (
        f"krea-realtime-video loaded without quantization on a GPU with {gpu_memory_gb:.0f} GB: below "
        f"{FP8_RECOMMENDED_BELOW_GB:.0f} GB load it with quantization 'fp8_e4m3fn' (about 15 GB instead of 29 GB)."
    )


def gpu_memory_gb(device: torch.device) -> float | None:
    """Total memory of a CUDA device in GiB (None on other devices)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / 2**30


@register
class KreaRealtimeVideoPipeline(CausalWanPipeline):
    info = causal_info(
        id="krea-realtime-video",
        name="Krea Realtime Video",
        description="Krea's streaming model, Self-Forcing on Wan2.1-14B: the attention window is "
        "recomputed from context frames every chunk, and a KV-cache attention bias damps the past.",
        docs_url="https://github.com/daydreamlive/scope/blob/main/src/scope/core/pipelines/krea_realtime_video/docs/usage.md",
        estimated_vram_gb=32.0,
        supports_vace=False,
        supports_kv_cache_bias=True,
        recommended_quantization_vram_threshold=FP8_RECOMMENDED_BELOW_GB,
        default_temporal_interpolation_method="linear",
        default_temporal_interpolation_steps=4,
    )
    load_params_model = KreaRealtimeVideoLoadParams
    parameters_model = KreaRealtimeVideoParameters
    config_model = KreaRealtimeVideoConfig
    mode_defaults = {"video": VIDEO_MODE_DEFAULTS}
    artifacts = PIPELINE_ARTIFACTS["krea-realtime-video"]
    settings = SETTINGS
    generator_file = (KREA_GENERATOR, KREA_GENERATOR.files[0])
    config_file = (WAN_14B_CONFIG, WAN_14B_CONFIG.files[0])
    default_steps = DEFAULT_STEPS
    fuse_qkv = True

    def stream_settings(self) -> CausalStreamSettings:
        return dataclasses.replace(
            SETTINGS, attention_bias_mask_padding=self.load_params.kv_cache_attention_bias_mask_padding
        )

    def warm_up(self) -> None:
        """The reference's warm-up chunks, on a stream of their own; then advise fp8 where it helps."""
        stream = self.open_stream()
        for _ in range(WARMUP_CHUNKS):
            stream.run_chunk({"prompts": [{"text": WARMUP_PROMPT, "weight": 1.0}]})
        stream.close()
        advice = fp8_advice(self.load_params.quantization, gpu_memory_gb(self.components.device))
        if advice is not None:
            logger.warning(advice)
            self.load_warnings.append(advice)
