"""The requests of the reference's VACE workflow page, from a ``file://`` page in headless Chromium
(Origin ``null``) against ``daydream-scope`` with synthetic ``longlive`` weights.

The page is the spec's Quick Start page with its ``loadPipeline`` helper taking the pipeline and
its load parameters (the workflow page calls ``loadPipeline("longlive", {vace_enabled: true})``
without defining it), and its offer's ``initialParameters`` and input track set by the test. The
workflow's requests are sent as it writes them: uploads to ``POST /api/v1/assets?filename=`` as
raw bytes, the reference in ``initialParameters``, data-channel updates (a new reference, several,
``[]`` to clear), a control video as an input track in ``input_mode: "video"``, and the asset list.
Its ``/path/to/...`` placeholders become the paths the upload answers returned.
"""

from __future__ import annotations

import re

import pytest

from tests._subprocess_server import running_scope_server
from tests.chromium import browser, page, wait_for, wait_until  # noqa: F401  (fixtures)
from tests.subprocess_only import jp_asyncio_loop, jp_server_cleanup  # noqa: F401  (autouse fixtures)
from tests.test_browser import FRAMES_DECODED, quickstart_html, replace_once, sessions

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

#: The images the workflow page names (its placeholders' file names), each a different colour.
IMAGES = {
    "reference.png": "#d02020",
    "new_reference.png": "#20b040",
    "style_ref.png": "#2040d0",
    "character_ref.png": "#e0c020",
    "style_reference.png": "#20c0c0",
}

#: Page code: the workflow's requests, written against the Quick Start page's ``API_BASE``.
WORKFLOW = """
    window.pageMessages = [];
    window.pngOf = (colour) => new Promise((resolve) => {
      const canvas = document.createElement("canvas");
      canvas.width = 64; canvas.height = 48;
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = colour; ctx.fillRect(0, 0, 64, 48);
      ctx.fillStyle = "#fff"; ctx.fillRect(16, 12, 32, 24);
      canvas.toBlob((blob) => resolve(new File([blob], "picture.png", {type: "image/png"})), "image/png");
    });
    window.uploadAsset = async (name, colour) => {
      const file = await window.pngOf(colour);
      const response = await fetch(`${API_BASE}/api/v1/assets?filename=${encodeURIComponent(name)}`, {
        method: "POST",
        headers: { "Content-Type": "application/octet-stream" },
        body: await file.arrayBuffer()
      });
      if (!response.ok) throw new Error(`Upload failed: ${response.status} ${await response.text()}`);
      return await response.json();
    };
    window.listAssets = async (type) => (await fetch(`${API_BASE}/api/v1/assets?type=${type}`)).json();
    window.sendOnChannel = (message) => {
      const channel = window.__dataChannels[window.__dataChannels.length - 1];
      if (!channel.listening) {
        channel.listening = true;
        channel.addEventListener("message", (event) => window.pageMessages.push(JSON.parse(event.data)));
      }
      channel.send(JSON.stringify(message));
    };
    window.loaded = (async () => {
      try {
        await loadPipeline("longlive", { vace_enabled: true });
        return true;
      } catch (error) {
        statusEl.textContent = "Error: " + error.message;
        return false;
      }
    })();
"""


def vace_page(server_url: str) -> str:
    """The Quick Start page, changed only where the workflow page differs from it."""
    html = quickstart_html()
    html = replace_once(html, 'const API_BASE = "http://localhost:8000";', f'const API_BASE = "{server_url}";')
    # The helper as the workflow page calls it: a pipeline and its load parameters.
    html = replace_once(html, "async function loadPipeline() {", "async function loadPipeline(pipelineId, loadParams) {")
    html = replace_once(html, 'pipeline_id: "longlive"\n', "pipeline_id: pipelineId,\n          load_params: loadParams\n")
    # The offer carries the workflow's initialParameters; a control video goes as an input track.
    html, count = re.subn(r"initialParameters: \{.*?\n          \}\n", "initialParameters: window.initialParameters\n", html, flags=re.S)
    assert count == 1, "expected one initialParameters object in the Quick Start page"
    html = replace_once(
        html,
        'pc.addTransceiver("video");',
        'if (window.inputStream) { window.inputStream.getTracks().forEach((track) => { '
        'if (track.kind === "video") pc.addTrack(track, window.inputStream); }); } else { pc.addTransceiver("video"); }',
    )
    main = html[html.index("    // Main\n") : html.index("  </script>")]
    return html.replace(main, WORKFLOW)


@pytest.fixture(scope="module")
def server(tmp_path_factory, synthetic_models):
    env = {"DAYDREAM_SCOPE_MODELS_DIR": str(synthetic_models)}
    with running_scope_server(tmp_path_factory.mktemp("browser-vace"), env=env) as server:
        yield server


def session_parameters(server) -> dict:
    (live,) = [s for s in sessions(server) if s["connection_state"] == "connected"]
    return live


