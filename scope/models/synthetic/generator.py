"""Tiny random Wan2.1 generator, LoRA and VACE files in the real checkpoint layouts.

The key names and shapes are written out here from the original Wan module tree (not taken
from our model), so loading a synthetic file also checks that the model matches the real
layout. Values are fan-in scaled normals with unit-ish norms and small modulation, so an
untrained model produces finite, O(1) flows that still depend on the prompt and the timestep.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from scope.pipelines.wan.config import WanConfig
from scope.pipelines.wan.vace import VACE_IN_DIM

_ATTN_LINEARS = ("q", "k", "v", "o")


def block_shapes(config: WanConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of one transformer block, keys relative to `blocks.{i}.`."""
    dim, ffn = config.dim, config.ffn_dim
    shapes: dict[str, tuple[int, ...]] = {}
    for attn in ("self_attn", "cross_attn"):
        for name in _ATTN_LINEARS:
            shapes[f"{attn}.{name}.weight"] = (dim, dim)
            shapes[f"{attn}.{name}.bias"] = (dim,)
        if config.qk_norm:
            shapes[f"{attn}.norm_q.weight"] = (dim,)
            shapes[f"{attn}.norm_k.weight"] = (dim,)
    if config.cross_attn_norm:
        shapes["norm3.weight"] = (dim,)
        shapes["norm3.bias"] = (dim,)
    shapes["ffn.0.weight"] = (ffn, dim)
    shapes["ffn.0.bias"] = (ffn,)
    shapes["ffn.2.weight"] = (dim, ffn)
    shapes["ffn.2.bias"] = (dim,)
    shapes["modulation"] = (1, 6, dim)
    return shapes


def generator_shapes(config: WanConfig) -> dict[str, tuple[int, ...]]:
    """Every generator key (original Wan naming, no `model.` prefix) with its shape."""
    dim = config.dim
    p, q, r = config.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (dim, config.in_dim, p, q, r),
        "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, config.text_dim),
        "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim),
        "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, config.freq_dim),
        "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim),
        "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim),
        "time_projection.1.bias": (6 * dim,),
    }
    for i in range(config.num_layers):
        for key, shape in block_shapes(config).items():
            shapes[f"blocks.{i}.{key}"] = shape
    shapes["head.head.weight"] = (p * q * r * config.out_dim, dim)
    shapes["head.head.bias"] = (p * q * r * config.out_dim,)
    shapes["head.modulation"] = (1, 2, dim)
    return shapes


def vace_shapes(config: WanConfig, vace_in_dim: int = VACE_IN_DIM) -> dict[str, tuple[int, ...]]:
    """Keys of a VACE module file: one hint block per second layer plus the context patch embedding."""
    dim = config.dim
    shapes: dict[str, tuple[int, ...]] = {}
    for j, _layer in enumerate(range(0, config.num_layers, 2)):
        for key, shape in block_shapes(config).items():
            shapes[f"vace_blocks.{j}.{key}"] = shape
        if j == 0:
            shapes["vace_blocks.0.before_proj.weight"] = (dim, dim)
            shapes["vace_blocks.0.before_proj.bias"] = (dim,)
        shapes[f"vace_blocks.{j}.after_proj.weight"] = (dim, dim)
        shapes[f"vace_blocks.{j}.after_proj.bias"] = (dim,)
    shapes["vace_patch_embedding.weight"] = (dim, vace_in_dim, *config.patch_size)
    shapes["vace_patch_embedding.bias"] = (dim,)
    return shapes


