"""Run the real ``daydream-scope`` command in a subprocess, on a free loopback port.

Every server gets its own temporary directories (models, assets, LoRA, logs, Jupyter config and
runtime), a known token, and is stopped by the caller (use ``running_scope_server`` or call
``ScopeServer.stop`` in a ``finally``). Every wait here is bounded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Iterator

import httpx

#: The token every test server is started with, so tests can call Jupyter's own endpoints.
TEST_TOKEN = "scope-test-token-5f2c"
#: The checkout's root (where the ``tests`` package is importable from).
CHECKOUT = Path(__file__).resolve().parent.parent

#: Environment variables that would change a test server's behaviour if inherited.
_SCRUBBED_PREFIXES = ("DAYDREAM_SCOPE_", "TWILIO_", "JUPYTER_")
_SCRUBBED_NAMES = ("PIPELINE", "VERBOSE_LOGGING", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def console_script(name: str) -> list[str]:
    """The command line of an installed console script of this project."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which(name)
    if found:
        return [found]
    entry = {"daydream-scope": "main", "download_models": "download_models_main"}[name]
    return [sys.executable, "-c", f"from scope.cli import {entry}; {entry}()"]


def isolated_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment with Scope and Jupyter settings pointing below ``root``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_SCRUBBED_PREFIXES) and key not in _SCRUBBED_NAMES
    }
    dirs = {
        "DAYDREAM_SCOPE_MODELS_DIR": root / "models",
        "DAYDREAM_SCOPE_ASSETS_DIR": root / "assets",
        "DAYDREAM_SCOPE_LORA_DIR": root / "lora",
        "DAYDREAM_SCOPE_LOGS_DIR": root / "logs",
        "JUPYTER_CONFIG_DIR": root / "jupyter-config",
        "JUPYTER_RUNTIME_DIR": root / "jupyter-runtime",
    }
    for key, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        env[key] = str(path)
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    # Its WebRTC peers (and those of the kernels and servers it starts) stay on loopback.
    env["DAYDREAM_SCOPE_ICE_HOST_ADDRESSES"] = "127.0.0.1"
    # Pages use the advertised STUN server: keep even that on loopback (nothing answers there).
    env["DAYDREAM_SCOPE_STUN_FALLBACK"] = "stun:127.0.0.1:3478"
    env.update(extra or {})
    return env


@dataclass
class ServerProcess:
    """A server running in a subprocess, its output captured to a file."""

    process: subprocess.Popen
    port: int
    token: str
    root: Path
    output_path: Path
    _output_file: object = field(repr=False, default=None)

    #: Name in failure messages, and the path (below ``url``) that answers once it is up.
    name = "server"
    ready_path = "health"

    @property
    def url(self) -> str:
        """Base URL on loopback (also for a server bound to all interfaces)."""
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.output_path.read_text(errors="replace")

    def client(self, **kwargs) -> httpx.Client:
        """An HTTP client that keeps no cookies: each request carries only its own credentials."""
        kwargs.setdefault("timeout", 15.0)
        kwargs.setdefault("cookies", CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])))
        return httpx.Client(base_url=self.url, trust_env=False, **kwargs)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until ``ready_path`` answers; fail with the server's output if it never does."""
        deadline = time.monotonic() + timeout
        probe = self.url.rstrip("/") + "/" + self.ready_path
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"{self.name} exited with {self.process.returncode} before answering:\n{self.output()}"
                    )
                try:
                    if client.get(probe, params={"token": self.token}).status_code < 500:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.name} did not answer within {timeout} s:\n{self.output()}")
                time.sleep(0.1)

    def wait_for_output(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            out = self.output()
            if text in out:
                return out
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the server output after {timeout} s:\n{out}")
            time.sleep(0.1)

    def stop(self, timeout: float = 20.0) -> int:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``); returns its exit code."""
        stop_process(self.process, timeout)
        if self._output_file is not None:
            self._output_file.close()
            self._output_file = None
        return self.process.returncode


@dataclass
class ScopeServer(ServerProcess):
    """A running ``daydream-scope`` process."""

    host: str = "127.0.0.1"
    name = "daydream-scope"

    def wait_status(self, client: httpx.Client, wanted: tuple[str, ...], timeout: float = 60.0) -> dict:
        """Poll ``/api/v1/pipeline/status`` until it is one of ``wanted``; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            status = client.get("/api/v1/pipeline/status").json()
            if status["status"] in wanted:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"pipeline status stayed {status}, wanted {wanted}:\n{self.output()[-3000:]}")
            time.sleep(0.2)


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


def spawn_scope_server(
    root: Path,
    *args: str,
    port: int | None = None,
    host: str | None = "127.0.0.1",
    token: str = TEST_TOKEN,
    env: dict[str, str] | None = None,
    test_pipelines: bool = False,
) -> ScopeServer:
    """Start ``daydream-scope -N`` without waiting for it (see ``start_scope_server``).

    ``test_pipelines`` registers the pipelines of ``tests/pipelines.py`` in the server too.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    program = console_script("daydream-scope")
    if test_pipelines:
        program = [sys.executable, "-m", "tests.serve_test_pipelines"]
        env = {"PYTHONPATH": str(CHECKOUT), **(env or {})}
    command = [*program, "-N", f"--port={port}", f"--IdentityProvider.token={token}"]
    if host is not None:
        command += ["--host", host]
    command += list(args)
    output_path = root / f"server-{port}-{time.monotonic_ns()}.out"
    output_file = output_path.open("wb")
    process = subprocess.Popen(
        command,
        cwd=root,
        env=isolated_env(root, env),
        stdin=subprocess.DEVNULL,
        stdout=output_file,
        stderr=subprocess.STDOUT,
    )
    return ScopeServer(process, port, token, root, output_path, output_file, host=host or "0.0.0.0")


def ready_or_stopped(server, timeout: float):
    """Wait until ``server`` answers; stop it if it never does (it must not outlive the test)."""
    try:
        server.wait_ready(timeout)
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def stopped_after(server) -> Iterator:
    try:
        yield server
    finally:
        server.stop()


def start_scope_server(root: Path, *args: str, ready_timeout: float = 60.0, **kwargs) -> ScopeServer:
    """Start ``daydream-scope`` and wait until it answers ``/health``. The caller stops it."""
    return ready_or_stopped(spawn_scope_server(root, *args, **kwargs), ready_timeout)


def running_scope_server(root: Path, *args: str, **kwargs) -> contextlib.AbstractContextManager[ScopeServer]:
    return stopped_after(start_scope_server(root, *args, **kwargs))


def run_command(name: str, *args: str, root: Path, env: dict[str, str] | None = None,
                timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run a console script of this project to completion (bounded by ``timeout``)."""
    root.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [*console_script(name), *args],
        cwd=root,
        env=isolated_env(root, env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
