"""A real headless Chromium against a real ``daydream-scope``: the documented pages stream.

Chromium and the server's aiortc meet on loopback: the test servers gather 127.0.0.1 candidates
only and Chromium runs with loopback allowed in peer connections. Every wait is bounded, so a
broken stream fails instead of hanging.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import ScopeServer
from tests.subprocess_only import jp_asyncio_loop, jp_server_cleanup  # noqa: F401  (autouse fixtures)

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
#: The API spec whose Quick Start page is replayed (kept outside this repository).
SPEC = Path(os.environ.get("SCOPE_SERVER_SPEC", Path(__file__).resolve().parents[2] / "shared" / "spec" / "server.md"))
needs_spec = pytest.mark.skipif(not SPEC.exists(), reason=f"the API spec is not at {SPEC} (set SCOPE_SERVER_SPEC)")
TIMEOUT_MS = 30_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)"),
]

CHROMIUM_ARGS = [
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
]

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

FRAMES_DECODED = """
async () => {
  let frames = 0;
  for (const pc of window.__peerConnections) {
    (await pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "video") frames += r.framesDecoded || 0;
    });
  }
  return frames;
}
"""

#: Mean RGB of a patch around each point, drawn from the <video> to a canvas.
VIDEO_PATCHES = """
([selector, points]) => {
  const video = document.querySelector(selector);
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(video, 0, 0);
  return points.map(([fx, fy]) => {
    const x = Math.round(fx * canvas.width) - 5, y = Math.round(fy * canvas.height) - 5;
    const data = ctx.getImageData(x, y, 10, 10).data;
    const mean = [0, 0, 0];
    for (let i = 0; i < data.length; i += 4) for (let c = 0; c < 3; c++) mean[c] += data[i + c];
    return mean.map((v) => v / (data.length / 4));
  });
}
"""

# Quadrant colours the canvas draws (and the /scope/ page's own test pattern), by centre point.
QUADRANT_POINTS = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]
QUICKSTART_COLOURS = [(220, 40, 40), (40, 180, 60), (40, 60, 220), (230, 200, 40)]
PAGE_PATTERN_COLOURS = [(0xD0, 0x20, 0x20), (0x20, 0xB0, 0x40), (0x20, 0x40, 0xD0), (0xE0, 0xC0, 0x20)]
#: Points on the band the white square moves along.
MOVING_BAND = [(x / 16, 0.5) for x in range(1, 16)]


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(request):
    """Chromium for one module; a module may add flags in its ``EXTRA_CHROMIUM_ARGS``."""
    args = [*CHROMIUM_ARGS, *getattr(request.module, "EXTRA_CHROMIUM_ARGS", ())]
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(RECORD_PEER_CONNECTIONS)
    page = context.new_page()
    page.console_lines = []
    page.on("console", lambda message: page.console_lines.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: page.console_lines.append(f"pageerror: {error}"))
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def server(scope_server_process: ScopeServer) -> ScopeServer:
    """The module's server with no pipeline loaded and no session left from an earlier test."""
    with scope_server_process.client() as client:
        for session in client.get("/api/v1/webrtc/sessions").json()["sessions"]:
            client.delete(f"/api/v1/webrtc/sessions/{session['id']}")
        assert client.post("/api/v1/pipeline/unload", json={}).status_code == 200
    return scope_server_process


# -- helpers ------------------------------------------------------------------------------------


def quickstart_html() -> str:
    """The Quick Start page exactly as the spec prints it."""
    match = re.search(r"```html\n(.*?)```", SPEC.read_text(), re.S)
    assert match, f"no html block in {SPEC}"
    return match.group(1)


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected exactly one {old!r} in the Quick Start page"
    return text.replace(old, new)


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


def wait_for(page, expression: str) -> None:
    """Wait for a JavaScript condition; on timeout, fail with what the page shows and logged."""
    try:
        page.wait_for_function(expression)
    except sync_api.TimeoutError:
        shown = page.inner_text("body")[-1500:]
        logged = "\n".join(page.console_lines[-15:])
        raise AssertionError(f"timed out waiting for {expression}\npage:\n{shown}\nconsole:\n{logged}") from None