def _init_value(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A sane random value for one parameter, chosen by its role in the network."""
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    if key.endswith("modulation"):
        return noise * 0.1
    if key.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")):
        # q/k norm gains above 1 sharpen attention so the prompt and the past frames matter.
        gain = 2.0 if "norm_" in key else 1.0
        return gain + 0.05 * noise
    if key.endswith(".bias"):
        return noise * 0.02
    if key.startswith("time_projection"):
        return noise * (0.25 / math.sqrt(shape[1]))
    if key == "text_embedding.0.weight":
        # Text-encoder outputs are small (std ~0.1-0.3); amplify them so the prompt steers the frames.
        return noise * (4.0 / math.sqrt(shape[1]))
    if key.endswith(("before_proj.weight", "after_proj.weight")):
        return noise * (0.2 / math.sqrt(shape[1]))
    fan_in = math.prod(shape[1:])
    return noise / math.sqrt(fan_in)


def _random_state(
    shapes: dict[str, tuple[int, ...]], seed: int, device: torch.device | str, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    if torch.device(device).type == "meta":
        return {key: torch.empty(shape, device="meta", dtype=dtype) for key, shape in shapes.items()}
    gen = torch.Generator().manual_seed(seed)
    return {key: _init_value(key, shape, gen).to(device=device, dtype=dtype) for key, shape in shapes.items()}


def generator_state_dict(
    config: WanConfig, seed: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Deterministic random generator weights (`device="meta"` gives shapes only, for any size)."""
    return _random_state(generator_shapes(config), seed, device, dtype)


def write_wan_config(path: str | Path, config: WanConfig) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_json_dict(), indent=2) + "\n")
    return path


def write_generator(
    path: str | Path, config: WanConfig, seed: int, dtype: torch.dtype = torch.float32, *, under: str | None = "generator"
) -> Path:
    """A generator checkpoint with every key `model.`-prefixed: `{under: {...}}` as LongLive's and
    MemFlow's (Self-Forcing containers), or the flat dict itself (`under=None`) as Reward Forcing's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"model.{key}": value for key, value in generator_state_dict(config, seed, dtype=dtype).items()}
    torch.save(state if under is None else {under: state}, path)
    return path


def write_flat_safetensors_generator(
    path: str | Path, config: WanConfig, seed: int, dtype: torch.dtype = torch.bfloat16
) -> Path:
    """Krea's container: one flat safetensors file, every original Wan key `model.`-prefixed, bf16."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"model.{key}": value.contiguous() for key, value in generator_state_dict(config, seed, dtype=dtype).items()}
    save_file(state, str(path))
    return path


def lora_targets(config: WanConfig) -> dict[str, tuple[int, int]]:
    """The 10 LoRA-targeted linears per block, as `blocks.{i}.<path>` -> (out_features, in_features)."""
    dim, ffn = config.dim, config.ffn_dim
    targets: dict[str, tuple[int, int]] = {}
    for i in range(config.num_layers):
        for attn in ("self_attn", "cross_attn"):
            for name in _ATTN_LINEARS:
                targets[f"blocks.{i}.{attn}.{name}"] = (dim, dim)
        targets[f"blocks.{i}.ffn.0"] = (ffn, dim)
        targets[f"blocks.{i}.ffn.2"] = (dim, ffn)
    return targets


def peft_lora_state_dict(config: WanConfig, seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """PEFT `get_peft_model_state_dict` layout: `base_model.model.<module>.lora_{A,B}.weight`."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for module, (out_features, in_features) in lora_targets(config).items():
        a = torch.randn((rank, in_features), generator=gen) / math.sqrt(in_features)
        b = torch.randn((out_features, rank), generator=gen) * (0.05 / math.sqrt(rank))
        state[f"base_model.model.{module}.lora_A.weight"] = a
        state[f"base_model.model.{module}.lora_B.weight"] = b
    return state


def write_peft_lora(path: str | Path, config: WanConfig, seed: int, rank: int = 4, nested: bool = True) -> Path:
    """LongLive's built-in adapter file; `nested` wraps it as `{"generator_lora": ...}`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = peft_lora_state_dict(config, seed, rank)
    torch.save({"generator_lora": state} if nested else state, path)
    return path


def vace_state_dict(
    config: WanConfig, seed: int, vace_in_dim: int = VACE_IN_DIM, dtype: torch.dtype = torch.bfloat16
) -> dict[str, torch.Tensor]:
    return _random_state(vace_shapes(config, vace_in_dim), seed, "cpu", dtype)


def write_vace_module(path: str | Path, config: WanConfig, seed: int, vace_in_dim: int = VACE_IN_DIM) -> Path:
    """A `Wan2_1-VACE_module_*_bf16.safetensors`-style file (VACE keys only, bfloat16)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vace_state_dict(config, seed, vace_in_dim).items()}, str(path))
    return path
