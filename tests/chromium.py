"""The one Chromium every browser test drives: where it is, how it starts, the page it gives.

Chromium and the servers' aiortc meet on loopback: the test servers gather 127.0.0.1
candidates only, and Chromium runs with loopback allowed in peer connections. A missing
Chromium fails the test with the install command: CI installs it, so a skip would hide a gap.
Every wait here is bounded, so a broken page fails instead of hanging.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from playwright import sync_api

#: The Chromium binary (Debian's package; ``SCOPE_TEST_CHROMIUM`` points elsewhere).
CHROMIUM = Path(os.environ.get("SCOPE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium")
#: Default bound of each page action and wait.
TIMEOUT_MS = 30_000

#: The video element ``selector`` names, drawn at 32x32: its RGB levels in a flat list (null
#: before the first frame). Two readings that differ mean the picture moved.
VIDEO_PIXELS = """(selector) => {
  const video = document.querySelector(selector);
  if (!video || !video.videoWidth) return null;
  const canvas = document.createElement('canvas');
  canvas.width = 32; canvas.height = 32;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(video, 0, 0, 32, 32);
  const data = ctx.getImageData(0, 0, 32, 32).data;
  const out = [];
  for (let i = 0; i < data.length; i += 4) out.push(data[i], data[i + 1], data[i + 2]);
  return out;
}"""

CHROMIUM_ARGS = (
    "--no-sandbox",
    # Raw IP host candidates instead of mDNS names the server would spend a second resolving.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    # Loopback host candidates, which the test servers (restricted to 127.0.0.1) can reach.
    "--allow-loopback-in-peer-connection",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    # No internet here (or in CI): nothing in the background may wait on it.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-gpu",
)

#: Remembers every RTCPeerConnection and data channel a page creates, so tests can read stats
#: and send messages without changing the page.
RECORD_PEER_CONNECTIONS = """
(() => {
  const Native = window.RTCPeerConnection;
  window.__peerConnections = [];
  window.__dataChannels = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) { super(...args); window.__peerConnections.push(this); }
    createDataChannel(...args) {
      const channel = super.createDataChannel(...args);
      window.__dataChannels.push(channel);
      return channel;
    }
  };
})();
"""


def launch_chromium(playwright: sync_api.Playwright, extra_args: tuple[str, ...] | list[str] = ()) -> sync_api.Browser:
    """Headless Chromium with the loopback WebRTC flags (plus ``extra_args``); the caller closes it."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: the browser tests need it "
            "(apt-get install chromium, or set SCOPE_TEST_CHROMIUM to its path).",
            pytrace=False,
        )
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[*CHROMIUM_ARGS, *extra_args])


def new_page(browser: sync_api.Browser) -> sync_api.Page:
    """A page in a fresh context that records its peer connections and console; close its context."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(RECORD_PEER_CONNECTIONS)
    page = context.new_page()
    page.console_lines = []
    page.on("console", lambda message: page.console_lines.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: page.console_lines.append(f"pageerror: {error}"))
    return page


@pytest.fixture(scope="module")
def browser(request):
    """Chromium for one module; a module may add flags in its ``EXTRA_CHROMIUM_ARGS``."""
    with sync_api.sync_playwright() as playwright:
        chromium = launch_chromium(playwright, getattr(request.module, "EXTRA_CHROMIUM_ARGS", ()))
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    page = new_page(browser)
    try:
        yield page
    finally:
        page.context.close()


def wait_until(page, predicate, what: str, timeout: float = 30.0, interval_ms: int = 200):
    """Poll ``predicate``; sleeping through the page keeps its events flowing (sync API)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        page.wait_for_timeout(interval_ms)


def wait_for(page, expression: str, timeout_ms: float | None = None) -> None:
    """Wait for a JavaScript condition; on timeout, fail with what the page shows and logged."""
    try:
        page.wait_for_function(expression, timeout=timeout_ms)
    except sync_api.TimeoutError:
        shown = page.inner_text("body")[-1500:]
        logged = "\n".join(getattr(page, "console_lines", [])[-15:])
        raise AssertionError(f"timed out waiting for {expression}\npage:\n{shown}\nconsole:\n{logged}") from None
