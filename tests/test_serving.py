"""``scope.serve()``: find a Scope server, or start ``daydream-scope`` and stop it again."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

import httpx
import pytest

import scope
from scope import serving
from scope.client import ScopeClient
from tests._subprocess_server import free_port, isolated_env, running_scope_server


@pytest.fixture
def environment(tmp_path, monkeypatch):
    """This process's environment as a test server's (own directories): a started server inherits it."""
    env = isolated_env(tmp_path)
    for key in set(os.environ) - set(env):
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield tmp_path
    serving.stop()


@pytest.mark.slow
def test_serve_starts_a_server_once_and_stop_ends_it(environment, monkeypatch):
    port = free_port()
    monkeypatch.setenv("DAYDREAM_SCOPE_URL", f"http://localhost:{port}")
    served = scope.serve(timeout=90)
    assert served == f"http://127.0.0.1:{port}/"
    started = serving._started[served]
    assert scope.serve() == served and list(serving._started.values()) == [started], "a second call starts nothing"
    assert started.log_path == environment / "logs" / f"daydream-scope-{port}.out"

    with ScopeClient(served) as client:
        assert client.health().status == "healthy"
        client.load_pipeline("longlive", {"height": 64, "width": 64})  # --synthetic: weights are written
        assert client.wait_for_pipeline("loaded", timeout=90).synthetic is True

    serving.stop()
    assert started.process.returncode is not None and serving._started == {}
    with pytest.raises(httpx.TransportError), httpx.Client(trust_env=False, timeout=5) as plain:
        plain.get(served + "health")


def test_serve_returns_a_running_server_and_starts_nothing(environment, monkeypatch):
    with running_scope_server(environment / "running") as server:
        assert scope.serve(server.url) == server.url + "/"
        monkeypatch.setenv("DAYDREAM_SCOPE_URL", server.url)
        assert scope.serve() == server.url + "/"
    assert serving._started == {}


@pytest.mark.slow
def test_serve_says_why_a_server_could_not_start(environment):
    with socket.socket() as squatter:  # listens, never answers: not a Scope server
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        url = f"http://127.0.0.1:{squatter.getsockname()[1]}/"
        with pytest.raises(serving.ServeError) as failed:
            scope.serve(url, timeout=60)
    message = str(failed.value)
    assert "exited" in message and f"port {url.split(':')[-1].rstrip('/')} is in use" in message, message
    assert serving._started == {}


def test_serve_starts_nothing_for_another_machine(environment):
    with pytest.raises(serving.ServeError, match="only be started on this machine"):
        scope.serve("http://192.0.2.1:8000/", timeout=5)


@pytest.fixture
def scope_open_api() -> bool:
    return False  # the in-process server below follows Jupyter's auth: its token is needed


CHILD = """
import json
from scope import serving
info = serving.parent_jupyter_server()
url = serving.serve(timeout=5)
print(json.dumps({"parent": info and info["url"], "served": url, "started": len(serving._started)}))
"""


async def test_a_kernel_finds_the_jupyter_server_that_launched_it(jp_serverapp, scope_url):
    """A child of this process stands in for a kernel: this process runs a Jupyter server with Scope."""
    env = {key: value for key, value in os.environ.items() if key != "DAYDREAM_SCOPE_URL"}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 0, err.decode()
    found = json.loads(out)
    assert found["parent"].endswith(jp_serverapp.base_url) and found["started"] == 0
    assert found["served"] == scope_url