def assert_frames_flow(page, minimum_growth: int = 20) -> None:
    first = wait_until(page, lambda: page.evaluate(FRAMES_DECODED), "a first decoded frame")
    wait_until(page, lambda: page.evaluate(FRAMES_DECODED) >= first + minimum_growth, "framesDecoded to grow")


def assert_colours_match(patches, expected, tolerance: float = 45.0) -> None:
    for index, (got, want) in enumerate(zip(patches, expected)):
        off = max(abs(g - w) for g, w in zip(got, want))
        assert off < tolerance, f"quadrant {index}: got {[round(v) for v in got]}, drew {want}"


def assert_video_moves(page, selector: str) -> None:
    """The moving square shows up at different places over time."""
    samples = []
    for _ in range(4):
        samples.append(page.evaluate(VIDEO_PATCHES, [selector, MOVING_BAND]))
        page.wait_for_timeout(300)
    brightness = [[round(sum(p) / 3) for p in sample] for sample in samples]
    assert len({tuple(b) for b in brightness}) > 1, f"the video did not change: {brightness}"


def sessions(server: ScopeServer) -> list[dict]:
    with server.client() as client:
        return client.get("/api/v1/webrtc/sessions").json()["sessions"]


# -- the spec's Quick Start page, unchanged -----------------------------------------------------


@needs_spec
def test_quickstart_page_unchanged_reaches_the_api_from_file_url(page, server, tmp_path):
    """Only the URL differs. This server has no weights: the page reads the load error cross-origin."""
    html = replace_once(quickstart_html(), 'const API_BASE = "http://localhost:8000";', f'const API_BASE = "{server.url}";')
    path = tmp_path / "index.html"
    path.write_text(html)
    seen = []
    page.on("response", lambda r: seen.append((r.request.method, r.url.replace(server.url, ""), r.status)))
    failed = []
    page.on("requestfailed", lambda r: failed.append(f"{r.method} {r.url}: {r.failure}"))

    page.goto(path.as_uri())
    wait_for(page, "document.getElementById('status').textContent === 'Error: Pipeline failed to load'")

    assert ("POST", "/api/v1/pipeline/load", 200) in seen, seen
    assert all(status == 200 for method, url, status in seen if url == "/api/v1/pipeline/status")
    assert not failed, failed
    assert not [line for line in page.console_lines if "CORS" in line or "Access-Control" in line]
    with server.client() as client:
        error = client.get("/api/v1/pipeline/status").json()["error"]
    assert "model files for longlive are missing" in error and "--synthetic" in error, error


# -- the spec's send-and-receive flow from a file:// page ---------------------------------------

CANVAS_SOURCE = """// Send a canvas with a moving pattern (video-to-video mode)
      const canvas = document.createElement("canvas");
      canvas.width = 320;
      canvas.height = 240;
      const ctx = canvas.getContext("2d");
      const colours = ["rgb(220,40,40)", "rgb(40,180,60)", "rgb(40,60,220)", "rgb(230,200,40)"];
      let tick = 0;
      setInterval(() => {
        colours.forEach((colour, i) => {
          ctx.fillStyle = colour;
          ctx.fillRect((i % 2) * 160, Math.floor(i / 2) * 120, 160, 120);
        });
        ctx.fillStyle = "#fff";
        ctx.fillRect((tick * 6) % 290, 105, 30, 30);
        tick += 1;
      }, 33);
      const source = canvas.captureStream(30);
      pc.addTrack(source.getVideoTracks()[0], source);"""


def send_and_receive_html(server_url: str) -> str:
    html = quickstart_html()
    html = replace_once(html, 'const API_BASE = "http://localhost:8000";', f'const API_BASE = "{server_url}";')
    html = html.replace("longlive", "passthrough")
    html = replace_once(html, '// Add video transceiver (receive-only mode)\n      pc.addTransceiver("video");', CANVAS_SOURCE)
    html = replace_once(html, "initialParameters: {\n", 'initialParameters: {\n            input_mode: "video",\n')
    return html


