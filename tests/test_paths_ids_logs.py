"""Odd asset paths and session ids get JSON 4xx answers (never a 500 or Jupyter's HTML page), and
each server serves its own log, against real ``daydream-scope`` processes."""

from __future__ import annotations

import logging

import pytest

from scope.logs import ServerLog
from scope.paths import InvalidPath, PathOutside, resolve_inside
from tests._subprocess_server import ScopeServer, running_scope_server, start_scope_server
from tests.subprocess_only import jp_asyncio_loop, jp_server_cleanup  # noqa: F401  (autouse fixtures)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> ScopeServer:
    with running_scope_server(tmp_path_factory.mktemp("paths-ids")) as scope_server:
        yield scope_server


@pytest.fixture
def client(server):
    with server.client() as http_client:
        yield http_client


def assert_json_error(reply, statuses: tuple[int, ...]) -> str:
    assert reply.status_code in statuses, (reply.status_code, reply.text[:300])
    assert reply.headers["Content-Type"].startswith("application/json"), reply.text[:300]
    return reply.json()["detail"]


# Asset paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["a%00.png", "sub%00dir/a.png", "a" * 300 + ".png", "sub/" + "b" * 256 + "/a.png", "%C3%A9" * 128 + ".png"],
    ids=["nul", "nul-in-folder", "overlong-name", "overlong-folder", "overlong-in-utf8"],
)
def test_asset_paths_no_file_system_can_hold_are_400(client, path):
    detail = assert_json_error(client.get(f"/api/v1/assets/{path}"), (400,))
    assert "asset_path" in detail


def test_an_overlong_path_of_short_components_is_a_json_4xx(client):
    assert_json_error(client.get("/api/v1/assets/" + "a/" * 2100 + "x.png"), (400, 404))


def test_a_symlink_loop_is_a_json_4xx(server, client):
    assets = server.root / "assets"
    (assets / "loop.png").symlink_to(assets / "loop.png")
    try:
        assert_json_error(client.get("/api/v1/assets/loop.png"), (400, 404))
    finally:
        (assets / "loop.png").unlink()


def test_a_folder_named_like_an_asset_is_404_not_500(server, client):
    """Serving opens only regular files (the suite runs as root, so unreadable files are not testable)."""
    target = server.root / "assets" / "folder.png"
    target.mkdir()
    try:
        assert_json_error(client.get("/api/v1/assets/folder.png"), (404,))
    finally:
        target.rmdir()


def test_resolve_inside_names_what_is_wrong(tmp_path):
    with pytest.raises(InvalidPath, match="NUL"):
        resolve_inside(tmp_path, "a\x00.png")
    with pytest.raises(InvalidPath, match="255 bytes"):
        resolve_inside(tmp_path, "x" * 256)
    with pytest.raises(PathOutside):
        resolve_inside(tmp_path, "../elsewhere.png")
    assert resolve_inside(tmp_path, "x" * 255) == tmp_path.resolve() / ("x" * 255)


# Session ids --------------------------------------------------------------------------------


@pytest.mark.parametrize("session_id", ["%C3%BC", "a.b", "a%20b", "%E2%9C%93", "x" * 300, "a%00b"])
def test_any_unknown_session_id_is_a_json_404(client, session_id):
    detail = assert_json_error(client.delete(f"/api/v1/webrtc/sessions/{session_id}"), (404,))
    assert "not found" in detail
    reply = client.patch(f"/api/v1/webrtc/offer/{session_id}", json={"candidates": [{"candidate": "", "sdpMid": "0"}]})
    assert "not found" in assert_json_error(reply, (404,))


def test_a_session_id_that_is_not_utf8_is_a_json_400(client):
    assert_json_error(client.delete("/api/v1/webrtc/sessions/%FF"), (400,))


# Logs ---------------------------------------------------------------------------------------


def test_each_server_serves_its_own_log_from_a_shared_logs_dir(tmp_path):
    shared_logs = tmp_path / "shared-logs"
    shared_logs.mkdir()
    env = {"DAYDREAM_SCOPE_LOGS_DIR": str(shared_logs)}
    first = start_scope_server(tmp_path / "first", env=env)
    try:
        second = start_scope_server(tmp_path / "second", env=env)  # its log file is the newer one
        try:
            # Each file name ends with the process id of the server writing it.
            logs = {
                server.port: next(shared_logs.glob(f"scope-logs-*-{server.process.pid}.log"))
                for server in (first, second)
            }
            assert len(list(shared_logs.glob("scope-logs-*.log"))) == 2
            for server, other in ((first, second), (second, first)):
                with server.client() as client:
                    reply = client.get("/api/v1/logs/current")
                assert reply.status_code == 200
                assert f'filename="{logs[server.port].stem}.txt"' in reply.headers["Content-Disposition"]
                assert f"Scope server log: {logs[server.port]}" in reply.text  # each log names its file
                assert str(logs[other.port]) not in reply.text
        finally:
            second.stop()
    finally:
        first.stop()


def test_after_a_rotation_the_current_file_is_still_this_servers(tmp_path):
    log = ServerLog(tmp_path)
    path = log.start()
    try:
        log.handler.maxBytes = 200  # rotate after a couple of records
        for number in range(10):
            logging.getLogger("scope.test_rotation").warning("record %d %s", number, "x" * 50)
        (tmp_path / "scope-logs-2999-01-01-00-00-00-1.log").write_text("another server's newer log\n")
        assert sorted(p.name for p in tmp_path.glob(f"{path.name}.*"))  # backups exist
        assert log.current_file() == path
        assert "record 9" in path.read_text()
    finally:
        log.stop()


def test_no_log_before_the_server_started_one(tmp_path):
    (tmp_path / "scope-logs-2999-01-01-00-00-00-1.log").write_text("not ours\n")
    assert ServerLog(tmp_path).current_file() is None
