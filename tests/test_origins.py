"""Browser origins on the open Scope API: foreign pages are refused, local ones served.

Before this policy every open-API answer carried ``Access-Control-Allow-Origin: *`` and every
preflight echoed the requested headers, so any web page could load pipelines, upload files, list
and delete sessions and read the log. Each test here talks to a real ``daydream-scope`` (or
``jupyter lab``) on 127.0.0.1.
"""

from __future__ import annotations

import http.client

import re
from pathlib import Path

import httpx
import pytest

from scope.server_ext.routes import HANDLERS
from tests._subprocess_server import ScopeServer, running_scope_server
from tests.servers import running_lab_server

FOREIGN = "https://evil.example"
JSON = {"Content-Type": "application/json"}
SERVER_DOC = Path(__file__).resolve().parent.parent / "docs" / "server.md"


def assert_origin_refused(response: httpx.Response, origin: str = FOREIGN) -> None:
    """403 whose JSON names the origin and the flag, readable by that page."""
    assert response.status_code == 403, response.text
    detail = response.json()["detail"]
    assert f"Origin {origin} is not allowed" in detail, detail
    assert f"--allow-origin {origin}" in detail and "ScopeApp.allowed_origins" in detail, detail
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert "Origin" in response.headers.get("Vary", "")
    assert "Access-Control-Allow-Credentials" not in response.headers


def assert_admitted(response: httpx.Response, origin: str, allow_origin: str | None = None) -> None:
    assert response.status_code < 400, response.text
    assert response.headers["Access-Control-Allow-Origin"] == (allow_origin or origin)
    assert "Origin" in response.headers.get("Vary", "")
    assert "Access-Control-Allow-Credentials" not in response.headers


def preflight(client: httpx.Client, path: str, method: str, origin: str, headers: str = "content-type") -> httpx.Response:
    return client.options(path, headers={
        "Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers,
    })


def concrete_path(openapi_path: str) -> str:
    """A request path for an OpenAPI path (its parameters filled with harmless values)."""
    return re.sub(r"\{[^}]+\}", "x1", openapi_path)


def operations():
    """(handler, method, operation) for every operation the server mounts."""
    return [(h, m, op) for h in HANDLERS for m, op in h.operations.items()]


def documented_null_table() -> set[tuple[str, str]]:
    text = SERVER_DOC.read_text()
    table = text.split("<!-- null-origin-table")[1].split("<!-- end null-origin-table -->")[0]
    rows = re.findall(r"^\| `([^`]+)` \| ([A-Z, ]+) \|$", table, re.M)
    return {(path, method.strip().lower()) for path, methods in rows for method in methods.split(",")}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> ScopeServer:
    """Default settings: the default allow-list, ``null`` on its endpoints."""
    with running_scope_server(tmp_path_factory.mktemp("origins")) as running:
        yield running


@pytest.fixture
def client(server):
    with server.client() as http:
        yield http


# -- foreign origins ---------------------------------------------------------------------------


def test_foreign_origin_cannot_list_or_delete_sessions_or_read_the_log(client):
    for response in (
        client.get("/api/v1/webrtc/sessions", headers={"Origin": FOREIGN}),
        client.delete("/api/v1/webrtc/sessions/abc-123", headers={"Origin": FOREIGN}),
        client.get("/api/v1/logs/current", headers={"Origin": FOREIGN}),
        client.get("/health", headers={"Origin": FOREIGN}),
    ):
        assert_origin_refused(response)
    assert client.get("/api/v1/logs/current").status_code == 200  # no Origin: not a page


def test_foreign_origin_cannot_load_a_pipeline(client):
    response = client.post("/api/v1/pipeline/load", json={"pipeline_id": "passthrough"}, headers={"Origin": FOREIGN})
    assert_origin_refused(response)
    assert client.get("/api/v1/pipeline/status").json()["status"] == "not_loaded"


