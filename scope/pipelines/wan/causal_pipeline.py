"""What every causal Wan2.1 text-to-video pipeline shares: load parameters, the loader, streams.

LongLive, Reward Forcing and MemFlow differ only in their checkpoint files, their
:class:`CausalStreamSettings` and a few defaults; each module states just those on a subclass
of :class:`CausalWanPipeline`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from scope.models.artifacts import WAN_1_3B, Artifact
from scope.models.synthetic.writer import uses_synthetic
from scope.params import MAX_SEED, LoraPath, StreamParameters
from scope.pipelines.base import LoadContext, MemoryEstimate, Pipeline, PipelineInfo, Stream
from scope.pipelines.config_schema import PipelineConfig
from scope.pipelines.sizes import multiple_of
from scope.pipelines.wan.causal_stream import STREAM_PARAMETERS, CausalStream, CausalStreamSettings
from scope.pipelines.wan.vace_stream import VACE_INPUTS, VaceOptions
from scope.pipelines.wan.components import UserLora, WanComponents, WanPaths
from scope.pipelines.wan.lora import adapter_name, resolve_lora_path
from scope.pipelines.wan.config_schema import VaeType, WanPipelineConfig

#: The defaults the three share, for their load parameters and configuration schemas alike.
DEFAULT_HEIGHT, DEFAULT_WIDTH, DEFAULT_SEED = 320, 576, 42
DEFAULT_STEPS = [1000, 750, 500, 250]
#: What the UI switches to in video mode (the schema's ``mode_defaults``).
VIDEO_MODE_DEFAULTS = {"height": 512, "width": 512, "denoising_steps": [1000, 750], "noise_scale": 0.7, "noise_controller": True}

#: Height and width: the VAE downsamples by 8 and the generator patches latents by 2.
FrameSize = multiple_of(16, 16, 2048)


def causal_info(
    *,
    id: str,
    name: str,
    description: str,
    docs_url: str,
    default_mode: Literal["text", "video"] = "text",
    min_dimension: int = 16,
    **differences: Any,
) -> PipelineInfo:
    """A causal Wan pipeline's facts: what names it, and the capabilities they share
    (``differences`` overrides any of them)."""
    facts = dict(
        id=id,
        name=name,
        description=description,
        supported_modes=("text", "video"),
        default_mode=default_mode,
        docs_url=docs_url,
        estimated_vram_gb=20.0,
        requires_models=True,
        supports_lora=True,
        supports_vace=True,
        supports_cache_management=True,
        supports_quantization=True,
        min_dimension=min_dimension,
        modified=True,
    )
    return PipelineInfo(**{**facts, **differences})


def causal_config(title: str, pipeline_id: str) -> type[PipelineConfig]:
    """The configuration schema advertised for a causal Wan pipeline, titled ``title``."""
    return WanPipelineConfig.variant(
        title,
        f"The configuration schema advertised for ``{pipeline_id}`` (UI hints and defaults).",
        height=DEFAULT_HEIGHT,
        width=DEFAULT_WIDTH,
        base_seed=DEFAULT_SEED,
        denoising_steps=DEFAULT_STEPS,
    )


class LoraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: LoraPath
    scale: float = Field(1.0, ge=-10, le=10)
    merge_mode: Literal["permanent_merge", "runtime_peft"] | None = None


def user_loras(load_params: BaseModel, lora_dir: Path) -> tuple[UserLora, ...]:
    """The load parameters' LoRAs, resolved, each with its own merge mode or the global one."""
    return tuple(
        UserLora(resolve_lora_path(lora.path, lora_dir), lora.scale, lora.merge_mode or load_params.lora_merge_mode)
        for lora in load_params.loras or ()
    )


class WanLoadParams(BaseModel):
    """Load parameters every causal Wan pipeline has; changing any of them means loading again."""

    model_config = ConfigDict(extra="forbid")

    height: FrameSize = Field(DEFAULT_HEIGHT, description="Output height in pixels (a multiple of 16).")
    width: FrameSize = Field(DEFAULT_WIDTH, description="Output width in pixels (a multiple of 16).")
    seed: int = Field(DEFAULT_SEED, ge=0, le=MAX_SEED, description="Base seed (0..2**63-1); each chunk uses seed + its start frame, mod 2**64.")
    quantization: Literal["fp8_e4m3fn"] | None = Field(
        None, description="Store the generator's linear weights in fp8 (computed in the compute dtype)."
    )
    vae_type: VaeType = Field("wan", description="Autoencoder: full Wan VAE, LightVAE, TAE or LightTAE.")
    loras: list[LoraConfig] | None = Field(
        None,
        description="User LoRAs: files in the LoRA directory (or absolute paths in the kernel), each "
        "with a scale and an optional merge_mode overriding lora_merge_mode.",
    )
    lora_merge_mode: Literal["permanent_merge", "runtime_peft"] = Field(
        "permanent_merge",
        description="How user LoRAs are applied: merged into the weights at load (no per-chunk cost), "
        "or kept apart so each stream can change their scales with lora_scales.",
    )


