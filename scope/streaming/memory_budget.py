"""How much memory a pipeline will take, and how much the device has for pipelines.

The pool loads several pipelines side by side within a budget per device. Before a load it
estimates what the pipeline needs from the files it reads, each grown or shrunk to the dtype its
tensors end up in (the compute dtype, or one byte per weight with fp8), plus the caches one
stream of the pipeline keeps; after the load it measures what the load actually took and keeps
the ratio per pipeline, so the next estimate of that pipeline is corrected. No size is written
down anywhere: synthetic and real files differ by a thousandfold and both must be right.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: Bytes per element of the dtypes safetensors files store.
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "U8": 1}
#: What the budget leaves to everything else: the interpreter, the server, activations.
DEFAULT_HEADROOM = 0.2


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a checkpoint, as its file describes it."""

    name: str
    elements: int
    dims: int
    stored_bytes: int


def checkpoint_tensors(path: Path, entry: str | None = None) -> list[StoredTensor]:
    """The tensors a checkpoint holds, read without loading them.

    Safetensors files are read from their JSON header; torch files are opened on the meta device
    (memory-mapped: their payload is not read). ``entry`` names the top-level entry a loader reads
    from a nested torch file (``"generator"``); files without it count whole. A folder counts its
    files."""
    path = Path(path)
    if path.is_dir():
        return [t for child in sorted(path.rglob("*")) if child.is_file() for t in checkpoint_tensors(child, entry)]
    if path.suffix.lower() == ".safetensors":
        with open(path, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
        tensors = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            elements = math.prod(info["shape"])
            tensors.append(StoredTensor(name, elements, len(info["shape"]), elements * _SAFETENSORS_BYTES.get(info["dtype"], 4)))
        return tensors
    if path.suffix.lower() not in (".pt", ".pth", ".bin", ".ckpt"):
        return []  # tokenizer and config files hold no tensors
    state = torch.load(path, map_location="meta", weights_only=True, mmap=zipfile.is_zipfile(path))
    if entry is not None and isinstance(state, dict) and isinstance(state.get(entry), dict):
        state = state[entry]
    return [
        StoredTensor(name, tensor.numel(), tensor.dim(), tensor.numel() * tensor.element_size())
        for name, tensor in _flat_tensors(state)
    ]


def _flat_tensors(value: Any, name: str = "") -> list[tuple[str, torch.Tensor]]:
    """The tensors of a nested state dict, with dotted names."""
    if isinstance(value, torch.Tensor):
        return [(name, value)]
    if isinstance(value, dict):
        return [item for key, child in value.items() for item in _flat_tensors(child, f"{name}.{key}" if name else str(key))]
    return []


@dataclass(frozen=True)
class FileWeights:
    """The payload of a checkpoint: elements and bytes as stored."""

    elements: int
    stored_bytes: int


def file_weights(path: Path, entry: str | None = None) -> FileWeights:
    """Elements and stored bytes of a checkpoint (see :func:`checkpoint_tensors`)."""
    tensors = checkpoint_tensors(path, entry)
    return FileWeights(sum(t.elements for t in tensors), sum(t.stored_bytes for t in tensors))


def loaded_bytes(
    paths: list[Path],
    dtype: torch.dtype,
    *,
    entry: str | None = None,
    one_byte: Callable[[StoredTensor], bool] | None = None,
) -> int:
    """What ``paths`` take once loaded with every tensor in ``dtype``, or in one byte where
    ``one_byte`` says so (fp8 weights)."""
    item = torch.finfo(dtype).bits // 8
    return sum(
        t.elements * (1 if one_byte is not None and one_byte(t) else item)
        for path in paths
        if path is not None and path.exists()
        for t in checkpoint_tensors(path, entry)
    )


def device_budget(device: torch.device, configured_bytes: int, pool_bytes: int, headroom: float = DEFAULT_HEADROOM) -> int:
    """Bytes the pool may fill on ``device``: the setting when it is not 0; else what the pool
    holds plus what the device has free now, less ``headroom`` of that for everything else."""
    if configured_bytes:
        return configured_bytes
    return budget_from_free(free_device_bytes(device), pool_bytes, headroom)


def budget_from_free(free_bytes: int, pool_bytes: int, headroom: float = DEFAULT_HEADROOM) -> int:
    """The budget when the device has ``free_bytes`` free (read where the device is: a Ray
    worker's is read in its actor)."""
    return int((pool_bytes + free_bytes) * (1 - headroom))


def free_device_bytes(device: torch.device) -> int:
    """What ``device`` has free now: the GPU's memory, or the host's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return available_host_bytes()


def budget_device() -> torch.device:
    """The device whose memory the pool budgets: the GPU when there is one, else the host."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def available_host_bytes() -> int:
    """``MemAvailable`` (what the kernel can hand out without swapping)."""
    return proc_bytes("/proc/meminfo", "MemAvailable")


def proc_bytes(path: str, field: str) -> int:
    """A ``field:  N kB`` line of a Linux /proc file, in bytes."""
    with open(path) as lines:
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} is not in {path} (Linux only)")


def held_bytes(obj: Any, *, exclude: Any = None, device: str | None = None, depth: int = 8) -> int:
    """Bytes of the tensors ``obj`` holds, each storage once, less those ``exclude`` holds; only
    those on ``device`` (a device type: ``"cuda"``, ``"cpu"``) when given, as budgets are per device.

    The tensors are found through modules (their parameters and buffers), attributes (slotted
    ones too), dicts and sequences, ``depth`` levels down. This is what a load or a stream
    took, measured on the objects themselves rather than on the process, whose allocator may
    reuse memory an unloaded pipeline gave back."""
    storages = tensor_storages(obj, depth)
    if exclude is not None:
        for key in tensor_storages(exclude, depth):
            storages.pop(key, None)
    return sum(size for (where, _), size in storages.items() if device is None or torch.device(where).type == device)


def tensor_storages(obj: Any, depth: int = 8) -> dict[tuple[str, int], int]:
    """(device, address) -> bytes of every tensor storage reachable from ``obj``."""
    storages: dict[tuple[str, int], int] = {}
    seen: set[int] = set()

    def add(tensor: torch.Tensor) -> None:
        if tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        storages[(str(tensor.device), storage.data_ptr())] = storage.nbytes()

    def visit(value: Any, level: int) -> None:
        if level < 0 or id(value) in seen or isinstance(value, (str, bytes, int, float, bool, type)) or value is None:
            return
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            add(value)
            return
        if isinstance(value, torch.nn.Module):
            for tensor in (*value.parameters(), *value.buffers()):
                add(tensor)
            children = [v for v in vars(value).values() if not isinstance(v, (dict, torch.nn.Module))]
        elif isinstance(value, dict):
            children = list(value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            children = list(value)
        else:
            children = list(getattr(value, "__dict__", {}).values())
            for cls in type(value).__mro__:
                slots = getattr(cls, "__slots__", ())
                for name in (slots,) if isinstance(slots, str) else slots:
                    if hasattr(value, name):
                        children.append(getattr(value, name))
        for child in children:
            visit(child, level - 1)

    visit(obj, depth)
    return storages
