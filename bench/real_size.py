"""The causal Wan pipelines at their real size on random weights: the plan and the frame rate.

The generator is Wan2.1-1.3B's shape (``WAN_1_3B_CONFIG``; ``layers`` can cut its depth for a
CPU try) and the VAE the Wan VAE's real width (base 96), both randomly initialised, so no
checkpoint is needed: speed does not depend on the values. The text encoder is left out; the
prompt is a fixed ``prompt_embeds`` tensor, as a session with a cached prompt has. Each pipeline
runs through its own class's ``open_stream()`` (its settings and load parameters), i.e. the
server's code path from the stream down. A pipeline whose default mode is video
(``streamdiffusionv2``) is fed random input frames, so its VAE time includes the encoding.

On ``meta`` nothing is computed: :func:`plan` reads the cache sizes from the real stream objects.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from bench.longlive import forward_flops
from scope.models.synthetic.generator import generator_state_dict
from scope.models.synthetic.vae import wan_vae_state_dict
from scope.pipelines.registry import get_pipeline_class
from scope.pipelines.wan import transformer
from scope.pipelines.wan.autoencoders import load_strict as load_vae_strict
from scope.pipelines.wan.causal_stream import VAE_TEMPORAL
from scope.pipelines.wan.components import WanComponents
from scope.pipelines.wan.config import WAN_1_3B_CONFIG
from scope.pipelines.wan.loading import load_strict
from scope.pipelines.wan.transformer import CausalWanTransformer
from scope.pipelines.wan.vae import WanVAE, WanVAENet, WanVAEWidths

#: The real Wan VAE's base width (LightVAE: 24).
WAN_VAE_BASE = 96
#: What each line runs: (pipeline id, load parameters beyond the size).
LINES: dict[str, tuple[str, dict[str, Any]]] = {
    "longlive": ("longlive", {}),
    "reward-forcing": ("reward-forcing", {}),
    "memflow": ("memflow", {}),
    "memflow-no-bank": ("memflow", {"memory_bank": False}),
    "streamdiffusionv2": ("streamdiffusionv2", {}),
}
#: The text-to-video lines ``bench/causal_pipelines.py`` runs unless told otherwise.
CAUSAL_LINES = ["longlive", "reward-forcing", "memflow", "memflow-no-bank"]
#: The papers' figures (performance notes, table 1): FPS on one H100 at 832x480, except where
#: ``PAPER_SETUP`` says otherwise.
PAPER_FPS = {"longlive": 20.7, "reward-forcing": 23.1, "memflow": 18.7, "streamdiffusionv2": 64.52}
PAPER_SIZE = "832x480"
#: Where a paper's figure was measured and the size it is shown at (None: beside every size, as
#: a reference line; StreamDiffusionV2's runs on four GPUs, so no single-GPU run matches it).
PAPER_SETUP = {"streamdiffusionv2": ("4 H100s (1.3B, 480p, pipeline-parallel over steps and layers)", None)}


def random_components(
    device: torch.device | str, dtype: torch.dtype, *, layers: int | None = None, vae_base: int = WAN_VAE_BASE, seed: int = 0
) -> WanComponents:
    """Wan2.1-1.3B generator and a Wan VAE of ``vae_base`` width, random, on ``device``."""
    device = torch.device(device)
    config = WAN_1_3B_CONFIG if layers is None else dataclasses.replace(WAN_1_3B_CONFIG, num_layers=layers)
    with torch.device("meta"):
        generator = CausalWanTransformer(config)
    load_strict(generator, generator_state_dict(config, seed, device=device, dtype=dtype), "random weights")
    generator.rebuild_buffers(device)
    generator.eval().requires_grad_(False)
    widths = WanVAEWidths.from_base(vae_base)
    vae_state = wan_vae_state_dict(vae_base, seed, device="meta" if device.type == "meta" else "cpu")
    net = load_vae_strict(lambda: WanVAENet(widths), vae_state, "random weights", device=device, dtype=dtype)
    return WanComponents(generator, WanVAE(net).to(device=device, dtype=dtype), None, device, dtype)


def open_stream(components: WanComponents, line: str, width: int, height: int, seed: int = 42):
    """A stream of ``line`` over ``components``, opened by the pipeline class itself."""
    pipeline_id, extra = LINES[line]
    cls = get_pipeline_class(pipeline_id)
    params = cls.load_params_model.model_validate({"height": height, "width": width, "seed": seed, **extra})
    return cls(params, components, synthetic=False).open_stream()


def plan(components: WanComponents, line: str, width: int, height: int) -> dict[str, Any]:
    """What a stream of ``line`` holds per layer and in all, and the DiT work of a full-window chunk."""
    stream = open_stream(components, line, width, height)
    cache, memory = stream.cache, stream.memory
    config = components.generator.config
    fsl = stream.frame_seq_len
    window = cache.layers[0].k.shape[1]
    bank = memory.size * fsl if memory is not None else 0
    staging = fsl if memory is not None else 0  # the frame recorded and not yet committed
    per_token = 2 * config.num_heads * config.head_dim * torch.finfo(components.dtype).bits // 8  # k and v
    attended = window + bank
    block = stream.settings.frames_per_block * fsl
    steps = len(stream.default_steps) + 1  # the denoising steps and the clean pass
    frames = stream.settings.frames_per_block * VAE_TEMPORAL  # decoded frames per chunk
    return {
        "tokens_per_frame": fsl,
        "window_tokens_per_layer": window,
        "bank_tokens_per_layer": bank,
        "attended_tokens": attended,
        "kv_gb": round((window + bank + staging) * per_token * config.num_layers / 1e9, 3),
        "dit_tflop_per_frame": round(steps * forward_flops(config, block, attended) / 1e12 / frames, 3),
    }


def parameter_count(components: WanComponents) -> int:
    return sum(p.numel() for p in components.generator.parameters())


@contextmanager
def recorded_keys() -> Iterator[list[int]]:
    """Route attention through SDPA while recording each call's key length."""
    lengths: list[int] = []

    def kernel(q, k, v, mask):
        lengths.append(k.shape[1])
        return transformer.sdpa_attention(q, k, v, mask)

    previous = transformer.set_attention_kernel(kernel)
    try:
        yield lengths
    finally:
        transformer.set_attention_kernel(previous)


