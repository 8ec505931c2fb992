"""A real headless Chromium against a real ``daydream-scope``: the documented pages stream.

The module's server registers the test pipelines (``tests/pipelines.py``) and downloads model
files from a local hub speaking the Hugging Face protocol, so every answer a page gets is the
real server's. Chromium is set up by ``tests/chromium.py``.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import httpx
import pytest

from scope.widgets.scope_widget import DEFAULT_PROMPT
from tests._subprocess_server import running_scope_server
from tests.chromium import VIDEO_PIXELS, browser, new_page, page, wait_for, wait_until  # noqa: F401  (fixtures)
from tests.empty_pool import empty_pool
from tests.fakehub import FakeHub
from tests.pipelines import DownloadablePipeline, prompt_level
from tests.polling import wait_until_sync
from tests.servers import ScopeServer
from tests.subprocess_only import jp_asyncio_loop, jp_server_cleanup  # noqa: F401  (autouse fixtures)

#: The API spec whose Quick Start page is replayed (kept outside this repository, beside it in CI).
SPEC = Path(os.environ.get("SCOPE_SERVER_SPEC", Path(__file__).resolve().parents[2] / "shared" / "spec" / "server.md"))

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

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

#: Resolves once the <video> presents its next frame (rejects after 30 s).
NEXT_PRESENTED_FRAME = """
(selector) => new Promise((resolve, reject) => {
  const video = document.querySelector(selector);
  const timer = setTimeout(() => reject(new Error("no new video frame in 30 s")), 30000);
  video.requestVideoFrameCallback((now, metadata) => { clearTimeout(timer); resolve(metadata.presentedFrames); });
})
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

#: What ``test-download`` needs from the hub, and files it does not need.
BASE, EXTRA = DownloadablePipeline.artifacts[0].repo_id, DownloadablePipeline.artifacts[1].repo_id
HUB_FILES = {
    BASE: {
        "config.json": b'{"dim": 64}',
        "weights.safetensors": random.Random(1).randbytes(200_000),
        "google/tok/spiece.model": random.Random(2).randbytes(40_000),
        "README.md": b"# not needed",
    },
    EXTRA: {"extra.pt": random.Random(3).randbytes(120_000), "other.pt": b"not needed"},
}
NEEDED = [(BASE, "config.json"), (BASE, "weights.safetensors"), (BASE, "google/tok/spiece.model"), (EXTRA, "extra.pt")]


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub():
    """The hub the module's server downloads from."""
    with FakeHub(HUB_FILES) as hub:
        yield hub


@pytest.fixture(scope="module")
def scope_server_process(tmp_path_factory, hub) -> ScopeServer:
    """``daydream-scope`` with the test pipelines, its hub the module's fake one (no weights)."""
    env = {"HF_ENDPOINT": hub.endpoint}
    with running_scope_server(tmp_path_factory.mktemp("browser-server"), env=env, test_pipelines=True) as server:
        yield server


@pytest.fixture
def server(scope_server_process: ScopeServer) -> ScopeServer:
    """The module's server with no pipeline in its pool and no session left from an earlier test."""
    with scope_server_process.client() as client:
        for session in client.get("/api/v1/webrtc/sessions").json()["sessions"]:
            client.delete(f"/api/v1/webrtc/sessions/{session['id']}")
        empty_pool(client)
    return scope_server_process


# -- helpers ------------------------------------------------------------------------------------


def quickstart_html() -> str:
    """The Quick Start page exactly as the spec prints it (the spec is always beside the checkout in CI)."""
    if not SPEC.is_file():
        pytest.fail(
            f"The API spec is not at {SPEC}: the Quick Start tests replay its page. Put the spec's "
            "folder beside the checkout (../shared/spec/server.md) or set SCOPE_SERVER_SPEC to server.md.",
            pytrace=False,
        )
    match = re.search(r"```html\n(.*?)```", SPEC.read_text(), re.S)
    assert match, f"no html block in {SPEC}"
    return match.group(1)


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected exactly one {old!r} in the Quick Start page"
    return text.replace(old, new)


def assert_frames_flow(page, minimum_growth: int = 20) -> None:
    first = wait_until(page, lambda: page.evaluate(FRAMES_DECODED), "a first decoded frame")
    wait_until(page, lambda: page.evaluate(FRAMES_DECODED) >= first + minimum_growth, "framesDecoded to grow")


#: How far (per channel) a quadrant of the received picture may be from the colour drawn: colour
#: conversion and the video codec move saturated colours by up to 35 here; the two canvases of
#: the send-and-receive test differ by 190 or more.
COLOUR_TOLERANCE = 45.0


def colour_error(patches, expected) -> float:
    """The largest per-channel difference between the patches and the colours drawn there."""
    return max(abs(g - w) for got, want in zip(patches, expected) for g, w in zip(got, want))


def assert_colours_match(patches, expected, tolerance: float = COLOUR_TOLERANCE) -> None:
    for index, (got, want) in enumerate(zip(patches, expected)):
        off = max(abs(g - w) for g, w in zip(got, want))
        assert off < tolerance, f"quadrant {index}: got {[round(v) for v in got]}, drew {want}"


def sample_per_chunk(page, chunk_count, sample, count: int, selector: str = "#video", timeout: float = 60.0) -> list:
    """``count`` results of ``sample()``, each once the server has produced a new chunk (by
    ``chunk_count()``) and the video has presented a frame after that."""
    samples = []
    for _ in range(count):
        seen = chunk_count()
        wait_until(page, lambda: chunk_count() > seen, f"a chunk after chunk {seen}", timeout=timeout)
        page.evaluate(NEXT_PRESENTED_FRAME, selector)
        samples.append(sample())
    return samples