@needs_spec
def test_quickstart_send_and_receive_with_a_canvas(page, server, tmp_path):
    path = tmp_path / "send-receive.html"
    path.write_text(send_and_receive_html(server.url))

    page.goto(path.as_uri())
    wait_for(page, "document.getElementById('status').textContent === 'Connected - Streaming'")
    assert_frames_flow(page)
    wait_for(page, "video.videoWidth === 320 && video.videoHeight === 240")

    patches = page.evaluate(VIDEO_PATCHES, ["#video", QUADRANT_POINTS])
    assert max(max(p) for p in patches) > 60, f"the video is black: {patches}"
    assert_colours_match(patches, QUICKSTART_COLOURS)
    assert_video_moves(page, "#video")
    assert page.inner_text("#status") == "Connected - Streaming"


# -- the server's own page ----------------------------------------------------------------------


def load_passthrough_on_page(page, url: str, takes_prompts: bool = False) -> None:
    page.goto(url)
    wait_for(page, "document.querySelector('#pipeline option[value=passthrough]') !== null")
    page.select_option("#pipeline", "passthrough")
    assert page.inner_text("#models-status") == "No model files needed."
    assert page.is_hidden("#download")
    page.click("#load")
    wait_for(page, "document.getElementById('pipeline-status').textContent === 'Loaded passthrough.'")
    assert page.is_visible("#prompt-form") == takes_prompts


STATS_CHUNK = "(/fps · chunk (\\d+) ·/.exec(document.getElementById('stats').textContent) || [null, -1])[1]"


def wait_for_chunks(page, after: int = 0) -> int:
    """Wait until the status line reports more than ``after`` chunks; returns the count.

    The count, not the instantaneous state: between chunks a session may briefly report
    "waiting" for its next input frames.
    """
    wait_for(page, f"Number({STATS_CHUNK}) > {after}")
    return int(page.evaluate(STATS_CHUNK))


def test_scope_page_streams_the_fake_webcam(page, server):
    load_passthrough_on_page(page, server.url + "/scope/")
    page.select_option("#input", "camera")
    page.click("#start")

    wait_for_chunks(page)
    assert_frames_flow(page)
    status = page.inner_text("#status-line")
    assert re.search(r"\d+\.\d fps · chunk \d+ · [\d.]+ ms/chunk · (streaming|waiting)", status), status
    assert page.inner_text("#connection") == "connected"
    assert page.inner_text("#input-note") == "Sending your webcam."
    assert "synthetic weights" not in status and page.is_hidden("#synthetic")
    assert len(sessions(server)) == 1

    page.click("#pause")
    wait_for(page, "document.getElementById('stats').textContent.endsWith('paused')")
    assert page.inner_text("#pause") == "Resume"
    paused_at = wait_for_chunks(page)
    page.click("#pause")
    wait_for_chunks(page, after=paused_at)

    page.click("#stop")
    wait_for(page, "document.getElementById('connection').textContent === 'stopped'")
    wait_until(page, lambda: not sessions(server), "the server to close the session")
    assert page.is_enabled("#start")


def test_scope_page_falls_back_to_a_test_pattern_without_a_webcam(page, server):
    page.add_init_script(
        "navigator.mediaDevices.getUserMedia = () => "
        "Promise.reject(new DOMException('Requested device not found', 'NotFoundError'));"
    )
    load_passthrough_on_page(page, server.url + "/scope/")
    page.select_option("#input", "camera")
    page.click("#start")

    wait_for_chunks(page)
    note = page.inner_text("#input-note")
    assert "No webcam available" in note and "test pattern" in note, note
    assert_frames_flow(page)
    wait_for(page, "video.videoWidth === 512 && video.videoHeight === 512")
    assert_colours_match(page.evaluate(VIDEO_PATCHES, ["#video", QUADRANT_POINTS]), PAGE_PATTERN_COLOURS)
    page.click("#stop")
    wait_until(page, lambda: not sessions(server), "the server to close the session")


