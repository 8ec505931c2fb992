"""What each pipeline needs from the Hugging Face Hub, and whether it is already on disk.

An :class:`Artifact` names a repo and some entries inside it. Each entry is a file path or a
directory (everything under it is needed). Files land in
``<models_dir>/<last segment of the repo id>/<path in the repo>``, so artifacts of one repo
share a folder and pipelines that need the same file share one copy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: Suffix of a file still being transferred; such files never count as downloaded.
INCOMPLETE_SUFFIX = ".incomplete"


@dataclass(frozen=True)
class Artifact:
    """Entries (files or directories) of one Hugging Face model repo."""

    repo_id: str
    files: tuple[str, ...]

    def __post_init__(self) -> None:
        # Accept any iterable of entries but store a tuple, so artifacts stay hashable.
        entries = tuple(entry.strip("/") for entry in self.files)
        if not self.repo_id or any(not entry for entry in entries):
            raise ValueError(f"invalid artifact {self.repo_id!r}: {self.files!r}")
        object.__setattr__(self, "files", entries)

    @property
    def local_dir(self) -> str:
        """Folder name under the models directory: the repo id's last segment."""
        return self.repo_id.rstrip("/").rsplit("/", 1)[-1]


# Shared artifacts -------------------------------------------------------------------------

WAN_1_3B = Artifact("Wan-AI/Wan2.1-T2V-1.3B", ("config.json", "Wan2.1_VAE.pth", "google"))
UMT5_ENCODER = Artifact("Kijai/WanVideo_comfy", ("umt5-xxl-enc-fp8_e4m3fn.safetensors",))
VACE = Artifact("Kijai/WanVideo_comfy", ("Wan2_1-VACE_module_1_3B_bf16.safetensors",))
LIGHTVAE = Artifact("lightx2v/Autoencoders", ("lightvaew2_1.pth",))
TAE = Artifact("lightx2v/Autoencoders", ("taew2_1.pth",))
LIGHTTAE = Artifact("lightx2v/Autoencoders", ("lighttaew2_1.pth",))

# Pipeline-specific artifacts --------------------------------------------------------------

STREAMDIFFUSIONV2_GENERATOR = Artifact("jerryfeng/StreamDiffusionV2", ("wan_causal_dmd_v2v/model.pt",))
LONGLIVE_GENERATOR = Artifact(
    "Efficient-Large-Model/LongLive-1.3B", ("models/longlive_base.pt", "models/lora.pt")
)
WAN_14B_CONFIG = Artifact("Wan-AI/Wan2.1-T2V-14B", ("config.json",))
KREA_GENERATOR = Artifact("krea/krea-realtime-video", ("krea-realtime-video-14b.safetensors",))
REWARD_FORCING_GENERATOR = Artifact("JaydenLu666/Reward-Forcing-T2V-1.3B", ("rewardforcing.pt",))
MEMFLOW_GENERATOR = Artifact("KlingTeam/MemFlow", ("base.pt", "lora.pt"))

_WAN_1_3B_COMMON = (WAN_1_3B, UMT5_ENCODER, VACE, LIGHTVAE, TAE, LIGHTTAE)

#: Artifacts of each weight-backed pipeline, in download order.
PIPELINE_ARTIFACTS: dict[str, tuple[Artifact, ...]] = {
    "streamdiffusionv2": (*_WAN_1_3B_COMMON, STREAMDIFFUSIONV2_GENERATOR),
    "longlive": (*_WAN_1_3B_COMMON, LONGLIVE_GENERATOR),
    "krea-realtime-video": (
        WAN_1_3B,
        UMT5_ENCODER,
        LIGHTVAE,
        TAE,
        LIGHTTAE,
        WAN_14B_CONFIG,
        KREA_GENERATOR,
    ),
    "reward-forcing": (*_WAN_1_3B_COMMON, REWARD_FORCING_GENERATOR),
    "memflow": (*_WAN_1_3B_COMMON, MEMFLOW_GENERATOR),
}


def local_path(models_dir: Path, artifact: Artifact, path_in_repo: str) -> Path:
    """Where one file (or directory) of ``artifact`` lives on disk."""
    return Path(models_dir) / artifact.local_dir / path_in_repo


def local_paths(models_dir: Path, artifacts: Iterable[Artifact]) -> list[Path]:
    """The on-disk location of every listed entry, in order, without duplicates."""
    paths: list[Path] = []
    for artifact in artifacts:
        for entry in artifact.files:
            path = local_path(models_dir, artifact, entry)
            if path not in paths:
                paths.append(path)
    return paths


def _has_content(path: Path) -> bool:
    if path.is_file():
        return path.stat().st_size > 0
    if path.is_dir():
        return any(
            child.is_file() and not child.name.endswith(INCOMPLETE_SUFFIX) for child in path.rglob("*")
        )
    return False


def is_downloaded(models_dir: Path, artifacts: Sequence[Artifact]) -> bool:
    """True when every listed file is non-empty and every listed directory holds a file.

    A cheap presence check (no sizes or hashes): it is what the status endpoint polls.
    """
    missing = [path for path in local_paths(models_dir, artifacts) if not _has_content(path)]
    if missing:
        logger.debug("missing model files: %s", ", ".join(map(str, missing)))
    return not missing


def format_bytes(count: int) -> str:
    """``1.5 GiB``: sizes as progress lines and messages show them."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
