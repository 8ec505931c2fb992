"""Under a real ``jupyter lab``, the Scope endpoints serve at the same paths below its base URL."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from tests._subprocess_server import TEST_TOKEN, free_port, isolated_env

pytestmark = pytest.mark.slow
BASE = "/lab-base/"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    port = free_port()
    env = isolated_env(root)
    log = (root / "lab.out").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.base_url={BASE}", f"--IdentityProvider.token={TEST_TOKEN}",
         "--ServerApp.allow_root=True", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}"],
        cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}{BASE}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (root / "lab.out").read_text()
            try:
                if httpx.get(url + "api/status", params={"token": TEST_TOKEN}, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (root / "lab.out").read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def authed(**kwargs) -> httpx.Client:
    return httpx.Client(headers={"Authorization": f"token {TEST_TOKEN}"}, timeout=15, trust_env=False, **kwargs)


def test_scope_endpoints_under_the_lab_base_url(lab):
    with authed() as client:
        assert client.get(lab + "health").json()["status"] == "healthy"
        schemas = client.get(lab + "api/v1/pipelines/schemas").json()["pipelines"]
        assert "passthrough" in schemas
        assert client.get(lab + "lab").status_code == 200, "JupyterLab itself still serves"
        reply = client.post(lab + "api/v1/pipeline/load", json={"pipeline_id": "passthrough"})
        assert reply.status_code == 200
        deadline = time.monotonic() + 20
        while client.get(lab + "api/v1/pipeline/status").json()["status"] != "loaded":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.get(lab + "openapi.json").json()["info"]["title"] == "Scope"


def test_scope_endpoints_follow_jupyter_auth_under_lab(lab):
    with httpx.Client(timeout=15, trust_env=False) as anonymous:
        assert anonymous.get(lab + "health").status_code == 403
        denied = anonymous.post(lab + "api/v1/pipeline/load", json={"pipeline_id": "passthrough"})
        assert denied.status_code == 403
        assert "Access-Control-Allow-Origin" not in denied.headers
        assert anonymous.get(lab + "api/v1/pipeline/status", headers={"Origin": "null"}).status_code in (403, 404)