def assert_video_moves(page, chunk_count, selector: str = "#video") -> None:
    """The moving square shows up at different places from one chunk to the next."""
    samples = sample_per_chunk(page, chunk_count, lambda: page.evaluate(VIDEO_PATCHES, [selector, MOVING_BAND]), 4, selector)
    brightness = [[round(sum(p) / 3) for p in sample] for sample in samples]
    assert len({tuple(b) for b in brightness}) > 1, f"the video did not change: {brightness}"


def server_chunks(server: ScopeServer):
    """A reader of the only session's chunk counter, as the server reports it."""
    def count() -> int:
        (live,) = sessions(server)
        return live["stats"]["chunk"]
    return count


def sessions(server: ScopeServer) -> list[dict]:
    with server.client() as client:
        return client.get("/api/v1/webrtc/sessions").json()["sessions"]


# -- the spec's Quick Start page, unchanged -----------------------------------------------------


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

def canvas_source(colours=QUICKSTART_COLOURS, square: bool = True) -> str:
    """Page code that sends a canvas of four coloured quadrants (and a moving white square).

    The quadrants are drawn from ``window.canvasColours``, which a test may change while it streams.
    """
    css = ", ".join(f'"rgb{tuple(colour)}"' for colour in colours)
    moving = "ctx.fillStyle = \"#fff\";\n        ctx.fillRect((tick * 6) % 290, 105, 30, 30);" if square else ""
    return f"""// Send a canvas with a moving pattern (video-to-video mode)
      const canvas = document.createElement("canvas");
      canvas.width = 320;
      canvas.height = 240;
      const ctx = canvas.getContext("2d");
      window.canvasColours = [{css}];
      let tick = 0;
      setInterval(() => {{
        window.canvasColours.forEach((colour, i) => {{
          ctx.fillStyle = colour;
          ctx.fillRect((i % 2) * 160, Math.floor(i / 2) * 120, 160, 120);
        }});
        {moving}
        tick += 1;
      }}, 33);
      const source = canvas.captureStream(30);
      pc.addTrack(source.getVideoTracks()[0], source);"""


def send_and_receive_html(server_url: str, pipeline_id: str = "passthrough", load_params: dict | None = None,
                          **canvas) -> str:
    """The Quick Start page sending a canvas (``canvas_source`` arguments) in video mode."""
    html = quickstart_html()
    html = replace_once(html, 'const API_BASE = "http://localhost:8000";', f'const API_BASE = "{server_url}";')
    load = f'pipeline_id: "{pipeline_id}"' + (f", load_params: {json.dumps(load_params)}" if load_params else "")
    html = replace_once(html, 'pipeline_id: "longlive"', load)
    html = replace_once(html, '// Add video transceiver (receive-only mode)\n      pc.addTransceiver("video");', canvas_source(**canvas))
    html = replace_once(html, "initialParameters: {\n", 'initialParameters: {\n            input_mode: "video",\n')
    return html


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
    assert_video_moves(page, server_chunks(server))

    # Another input, another picture: the quadrants in the opposite order come back within a few chunks.
    swapped = QUICKSTART_COLOURS[::-1]
    page.evaluate("(colours) => { window.canvasColours = colours; }", [f"rgb{tuple(c)}" for c in swapped])

    def quadrants_swapped():
        patches = page.evaluate(VIDEO_PATCHES, ["#video", QUADRANT_POINTS])
        return patches if colour_error(patches, swapped) < COLOUR_TOLERANCE else None

    for _ in range(10):
        (patches,) = sample_per_chunk(page, server_chunks(server), quadrants_swapped, 1)
        if patches:
            break
    else:
        raise AssertionError(f"the picture did not follow the new input: {page.evaluate(VIDEO_PATCHES, ['#video', QUADRANT_POINTS])}")
    # The two inputs differ by far more than a picture differs from its input.
    assert colour_error(patches, QUICKSTART_COLOURS) > 3 * COLOUR_TOLERANCE, patches
    assert page.inner_text("#status") == "Connected - Streaming"


# -- the server's own page: the notebook widget's view in a page-sized layout -------------------

#: The page's mount point, and the view's controls in it (the class names the widget's tests use too).
PAGE = ".scope-widget.scope-page"
PIPELINE, LOAD, INPUT = f"{PAGE} .scope-pipeline", f"{PAGE} .scope-load-pipeline", f"{PAGE} .scope-input"
START, PAUSE, STOP = f"{PAGE} .scope-start", f"{PAGE} .scope-pause", f"{PAGE} .scope-stop"
MODELS, PIPELINE_STATUS, PROGRESS = f"{PAGE} .scope-models", f"{PAGE} .scope-pipeline-status", f"{PAGE} .scope-progress"
PROMPT, SEND_PROMPTS = f"{PAGE} .scope-prompt-text", f"{PAGE} .scope-send-prompts"
VIDEO, STATS, MESSAGES, BADGE = f"{PAGE} .scope-video", f"{PAGE} .scope-stats", f"{PAGE} .scope-messages", f"{PAGE} .scope-badge"
DOWNLOAD = f"{PAGE} button:text-is('Download models')"
WRITE_SYNTHETIC = f"{PAGE} button:text-is('Use synthetic weights')"


def text_is(selector: str, text: str) -> str:
    """A page condition: ``selector``'s text is exactly ``text``."""
    return f"document.querySelector({json.dumps(selector)})?.textContent === {json.dumps(text)}"


def wait_for_status(page, status: str, timeout_ms: float | None = None) -> None:
    """Wait for the view's state (``data-status``: ready, streaming, paused, stopped, error, ...)."""
    wait_for(page, f"document.querySelector({json.dumps(PAGE)})?.dataset.status === {json.dumps(status)}", timeout_ms)


