"""A directory's quota (assets, LoRA files): files on disk plus the bytes reserved by uploads in flight.

Every decision is taken on the event loop thread, so two uploads can never both take the last
free bytes. The directory is measured off the loop; a commit (rename into place) that happens
while it is measured makes the measure stale, and it is taken again.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class QuotaExceeded(Exception):
    """An upload that would push a directory past its quota."""

    quota: int
    used: int
    wanted: int
    #: What the directory holds, and the setting of its quota.
    what: str = "assets"
    setting: str = "assets_quota_bytes"

    @property
    def detail(self) -> str:
        return (
            f"{self.what.capitalize()} quota exceeded: the {self.what} directory may hold {self.quota} bytes "
            f"(ScopeApp.{self.setting}); {self.used} bytes are in use or reserved by uploads "
            f"in progress, and this upload needs {self.wanted} more. Delete some of its files or raise the quota."
        )


def directory_bytes(root: Path, skip: frozenset[str]) -> int:
    """Total size of the regular files below ``root``, leaving out the paths in ``skip``."""
    total = 0
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False) and entry.path not in skip:
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue  # gone while measured
    return total


class AssetsQuota:
    """Admits uploads into a directory while its files and reservations fit the quota."""

    def __init__(self, root: Path, quota_bytes: int, what: str = "assets", setting: str = "assets_quota_bytes"):
        self.root = root
        self.quota = quota_bytes
        self.what = what
        self.setting = setting
        self._on_disk = 0  # measured, then kept up to date by our own commits
        self._commits = 0
        self._reserved: dict[object, int] = {}
        self._temp_paths: dict[object, str] = {}

    @property
    def reserved(self) -> int:
        return sum(self._reserved.values())

    def in_use(self) -> int:
        return self._on_disk + self.reserved

    async def measure(self) -> None:
        """Measure the directory (off the loop) until no commit happened meanwhile."""
        loop = asyncio.get_running_loop()
        for _ in range(5):
            commits = self._commits
            skip = frozenset(self._temp_paths.values())
            measured = await loop.run_in_executor(None, directory_bytes, self.root, skip)
            if commits == self._commits:
                break
        self._on_disk = measured

    def admit(self, upload: object, temp_path: str, declared: int | None) -> None:
        """Start an upload, reserving its declared size (raises ``QuotaExceeded``)."""
        if declared:
            self.check(declared)
        self._reserved[upload] = declared or 0
        self._temp_paths[upload] = temp_path

    def grow(self, upload: object, written: int) -> None:
        """An upload without a declared size has written ``written`` bytes: reserve them."""
        extra = written - self._reserved.get(upload, 0)
        if extra > 0:
            self.check(extra)
            self._reserved[upload] = written

    def commit(self, upload: object, target: Path, replaced_bytes: int) -> None:
        """The upload's file is in place: count it as on disk, no longer as reserved."""
        try:
            size = target.stat().st_size
        except OSError:
            size = self._reserved.get(upload, 0)
        self._on_disk += size - replaced_bytes
        self._commits += 1
        self.release(upload)

    def release(self, upload: object) -> None:
        """The upload ended without a file (or its file was counted): free its reservation."""
        self._reserved.pop(upload, None)
        self._temp_paths.pop(upload, None)

    def check(self, wanted: int) -> None:
        """Raise ``QuotaExceeded`` unless ``wanted`` more bytes fit."""
        used = self.in_use()
        if used + wanted > self.quota:
            raise QuotaExceeded(self.quota, used, wanted, self.what, self.setting)


def remove_abandoned_uploads(root: Path, prefix: str, max_age_s: float) -> list[Path]:
    """Delete upload temp files left by a server that died mid-upload; returns what was deleted.

    Only files untouched for ``max_age_s`` go: another server sharing the directory may be
    writing a fresh one right now.
    """
    cutoff = time.time() - max_age_s
    removed = []
    for path in root.glob(f"{prefix}*"):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed
