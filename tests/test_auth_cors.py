"""Auth and CORS: the open Scope API of ``daydream-scope`` never opens Jupyter's own endpoints.

Two modes share the Scope handlers. *Open* (``daydream-scope``, or ``ScopeApp.open_api=True``):
no token, CORS for admitted origins (``tests/test_origins.py`` covers which), and form-style
bodies refused as the CSRF guard.
*Closed* (the default inside ``jupyter lab``): Jupyter's token or login cookie, XSRF on writes.
Kernels, contents and terminals keep Jupyter's auth in both modes.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from http.cookies import SimpleCookie

import httpx
import pytest

from tests._subprocess_server import ScopeServer, free_port, running_scope_server, start_scope_server

JSON = {"Content-Type": "application/json"}
FORM_TYPES = ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data")
#: An admitted page (a local dev server): the origin policy lets it through, the 415 still applies.
LOCAL_PAGE = "http://localhost:5173"


def form_request(client: httpx.Client, path: str, content_type: str) -> httpx.Request:
    """The request a cross-site HTML form (or a no-cors fetch) would send: no preflight."""
    fields = {"pipeline_id": "passthrough"}
    headers = {"Origin": LOCAL_PAGE}
    if content_type == "multipart/form-data":
        return client.build_request("POST", path, data=fields, files={"f": ("a.txt", b"x")}, headers=headers)
    if content_type == "text/plain":
        headers["Content-Type"] = "text/plain;charset=UTF-8"
        return client.build_request("POST", path, content=json.dumps(fields), headers=headers)
    return client.build_request("POST", path, data=fields, headers=headers)


def assert_detail(response: httpx.Response) -> None:
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"detail"}, body
    assert body["detail"], body


# -- daydream-scope in a subprocess: the open API ------------------------------------------


@pytest.fixture(scope="module")
def open_server(tmp_path_factory) -> ScopeServer:
    with running_scope_server(tmp_path_factory.mktemp("open-server")) as server:
        yield server


@pytest.fixture
def client(open_server):
    with open_server.client() as http:
        yield http


@pytest.mark.parametrize("origin", [None, "null", LOCAL_PAGE])
def test_scope_reads_answer_without_token_with_cors(client, origin):
    headers = {"Origin": origin} if origin else {}
    for path in ("/health", "/api/v1/pipeline/status"):
        response = client.get(path, headers=headers)
        assert response.status_code == 200, (path, response.text)
        assert response.headers.get("Access-Control-Allow-Origin") == origin
        assert "Access-Control-Allow-Credentials" not in response.headers
    assert client.get("/health", headers=headers).json()["status"] == "healthy"


def test_json_post_without_token_loads_passthrough(client):
    response = client.post(
        "/api/v1/pipeline/load", json={"pipeline_id": "passthrough"}, headers={"Origin": "null"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["Access-Control-Allow-Origin"] == "null"
    assert "message" in response.json()


def test_preflight_for_json_post(client):
    response = client.options(
        "/api/v1/pipeline/load",
        headers={
            "Origin": "null",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "null"
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert methods == {"POST", "OPTIONS"}
    assert response.headers["Access-Control-Allow-Headers"].lower() == "content-type"
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.parametrize("content_type", FORM_TYPES)
@pytest.mark.parametrize(
    "path",
    ["/api/v1/pipeline/load", "/api/v1/pipeline/unload", "/api/v1/models/download", "/api/v1/assets?filename=a.png"],
)
def test_form_style_posts_are_refused(client, open_server, content_type, path):
    """A cross-site form (no preflight) cannot change state on the open API."""
    before = client.get("/api/v1/pipeline/status").json()
    # Its own connection: an upload refused before its body is read ends the connection.
    with open_server.client() as fresh:
        request = form_request(fresh, path, content_type)
        assert request.headers["Content-Type"].startswith(content_type)
        response = fresh.send(request)
    assert response.status_code == 415, response.text
    assert_detail(response)
    assert response.headers["Access-Control-Allow-Origin"] == LOCAL_PAGE
    assert client.get("/api/v1/pipeline/status").json()["status"] == before["status"]
    assert client.get("/api/v1/assets").json()["assets"] == []


def test_body_without_content_type_is_refused(client):
    request = client.build_request("POST", "/api/v1/pipeline/load", content=b'{"pipeline_id": "passthrough"}',
                                   headers={"Origin": LOCAL_PAGE})
    request.headers.pop("Content-Type", None)
    assert client.send(request).status_code == 415


def test_errors_are_detail_json(client):
    page = {"Origin": LOCAL_PAGE}
    cases = [
        client.post("/api/v1/pipeline/load", content=b"{not json", headers={**JSON, **page}),
        client.post("/api/v1/pipeline/load", json={"pipeline_id": "no-such-pipeline"}, headers=page),
        client.get("/api/v1/assets/missing.png", headers=page),
    ]
    for response in cases:
        assert 400 <= response.status_code < 500, response.text
        assert_detail(response)
        assert response.headers["Access-Control-Allow-Origin"] == LOCAL_PAGE


def test_non_local_host_header_is_refused(client):
    """DNS rebinding: a loopback server only answers loopback host names."""
    response = client.get("/health", headers={"Host": "rebound.example"})
    assert response.status_code == 403


@pytest.mark.parametrize("origin", [None, "null"])
def test_kernels_still_need_the_token(client, open_server, origin):
    headers = {"Origin": origin} if origin else {}
    assert client.get("/api/kernels", headers=headers).status_code in (403, 404)
    if origin is None:
        assert client.get("/api/kernels").status_code == 403
    created = client.post("/api/kernels", json={"name": "python3"}, headers=headers)
    assert created.status_code in (403, 404), created.text
    authed = {"Authorization": f"token {open_server.token}"}
    assert client.get("/api/kernels", headers=authed).json() == []


def test_kernels_with_the_token(client, open_server):
    authed = {"Authorization": f"token {open_server.token}"}
    listed = client.get("/api/kernels", headers=authed)
    assert listed.status_code == 200 and listed.json() == []
    created = client.post("/api/kernels", json={}, headers={**authed, **JSON}, timeout=60)
    assert created.status_code == 201, created.text
    kernel_id = created.json()["id"]
    try:
        assert [k["id"] for k in client.get("/api/kernels", headers=authed).json()] == [kernel_id]
    finally:
        deleted = client.delete(f"/api/kernels/{kernel_id}", headers=authed, timeout=60)
        assert deleted.status_code == 204


def test_contents_and_terminals_need_the_token(client, open_server):
    authed = {"Authorization": f"token {open_server.token}"}
    assert client.get("/api/contents").status_code == 403
    assert client.get("/api/contents", headers=authed).status_code == 200
    new_file = client.post("/api/contents", json={"type": "file", "ext": ".py"}, headers={"Origin": "null"})
    assert new_file.status_code in (403, 404)
    assert client.put("/api/contents/x.py", json={"type": "file", "format": "text", "content": "1"}).status_code == 403
    assert not (open_server.root / "x.py").exists()
    # daydream-scope does not load the terminals extension; either way no terminal without the token.
    assert client.get("/api/terminals").status_code in (403, 404)
    assert client.post("/api/terminals", json={}).status_code in (403, 404)
    assert client.get("/api/terminals", headers=authed).status_code in (200, 404)


@pytest.mark.parametrize(
    "args,env",
    [
        pytest.param(["--ScopeApp.open_api=False"], {}, id="config"),
        pytest.param([], {"DAYDREAM_SCOPE_OPEN_API": "0"}, id="environment"),
    ],
)
def test_daydream_scope_can_be_closed(tmp_path, args, env):
    with running_scope_server(tmp_path, *args, env=env) as server, server.client() as client:
        denied = client.get("/health", headers={"Origin": "null"})
        assert denied.status_code in (403, 404)
        assert denied.headers.get("Access-Control-Allow-Origin") != "*"
        assert client.get("/health", headers={"Authorization": f"token {server.token}"}).status_code == 200
        assert client.get("/api/kernels").status_code == 403


def test_loopback_bind_prints_no_exposure_warning(tmp_path):
    with running_scope_server(tmp_path) as server:
        assert server.client().get("/health").status_code == 200
    assert "The Scope API is open" not in server.output()


def test_binding_all_interfaces_warns_that_the_api_is_open(tmp_path):
    server = start_scope_server(tmp_path, host="0.0.0.0", port=free_port("0.0.0.0"))
    try:
        out = server.wait_for_output("The Scope API is open")
        # Bound to every interface, but the test talks to it through loopback only.
        assert server.url.startswith("http://127.0.0.1:")
        assert server.client().get("/health").status_code == 200
    finally:
        server.stop()
    lines = [line for line in out.splitlines() if "The Scope API is open" in line]
    assert len(lines) == 1 and "0.0.0.0" in lines[0] and lines[0].startswith("[W "), out


# -- in-process Jupyter server: the closed (Lab) mode and ScopeApp.open_api ------------------


def _cookies(reply) -> dict[str, str]:
    jar = SimpleCookie()
    for header in reply.headers.get_list("Set-Cookie"):
        jar.load(header)
    return {name: morsel.value for name, morsel in jar.items()}


def _cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


async def _log_in(api, token: str) -> dict[str, str]:
    """Log in through Jupyter's login form, as a browser does; returns the cookies."""
    page = await api("GET", "login")
    assert page.status == 200
    cookies = _cookies(page)
    assert "_xsrf" in cookies
    form = urllib.parse.urlencode({"password": token, "_xsrf": cookies["_xsrf"]})
    login = await api(
        "POST", "login", body=form,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": _cookie_header(cookies)},
    )
    assert login.status == 302, login.body
    cookies.update(_cookies(login))
    assert any(re.match(r"username-127-0-0-1-\d+$", name) for name in cookies), cookies
    return cookies


