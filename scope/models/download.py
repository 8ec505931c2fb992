"""Fetch a pipeline's artifacts from the Hugging Face Hub, resumably, with progress.

A download has two steps. *Planning* asks the Hub which files the artifacts cover and how
big they are (and their sha256 when the Hub knows it). *Fetching* then streams each missing
file into ``<dest>.incomplete`` and moves it into place once its size and hash check out, so
a file at its final path is always complete. Weight sources other than the Hub (synthetic
weights, for instance) belong at the same seam: produce the plan's files, skip the transfer.

Progress is kept per pipeline and covers the whole pipeline (all files of all artifacts).
Pipelines that share files (most share the Wan2.1 ones) can download at the same time: a
lock per destination file makes the second one wait and then find the file done.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from scope.models.artifacts import INCOMPLETE_SUFFIX, Artifact, format_bytes, local_path
from scope.models.synthetic.writer import clear_marker, is_synthetic_file, write_synthetic

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
REVISION = "main"
CHUNK_SIZE = 10 * 1024 * 1024
CONNECT_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 60.0
#: Free space kept on top of the bytes still to download, for the filesystem's own needs.
DISK_MARGIN_BYTES = 64 * 1024 * 1024


class DownloadError(RuntimeError):
    """A download failed; the message is meant for the user."""


class NotEnoughDiskSpace(DownloadError):
    """The models directory cannot hold the files still missing."""


class VerificationFailed(DownloadError):
    """A transferred file does not match the size or hash the Hub listed."""


class DownloadInProgress(RuntimeError):
    """A download of this pipeline is already running."""

    def __init__(self, pipeline_id: str):
        super().__init__(f"Download already in progress for {pipeline_id}")
        self.pipeline_id = pipeline_id


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: where it is on the Hub, what it should be, where it goes."""

    repo_id: str
    path: str
    size: int
    sha256: str | None
    dest: Path

    @property
    def partial(self) -> Path:
        return self.dest.with_name(self.dest.name + INCOMPLETE_SUFFIX)

    def is_complete(self) -> bool:
        """The real file is in place (a synthetic stand-in of any size never counts)."""
        try:
            return self.dest.stat().st_size == self.size and not is_synthetic_file(self.dest)
        except OSError:
            return False

    def bytes_on_disk(self) -> int:
        """Bytes already here: the whole file, a resumable partial, or nothing."""
        if self.is_complete():
            return self.size
        try:
            partial = self.partial.stat().st_size
        except OSError:
            return 0
        return partial if partial <= self.size else 0


@dataclass(frozen=True)
class Progress:
    """A snapshot of one pipeline's download."""

    pipeline_id: str
    is_downloading: bool
    bytes_done: int = 0
    bytes_total: int = 0
    current_artifact: str | None = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return not self.is_downloading and self.error is None

    @property
    def percentage(self) -> float:
        """Share of the whole pipeline's bytes, rounded down to 0.1 so 100 means done."""
        if self.bytes_total <= 0:
            return 100.0 if self.succeeded else 0.0
        share = min(self.bytes_done, self.bytes_total) * 1000 // self.bytes_total
        return share / 10

    def as_dict(self) -> dict[str, Any]:
        return {
            "is_downloading": self.is_downloading,
            "percentage": self.percentage,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "current_artifact": self.current_artifact,
            "error": self.error,
        }


ProgressCallback = Callable[[Progress], None]

# One lock per destination file, shared by every manager in the process.
_file_locks: dict[Path, threading.Lock] = {}
_file_locks_guard = threading.Lock()


def _lock_for(dest: Path) -> threading.Lock:
    key = dest.resolve()
    with _file_locks_guard:
        return _file_locks.setdefault(key, threading.Lock())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DownloadError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"


class _Reporter:
    """Turns per-file byte counts into whole-pipeline progress records and callbacks."""

    def __init__(self, publish: Callable[..., Progress], on_progress: ProgressCallback | None):
        self._publish = publish
        self._on_progress = on_progress
        self._finished_bytes = 0

    def _emit(self, **changes: Any) -> None:
        snapshot = self._publish(**changes)
        if self._on_progress is not None:
            self._on_progress(snapshot)

    def artifact(self, repo_id: str) -> None:
        self._emit(current_artifact=repo_id)

    def total(self, bytes_total: int) -> None:
        self._emit(bytes_total=bytes_total, bytes_done=0)

    def file_bytes(self, count: int) -> None:
        self._emit(bytes_done=self._finished_bytes + count)

    def file_done(self, size: int) -> None:
        self._finished_bytes += size
        self._emit(bytes_done=self._finished_bytes)