def test_foreign_origin_cannot_upload(server):
    """Refused before the body is stored; the body is drained, so even http.client reads the 403."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request(
            "POST", "/api/v1/assets?filename=x.png", body=b"\x89PNG" + b"0" * (8 << 20),
            headers={"Origin": FOREIGN, "Content-Type": "application/octet-stream"},
        )
        reply = connection.getresponse()
        response = httpx.Response(reply.status, headers=reply.getheaders(), content=reply.read())
    finally:
        connection.close()
    assert_origin_refused(response)
    assert list((server.root / "assets").iterdir()) == []


def test_foreign_preflight_is_refused(client):
    assert_origin_refused(preflight(client, "/api/v1/pipeline/load", "POST", FOREIGN))
    assert_origin_refused(preflight(client, "/api/v1/webrtc/sessions/abc", "DELETE", FOREIGN))


def test_a_cross_site_form_is_refused_by_its_origin(client):
    response = client.post("/api/v1/pipeline/load", data={"pipeline_id": "passthrough"}, headers={"Origin": FOREIGN})
    assert_origin_refused(response)


def test_forged_host_is_refused_even_with_a_matching_origin(client):
    """DNS rebinding: the page's origin is the forged name; Jupyter's host check answers first."""
    response = client.get("/api/v1/webrtc/sessions", headers={"Host": "rebound.example", "Origin": "http://rebound.example"})
    assert response.status_code == 403
    assert "Access-Control-Allow-Origin" not in response.headers


# -- admitted origins --------------------------------------------------------------------------


@pytest.mark.parametrize("origin", [
    "http://localhost:5173", "https://localhost", "http://127.0.0.1:8888", "http://127.3.4.5:1",
    "http://[::1]:8888", "vscode-webview://1b2c3d4e",
])
def test_local_origins_are_admitted_everywhere_with_the_origin_echoed(client, origin):
    assert_admitted(client.get("/api/v1/webrtc/sessions", headers={"Origin": origin}), origin)
    assert_admitted(client.get("/api/v1/logs/current", headers={"Origin": origin}), origin)
    response = preflight(client, "/api/v1/webrtc/sessions/abc", "DELETE", origin)
    assert response.status_code == 204
    assert_admitted(response, origin)


def test_own_origin_is_admitted(server, client):
    assert_admitted(client.get("/api/v1/webrtc/sessions", headers={"Origin": server.url}), server.url)


def test_no_origin_gets_no_cors_header(client):
    response = client.get("/api/v1/webrtc/sessions")
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers


def test_preflight_allows_only_the_endpoints_methods_and_content_type(client):
    response = preflight(client, "/api/v1/webrtc/offer/abc", "PATCH", "http://localhost:3000", "content-type, x-evil")
    assert response.status_code == 204
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert methods == {"PATCH", "OPTIONS"}
    assert response.headers["Access-Control-Allow-Headers"].lower() == "content-type"
    assert response.headers["Access-Control-Expose-Headers"] == "Content-Disposition"
    response = preflight(client, "/api/v1/assets", "POST", "null")
    assert {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")} == {"GET", "POST", "OPTIONS"}


def test_static_page_files_stay_public(client):
    response = client.get("/scope/widget.js", headers={"Origin": FOREIGN})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"


# -- null: a page opened from a file, or a sandboxed iframe ---------------------------------------


@pytest.mark.parametrize("handler,method,op", operations(), ids=lambda v: getattr(v, "__name__", str(v)))
def test_null_is_admitted_exactly_on_its_endpoints(client, handler, method, op):
    response = preflight(client, concrete_path(handler.openapi_path), method.upper(), "null")
    if op.null_origin:
        assert response.status_code == 204, response.text
        assert_admitted(response, "null")
    else:
        assert response.status_code == 403, response.text
        assert "Origin null is not allowed" in response.json()["detail"]
        assert response.headers["Access-Control-Allow-Origin"] == "null"


def test_null_requests_on_and_off_its_list(server, client):
    null = {"Origin": "null"}
    assert_admitted(client.get("/api/v1/pipeline/status", headers=null), "null")
    assert_admitted(client.get("/api/v1/webrtc/ice-servers", headers=null), "null")
    uploaded = client.post("/api/v1/assets", params={"filename": "ref.png"}, content=b"\x89PNG-bytes",
                           headers={**null, "Content-Type": "application/octet-stream"})
    assert_admitted(uploaded, "null")
    assert_admitted(client.get("/api/v1/assets/ref.png", headers=null), "null")
    for refused in (
        client.get("/api/v1/webrtc/sessions", headers=null),
        client.delete("/api/v1/webrtc/sessions/abc", headers=null),
        client.get("/api/v1/logs/current", headers=null),
        client.get("/api/v1/models/status", params={"pipeline_id": "passthrough"}, headers=null),
        client.post("/api/v1/models/download", json={"pipeline_id": "passthrough"}, headers=null),
        client.post("/api/v1/pipeline/unload", json={}, headers=null),
        client.get("/api/v1/lora/list", headers=null),
        client.get("/openapi.json", headers=null),
    ):
        assert refused.status_code == 403, refused.text
        assert "--allow-origin" not in refused.json()["detail"]  # no flag admits null there
    (server.root / "assets" / "ref.png").unlink()


def test_null_list_is_the_same_in_handlers_openapi_and_docs(client):
    declared = {(h.openapi_path, m) for h, m, op in operations() if op.null_origin}
    document = client.get("/openapi.json").json()["paths"]
    published = {(path, m) for path, item in document.items() for m, op in item.items() if op["x-scope-null-origin"]}
    assert published == declared
    assert documented_null_table() == declared
    assert all("x-scope-null-origin" in op for item in document.values() for op in item.values())


# -- settings ----------------------------------------------------------------------------------


def test_allow_origin_flag_admits_listed_origins_and_null_can_be_dropped(tmp_path):
    env = {"DAYDREAM_SCOPE_ALLOW_NULL_ORIGIN": "0"}
    with running_scope_server(tmp_path, "--allow-origin", "https://x.example", "--allow-origin", "https://y.example:8443",
                              env=env) as server, server.client() as client:
        for origin in ("https://x.example", "https://y.example:8443"):
            assert_admitted(client.get("/api/v1/webrtc/sessions", headers={"Origin": origin}), origin)
            response = preflight(client, "/api/v1/pipeline/load", "POST", origin)
            assert response.status_code == 204
            assert_admitted(response, origin)
        assert_origin_refused(client.get("/api/v1/webrtc/sessions", headers={"Origin": "https://z.example"}), "https://z.example")
        refused = client.get("/health", headers={"Origin": "null"})
        assert refused.status_code == 403 and "allow_null_origin" in refused.json()["detail"]
        assert preflight(client, "/api/v1/webrtc/offer", "POST", "null").status_code == 403
    assert "admits every web origin" not in server.output()


def test_allowed_origins_from_the_environment(tmp_path):
    env = {"DAYDREAM_SCOPE_ALLOWED_ORIGINS": "https://a.example, https://b.example"}
    with running_scope_server(tmp_path, env=env) as server, server.client() as client:
        assert_admitted(client.get("/health", headers={"Origin": "https://b.example"}), "https://b.example")
        assert_origin_refused(client.get("/health", headers={"Origin": FOREIGN}))


def test_star_admits_every_origin_and_warns(tmp_path):
    with running_scope_server(tmp_path, "--allow-origin", "*") as server, server.client() as client:
        out = server.wait_for_output("admits every web origin")
        response = client.get("/api/v1/webrtc/sessions", headers={"Origin": FOREIGN})
        assert_admitted(response, FOREIGN, allow_origin="*")
        assert_admitted(client.get("/api/v1/logs/current", headers={"Origin": "null"}), "null", allow_origin="*")
    assert any(line.startswith("[W ") and "'*'" in line for line in out.splitlines()), out


def test_own_origin_under_another_host_name(tmp_path):
    """A server reached by a name Jupyter admits (local_hostnames): pages it serves are admitted."""
    with running_scope_server(tmp_path, "--ServerApp.local_hostnames=['localhost', 'scope.test']") as server, \
            server.client() as client:
        host = f"scope.test:{server.port}"
        admitted = client.get("/api/v1/webrtc/sessions", headers={"Host": host, "Origin": f"http://{host}"})
        assert_admitted(admitted, f"http://{host}")
        other = f"http://other.test:{server.port}"
        assert_origin_refused(client.get("/api/v1/webrtc/sessions", headers={"Host": host, "Origin": other}), other)
        assert client.get("/health", headers={"Host": f"other.test:{server.port}"}).status_code == 403


# -- under jupyter lab -------------------------------------------------------------------------


def test_lab_with_open_api_applies_the_same_policy_and_closed_lab_needs_the_token(tmp_path, lab_server_process):
    with running_lab_server(tmp_path / "open", "--ScopeApp.open_api=True") as lab, \
            httpx.Client(base_url=lab.url, trust_env=False, timeout=15) as client:
        assert_origin_refused(client.get("api/v1/webrtc/sessions", headers={"Origin": FOREIGN}))
        assert_origin_refused(client.post("api/v1/pipeline/load", json={"pipeline_id": "passthrough"},
                                          headers={"Origin": FOREIGN}))
        assert client.get("api/v1/pipeline/status").json()["status"] == "not_loaded"
        assert client.get("api/v1/webrtc/sessions", headers={"Origin": "null"}).status_code == 403
        assert_admitted(client.get("api/v1/pipeline/status", headers={"Origin": "null"}), "null")
        assert_admitted(client.get("api/v1/webrtc/sessions", headers={"Origin": "http://localhost:1234"}),
                        "http://localhost:1234")
        assert client.get("api/kernels", headers={"Origin": "http://localhost:1234"}).status_code in (403, 404)
    lab = lab_server_process  # closed, as a Lab is by default
    with httpx.Client(base_url=lab.url, trust_env=False, timeout=15) as client:
        for origin in ("http://localhost:1234", "null", FOREIGN):
            denied = client.get("api/v1/webrtc/sessions", headers={"Origin": origin})
            assert denied.status_code in (403, 404), denied.text  # Jupyter's auth, as before
            assert denied.headers.get("Access-Control-Allow-Origin") in (None, "")
        authed = client.get("api/v1/webrtc/sessions", headers={"Authorization": f"token {lab.token}"})
        assert authed.status_code == 200, authed.text
