"""A local stand-in for the Hugging Face Hub, served over real HTTP on loopback.

It answers the listing calls ``huggingface_hub.HfApi`` makes (repo revision info, tree with
``Link`` pagination, paths-info) and ``resolve`` downloads with ``Range`` support, from repos
held in memory. Tests can make a file fail, slow or pause transfers (all of them, or one file at
a chosen byte so that a download's progress stands still at a known point), require a token,
and inspect every request it served.

Use it as a context manager (``with FakeHub({...}) as hub``) or through the ``fake_hub``
fixture (registered for every test in ``tests/conftest.py``), then point a client at ``hub.endpoint``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import pytest

logger = logging.getLogger(__name__)

FAKE_COMMIT = "c0ffee0000000000000000000000000000c0ffee"
LFS_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin", ".model", ".ckpt")
LFS_POINTER_SIZE = 134
FAILURE_MODES = ("error", "corrupt", "short", "truncate", "unsatisfiable")
#: Longest a paused transfer waits for ``release`` before going on anyway.
GATE_TIMEOUT_S = 30.0
#: Where ``redirect_lfs`` sends large files, as the Hub sends them to its CDN.
CDN_PREFIX = "/cdn/"


@dataclass(frozen=True)
class ServedRequest:
    """One request the hub answered."""

    method: str
    kind: str  # "resolve", "redirect", "tree", "paths-info", "revision" or "unknown"
    repo_id: str | None
    path: str | None  # the file path for "resolve", the listed folder for "tree"
    range: str | None
    status: int
    bytes_sent: int
    authorization: str | None


@dataclass
class _Failure:
    mode: str
    status: int
    times: int | None  # None: every request fails


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's content, which the Hub lists as ``oid``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """An in-memory Hub: ``repos`` maps repo id to ``{path in repo: content}``."""

    def __init__(
        self,
        repos: dict[str, dict[str, bytes]] | None = None,
        *,
        lfs_suffixes: tuple[str, ...] = LFS_SUFFIXES,
        chunk_size: int = 64 * 1024,
        chunk_delay: float = 0.0,
        page_size: int = 1000,
        required_token: str | None = None,
    ):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.lfs_suffixes = lfs_suffixes
        #: Bytes written per chunk of a download, and the pause before each chunk.
        self.chunk_size = chunk_size
        self.chunk_delay = chunk_delay
        #: Tree entries per page; more entries are paginated with a ``Link`` header.
        self.page_size = page_size
        #: When set, requests without ``Authorization: Bearer <token>`` get 401.
        self.required_token = required_token
        #: When False, ranged downloads get the whole file with 200, as some servers do.
        self.honour_ranges = True
        #: When True, downloads of LFS files answer 302 to a second URL, as the Hub does.
        self.redirect_lfs = False
        self.requests: list[ServedRequest] = []
        self._failures: dict[tuple[str, str], _Failure] = {}
        self._lock = threading.Lock()
        self._gate = threading.Event()
        self._gate.set()
        #: (repo, path) -> (byte offset, event): transfers of that file pause there until the event.
        self._file_holds: dict[tuple[str, str], tuple[int, threading.Event]] = {}
        self._held_files: set[tuple[str, str]] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for repo_id, files in (repos or {}).items():
            self.add_repo(repo_id, files)

    # Content ---------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> None:
        with self._lock:
            self.repos[repo_id] = dict(files)

    def set_file(self, repo_id: str, path: str, data: bytes) -> None:
        with self._lock:
            self.repos.setdefault(repo_id, {})[path] = data

    def is_lfs(self, path: str) -> bool:
        return path.endswith(self.lfs_suffixes)

    def file_entry(self, repo_id: str, path: str) -> dict[str, Any]:
        data = self.repos[repo_id][path]
        entry: dict[str, Any] = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path}
        if self.is_lfs(path):
            entry["lfs"] = {
                "oid": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "pointerSize": LFS_POINTER_SIZE,
            }
        return entry

    @staticmethod
    def folder_entry(path: str) -> dict[str, Any]:
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}

    def total_size(self, repo_id: str, paths: list[str] | None = None) -> int:
        files = self.repos[repo_id]
        return sum(len(data) for path, data in files.items() if paths is None or path in paths)

    # Behaviour knobs -------------------------------------------------------------------------

    def fail(
        self, repo_id: str, path: str, mode: str = "error", *, status: int = 500, times: int | None = None
    ) -> None:
        """Make downloads of one file misbehave.

        ``error``: answer ``status``. ``corrupt``: same size, wrong bytes. ``short``: a clean
        response that is shorter than the listed size. ``truncate``: announce the full length,
        send half, close the connection. ``unsatisfiable``: answer 416 to ranged requests.
        ``times``: fail that many requests, then recover.
        """
        if mode not in FAILURE_MODES:
            raise ValueError(f"unknown failure mode {mode!r}; expected one of {FAILURE_MODES}")
        with self._lock:
            self._failures[(repo_id, path)] = _Failure(mode, status, times)

    def heal(self, repo_id: str | None = None, path: str | None = None) -> None:
        """Stop failing one file, or all files when called without arguments."""
        with self._lock:
            if repo_id is None:
                self._failures.clear()
            else:
                self._failures.pop((repo_id, path or ""), None)

    def hold(self) -> None:
        """Pause every transfer before its next chunk, until :meth:`release`."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def hold_file(self, repo_id: str, path: str, at_byte: int = 0) -> None:
        """Pause transfers of one file once they reach ``at_byte`` (rounded up to a whole chunk),
        until :meth:`release_file`; other files go on."""
        with self._lock:
            self._file_holds[(repo_id, path)] = (at_byte, threading.Event())

    def release_file(self, repo_id: str | None = None, path: str | None = None) -> None:
        """Let one held file go on, or every held file when called without arguments."""
        with self._lock:
            keys = list(self._file_holds) if repo_id is None else [(repo_id, path or "")]
            holds = [self._file_holds.pop(key, None) for key in keys]
        for hold in holds:
            if hold is not None:
                hold[1].set()

    def file_held(self, repo_id: str, path: str) -> bool:
        """Whether a transfer of this file is paused at its :meth:`hold_file` point now."""
        with self._lock:
            return (repo_id, path) in self._held_files

    def _pause_file(self, repo_id: str, path: str, position: int) -> None:
        with self._lock:
            hold = self._file_holds.get((repo_id, path))
            if hold is None or position < hold[0]:
                return
            self._held_files.add((repo_id, path))
        try:
            hold[1].wait(GATE_TIMEOUT_S)
        finally:
            with self._lock:
                self._held_files.discard((repo_id, path))

    def _take_failure(self, repo_id: str, path: str) -> _Failure | None:
        with self._lock:
            failure = self._failures.get((repo_id, path))
            if failure is None:
                return None
            if failure.times is not None:
                failure.times -= 1
                if failure.times <= 0:
                    del self._failures[(repo_id, path)]
            return failure

    # Inspection ------------------------------------------------------------------------------

    def _record(self, request: ServedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def served(
        self,
        repo_id: str | None = None,
        path: str | None = None,
        *,
        kind: str = "resolve",
        method: str = "GET",
    ) -> list[ServedRequest]:
        """Requests of one kind (downloads by default), optionally for one repo and path."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.kind == kind
                and r.method == method
                and (repo_id is None or r.repo_id == repo_id)
                and (path is None or r.path == path)
            ]

    def request_count(self, repo_id: str, path: str, method: str = "GET") -> int:
        """Download requests (``resolve``) made for one file."""
        return len(self.served(repo_id, path, method=method))

    def bytes_served(self, repo_id: str, path: str) -> int:
        return sum(r.bytes_sent for r in self.served(repo_id, path))

    def range_headers(self, repo_id: str, path: str) -> list[str | None]:
        return [r.range for r in self.served(repo_id, path)]

    # Lifecycle -------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake hub is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        server = ThreadingHTTPServer(("127.0.0.1", 0), _HubRequestHandler)
        server.daemon_threads = True
        server.hub = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self.release()
        self.release_file()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fake hub: " + format, *args)

    # Routing ---------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        self.method = method
        self.range_header = self.headers.get("Range")
        length = int(self.headers.get("Content-Length") or 0)
        # Read any body up front so an early error answer leaves the connection usable.
        self.body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        path = unquote(url.path)
        if not self._authorized():
            self._error("unknown", None, None, 401, "Invalid credentials")
            return
        if path.startswith("/api/models/"):
            self._route_api(path[len("/api/models/") :], url, parse_qs(url.query))
            return
        from_cdn = path.startswith(CDN_PREFIX)
        repo_id, rest = self._split_repo(path[len(CDN_PREFIX) :] if from_cdn else path.lstrip("/"))
        if repo_id is not None and rest.startswith("resolve/") and method in ("GET", "HEAD"):
            revision, _, file_path = rest[len("resolve/") :].partition("/")
            self._resolve(repo_id, revision, file_path, from_cdn)
            return
        self._error("unknown", repo_id, None, 404, "Repository not found", "RepoNotFound")

    def _authorized(self) -> bool:
        token = self.hub.required_token
        return not token or self.headers.get("Authorization") == f"Bearer {token}"

    def _split_repo(self, rest: str) -> tuple[str | None, str]:
        for repo_id in sorted(self.hub.repos, key=len, reverse=True):
            if rest == repo_id or rest.startswith(repo_id + "/"):
                return repo_id, rest[len(repo_id) + 1 :]
        return None, rest

    def _route_api(self, rest: str, url: Any, query: dict[str, list[str]]) -> None:
        method = self.method
        repo_id, rest = self._split_repo(rest)
        if repo_id is not None and not rest and method == "GET":
            self._model_info(repo_id)  # /api/models/{repo_id}: info at the default revision
            return
        operation, _, rest = rest.partition("/")
        revision, _, sub_path = rest.partition("/")
        kind = operation if operation in ("tree", "paths-info", "revision") else "unknown"
        if repo_id is None:
            self._error(kind, None, None, 404, "Repository not found", "RepoNotFound")
        elif revision not in ("main", FAKE_COMMIT):
            self._error(kind, repo_id, None, 404, f"Invalid rev id: {revision}", "RevisionNotFound")
        elif kind == "revision" and method == "GET":
            self._model_info(repo_id)
        elif kind == "tree" and method == "GET":
            self._tree(repo_id, sub_path.strip("/"), url, query)
        elif kind == "paths-info" and method == "POST":
            self._paths_info(repo_id)
        else:
            self._error(kind, repo_id, None, 404, "Not found")

    # API answers -----------------------------------------------------------------------------

    def _model_info(self, repo_id: str) -> None:
        body = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "sha": FAKE_COMMIT,
            "private": False,
            "disabled": False,
            "gated": False,
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(self.hub.repos[repo_id])],
        }
        self._json("revision", repo_id, None, body)

    def _entries_under(self, repo_id: str, folder: str, recursive: bool) -> list[dict[str, Any]] | None:
        prefix = f"{folder}/" if folder else ""
        files = sorted(p for p in self.hub.repos[repo_id] if p.startswith(prefix))
        if folder and not files:
            return None
        folders: set[str] = set()
        listed_files: list[str] = []
        for path in files:
            parts = path[len(prefix) :].split("/")
            if not recursive and len(parts) > 1:
                folders.add(prefix + parts[0])
                continue
            listed_files.append(path)
            for depth in range(1, len(parts)):
                folders.add(prefix + "/".join(parts[:depth]))
        return [self.hub.folder_entry(f) for f in sorted(folders)] + [
            self.hub.file_entry(repo_id, p) for p in listed_files
        ]

    def _tree(self, repo_id: str, folder: str, url: Any, query: dict[str, list[str]]) -> None:
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        entries = self._entries_under(repo_id, folder, recursive)
        if entries is None:
            self._error("tree", repo_id, folder, 404, f"{folder} does not exist", "EntryNotFound")
            return
        cursor = int(query.get("cursor", ["0"])[0])
        page = entries[cursor : cursor + self.hub.page_size]
        headers: dict[str, str] = {}
        if cursor + self.hub.page_size < len(entries):
            params = {key: values[0] for key, values in query.items()}
            params["cursor"] = str(cursor + self.hub.page_size)
            headers["Link"] = f'<{self.hub.endpoint}{url.path}?{urlencode(params)}>; rel="next"'
        self._json("tree", repo_id, folder, page, headers)

    def _paths_info(self, repo_id: str) -> None:
        raw = self.body.decode()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(raw or "{}").get("paths", [])
        else:
            paths = parse_qs(raw).get("paths", [])
        files = self.hub.repos[repo_id]
        answer = []
        for path in (p.strip("/") for p in paths):
            if path in files:
                answer.append(self.hub.file_entry(repo_id, path))
            elif any(p.startswith(path + "/") for p in files):
                answer.append(self.hub.folder_entry(path))
        self._json("paths-info", repo_id, None, answer)

    # Downloads -------------------------------------------------------------------------------

    def _resolve(self, repo_id: str, revision: str, path: str, from_cdn: bool) -> None:
        data = self.hub.repos[repo_id].get(path)
        if revision not in ("main", FAKE_COMMIT) or data is None:
            self._error("resolve", repo_id, path, 404, f"{path} not found", "EntryNotFound")
            return
        if self.hub.redirect_lfs and self.hub.is_lfs(path) and not from_cdn:
            # Like the Hub, send large files to another location (same host here).
            location = f"{self.hub.endpoint}{CDN_PREFIX}{repo_id}/resolve/{revision}/{quote(path)}"
            self._answer(302, {"Location": location, "Content-Length": "0", "X-Repo-Commit": FAKE_COMMIT})
            self._log("redirect", repo_id, path, 302, 0)
            return
        failure = self.hub._take_failure(repo_id, path) if self.method == "GET" else None
        mode = failure.mode if failure is not None else None
        if failure is not None and mode == "error":
            self._error("resolve", repo_id, path, failure.status, "Injected failure")
            return
        served = data
        if mode == "corrupt":
            served = bytes(b ^ 0x55 for b in data)
        elif mode == "short":
            served = data[: len(data) // 2]

        start, status = 0, 200
        if self.range_header and self.hub.honour_ranges:
            requested = None if mode == "unsatisfiable" else self._range_start(self.range_header, len(served))
            if requested is None:
                extra = {"Content-Range": f"bytes */{len(served)}"}
                self._error("resolve", repo_id, path, 416, "Range not satisfiable", headers=extra)
                return
            start, status = requested, 206
        body = served[start:]

        etag = f'"{self._etag(repo_id, path)}"'
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(body)),
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "X-Repo-Commit": FAKE_COMMIT,
        }
        if self.hub.is_lfs(path):
            headers.update({"X-Linked-Size": str(len(data)), "X-Linked-Etag": etag})
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{len(served) - 1}/{len(served)}"
        truncate = mode == "truncate"
        if truncate:
            headers["Connection"] = "close"
        self._answer(status, headers)
        sent = 0
        if self.method == "GET":
            sent = self._send_slowly(body[: len(body) // 2] if truncate else body, repo_id, path, start)
        if truncate:
            self.close_connection = True
        self._log("resolve", repo_id, path, status, sent)

    def _etag(self, repo_id: str, path: str) -> str:
        data = self.hub.repos[repo_id][path]
        return hashlib.sha256(data).hexdigest() if self.hub.is_lfs(path) else git_blob_sha1(data)

    @staticmethod
    def _range_start(header: str, size: int) -> int | None:
        """Start offset of a ``bytes=N-`` (or ``bytes=N-M``) range; None when unsatisfiable."""
        unit, _, spec = header.partition("=")
        first = spec.partition("-")[0].strip()
        if unit.strip() != "bytes" or not first.isdigit():
            return 0
        start = int(first)
        return start if start < size else None

    def _send_slowly(self, body: bytes, repo_id: str, path: str, start: int) -> int:
        sent = 0
        step = max(1, self.hub.chunk_size)
        try:
            for offset in range(0, len(body), step):
                self.hub._gate.wait(GATE_TIMEOUT_S)
                self.hub._pause_file(repo_id, path, start + offset)
                if self.hub.chunk_delay:
                    time.sleep(self.hub.chunk_delay)
                chunk = body[offset : offset + step]
                self.wfile.write(chunk)
                self.wfile.flush()
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        return sent

    # Plain answers ---------------------------------------------------------------------------

    def _answer(self, status: int, headers: dict[str, str], payload: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if payload and self.method != "HEAD":
            self.wfile.write(payload)

    def _log(self, kind: str, repo_id: str | None, path: str | None, status: int, sent: int) -> None:
        authorization = self.headers.get("Authorization")
        self.hub._record(
            ServedRequest(self.method, kind, repo_id, path, self.range_header, status, sent, authorization)
        )

    def _json(
        self, kind: str, repo_id: str, path: str | None, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        payload = json.dumps(body).encode()
        base = {"Content-Type": "application/json", "Content-Length": str(len(payload))}
        self._answer(200, {**base, **(headers or {})}, payload)
        self._log(kind, repo_id, path, 200, len(payload))

    def _error(
        self,
        kind: str,
        repo_id: str | None,
        path: str | None,
        status: int,
        message: str,
        code: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        """An error the way the Hub reports it: ``X-Error-Code`` drives huggingface_hub's exceptions."""
        payload = json.dumps({"error": message}).encode()
        base = {
            "Content-Type": "application/json",
            "Content-Length": str(len(payload)),
            "X-Error-Message": message,
        }
        if code:
            base["X-Error-Code"] = code
        self._answer(status, {**base, **(headers or {})}, payload)
        self._log(kind, repo_id, path, status, 0)


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    """A running, empty fake hub; add repos with ``fake_hub.add_repo``."""
    with FakeHub() as hub:
        yield hub
