"""Write a pipeline's synthetic weights into the models directory, and recognise them later.

Every entry of the pipeline's artifact list is written under its real name, in its real
container and key layout, with tiny shapes; the normal loaders read them like real files.
Each written file gets a sidecar marker ``<name>.synthetic.json`` recording its size, which is
how the status endpoints and the pipelines tell synthetic weights from real ones. A real
download removes the marker when it replaces the file; a marker whose size no longer matches
its file is ignored. Files already present and not synthetic are never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from scope.models.artifacts import (
    INCOMPLETE_SUFFIX,
    KREA_GENERATOR,
    LIGHTTAE,
    LIGHTVAE,
    LONGLIVE_GENERATOR,
    MEMFLOW_GENERATOR,
    REWARD_FORCING_GENERATOR,
    STREAMDIFFUSIONV2_GENERATOR,
    TAE,
    UMT5_ENCODER,
    VACE,
    WAN_1_3B,
    WAN_14B_CONFIG,
    Artifact,
    local_path,
)

logger = logging.getLogger(__name__)

MARKER_SUFFIX = ".synthetic.json"
DEFAULT_SEED = 0
#: Pipelines share files (the Wan2.1 ones): one writer at a time in this process.
_WRITE_LOCK = threading.Lock()

Writer = Callable[[Path, int], None]


# Writers, one per artifact entry ---------------------------------------------------------


def _wan_config(path: Path, seed: int) -> None:
    from scope.models.synthetic.generator import write_wan_config
    from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG

    write_wan_config(path, SYNTHETIC_WAN_CONFIG)


def _wan_14b_config(path: Path, seed: int) -> None:
    from scope.models.synthetic.generator import write_wan_config
    from scope.pipelines.wan.config import SYNTHETIC_WAN_14B_CONFIG

    write_wan_config(path, SYNTHETIC_WAN_14B_CONFIG)


def _krea_generator(path: Path, seed: int) -> None:
    """Krea's file: flat safetensors, ``model.``-prefixed keys, bf16, the 14B stand-in's shapes."""
    from scope.models.synthetic.generator import write_flat_safetensors_generator
    from scope.pipelines.wan.config import SYNTHETIC_WAN_14B_CONFIG

    write_flat_safetensors_generator(path, SYNTHETIC_WAN_14B_CONFIG, seed)


def _wan_vae(path: Path, seed: int) -> None:
    from scope.models.synthetic.vae import write_wan_vae

    write_wan_vae(path, seed)


def _lightvae(path: Path, seed: int) -> None:
    from scope.models.synthetic.vae import write_lightvae

    write_lightvae(path, seed)


def _tae(path: Path, seed: int) -> None:
    from scope.models.synthetic.vae import write_tae

    write_tae(path, seed)


def _lighttae(path: Path, seed: int) -> None:
    from scope.models.synthetic.vae import write_lighttae

    write_lighttae(path, seed)


def _tokenizer_folder(path: Path, seed: int) -> None:
    """``google/`` holds the tokenizer in ``google/umt5-xxl/``, as in the Wan repo."""
    from scope.models.synthetic.text import write_tokenizer

    write_tokenizer(path / "umt5-xxl", seed)


def _umt5(path: Path, seed: int) -> None:
    from scope.models.synthetic.text import write_umt5_encoder

    write_umt5_encoder(path, seed)


def _vace(path: Path, seed: int) -> None:
    from scope.models.synthetic.generator import write_vace_module
    from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG

    write_vace_module(path, SYNTHETIC_WAN_CONFIG, seed)


def _nested_generator(path: Path, seed: int) -> None:
    """LongLive's, MemFlow's and StreamDiffusionV2's container: the weights under ``generator``,
    ``model.`` prefixed."""
    from scope.models.synthetic.generator import write_generator
    from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG

    write_generator(path, SYNTHETIC_WAN_CONFIG, seed)


def _flat_generator(path: Path, seed: int) -> None:
    """Reward Forcing's file: the ``model.``-prefixed weights themselves, no ``generator`` entry."""
    from scope.models.synthetic.generator import write_generator
    from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG

    write_generator(path, SYNTHETIC_WAN_CONFIG, seed, under=None)


def _peft_lora(path: Path, seed: int) -> None:
    from scope.models.synthetic.generator import write_peft_lora
    from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG

    write_peft_lora(path, SYNTHETIC_WAN_CONFIG, seed)


def _flat_peft_lora(path: Path, seed: int) -> None:
    """MemFlow's adapter file: the PEFT state dict itself, not under ``generator_lora``."""
    from scope.models.synthetic.generator import write_peft_lora
    from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG

    write_peft_lora(path, SYNTHETIC_WAN_CONFIG, seed, nested=False)


WRITERS: dict[tuple[str, str], Writer] = {
    (WAN_1_3B.repo_id, "config.json"): _wan_config,
    (WAN_1_3B.repo_id, "Wan2.1_VAE.pth"): _wan_vae,
    (WAN_1_3B.repo_id, "google"): _tokenizer_folder,
    (UMT5_ENCODER.repo_id, UMT5_ENCODER.files[0]): _umt5,
    (VACE.repo_id, VACE.files[0]): _vace,
    (LIGHTVAE.repo_id, LIGHTVAE.files[0]): _lightvae,
    (TAE.repo_id, TAE.files[0]): _tae,
    (LIGHTTAE.repo_id, LIGHTTAE.files[0]): _lighttae,
    (LONGLIVE_GENERATOR.repo_id, "models/longlive_base.pt"): _nested_generator,
    (LONGLIVE_GENERATOR.repo_id, "models/lora.pt"): _peft_lora,
    (REWARD_FORCING_GENERATOR.repo_id, "rewardforcing.pt"): _flat_generator,
    (MEMFLOW_GENERATOR.repo_id, "base.pt"): _nested_generator,
    (MEMFLOW_GENERATOR.repo_id, "lora.pt"): _flat_peft_lora,
    (STREAMDIFFUSIONV2_GENERATOR.repo_id, STREAMDIFFUSIONV2_GENERATOR.files[0]): _nested_generator,
    (WAN_14B_CONFIG.repo_id, WAN_14B_CONFIG.files[0]): _wan_14b_config,
    (KREA_GENERATOR.repo_id, KREA_GENERATOR.files[0]): _krea_generator,
}


