"""``daydream-scope`` as a person sees it: run in a pseudo-terminal, read as text.

One server for the module, used in order: its banner, then a pipeline load and two sessions
whose clients leave (one closes, one vanishes) as the terminal reports them, then one SIGINT.
"""

from __future__ import annotations

import asyncio
import io
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pexpect
import pytest

from scope.build_info import version_line
from scope.client.peer import ScopePeer
from tests._subprocess_server import console_script, free_port, isolated_env
from tests.rtc import cut_network

#: Generous bounds for a loaded CI machine.
START_S = 90.0
LOAD_S = 120.0
STOP_S = 60.0
#: A vanished client's session closes after this long without packets.
DISCONNECT_TIMEOUT_S = 2.0
ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\([A-Z0-9])")
#: Lines from Jupyter that do not apply to the standalone server.
NOT_SHOWN = (
    "?token=",
    "Serving notebooks from local directory",
    "shut down all kernels",
    "No web browser found",
    "file://",
    "Jupyter Server",
    "extension was successfully",
)
TRACEBACKS = ("Traceback", "Task exception was never retrieved", "exception was never retrieved")
#: Frames stay tiny so the synthetic pipeline's chunks are quick on a CPU.
LOAD = {"pipeline_id": "longlive", "load_params": {"height": 64, "width": 64}}
PROMPTS = {"prompts": [{"text": "a panda eating bamboo", "weight": 1.0}]}


@dataclass
class Terminal:
    child: pexpect.spawn
    port: int
    root: Path
    transcript: io.StringIO

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        """Everything shown so far, without colour codes and carriage returns."""
        return ANSI.sub("", self.transcript.getvalue()).replace("\r", "")

    def wait_for(self, pattern: str, timeout: float) -> str:
        """Wait until the terminal shows ``pattern`` (a regular expression); returns its line."""
        try:
            self.child.expect(pattern, timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF) as exc:
            raise AssertionError(f"{pattern!r} not shown within {timeout} s:\n{self.text()}") from exc
        found = [line for line in self.text().splitlines() if re.search(pattern, line)]
        return found[-1] if found else ""


def _browser_found(env: dict[str, str]) -> bool:
    """Whether Python's webbrowser would find a browser with ``env`` (then -N keeps it shut)."""
    probe = "import webbrowser\ntry:\n    webbrowser.get()\nexcept webbrowser.Error:\n    print('none')"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    return out.stdout.strip() != "none"


@pytest.fixture(scope="module")
def terminal(tmp_path_factory) -> Terminal:
    root = tmp_path_factory.mktemp("terminal")
    port = free_port()
    env = isolated_env(root, {"DAYDREAM_SCOPE_DISCONNECT_TIMEOUT": str(DISCONNECT_TIMEOUT_S), "TERM": "xterm"})
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"):
        env.pop(name, None)
    # No --IdentityProvider.token: Jupyter generates one, which the banner must not show while
    # the API is open. '*' origins: a second warning, which must also show once.
    args = ["--synthetic", f"--port={port}", "--host", "127.0.0.1", "--allow-origin", "*"]
    if _browser_found(env):
        args.insert(0, "-N")  # never start a real browser from a test
    program = console_script("daydream-scope")
    transcript = io.StringIO()
    child = pexpect.spawn(
        program[0], [*program[1:], *args], cwd=str(root), env=env, encoding="utf-8",
        codec_errors="replace", dimensions=(50, 250), timeout=START_S,
    )
    child.logfile_read = transcript
    term = Terminal(child, port, root, transcript)
    try:
        term.wait_for(r"Stop:.*Ctrl-C", START_S)
        yield term
    finally:
        if child.isalive():
            child.kill(signal.SIGKILL)
            child.close(force=True)


def test_banner_says_what_matters_and_nothing_else(terminal):
    text = terminal.text()
    lines = [line.strip() for line in text.splitlines()]
    assert version_line() in lines, text
    root = terminal.root
    expected = {
        "Page": f"{terminal.url}/scope/",
        "API docs": f"{terminal.url}/docs",
        "Models": str(root / "models"),
    }
    fields = dict(re.findall(r"^\s+([A-Z][\w ]+):\s+(.+?)\s*$", text, re.MULTILINE))
    for name, value in expected.items():
        assert fields.get(name) == value, text
    assert fields["Synthetic weights"].startswith("on"), text
    log_file = Path(fields["Log file"])
    assert log_file.parent == root / "logs" and log_file.is_file(), text
    assert "Ctrl-C" in fields["Stop"], text
    for unwanted in NOT_SHOWN:
        assert unwanted not in text, f"{unwanted!r} shown:\n{text}"
    # Each warning once (it used to be logged and printed as well).
    terminal.wait_for(r"admits every web origin", 30)
    assert terminal.text().count("admits every web origin") == 1, terminal.text()


async def _stream_then_leave(url: str, how: str) -> str:
    """Open a session, wait for a frame, then leave (``close`` or ``vanish``); its id."""
    first_frame = asyncio.Event()
    peer = ScopePeer(recvonly=True, on_frame=lambda frame: first_frame.set())
    offer = await peer.create_offer()
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as client:
        reply = await client.post("/api/v1/webrtc/offer", json={**offer, "initialParameters": PROMPTS})
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    await peer.accept_answer(answer["sdp"], answer["type"])
    await asyncio.wait_for(first_frame.wait(), LOAD_S)
    if how == "vanish":
        await cut_network(peer.pc)  # silent, as a killed process: no DTLS close, no SCTP abort
    await peer.close()
    return answer["sessionId"]


def test_long_work_and_sessions_show_and_leaving_clients_print_no_traceback(terminal):
    with httpx.Client(base_url=terminal.url, trust_env=False, timeout=30) as client:
        assert client.post("/api/v1/pipeline/load", json=LOAD).status_code == 200
    terminal.wait_for(r"pipeline longlive loaded in", LOAD_S)
    shown = terminal.text()
    for step in (
        "loading pipeline longlive",
        "writing synthetic ones",
        "synthetic weights written:",
        "loading the diffusion transformer",
        "loading the VAE",
        "loading the text encoder",
    ):
        assert step in shown, f"{step!r} not shown:\n{shown}"
    assert shown.index("synthetic weights written:") < shown.index("loading the text encoder")

    for how in ("close", "vanish"):
        session_id = asyncio.run(_stream_then_leave(terminal.url, how))
        opened = terminal.wait_for(rf"session {session_id} opened", 30)
        assert "pipeline longlive, mode text" in opened, opened
        terminal.wait_for(rf"session {session_id} closed", 60)
    shown = terminal.text()
    for marker in TRACEBACKS:
        assert marker not in shown, shown


def test_one_sigint_stops_it(terminal):
    terminal.child.kill(signal.SIGINT)
    try:
        terminal.child.expect(pexpect.EOF, timeout=STOP_S)
    except pexpect.TIMEOUT:
        raise AssertionError(f"still running {STOP_S} s after one SIGINT:\n{terminal.text()}") from None
    terminal.child.close()
    shown = terminal.text()
    assert terminal.child.exitstatus == 0, (terminal.child.exitstatus, terminal.child.signalstatus, shown)
    assert "Shut down this Jupyter server" not in shown, shown
    for marker in TRACEBACKS:  # tasks that failed unnoticed are reported when the process ends
        assert marker not in shown, shown
