"""What produced a render's or a recording's frames, written next to them as ``provenance.json``.

A timeline says what was asked for; provenance says what answered: the pipeline and its load,
the seeds, every weight file by content hash (synthetic or real), the package and its commit,
torch, the device and dtype, and how long the steps took. Two renders whose provenance agrees
ran the same code on the same weights.
"""

from __future__ import annotations

import hashlib
import platform
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

import scope
from scope import build_info
from scope.models.artifacts import local_path
from scope.models.synthetic.writer import entry_files, is_synthetic_file
from scope.pipelines.base import LoadContext

FORMAT = "scope-provenance/1"
#: The distribution name (``pyproject.toml``'s ``[project] name``).
PACKAGE_NAME = "daydream-scope"
#: Read size when hashing: large enough that a multi-GB checkpoint streams at disk speed.
BLOCK_BYTES = 8 * 1024 * 1024


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of ``path``'s bytes, read in :data:`BLOCK_BYTES` blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


class FileDigests:
    """sha256 of weight files, computed once per (path, size, mtime_ns): a multi-GB checkpoint
    is hashed once per server, not once per recording.

    Thread-safe: each path has its own lock, so two recordings asking for the same checkpoint
    hash it once, while different files hash in parallel.
    """

    def __init__(self) -> None:
        self._known: dict[Path, tuple[int, int, str]] = {}
        self._locks: dict[Path, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def _lock(self, path: Path) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(path, threading.Lock())

    def sha256(self, path: Path) -> str:
        """The digest of ``path`` as it is now; hashed again only when its size or mtime changed."""
        path = Path(path).resolve()
        with self._lock(path):
            before = path.stat()
            known = self._known.get(path)
            if known is not None and known[:2] == (before.st_size, before.st_mtime_ns):
                return known[2]
            digest = file_sha256(path)
            after = path.stat()
            # A file rewritten while it was read gets no cache entry: the digest may mix both.
            if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
                self._known[path] = (before.st_size, before.st_mtime_ns, digest)
            return digest


def weight_files(pipeline_class, load_params: BaseModel, context: LoadContext) -> list[Path]:
    """Every file a load of this pipeline reads, once each, that exists: each entry of the
    pipeline's artifacts (a directory's files) and the load's user LoRAs."""
    found: list[Path] = []
    for artifact in pipeline_class.artifacts:
        for entry in artifact.files:
            found.extend(entry_files(local_path(context.models_dir, artifact, entry)))
    if getattr(load_params, "loras", None):
        from scope.pipelines.wan.causal_pipeline import user_loras

        found.extend(lora.path for lora in user_loras(load_params, context.lora_dir) if lora.path.is_file())
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def seeds_of(load_params: BaseModel) -> dict[str, int]:
    """The seeds a load fixes: every field named ``seed`` or ``*_seed``."""
    seeds = {}
    for name in type(load_params).model_fields:
        value = getattr(load_params, name)
        if (name == "seed" or name.endswith("_seed")) and isinstance(value, int) and not isinstance(value, bool):
            seeds[name] = value
    return seeds


def run_environment(device: str | None = None) -> dict[str, Any]:
    """Where and how the pipelines compute here, as a timeline records it and a render checks it.

    ``device`` names the device a pipeline was given, when not the one the Wan pipelines pick;
    such a device computes in float32 (bfloat16 is the picked CUDA device's dtype).
    """
    from scope.pipelines.wan.device import compute_device

    chosen, dtype = compute_device()
    if device is not None and torch.device(device).type != chosen.type:
        dtype = torch.float32
    return {
        "device": str(chosen) if device is None else device,
        "dtype": dtype_name(dtype),
        "torch_threads": torch.get_num_threads(),
    }


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def device_name(device: str) -> str:
    """The hardware behind ``device``: the GPU's name, else the processor's."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or "cpu"


def _display_path(path: Path, context: LoadContext) -> str:
    """``path`` relative to the models or LoRA directory, so provenance from two machines compares."""
    for base in (context.models_dir, context.lora_dir):
        for candidate, root in ((path, Path(base)), (path.resolve(), Path(base).resolve())):
            if candidate.is_relative_to(root):
                return candidate.relative_to(root).as_posix()
    return path.resolve().as_posix()


def provenance(
    *,
    pipeline_class,
    load_params: BaseModel,
    context: LoadContext,
    initial_parameters: dict,
    seeds: dict[str, int],
    device: str,
    dtype: str,
    torch_threads: int,
    timings: dict[str, float],
    digests: FileDigests,
) -> dict[str, Any]:
    """The provenance document (JSON-safe, in a stable key order)."""
    weights = [
        {
            "path": _display_path(path, context),
            "bytes": path.stat().st_size,
            "sha256": digests.sha256(path),
            "synthetic": is_synthetic_file(path),
        }
        for path in weight_files(pipeline_class, load_params, context)
    ]
    return {
        "format": FORMAT,
        "pipeline_id": pipeline_class.info.id,
        "load_params": load_params.model_dump(mode="json"),
        "initial_parameters": dict(initial_parameters),
        "seeds": {name: int(value) for name, value in seeds.items()},
        "weights": weights,
        "package": {"name": PACKAGE_NAME, "version": scope.__version__, "commit": build_info.commit()},
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "device_name": device_name(device),
        "dtype": dtype,
        "torch_threads": int(torch_threads),
        "timings": {name: float(seconds) for name, seconds in timings.items()},
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
