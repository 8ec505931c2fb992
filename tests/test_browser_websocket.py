"""The WebSocket transport in a real browser that cannot send UDP, as behind a tunnel or a proxy.

Chromium runs with ``--webrtc-ip-handling-policy=disable_non_proxied_udp``: its pages gather no
UDP candidate, so WebRTC cannot connect, as through an SSH tunnel or JupyterHub's proxy. The
first test proves that in this browser, so nothing below can pass over WebRTC by accident. Then
a ``ScopeWidget`` with ``transport="auto"`` in a real JupyterLab (Jupyter's auth on, a non-root
base URL) must fall back to the WebSocket and stream both ways (the page's test pattern through
``passthrough`` and back), steered from Python; the same through a path-prefix reverse proxy
that carries only HTTP and WebSockets; and the server's own page with ``?transport=websocket``
under ``daydream-scope``.
"""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from tests.chromium import VIDEO_PIXELS, browser, page, wait_for, wait_until  # noqa: F401  (fixtures)
from tests.path_proxy import running_path_proxy
from tests.subprocess_only import jp_asyncio_loop, jp_server_cleanup  # noqa: F401  (autouse fixtures)
from tests.test_widget_lab import cell_output, notebook, run_cell

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.timeout(240),
]

#: Read by ``tests.chromium.browser``: no UDP from this module's pages.
EXTRA_CHROMIUM_ARGS = ("--webrtc-ip-handling-policy=disable_non_proxied_udp",)

WIDGET = ".scope-widget"
VIDEO_MEAN = f"() => ({VIDEO_PIXELS})('{WIDGET} video')"
FALLBACK = "WebRTC did not connect within 5 s; streaming over the WebSocket instead."

#: The ICE candidates a page gathers for a data channel (host, STUN and TURN alike).
GATHERED_CANDIDATES = """async () => {
  const pc = new RTCPeerConnection({iceServers: [{urls: "stun:127.0.0.1:3478"}]});
  pc.createDataChannel("probe");
  const candidates = [];
  pc.onicecandidate = (event) => { if (event.candidate) candidates.push(event.candidate); };
  const complete = new Promise((resolve) => {
    pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === "complete") resolve(); };
  });
  await pc.setLocalDescription(await pc.createOffer());
  if (pc.iceGatheringState !== "complete") await complete;
  const sdp = pc.localDescription.sdp.split("\\r\\n").filter((line) => line.startsWith("a=candidate"));
  pc.close();
  return {state: pc.iceGatheringState, candidates: candidates.map((c) => ({line: c.candidate, protocol: c.protocol})), sdp};
}"""

#: Colours of the page's test pattern (``test-pattern.js``), by quadrant, and where to read them
#: on the 32x32 reading: 8x8 blocks clear of the caption and of the moving square.
PATTERN_COLOURS = [(0xD0, 0x20, 0x20), (0x20, 0xB0, 0x40), (0x20, 0x40, 0xD0), (0xE0, 0xC0, 0x20)]
QUADRANT_BLOCKS = [(4, 4), (20, 4), (4, 20), (20, 20)]
#: How far a channel may move through JPEG, canvas and video colour conversion.
COLOUR_TOLERANCE = 45


def block_mean(pixels: list[int], x0: int, y0: int, size: int = 8) -> tuple[float, ...]:
    values = [pixels[((y * 32) + x) * 3:((y * 32) + x) * 3 + 3] for y in range(y0, y0 + size) for x in range(x0, x0 + size)]
    return tuple(sum(v[c] for v in values) / len(values) for c in range(3))


def shows_the_pattern(pixels: list[int] | None) -> bool:
    """Whether a 32x32 reading shows the test pattern's four quadrant colours."""
    if not pixels:
        return False
    means = [block_mean(pixels, x, y) for x, y in QUADRANT_BLOCKS]
    return all(abs(m - e) <= COLOUR_TOLERANCE for mean, colour in zip(means, PATTERN_COLOURS) for m, e in zip(mean, colour))


@pytest.fixture(scope="module")
def lab(lab_server_process):
    """The shared ``jupyter lab`` (token auth, base URL ``/lab-base/``)."""
    return lab_server_process


@pytest.fixture(scope="module")
def proxy(lab):
    """A JupyterHub-like proxy: ``/lab-base/`` on its own port, forwarded to the Lab unchanged."""
    parts = urlsplit(lab.url)
    with running_path_proxy(f"{parts.scheme}://{parts.netloc}", parts.path) as proxy:
        yield proxy


def api(lab) -> httpx.Client:
    return httpx.Client(base_url=lab.url, headers={"Authorization": f"token {lab.token}"}, trust_env=False, timeout=15)


def widget_session(page, client: httpx.Client) -> dict | None:
    """The server's record of the session the page's widget streams (None while it has none)."""
    session_id = page.evaluate(f"document.querySelector('{WIDGET}')?.dataset.session")
    found = [s for s in client.get("api/v1/webrtc/sessions").json()["sessions"] if s["id"] == session_id]
    return found[0] if found else None


