"""Tiny synthetic LoRA files for the synthetic Wan generator, one per key convention people download.

Every format written for the same ``(config, seed, rank, targets)`` encodes the same effective
delta per module, ``up @ down`` after the ``alpha / rank`` factor, so loading any of them gives
the same weights. Where a format carries ``alpha``, the stored ``up`` is divided by
``alpha / rank``; the default ``alpha`` (twice the rank) makes that factor a power of two, so the
deltas read back are bit-identical across formats.

Usage (tests, demos)::

    from scope.models.synthetic.lora import write_synthetic_lora
    from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG
    write_synthetic_lora(lora_dir / "style.safetensors", "kohya", SYNTHETIC_WAN_CONFIG, seed=1)
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from scope.models.synthetic.generator import lora_targets
from scope.pipelines.wan.config import WanConfig

#: The formats this module writes: name -> what its keys look like (for docs and error messages).
SYNTHETIC_LORA_FORMATS = {
    "peft": "diffusion_model.<module>.lora_A.weight / lora_B.weight, no alpha (Comfy's PEFT export)",
    "peft_alpha": "<module>.lora_A.weight / lora_B.weight and <module>.alpha, no prefix",
    "peft_base_model": "base_model.model.<module>.lora_A.weight / lora_B.weight (PEFT's own layout)",
    "dotted": "<module>.lora_down.weight / lora_up.weight and <module>.alpha",
    "kohya": "lora_unet_<module with _>.lora_down.weight / lora_up.weight and .alpha",
    "diffusers": "transformer.blocks.N.attn1.to_q.lora_A.weight ... (diffusers' Wan names)",
}
#: Formats whose files carry an ``alpha`` per module.
_WITH_ALPHA = ("peft_alpha", "dotted", "kohya")
#: Original Wan block linears -> diffusers' Wan names (relative to ``blocks.N.``).
_DIFFUSERS_BLOCK_NAMES = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def synthetic_lora_deltas(
    config: WanConfig, seed: int, rank: int = 4, targets: Iterable[str] | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (down [rank, in], up [out, rank])}``: the delta every format encodes.

    ``targets``: original Wan module names (``blocks.0.self_attn.q``), default every block linear.
    """
    shapes = lora_targets(config)
    names = list(shapes) if targets is None else list(targets)
    unknown = [name for name in names if name not in shapes]
    if unknown:
        raise ValueError(f"not a LoRA-targeted linear of this config: {unknown[0]!r}")
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for module in sorted(names):
        out_features, in_features = shapes[module]
        down = torch.randn((rank, in_features), generator=gen) / math.sqrt(in_features)
        up = torch.randn((out_features, rank), generator=gen) * (0.05 / math.sqrt(rank))
        deltas[module] = (down, up)
    return deltas


def _diffusers_name(module: str) -> str:
    match = _BLOCK.match(module)
    if match is None or match[2] not in _DIFFUSERS_BLOCK_NAMES:
        raise ValueError(f"no diffusers name for {module!r}")
    return f"transformer.blocks.{match[1]}.{_DIFFUSERS_BLOCK_NAMES[match[2]]}"


#: format -> (module name in keys, down suffix, up suffix)
_KEYS: dict[str, tuple[Callable[[str], str], str, str]] = {
    "peft": (lambda m: f"diffusion_model.{m}", "lora_A.weight", "lora_B.weight"),
    "peft_alpha": (lambda m: m, "lora_A.weight", "lora_B.weight"),
    "peft_base_model": (lambda m: f"base_model.model.{m}", "lora_A.weight", "lora_B.weight"),
    "dotted": (lambda m: m, "lora_down.weight", "lora_up.weight"),
    "kohya": (lambda m: "lora_unet_" + m.replace(".", "_"), "lora_down.weight", "lora_up.weight"),
    "diffusers": (_diffusers_name, "lora_A.weight", "lora_B.weight"),
}


def synthetic_lora_state_dict(
    fmt: str,
    config: WanConfig,
    seed: int,
    rank: int = 4,
    alpha: float | None = None,
    targets: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors of a synthetic LoRA in format ``fmt`` (see ``SYNTHETIC_LORA_FORMATS``)."""
    if fmt not in _KEYS:
        raise ValueError(f"unknown synthetic LoRA format {fmt!r}; known: {', '.join(SYNTHETIC_LORA_FORMATS)}")
    name, down_key, up_key = _KEYS[fmt]
    with_alpha = fmt in _WITH_ALPHA
    alpha_value = float(alpha if alpha is not None else 2 * rank)
    state: dict[str, torch.Tensor] = {}
    for module, (down, up) in synthetic_lora_deltas(config, seed, rank, targets).items():
        prefix = name(module)
        state[f"{prefix}.{down_key}"] = down.contiguous()
        state[f"{prefix}.{up_key}"] = (up / (alpha_value / rank) if with_alpha else up).contiguous()
        if with_alpha:
            state[f"{prefix}.alpha"] = torch.tensor(alpha_value)
    return state


def write_synthetic_lora(
    path: str | Path,
    fmt: str,
    config: WanConfig,
    seed: int,
    rank: int = 4,
    alpha: float | None = None,
    targets: Iterable[str] | None = None,
) -> Path:
    """Write a synthetic LoRA: safetensors, or a ``torch.save`` dict for ``.pt``/``.pth``/``.bin``.

    ``alpha`` (formats that carry one) defaults to ``2 * rank``; any value gives the same delta,
    up to float rounding.
    """
    path = Path(path)
    data = synthetic_lora_bytes(fmt, config, seed, rank, alpha, targets, suffix=path.suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def synthetic_lora_bytes(
    fmt: str,
    config: WanConfig,
    seed: int,
    rank: int = 4,
    alpha: float | None = None,
    targets: Iterable[str] | None = None,
    *,
    suffix: str = ".safetensors",
) -> bytes:
    """The file content ``write_synthetic_lora`` writes for a file with this ``suffix``."""
    state = synthetic_lora_state_dict(fmt, config, seed, rank, alpha, targets)
    if suffix.lower() == ".safetensors":
        from safetensors.torch import save

        return save(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()
