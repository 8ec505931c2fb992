"""User LoRAs on the Wan generator: the files people download, merged at load or applied per stream.

A LoRA file is read into one low-rank delta per linear module, ``W' = W + scale * up @ down``,
whatever its key convention:

* PEFT / Comfy: ``<prefix><module>.lora_A.weight`` / ``.lora_B.weight`` (optionally
  ``lora_A.<adapter>.weight``), with ``diffusion_model.``, ``base_model.model.``, ``model.`` or
  no prefix;
* dotted ``<module>.lora_down.weight`` / ``.lora_up.weight``;
* kohya ``lora_unet_<module with underscores>.lora_down.weight`` / ``.lora_up.weight``;
* diffusers' Wan names (``transformer.blocks.0.attn1.to_q.lora_A.weight``...), mapped to the
  original Wan module names the generator uses.

A ``<module>.alpha`` entry scales the delta by ``alpha / rank`` in every format (the reference
skips it for ``diffusion_model.``-prefixed PEFT keys; see docs/pipelines.md). Anything that does
not fit the model (a key naming no linear, a half pair, a shape that does not match) fails with
the file and the first bad key. ``permanent_merge`` folds the deltas into the weights at load;
``runtime_peft`` keeps them apart in :class:`RuntimeLoras`, whose scales each stream sets for its
own forwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .loading import CheckpointMismatch, read_state_dict, require_tensors

MERGE_MODES = ("permanent_merge", "runtime_peft")
#: Prefixes a module path may carry, by convention, before the original Wan module name.
PREFIXES = ("diffusion_model.", "base_model.model.", "transformer.", "model.")
KOHYA_PREFIX = "lora_unet_"
_PART = re.compile(r"^(?P<module>.+?)\.(?:(?P<part>lora_A|lora_B|lora_down|lora_up)(?:\.[A-Za-z0-9_\-]+)?\.weight|(?P<alpha>alpha))$")
_DOWN = ("lora_A", "lora_down")
#: diffusers' Wan module names -> the original Wan names (the same linears).
DIFFUSERS_NAMES = (
    (re.compile(r"^blocks\.(\d+)\.attn1\.to_([qkv])$"), r"blocks.\1.self_attn.\2"),
    (re.compile(r"^blocks\.(\d+)\.attn1\.to_out\.0$"), r"blocks.\1.self_attn.o"),
    (re.compile(r"^blocks\.(\d+)\.attn2\.to_([qkv])$"), r"blocks.\1.cross_attn.\2"),
    (re.compile(r"^blocks\.(\d+)\.attn2\.to_out\.0$"), r"blocks.\1.cross_attn.o"),
    (re.compile(r"^blocks\.(\d+)\.ffn\.net\.0\.proj$"), r"blocks.\1.ffn.0"),
    (re.compile(r"^blocks\.(\d+)\.ffn\.net\.2$"), r"blocks.\1.ffn.2"),
    (re.compile(r"^condition_embedder\.time_embedder\.linear_1$"), "time_embedding.0"),
    (re.compile(r"^condition_embedder\.time_embedder\.linear_2$"), "time_embedding.2"),
    (re.compile(r"^condition_embedder\.time_proj$"), "time_projection.1"),
    (re.compile(r"^condition_embedder\.text_embedder\.linear_1$"), "text_embedding.0"),
    (re.compile(r"^condition_embedder\.text_embedder\.linear_2$"), "text_embedding.2"),
    (re.compile(r"^proj_out$"), "head.head"),
)


class LoraFileError(CheckpointMismatch):
    """A LoRA file that does not fit the generator it is applied to."""


def resolve_lora_path(path: str | Path, lora_dir: str | Path) -> Path:
    """A LoRA path as given (absolute, or relative to the LoRA directory), resolved: the identity
    ``loras`` and ``lora_scales`` entries are matched by."""
    given = Path(path).expanduser()
    return (given if given.is_absolute() else Path(lora_dir) / given).resolve()


def adapter_name(path: str | Path) -> str:
    """The adapter's name: the file stem with ``. / \\``, spaces and ``-`` made ``_`` (the reference's)."""
    return re.sub(r"[./\\ \-]", "_", Path(path).stem)


@dataclass(frozen=True)
class LoraDelta:
    """One linear's delta, ``up @ down``, with ``alpha / rank`` already folded into ``up``."""

    down: torch.Tensor  # [rank, in]
    up: torch.Tensor  # [out, rank]

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file read against a model: its deltas by original Wan module name."""

    path: Path
    name: str
    format: str
    deltas: dict[str, LoraDelta]

    @property
    def rank(self) -> int:
        return max(delta.rank for delta in self.deltas.values())


def fused_parts(model: nn.Module) -> dict[str, tuple[str, int, int]]:
    """``{"blocks.N.self_attn.q": ("blocks.N.self_attn.qkv", first row, rows), ...}`` for every
    self-attention whose q/k/v were fused: LoRA files name the original linears."""
    parts = {}
    for name, module in model.named_modules():
        fused = getattr(module, "qkv", None)
        if isinstance(fused, nn.Module) and hasattr(fused, "out_features"):
            rows = fused.out_features // 3
            for i, part in enumerate("qkv"):
                parts[f"{name}.{part}"] = (f"{name}.qkv", i * rows, rows)
    return parts


def linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{module name: (out, in)}`` of every linear a LoRA may target (fp8 ones included); a
    fused q/k/v projection is targeted through the names of the three linears it replaced."""
    shapes = {}
    fused = fused_parts(model)
    targets = {target for target, _, _ in fused.values()}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if name in targets:
            continue
        if isinstance(weight, torch.Tensor) and weight.ndim == 2 and hasattr(module, "in_features"):
            shapes[name] = (module.out_features, module.in_features)
    for name, (target, _, rows) in fused.items():
        shapes[name] = (rows, model.get_submodule(target).in_features)
    return shapes