def open_notebook(page, base: str, lab, name: str, text: str) -> None:
    """Log in with the token at ``base`` (the Lab, or the proxy in front of it), then open ``name``."""
    (lab.root / name).write_text(text)
    page.goto(base + f"lab?token={lab.token}", wait_until="commit")
    page.goto(base + f"lab/workspaces/{uuid.uuid4().hex}/tree/{name}")
    wait_for(page, "window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell') !== null")
    wait_for(page, "document.querySelector('.jp-StatusBar-Widget')?.parentElement?.innerText.includes('| Idle')")


def stream_with_auto_transport(page, base: str, lab, name: str, encoding: str) -> None:
    """Show a widget streaming the test pattern through ``passthrough`` with ``transport="auto"``,
    steer it from Python, and check every way it must have fallen back to the WebSocket, its
    frames coming as ``encoding``."""
    open_notebook(page, base, lab, name, notebook(
        "from scope.widgets import ScopeWidget\n"
        "w = ScopeWidget(pipeline_id='passthrough', input_source='pattern', autostart=True)\n"
        "w",
        "import json; print(json.dumps({'transport': w.transport, 'active': w.active_transport, 'status': w.status}))",
        "w.paused = True",
    ))
    run_cell(page, 0)
    wait_for(page, f"document.querySelector('{WIDGET}')?.dataset.status === 'streaming'", timeout_ms=90_000)
    messages = page.inner_text(f"{WIDGET} .scope-messages")
    assert FALLBACK in messages and f"WebSocket open: {encoding} frames." in messages, messages
    assert page.evaluate(f"document.querySelector('{WIDGET}').dataset.transport") == "websocket"
    assert page.inner_text(f"{WIDGET} .scope-transport") == "over WebSocket"

    # The pattern went up and came back (passthrough returns its input), and it moves.
    wait_until(page, lambda: shows_the_pattern(page.evaluate(VIDEO_MEAN)), "the test pattern's colours in the video")
    first = page.evaluate(VIDEO_MEAN)
    wait_until(page, lambda: page.evaluate(VIDEO_MEAN) != first, "the video to change")
    wait_for(page, f"/^[1-9][\\d.]* fps/.test(document.querySelector('{WIDGET} .scope-stats')?.textContent ?? '')")

    with api(lab) as client:
        session = wait_until(page, lambda: widget_session(page, client), "the widget's session on the server")
        assert session["transport"] == "websocket" and session["input_mode"] == "video", session
        # The WebRTC session was deleted before the WebSocket's opened: this client holds one slot.
        listed = client.get("api/v1/webrtc/sessions").json()["sessions"]
        assert not [s["id"] for s in listed if s["transport"] == "webrtc"], listed

        # Python reads the transport in use.
        def readback():
            run_cell(page, 1)
            page.wait_for_timeout(500)
            lines = cell_output(page, 1).strip().splitlines()
            values = json.loads(lines[-1]) if lines else {}
            return values if values.get("active") == "websocket" else None

        values = wait_until(page, readback, "the kernel to read active_transport", interval_ms=500)
        assert values == {"transport": "auto", "active": "websocket", "status": "streaming"}

        # A parameter set in Python reaches the server's session over the WebSocket.
        run_cell(page, 2)
        wait_until(
            page,
            lambda: (widget_session(page, client) or {}).get("stats", {}).get("state") == "paused",
            "the server to pause the session",
        )


def test_this_browser_gathers_no_udp_candidate(page, lab):
    """The premise: a page of this Chromium offers no UDP path, so WebRTC cannot connect."""
    page.goto(lab.url + "api/status")
    gathered = page.evaluate(GATHERED_CANDIDATES)
    assert gathered["state"] == "complete"
    udp = [c for c in gathered["candidates"] if c["protocol"] == "udp" or " udp " in c["line"].lower()]
    assert not udp, gathered
    assert not [line for line in gathered["sdp"] if " udp " in line.lower()], gathered


def output_encodings(lab) -> list[str]:
    with api(lab) as client:
        return client.get("api/v1/transports").json()["encodings"]


def test_widget_in_lab_falls_back_to_the_websocket(page, lab):
    """H.264 decoded by WebCodecs where the server encodes it (else JPEG)."""
    encoding = "h264" if "h264" in output_encodings(lab) else "jpeg"
    stream_with_auto_transport(page, lab.url, lab, "websocket-fallback.ipynb", encoding)