def steady_chunk(stream) -> int:
    """Index of the first chunk that attends to a full window (and, with a bank, a full bank)."""
    settings, memory = stream.settings, stream.memory
    index = -(-(settings.local_attn_size - settings.frames_per_block) // settings.frames_per_block)
    if memory is not None:  # the bank's last frame is recorded on chunk interval*(size-1), committed on the next
        index = max(index, memory.record_interval * (memory.size - 1) + 1)
    return index


def time_line(
    components: WanComponents, line: str, width: int, height: int, *, warmup: int, chunks: int, seed: int = 0
) -> dict[str, Any]:
    """Frames per second of ``line`` once its cache (and bank) is full; the DiT / VAE split.

    After the first chunk, at least enough chunks run untimed for the window (and MemFlow's
    bank) to fill; then ``chunks`` are timed, recording the key lengths the self-attention saw
    so the figures show the steady state they were taken in. A pipeline whose default mode is
    video is fed input frames (so the VAE figure includes encoding).
    """
    config = components.generator.config
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, config.text_len, config.text_dim, generator=gen).mul_(0.1)
    stream = open_stream(components, line, width, height)
    video = input_video(stream, line, width, height, gen)
    stream.generate(video=video, prompt_embeds=embeds.to(components.device, components.dtype))
    warmup = max(warmup, steady_chunk(stream) - 1)
    for _ in range(warmup):
        stream.generate(video=video)
    rows = []
    with recorded_keys() as lengths:
        for _ in range(chunks):
            started = time.perf_counter()
            chunk = stream.generate(video=video)
            rows.append({"wall_ms": (time.perf_counter() - started) * 1000, "frames": len(chunk.frames), **chunk.info})
    self_keys = sorted({n for n in lengths if n != config.text_len})
    wall = sum(r["wall_ms"] for r in rows) / 1000
    frames = sum(r["frames"] for r in rows)
    return {
        "fps": round(frames / wall, 2),
        "chunk_ms": round(statistics.median(r["wall_ms"] for r in rows), 1),
        "dit_ms": round(statistics.median(r["dit_ms"] for r in rows), 1),
        "vae_ms": round(statistics.median(r["vae_ms"] for r in rows), 1),
        "warmup_chunks": warmup,
        "attended_frames": [n / stream.frame_seq_len for n in self_keys],
    }


def input_video(stream, line: str, width: int, height: int, gen: torch.Generator) -> np.ndarray | None:
    """Random uint8 input frames, as many as a chunk takes, for a video-mode pipeline (else None)."""
    if get_pipeline_class(LINES[line][0]).info.default_mode != "video":
        return None
    shape = (stream.frames_needed({}), height, width, 3)
    return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).numpy()


def paper_note(line: str, size: str) -> str:
    """The paper's figure, for the paper's size and the pipeline as published (no extra load parameters)."""
    pipeline_id, extra = LINES[line]
    setup, paper_size = PAPER_SETUP.get(pipeline_id, ("one H100", PAPER_SIZE))
    if pipeline_id not in PAPER_FPS or extra or (paper_size is not None and size != paper_size):
        return ""
    return f"paper {PAPER_FPS[pipeline_id]} FPS on {setup}"
