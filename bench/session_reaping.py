"""How long a gone client holds a session slot, at the server's default timeouts.

``python bench/session_reaping.py [--trials 3] [--json out.json]`` starts ``daydream-scope``
(passthrough pre-loaded, temp directories, 127.0.0.1, default settings) and measures:

- **killed**: a streaming client process (``tests/killable_peer.py``) is killed with SIGKILL;
  seconds from the kill until its session leaves ``GET /api/v1/webrtc/sessions``
  (``disconnect_timeout``);
- **pending**: an offer is posted and its answer never applied; seconds from the offer until the
  session is gone (``connect_timeout``).

Extra server arguments follow ``--``, e.g. ``-- --ScopeApp.disconnect_timeout=3``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import write_json  # noqa: E402
from scope.client.peer import ScopePeer  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAYDREAM_SCOPE_", "JUPYTER_"))}
    for name in ("models", "assets", "lora", "logs"):
        env[f"DAYDREAM_SCOPE_{name.upper()}_DIR"] = str(root / name)
    env.update(PIPELINE="passthrough", JUPYTER_CONFIG_DIR=str(root / "jc"), JUPYTER_RUNTIME_DIR=str(root / "jr"))
    command = ["daydream-scope", "-N", "--host", "127.0.0.1", f"--port={port}", *extra]
    log = (root / "server.out").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    with httpx.Client(trust_env=False, timeout=2) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(f"{url}/api/v1/pipeline/status").json()["status"] == "loaded":
                    return process, url
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
    process.terminate()
    raise SystemExit("daydream-scope did not load passthrough within 90 s")


def listed(url: str) -> set[str]:
    with httpx.Client(trust_env=False, timeout=10) as client:
        return {s["id"] for s in client.get(f"{url}/api/v1/webrtc/sessions").json()["sessions"]}


def seconds_until_gone(url: str, session_id: str, since: float, limit: float = 120) -> float:
    while session_id in listed(url):
        if time.monotonic() - since > limit:
            return float("inf")
        time.sleep(0.1)
    return time.monotonic() - since


def killed_trial(url: str) -> float:
    client = subprocess.Popen([sys.executable, "-m", "tests.killable_peer", url], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    line = client.stdout.readline()
    if not line.startswith("STREAMING "):
        client.kill()
        raise SystemExit(f"the client did not stream: {line!r}")
    client.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    client.wait()
    client.stdout.close()
    return seconds_until_gone(url, line.split()[1], killed_at)


def pending_trial(url: str) -> float:
    async def offer_only() -> tuple[str, float, ScopePeer]:
        peer = ScopePeer(recvonly=True)
        offer = await peer.create_offer()
        async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
            reply = await client.post(f"{url}/api/v1/webrtc/offer", json=offer)
        return reply.json()["sessionId"], time.monotonic(), peer

    async def run() -> float:
        session_id, posted, peer = await offer_only()
        try:
            return await asyncio.to_thread(seconds_until_gone, url, session_id, posted)
        finally:
            await peer.close()

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("server_args", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start_server(Path(tmp), args.server_args)
        try:
            result = {
                "killed_s": [round(killed_trial(url), 2) for _ in range(args.trials)],
                "pending_s": [round(pending_trial(url), 2) for _ in range(args.trials)],
                "server_args": args.server_args,
            }
        finally:
            process.terminate()
            process.wait(30)
    for key in ("killed_s", "pending_s"):
        print(f"{key[:-2]:>8}: median {statistics.median(result[key]):.2f} s  all {result[key]}")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
