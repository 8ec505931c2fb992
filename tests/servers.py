"""Real server processes for tests that drive a browser (or any outside client) against them.

``daydream-scope`` is started by :mod:`tests._subprocess_server` (free loopback port, temporary
directories, a known token, bounded waits). This module adds the same for ``jupyter lab`` with
the Scope extension, plus fixtures for both (registered for every test in ``tests/conftest.py``):
a ``daydream-scope`` per module, and one Lab for the whole run.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
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
from tests.empty_pool import empty_pool

__all__ = [
    "TEST_TOKEN",
    "LabServer",
    "ScopeServer",
    "SHARED_LAB_NAME",
    "lab_server_process",
    "running_lab_server",
    "shared_lab_server",
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

    def reset(self) -> None:
        """Shut down every kernel and Scope session and unload every pipeline, for the next user."""
        headers = {"Authorization": f"token {self.token}"}
        with httpx.Client(base_url=self.url, headers=headers, trust_env=False, timeout=60) as client:
            for session in client.get("api/sessions").json():
                client.delete(f"api/sessions/{session['id']}")
            for kernel in client.get("api/kernels").json():
                client.delete(f"api/kernels/{kernel['id']}")
            for session in client.get("api/v1/webrtc/sessions").json()["sessions"]:
                client.delete(f"api/v1/webrtc/sessions/{session['id']}")
            empty_pool(client)



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


#: A second name the shared Lab answers to (Jupyter's host check), for pages on a non-local origin.
SHARED_LAB_NAME = "scope-lab.test"


@pytest.fixture(scope="session")
def shared_lab_server(tmp_path_factory, synthetic_models) -> Iterator[LabServer]:
    """One ``jupyter lab`` for the whole run (a Lab takes seconds to start).

    Scope's API closed (Jupyter's token, cookie and XSRF apply), below a non-root base URL, the
    app exposed to pages (widget tests drive notebooks), its models the synthetic ``longlive``
    weights (read only), answering to ``scope-lab.test`` too. Tests that need other settings
    start their own Lab.
    """
    names = f"--ServerApp.local_hostnames=['localhost', '{SHARED_LAB_NAME}']"
    env = {"DAYDREAM_SCOPE_MODELS_DIR": str(synthetic_models)}
    root = tmp_path_factory.mktemp("lab-server")
    with running_lab_server(root, names, "--LabApp.expose_app_in_browser=True", base_url="/lab-base/", env=env) as lab:
        yield lab


@pytest.fixture(scope="module")
def lab_server_process(shared_lab_server: LabServer) -> Iterator[LabServer]:
    """The shared Lab for one module; the module's kernels, streams and pipeline end with it."""
    yield shared_lab_server
    shared_lab_server.reset()