def advertise_prompts_and_text_mode(page, server: ScopeServer) -> None:
    """Serve passthrough's schema as if it took prompts and text: the page must follow the schema."""
    def handle(route):
        reply = route.fetch()
        schemas = reply.json()
        schemas["pipelines"]["passthrough"].update(supports_prompts=True, supported_modes=["text", "video"])
        route.fulfill(response=reply, json=schemas)

    page.route(server.url + "/api/v1/pipelines/schemas", handle)


def messages(page) -> str:
    return page.inner_text("#messages")


def test_scope_page_prompts_and_shows_the_servers_refusals(page, server):
    advertise_prompts_and_text_mode(page, server)
    load_passthrough_on_page(page, server.url + "/scope/", takes_prompts=True)

    # Text mode is refused by the real passthrough: the error is shown, nothing keeps running.
    page.select_option("#input", "none")
    page.fill("#prompt", "a red fox")
    page.click("#start")
    wait_for(page, "document.getElementById('connection').textContent === 'failed to start'")
    assert "input_mode 'text' is not supported by pipeline 'passthrough'" in messages(page)
    assert not sessions(server)

    page.select_option("#input", "pattern")
    page.click("#start")
    wait_for_chunks(page)
    page.fill("#prompt", "a blue bird")
    page.click("#send-prompt")
    wait_for(page, "document.getElementById('messages').textContent.includes('Prompt sent: a blue bird')")

    page.evaluate("window.__dataChannels.at(-1).send(JSON.stringify({noise_scale: 5}))")
    wait_for(page, "document.getElementById('messages').textContent.includes('Parameters rejected: noise_scale')")
    page.evaluate("window.__dataChannels.at(-1).send(JSON.stringify({not_a_parameter: 1}))")
    wait_for(page, "document.getElementById('messages').textContent.includes('Unknown parameters ignored: not_a_parameter')")

    with server.client() as client:
        session_id = sessions(server)[0]["id"]
        assert client.delete(f"/api/v1/webrtc/sessions/{session_id}").status_code == 204
    wait_for(page, "document.getElementById('connection').textContent === 'stream stopped'")
    assert "Stream stopped." in messages(page)
    assert page.is_enabled("#start")



def test_scope_page_downloads_models_with_a_progress_bar(page, server):
    """Model endpoints stubbed (no registered pipeline needs files): the page follows their answers."""
    downloading = {"downloaded": False, "progress": {"is_downloading": True, "percentage": 40.0, "bytes_done": 4,
                                                     "bytes_total": 10, "current_artifact": "weights.safetensors", "error": None}}
    answers = iter([{"downloaded": False, "progress": None}, *[downloading] * 4])  # polled twice a second
    done = {"downloaded": True, "progress": None}
    posted = []

    def schemas(route):
        reply = route.fetch()
        body = reply.json()
        body["pipelines"]["passthrough"]["requires_models"] = True
        route.fulfill(response=reply, json=body)

    def status(route):
        route.fulfill(json=next(answers, done))

    def download(route):
        posted.append(route.request.post_data_json)
        route.fulfill(json={"message": "Model download started for passthrough"})

    page.route(server.url + "/api/v1/pipelines/schemas", schemas)
    page.route(re.compile(re.escape(server.url) + r"/api/v1/models/status\?pipeline_id=passthrough$"), status)
    page.route(server.url + "/api/v1/models/download", download)

    page.goto(server.url + "/scope/")
    wait_for(page, "document.getElementById('models-status').textContent === 'Model files not downloaded.'")
    page.click("#download")
    wait_for(page, "document.getElementById('models-status').textContent === 'Downloading 40.0% (weights.safetensors)'")
    assert page.is_visible("#download-progress")
    assert page.evaluate("document.getElementById('download-progress').value") == 40
    wait_for(page, "document.getElementById('models-status').textContent === 'Model files downloaded.'")
    assert posted == [{"pipeline_id": "passthrough", "synthetic": False}]
    assert page.is_hidden("#download") and page.is_hidden("#download-progress")


