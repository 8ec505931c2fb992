"""What a LoRA file in the LoRA directory is, read from its keys and shapes only (no tensor is loaded).

Listing must stay cheap for files of a gigabyte: a safetensors file is described from its JSON
header, a torch file from a memory-mapped, ``weights_only`` load. The key conventions are the
loader's (``scope.pipelines.wan.lora``); module names are checked against the Wan generator's
layout, whatever its size, so a LoRA for another model is reported as such. The sha256 of each
file is computed once per (path, mtime, size), streamed.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from scope.pipelines.wan.lora import parse_lora_key

#: File types a LoRA may come in (safetensors preferred; torch files load with ``weights_only``).
LORA_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
#: A safetensors header larger than this is refused (real LoRA headers are well under 1 MiB).
MAX_HEADER_BYTES = 64 * 1024 * 1024
#: How many module names an entry shows as examples.
EXAMPLE_TARGETS = 3
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_KOHYA_BLOCK = re.compile(r"^blocks_(\d+)_(.+)$")


class NotALora(ValueError):
    """The file cannot be read as a Wan LoRA; the message says why, naming the first bad key."""


@cache
def _wan_linears() -> tuple[frozenset[str], frozenset[str]]:
    """(linears inside a block, relative to ``blocks.N.``; linears outside the blocks) of the Wan
    generator, from the original module tree the synthetic writer spells out."""
    from scope.models.synthetic.generator import generator_shapes
    from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG

    linears = [key[: -len(".weight")] for key, shape in generator_shapes(SYNTHETIC_WAN_CONFIG).items()
               if key.endswith(".weight") and len(shape) == 2]
    in_block = frozenset(m[2] for name in linears if (m := _BLOCK.match(name)))
    return in_block, frozenset(name for name in linears if not _BLOCK.match(name))


def is_wan_linear(module: str) -> bool:
    in_block, top = _wan_linears()
    match = _BLOCK.match(module)
    return match[2] in in_block if match else module in top


class _KohyaNames:
    """``flat -> module`` for kohya names of any block index (the loader takes a mapping's ``get``)."""

    def get(self, flat: str, default: str) -> str:
        in_block, top = _wan_linears()
        match = _KOHYA_BLOCK.match(flat)
        if match:
            for name in in_block:
                if name.replace(".", "_") == match[2]:
                    return f"blocks.{match[1]}.{name}"
        for name in top:
            if name.replace(".", "_") == flat:
                return name
        return default


def module_kind(module: str) -> str:
    """``blocks.7.self_attn.q`` -> ``self_attn.q``; a module outside the blocks is its own kind."""
    match = _BLOCK.match(module)
    return match[2] if match else module


@dataclass(frozen=True)
class LoraSummary:
    """A LoRA file's format, rank and targets, or why it is not one."""

    format: str | None = None
    rank: int | None = None
    targets: tuple[str, ...] = ()
    error: str | None = None

    @property
    def kinds(self) -> list[str]:
        return sorted({module_kind(m) for m in self.targets})


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, without reading the tensors' data into memory."""
    if path.suffix.lower() == ".safetensors":
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise NotALora("not a safetensors file (shorter than its header length)")
            size = int.from_bytes(head, "little")
            if size > MAX_HEADER_BYTES:
                raise NotALora(f"not a safetensors file (a header of {size} bytes)")
            try:
                header = json.loads(handle.read(size))
                return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise NotALora(f"not a safetensors file (its header does not parse: {exc})") from None
    import torch

    from scope.pipelines.wan.loading import read_state_dict

    state = read_state_dict(path)
    if not isinstance(state, dict):
        raise NotALora(f"expected a dict of tensors, got {type(state).__name__}")
    bad = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise NotALora(f"entry {bad[0]!r} is a {type(state[bad[0]]).__name__}, not a tensor")
    return {key: tuple(value.shape) for key, value in state.items()}


def summarize_shapes(shapes: dict[str, tuple[int, ...]]) -> LoraSummary:
    """Format, rank and target modules from keys and shapes, by the loader's key conventions."""
    if not shapes:
        raise NotALora("the file holds no tensors")
    kohya = _KohyaNames()
    formats: set[str] = set()
    roles: dict[str, dict[str, tuple[int, ...]]] = {}
    first_key: dict[str, str] = {}
    for key in sorted(shapes):
        parsed = parse_lora_key(key, kohya)
        if parsed is None:
            raise NotALora(f"{key!r} is not a LoRA key (lora_A/lora_B, lora_down/lora_up or alpha)")
        module = parsed.module
        if not is_wan_linear(module):
            raise NotALora(f"{key!r} names no linear module of the Wan generator ({module!r})")
        if parsed.role != "alpha":
            formats.add(parsed.format)
        roles.setdefault(module, {})[parsed.role] = shapes[key]
        first_key.setdefault(module, key)
    ranks = []
    for module, found in roles.items():
        if "down" not in found or "up" not in found:
            missing = "down (lora_A)" if "down" not in found else "up (lora_B)"
            raise NotALora(f"{first_key[module]!r}: the {missing} weight of {module} is missing")
        down, up = found["down"], found["up"]
        if len(down) != 2 or len(up) != 2 or down[0] != up[1]:
            raise NotALora(f"{first_key[module]!r}: down {list(down)} and up {list(up)} are not a rank-r pair")
        ranks.append(down[0])
    return LoraSummary(format="+".join(sorted(formats)), rank=max(ranks), targets=tuple(sorted(roles, key=_module_order)))


def _module_order(module: str) -> tuple:
    match = _BLOCK.match(module)
    return (0, int(match[1]), match[2]) if match else (1, 0, module)


def summarize_lora(path: str | Path) -> LoraSummary:
    """A file's summary; a file that is not a Wan LoRA gets one with ``error`` set (never raises
    for a bad file, so one bad file never hides the others from a listing)."""
    try:
        return summarize_shapes(tensor_shapes(Path(path)))
    except NotALora as exc:
        return LoraSummary(error=str(exc))
    except Exception as exc:  # unreadable torch files, I/O errors
        return LoraSummary(error=str(exc) or exc.__class__.__name__)


def file_sha256(path: str | Path) -> str:
    """The file's sha256, streamed (never read whole)."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@dataclass
class LoraFileCache:
    """sha256 and summary per file, computed once per (path, mtime, size)."""

    _entries: dict[str, tuple[tuple[int, int], str, LoraSummary]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Files hashed so far (a listing of unchanged files hashes none).
    hashed: int = 0

    def describe(self, path: Path) -> tuple[int, str, LoraSummary]:
        """``(size, sha256, summary)`` of ``path`` (raises ``OSError`` if it is gone)."""
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        key = str(path)
        with self._lock:
            cached = self._entries.get(key)
        if cached is not None and cached[0] == stamp:
            return stat.st_size, cached[1], cached[2]
        digest, summary = file_sha256(path), summarize_lora(path)
        with self._lock:
            self._entries[key] = (stamp, digest, summary)
            self.hashed += 1
        return stat.st_size, digest, summary

    def forget(self, path: Path) -> None:
        with self._lock:
            self._entries.pop(str(path), None)
