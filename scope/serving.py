"""``scope.serve()``: the URL of a Scope server to talk to, starting one when none answers.

A notebook calls ``url = scope.serve()`` and then ``ScopeClient(url)``: under ``jupyter lab``
that is the Lab server itself (when it serves Scope); elsewhere a ``daydream-scope`` is started
in the background on this machine and stopped when Python exits.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from scope.client.auth import is_loopback, normalise_base_url, running_servers

DEFAULT_URL = "http://127.0.0.1:8000/"
URL_ENV = "DAYDREAM_SCOPE_URL"
HEALTH_TIMEOUT = 2.0
POLL_SECONDS = 0.2
STOP_TIMEOUT = 15.0
LOG_TAIL_CHARS = 3000


class ServeError(RuntimeError):
    """No Scope server answers at the URL, and one could not be started there."""


@dataclass
class StartedServer:
    """A ``daydream-scope`` this process started."""

    url: str
    process: subprocess.Popen
    log_path: Path
    log_file: IO[bytes]

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]


_started: dict[str, StartedServer] = {}
_stop_registered = False


def serve(url: str | None = None, *, synthetic: bool = True, timeout: float = 120.0) -> str:
    """The base URL (ending in '/') of a Scope server that answers, started here if need be.

    The URL is ``url``, else ``$DAYDREAM_SCOPE_URL``, else the Jupyter server that launched this
    kernel if it serves Scope, else ``http://127.0.0.1:8000/``. When nothing healthy answers
    there, ``daydream-scope`` is started on that port (``--synthetic`` with ``synthetic=True``:
    missing weights are written as synthetic ones on load), with this process's environment,
    its output in the Scope logs directory. It listens on the loopback address only (127.0.0.1),
    so it is reachable from this machine alone. It is stopped by :func:`stop` or when Python exits; calling
    ``serve()`` again returns the same URL without starting another. ``synthetic`` does not
    change a server that is already running.
    """
    chosen, token = _choose_url(url)
    if _is_healthy(chosen, token):
        return chosen
    started = _started.get(chosen)
    if started is not None and started.process.poll() is None:
        _wait_until_healthy(started, timeout)  # still starting up
        return chosen
    return _start(chosen, synthetic=synthetic, timeout=timeout).url


def parent_jupyter_server() -> dict[str, Any] | None:
    """Runtime info (``url``, ``token``, ``pid``...) of the Jupyter server that launched this kernel, if it serves Scope."""
    parent = os.getppid()
    for info in running_servers():
        if info.get("pid") == parent and _is_healthy(normalise_base_url(info["url"]), info.get("token") or ""):
            return info
    return None


def stop() -> None:
    """Stop the servers this process started (nothing else); a no-op when there are none."""
    while _started:
        _, started = _started.popitem()
        _terminate(started)


def _choose_url(url: str | None) -> tuple[str, str | None]:
    """The URL to use and, for the parent Jupyter server, its token (else looked up by the client)."""
    if url:
        return _canonical(url), None
    if os.environ.get(URL_ENV):
        return _canonical(os.environ[URL_ENV]), None
    parent = parent_jupyter_server()
    if parent is not None:
        return _canonical(parent["url"]), parent.get("token") or ""
    return DEFAULT_URL, None


def _canonical(url: str) -> str:
    """``url`` with a trailing slash, ``localhost`` spelled 127.0.0.1 (one name per server)."""
    parts = urlsplit(normalise_base_url(url))
    if parts.hostname == "localhost":
        parts = parts._replace(netloc=f"127.0.0.1:{parts.port}" if parts.port else "127.0.0.1")
    return urlunsplit(parts)


def _is_healthy(url: str, token: str | None) -> bool:
    import httpx
    from pydantic import ValidationError

    from scope.client import ScopeApiError, ScopeClient

    try:
        with ScopeClient(url, token=token, timeout=HEALTH_TIMEOUT) as client:
            return client.health().status == "healthy"
    except (ScopeApiError, httpx.HTTPError, ValidationError, ValueError):
        return False


def _server_command() -> list[str]:
    """``daydream-scope`` of this interpreter's environment."""
    script = Path(sys.executable).parent / "daydream-scope"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from scope.cli import main; main()"]


def _start(url: str, *, synthetic: bool, timeout: float) -> StartedServer:
    if not is_loopback(url):
        raise ServeError(
            f"No Scope server answers at {url}, and a server can only be started on this machine "
            "(a 127.0.0.1 or localhost URL)."
        )
    parts = urlsplit(url)
    command = [*_server_command(), "-N", "--host", parts.hostname, f"--port={parts.port or 80}"]
    if parts.path not in ("", "/"):
        command.append(f"--ServerApp.base_url={parts.path}")
    if synthetic:
        command.append("--synthetic")
    log_path = _log_path(parts.port or 80)
    log_file = log_path.open("wb")
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    started = StartedServer(url, process, log_path, log_file)
    _remember(started)
    try:
        _wait_until_healthy(started, timeout)
    except BaseException:
        _started.pop(url, None)
        _terminate(started)
        raise
    return started


def _log_path(port: int) -> Path:
    from scope.config import ScopeSettings

    logs = ScopeSettings().logs_path
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"daydream-scope-{port}.out"


def _remember(started: StartedServer) -> None:
    global _stop_registered
    _started[started.url] = started
    if not _stop_registered:
        atexit.register(stop)
        _stop_registered = True


def _wait_until_healthy(started: StartedServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _is_healthy(started.url, ""):
        if started.process.poll() is not None:
            raise ServeError(
                f"daydream-scope exited with status {started.process.returncode} before answering at "
                f"{started.url}. The end of its log ({started.log_path}):\n{started.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise ServeError(
                f"daydream-scope did not answer at {started.url} within {timeout} s. "
                f"The end of its log ({started.log_path}):\n{started.log_tail()}"
            )
        time.sleep(POLL_SECONDS)


def _terminate(started: StartedServer) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    process = started.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
    started.log_file.close()
