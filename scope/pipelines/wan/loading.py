"""Reading generator checkpoints strictly: containers, key checks, the built-in LoRA, fp8 storage.

Upstream loads non-strictly, so a wrong file silently yields garbage. Here every mismatch is an
error that names the file and the offending keys, pickled code is never executed
(`weights_only=True`), and models are built on the meta device and filled with `assign=True`.

Generators load tensor by tensor (:func:`load_generator`): each weight is read from the
memory-mapped file, merged with its LoRA deltas, converted to the compute dtype on the compute
device and put in place before the next is read; each block is fused and quantised as soon as it
is complete. Host memory therefore stays near the model in its compute dtype plus one tensor
(nothing at all beyond one tensor when the model goes to a GPU), which is what lets Krea's 28 GB
14B file load on machines with less than twice that.
"""

from __future__ import annotations

import fnmatch
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import WanConfig
from .transformer import CausalWanTransformer

QUANTIZATIONS = (None, "fp8_e4m3fn")
_SHOW = 5  # keys named per category in an error message


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or does not have the expected container layout."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint's keys or shapes do not match the model it is loaded into."""


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Load a `.safetensors` or torch `.pt/.pth/.bin/.ckpt` file onto the CPU, tensors only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            # mmap needs the zip container of modern torch.save; legacy files are read whole.
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except pickle.UnpicklingError as exc:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            detail = f" (it references {found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: refusing to load: the file needs pickled code beyond tensors and plain "
                f"containers{detail}; such code is never executed"
            ) from exc
        except (RuntimeError, EOFError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    raise CheckpointError(f"{path}: unsupported checkpoint format {suffix!r} (.safetensors, .pt, .pth)")


def require_tensors(state: Mapping[str, Any], file: str | Path, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{file}: expected a dict of tensors for the {what}, got {type(state).__name__}")
    bad = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{file}: {what} entry {bad[0]!r} is a {type(state[bad[0]]).__name__}, not a tensor")
    return dict(state)


def unpack_generator(state: Mapping[str, Any], file: str | Path, key: str | None = "generator") -> dict[str, torch.Tensor]:
    """Take `state[key]` when present, then strip a leading `model.` if every key has it."""
    if key is not None and isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
        state = state[key]
    tensors = require_tensors(state, file, "generator")
    if not tensors:
        raise CheckpointError(f"{file}: the generator state dict is empty")
    if all(name.startswith("model.") for name in tensors):
        tensors = {name[len("model.") :]: value for name, value in tensors.items()}
    return tensors


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def _first(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOW else "")


def check_shapes(
    module: nn.Module,
    shapes: Mapping[str, tuple[int, ...]],
    file: str | Path,
    allow_missing: Iterable[str] = (),
    allow_unexpected: Iterable[str] = (),
) -> None:
    """Fail naming the file and keys unless `shapes` (a file's keys) match `module`'s state dict.

    `allow_missing` / `allow_unexpected` are glob patterns for keys that may legitimately be
    absent from the file or present only in it (e.g. `vace_blocks.*`).
    """
    allow_missing, allow_unexpected = tuple(allow_missing), tuple(allow_unexpected)
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    missing = [k for k in expected if k not in shapes and not _matches(k, allow_missing)]
    unexpected = [k for k in shapes if k not in expected and not _matches(k, allow_unexpected)]
    wrong = [
        f"{k}: file {list(shapes[k])} vs model {list(expected[k])}"
        for k in shapes
        if k in expected and tuple(shapes[k]) != expected[k]
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_first(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es): " + "; ".join(wrong[:_SHOW]))
        raise CheckpointMismatch(f"{file}: checkpoint does not match {type(module).__name__}: " + "; ".join(parts))


def load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    file: str | Path,
    allow_missing: Iterable[str] = (),
    allow_unexpected: Iterable[str] = (),
) -> None:
    """Load `state` into `module` with `assign=True`, failing on any key or shape mismatch
    (see :func:`check_shapes`)."""
    check_shapes(module, {k: tuple(v.shape) for k, v in state.items()}, file, allow_missing, allow_unexpected)
    expected = module.state_dict()
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False, assign=True)


class CheckpointTensors:
    """A generator checkpoint's tensors, read one at a time.

    Safetensors files are memory-mapped; torch zip files are opened with torch's mmap. Keys come
    without their container (`generator`) and `model.` prefix, as :func:`unpack_generator` gives them.
    """

    def __init__(self, path: str | Path):
        self.path = path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            try:
                self._file = safe_open(str(path), framework="pt", device="cpu")
                raw = {key: tuple(self._file.get_slice(key).get_shape()) for key in self._file.keys()}
            except Exception as exc:
                raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
            if not raw:
                raise CheckpointError(f"{path}: the generator state dict is empty")
            prefix = "model." if all(key.startswith("model.") for key in raw) else ""
            self._keys = {key[len(prefix) :]: key for key in raw}
            self.shapes = {key[len(prefix) :]: shape for key, shape in raw.items()}
            self._state = None
        else:
            self._file = None
            self._state = unpack_generator(read_state_dict(path), path)
            self.shapes = {key: tuple(value.shape) for key, value in self._state.items()}

    def get(self, key: str) -> torch.Tensor:
        """The tensor under `key`, still in the file's dtype and (where mapped) in the file's pages."""
        if self._state is not None:
            return self._state[key]
        return self._file.get_tensor(self._keys[key])

    def close(self) -> None:
        self._file = self._state = None


# PEFT `get_peft_model_state_dict` keys, optionally with the adapter name kept.
_PEFT_KEY = re.compile(
    r"^base_model\.model\.(?P<module>blocks\.(?P<block>\d+)\.(?:(?:self_attn|cross_attn)\.[qkvo]|ffn\.[02]))"
    r"\.lora_(?P<part>[AB])(?:\.[A-Za-z0-9_\-]+)?\.weight$"
)


def lora_target_names(config: WanConfig) -> list[str]:
    """The 10 linears per block that LongLive's built-in adapter targets."""
    names = []
    for i in range(config.num_layers):
        names += [f"blocks.{i}.{attn}.{p}" for attn in ("self_attn", "cross_attn") for p in "qkvo"]
        names += [f"blocks.{i}.ffn.0", f"blocks.{i}.ffn.2"]
    return names


def parse_peft_lora(
    state: Mapping[str, Any], file: str | Path, config: WanConfig
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{module: (A [r, in], B [out, r])}` for every targeted linear, strictly checked."""
    if isinstance(state, Mapping) and isinstance(state.get("generator_lora"), Mapping):
        state = state["generator_lora"]
    tensors = require_tensors(state, file, "LoRA")
    targets = set(lora_target_names(config))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = _PEFT_KEY.match(key)
        if match is None or match["module"] not in targets:
            raise CheckpointMismatch(f"{file}: unexpected LoRA key {key!r}")
        slot = parts.setdefault(match["module"], {})
        if match["part"] in slot:
            raise CheckpointMismatch(f"{file}: duplicate LoRA key for {match['module']} lora_{match['part']} ({key!r})")
        slot[match["part"]] = value
    missing = [
        f"{name}.lora_{p}.weight" for name in lora_target_names(config) for p in "AB" if p not in parts.get(name, {})
    ]
    if missing:
        raise CheckpointMismatch(f"{file}: {len(missing)} missing LoRA key(s): {_first(missing)}")
    return {name: (ab["A"], ab["B"]) for name, ab in parts.items()}


FP8_MAX = 448.0  # largest finite float8_e4m3fn value


class Fp8Linear(nn.Module):
    """A Linear whose weight is stored as float8_e4m3fn with a per-tensor scale.

    The weight is upcast to the input dtype on each call, so it runs on any device. The scale
    is not saved: `state_dict()` yields the dequantized weight under the usual `weight` key, and
    loading a plain weight quantizes it again, so checkpoints keep the original layout.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=torch.float32):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(
            torch.zeros(out_features, in_features, device=device, dtype=torch.float8_e4m3fn), requires_grad=False
        )
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype), requires_grad=False) if bias else None
        self.register_buffer("scale", torch.ones((), device=device, dtype=torch.float32), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Fp8Linear:
        weight = linear.weight.detach()
        out = cls(linear.in_features, linear.out_features, linear.bias is not None, weight.device, weight.dtype)
        out.set_weight(weight)
        if linear.bias is not None:
            out.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return out

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        w = weight.to(torch.float32)
        scale = (w.abs().amax() / FP8_MAX).clamp(min=1e-12)
        self.weight = nn.Parameter((w / scale).to(torch.float8_e4m3fn), requires_grad=False)
        self.scale = scale.to(device=w.device)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype) * self.scale.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized(x.dtype), bias)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        dtype = self.bias.dtype if self.bias is not None else torch.float32
        destination[prefix + "weight"] = self.dequantized(dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + "weight"
        weight = state_dict.get(key)
        if weight is not None:
            if tuple(weight.shape) != tuple(self.weight.shape):
                error_msgs.append(f"size mismatch for {key}: {list(weight.shape)} vs {list(self.weight.shape)}")
            else:
                self.set_weight(weight.to(self.weight.device))
            state_dict = {k: v for k, v in state_dict.items() if k != key}
        before = len(missing_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if weight is not None and key in missing_keys[before:]:
            missing_keys.remove(key)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8_e4m3fn"


def quantize_block(block: nn.Module) -> int:
    """Replace every Linear inside `block` with an `Fp8Linear`; returns how many."""
    count = 0
    for _, child in list(block.named_modules()):
        for child_name, leaf in list(child.named_children()):
            if isinstance(leaf, nn.Linear):
                setattr(child, child_name, Fp8Linear.from_linear(leaf))
                count += 1
    return count


def quantize_fp8(model: CausalWanTransformer) -> int:
    """Replace every Linear inside the transformer blocks (VACE's too) with an `Fp8Linear`; returns how many."""
    blocks = list(model.blocks) + (list(model.vace.vace_blocks) if model.vace is not None else [])
    return sum(quantize_block(block) for block in blocks)


def check_quantization(quantization: str | None) -> None:
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unsupported quantization {quantization!r}; expected one of {QUANTIZATIONS}")


def load_generator(
    config_path: str | Path,
    generator_path: str | Path,
    *,
    lora_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    quantization: str | None = None,
    lora_scaling: float = 1.0,
    merged_loras: Iterable[tuple[str | Path, float]] = (),
    vace_path: str | Path | None = None,
    fuse_qkv: bool = False,
) -> CausalWanTransformer:
    """Build the generator of a Wan checkpoint tensor by tensor; merge LoRAs, cast, fuse, quantize.

    `generator_path` holds `{"generator": {"model.<wan key>": ...}}`, a flat dict, or a flat
    safetensors file (Krea's). `lora_path` is a PEFT adapter (rank 256 / alpha 256 upstream,
    hence `lora_scaling` 1.0); `merged_loras` are user LoRA files `(path, scale)` merged after
    it. Each weight is merged in float32, cast to `dtype` on `device`, and rounded once; each
    block then has its q/k/v fused (`fuse_qkv`) and its linears stored in fp8 (`quantization`),
    so user LoRAs on q/k/v reach the fused projection. `vace_path` adds VACE's hint layers;
    LoRAs apply to the base blocks only.
    """
    check_quantization(quantization)
    config = WanConfig.from_json(config_path)
    with torch.device("meta"):
        model = CausalWanTransformer(config)
    tensors = CheckpointTensors(generator_path)
    check_shapes(model, tensors.shapes, generator_path)
    deltas = _lora_deltas(model, lora_path, lora_scaling, merged_loras)
    fused = _FusedSlots(device, dtype) if fuse_qkv else None
    names = list(model.state_dict())
    for position, name in enumerate(names):
        module_name, _, attr = name.rpartition(".")
        shape = tensors.shapes[name]
        slot = fused.slot(module_name, attr, shape) if fused is not None else None
        destination = slot if slot is not None else torch.empty(shape, device=device, dtype=dtype)
        _fill(destination, tensors.get(name), deltas.pop(module_name, ()) if attr == "weight" else ())
        if slot is None:
            model.get_submodule(module_name)._parameters[attr] = nn.Parameter(destination, requires_grad=False)
        block = _block_index(name)
        if block is not None and _block_index(names[position + 1] if position + 1 < len(names) else "") != block:
            if fused is not None:
                model.blocks[block].self_attn.fuse_projections(*fused.take(f"blocks.{block}.self_attn"))
            if quantization == "fp8_e4m3fn":
                quantize_block(model.blocks[block])
    tensors.close()
    if vace_path is not None:
        from .vace import load_vace_layers

        load_vace_layers(model, vace_path)
        model.vace.to(device=device, dtype=dtype)
        if quantization == "fp8_e4m3fn":
            for vace_block in model.vace.vace_blocks:
                quantize_block(vace_block)
    model.rebuild_buffers(device)
    model.eval().requires_grad_(False)
    return model


_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _block_index(name: str) -> int | None:
    match = _BLOCK.match(name)
    return int(match.group(1)) if match else None


class _FusedSlots:
    """Where a self-attention's q/k/v weights land when they are fused at load: rows of one
    weight and one bias allocated up front, so fusing copies nothing and frees nothing.
    Quantisation follows the fusion, so the fused projection gets one fp8 scale, as the
    reference quantises after fusing."""

    _PARTS = {"q": 0, "k": 1, "v": 2}

    def __init__(self, device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self._slots: dict[str, dict[str, torch.Tensor]] = {}

    def slot(self, module_name: str, attr: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        """The rows of the fused tensor for `<attention>.<q|k|v>.<attr>` (None for any other name)."""
        attention, _, part = module_name.rpartition(".")
        if not attention.endswith(".self_attn") or part not in self._PARTS:
            return None
        rows = shape[0]
        tensors = self._slots.setdefault(attention, {})
        if attr not in tensors:
            tensors[attr] = torch.empty((3 * rows, *shape[1:]), device=self.device, dtype=self.dtype)
        first = self._PARTS[part] * rows
        return tensors[attr][first : first + rows]

    def take(self, attention: str) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = self._slots.pop(attention)
        return tensors["weight"], tensors["bias"]


def _lora_deltas(
    model: CausalWanTransformer,
    lora_path: str | Path | None,
    lora_scaling: float,
    merged_loras: Iterable[tuple[str | Path, float]],
) -> dict[str, list[tuple[float, torch.Tensor, torch.Tensor]]]:
    """`{linear: [(scale, up, down), ...]}`: the built-in adapter first, then each user LoRA in order."""
    deltas: dict[str, list[tuple[float, torch.Tensor, torch.Tensor]]] = {}
    if lora_path is not None:
        for name, (a, b) in parse_peft_lora(read_state_dict(lora_path), lora_path, model.config).items():
            out_features, in_features = model.get_submodule(name).weight.shape
            if a.ndim != 2 or b.ndim != 2 or a.shape[1] != in_features or b.shape[0] != out_features or a.shape[0] != b.shape[1]:
                raise CheckpointMismatch(
                    f"{lora_path}: LoRA for {name} has A {list(a.shape)} and B {list(b.shape)}, "
                    f"which do not fit a [{out_features}, {in_features}] weight"
                )
            deltas.setdefault(name, []).append((lora_scaling, b, a))
    merged_loras = list(merged_loras)
    if merged_loras:
        from .lora import read_lora

        for path, scale in merged_loras:
            for name, delta in read_lora(path, model).deltas.items():
                deltas.setdefault(name, []).append((scale, delta.up, delta.down))
    return deltas


def _fill(
    destination: torch.Tensor, stored: torch.Tensor, deltas: Iterable[tuple[float, torch.Tensor, torch.Tensor]]
) -> None:
    """Write one tensor into its place on the compute device, converting on the way; a weight's
    LoRA deltas are added in float32 first, so it is rounded to the compute dtype once.

    Without deltas nothing is allocated beyond the destination: the copy reads the file's pages."""
    deltas = list(deltas)
    if not deltas:
        destination.copy_(stored)
        return
    value = stored.to(device=destination.device, dtype=torch.float32)
    for scale, up, down in deltas:
        update = up.to(device=value.device, dtype=torch.float32) @ down.to(device=value.device, dtype=torch.float32)
        value = value + scale * update
    destination.copy_(value)
