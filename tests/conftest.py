"""Shared fixtures: an in-process Jupyter server with the Scope extension, and API helpers."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import pytest
import tornado.testing
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from scope.pipelines import registry
from scope.streaming import host_addresses
from tests.pipelines import TEST_PIPELINES, PatternPipeline
from tests.polling import wait_until

pytest_plugins = ["pytest_jupyter.jupyter_server", "tests.fakehub", "tests.servers", "tests.skips"]

#: Every peer of the test run (in-process servers, aiortc clients, and through the environment,
#: subprocess servers and notebook kernels) gathers loopback candidates only.
os.environ[host_addresses.ENV_VAR] = "127.0.0.1"
host_addresses.install_from_env()


@pytest.fixture
def http_server_port():
    """The in-process Jupyter server's socket: on loopback, whatever pytest-jupyter defaults to."""
    return tornado.testing.bind_unused_port(address="127.0.0.1")


@pytest.fixture
def scope_dirs(tmp_path):
    dirs = {name: tmp_path / name for name in ("models", "assets", "lora", "logs")}
    for path in dirs.values():
        path.mkdir()
    return dirs


@pytest.fixture
def scope_open_api() -> bool:
    """Override (or parametrize) to run a test with Jupyter's auth on the Scope endpoints."""
    return True


@pytest.fixture
def scope_extra_config() -> dict[str, Any]:
    return {}


@pytest.fixture
def jp_server_config(scope_dirs, scope_open_api, scope_extra_config):
    return {
        "ServerApp": {
            "jpserver_extensions": {"scope.server_ext": True},
            "reraise_server_extension_failures": True,
        },
        "ScopeApp": {
            "models_dir": str(scope_dirs["models"]),
            "assets_dir": str(scope_dirs["assets"]),
            "lora_dir": str(scope_dirs["lora"]),
            "logs_dir": str(scope_dirs["logs"]),
            "open_api": scope_open_api,
            **scope_extra_config,
        },
    }


@pytest.fixture
def test_pipelines():
    """Register the test-only pipelines for one test."""
    PatternPipeline.loads = 0
    PatternPipeline.streams = []
    PatternPipeline.gate = None
    for cls in TEST_PIPELINES:
        registry.register(cls)
    yield
    for cls in TEST_PIPELINES:
        registry.unregister(cls.info.id)
    PatternPipeline.gate = None


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@pytest.fixture
def scope_url(jp_serverapp, http_server, jp_base_url, jp_http_port) -> str:
    """Base URL of the running server (ends with '/')."""
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url}"


@pytest.fixture
def services(jp_serverapp):
    return jp_serverapp.web_app.settings["scope"]


@pytest.fixture
def api(scope_url):
    """``await api(method, path, json=..., body=..., headers=...)`` -> Reply (never raises on 4xx)."""
    async def call(method: str, path: str, json_body: Any = None, body: bytes | str | None = None,
                   headers: dict[str, str] | None = None, timeout: float = 30) -> Reply:
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body)
            headers.setdefault("Content-Type", "application/json")
        if body is None and method in ("POST", "PATCH", "PUT"):
            body = b""
            headers.setdefault("Content-Type", "application/json")
        request = HTTPRequest(
            scope_url + path.lstrip("/"), method=method, body=body, headers=headers,
            request_timeout=timeout, allow_nonstandard_methods=True, follow_redirects=False,
        )
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
        if response.code == 599:
            raise response.error
        return Reply(response.code, response.headers, response.body or b"")

    return call


async def wait_for_status(api, wanted: str, timeout: float = 60.0) -> dict:
    """The pipeline status, once it reads ``wanted``."""

    async def read() -> dict:
        return (await api("GET", "api/v1/pipeline/status")).json

    return await wait_until(lambda s: s["status"] == wanted, timeout, f"pipeline status {wanted!r}", value=read)


#: The pipelines whose synthetic weights :func:`synthetic_models` holds.
SYNTHETIC_PIPELINES = ("longlive", "reward-forcing", "memflow", "streamdiffusionv2", "krea-realtime-video")


@pytest.fixture(scope="session")
def synthetic_models(tmp_path_factory):
    """A models directory holding synthetic weights of the causal Wan pipelines, written once per run.

    Tests only read it; a test that writes into a models directory uses its own.
    """
    from scope.models.artifacts import PIPELINE_ARTIFACTS
    from scope.models.synthetic.writer import write_synthetic

    root = tmp_path_factory.mktemp("synthetic-models")
    for pipeline_id in SYNTHETIC_PIPELINES:
        write_synthetic(root, PIPELINE_ARTIFACTS[pipeline_id])
    return root


@pytest.fixture
def one_thread():
    """The runs' figures are not under test: one thread keeps them short when the cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
