"""Upload limits against a real ``daydream-scope``: names, the assets quota, temp files, and a 413
that every client reads.

The module's server runs with a small assets quota (8 MiB) so the quota can be reached cheaply;
the upload cap (50 MiB) is checked before the quota, so the 413 tests are unaffected by it.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import requests
from playwright import sync_api

from tests._subprocess_server import ScopeServer, running_scope_server
from tests.chromium import launch_chromium
from tests.polling import wait_until_sync
from tests.subprocess_only import jp_asyncio_loop, jp_server_cleanup  # noqa: F401  (autouse fixtures)

MIB = 1024 * 1024
QUOTA = 8 * MIB
MAX_UPLOAD = 50 * MIB
#: Over the 50 MiB cap, within the 200 MiB the server reads and drops after its 413.
OVERSIZED = 60 * MIB
TOO_LARGE = {"detail": "File size exceeds maximum of 50MB"}
OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> ScopeServer:
    root = tmp_path_factory.mktemp("upload-limits")
    with running_scope_server(root, f"--ScopeApp.assets_quota_bytes={QUOTA}") as scope_server:
        yield scope_server


@pytest.fixture
def assets(server: ScopeServer) -> Path:
    """The server's assets directory, emptied before each test."""
    root = server.root / "assets"
    for entry in root.iterdir():
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    return root


@pytest.fixture
def client(server: ScopeServer):
    with server.client(timeout=60.0) as http_client:
        yield http_client