class DownloadManager:
    """Downloads pipeline artifacts into ``models_dir`` and tracks progress per pipeline."""

    def __init__(
        self,
        models_dir: Path,
        endpoint: str | None = None,
        token: str | None = None,
        *,
        chunk_size: int = CHUNK_SIZE,
    ):
        self.models_dir = Path(models_dir)
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.token = token if token is not None else (os.environ.get("HF_TOKEN") or None)
        self.chunk_size = chunk_size
        self._records: dict[str, Progress] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    # Public API ---------------------------------------------------------------------------

    def start(self, pipeline_id: str, artifacts: Sequence[Artifact], *, synthetic: bool = False) -> None:
        """Download in a daemon thread; raises DownloadInProgress if one is running.

        ``synthetic`` writes tiny random weights in the real layouts instead of fetching.
        """
        artifacts = tuple(artifacts)
        self._begin(pipeline_id)
        thread = threading.Thread(
            target=self._run_in_background,
            args=(pipeline_id, artifacts, synthetic),
            name=f"download-{pipeline_id}",
            daemon=True,
        )
        with self._lock:
            self._threads[pipeline_id] = thread
        try:
            thread.start()
        except BaseException as exc:
            self._finish(pipeline_id, error=_describe(exc))
            raise

    def download(
        self,
        pipeline_id: str,
        artifacts: Sequence[Artifact],
        on_progress: ProgressCallback | None = None,
        *,
        synthetic: bool = False,
    ) -> None:
        """Download in the calling thread; raises DownloadError (or a subclass) on failure."""
        self._begin(pipeline_id)
        try:
            self._run(pipeline_id, tuple(artifacts), on_progress, synthetic)
        except BaseException as exc:
            self._finish(pipeline_id, error=_describe(exc))
            raise
        self._finish(pipeline_id)

    def progress(self, pipeline_id: str) -> dict[str, Any] | None:
        """The pipeline's progress as JSON-ready data; None when no download is on record."""
        record = self.record(pipeline_id)
        return record.as_dict() if record is not None else None

    def record(self, pipeline_id: str) -> Progress | None:
        with self._lock:
            return self._records.get(pipeline_id)

    def is_downloading(self, pipeline_id: str) -> bool:
        record = self.record(pipeline_id)
        return record is not None and record.is_downloading

    def clear_finished(self, pipeline_id: str) -> bool:
        """Forget a successful, finished download; failures stay visible until the next start."""
        with self._lock:
            record = self._records.get(pipeline_id)
            if record is None or not record.succeeded:
                return False
            del self._records[pipeline_id]
            self._threads.pop(pipeline_id, None)
            return True

    def join(self, pipeline_id: str, timeout: float | None = None) -> bool:
        """Wait for a background download to end; True if none is running afterwards."""
        with self._lock:
            thread = self._threads.get(pipeline_id)
        if thread is not None:
            thread.join(timeout)
        return not self.is_downloading(pipeline_id)

    # Bookkeeping --------------------------------------------------------------------------

    def _begin(self, pipeline_id: str) -> None:
        # Marking happens here, synchronously, so a second start right after is refused.
        with self._lock:
            current = self._records.get(pipeline_id)
            if current is not None and current.is_downloading:
                raise DownloadInProgress(pipeline_id)
            self._records[pipeline_id] = Progress(pipeline_id=pipeline_id, is_downloading=True)

    def _publish(self, pipeline_id: str, **changes: Any) -> Progress:
        with self._lock:
            record = replace(self._records[pipeline_id], **changes)
            self._records[pipeline_id] = record
            return record

    def _finish(self, pipeline_id: str, error: str | None = None) -> None:
        with self._lock:
            record = self._records[pipeline_id]
            done = record.bytes_total if error is None else record.bytes_done
            self._records[pipeline_id] = replace(
                record,
                is_downloading=False,
                bytes_done=done,
                current_artifact=record.current_artifact if error else None,
                error=error,
            )

    def _run_in_background(self, pipeline_id: str, artifacts: tuple[Artifact, ...], synthetic: bool) -> None:
        try:
            self._run(pipeline_id, artifacts, None, synthetic)
        except BaseException as exc:  # whatever happens, the record must stop saying "running"
            logger.error("Download of %s failed: %s", pipeline_id, _describe(exc))
            logger.debug("download failure details", exc_info=True)
            self._finish(pipeline_id, error=_describe(exc))
        else:
            self._finish(pipeline_id)

    # The download itself ------------------------------------------------------------------

    def _run(
        self,
        pipeline_id: str,
        artifacts: tuple[Artifact, ...],
        on_progress: ProgressCallback | None,
        synthetic: bool,
    ) -> None:
        if synthetic:
            self._write_synthetic(pipeline_id, artifacts, on_progress)
        else:
            self._download(pipeline_id, artifacts, on_progress)

    def _write_synthetic(
        self, pipeline_id: str, artifacts: tuple[Artifact, ...], on_progress: ProgressCallback | None
    ) -> None:
        """The synthetic source: same progress record, files written locally instead of fetched."""
        reporter = _Reporter(lambda **c: self._publish(pipeline_id, **c), on_progress)
        repo_of_dir = {artifact.local_dir: artifact.repo_id for artifact in artifacts}
        written = 0

        def on_file(path: Path, size: int) -> None:
            nonlocal written
            written += size
            reporter.artifact(repo_of_dir[path.relative_to(self.models_dir).parts[0]])
            reporter.total(written)
            reporter.file_done(size)

        write_synthetic(self.models_dir, artifacts, on_file=on_file)
        logger.info("Synthetic weights for %s written", pipeline_id)

    def _download(
        self,
        pipeline_id: str,
        artifacts: tuple[Artifact, ...],
        on_progress: ProgressCallback | None,
    ) -> None:
        reporter = _Reporter(lambda **c: self._publish(pipeline_id, **c), on_progress)
        plan = self._plan(artifacts, reporter)
        total = sum(remote.size for remote in plan)
        reporter.total(total)
        self._check_disk_space(plan)
        logger.info("Downloading %s: %d files, %s", pipeline_id, len(plan), format_bytes(total))
        with self._http_client() as client:
            for remote in plan:
                reporter.artifact(remote.repo_id)
                self._fetch(client, remote, reporter)
        logger.info("Download of %s complete", pipeline_id)

    def _plan(self, artifacts: tuple[Artifact, ...], reporter: _Reporter) -> list[RemoteFile]:
        """Every file the artifacts cover, once each, in artifact order."""
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, token=self.token or False)
        planned: dict[Path, RemoteFile] = {}
        for artifact in artifacts:
            reporter.artifact(artifact.repo_id)
            for remote in self._list_artifact(api, artifact):
                planned.setdefault(remote.dest, remote)
        return list(planned.values())

    def _list_artifact(self, api: Any, artifact: Artifact) -> list[RemoteFile]:
        from huggingface_hub.hf_api import RepoFile, RepoFolder

        repo_id = artifact.repo_id
        try:
            found = {
                info.path: info
                for info in api.get_paths_info(repo_id, list(artifact.files), revision=REVISION)
            }
            missing = [entry for entry in artifact.files if entry not in found]
            if missing:
                raise DownloadError(f"{repo_id} has no {', '.join(missing)}")
            files: list[RepoFile] = []
            for entry in artifact.files:
                info = found[entry]
                if isinstance(info, RepoFolder):
                    tree = api.list_repo_tree(repo_id, path_in_repo=entry, recursive=True, revision=REVISION)
                    inside = [item for item in tree if isinstance(item, RepoFile)]
                    if not inside:
                        raise DownloadError(f"directory {entry} of {repo_id} is empty")
                    files.extend(inside)
                else:
                    files.append(info)
        except DownloadError:
            raise
        except Exception as exc:
            raise DownloadError(f"could not list files of {repo_id} at {self.endpoint}: {exc}") from exc
        return [self._remote_file(artifact, info) for info in files]

    def _remote_file(self, artifact: Artifact, info: Any) -> RemoteFile:
        folder = (self.models_dir / artifact.local_dir).resolve()
        dest = local_path(self.models_dir, artifact, info.path).resolve()
        if folder not in dest.parents:
            raise DownloadError(f"refusing to write {info.path!r} of {artifact.repo_id} outside {folder}")
        sha256 = info.lfs.sha256 if info.lfs is not None else None
        return RemoteFile(artifact.repo_id, info.path, int(info.size), sha256, dest)

    def _check_disk_space(self, plan: list[RemoteFile]) -> None:
        missing = sum(remote.size - remote.bytes_on_disk() for remote in plan)
        if missing <= 0:
            return
        self.models_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.models_dir).free
        if free < missing + DISK_MARGIN_BYTES:
            raise NotEnoughDiskSpace(
                f"not enough disk space in {self.models_dir}: {format_bytes(missing)} ({missing} bytes) "
                f"still to download plus a {format_bytes(DISK_MARGIN_BYTES)} margin, "
                f"but only {format_bytes(free)} ({free} bytes) free"
            )

    def _http_client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(
            headers=headers,
            follow_redirects=True,
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        )

    def _file_url(self, remote: RemoteFile) -> str:
        return f"{self.endpoint}/{remote.repo_id}/resolve/{REVISION}/{quote(remote.path)}"

    def _fetch(self, client: httpx.Client, remote: RemoteFile, reporter: _Reporter) -> None:
        """Make ``remote.dest`` complete, unless another download already did."""
        with _lock_for(remote.dest):
            if remote.is_complete():
                logger.debug("%s/%s already present", remote.repo_id, remote.path)
                reporter.file_done(remote.size)
                return
            try:
                remote.dest.parent.mkdir(parents=True, exist_ok=True)
                digest = self._transfer(client, remote, reporter)
                self._verify(remote, digest)
                os.replace(remote.partial, remote.dest)
                clear_marker(remote.dest)
            except VerificationFailed:
                reporter.file_bytes(0)  # the discarded bytes no longer count
                raise
            except OSError as exc:
                raise DownloadError(f"could not write {remote.dest}: {exc}") from exc
            reporter.file_done(remote.size)

    def _transfer(self, client: httpx.Client, remote: RemoteFile, reporter: _Reporter) -> str | None:
        """Bring ``remote.partial`` to the full file; returns its sha256 when one is listed."""
        offset = remote.bytes_on_disk()
        if offset == 0:
            remote.partial.unlink(missing_ok=True)
        elif offset == remote.size:
            # A previous run got every byte but stopped before checking them.
            reporter.file_bytes(offset)
            return self._hash_partial(remote)
        url = self._file_url(remote)
        while True:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                with client.stream("GET", url, headers=headers) as response:
                    if self._must_restart(response, offset):
                        logger.info("%s: cannot resume at byte %d, restarting", remote.path, offset)
                        offset = 0
                        if response.status_code != 200:
                            remote.partial.unlink(missing_ok=True)
                            continue
                        # A 200 carries the whole file: write it from the start.
                    self._raise_for_status(response, remote)
                    return self._write_body(response, remote, offset, reporter)
            except httpx.HTTPError as exc:
                reason = str(exc) or type(exc).__name__
                raise DownloadError(
                    f"transfer of {remote.path} from {remote.repo_id} failed: {reason} "
                    "(the partial file is kept; run the download again to resume)"
                ) from exc

    @staticmethod
    def _must_restart(response: httpx.Response, offset: int) -> bool:
        """True when a ranged request did not continue the partial file at ``offset``."""
        if not offset:
            return False
        code = response.status_code
        if code == 206:
            return not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
        return code in (200, 416)

    @staticmethod
    def _raise_for_status(response: httpx.Response, remote: RemoteFile) -> None:
        code = response.status_code
        if code < 400:
            return
        where = f"{remote.path} from {remote.repo_id}"
        if code in (401, 403):
            raise DownloadError(
                f"access denied (HTTP {code}) to {where}; set HF_TOKEN if the repo is gated or private"
            )
        if code == 404:
            raise DownloadError(f"{where} not found (HTTP 404)")
        raise DownloadError(f"HTTP {code} while downloading {where}")

    def _write_body(
        self, response: httpx.Response, remote: RemoteFile, offset: int, reporter: _Reporter
    ) -> str | None:
        hasher = hashlib.sha256() if remote.sha256 else None
        if hasher is not None and offset:
            self._hash_file(remote.partial, hasher)
        written = offset
        reporter.file_bytes(written)
        with open(remote.partial, "ab" if offset else "wb") as out:
            for chunk in response.iter_bytes(self.chunk_size):
                out.write(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                written += len(chunk)
                reporter.file_bytes(written)
        return hasher.hexdigest() if hasher is not None else None

    def _hash_partial(self, remote: RemoteFile) -> str | None:
        if not remote.sha256:
            return None
        hasher = hashlib.sha256()
        self._hash_file(remote.partial, hasher)
        return hasher.hexdigest()

    def _hash_file(self, path: Path, hasher: Any) -> None:
        with open(path, "rb") as source:
            while block := source.read(self.chunk_size):
                hasher.update(block)

    @staticmethod
    def _verify(remote: RemoteFile, digest: str | None) -> None:
        size = remote.partial.stat().st_size
        problem = None
        if size != remote.size:
            problem = f"got {size} bytes, expected {remote.size}"
        elif remote.sha256 and digest != remote.sha256:
            problem = f"sha256 {digest} does not match the listed {remote.sha256}"
        if problem:
            remote.partial.unlink(missing_ok=True)
            raise VerificationFailed(f"{remote.path} from {remote.repo_id} is corrupt: {problem}")