def _module_name(raw: str, kohya: Mapping[str, str]) -> tuple[str, str]:
    """``(original Wan module name, format)`` of a key's module part."""
    if raw.startswith(KOHYA_PREFIX):
        flat = raw[len(KOHYA_PREFIX) :]
        return kohya.get(flat, flat), "kohya"
    for prefix in PREFIXES:
        if raw.startswith(prefix):
            raw = raw[len(prefix) :]
            break
    for pattern, replacement in DIFFUSERS_NAMES:
        if pattern.match(raw):
            return pattern.sub(replacement, raw), "diffusers"
    return raw, "peft"


@dataclass(frozen=True)
class LoraKey:
    """What one key of a LoRA file is: a part (``down``, ``up`` or ``alpha``) of a module."""

    module: str  # the original Wan module name
    role: str
    format: str  # "peft", "dotted", "kohya" or "diffusers"


def parse_lora_key(key: str, kohya: Mapping[str, str]) -> LoraKey | None:
    """Read ``key`` by the conventions above (None: not a LoRA key). ``kohya`` maps a module
    name with underscores to its dotted name (kohya's names lose the dots)."""
    match = _PART.match(key)
    if match is None:
        return None
    module, fmt = _module_name(match["module"], kohya)
    if fmt == "peft" and match["part"] in ("lora_down", "lora_up"):
        fmt = "dotted"
    role = "alpha" if match["alpha"] else ("down" if match["part"] in _DOWN else "up")
    return LoraKey(module, role, fmt)


def read_lora(path: str | Path, model: nn.Module) -> LoraFile:
    """Read a LoRA file in any supported convention and check it against ``model``."""
    path = Path(path)
    tensors = require_tensors(read_state_dict(path), path, "LoRA")
    if not tensors:
        raise LoraFileError(f"{path}: the LoRA file holds no tensors")
    shapes = linear_shapes(model)
    kohya = {name.replace(".", "_"): name for name in shapes}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    formats: set[str] = set()
    first_key: dict[str, str] = {}
    for key in sorted(tensors):
        parsed = parse_lora_key(key, kohya)
        if parsed is None:
            raise LoraFileError(f"{path}: {key!r} is not a LoRA key (lora_A/lora_B, lora_down/lora_up or alpha)")
        module, role = parsed.module, parsed.role
        if module not in shapes:
            raise LoraFileError(f"{path}: {key!r} names no linear module of the generator ({module!r})")
        if role != "alpha":
            formats.add(parsed.format)
        slot = parts.setdefault(module, {})
        if role in slot:
            raise LoraFileError(f"{path}: {key!r} repeats the {role} of {module}")
        slot[role] = tensors[key]
        first_key.setdefault(module, key)
    deltas = {}
    for module, slot in parts.items():
        key = first_key[module]
        if "down" not in slot or "up" not in slot:
            missing = "down (lora_A)" if "down" not in slot else "up (lora_B)"
            raise LoraFileError(f"{path}: {key!r}: the {missing} weight of {module} is missing")
        down, up = slot["down"].float(), slot["up"].float()
        out_features, in_features = shapes[module]
        if down.ndim != 2 or up.ndim != 2 or down.shape[1] != in_features or up.shape[0] != out_features or down.shape[0] != up.shape[1]:
            raise LoraFileError(
                f"{path}: {key!r}: down {list(down.shape)} and up {list(up.shape)} do not fit "
                f"{module}'s [{out_features}, {in_features}] weight"
            )
        if "alpha" in slot:
            up = up * (float(slot["alpha"]) / down.shape[0])
        deltas[module] = LoraDelta(down, up)
    return LoraFile(path, adapter_name(path), "+".join(sorted(formats)), deltas)