def everything(root: Path) -> list[str]:
    """Every entry below ``root``, hidden ones (temp files) included."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def upload(client: httpx.Client, filename: str, data: bytes) -> httpx.Response:
    return client.post("/api/v1/assets", params={"filename": filename}, content=data, headers=OCTET)


# Raw HTTP: send the head (and as much body as wanted), read the answer while the body is unsent --


def open_upload(server: ScopeServer, filename: str, framing: str, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = (
        f"POST /api/v1/assets?filename={quote(filename, safe='')} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\nContent-Type: application/octet-stream\r\n{framing}\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def read_reply(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the answer on ``sock`` (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"connection closed before an answer: {data!r}"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        piece = sock.recv(65536)
        assert piece, "connection closed inside the answer"
        body += piece
    return int(lines[0].split()[1]), json.loads(body)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


# Names --------------------------------------------------------------------------------------


BAD_NAMES = {
    "256-bytes": "a" * 252 + ".png",
    "256-bytes-in-utf8": "\u00e9" * 126 + ".png",  # 130 characters, 256 bytes
    "nul": "a\x00b.png",
    "cr": "a\rb.png",
    "lf": "a\nb.png",
    "crlf-header-injection": "a.png\r\nX-Injected: 1",
    "c0-control": "a\x01b.png",
    "del": "a\x7fb.png",
    "c1-control": "a\x85b.png",
}


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_bad_upload_names_are_400_naming_the_field_and_leave_nothing(server, assets, client, name):
    reply = upload(client, name, b"\x89PNG" + b"\0" * 100_000)
    assert reply.status_code == 400, reply.text
    assert "filename" in reply.json()["detail"]
    assert everything(assets) == []  # no temp file, no renamed file (NUL once became "a b.png")


@pytest.mark.parametrize("name", ["a" * 300 + ".png", "a\x00b.png"], ids=["overlong", "nul"])
def test_bad_upload_names_are_refused_before_the_body_is_read(server, assets, name):
    sock = open_upload(server, name, f"Content-Length: {4 * MIB}\r\n")  # no body byte sent
    try:
        status, body = read_reply(sock)
    finally:
        sock.close()
    assert status == 400
    assert "filename" in body["detail"]
    assert everything(assets) == []


def test_a_name_of_exactly_255_bytes_is_accepted(assets, client):
    name = "\u00e9" * 125 + "a.png"  # 250 + 5 bytes
    assert len(name.encode()) == 255
    reply = upload(client, name, b"ok")
    assert reply.status_code == 200, reply.text
    assert everything(assets) == [name]


# Temp files ---------------------------------------------------------------------------------


def test_hidden_files_and_temp_files_are_never_listed_nor_served(server, assets, client):
    (assets / ".upload-left0ver").write_bytes(b"\x89PNG stale upload")
    (assets / ".secret.png").write_bytes(b"\x89PNG")
    (assets / ".hidden").mkdir()
    (assets / ".hidden" / "x.png").write_bytes(b"\x89PNG")
    (assets / "shown.png").write_bytes(b"\x89PNG")
    for path in (".upload-left0ver", ".secret.png", ".hidden/x.png", "sub/../.secret.png"):
        reply = client.get(f"/api/v1/assets/{path}")
        assert reply.status_code == 404, (path, reply.status_code, reply.text)
        assert reply.json() == {"detail": "Asset not found"}
    listed = client.get("/api/v1/assets").json()["assets"]
    assert [asset["name"] for asset in listed] == ["shown"]


def test_an_upload_in_progress_is_neither_listed_nor_served_and_vanishes_with_its_client(server, assets, client):
    sock = open_upload(server, "growing.png", f"Content-Length: {2 * MIB}\r\n", b"\x05" * 300_000)
    try:
        wait_until_sync(
            lambda: any(p.stat().st_size >= 300_000 for p in assets.glob(".upload-*")), what="temp file written"
        )
        (temp,) = assets.glob(".upload-*")
        assert client.get(f"/api/v1/assets/{temp.name}").status_code == 404
        assert client.get("/api/v1/assets").json()["assets"] == []
    finally:
        sock.close()
    wait_until_sync(lambda: everything(assets) == [], what="temp file removed after the client left")


def test_uploads_abandoned_by_a_dead_server_are_removed_at_start(tmp_path):
    """A server killed mid-upload leaves its temp file; the next start deletes it (old ones only)."""
    import os

    assets = tmp_path / "assets"
    assets.mkdir()
    abandoned, fresh = assets / ".upload-abandoned", assets / ".upload-in-flight"
    abandoned.write_bytes(b"x" * 1000)
    fresh.write_bytes(b"y" * 1000)
    two_hours_ago = time.time() - 7200
    os.utime(abandoned, (two_hours_ago, two_hours_ago))
    with running_scope_server(tmp_path):
        assert not abandoned.exists()
        assert fresh.exists()  # may belong to another server sharing the directory


def test_a_failed_rename_answers_json_and_leaves_no_temp_file(assets, client):
    (assets / "taken.png").mkdir()  # os.replace onto a folder fails
    reply = upload(client, "taken.png", b"\x89PNG" * 1000)
    assert reply.status_code == 409, reply.text
    assert "filename" in reply.json()["detail"]
    assert everything(assets) == ["taken.png"]


# Quota --------------------------------------------------------------------------------------


def test_declared_length_over_the_quota_is_507_before_the_body_is_read(server, assets, client):
    (assets / "old.mp4").write_bytes(b"\0" * (5 * MIB))
    sock = open_upload(server, "new.mp4", f"Content-Length: {4 * MIB}\r\n")  # 5 + 4 > 8 MiB
    try:
        status, body = read_reply(sock)
    finally:
        sock.close()
    assert status == 507
    detail = body["detail"]
    assert "assets_quota_bytes" in detail and str(QUOTA) in detail and str(5 * MIB) in detail
    assert everything(assets) == ["old.mp4"]
    # What still fits is accepted.
    assert upload(client, "fits.mp4", b"\1" * (3 * MIB)).status_code == 200
    assert everything(assets) == ["fits.mp4", "old.mp4"]


def test_a_buffering_client_reads_the_507(server, assets, client):
    (assets / "old.mp4").write_bytes(b"\0" * (5 * MIB))
    reply = upload(client, "new.mp4", b"\2" * (4 * MIB))
    assert reply.status_code == 507, reply.text
    assert "quota" in reply.json()["detail"]
    wait_until_sync(lambda: everything(assets) == ["old.mp4"], what="nothing left behind")


def test_a_chunked_upload_crossing_the_quota_is_aborted_and_deleted(server, assets):
    (assets / "old.mp4").write_bytes(b"\0" * (5 * MIB))
    sock = open_upload(server, "stream.mp4", "Transfer-Encoding: chunked\r\n")
    try:
        sent = 0
        try:
            while sent < 6 * MIB:  # crosses the quota at 3 MiB
                sock.sendall(chunk(b"\3" * (256 * 1024)))
                sent += 256 * 1024
        except OSError:
            pass  # the server may stop reading once it answered
        status, body = read_reply(sock)
    finally:
        sock.close()
    assert status == 507
    assert "assets_quota_bytes" in body["detail"]
    wait_until_sync(lambda: everything(assets) == ["old.mp4"], what="the temp file deleted")


def test_parallel_uploads_cannot_together_exceed_the_quota(server, assets, client):
    first = open_upload(server, "first.mp4", f"Content-Length: {5 * MIB}\r\n", b"\4" * MIB)
    try:
        wait_until_sync(lambda: any(assets.glob(".upload-*")), what="first upload admitted")
        # 5 MiB are reserved although only 1 MiB is on disk: a second 5 MiB does not fit.
        second = open_upload(server, "second.mp4", f"Content-Length: {5 * MIB}\r\n")
        try:
            status, body = read_reply(second)
        finally:
            second.close()
        assert status == 507, body
        # Nor does a chunked one that grows past what is left.
        reply = client.post(
            "/api/v1/assets", params={"filename": "third.mp4"}, headers=OCTET,
            content=iter([b"\6" * MIB] * 5),
        )
        assert reply.status_code == 507, reply.text
        first.sendall(b"\4" * (4 * MIB))
        status, body = read_reply(first)
        assert status == 200, body
    finally:
        first.close()
    assert everything(assets) == ["first.mp4"]
    assert (assets / "first.mp4").stat().st_size == 5 * MIB


def test_a_client_leaving_frees_its_reservation(server, assets, client):
    sock = open_upload(server, "gone.mp4", f"Content-Length: {7 * MIB}\r\n", b"\7" * 1000)
    wait_until_sync(lambda: any(assets.glob(".upload-*")), what="upload admitted")
    sock.close()
    wait_until_sync(lambda: everything(assets) == [], what="temp file removed")
    reply = upload(client, "after.mp4", b"\x08" * (7 * MIB))
    assert reply.status_code == 200, reply.text


# A 413 every client reads -------------------------------------------------------------------


def _report(label: str, seconds: list[float]) -> None:
    shown = ", ".join(f"{s:.2f}" for s in seconds)
    print(f"\n413 for {OVERSIZED // MIB} MiB with Content-Length, {label}: {shown} s")


@pytest.fixture(scope="module")
def oversized() -> bytes:
    return b"\x09" * OVERSIZED


def test_http_client_reads_the_413(server, assets, oversized):
    took = []
    for _ in range(5):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        started = time.monotonic()
        try:
            connection.request("POST", "/api/v1/assets?filename=big.png", body=oversized, headers=OCTET)
            reply = connection.getresponse()
            status, body = reply.status, json.loads(reply.read())
        finally:
            connection.close()
        took.append(time.monotonic() - started)
        assert (status, body) == (413, TOO_LARGE)
    _report("http.client", took)
    assert everything(assets) == []


def test_requests_reads_the_413(server, assets, oversized):
    took = []
    with requests.Session() as session:
        session.trust_env = False
        for _ in range(5):
            started = time.monotonic()
            reply = session.post(f"{server.url}/api/v1/assets", params={"filename": "big.png"},
                                 data=oversized, headers=OCTET, timeout=60)
            took.append(time.monotonic() - started)
            assert reply.status_code == 413
            assert reply.json() == TOO_LARGE
    _report("requests", took)
    assert everything(assets) == []


def test_httpx_reads_the_413(server, assets, client, oversized):
    took = []
    for _ in range(2):
        started = time.monotonic()
        reply = upload(client, "big.png", oversized)
        took.append(time.monotonic() - started)
        assert reply.status_code == 413
        assert reply.json() == TOO_LARGE
    _report("httpx", took)
    assert everything(assets) == []


def test_curl_reads_the_413(server, assets, oversized, tmp_path):
    assert shutil.which("curl"), "curl is missing: .ci/run installs it (apt-get install curl)"
    body_file = tmp_path / "big.bin"
    body_file.write_bytes(oversized)
    took = []
    for expect in ("", "Expect:"):  # curl's default Expect: 100-continue, and without it
        started = time.monotonic()
        run = subprocess.run(
            ["curl", "-sS", "--noproxy", "*", "-o", "-", "-w", "\n%{http_code}",
             "-H", "Content-Type: application/octet-stream", *(["-H", expect] if expect else []),
             "--data-binary", f"@{body_file}",
             f"{server.url}/api/v1/assets?filename=big.png"],
            capture_output=True, text=True, timeout=120,
        )
        took.append(time.monotonic() - started)
        body, _, code = run.stdout.rpartition("\n")
        assert code == "413", (run.returncode, run.stdout[-500:], run.stderr[-500:])
        assert json.loads(body) == TOO_LARGE
    _report("curl (with, without Expect: 100-continue)", took)
    assert everything(assets) == []


@pytest.mark.browser
def test_chromium_fetch_reads_the_413(server, assets):
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/scope/")  # same origin: no CORS question
            outcome = page.evaluate(
                """async (size) => {
                    const started = performance.now();
                    const reply = await fetch("/api/v1/assets?filename=big.png", {
                        method: "POST", body: new Uint8Array(size),
                        headers: {"Content-Type": "application/octet-stream"},
                    });
                    return {status: reply.status, body: await reply.json(), ms: performance.now() - started};
                }""",
                OVERSIZED,
            )
        finally:
            browser.close()
    assert outcome["status"] == 413
    assert outcome["body"] == TOO_LARGE
    _report("Chromium fetch", [outcome["ms"] / 1000])
    assert everything(assets) == []