def test_scope_page_writes_synthetic_weights_then_streams_longlive(page, server):
    """No weights on this server: the page's synthetic button writes them, then longlive streams."""
    page.goto(server.url + "/scope/")
    wait_for(page, "document.querySelector('#pipeline option[value=longlive]') !== null")
    page.select_option("#pipeline", "longlive")
    wait_for(page, "document.getElementById('models-status').textContent === 'Model files not downloaded.'")
    assert page.is_visible("#download") and page.is_visible("#write-synthetic")
    page.click("#write-synthetic")
    wait_for(page, "document.getElementById('models-status').textContent.startsWith('Synthetic weights in place')")
    assert page.is_hidden("#write-synthetic")
    page.click("#load")
    wait_for(page, "document.getElementById('pipeline-status').textContent === 'Loaded longlive.'")
    assert page.is_visible("#synthetic")
    page.select_option("#input", "none")
    page.fill("#prompt", "a lighthouse in a storm")
    page.click("#start")
    wait_for_chunks(page, after=1)
    assert_frames_flow(page, minimum_growth=12)
    assert page.is_visible("#synthetic")
    page.click("#stop")
    wait_until(page, lambda: not sessions(server), "the server to close the session")


# -- the same page inside jupyter lab (Jupyter's auth applies) ----------------------------------


def test_scope_page_under_jupyter_lab_uses_the_login_cookie_and_xsrf(page, lab_server_process):
    """Inside Lab the API is closed: the page must send the ``_xsrf`` cookie back on writes."""
    lab = lab_server_process
    # Logging in with the token sets the login and ``_xsrf`` cookies; the Lab UI itself is not needed.
    page.goto(lab.url + f"lab?token={lab.token}", wait_until="commit")
    writes = []
    page.on("response", lambda r: writes.append((r.request.method, r.status)) if r.request.method != "GET" else None)

    load_passthrough_on_page(page, lab.url + "scope/")
    page.select_option("#input", "pattern")
    page.click("#start")
    wait_for_chunks(page)
    assert_frames_flow(page, minimum_growth=10)
    page.click("#stop")
    wait_for(page, "document.getElementById('connection').textContent === 'stopped'")

    assert ("POST", 200) in writes and ("DELETE", 204) in writes, writes
    assert not [w for w in writes if w[1] == 403], writes
    with httpx.Client(headers={"Authorization": f"token {lab.token}"}, trust_env=False, timeout=10) as client:
        wait_until(page, lambda: not client.get(lab.url + "api/v1/webrtc/sessions").json()["sessions"], "no sessions")


def test_scope_page_under_jupyter_lab_with_the_token_in_its_url(browser, lab_server_process):
    """Opened as ``scope/?token=...`` (no login cookie), the page sends the token itself."""
    lab = lab_server_process
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.console_lines = []
    try:
        page.goto(lab.url + "scope/")
        wait_for(page, "document.getElementById('pipeline-status').textContent.includes('Not authorised')")
        page.goto(lab.url + f"scope/?token={lab.token}")
        wait_for(page, "document.querySelector('#pipeline option[value=passthrough]') !== null")
        page.click("#load")
        wait_for(page, "document.getElementById('pipeline-status').textContent === 'Loaded passthrough.'")
        names = {cookie["name"] for cookie in context.cookies()}
        assert "_xsrf" not in names, "the load must have been authorised by the token, not by XSRF"
    finally:
        context.close()


@pytest.mark.browser
def test_swagger_ui_renders_offline(page, server):
    """``/docs`` renders every operation from local assets (no network beyond the server)."""
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server.url, "data:", "blob:")) else None)
    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    summaries = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/api/v1/pipeline/load" in s for s in summaries)
    assert any("/api/v1/webrtc/offer" in s for s in summaries)
    assert outside == []