def merge_loras(model: nn.Module, loras: Iterable[tuple[LoraFile, float]]) -> None:
    """``W += scale * up @ down`` for each file, in float32; the weights stay float32 until the
    model is cast (and, with fp8, quantised) once, after every merge."""
    modules = dict(model.named_modules())
    fused = fused_parts(model)
    for lora, scale in loras:
        for name, delta in lora.deltas.items():
            target, first, rows = fused.get(name, (name, 0, None))
            linear = modules[target]
            weight = linear.weight.detach().to(torch.float32)
            update = delta.up.to(weight.device) @ delta.down.to(weight.device)
            if rows is not None:  # one of q/k/v inside a fused projection: its rows only
                weight = weight.clone()
                weight[first : first + rows] += scale * update
            else:
                weight = weight + scale * update
            linear.weight = nn.Parameter(weight, requires_grad=False)


class RuntimeLoras:
    """Adapters kept apart from the shared weights; each forward uses the scales set in ``scales``.

    Per linear, every adapter's ``down`` rows and ``up`` columns are stacked, so any number of
    adapters costs two thin matmuls: ``y += up_all @ (scale_per_rank * (down_all @ x))``. The
    weights are shared by every stream; a stream sets ``scales`` (file path -> scale) before its
    forwards, which the device thread runs one at a time.
    """

    def __init__(self, model: nn.Module, loras: Iterable[LoraFile], device: torch.device, dtype: torch.dtype):
        # The files' deltas are not kept: only their stacks on the device are used.
        #: Scale per adapter, by its file's resolved path; unnamed adapters are off (scale 0).
        self.scales: dict[Path, float] = {}
        modules = dict(model.named_modules())
        fused = fused_parts(model)
        self._stacks: dict[str, tuple[torch.Tensor, torch.Tensor, list[tuple[Path, int]]]] = {}
        by_module: dict[str, list[tuple[Path, LoraDelta, int | None]]] = {}
        for lora in loras:
            for name, delta in lora.deltas.items():
                target, first, rows = fused.get(name, (name, 0, None))
                by_module.setdefault(target, []).append((lora.path, delta, first if rows is not None else None))
        self._handles = []
        self._scale_vectors: dict[str, tuple[tuple[float, ...], torch.Tensor]] = {}
        for module, pairs in by_module.items():
            down = torch.cat([d.down for _, d, _ in pairs]).to(device=device, dtype=dtype)
            up = torch.cat([_rows_of(d.up, first, modules[module].out_features) for _, d, first in pairs], dim=1)
            up = up.to(device=device, dtype=dtype)
            self._stacks[module] = (down, up, [(path, d.rank) for path, d, _ in pairs])
            self._handles.append(modules[module].register_forward_hook(self._hook(module)))

    def _rank_scales(self, module: str, like: torch.Tensor) -> torch.Tensor | None:
        """Each stacked rank's scale (None when every adapter is off), made once per set of
        scales: a stream's chunks reuse it instead of copying it to the device per forward."""
        _, _, ranks = self._stacks[module]
        values = tuple(self.scales.get(path, 0.0) for path, _ in ranks)
        if not any(values):
            return None
        cached = self._scale_vectors.get(module)
        if cached is None or cached[0] != values or cached[1].dtype != like.dtype:
            vector = torch.tensor([v for v, (_, r) in zip(values, ranks) for _ in range(r)], device=like.device, dtype=like.dtype)
            cached = self._scale_vectors[module] = (values, vector)
        return cached[1]

    def _hook(self, module: str):
        def add_delta(_layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
            scales = self._rank_scales(module, output)
            if scales is None:
                return None
            down, up, _ = self._stacks[module]
            x = inputs[0].to(down.dtype)
            return output + F.linear(F.linear(x, down) * scales, up).to(output.dtype)

        return add_delta

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _rows_of(up: torch.Tensor, first: int | None, rows: int) -> torch.Tensor:
    """``up`` as it acts on a fused projection: its rows placed from ``first``, zeros elsewhere
    (``first`` None: the linear is not fused, ``up`` as it is)."""
    if first is None:
        return up
    placed = up.new_zeros(rows, up.shape[1])
    placed[first : first + up.shape[0]] = up
    return placed
