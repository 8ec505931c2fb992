"""One stream over a causal Wan pipeline: the per-chunk state machine.

A chunk runs these stages in the reference's order: prompt conditioning (encode, blend,
transition), schedule, cache set-up (reset when asked, on a mode or step-list change, at the
RoPE limit, or on a video-mode prompt change), input (noise, or encoded and noised video),
KV re-cache on a prompt change (or Krea's recompute of the whole window from context frames),
the few-step denoising loop, the clean pass at t=0 that leaves clean keys in the cache,
streaming decode, and advancing the frame counter. Everything that
evolves lives here, so streams over one set of weights never disturb each other. What a pipeline
does differently is data in its :class:`CausalStreamSettings`, never a branch on its name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from scope.pipelines.base import Chunk, Stream
from scope.pipelines.wan.attention_bias import NO_BIAS, CacheAttentionBias
from scope.pipelines.wan.components import WanComponents
from scope.pipelines.wan.context_frames import ContextFrames
from scope.pipelines.wan.frames import frames_to_video, video_to_frames
from scope.pipelines.wan.kv_cache import EvictionHook, FrameMemory, GeneratorCache
from scope.pipelines.wan.lora import resolve_lora_path
from scope.pipelines.wan.noise_controller import NoiseController
from scope.pipelines.wan.scheduler import FlowMatchSchedule
from scope.pipelines.wan.vace import VaceContext
from scope.pipelines.wan.vace_stream import VACE_PARAMETERS, VaceConditioner, VaceOptions

#: Rows of the RoPE table: absolute frame positions must stay below it.
ROPE_POSITIONS = 1024
LATENT_CHANNELS = 16
VAE_SPATIAL = 8
VAE_TEMPORAL = 4
#: Seeds are 64-bit: torch's generators take any value in [0, 2**64).
SEED_MODULUS = 2**64
#: Latent frames of a stream's first text-mode chunk at least: the streaming decoder splits the
#: first chunk into its first frame and the rest, which must not be empty.
MIN_FIRST_LATENTS = 2
#: The stream parameters :meth:`CausalStream.run_chunk` acts on (besides the session's own).
STREAM_PARAMETERS = frozenset({
    "prompts", "transition", "prompt_interpolation_method", "denoising_step_list",
    "noise_scale", "noise_controller", "manage_cache", "lora_scales", *VACE_PARAMETERS,
})


def chunk_seed(seed: int, start_frame: int) -> int:
    """The chunk generator's seed: ``seed + start_frame`` (the reference), wrapped into 64 bits.

    For every seed the reference can run the sum is already below 2**64, so the wrap changes
    nothing there; it only keeps the largest seeds from overflowing the generator.
    """
    return (seed + start_frame) % SEED_MODULUS


@dataclass(frozen=True)
class CausalStreamSettings:
    """A pipeline's constants (its model.yaml) and the mechanics it differs by.

    The defaults are LongLive's: keys at absolute positions, every denoising step writes the
    cache, no eviction hook, no frame memory.
    """

    frames_per_block: int
    local_attn_size: int
    sink_size: int
    timestep_shift: float
    recache_on_prompt_change: bool
    #: Keys cached without RoPE, the window rotated from position 0 (Reward Forcing).
    relative_positions: bool = False
    #: Whether denoising steps write the cache; if not, only the clean pass and the re-cache do (MemFlow).
    denoising_commits: bool = True
    #: Called with the tokens each roll evicts (Reward Forcing's EMA sink).
    on_evict: EvictionHook | None = None
    #: Builds a stream's frame memory: `memory(num_layers, frame_seq_len)` (MemFlow's bank).
    memory: Callable[[int, int], StreamMemory] | None = None
    #: Latent frames of the first video chunk the next chunk overwrites (Reward Forcing: 1).
    first_video_chunk_overlap: int = 0
    #: Whether re-running a chunk leaves sink slots alone (LongLive's recompute rule); without
    #: it every denoising step and the clean pass rewrite the chunk's slots (StreamDiffusionV2).
    protect_sink: bool = True
    #: Whether encoded input video is normalised by the VAE's latent statistics before noising
    #: (StreamDiffusionV2 was trained on raw latent means; decoding de-normalises either way).
    normalize_video_latents: bool = True
    #: Whether a video chunk without a ``noise_scale`` starts from the pipeline's default rather
    #: than the previous chunk's value (StreamDiffusionV2: the controller smooths from 0.7 each time).
    noise_scale_from_default: bool = False
    #: Whether the noise controller smooths from its own previous output, whatever is sent.
    controller_smooths_own_output: bool = False
    #: Context latents the window is rebuilt from before every chunk after the first (Krea: 3;
    #: 0: the cache carries over). The chunk then runs at frame positions ``count..`` for ever.
    recompute_context_frames: int = 0
    #: Whether a clean pass at t=0 leaves the chunk's clean keys in the cache (Krea: no, the
    #: next chunk's recompute supersedes them).
    clean_pass: bool = True
    #: The ``kv_cache_attention_bias`` a stream uses until it sends one (None: the pipeline has none).
    attention_bias: float | None = None
    #: Whether the bias's attention masks the zero keys the reference pads with (see attention_bias.py).
    attention_bias_mask_padding: bool = False


class StreamMemory(FrameMemory, Protocol):
    """A frame memory that also follows the stream's chunks."""

    def before_clean_pass(self, chunk_index: int) -> None:
        """The clean pass of chunk `chunk_index` (counted from the last reset) comes next."""


