"""Without ``-N``, ``daydream-scope`` opens a browser on its own page at ``/scope/``."""

from __future__ import annotations

import subprocess
import sys
import time

from tests._subprocess_server import TEST_TOKEN, console_script, free_port, isolated_env, stop_process


def test_opens_a_browser_on_the_scope_page(tmp_path):
    opened = tmp_path / "opened.txt"
    recorder = tmp_path / "record-url"
    recorder.write_text(f"#!{sys.executable}\nimport sys\nopen({str(opened)!r}, 'w').write(sys.argv[1])\n")
    recorder.chmod(0o755)
    port = free_port()
    env = isolated_env(tmp_path, {"BROWSER": f"{recorder} %s"})
    process = subprocess.Popen(
        [*console_script("daydream-scope"), f"--port={port}", "--host", "127.0.0.1",
         f"--IdentityProvider.token={TEST_TOKEN}"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not opened.exists() or not opened.read_text():
            assert process.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "no browser was opened"
            time.sleep(0.2)
        url = opened.read_text()
        if url.startswith("file://"):  # Jupyter opens a local redirect page that carries the token
            url = open(url.removeprefix("file://")).read()
        assert f":{port}/scope/" in url
    finally:
        stop_process(process)