class CausalLoadParams(WanLoadParams):
    """Load parameters of the causal Wan pipelines that take VACE."""

    vace_enabled: bool = Field(
        False,
        description="Load the VACE module: reference images, control videos, masks and first/last frames "
        "guide the stream. Off by default here (the reference defaults to on).",
    )
    vace_mask_hint_padding: bool = Field(
        False,
        description="VACE: mask the zero keys the reference pads its hint attention with (to a multiple of "
        "128 tokens). Off reproduces the reference's numbers.",
    )
    vace_separate_control_caches: bool = Field(
        False,
        description="VACE with the Wan VAE: encode the kept and the generated parts of the control video "
        "with their own encoder caches. Off reproduces the reference, which shares one (TAE keeps them apart).",
    )


class CausalParameters(StreamParameters):
    """Stream parameters of a causal Wan pipeline: all are validated; the KV-cache bias is not
    used by these pipelines, so a client that sends it is told so."""

    takes = STREAM_PARAMETERS


class CausalWanPipeline(Pipeline):
    """A causal Wan2.1 generator streamed chunk by chunk; subclasses name their files and settings."""

    load_params_model = CausalLoadParams
    parameters_model = CausalParameters
    mode_defaults = {"video": VIDEO_MODE_DEFAULTS}
    #: The model.yaml constants and mechanics of the pipeline.
    settings: ClassVar[CausalStreamSettings]
    #: ``(artifact, path in the repo)`` of the generator checkpoint and of its built-in LoRA.
    generator_file: ClassVar[tuple[Artifact, str]]
    lora_file: ClassVar[tuple[Artifact, str] | None] = None
    #: ``(artifact, path)`` of the architecture's original Wan ``config.json``.
    config_file: ClassVar[tuple[Artifact, str]] = (WAN_1_3B, "config.json")
    #: Wan2.1 generates 16 frames per second of video.
    frame_rate: ClassVar[float | None] = 16.0
    #: Whether each self-attention's q/k/v are fused into one linear after load (Krea).
    fuse_qkv: ClassVar[bool] = False
    default_steps: ClassVar[list[int]] = DEFAULT_STEPS
    #: The autoencoder a pipeline always loads whatever ``vae_type`` says (None: as asked).
    fixed_vae_type: ClassVar[str | None] = None
    #: Whether VACE may condition chunks made from input video (StreamDiffusionV2: text mode only).
    vace_in_video_mode: ClassVar[bool] = True

    def __init__(
        self, load_params: CausalLoadParams, components: WanComponents, synthetic: bool, lora_dir: Path | None = None
    ):
        super().__init__(load_params)
        self.components = components
        self._synthetic = synthetic
        #: Where relative LoRA paths (``loras``, ``lora_scales``) point.
        self.lora_dir = Path(lora_dir) if lora_dir is not None else Path.cwd()

    @classmethod
    def paths(cls, load_params: BaseModel, context: LoadContext) -> WanPaths:
        """The files a load with ``load_params`` reads."""
        return WanPaths.resolve(
            context.models_dir,
            generator=cls.generator_file,
            lora=cls.lora_file,
            vace=getattr(load_params, "vace_enabled", False),
            config=cls.config_file,
        )

    @classmethod
    def load(cls, load_params: BaseModel, context: LoadContext) -> "CausalWanPipeline":
        paths = cls.paths(load_params, context)
        paths.check(cls.info.id)
        components = WanComponents.load(
            paths,
            context.models_dir,
            vae_type=cls.fixed_vae_type or load_params.vae_type,
            quantization=load_params.quantization,
            user_loras=user_loras(load_params, context.lora_dir),
            fuse_qkv=cls.fuse_qkv,
        )
        pipeline = cls(load_params, components, uses_synthetic(context.models_dir, cls.artifacts), context.lora_dir)
        pipeline.warm_up()
        return pipeline

    @classmethod
    def memory_estimate(cls, load_params: BaseModel, context: LoadContext) -> MemoryEstimate:
        """What this load will hold, from the headers of the files it reads: each tensor in the
        compute dtype (the blocks' linear weights in one byte with fp8), the LoRAs kept apart
        (the built-in LoRA and merged ones end up inside the weights), the prompt-embedding cache
        at its full size, and one stream's self- and cross-attention caches at the load's size.
        A stream's VAE caches are not estimated: the pool learns them from the first stream."""
        import torch

        from scope.pipelines.wan.autoencoders import vae_path
        from scope.pipelines.wan.config import WanConfig
        from scope.pipelines.wan.device import compute_device
        from scope.pipelines.wan.text_encoder import CACHE_SIZE
        from scope.streaming.memory_budget import loaded_bytes

        _, dtype = compute_device()
        item = torch.finfo(dtype).bits // 8
        paths = cls.paths(load_params, context)
        fp8 = _quantized_in_fp8 if load_params.quantization == "fp8_e4m3fn" else None
        weights = loaded_bytes([paths.generator], dtype, entry="generator", one_byte=fp8)
        weights += loaded_bytes([paths.vace], dtype, one_byte=fp8)
        weights += loaded_bytes([paths.text_encoder, vae_path(context.models_dir, cls.fixed_vae_type or load_params.vae_type)], dtype)
        kept = [lora.path for lora in user_loras(load_params, context.lora_dir) if lora.merge_mode == "runtime_peft"]
        weights += loaded_bytes(kept, dtype)
        if not paths.config.exists():
            return MemoryEstimate(weights)
        config = WanConfig.from_json(paths.config)
        tokens = (load_params.height // 16) * (load_params.width // 16)
        self_attention = 2 * config.num_layers * cls.settings.local_attn_size * tokens * config.dim * item
        cross_attention = 2 * config.num_layers * config.text_len * config.dim * item
        prompts = CACHE_SIZE * config.text_len * config.text_dim * item
        return MemoryEstimate(weights, self_attention + cross_attention, prompts)

    def memory_held(self) -> int:
        """The tensors this pipeline holds, less the prompt embeddings it has cached so far
        (counted at their full size apart, as ``cache_bytes``)."""
        from scope.streaming.memory_budget import budget_device, held_bytes

        cached = self.components.text_encoder.cached_embeddings()
        return held_bytes(self, exclude=cached, device=budget_device().type)

    def warm_up(self) -> None:
        """Run what the first real chunk would otherwise pay for (none here; Krea warms up)."""

    def stream_settings(self) -> CausalStreamSettings:
        """The settings a new stream runs with (a load parameter may change them)."""
        return self.settings

    def open_stream(self) -> Stream:
        params = self.load_params
        return CausalStream(
            self.components,
            self.stream_settings(),
            height=params.height,
            width=params.width,
            seed=params.seed,
            default_steps=self.default_steps,
            lora_dir=self.lora_dir,
            video_defaults={k: self.mode_defaults["video"][k] for k in ("noise_scale", "noise_controller")},
            vace=self.vace_options(),
        )

    def vace_options(self) -> VaceOptions | None:
        """How streams run VACE (None: loaded without it)."""
        params = self.load_params
        if not getattr(params, "vace_enabled", False):
            return None
        return VaceOptions(
            mask_padding=params.vace_mask_hint_padding,
            separate_caches=params.vace_separate_control_caches,
            video_mode=self.vace_in_video_mode,
        )

    def unload(self) -> None:
        self.components.release()

    @property
    def synthetic(self) -> bool:
        return self._synthetic

    @property
    def loaded_lora_adapters(self) -> list[dict[str, Any]] | None:
        """The user LoRAs, with the scales they load at (a stream's ``lora_scales`` are its own)."""
        return [
            {"path": str(lora.path), "scale": lora.scale, "merge_mode": lora.merge_mode, "name": adapter_name(lora.path)}
            for lora in self.components.user_loras
        ]

    def check_parameters(self, update: dict[str, Any]) -> list[dict[str, Any]]:
        """``lora_scales`` may name only adapters kept apart from the weights (``runtime_peft``);
        VACE inputs need a pipeline loaded with ``vace_enabled`` (and text mode, where the pipeline says so)."""
        errors = self._check_vace(update)
        for index, entry in enumerate(update.get("lora_scales") or []):
            path = resolve_lora_path(entry["path"], self.lora_dir)
            # Read from the public facts, so a worker's stand-in on the server checks the same.
            mode = {Path(lora["path"]): lora["merge_mode"] for lora in self.loaded_lora_adapters}.get(path)
            if mode is None:
                msg = f"'{entry['path']}' is not a LoRA this pipeline loaded"
            elif mode != "runtime_peft":
                msg = f"'{entry['path']}' is merged into the weights (permanent_merge): its scale cannot change"
            else:
                continue
            errors.append({"loc": ["lora_scales", index, "path"], "msg": msg, "type": "lora_scales"})
        return errors

    def _check_vace(self, update: dict[str, Any]) -> list[dict[str, Any]]:
        given = [name for name in VACE_INPUTS if update.get(name) not in (None, [])]
        if not self.info.supports_vace:
            msg = f"{self.info.id} does not take VACE"
        elif not self.load_params.vace_enabled:
            msg = "VACE is not loaded: load the pipeline with vace_enabled true to use it"
        elif not self.vace_in_video_mode and (update.get("input_mode") == "video" or update.get("vace_use_input_video")):
            given += ["vace_use_input_video"] if update.get("vace_use_input_video") else []
            msg = f"{self.info.id} takes VACE in text mode only"
        else:
            return []
        return [{"loc": [name], "msg": msg, "type": "vace"} for name in given]


def _quantized_in_fp8(tensor) -> bool:
    """Whether fp8 quantization stores this checkpoint tensor in one byte: the linear weights
    inside the transformer blocks (VACE's too), as ``quantize_fp8`` converts them."""
    return tensor.dims == 2 and tensor.name.endswith(".weight") and re.search(r"(^|\.)(vace_)?blocks\.\d+\.", tensor.name) is not None
