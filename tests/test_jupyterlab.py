"""Under a real ``jupyter lab``, the Scope endpoints serve at the same paths below its base URL."""

from __future__ import annotations

import httpx
import pytest

from tests._subprocess_server import TEST_TOKEN
from tests.polling import wait_until_sync

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(lab_server_process) -> str:
    return lab_server_process.url


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
        wait_until_sync(lambda s: s["status"] == "loaded", 60, "passthrough loaded under Lab",
                        value=lambda: client.get(lab + "api/v1/pipeline/status").json())
        assert client.get(lab + "openapi.json").json()["info"]["title"] == "Scope"


def test_scope_endpoints_follow_jupyter_auth_under_lab(lab):
    with httpx.Client(timeout=15, trust_env=False) as anonymous:
        assert anonymous.get(lab + "health").status_code == 403
        denied = anonymous.post(lab + "api/v1/pipeline/load", json={"pipeline_id": "passthrough"})
        assert denied.status_code == 403
        assert "Access-Control-Allow-Origin" not in denied.headers
        assert anonymous.get(lab + "api/v1/pipeline/status", headers={"Origin": "null"}).status_code in (403, 404)