class TestClosedUnderJupyterAuth:
    @pytest.fixture
    def scope_open_api(self) -> bool:
        return False

    async def test_scope_endpoints_need_the_token(self, api, jp_auth_header):
        for path in ("health", "api/v1/pipeline/status"):
            denied = await api("GET", path)
            assert denied.status == 403
            assert "detail" in denied.json
            assert denied.headers.get("Access-Control-Allow-Origin", "") == ""
            cross = await api("GET", path, headers={"Origin": "null"})
            assert cross.status in (403, 404)  # Jupyter blocks the foreign origin first
            assert cross.headers.get("Access-Control-Allow-Origin") != "*"
            allowed = await api("GET", path, headers=jp_auth_header)
            assert allowed.status == 200
            assert allowed.headers.get("Access-Control-Allow-Origin", "") == ""
            cross = await api("GET", path, headers={**jp_auth_header, "Origin": "null"})
            assert cross.headers.get("Access-Control-Allow-Origin") != "*"
        post = await api("POST", "api/v1/pipeline/load", json_body={"pipeline_id": "passthrough"})
        assert post.status == 403
        post = await api("POST", "api/v1/pipeline/load", json_body={"pipeline_id": "passthrough"},
                         headers=jp_auth_header)
        assert post.status == 200

    async def test_no_open_preflight(self, api):
        reply = await api("OPTIONS", "api/v1/pipeline/load", headers={
            "Origin": "https://page.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        })
        assert reply.headers.get("Access-Control-Allow-Origin") != "*"

    async def test_login_cookie_reads_and_writes_need_xsrf(self, api, jp_serverapp):
        cookies = await _log_in(api, jp_serverapp.identity_provider.token)
        login_only = {k: v for k, v in cookies.items() if k != "_xsrf"}

        read = await api("GET", "api/v1/pipeline/status", headers={"Cookie": _cookie_header(login_only)})
        assert read.status == 200 and read.json["status"] == "not_loaded"

        body = {"pipeline_id": "passthrough"}
        no_xsrf = await api("POST", "api/v1/pipeline/load", json_body=body,
                            headers={"Cookie": _cookie_header(login_only)})
        assert no_xsrf.status == 403
        assert "_xsrf" in no_xsrf.json["detail"]

        wrong = await api("POST", "api/v1/pipeline/load", json_body=body,
                          headers={"Cookie": _cookie_header(cookies), "X-XSRFToken": "2|00|00|0"})
        assert wrong.status == 403

        ok = await api("POST", "api/v1/pipeline/load", json_body=body,
                       headers={"Cookie": _cookie_header(cookies), "X-XSRFToken": cookies["_xsrf"]})
        assert ok.status == 200, ok.body
        assert ok.headers.get("Access-Control-Allow-Origin") != "*"

    async def test_form_body_with_cookie_is_refused(self, api, jp_serverapp):
        """A cross-site form carries the cookie but cannot know the XSRF token."""
        cookies = await _log_in(api, jp_serverapp.identity_provider.token)
        login_only = {k: v for k, v in cookies.items() if k != "_xsrf"}
        reply = await api("POST", "api/v1/pipeline/load", body="pipeline_id=passthrough",
                          headers={"Cookie": _cookie_header(login_only), "Origin": "https://evil.example",
                                   "Content-Type": "application/x-www-form-urlencoded"})
        assert reply.status in (403, 404)


class TestOpenApiOptionInsideJupyter:
    """``ScopeApp.open_api=True`` (the conftest default) is the documented switch for Lab."""

    async def test_scope_endpoints_open_kernels_closed(self, api, jp_serverapp):
        assert jp_serverapp.web_app.settings["scope"].settings.open_api is True
        health = await api("GET", "health", headers={"Origin": "null"})
        assert health.status == 200
        assert health.headers["Access-Control-Allow-Origin"] == "null"
        foreign = await api("GET", "health", headers={"Origin": "https://evil.example"})
        assert foreign.status == 403 and "--allow-origin https://evil.example" in foreign.json["detail"]
        load = await api("POST", "api/v1/pipeline/load", json_body={"pipeline_id": "passthrough"},
                         headers={"Origin": "null"})
        assert load.status == 200
        form = await api("POST", "api/v1/pipeline/load", body="pipeline_id=passthrough",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert form.status == 415
        assert (await api("GET", "api/kernels")).status == 403
        assert (await api("POST", "api/kernels", json_body={})).status in (403, 404)
        assert (await api("GET", "api/contents")).status == 403