def test_widget_through_a_path_proxy_streams_over_the_websocket(page, lab, proxy):
    """JupyterHub's setup: the browser reaches the Lab only through a proxy that keeps the path.
    This page has no WebCodecs, so it asks for JPEG frames."""
    page.add_init_script("delete window.VideoDecoder;")
    origin = f"127.0.0.1:{proxy.port}"
    elsewhere: list[str] = []

    def note(url: str) -> None:
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and urlsplit(url).netloc != origin:
            elsewhere.append(url)

    page.on("request", lambda request: note(request.url))
    page.on("websocket", lambda socket: note(socket.url))
    stream_with_auto_transport(page, proxy.url, lab, "websocket-proxy.ipynb", "jpeg")
    assert not elsewhere, f"requests that bypassed the proxy: {elsewhere[:5]}"
    assert any(path.startswith(f"{lab.base_url}api/v1/websocket/") for path in proxy.websockets), proxy.websockets


def start_pattern_on_page(page, url: str, before_start=None) -> None:
    """Open the page at ``url`` (None: the one open), load ``passthrough``, stream the test pattern."""
    if url:
        page.goto(url)
    pipeline = ".scope-page .scope-pipeline"
    wait_for(page, f"document.querySelector('{pipeline} option[value=passthrough]') !== null")
    page.select_option(pipeline, "passthrough")
    page.click(".scope-page .scope-load-pipeline")
    wait_for(page, "document.querySelector('.scope-page .scope-pipeline-status')?.textContent === 'Loaded passthrough.'")
    page.select_option(".scope-page .scope-input", "pattern")
    if before_start:
        before_start()
    page.click(".scope-page .scope-start")
    wait_for(page, "document.querySelector('.scope-page')?.dataset.status === 'streaming'")


def test_scope_page_streams_over_the_websocket_when_asked(page, scope_server_process):
    """``/scope/?transport=websocket`` under ``daydream-scope``: no peer connection at all."""
    server = scope_server_process
    start_pattern_on_page(page, server.url + "/scope/?transport=websocket")
    assert page.evaluate("document.querySelector('.scope-page').dataset.transport") == "websocket"
    with server.client() as client:
        encoding = "h264" if "h264" in client.get("/api/v1/transports").json()["encodings"] else "jpeg"
    wait_for(page, f"document.querySelector('.scope-page .scope-messages').textContent.includes('WebSocket open: {encoding} frames.')")

    video = f"() => ({VIDEO_PIXELS})('.scope-page video')"
    wait_until(page, lambda: shows_the_pattern(page.evaluate(video)), "the test pattern's colours in the video")
    first = page.evaluate(video)
    wait_until(page, lambda: page.evaluate(video) != first, "the video to change")
    assert page.evaluate("window.__peerConnections.length") == 0, "asked for the WebSocket: no WebRTC attempt"
    with server.client() as client:
        [session] = client.get("/api/v1/webrtc/sessions").json()["sessions"]
        assert session["transport"] == "websocket"
    page.click(".scope-page .scope-stop")
    wait_for(page, "document.querySelector('.scope-page')?.dataset.status === 'stopped'")
    with server.client() as client:
        wait_until(page, lambda: not client.get("/api/v1/webrtc/sessions").json()["sessions"], "the session to end")


def test_scope_page_without_webrtc_streams_over_the_websocket(page, scope_server_process):
    """A browser with no RTCPeerConnection at all: "auto" goes to the WebSocket at once."""
    page.add_init_script("delete window.RTCPeerConnection;")
    start_pattern_on_page(page, scope_server_process.url + "/scope/")
    assert "This browser offers no WebRTC: streaming over the WebSocket." in page.inner_text(".scope-page .scope-messages")
    assert page.evaluate("document.querySelector('.scope-page').dataset.transport") == "websocket"
    wait_until(page, lambda: page.evaluate(f"() => ({VIDEO_PIXELS})('.scope-page video')"), "a first video frame")


def test_scope_page_under_lab_with_the_token_in_its_url_streams_over_the_websocket(page, lab):
    """No login cookie: the socket carries the page's ``?token=`` as the API calls do."""

    def refuse_cookies(route) -> None:
        # Jupyter answers a request authorised by its token with a login cookie: none is kept
        # (made outside the browser, whose own fetch would store it).
        request = route.request
        with httpx.Client(trust_env=False, timeout=30) as client:
            response = client.request(request.method, request.url, headers=request.headers, content=request.post_data_buffer)
        headers = {name: value for name, value in response.headers.items()
                   if name.lower() not in ("set-cookie", "content-encoding", "content-length", "transfer-encoding")}
        route.fulfill(status=response.status_code, headers=headers, body=response.content)

    # The API's calls (the page itself must come from the server: a page Playwright answered
    # would count as public to Chromium, which then keeps it off a loopback socket).
    page.route(lambda url: "/api/v1/" in url or url.endswith(".json"), refuse_cookies)
    page.goto(lab.url + f"scope/?token={lab.token}&transport=websocket")
    page.context.clear_cookies()

    def no_cookies() -> None:
        assert not page.context.cookies(), "nothing but the token may authorise the socket"

    start_pattern_on_page(page, None, before_start=no_cookies)
    wait_until(page, lambda: shows_the_pattern(page.evaluate(f"() => ({VIDEO_PIXELS})('.scope-page video')")), "the pattern")
