"""Real server processes for tests that drive a browser (or any outside client) against them.

``daydream-scope`` is started by :mod:`tests._subprocess_server` (free loopback port, temporary
directories, a known token, bounded waits). This module adds the same for ``jupyter lab`` with
the Scope extension, plus module-scoped fixtures for both (registered for every test in
``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests._subprocess_server import (
    TEST_TOKEN,
    ScopeServer,
    ServerProcess,
    free_port,
    isolated_env,
    ready_or_stopped,
    running_scope_server,
    start_scope_server,
    stopped_after,
)

__all__ = [
    "TEST_TOKEN",
    "LabServer",
    "ScopeServer",
    "lab_server_process",
    "running_lab_server",
    "running_scope_server",
    "scope_server_process",
    "start_lab_server",
    "start_scope_server",
]


@dataclass
class LabServer(ServerProcess):
    """A running ``jupyter lab`` (Scope's API closed: Jupyter's token, cookie and XSRF apply)."""

    base_url: str = "/"
    name = "jupyter lab"
    ready_path = "api/status"

    @property
    def url(self) -> str:
        """The server's base URL on loopback, ending with '/'."""
        return f"http://127.0.0.1:{self.port}{self.base_url}"



def start_lab_server(
    root: Path,
    *args: str,
    base_url: str = "/",
    token: str = TEST_TOKEN,
    env: dict[str, str] | None = None,
    ready_timeout: float = 90.0,
) -> LabServer:
    """Start ``jupyter lab`` on a free loopback port and wait until it answers. The caller stops it."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
        f"--ServerApp.base_url={base_url}", f"--IdentityProvider.token={token}",
        "--ServerApp.allow_root=True", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
        *args,
    ]
    output_path = root / f"lab-{port}.out"
    output_file = output_path.open("wb")
    process = subprocess.Popen(
        command, cwd=root, env=isolated_env(root, env),
        stdin=subprocess.DEVNULL, stdout=output_file, stderr=subprocess.STDOUT,
    )
    server = LabServer(process, port, token, root, output_path, output_file, base_url=base_url)
    return ready_or_stopped(server, ready_timeout)


def running_lab_server(root: Path, *args: str, **kwargs) -> contextlib.AbstractContextManager[LabServer]:
    return stopped_after(start_lab_server(root, *args, **kwargs))


@pytest.fixture(scope="module")
def scope_server_process(tmp_path_factory) -> Iterator[ScopeServer]:
    """``daydream-scope`` (open API) on a free loopback port, shared by one test module."""
    with running_scope_server(tmp_path_factory.mktemp("scope-server")) as server:
        yield server


@pytest.fixture(scope="module")
def lab_server_process(tmp_path_factory) -> Iterator[LabServer]:
    """``jupyter lab`` with the Scope extension below a non-root base URL, for one test module."""
    with running_lab_server(tmp_path_factory.mktemp("lab-server"), base_url="/lab-base/") as server:
        yield server
