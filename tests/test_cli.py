"""The ``daydream-scope`` and ``download_models`` commands, run as users run them."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from traitlets import Bool, Float, Integer, List, Unicode
from traitlets.config import Config

from scope import __version__
from scope.config import ScopeSettings
from scope.server_ext.application import ScopeApp, ScopeServerApp
from tests._subprocess_server import (
    CHECKOUT,
    ScopeServer,
    run_command,
    running_scope_server,
    spawn_scope_server,
)
from tests.polling import wait_until_sync


# -- commands that do not start a server ---------------------------------------------------


def test_version_names_the_checkouts_commit(tmp_path):
    """From this checkout (an editable install): the version and the commit git reports."""
    result = run_command("daydream-scope", "--version", root=tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr
    head = subprocess.run(["git", "-C", str(CHECKOUT), "rev-parse", "HEAD"], capture_output=True, text=True)
    match = re.fullmatch(r"daydream-scope (\S+) \(commit ([0-9a-f]{12})\)\n", result.stdout)
    assert match, result.stdout
    assert match.group(1) == __version__
    assert head.stdout.startswith(match.group(2)), (head.stdout, result.stdout)


def test_pipelines_lists_the_built_in_pipelines(tmp_path):
    result = run_command("daydream-scope", "pipelines", root=tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr
    match = re.search(r"^(\d+) pipeline\(s\) available:", result.stdout, re.MULTILINE)
    assert match, result.stdout
    listed = re.findall(r"^\s+-\s+(\S+)$", result.stdout, re.MULTILINE)
    assert {"passthrough", "longlive", "reward-forcing", "memflow"} <= set(listed), listed
    assert int(match.group(1)) == len(listed)


def test_help_names_the_scope_options(tmp_path):
    result = run_command("daydream-scope", "--help", root=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    for option in ("--host", "--port", "--reload", "-N, --no-browser", "--version", "pipelines", "enable-jupyter"):
        assert option in result.stdout


def test_download_models_for_passthrough_needs_nothing(tmp_path):
    result = run_command("download_models", "--pipeline", "passthrough", root=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "nothing to download" in result.stdout.lower()
    assert not any((tmp_path / "models").iterdir())


def test_download_models_unknown_pipeline_names_known_ids(tmp_path):
    result = run_command("download_models", "--pipeline", "nope", root=tmp_path, timeout=60)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "nope" in message and "passthrough" in message


def test_download_models_requires_a_pipeline(tmp_path):
    result = run_command("download_models", root=tmp_path, timeout=60)
    assert result.returncode != 0
    assert "--pipeline" in result.stderr


# -- defaults and flags, parsed in-process -------------------------------------------------


def test_server_defaults():
    app = ScopeServerApp()
    assert app.port == 8000
    assert app.port_retries == 0
    assert app.ip == "0.0.0.0"
    assert app.default_url == "/scope/"


def test_flags_and_aliases_reach_the_server():
    app = ScopeServerApp()
    app.parse_command_line(["-N", "--reload", "--port", "8123", "--host", "127.0.0.1"])
    assert app.open_browser is False
    assert app.autoreload is True
    assert app.port == 8123
    assert app.ip == "127.0.0.1"


def _sample(trait):
    """A value for a setting that differs from its default, and its environment spelling."""
    default = trait.default()
    if isinstance(trait, Bool):
        return (not default), ("0" if default else "1")
    if isinstance(trait, Integer):
        return default + 3, str(default + 3)
    if isinstance(trait, Float):
        return default + 1.5, str(default + 1.5)
    if isinstance(trait, List):
        return ["stun:a.example:3478", "turn:b.example:3478"], "stun:a.example:3478, turn:b.example:3478"
    if isinstance(trait, Unicode):
        return "from-env", "from-env"
    raise AssertionError(f"no sample for {trait!r}")


SETTINGS = sorted(ScopeSettings.class_traits(config=True).items())


@pytest.mark.parametrize("name,trait", SETTINGS, ids=[name for name, _ in SETTINGS])
def test_every_environment_setting_reaches_the_extension(monkeypatch, name, trait):
    """env beats the default, explicit ScopeApp config beats env."""
    env = trait.metadata.get("env")
    assert env, f"ScopeApp.{name} has no environment variable"
    for other in ScopeSettings.class_traits(config=True).values():
        monkeypatch.delenv(other.metadata["env"], raising=False)
    expected, raw = _sample(trait)
    monkeypatch.setenv(env, raw)
    assert getattr(ScopeApp(), name) == expected
    config = Config()
    config.ScopeApp[name] = trait.default()
    assert getattr(ScopeApp(config=config), name) == trait.default()


# -- a real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory) -> ScopeServer:
    with running_scope_server(tmp_path_factory.mktemp("cli-server")) as server:
        yield server


def debug_lines(client) -> list[str]:
    """The DEBUG lines of the server's log, after a request that logs one (longlive's files are missing)."""
    assert client.get("/api/v1/models/status", params={"pipeline_id": "longlive"}).json()["downloaded"] is False
    return [line for line in client.get("/api/v1/logs/current").text.splitlines() if " DEBUG " in line]


def test_without_verbose_logging_the_log_has_no_debug_lines(cli_server):
    with cli_server.client() as client:
        assert debug_lines(client) == []


def test_port_flag_and_root_redirect(cli_server):
    assert cli_server.port != 8000
    with cli_server.client() as client:
        assert client.get("/health").json()["status"] == "healthy"
        root = client.get("/", follow_redirects=False)
    assert root.status_code in (301, 302)
    assert root.headers["Location"].split("?")[0] == "/scope/"
    assert "press Ctrl-C" in cli_server.output()


def test_busy_port_fails_loudly(cli_server, tmp_path):
    second = spawn_scope_server(tmp_path, port=cli_server.port)
    try:
        code = second.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"second server kept running:\n{second.output()}") from None
    finally:
        second.stop()
    assert code != 0
    out = second.output()
    assert f"port {cli_server.port} is in use" in out, out
    assert "could not be started" not in out and "Traceback" not in out, out
    with cli_server.client() as client:
        assert client.get("/health").status_code == 200


#: A module every Python process imports at start-up when its folder is on PYTHONPATH: it notes
#: each start, and being imported, it is one of the files ``--reload`` watches.
START_PROBE = """import os
with open({starts!r}, "a") as notes:
    notes.write(f"{{os.getpid()}}\\n")