def frames_grow(page, what: str, count: int = 5) -> None:
    start = page.evaluate(FRAMES_DECODED)
    wait_until(page, lambda: page.evaluate(FRAMES_DECODED) >= start + count, what, timeout=180)


def test_vace_workflow_page_from_a_file_url(page, server, tmp_path):
    path = tmp_path / "vace.html"
    path.write_text(vace_page(server.url))
    seen, failed = [], []
    page.on("response", lambda r: seen.append((r.request.method, r.url.replace(server.url, "").split("?")[0], r.status)))
    page.on("requestfailed", lambda r: failed.append(f"{r.method} {r.url}: {r.failure}"))
    page.goto(path.as_uri())
    assert page.evaluate("window.loaded"), page.inner_text("#status")
    with server.client() as client:
        status = client.get("/api/v1/pipeline/status").json()
    assert status["pipeline_id"] == "longlive" and status["load_params"]["vace_enabled"] is True, status

    # Uploads: the answers' paths replace the page's /path/to/ placeholders.
    paths = {name: page.evaluate("([n, c]) => window.uploadAsset(n, c)", [name, colour])["path"] for name, colour in IMAGES.items()}
    listed = page.evaluate("window.listAssets('image')")["assets"]
    assert sorted(a["path"] for a in listed) == sorted(paths.values()), listed

    # A reference in initialParameters, receive only.
    initial = {
        "prompts": [{"text": "A person walking in a forest", "weight": 1.0}],
        "vace_ref_images": [paths["reference.png"]],
        "vace_context_scale": 1.0,
    }
    page.evaluate("(params) => { window.initialParameters = params; return startStream(); }", initial)
    frames_grow(page, "frames of the session started with a reference")
    live = session_parameters(server)
    assert live["parameters"]["prompts"] == initial["prompts"] and live["parameters"]["vace_context_scale"] == 1.0
    assert live["input_mode"] == "text"

    # Data-channel updates: a new reference, several, then none.
    for message in (
        {"vace_ref_images": [paths["new_reference.png"]], "vace_context_scale": 1.0},
        {"vace_ref_images": [paths["style_ref.png"], paths["character_ref.png"]], "vace_context_scale": 1.2},
        {"vace_ref_images": []},
    ):
        page.evaluate("(message) => window.sendOnChannel(message)", message)
    wait_until(page, lambda: session_parameters(server)["parameters"].get("vace_context_scale") == 1.2, "the updates applied")
    frames_grow(page, "frames after the data-channel updates")
    chunk = session_parameters(server)["stats"]["chunk"]
    wait_until(page, lambda: session_parameters(server)["stats"]["chunk"] > chunk, "a chunk after the updates", timeout=180)
    assert "vace_ref_images" not in session_parameters(server)["parameters"], "references are one-shot"
    refused = page.evaluate("window.pageMessages.filter((m) => m.type === 'parameters_rejected' || m.event === 'chunk_failed')")
    assert not refused, refused
    page.evaluate("window.__peerConnections.forEach((pc) => pc.close())")
    wait_until(page, lambda: not [s for s in sessions(server) if s["connection_state"] == "connected"], "the session closed")

    # A control video: the (fake) camera as the input track in video mode, then a reference with it.
    page.evaluate("async () => { window.inputStream = await navigator.mediaDevices.getUserMedia({ video: true }); }")
    control = {"input_mode": "video", "prompts": [{"text": "A cyberpunk city scene", "weight": 1.0}]}
    page.evaluate("(params) => { window.initialParameters = params; return startStream(); }", control)
    frames_grow(page, "frames of the session with an input track")
    page.evaluate("(message) => window.sendOnChannel(message)", {"vace_ref_images": [paths["style_reference.png"]], "vace_context_scale": 1.0})
    # Here the input track is video-to-video input unless asked (vace_use_input_video); ask.
    page.evaluate("(message) => window.sendOnChannel(message)", {"vace_use_input_video": True})
    wait_until(page, lambda: session_parameters(server)["parameters"].get("vace_use_input_video") is True, "the switch applied")
    chunk = session_parameters(server)["stats"]["chunk"]
    wait_until(page, lambda: session_parameters(server)["stats"]["chunk"] > chunk, "a chunk with the control video", timeout=180)
    frames_grow(page, "frames with the camera as the control video")
    live = session_parameters(server)
    assert live["input_mode"] == "video" and live["stats"]["input_frames_used"] > 0, live
    refused = page.evaluate("window.pageMessages.filter((m) => m.type === 'parameters_rejected' || m.event === 'chunk_failed')")
    assert not refused, refused

    assert not failed, failed
    assert all(status in (200, 204) for _, _, status in seen), [s for s in seen if s[2] not in (200, 204)]
    assert ("POST", "/api/v1/webrtc/offer", 200) in seen and ("POST", "/api/v1/assets", 200) in seen
    assert not [line for line in page.console_lines if "CORS" in line or "Access-Control" in line]