class CausalStream(Stream):
    """Per-stream caches and conditioning over shared :class:`WanComponents`."""

    extra_parameters = ("prompt_embeds", "vace_input_frames", "vace_input_masks")
    chunk_parameters = ("vace_input_frames", "vace_input_masks")

    def __init__(
        self,
        components: WanComponents,
        settings: CausalStreamSettings,
        *,
        height: int,
        width: int,
        seed: int,
        default_steps: list[int],
        video_defaults: dict[str, Any],
        lora_dir: Path | None = None,
        vace: VaceOptions | None = None,
    ):
        from scope.pipelines.wan.conditioning import PromptConditioner

        self.components = components
        self.settings = settings
        self.height, self.width = height, width
        self.latent_h, self.latent_w = height // VAE_SPATIAL, width // VAE_SPATIAL
        self.frame_seq_len = (self.latent_h // 2) * (self.latent_w // 2)
        self.seed = seed
        self.lora_dir = Path(lora_dir) if lora_dir is not None else Path.cwd()
        self.default_steps = list(default_steps)
        #: ``noise_scale`` / ``noise_controller`` in video mode when the caller leaves them out.
        self.video_defaults = dict(video_defaults)
        self.schedule = FlowMatchSchedule(settings.timestep_shift)
        config = components.generator.config
        self.memory = settings.memory(config.num_layers, self.frame_seq_len) if settings.memory else None
        self.cache = GeneratorCache(
            config,
            frame_seq_len=self.frame_seq_len,
            capacity_frames=settings.local_attn_size,
            sink_frames=settings.sink_size,
            device=components.device,
            dtype=components.dtype,
            relative_positions=settings.relative_positions,
            on_evict=settings.on_evict,
            memory=self.memory,
            protect_sink=settings.protect_sink,
        )
        self.vae_state = components.vae.new_state()
        #: VACE conditioning, when the pipeline was loaded with it.
        self.vace = None
        if vace is not None:
            self.vace = VaceConditioner(
                components.vae, self.vae_state, vace, height=height, width=width,
                device=components.device, dtype=components.dtype,
            )
        self.conditioner = PromptConditioner(self._encode_prompts)
        self.noise_controller = NoiseController()
        self.current_start_frame = 0
        #: Chunks since the last reset.
        self.chunk_index = 0
        self.recache_buffer = self._empty_recache_buffer()
        #: Krea's recompute context, when the pipeline rebuilds its window each chunk.
        self.context = ContextFrames(settings.recompute_context_frames) if settings.recompute_context_frames else None
        self.embedding: torch.Tensor | None = None
        self.noise_scale: float | None = None
        self._mode: str | None = None
        self._steps: list[int] | None = None
        #: This stream's scales of the LoRAs kept apart from the weights, by resolved path.
        self.lora_scales = {
            lora.path: lora.scale for lora in components.user_loras if lora.merge_mode == "runtime_peft"
        }
        self._transition_was_active = False

    # Helpers ------------------------------------------------------------------------------

    def _encode_prompts(self, texts: list[str]) -> torch.Tensor:
        return self.components.text_encoder.encode(texts)

    def _empty_recache_buffer(self) -> torch.Tensor:
        c = self.components
        shape = (1, self.settings.local_attn_size, LATENT_CHANNELS, self.latent_h, self.latent_w)
        return torch.zeros(shape, device=c.device, dtype=c.dtype)

    def _rng(self) -> torch.Generator:
        """The chunk's generator: seed + start frame (mod 2**64), the reference's protocol."""
        return torch.Generator(device=self.components.device).manual_seed(chunk_seed(self.seed, self.current_start_frame))

    def _randn(self, shape: tuple[int, ...], rng: torch.Generator) -> torch.Tensor:
        c = self.components
        return torch.randn(shape, generator=rng, device=c.device, dtype=c.dtype)

    def _reset(self) -> None:
        self.cache.reset()
        self.vae_state.reset()
        if self.vace is not None:
            self.vace.reset()
        self.noise_controller.reset()
        self.current_start_frame = 0
        self.chunk_index = 0
        self.recache_buffer = self._empty_recache_buffer()
        if self.context is not None:
            self.context.reset()

    def frames_needed(self, params: dict[str, Any]) -> int:
        return self.settings.frames_per_block * VAE_TEMPORAL

    # The chunk ----------------------------------------------------------------------------

    @torch.inference_mode()
    def run_chunk(self, params: dict[str, Any], video: np.ndarray | None = None, *, init_cache: bool = False) -> Chunk:
        timings = {"text_ms": 0.0, "dit_ms": 0.0, "vae_ms": 0.0}
        control_input = None
        if video is not None and self.vace is not None and self.vace.takes_input_video(params):
            control_input, video = video, None  # the input track is VACE's control video
        mode = "video" if video is not None else "text"
        if self._mode is None or mode != self._mode:
            init_cache = True
        self._mode = mode
        manage_cache = params.get("manage_cache", True) is not False

        started = time.perf_counter()
        update = self.conditioner.update(
            params.get("prompts"),
            params.get("transition"),
            spatial_method=params.get("prompt_interpolation_method") or "linear",
            init_cache=init_cache,
            prompt_embeds=params.get("prompt_embeds"),
        )
        timings["text_ms"] = _elapsed_ms(started, self.components.device)
        if update.embedding is not None:
            self.embedding = update.embedding.to(device=self.components.device, dtype=self.components.dtype)
        if self.embedding is None:
            raise ValueError("prompts are required: send 'prompts' (or 'prompt_embeds') before generating")
        changed = update.changed

        steps = list(params.get("denoising_step_list") or self.default_steps)
        if manage_cache and self._steps is not None and steps != self._steps:
            init_cache = True
        self._steps = steps

        if self._set_lora_scales(params.get("lora_scales")) and manage_cache:
            init_cache = True

        nfpb = self.settings.frames_per_block
        if self.current_start_frame >= ROPE_POSITIONS - nfpb:
            init_cache = True
        in_transition = update.transition_active or self._transition_was_active
        controlled = self.vace is not None and self.vace.has_control(params, control_input)
        if changed and manage_cache and (mode == "video" or controlled) and not in_transition:
            init_cache = True
        self._transition_was_active = update.transition_active
        if init_cache:
            self._reset()
        if init_cache or changed:
            self.cache.reset_cross()

        rng = self._rng()
        started = time.perf_counter()
        if video is not None:
            latents, steps = self._video_latents(video, params, steps, rng)
        else:
            self.noise_scale = None  # text mode has no noise scale (the reference forces None)
            frames = nfpb if self.current_start_frame > 0 else max(nfpb, MIN_FIRST_LATENTS)
            latents = self._randn((1, frames, LATENT_CHANNELS, self.latent_h, self.latent_w), rng)
        timings["vae_ms"] += _elapsed_ms(started, self.components.device)

        # The reference encodes VACE's inputs after the re-cache; they share no state with it.
        vace = self._vace_context(params, control_input, video, timings)
        position = None
        if self.context is not None and self.current_start_frame > 0:
            position = self._recompute_from_context(timings)
        started = time.perf_counter()
        recache = changed and self.current_start_frame > 0 and self.settings.recache_on_prompt_change
        if recache:
            self._recache()
        bias = self._attention_bias(params)
        x0 = self._denoise(latents, steps, rng, vace, start_frame=position, bias=bias)
        if self.settings.clean_pass:
            if self.memory is not None:
                self.memory.before_clean_pass(self.chunk_index)
            self._forward(x0, torch.zeros_like(self._timesteps(x0, 0)))  # the clean pass fills the cache
        timings["dit_ms"] += _elapsed_ms(started, self.components.device)

        started = time.perf_counter()
        decoded = self.components.vae.stream_decode(x0, self.vae_state)
        frames_out = video_to_frames(decoded)
        timings["vae_ms"] += _elapsed_ms(started, self.components.device)

        self._remember(x0)
        if self.context is not None:
            self.context.remember(self.current_start_frame, x0, decoded)
        info = {
            "current_start_frame": self.current_start_frame,
            "noise_scale": self.noise_scale,
            "init_cache": init_cache,
            "recached": recache,
            **timings,
        }
        if self.settings.attention_bias is not None:
            info["kv_cache_attention_bias"] = bias.bias if bias is not None else NO_BIAS
        first_video_chunk = video is not None and info["current_start_frame"] == 0
        self.current_start_frame += x0.shape[1] - (self.settings.first_video_chunk_overlap if first_video_chunk else 0)
        self.chunk_index += 1
        return Chunk(frames=frames_out, transition_active=update.transition_active, info=info)

    def _set_lora_scales(self, updates: list[dict[str, Any]] | None) -> bool:
        """Apply a ``lora_scales`` update (validated by the pipeline); True when a scale changed."""
        changed = False
        for entry in updates or ():
            path = resolve_lora_path(entry["path"], self.lora_dir)
            if path not in self.lora_scales:
                raise ValueError(f"lora_scales: '{entry['path']}' is not a LoRA kept apart from the weights")
            changed |= self.lora_scales[path] != float(entry["scale"])
            self.lora_scales[path] = float(entry["scale"])
        return changed

    def _attention_bias(self, params: dict[str, Any]) -> CacheAttentionBias | None:
        """The chunk's KV-cache attention bias (None: plain attention, as the reference at 1.0)."""
        if self.settings.attention_bias is None:
            return None
        value = params.get("kv_cache_attention_bias")
        value = self.settings.attention_bias if value is None else float(value)
        if value == NO_BIAS:
            return None
        return CacheAttentionBias(
            value, self.frame_seq_len, self.settings.frames_per_block, self.settings.attention_bias_mask_padding
        )

    def _recompute_from_context(self, timings: dict[str, float]) -> int:
        """Clear the window and rebuild it at t=0 from the context latents under the current
        prompt (RoPE from frame 0); returns the frame position the chunk then denoises at."""
        started = time.perf_counter()
        count = self.context.count
        context = self.context.latents_for(self.current_start_frame, self.settings.frames_per_block, self.components.vae)
        timings["vae_ms"] += _elapsed_ms(started, self.components.device)
        started = time.perf_counter()
        self.cache.clear_self_attention()
        self._forward(context, self._timesteps(context, 0), start_frame=0)
        timings["dit_ms"] += _elapsed_ms(started, self.components.device)
        return min(self.current_start_frame, count)

    def _vace_context(
        self, params: dict[str, Any], control_input: Any, video: Any, timings: dict[str, float]
    ) -> VaceContext | None:
        """The chunk's VACE context (after the input latents and the re-cache, as the reference)."""
        if self.vace is None:
            return None
        started = time.perf_counter()
        context = self.vace.context(
            params, control_input, first_chunk=self.current_start_frame == 0, frames_per_block=self.settings.frames_per_block
        )
        if context is not None and video is not None and not self.vace.options.video_mode:
            raise ValueError("this pipeline takes VACE in text mode only: send no VACE input with input video")
        timings["vae_ms"] += _elapsed_ms(started, self.components.device)
        return context

    def _timesteps(self, latents: torch.Tensor, value: int) -> torch.Tensor:
        return torch.full(latents.shape[:2], value, device=latents.device, dtype=torch.long)

    def _forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        start_frame: int | None = None,
        *,
        commit: bool = True,
        vace: VaceContext | None = None,
        bias: CacheAttentionBias | None = None,
    ) -> torch.Tensor:
        start = self.current_start_frame if start_frame is None else start_frame
        runtime = self.components.runtime_loras
        if runtime is not None:  # the weights are shared: this stream's scales for its forwards
            runtime.scales = self.lora_scales
        return self.components.generator(
            latents, timestep, self.embedding, cache=self.cache, start_frame=start, commit=commit, vace=vace,
            attention_bias=bias,
        )

    def _denoise(
        self,
        latents: torch.Tensor,
        steps: list[int],
        rng: torch.Generator,
        vace: VaceContext | None = None,
        *,
        start_frame: int | None = None,
        bias: CacheAttentionBias | None = None,
    ) -> torch.Tensor:
        """The few-step loop: predict x0, re-noise to the next step's level with the chunk's RNG.

        Only these steps carry the VACE context and the attention bias; the clean pass, the
        re-cache and Krea's recompute never do.
        """
        x0 = latents
        for index, step in enumerate(steps):
            timestep = self._timesteps(latents, step)
            flow = self._forward(
                latents, timestep, start_frame, commit=self.settings.denoising_commits, vace=vace, bias=bias
            )
            x0 = self.schedule.to_x0(flow, latents, timestep)
            if index + 1 < len(steps):
                noise = self._randn((latents.shape[1], *latents.shape[2:]), rng).unsqueeze(0)
                latents = self.schedule.add_noise(x0, noise, steps[index + 1])
        return x0

    def _recache(self) -> None:
        """Re-compute the cached keys of the last frames under the new conditioning."""
        count = min(self.current_start_frame, self.settings.local_attn_size)
        frames = self.recache_buffer[:, -count:]
        start = self.current_start_frame - count
        self._forward(frames, self._timesteps(frames, 0), start_frame=start)

    def _remember(self, x0: torch.Tensor) -> None:
        """Append the chunk's clean latents to the re-cache window."""
        window = self.settings.local_attn_size
        self.recache_buffer = torch.cat([self.recache_buffer, x0], dim=1)[:, -window:]

    def _video_latents(
        self, video: np.ndarray, params: dict[str, Any], steps: list[int], rng: torch.Generator
    ) -> tuple[torch.Tensor, list[int]]:
        """Encode the input frames and mix in noise; the first step becomes ``1000*scale - 100``."""
        c = self.components
        first = self.current_start_frame == 0
        target = self.frames_needed(params) + (1 if first else 0)
        pixels = frames_to_video(
            video, height=self.height, width=self.width, target_frames=target, device=c.device, dtype=c.dtype
        )
        noise_scale = params.get("noise_scale")
        if noise_scale is None:
            previous = None if self.settings.noise_scale_from_default else self.noise_scale
            noise_scale = previous if previous is not None else self.video_defaults["noise_scale"]
        controller = params.get("noise_controller")
        if controller is None:
            controller = self.video_defaults.get("noise_controller", False)
        if controller:
            if self.settings.controller_smooths_own_output and self.noise_controller.last_scale is not None:
                noise_scale = self.noise_controller.last_scale
            noise_scale = self.noise_controller(pixels, noise_scale, self.settings.frames_per_block)
        self.noise_scale = float(noise_scale)
        encoded = c.vae.stream_encode(pixels, self.vae_state, normalize=self.settings.normalize_video_latents)
        noise = self._randn(tuple(encoded.shape), rng)
        latents = noise * self.noise_scale + encoded * (1.0 - self.noise_scale)
        steps = list(steps)
        steps[0] = int(1000 * self.noise_scale) - 100
        return latents, steps


def _elapsed_ms(started: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) * 1000.0