"""


def test_reload_restarts_the_server_when_a_python_file_changes(tmp_path):
    """``--reload``: editing an imported Python file re-executes the server in place (same
    process id, same port), which starts afresh: the loaded pipeline is gone."""
    site, starts = tmp_path / "site", tmp_path / "starts.txt"
    site.mkdir()
    probe = site / "sitecustomize.py"
    probe.write_text(START_PROBE.format(starts=str(starts)))
    with running_scope_server(tmp_path / "server", "--reload", env={"PYTHONPATH": str(site)}) as server, \
            server.client() as client:
        pid = str(server.process.pid)
        assert starts.read_text().split() == [pid]
        assert client.post("/api/v1/pipeline/load", json={"pipeline_id": "passthrough"}).status_code == 200
        server.wait_status(client, ("loaded",))

        probe.write_text(probe.read_text() + "# edited\n")
        edits = iter(range(1, 10_000))

        def restarted() -> bool:
            # The watcher notes each file's time on its first pass, which may come after the
            # server answers: a newer time on every poll is a change whenever it first looks.
            # (The new process notes its start before its first pass, so no edit reaches it.)
            if starts.read_text().split() == [pid, pid]:
                return True
            later = probe.stat().st_mtime + 10 * next(edits)
            os.utime(probe, (later, later))
            return False

        wait_until_sync(restarted, 60, "the server to re-execute itself", interval=1.0)
        server.wait_ready()
        assert server.process.poll() is None
        assert client.get("/api/v1/pipeline/status").json()["status"] == "not_loaded"
    assert "Unrecognized" not in server.output()


def test_environment_reaches_the_running_server(tmp_path):
    """PIPELINE pre-warms; VERBOSE_LOGGING and the DAYDREAM_SCOPE_* variables are applied."""
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "reference.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "style.safetensors").write_bytes(b"{}")
    stun = "stun:stun.scope-test.invalid:3478"
    env = {
        "PIPELINE": "passthrough",
        "VERBOSE_LOGGING": "1",
        "DAYDREAM_SCOPE_MAX_SESSIONS": "0",
        "DAYDREAM_SCOPE_STUN_FALLBACK": stun,
    }
    with running_scope_server(tmp_path, env=env) as server, server.client() as client:
        status = wait_until_sync(lambda s: s["status"] not in ("not_loaded", "loading"), 60, "the pre-loaded pipeline",
                                 value=lambda: client.get("/api/v1/pipeline/status").json())
        assert status["status"] == "loaded" and status["pipeline_id"] == "passthrough", status

        ice = client.get("/api/v1/webrtc/ice-servers").json()["iceServers"]
        assert any(stun in (entry["urls"] if isinstance(entry["urls"], list) else [entry["urls"]]) for entry in ice), ice

        offer = client.post("/api/v1/webrtc/offer", json={"sdp": "v=0\r\n", "type": "offer"})
        assert offer.status_code == 503, offer.text
        assert "at most 0" in offer.json()["detail"]

        assets = client.get("/api/v1/assets").json()["assets"]
        assert [a["name"] for a in assets] == ["reference"]
        loras = client.get("/api/v1/lora/list").json()["lora_files"]
        assert [f["name"] for f in loras] == ["style"]

        assert sorted(p.name for p in (tmp_path / "logs").glob("scope-logs-*.log"))
        log = client.get("/api/v1/logs/current")
        assert log.status_code == 200
        debug = debug_lines(client)
        assert debug and "missing model files" in debug[-1], "VERBOSE_LOGGING=1 logs Scope's DEBUG lines"
