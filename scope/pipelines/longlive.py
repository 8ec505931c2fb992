"""``longlive``: LongLive on the Wan2.1 causal core (frame sink, local window, KV re-cache).

Each chunk denoises three latent frames in four steps against a KV cache of twelve frames whose
first three (the sink) are never evicted, then runs the generator once more at t=0 so the cache
holds keys of the clean frames. A prompt change re-computes the cache of the last twelve frames
under the new prompt ("KV re-cache") so the scene follows the new text without a cut.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from scope.models.artifacts import LONGLIVE_GENERATOR, PIPELINE_ARTIFACTS
from scope.models.synthetic.writer import uses_synthetic
from scope.params import MAX_SEED, LoraPath, StreamParameters
from scope.pipelines.base import LoadContext, Pipeline, PipelineInfo, Stream
from scope.pipelines.registry import register
from scope.pipelines.sizes import multiple_of
from scope.pipelines.wan.causal_stream import STREAM_PARAMETERS, CausalStream, CausalStreamSettings
from scope.pipelines.wan.components import WanComponents, WanPaths
from scope.pipelines.wan.config_schema import VaeType, WanPipelineConfig

#: LongLive's model.yaml.
SETTINGS = CausalStreamSettings(
    frames_per_block=3,
    local_attn_size=12,
    sink_size=3,
    timestep_shift=5.0,
    recache_on_prompt_change=True,
)
#: LongLive's defaults, for its load parameters and its configuration schema alike.
DEFAULT_HEIGHT, DEFAULT_WIDTH, DEFAULT_SEED = 320, 576, 42
DEFAULT_STEPS = [1000, 750, 500, 250]


#: Height and width: the VAE downsamples by 8 and the generator patches latents by 2.
FrameSize = multiple_of(16, 16, 2048)


class LoraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: LoraPath
    scale: float = Field(1.0, ge=-10, le=10)
    merge_mode: Literal["permanent_merge", "runtime_peft"] | None = None


class LongLiveLoadParams(BaseModel):
    """Load parameters of ``longlive``; changing any of them means loading again."""

    model_config = ConfigDict(extra="forbid")

    height: FrameSize = Field(DEFAULT_HEIGHT, description="Output height in pixels (a multiple of 16).")
    width: FrameSize = Field(DEFAULT_WIDTH, description="Output width in pixels (a multiple of 16).")
    seed: int = Field(DEFAULT_SEED, ge=0, le=MAX_SEED, description="Base seed (0..2**63-1); each chunk uses seed + its start frame, mod 2**64.")
    quantization: Literal["fp8_e4m3fn"] | None = Field(
        None, description="Store the generator's linear weights in fp8 (computed in the compute dtype)."
    )
    vae_type: VaeType = Field("wan", description="Autoencoder: full Wan VAE, LightVAE, TAE or LightTAE.")
    vace_enabled: bool = Field(False, description="VACE conditioning (not available for longlive yet).")
    loras: list[LoraConfig] | None = Field(None, description="User LoRAs (not available for longlive yet).")
    lora_merge_mode: Literal["permanent_merge", "runtime_peft"] = Field(
        "permanent_merge", description="How user LoRAs are applied."
    )

    @field_validator("vace_enabled")
    @classmethod
    def _no_vace(cls, value: bool) -> bool:
        if value:
            raise ValueError("VACE is not available for longlive yet; leave vace_enabled false")
        return value

    @field_validator("loras")
    @classmethod
    def _no_loras(cls, value: list[LoraConfig] | None) -> list[LoraConfig] | None:
        if value:
            raise ValueError("user LoRAs are not available for longlive yet; leave loras empty")
        return value


LongLiveConfig = WanPipelineConfig.variant(
    "LongLiveConfig",
    "The configuration schema advertised for ``longlive`` (UI hints and defaults).",
    height=DEFAULT_HEIGHT,
    width=DEFAULT_WIDTH,
    base_seed=DEFAULT_SEED,
    denoising_steps=DEFAULT_STEPS,
)


class LongLiveParameters(StreamParameters):
    """Stream parameters of ``longlive``: all are validated, but VACE, LoRA scales and the
    KV-cache bias are not available yet, so a client that sends them is told they are unused."""

    takes = STREAM_PARAMETERS


@register
class LongLivePipeline(Pipeline):
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
    parameters_model = LongLiveParameters
    mode_defaults = {
        "video": {"height": 512, "width": 512, "denoising_steps": [1000, 750], "noise_scale": 0.7, "noise_controller": True}
    }
    artifacts = PIPELINE_ARTIFACTS["longlive"]

    def __init__(self, load_params: LongLiveLoadParams, components: WanComponents, synthetic: bool):
        super().__init__(load_params)
        self.components = components
        self._synthetic = synthetic

    @classmethod
    def load(cls, load_params: BaseModel, context: LoadContext) -> "LongLivePipeline":
        paths = WanPaths.resolve(
            context.models_dir,
            generator=(LONGLIVE_GENERATOR, "models/longlive_base.pt"),
            lora=(LONGLIVE_GENERATOR, "models/lora.pt"),
        )
        paths.check(cls.info.id)
        components = WanComponents.load(
            paths, context.models_dir, vae_type=load_params.vae_type, quantization=load_params.quantization
        )
        return cls(load_params, components, uses_synthetic(context.models_dir, cls.artifacts))

    def open_stream(self) -> Stream:
        params = self.load_params
        return CausalStream(
            self.components,
            SETTINGS,
            height=params.height,
            width=params.width,
            seed=params.seed,
            default_steps=DEFAULT_STEPS,
            video_defaults={k: self.mode_defaults["video"][k] for k in ("noise_scale", "noise_controller")},
        )

    def unload(self) -> None:
        self.components.release()

    @property
    def synthetic(self) -> bool:
        return self._synthetic

    @property
    def loaded_lora_adapters(self) -> list[dict[str, Any]] | None:
        return []
