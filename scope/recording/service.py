"""The server's recordings: where they live, what they may hold, and which are running.

Recordings live in the recordings directory, one folder per session (session ids are UUIDs, so
a folder name is never a client's path). The directory has a quota and each recording a maximum
duration: a start that cannot fit is refused (507), and a running recording that reaches either
stops, telling its session why.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from typing import Any, Callable

from scope.recording.provenance import FileDigests
from scope.recording.recorder import INFO_FILE, STOPPED, SessionRecorder

logger = logging.getLogger(__name__)

#: Why a recording stopped (``recording_stopped``'s ``reason``).
STOP_REASONS = {
    "requested": "stopped on request",
    "session_ended": "the session ended",
    "max_duration": "the maximum recording duration was reached",
    "quota": "the recordings directory's quota was reached",
    "server_stopped": "the server stopped",
    "failed": "writing the recording failed",
}


class RecordingError(Exception):
    """A recording request that cannot be done: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def folder_name(session_id: str) -> str | None:
    """The folder of ``session_id``'s recording, or None when it is no session id (a UUID)."""
    try:
        return str(uuid.UUID(session_id))
    except (ValueError, TypeError, AttributeError):
        return None


def directory_bytes(root: Path, skip: frozenset[str] = frozenset()) -> int:
    """Bytes the files under ``root`` hold, leaving out the top-level folders in ``skip``."""
    total = 0
    if not root.is_dir():
        return 0
    for child in root.iterdir():
        if child.name in skip:
            continue
        paths = child.rglob("*") if child.is_dir() else (child,)
        for path in paths:
            try:
                if path.is_file():
                    total += path.stat().st_size
            except OSError:
                pass
    return total


class RecordingService:
    def __init__(self, root: Path, quota_bytes: int, max_seconds: float, digests: FileDigests | None = None):
        self.root = root
        self.quota_bytes = quota_bytes
        self.max_seconds = max_seconds
        self.digests = digests or FileDigests()
        #: Running recordings by session id.
        self.active: dict[str, SessionRecorder] = {}
        #: What the finished recordings and renders held at the last start (the running ones are measured live).
        self._others_bytes = 0

    def directory(self, session_id: str) -> Path | None:
        name = folder_name(session_id)
        return self.root / name if name is not None else None

    def used_bytes(self) -> int:
        """What the directory holds now: the last scan of finished files plus the running recordings."""
        return self._others_bytes + sum(recorder.bytes() for recorder in self.active.values())

    async def open(self, session_id: str, make: Callable[[Path], SessionRecorder]) -> SessionRecorder:
        """A new recording for ``session_id``, made by ``make(directory)``.

        409 while it records, or when it has recorded already (its files stay as they are);
        507 when the quota is reached.
        """
        if session_id in self.active:
            raise RecordingError(409, f"Session {session_id} is already recording.")
        directory = self.directory(session_id)
        if directory is None:
            raise RecordingError(404, f"Session {session_id} not found")
        if (directory / INFO_FILE).exists():
            raise RecordingError(409, f"Session {session_id} has a finished recording; its files stay downloadable.")
        await self.check_room("delete recordings to record more")
        if session_id in self.active:  # a start that came at the same time won meanwhile
            raise RecordingError(409, f"Session {session_id} is already recording.")
        recorder = make(directory)
        self.active[session_id] = recorder
        return recorder

    async def check_room(self, advice: str) -> None:
        """Measure the directory; :class:`RecordingError` 507 when it has reached its quota."""
        self._others_bytes = await asyncio.to_thread(directory_bytes, self.root, frozenset(self.active))
        used = self.used_bytes()
        if used >= self.quota_bytes:
            raise RecordingError(
                507,
                f"The recordings directory holds {used} bytes of its {self.quota_bytes}-byte quota "
                f"(recordings_quota_bytes): {advice}.",
            )

    def limit_reached(self, session_id: str) -> str | None:
        """``quota`` when the directory has reached its quota with this recording's last chunk."""
        if session_id in self.active and self.used_bytes() >= self.quota_bytes:
            return "quota"
        return None

    async def close(self, session_id: str, reason: str) -> dict[str, Any] | None:
        """Stop ``session_id``'s recording (if it records) and wait until its files are complete."""
        recorder = self.active.get(session_id)
        if recorder is None:
            return None
        try:
            return await recorder.finish(reason)
        finally:
            self.active.pop(session_id, None)

    async def close_all(self, reason: str = "server_stopped") -> None:
        await asyncio.gather(*(self.close(session_id, reason) for session_id in list(self.active)), return_exceptions=True)

    def info(self, session_id: str) -> dict[str, Any] | None:
        """A recording's listing entry (running or finished), with its size; None when there is none."""
        recorder = self.active.get(session_id)
        if recorder is not None:
            return {**recorder.info(), "bytes": recorder.bytes()}
        directory = self.directory(session_id)
        return read_info(directory) if directory is not None else None

    def listing(self) -> list[dict[str, Any]]:
        """Every recording, newest first (reads the folders: call it off the event loop)."""
        entries = []
        if self.root.is_dir():
            for child in self.root.iterdir():
                name = folder_name(child.name)
                if name is None or name != child.name:
                    continue
                entry = self.info(name)
                if entry is not None:
                    entries.append(entry)
        return sorted(entries, key=lambda entry: entry["started_at"], reverse=True)


def read_info(directory: Path) -> dict[str, Any] | None:
    """A finished recording's ``recording.json`` with its folder's size (None: no recording).

    One left ``recording`` by a server that was killed reads as stopped.
    """
    try:
        info = json.loads((directory / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    if info.get("state") != STOPPED:
        info = {**info, "state": STOPPED, "stop_reason": info.get("stop_reason") or "server_stopped"}
    return {**info, "bytes": directory_bytes(directory)}