def wait_for_message(page, text: str, timeout_ms: float | None = None) -> None:
    wait_for(page, f"document.querySelector({json.dumps(MESSAGES)})?.textContent.includes({json.dumps(text)})", timeout_ms)


def open_page(page, url: str, pipeline_id: str) -> None:
    """Open the page at ``url`` with ``pipeline_id`` chosen."""
    page.goto(url)
    wait_for(page, f"document.querySelector({json.dumps(f'{PIPELINE} option[value={pipeline_id!r}]')}) !== null")
    page.select_option(PIPELINE, pipeline_id)


def load_on_page(page, url: str, pipeline_id: str = "passthrough", takes_prompts: bool = False) -> None:
    """Open the page at ``url`` and load a pipeline that needs no model files with it."""
    open_page(page, url, pipeline_id)
    wait_for(page, text_is(MODELS, "No model files needed."))
    assert page.is_hidden(DOWNLOAD)
    page.click(LOAD)
    wait_for(page, text_is(PIPELINE_STATUS, f"Loaded {pipeline_id}."))
    assert page.is_visible(PROMPT) == takes_prompts


def load_passthrough_on_page(page, url: str) -> None:
    load_on_page(page, url, "passthrough")


STATS_CHUNK = f"(/chunk (\\d+) ·/.exec(document.querySelector({json.dumps(STATS)})?.textContent ?? '') || [null, -1])[1]"


def page_chunks(page) -> int:
    """The chunk count the page's figures line shows (-1 before the first one)."""
    return int(page.evaluate(STATS_CHUNK))


def wait_for_chunks(page, after: int = 0, timeout_ms: float | None = None) -> int:
    """Wait until the figures line reports more than ``after`` chunks; returns the count."""
    wait_for(page, f"Number({STATS_CHUNK}) > {after}", timeout_ms)
    return page_chunks(page)


def test_scope_page_streams_the_fake_webcam(page, server):
    load_passthrough_on_page(page, server.url + "/scope/")
    # passthrough transforms video: its input starts as the webcam.
    assert page.input_value(INPUT) == "webcam"
    page.click(START)

    wait_for_chunks(page)
    assert_frames_flow(page)
    wait_for_status(page, "streaming")
    stats = page.inner_text(STATS)
    assert re.fullmatch(r"\d+\.\d fps( · \d+ ms latency)? · chunk \d+ · \d+ ms/chunk", stats), stats
    assert "No webcam" not in messages(page), "the fake camera must have been used"
    assert page.is_hidden(BADGE), "no synthetic weights here"
    assert len(sessions(server)) == 1

    page.click(PAUSE)
    wait_for_status(page, "paused")
    assert page.inner_text(PAUSE) == "Resume"
    wait_until(page, lambda: sessions(server)[0]["stats"]["state"] == "paused", "the server to pause the session")
    paused_at = page_chunks(page)
    page.click(PAUSE)
    wait_for_status(page, "streaming")
    wait_for_chunks(page, after=paused_at)

    page.click(STOP)
    wait_for_status(page, "stopped")
    wait_until(page, lambda: not sessions(server), "the server to close the session")
    assert page.is_enabled(START)


def test_scope_page_started_again_before_its_stop_is_answered_keeps_the_new_stream(page, server):
    """Stop, then Start before the server has answered the stop's DELETE (``w.stop(); w.start()``
    on a busy machine): the new stream is the view's own, and the old stop finishing does not end it."""
    load_passthrough_on_page(page, server.url + "/scope/")
    page.click(START)
    wait_for_chunks(page)
    held = []
    page.route("**/api/v1/webrtc/sessions/*", lambda route: held.append(route) if route.request.method == "DELETE" else route.continue_())
    page.click(STOP)
    wait_until(page, lambda: held, "the stop's DELETE")
    page.click(START)
    wait_for_status(page, "streaming")
    new_session = page.evaluate(f"document.querySelector({json.dumps(PAGE)}).dataset.session")
    for route in held:
        route.continue_()
    wait_until(page, lambda: [s["id"] for s in sessions(server)] == [new_session], "the old session to be freed")
    wait_for_chunks(page, after=page_chunks(page))
    wait_for_status(page, "streaming")
    page.click(STOP)
    wait_until(page, lambda: not sessions(server), "the server to close the session")


def test_scope_page_falls_back_to_a_test_pattern_without_a_webcam(page, server):
    page.add_init_script(
        "navigator.mediaDevices.getUserMedia = () => "
        "Promise.reject(new DOMException('Requested device not found', 'NotFoundError'));"
    )
    load_passthrough_on_page(page, server.url + "/scope/")
    page.click(START)

    wait_for_chunks(page)
    assert "No webcam (Requested device not found): sending a test pattern instead." in messages(page)
    assert_frames_flow(page)
    wait_for(page, f"document.querySelector({json.dumps(VIDEO)}).videoWidth === 512 && document.querySelector({json.dumps(VIDEO)}).videoHeight === 512")
    assert_colours_match(page.evaluate(VIDEO_PATCHES, [VIDEO, QUADRANT_POINTS]), PAGE_PATTERN_COLOURS)
    page.click(STOP)
    wait_until(page, lambda: not sessions(server), "the server to close the session")


RECORD, RECORDING_STATE = f"{PAGE} .scope-record", f"{PAGE} .scope-recording-state"
RECORDING_LINK, TIMELINE_LINK = f"{PAGE} .scope-recording-link", f"{PAGE} .scope-recording-timeline"