class NoSyntheticWriter(LookupError):
    """An artifact entry has no synthetic counterpart (yet)."""


def can_write(artifacts: Iterable[Artifact]) -> bool:
    """True when every entry of ``artifacts`` has a synthetic writer."""
    return all((a.repo_id, entry) in WRITERS for a in artifacts for entry in a.files)


# Markers ------------------------------------------------------------------------------------


def marker_path(path: Path) -> Path:
    return path.with_name(path.name + MARKER_SUFFIX)


def is_synthetic_file(path: Path) -> bool:
    """True when ``path`` is a file written by this module and not replaced since."""
    try:
        recorded = json.loads(marker_path(path).read_text())
        return bool(recorded.get("synthetic")) and recorded.get("size") == path.stat().st_size
    except (OSError, ValueError, AttributeError):
        return False


def clear_marker(path: Path) -> None:
    """Forget that ``path`` was synthetic (a real file took its place)."""
    try:
        marker_path(path).unlink()
    except FileNotFoundError:
        pass


def entry_files(path: Path) -> list[Path]:
    """The files an artifact entry stands for: the file itself, or a directory's files (sorted),
    without markers and unfinished downloads, which no loader reads."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(
            p for p in path.rglob("*")
            if p.is_file() and not p.name.endswith(MARKER_SUFFIX) and not p.name.endswith(INCOMPLETE_SUFFIX)
        )
    return []


def synthetic_entries(models_dir: Path, artifacts: Sequence[Artifact]) -> list[Path]:
    """The artifact entries on disk whose files are synthetic."""
    found = []
    for artifact in artifacts:
        for entry in artifact.files:
            path = local_path(models_dir, artifact, entry)
            files = entry_files(path)
            if files and any(is_synthetic_file(f) for f in files):
                found.append(path)
    return found


def uses_synthetic(models_dir: Path, artifacts: Sequence[Artifact]) -> bool:
    """True when any file a pipeline would load is synthetic."""
    return bool(synthetic_entries(models_dir, artifacts))


# Writing ------------------------------------------------------------------------------------


def _entry_seed(seed: int, repo_id: str, entry: str) -> int:
    """A per-file seed, stable across runs and machines."""
    return (seed * 1_000_003 + zlib.crc32(f"{repo_id}/{entry}".encode())) % (2**31)


def _is_real(path: Path) -> bool:
    files = entry_files(path)
    return bool(files) and not any(is_synthetic_file(f) for f in files)


def _write_marker(path: Path, seed: int) -> None:
    marker = {"synthetic": True, "seed": seed, "size": path.stat().st_size}
    marker_path(path).write_text(json.dumps(marker))


def _write_entry(dest: Path, writer: Writer, seed: int) -> None:
    """Write into a temporary name, then move into place, so no half-written file is seen."""
    partial = dest.with_name(dest.name + INCOMPLETE_SUFFIX)
    if partial.is_dir():
        shutil.rmtree(partial)
    elif partial.exists():
        partial.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer(partial, seed)
        if partial.is_dir():
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(partial, dest)
            for file in entry_files(dest):
                _write_marker(file, seed)
        else:
            os.replace(partial, dest)
            _write_marker(dest, seed)
    except BaseException:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        elif partial.exists():
            partial.unlink()
        raise


def write_synthetic(
    models_dir: Path,
    artifacts: Sequence[Artifact],
    *,
    seed: int = DEFAULT_SEED,
    on_file: Callable[[Path, int], None] | None = None,
) -> list[Path]:
    """Write every missing or synthetic entry of ``artifacts``; returns the entries written.

    Real files already present are kept. ``on_file(path, bytes)`` is called after each entry.
    Raises :class:`NoSyntheticWriter` before writing anything if an entry has no writer.
    """
    missing = [(a.repo_id, e) for a in artifacts for e in a.files if (a.repo_id, e) not in WRITERS]
    if missing:
        names = ", ".join(f"{repo}/{entry}" for repo, entry in missing)
        raise NoSyntheticWriter(f"no synthetic weights are available for {names}")
    with _WRITE_LOCK:
        return _write_all(models_dir, artifacts, seed, on_file)


def _write_all(models_dir, artifacts, seed, on_file) -> list[Path]:
    written: list[Path] = []
    for artifact in artifacts:
        for entry in artifact.files:
            dest = local_path(models_dir, artifact, entry)
            if dest in written:
                continue
            if _is_real(dest):
                logger.debug("keeping real file %s", dest)
                continue
            entry_seed = _entry_seed(seed, artifact.repo_id, entry)
            _write_entry(dest, WRITERS[(artifact.repo_id, entry)], entry_seed)
            written.append(dest)
            size = sum(f.stat().st_size for f in entry_files(dest))
            logger.debug("wrote synthetic %s (%d bytes)", dest, size)
            if on_file is not None:
                on_file(dest, size)
    return written