def mp4_frames(path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


def record_on_page(page, url: str) -> None:
    """Stream the fake webcam through passthrough on the page at ``url`` and click Record."""
    load_passthrough_on_page(page, url)
    assert page.is_hidden(RECORD), "Record is offered only while a stream runs"
    page.click(START)
    wait_for_chunks(page)
    page.click(RECORD)


#: The seconds the recording state shows while it records ("Recording… 12.5 s"; -1 otherwise).
RECORDED_SECONDS = f"Number((/^Recording… (\\d+\\.\\d) s$/.exec(document.querySelector({json.dumps(RECORDING_STATE)})?.textContent) ?? [0, -1])[1])"


def test_scope_page_records_on_the_server_and_links_the_mp4(page, server, tmp_path):
    record_on_page(page, server.url + "/scope/")
    wait_for(page, f"{RECORDED_SECONDS} >= 0")
    assert page.inner_text(RECORD) == "■ Stop"
    wait_for(page, f"{RECORDED_SECONDS} >= 0.5")  # it follows the server's figures while it records
    page.click(RECORD)
    wait_for(page, f"!document.querySelector({json.dumps(RECORDING_LINK)}).hidden")
    [session] = sessions(server)
    assert page.get_attribute(RECORDING_LINK, "href") == f"{server.url}/api/v1/recordings/{session['id']}"
    assert page.get_attribute(TIMELINE_LINK, "href") == f"{server.url}/api/v1/recordings/{session['id']}/timeline"
    assert page.is_disabled(RECORD), "a session records once"
    wait_for_message(page, "Recording stopped: stopped on request")
    frames = int(re.search(r"\((\d+) frames\)", page.inner_text(RECORDING_STATE)).group(1))
    with page.expect_download() as download:
        page.click(RECORDING_LINK)
    download.value.save_as(tmp_path / "recording.mp4")
    assert mp4_frames(tmp_path / "recording.mp4") == frames > 0


def test_scope_page_says_why_the_server_stopped_a_recording(page, tmp_path):
    """A recording that reaches ``max_recording_seconds`` stops by itself; the page says so."""
    env = {"DAYDREAM_SCOPE_MAX_RECORDING_SECONDS": "1"}
    with running_scope_server(tmp_path / "server", env=env, test_pipelines=True) as short:
        record_on_page(page, short.url + "/scope/")
        wait_for_message(page, "Recording stopped: the maximum recording duration was reached")
        wait_for(page, f"!document.querySelector({json.dumps(RECORDING_LINK)}).hidden")
        assert "the maximum recording duration was reached" in page.inner_text(RECORDING_STATE)
        assert page.is_disabled(RECORD)
        [recording] = httpx.get(short.url + "/api/v1/recordings", trust_env=False).json()["recordings"]
        assert recording["stop_reason"] == "max_duration" and 0 < recording["duration_s"] <= 1


def test_scope_page_loads_with_the_input_modes_size_hints(page, server):
    """``test-pattern``'s ``mode_defaults.video`` offers 64x64 (its own default is 64x96): with
    an input chosen, Load sends the hint for what is unset, and a width typed in wins."""
    open_page(page, server.url + "/scope/", "test-pattern")
    width = page.locator(f"{PAGE} .scope-load .scope-field", has_text="Width").locator("input")
    assert width.input_value() == ""  # text mode, its default: no hint
    page.select_option(INPUT, "pattern")
    assert width.input_value() == "64"
    page.click(LOAD)
    wait_for(page, text_is(PIPELINE_STATUS, "Loaded test-pattern."))
    with server.client() as client:
        assert client.get("/api/v1/pipeline/status").json()["load_params"]["width"] == 64
    page.click(f"{PAGE} .scope-load summary")
    width.fill("128")
    page.click(LOAD)
    wait_for(page, f"{text_is(PIPELINE_STATUS, 'Loaded test-pattern.')} && document.querySelector({json.dumps(PAGE)}).dataset.status === 'ready'")
    with server.client() as client:
        wait_until(page, lambda: client.get("/api/v1/pipeline/status").json()["load_params"]["width"] == 128, "the typed width")

    # The view's own load fails, and another client makes passthrough current before the view
    # first looks: the failed load's entry in the pool still says why.
    def passthrough_made_current(route) -> None:
        with server.client() as client:
            wait_until_sync(lambda s: any(p["status"] == "error" for p in s["pipelines"]), what="the failed load",
                            value=lambda: client.get("/api/v1/pipeline/status").json())
            make_current(server, client, "passthrough")
        route.continue_()

    page.route(STATUS_URL, passthrough_made_current, times=1)
    page.locator(f"{PAGE} .scope-load .scope-field", has_text="Fail Load").locator("input").check()
    page.click(LOAD)
    wait_for_status(page, "error")
    status_line = page.inner_text(PIPELINE_STATUS)
    assert status_line.startswith("Loading test-pattern failed:") and "weights are corrupt (on purpose)" in status_line

    # Its own pipeline's load warnings, not the current one's (passthrough, made current again
    # before the reopened view first looks): its entry in the pool carries them.
    with server.client() as client:
        make_current(server, client, "test-pattern", {"load_warnings": ["Use fp8 on this GPU."]})
    looks: list[str] = []

    def passthrough_current_at_the_second_look(route) -> None:
        looks.append(route.request.url)  # the page's own look (it picks test-pattern), then the view's
        if len(looks) == 2:
            with server.client() as client:
                make_current(server, client, "passthrough")
        route.continue_()

    page.route(STATUS_URL, passthrough_current_at_the_second_look, times=2)
    page.goto(server.url + "/scope/")
    wait_for(page, text_is(PIPELINE_STATUS, "Loaded test-pattern."))
    wait_for_message(page, "test-pattern: Use fp8 on this GPU.")


STATUS_URL = "**/api/v1/pipeline/status"


def make_current(server: ScopeServer, client: httpx.Client, pipeline_id: str, load_params: dict | None = None) -> None:
    """Another client's load: ``pipeline_id`` becomes the server's current pipeline."""
    body = {"pipeline_id": pipeline_id, "load_params": load_params or {}}
    assert client.post("/api/v1/pipeline/load", json=body).status_code == 200
    server.wait_status(client, ("loaded",))


def messages(page) -> str:
    return page.inner_text(MESSAGES)


def picture_level(page) -> float:
    """Grey level of the picture's centre, where ``test-pattern`` paints its prompt's level."""
    (patch,) = page.evaluate(VIDEO_PATCHES, [VIDEO, [(0.6, 0.6)]])
    return sum(patch) / 3


def assert_picture_follows_prompt(page, text: str) -> None:
    """Within a few chunks, the picture shows the level ``test-pattern`` derives from ``text``."""
    wanted = prompt_level({"prompts": [{"text": text}]})
    levels = []

    def shows_it() -> bool:
        levels.append(round(picture_level(page)))
        return abs(levels[-1] - wanted) < 12

    for _ in range(8):
        if sample_per_chunk(page, lambda: page_chunks(page), shows_it, 1, VIDEO)[0]:
            return
    raise AssertionError(f"the picture never showed {text!r} (level {wanted}); it showed {levels}")


RED_FOX, BLUE_BIRD = "a red fox", "a blue bird"


def test_scope_page_prompts_and_shows_the_servers_refusals(page, server):
    """``test-pattern`` takes prompts and paints their level: the page's prompts reach its frames."""
    levels = [prompt_level({"prompts": [{"text": t}]}) for t in (RED_FOX, BLUE_BIRD)]
    assert abs(levels[0] - levels[1]) > 40, levels  # told apart in the picture (12 levels either side)
    load_on_page(page, server.url + "/scope/", "test-pattern", takes_prompts=True)
    # A pipeline that generates from text starts with no input and the default prompt.
    assert page.input_value(INPUT) == "none"
    assert page.input_value(PROMPT) == DEFAULT_PROMPT

    # Another client makes passthrough the current pipeline: the page keeps the test-pattern it
    # loaded (its offer names it) and streams the prompt typed in the box.
    with server.client() as client:
        assert client.post("/api/v1/pipeline/load", json={"pipeline_id": "passthrough"}).status_code == 200
        wait_until(page, lambda: client.get("/api/v1/pipeline/status").json()["pipeline_id"] == "passthrough",
                   "passthrough to load")
        server.wait_status(client, ("loaded",))
    page.fill(PROMPT, RED_FOX)
    page.click(START)
    wait_for_chunks(page)
    (live,) = sessions(server)
    assert (live["pipeline_id"], live["load_params"]["width"]) == ("test-pattern", 96)
    assert live["input_mode"] == "text" and live["parameters"]["prompts"] == [{"text": RED_FOX, "weight": 1.0}]
    assert_picture_follows_prompt(page, RED_FOX)

    page.fill(PROMPT, BLUE_BIRD)
    page.click(SEND_PROMPTS)
    wait_for_message(page, f'Prompts sent: "{BLUE_BIRD}"')
    assert_picture_follows_prompt(page, BLUE_BIRD)

    # An empty prompt is not sent, and the page says why.
    page.fill(PROMPT, "   ")
    page.click(SEND_PROMPTS)
    wait_for_message(page, "Nothing sent: the prompt is empty")
    assert sessions(server)[0]["parameters"]["prompts"] == [{"text": BLUE_BIRD, "weight": 1.0}]

    page.evaluate("window.__dataChannels.at(-1).send(JSON.stringify({noise_scale: 5}))")
    wait_for_message(page, "Parameters refused: noise_scale")
    page.evaluate("window.__dataChannels.at(-1).send(JSON.stringify({not_a_parameter: 1}))")
    wait_for_message(page, "not_a_parameter")

    with server.client() as client:
        session_id = sessions(server)[0]["id"]
        assert client.delete(f"/api/v1/webrtc/sessions/{session_id}").status_code == 204
    wait_for_status(page, "stopped")
    assert "Stream stopped." in messages(page)
    assert page.is_enabled(START)

    # A refusal over the pool's memory budget (409) reads as why, then what holds the memory.
    refusal = page.evaluate("""async () => (await import("./api.js")).describeErrors([{
      loc: ["body", "pipeline_id"], msg: "Not enough memory for pipeline 'longlive'.", type: "memory_budget",
      holders: [{pipeline_id: "passthrough", load_params: {height: 64, width: 96}, sessions: ["s1"], held_bytes: 3 * 2 ** 20}],
    }])""")
    assert refusal == (
        "Not enough memory for pipeline 'longlive'. Held by: passthrough 96x64 (1 session, 3.0 MiB). "
        "Stop one of their streams or unload a pipeline to make room."
    )


def test_scope_page_queues_a_transition_asked_for_before_start(page, server):
    """A transition asked for with no stream waits: the stream starts on the prompt it moves away
    from, and the transition follows the first chunk (the same path as ``w.transition_to``)."""
    load_on_page(page, server.url + "/scope/", "test-pattern", takes_prompts=True)
    offers = []
    page.on("request", lambda r: offers.append(r.post_data_json) if r.url.endswith("/api/v1/webrtc/offer") else None)
    page.fill(PROMPT, RED_FOX)
    page.fill(f"{PAGE} .scope-transition-text", BLUE_BIRD)
    page.fill(f"{PAGE} .scope-transition-steps", "2")
    page.click(f"{PAGE} .scope-transition")
    wait_for_message(page, f'Transition to "{BLUE_BIRD}" queued')
    assert not sessions(server)

    page.click(START)
    wait_for_chunks(page)
    (offer,) = offers
    assert offer["initialParameters"]["prompts"] == [{"text": RED_FOX, "weight": 1}], offer["initialParameters"]
    assert "transition" not in offer["initialParameters"]
    wait_for_message(page, f'Transition to "{BLUE_BIRD}" over 2 chunks.')
    assert_picture_follows_prompt(page, BLUE_BIRD)
    # The server ended the transition on its target.
    wait_until(page, lambda: sessions(server)[0]["parameters"]["prompts"] == [{"text": BLUE_BIRD, "weight": 1.0}],
               "the session to end on the transition's target")
    page.click(STOP)
    wait_until(page, lambda: not sessions(server), "the server to close the session")


def models_status(server: ScopeServer, pipeline_id: str) -> dict:
    with server.client() as client:
        return client.get("/api/v1/models/status", params={"pipeline_id": pipeline_id}).json()


def progress_text(progress: dict) -> str:
    """The status line the page derives from a download's progress."""
    file = f" ({progress['current_artifact']})" if progress["current_artifact"] else ""
    return f"Downloading {progress['percentage']:.1f}%{file}"


def test_scope_page_shows_the_chosen_pipelines_models_however_slow_the_lora_list(page, server):
    """The page opens on ``longlive``, which takes LoRAs, so it asks for the LoRA list; the user
    picks ``test-pattern`` before that list comes back. The models line and its buttons stay
    ``test-pattern``'s: ``longlive``'s check must not land over them when the list arrives."""
    held = []
    page.route("**/api/v1/lora/list", lambda route: held.append(route))
    page.goto(server.url + "/scope/")
    # The page has shown ``longlive`` once it asks for its LoRA list; only then does the user choose.
    wait_until(page, lambda: held, "the page to open on longlive, which takes LoRAs, and ask for their list")
    page.select_option(PIPELINE, "test-pattern")
    wait_for(page, text_is(MODELS, "No model files needed."))
    with page.expect_response("**/api/v1/lora/list"):
        for route in held:
            route.continue_()
    # Had the older choice's check been waiting on the list, it would run now: give it ample time.
    deadline = page.evaluate("Date.now()") + 3000
    while page.evaluate("Date.now()") < deadline:
        assert page.inner_text(MODELS) == "No model files needed."
        assert page.is_hidden(DOWNLOAD) and page.is_hidden(WRITE_SYNTHETIC)
        page.wait_for_timeout(100)
    page.click(LOAD)
    wait_for(page, text_is(PIPELINE_STATUS, "Loaded test-pattern."))


def test_scope_page_downloads_model_files_with_a_progress_bar(page, server, hub):
    """``test-download`` needs files from the hub: the page starts the download and shows its
    real progress, held part-way by the hub until the page has shown it."""
    pipeline_id = DownloadablePipeline.info.id
    assert models_status(server, pipeline_id)["downloaded"] is False
    open_page(page, server.url + "/scope/", pipeline_id)
    wait_for(page, text_is(MODELS, "Model files not downloaded."))
    assert page.is_visible(DOWNLOAD) and page.is_hidden(PROGRESS)

    # The last file waits at its first byte: the files before it are counted, and the progress
    # stands still until the hub lets it go on.
    hub.hold_file(EXTRA, "extra.pt")
    try:
        page.click(DOWNLOAD)
        wait_until(page, lambda: hub.file_held(EXTRA, "extra.pt"), "the hub to hold extra.pt")
        progress = models_status(server, pipeline_id)["progress"]
        assert progress["is_downloading"] and 0 < progress["percentage"] < 100, progress
        wait_until(page, lambda: page.inner_text(MODELS) == progress_text(progress),
                   f"the page to show {progress_text(progress)!r}")
        assert page.is_visible(PROGRESS) and page.is_hidden(DOWNLOAD)
        assert page.evaluate(f"document.querySelector({json.dumps(PROGRESS)}).value") == progress["percentage"]
    finally:
        hub.release_file()
    wait_for(page, text_is(MODELS, "Model files downloaded."))
    assert page.is_hidden(DOWNLOAD) and page.is_hidden(PROGRESS)
    assert models_status(server, pipeline_id)["downloaded"] is True
    for repo_id, path in NEEDED:
        assert hub.bytes_served(repo_id, path) >= len(HUB_FILES[repo_id][path]), (repo_id, path)
    assert not hub.served(BASE, "README.md") and not hub.served(EXTRA, "other.pt")


@pytest.mark.timeout(420)
def test_scope_page_writes_synthetic_weights_then_streams_longlive(page, server):
    """No weights on this server: the page's synthetic button writes them, then longlive streams
    (small, so a chunk is quick on a busy CPU: the first-run test streams the default size)."""
    # The load form is the chosen pipeline's: memflow's has its memory bank switch, on by default.
    open_page(page, server.url + "/scope/", "memflow")
    memory_bank = page.locator(f"{PAGE} .scope-load .scope-field", has_text="Memory Bank").locator("input[type=checkbox]")
    assert memory_bank.is_checked()
    page.select_option(PIPELINE, "longlive")
    wait_for(page, f"!document.querySelector({json.dumps(f'{PAGE} .scope-load')}).textContent.includes('Memory Bank')")
    wait_for(page, text_is(MODELS, "Model files not downloaded."))
    assert page.is_visible(DOWNLOAD) and page.is_visible(WRITE_SYNTHETIC)
    page.click(WRITE_SYNTHETIC)
    wait_for(page, text_is(MODELS, "Synthetic weights in place."))
    assert page.is_hidden(WRITE_SYNTHETIC)
    page.click(f"{PAGE} .scope-load summary")
    page.locator(f"{PAGE} .scope-load label", has_text="Height").locator("input").fill("64")
    page.locator(f"{PAGE} .scope-load label", has_text="Width").locator("input").fill("64")
    page.click(LOAD)
    wait_for(page, text_is(PIPELINE_STATUS, "Loaded longlive."), 120_000)
    with server.client() as client:
        status = client.get("/api/v1/pipeline/status").json()
    assert (status["load_params"]["height"], status["load_params"]["width"]) == (64, 64), status
    assert page.is_visible(BADGE)
    page.fill(PROMPT, "a lighthouse in a storm")
    page.click(START)
    wait_for_chunks(page, after=1, timeout_ms=120_000)
    assert_frames_flow(page, minimum_growth=12)
    assert page.is_visible(BADGE)
    assert sessions(server)[0]["parameters"]["prompts"] == [{"text": "a lighthouse in a storm", "weight": 1.0}]
    page.click(STOP)
    wait_until(page, lambda: not sessions(server), "the server to close the session", timeout=120)


# -- the first run: daydream-scope --synthetic, a machine with no webcam, every default ----------

#: Counts calls to the camera and answers as a machine without one does.
NO_WEBCAM = """
window.__cameraRequests = 0;
navigator.mediaDevices.getUserMedia = () => {
  window.__cameraRequests += 1;
  return Promise.reject(new DOMException('Requested device not found', 'NotFoundError'));
};
"""

#: A 32x32 thumbnail of the video (null before the first frame).
VIDEO_THUMBNAIL = VIDEO_PIXELS

#: Where the video is, whether the page scrolls sideways, and which boxes of text do (a text
#: that does not wrap makes its box wider inside than out).
LAYOUT = """(selector) => {
  const box = document.querySelector(selector).getBoundingClientRect();
  const unwrapped = [...document.querySelectorAll('.scope-messages, .scope-messages li, .scope-prompt-text')]
    .filter((node) => node.scrollWidth > node.clientWidth + 1)
    .map((node) => `${node.className || node.tagName}: ${node.scrollWidth} > ${node.clientWidth}`);
  return {left: box.left, top: box.top, right: box.right, bottom: box.bottom, width: box.width,
          innerWidth, innerHeight, scrollWidth: document.scrollingElement.scrollWidth, unwrapped};
}"""

@pytest.fixture
def shots(tmp_path) -> Path:
    """Where the first run's screenshots go, for a person to look at: ``$SCOPE_TEST_SHOTS`` or a temp dir."""
    folder = Path(os.environ.get("SCOPE_TEST_SHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def synthetic_server(tmp_path_factory) -> ScopeServer:
    """``daydream-scope --synthetic`` on a machine with no model files: the documented first run."""
    with running_scope_server(tmp_path_factory.mktemp("first-run"), "--synthetic") as server:
        yield server


def assert_video_in_view(page) -> dict:
    layout = page.evaluate(LAYOUT, VIDEO)
    assert layout["scrollWidth"] <= layout["innerWidth"], f"the page scrolls sideways: {layout}"
    assert not layout["unwrapped"], f"long text must wrap: {layout['unwrapped']}"
    assert layout["width"] > 0.4 * layout["innerWidth"], f"the video is not the page's main part: {layout}"
    assert 0 <= layout["left"] and layout["right"] <= layout["innerWidth"], f"the video leaves the window: {layout}"
    assert 0 <= layout["top"] and layout["bottom"] <= layout["innerHeight"], f"the video leaves the window: {layout}"
    return layout


@pytest.mark.timeout(420)
def test_first_run_streams_longlive_with_the_pages_defaults(browser, synthetic_server, shots):
    """A new user's first minutes: open the page, Load, Start, change nothing; no webcam here."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(30_000)
    context.add_init_script(NO_WEBCAM)
    page = context.new_page()
    page.console_lines = []
    page.on("console", lambda message: page.console_lines.append(f"{message.type}: {message.text}"))
    try:
        page.goto(synthetic_server.url + "/scope/")
        wait_for(page, text_is(MODELS, "Model files not downloaded."))
        # Every default works as is: longlive, text to video, the default prompt.
        assert page.input_value(PIPELINE) == "longlive"
        offered = page.locator(f"{PIPELINE} option").evaluate_all("options => options.map((o) => o.value)")
        assert {"longlive", "reward-forcing", "memflow"} <= set(offered), offered
        assert page.input_value(INPUT) == "none"
        assert page.input_value(PROMPT) == DEFAULT_PROMPT
        # What the widget offers, the page offers: load parameters, prompt blends, transitions,
        # stream controls, and the links to the documentation.
        assert {"Height", "Width"} <= set(page.locator(f"{PAGE} .scope-load .scope-field span").all_text_contents())
        height = page.locator(f"{PAGE} .scope-load .scope-field", has_text="Height").locator("input")
        assert [height.get_attribute(a) for a in ("min", "max", "step")] == ["16", "2048", "16"]
        assert page.locator(f"{PAGE} .scope-blend option").all_inner_texts() == ["linear", "slerp"]
        assert page.is_visible(f"{PAGE} .scope-add-prompt") and page.is_visible(f"{PAGE} .scope-transition")
        assert {"Denoising Step List", "Noise Scale"} <= set(page.locator(f"{PAGE} .scope-parameters .scope-field span").all_inner_texts())
        assert [page.is_visible(b) for b in (START, PAUSE, STOP)] == [True, True, True]
        assert page.evaluate("document.querySelector('a[href=\"../docs\"]').href") == synthetic_server.url + "/docs"
        guide = page.evaluate("document.querySelector('a[href=\"docs/server.md\"]').href")
        assert guide == synthetic_server.url + "/scope/docs/server.md"
        assert_video_in_view(page)
        page.screenshot(path=str(shots / "page-first-run.png"), full_page=True)

        page.click(LOAD)
        wait_for(page, text_is(PIPELINE_STATUS, "Loaded longlive."), 180_000)
        assert page.is_visible(BADGE), "synthetic weights must be said visibly"
        wait_for(page, text_is(MODELS, "Synthetic weights in place."))
        assert page.is_hidden(WRITE_SYNTHETIC)
        page.click(START)
        wait_for_status(page, "streaming", 120_000)
        (live,) = sessions(synthetic_server)
        assert live["input_mode"] == "text"
        assert live["parameters"]["prompts"] == [{"text": DEFAULT_PROMPT, "weight": 1.0}]

        # Frames change: grabs of the video differ over time.
        first = wait_until(page, lambda: page.evaluate(VIDEO_THUMBNAIL, VIDEO), "a first video frame", timeout=120)
        wait_until(page, lambda: page.evaluate(VIDEO_THUMBNAIL, VIDEO) != first, "the video to change", timeout=120)
        assert page.evaluate("window.__cameraRequests") == 0, "text to video must not ask for a camera"

        # A very long prompt (an unbroken run first, then words) wraps in the editor and in the
        # messages: the video stays in the window and nothing scrolls sideways.
        long_prompt = ("x" * 300 + " " + " ".join(["a panda in a park"] * 300))[:5000]
        page.fill(PROMPT, long_prompt)
        page.click(SEND_PROMPTS)
        wait_for_message(page, "(5000 characters)")
        wait_until(page, lambda: sessions(synthetic_server)[0]["parameters"]["prompts"][0]["text"] == long_prompt,
                   "the long prompt in the session")
        assert_video_in_view(page)
        wait_for_chunks(page, after=0, timeout_ms=120_000)
        page.screenshot(path=str(shots / "page-streaming.png"), full_page=True)

        page.click(STOP)
        wait_for_status(page, "stopped")
        wait_until(page, lambda: not sessions(synthetic_server), "the server to close the session", timeout=120)
    finally:
        context.close()


# -- the same page inside jupyter lab (Jupyter's auth applies) ----------------------------------


def test_scope_page_under_jupyter_lab_uses_the_login_cookie_and_xsrf(page, lab_server_process):
    """Inside Lab the API is closed: the page must send the ``_xsrf`` cookie back on writes."""
    lab = lab_server_process
    # Logging in with the token sets the login and ``_xsrf`` cookies; the Lab UI itself is not needed.
    page.goto(lab.url + f"lab?token={lab.token}", wait_until="commit")
    writes = []
    page.on("response", lambda r: writes.append((r.request.method, r.status)) if r.request.method != "GET" else None)

    load_passthrough_on_page(page, lab.url + "scope/")
    assert page.inner_text(f"{PAGE} .scope-server") == lab.url
    page.select_option(INPUT, "pattern")
    page.click(START)
    wait_for_chunks(page)
    assert_frames_flow(page, minimum_growth=10)
    page.click(STOP)
    wait_for_status(page, "stopped")

    # Playwright reports responses asynchronously: the DELETE may be reported after the page moved on.
    wait_until(page, lambda: ("DELETE", 204) in writes, f"the page's DELETE of its session in {writes}")
    assert ("POST", 200) in writes, writes
    assert not [w for w in writes if w[1] == 403], writes
    with httpx.Client(headers={"Authorization": f"token {lab.token}"}, trust_env=False, timeout=10) as client:
        wait_until(page, lambda: not client.get(lab.url + "api/v1/webrtc/sessions").json()["sessions"], "no sessions")


def test_scope_page_under_jupyter_lab_with_the_token_in_its_url(browser, lab_server_process):
    """Opened as ``scope/?token=...`` (no login cookie), the page sends the token itself."""
    lab = lab_server_process
    page = new_page(browser)
    context = page.context
    try:
        page.goto(lab.url + "scope/")
        wait_for(page, "document.body.innerText.includes('Not authorised')")
        page.goto(lab.url + f"scope/?token={lab.token}")
        wait_for(page, f"document.querySelector({json.dumps(f'{PIPELINE} option[value=passthrough]')}) !== null")
        page.select_option(PIPELINE, "passthrough")
        page.click(LOAD)
        wait_for(page, text_is(PIPELINE_STATUS, "Loaded passthrough."))
        names = {cookie["name"] for cookie in context.cookies()}
        assert "_xsrf" not in names, "the load must have been authorised by the token, not by XSRF"
    finally:
        context.close()


def test_swagger_ui_renders_offline(page, server):
    """``/docs`` renders every operation from local assets (no network beyond the server)."""
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server.url, "data:", "blob:")) else None)
    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    summaries = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/api/v1/pipeline/load" in s for s in summaries)
    assert any("/api/v1/webrtc/offer" in s for s in summaries)
    # "Try it out" fills in the document's example, and executing it as it is loads the pipeline
    # (every example is sent by tests/test_docs_examples.py; this checks Swagger UI uses them).
    document = httpx.get(f"{server.url}/openapi.json").json()
    example = document["paths"]["/api/v1/pipeline/load"]["post"]["requestBody"]["content"]["application/json"]["example"]
    load = page.locator("#operations-pipeline-post_Load")
    load.locator(".opblock-summary").click()
    load.locator("button.try-out__btn").click()
    assert json.loads(load.locator("textarea.body-param__text").input_value()) == example
    load.locator("button.execute").click()
    status = load.locator(".live-responses-table tbody .response-col_status")
    status.wait_for(timeout=30_000)
    assert status.inner_text().strip() == "200"
    assert outside == []
