"""``ScopeWidget`` inside a real JupyterLab, in headless Chromium, with Jupyter's auth on.

A notebook's cells create the widget and steer it from Python; the widget's front end loads
``longlive`` (synthetic weights) and streams it into its ``<video>`` over WebRTC, calling the
Lab server's Scope endpoints with the login cookie and the XSRF header.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path

import httpx
import nbformat
import pytest

from tests._subprocess_server import free_port, running_scope_server
from tests.fakehub import FakeHub
from tests.chromium import VIDEO_PIXELS, browser, page, wait_for, wait_until  # noqa: F401  (fixtures)
from tests.subprocess_only import jp_asyncio_loop, jp_server_cleanup  # noqa: F401  (autouse fixtures)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.timeout(240),
]

WIDGET = '[data-status]'
NEW_PROMPT = "a blue whale in the deep sea"

#: The widget's video at 32x32, as RGB levels (null before the first frame).
VIDEO_MEAN = f"() => ({VIDEO_PIXELS})('.scope-widget video')"


def notebook(*sources: str) -> str:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nbformat.writes(nb)


@pytest.fixture(scope="module")
def lab(lab_server_process):
    """The shared ``jupyter lab`` (token auth, a non-root base URL, synthetic ``longlive`` weights)."""
    return lab_server_process


def api(lab):
    return httpx.Client(base_url=lab.url, headers={"Authorization": f"token {lab.token}"}, trust_env=False, timeout=15)


def open_notebook(page, lab, name: str, text: str) -> None:
    """Log in with the token (sets the cookies), then open ``name`` in a fresh workspace."""
    (lab.root / name).write_text(text)
    page.goto(lab.url + f"lab?token={lab.token}", wait_until="commit")
    page.goto(lab.url + f"lab/workspaces/{uuid.uuid4().hex}/tree/{name}")
    wait_for(page, "window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell') !== null")
    # The status bar names the kernel once it is ready: "Python 3 (ipykernel) | Idle".
    wait_for(page, "document.querySelector('.jp-StatusBar-Widget')?.parentElement?.innerText.includes('| Idle')")


def run_cell(page, index: int) -> None:
    """Run cell ``index`` of the open notebook (not awaited: that settles only when it has run)."""
    page.evaluate(
        """(index) => {
          window.jupyterapp.shell.currentWidget.content.activeCellIndex = index;
          window.jupyterapp.commands.execute('notebook:run-cell');
        }""",
        index,
    )


def widget_session(page, client: httpx.Client) -> dict:
    """The server's record of the session the page's widget streams."""
    session_id = page.evaluate("document.querySelector('.scope-widget').dataset.session")
    [session] = [s for s in client.get("api/v1/webrtc/sessions").json()["sessions"] if s["id"] == session_id]
    return session


def cell_output(page, index: int) -> str:
    return page.evaluate(
        "(i) => document.querySelectorAll('.jp-Notebook .jp-Cell')[i].querySelector('.jp-OutputArea')?.innerText ?? ''",
        index,
    )


def test_widget_streams_in_lab_and_python_steers_it(page, lab):
    open_notebook(page, lab, "widget.ipynb", notebook(
        "from scope.widgets import ScopeWidget\n"
        "w = ScopeWidget(pipeline_id='longlive', load_params={'height': 64, 'width': 64},\n"
        "                prompts='a red fox in the snow', autostart=True)\n"
        "w",
        f"w.prompts = [{{'text': {NEW_PROMPT!r}, 'weight': 1.0}}]",
        "import json; print(json.dumps({'status': w.status, 'chunk': w.chunk, 'synthetic': w.synthetic,"
        " 'fps': w.fps, 'session': w.session_id}))",
    ))
    run_cell(page, 0)
    wait_for(page, "document.querySelector('.scope-widget')?.dataset.status === 'streaming'")
    assert page.is_visible(".scope-widget .scope-badge"), "synthetic weights must be said visibly"

    # The inline video plays frames that change.
    wait_until(page, lambda: page.evaluate(VIDEO_MEAN), "a first video frame")
    first = page.evaluate(VIDEO_MEAN)
    wait_until(page, lambda: page.evaluate(VIDEO_MEAN) != first, "the video to change")

    with api(lab) as client:
        session = widget_session(page, client)
        assert session["parameters"]["prompts"][0]["text"] == "a red fox in the snow"
        assert client.get("api/v1/pipeline/status").json()["load_params"]["height"] == 64

        # A prompt set from Python reaches the server's session, through the browser's data channel.
        run_cell(page, 1)
        wait_until(
            page,
            lambda: widget_session(page, client)["parameters"]["prompts"][0]["text"] == NEW_PROMPT,
            "the new prompt in the session's parameters",
        )
    # What the front end measured is readable from Python (the cell is re-run until it has chunks).
    def readback():
        run_cell(page, 2)
        page.wait_for_timeout(500)
        lines = cell_output(page, 2).strip().splitlines()
        values = json.loads(lines[-1]) if lines else {}
        return values if values.get("chunk", 0) > 0 and values.get("fps", 0) > 0 else None

    values = wait_until(page, readback, "the kernel to read the widget's figures", interval_ms=500)
    assert values["status"] == "streaming" and values["synthetic"] is True
    assert values["session"] == session["id"]


def widget_status(page) -> str | None:
    return page.evaluate("document.querySelector('.scope-widget')?.dataset.status ?? null")


#: The ``data-`` attributes of every widget on the page, in notebook order.
WIDGETS_DATA = "() => [...document.querySelectorAll('.scope-widget')].map((w) => ({...w.dataset}))"

#: The size of every widget's video and its picture at 32x32 (null before the first frame).
WIDGET_VIDEOS = f"""() => [...document.querySelectorAll('.scope-widget video')].map((video, i) => {{
  video.dataset.index = i;
  return {{size: [video.videoWidth, video.videoHeight], pixels: ({VIDEO_PIXELS})(`.scope-widget video[data-index="${{i}}"]`)}};
}})"""


def test_two_widgets_in_one_notebook_stream_two_pipelines_side_by_side(page, lab):
    """Each widget's streams name the pipeline it loaded: the second widget's load makes another
    pipeline current, and the first widget's new stream still gets its own."""
    open_notebook(page, lab, "two-widgets.ipynb", notebook(
        "from scope.widgets import ScopeWidget\n"
        "fox = ScopeWidget(pipeline_id='longlive', load_params={'height': 32, 'width': 32},\n"
        "                  prompts='a red fox', autostart=True)\n"
        "fox",
        "relay = ScopeWidget(pipeline_id='passthrough', input_source='pattern', autostart=True)\nrelay",
        "fox.stop()",
        "fox.start()",
    ))

    def statuses() -> list[str | None]:
        return [w.get("status") for w in page.evaluate(WIDGETS_DATA)]

    run_cell(page, 0)
    wait_until(page, lambda: statuses() == ["streaming"], "the first widget to stream", timeout=120)
    run_cell(page, 1)
    wait_until(page, lambda: statuses() == ["streaming", "streaming"], "both widgets to stream", timeout=60)
    run_cell(page, 2)
    wait_until(page, lambda: statuses()[0] == "stopped", "the first widget to stop")
    run_cell(page, 3)
    wait_until(page, lambda: statuses() == ["streaming", "streaming"], "the first widget to stream again", timeout=60)

    with api(lab) as client:
        assert client.get("api/v1/pipeline/status").json()["pipeline_id"] == "passthrough", "the last load is current"
        ids = [w["session"] for w in page.evaluate(WIDGETS_DATA)]

        def live() -> list[dict] | None:
            by_id = {s["id"]: s for s in client.get("api/v1/webrtc/sessions").json()["sessions"]}
            return [by_id[i] for i in ids] if all(i in by_id for i in ids) else None

        fox, relay = wait_until(page, live, "both sessions on the server")
        assert (fox["pipeline_id"], fox["load_params"]["height"], fox["input_mode"]) == ("longlive", 32, "text")
        assert (relay["pipeline_id"], relay["input_mode"]) == ("passthrough", "video")
        # Both generate at once.
        chunks = [s["stats"]["chunk"] for s in (fox, relay)]
        def both_generate() -> bool:
            now = live()
            return bool(now) and all(s["stats"]["chunk"] > c for s, c in zip(now, chunks))

        wait_until(page, both_generate, "chunks from both sessions")

    # Each its own pictures: longlive's at its 32x32, passthrough's the page's 512x512 pattern, both moving.
    seen: list[list] = []

    def moving_pictures() -> bool:
        videos = page.evaluate(WIDGET_VIDEOS)
        pixels = [v["pixels"] for v in videos]
        moved = [bool(pixels[i]) and any(old[i] and old[i] != pixels[i] for old in seen) for i in (0, 1)]
        seen.append(pixels)
        return [v["size"] for v in videos] == [[32, 32], [512, 512]] and all(moved)

    wait_until(page, moving_pictures, "both videos at their own sizes, moving")


def test_widget_streams_from_an_explicit_standalone_server(page, lab, tmp_path, synthetic_models):
    """``server=`` names a ``daydream-scope`` on another origin: its open API, with CORS."""
    env = {"DAYDREAM_SCOPE_MODELS_DIR": str(synthetic_models)}
    with running_scope_server(tmp_path, env=env) as scope:
        open_notebook(page, lab, "standalone.ipynb", notebook(
            "from scope.widgets import ScopeWidget\n"
            f"w = ScopeWidget(server={scope.url!r}, pipeline_id='longlive',\n"
            "                load_params={'height': 32, 'width': 32}, prompts='a lighthouse', autostart=True)\n"
            "w",
            "w.transition_to('a harbour at night', steps=3)\nw.paused = True",
        ))
        run_cell(page, 0)
        wait_for(page, "document.querySelector('.scope-widget')?.dataset.status === 'streaming'")
        assert page.inner_text(".scope-widget .scope-server") == scope.url + "/"
        wait_until(page, lambda: page.evaluate(VIDEO_MEAN), "a first video frame")

        run_cell(page, 1)
        wait_for(page, "document.querySelector('.scope-widget')?.dataset.status === 'paused'")
        with scope.client() as client:
            def paused_session():
                [session] = client.get("/api/v1/webrtc/sessions").json()["sessions"]
                return session if session["stats"]["state"] == "paused" else None

            session = wait_until(page, paused_session, "the server to pause the session")
        parameters = session["parameters"]
        assert parameters["transition"]["target_prompts"][0]["text"] == "a harbour at night"
        assert parameters["transition"]["num_steps"] == 3


def test_widget_says_plainly_when_no_server_answers(page, lab):
    open_notebook(page, lab, "unreachable.ipynb", notebook(
        "from scope.widgets import ScopeWidget\n"
        f"w = ScopeWidget(server='http://127.0.0.1:{free_port()}')\n"
        "w",
        "print(repr(w.status), repr(w.error))",
    ))
    run_cell(page, 0)
    wait_for(page, "document.querySelector('.scope-widget')?.dataset.status === 'unavailable'")
    assert "Scope is not reachable at http://127.0.0.1:" in page.inner_text(".scope-widget")
    # The view's state reaches the kernel after the page shows it (the front end may hold it
    # while the kernel is busy): the cell is run again until the kernel reads it.
    def readback():
        if "'unavailable'" in cell_output(page, 1):
            return True
        run_cell(page, 1)
        return False

    wait_until(page, readback, "the kernel to read the status", interval_ms=1000)
    assert "daydream-scope" in cell_output(page, 1)


def test_widget_shows_refusals_by_field_and_the_end_of_the_stream(page, lab):
    open_notebook(page, lab, "refusals.ipynb", notebook(
        "from scope.widgets import ScopeWidget\n"
        "w = ScopeWidget(pipeline_id='longlive', load_params={'height': 17}, prompts='a red fox')\n"
        "w",
        "w.load_params = {'height': 64, 'width': 64}\nw.load()",
        "w.start()",
    ))
    run_cell(page, 0)
    wait_for(page, "document.querySelector('.scope-widget')?.dataset.status === 'idle'"
                   " || document.querySelector('.scope-widget')?.dataset.status === 'ready'")
    # Loading with a bad load parameter: the server's refusal names the field.
    page.click(".scope-widget .scope-load-pipeline")
    wait_for(page, "document.querySelector('.scope-widget')?.dataset.status === 'error'")
    assert "height" in page.inner_text(".scope-widget .scope-messages")

    run_cell(page, 1)
    wait_for(page, "document.querySelector('.scope-widget .scope-pipeline-status')?.textContent === 'Loaded longlive.'")
    run_cell(page, 2)
    wait_for(page, "document.querySelector('.scope-widget')?.dataset.status === 'streaming'")

    # A value the server refuses, typed into a generated control: shown with its field.
    field = page.locator(".scope-widget .scope-parameters label", has_text="Denoising Step List").locator("input")
    field.fill("1000, 2000")
    field.dispatch_event("change")
    wait_for(page, "document.querySelector('.scope-widget .scope-messages').innerText.includes('Parameters refused: denoising_step_list.1')")

    # The server ends the stream: the widget says so, and Python reads it.
    with api(lab) as client:
        session = widget_session(page, client)
        assert client.delete(f"api/v1/webrtc/sessions/{session['id']}").status_code == 204
    wait_for(page, "document.querySelector('.scope-widget')?.dataset.status === 'stopped'")
    assert "Stream stopped" in page.inner_text(".scope-widget .scope-messages")


def write_webm(path, colour: tuple[int, int, int], seconds: float = 2.0, fps: int = 15) -> None:
    """A VP8 clip: a solid colour with a white bar sweeping across it."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 128, 128, "yuv420p"
        for index in range(int(seconds * fps)):
            frame = np.empty((128, 128, 3), np.uint8)
            frame[:] = colour
            x = (index * 8) % 112
            frame[:, x:x + 16] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def stream_passthrough(page, lab, input_source: str) -> None:
    """Show a widget streaming ``input_source`` through ``passthrough``; its session is in video mode."""
    open_notebook(page, lab, f"passthrough-{input_source.replace(':', '-')}.ipynb", notebook(
        "from scope.widgets import ScopeWidget\n"
        f"w = ScopeWidget(pipeline_id='passthrough', input_source={input_source!r}, autostart=True)\n"
        "w",
    ))
    run_cell(page, 0)
    wait_for(page, "document.querySelector('.scope-widget')?.dataset.status === 'streaming'")
    with api(lab) as client:
        assert widget_session(page, client)["input_mode"] == "video"


def test_widget_sends_a_video_asset_through_passthrough(page, lab):
    """Video-to-video from a chosen asset: the clip plays in the page and comes back."""
    write_webm(lab.root / "assets" / "magenta.webm", (200, 30, 200))
    stream_passthrough(page, lab, "asset:magenta.webm")

    def mostly_magenta():
        pixels = page.evaluate(VIDEO_MEAN)
        if not pixels:
            return False
        r, g, b = (sum(pixels[i::3]) / (len(pixels) / 3) for i in range(3))
        return r > 120 and b > 120 and g < 110

    wait_until(page, mostly_magenta, "the asset's colour in the returned video")
    first = page.evaluate(VIDEO_MEAN)
    wait_until(page, lambda: page.evaluate(VIDEO_MEAN) != first, "the returned video to move")


def hub_repos(models_dir) -> dict[str, dict[str, bytes]]:
    """The files of ``longlive`` as the hub would serve them, taken from a models directory."""
    from scope.models.artifacts import PIPELINE_ARTIFACTS

    repos: dict[str, dict[str, bytes]] = {}
    for artifact in PIPELINE_ARTIFACTS["longlive"]:
        local = models_dir / artifact.local_dir
        for entry in artifact.files:
            found = [local / entry] if (local / entry).is_file() else sorted((local / entry).rglob("*"))
            for path in found:
                if path.is_file() and not path.name.endswith(".synthetic.json"):
                    repos.setdefault(artifact.repo_id, {})[str(path.relative_to(local))] = path.read_bytes()
    return repos


def test_widget_downloads_models_with_a_progress_bar_then_streams(page, lab, tmp_path, synthetic_models, fake_hub: FakeHub):
    """A real download from a hub: the bar moves, the files land, the pipeline loads and streams."""
    for repo_id, files in hub_repos(synthetic_models).items():
        fake_hub.add_repo(repo_id, files)
    fake_hub.chunk_size, fake_hub.chunk_delay = 64 * 1024, 0.01
    with running_scope_server(tmp_path, env={"HF_ENDPOINT": fake_hub.endpoint}) as scope:
        open_notebook(page, lab, "download.ipynb", notebook(
            "from scope.widgets import ScopeWidget\n"
            f"w = ScopeWidget(server={scope.url!r}, pipeline_id='longlive', load_params={{'height': 32, 'width': 32}})\n"
            "w",
            "w.prompts = []\nw.start()",
            "w.prompts = 'a lighthouse'\nw.start()",
        ))
        run_cell(page, 0)
        wait_for(page, "document.querySelector('.scope-widget .scope-models')?.textContent === 'Model files not downloaded.'")
        page.click(".scope-widget button:text-is('Download models')")
        wait_for(page, "document.querySelector('.scope-widget .scope-progress')?.value > 0"
                       " && !document.querySelector('.scope-widget .scope-progress').hidden")
        assert "Downloading" in page.inner_text(".scope-widget .scope-models")
        wait_for(page, "document.querySelector('.scope-widget .scope-models')?.textContent === 'Model files downloaded.'")
        assert page.is_hidden(".scope-widget .scope-progress")

        page.click(".scope-widget .scope-load-pipeline")
        wait_for(page, "document.querySelector('.scope-widget .scope-pipeline-status')?.textContent === 'Loaded longlive.'")
        # Without a prompt there is nothing to generate from: the widget says so instead of starting.
        run_cell(page, 1)
        wait_for(page, "document.querySelector('.scope-widget .scope-messages').innerText.includes('generates from prompts')")
        run_cell(page, 2)
        wait_for(page, "document.querySelector('.scope-widget')?.dataset.status === 'streaming'")
        wait_until(page, lambda: page.evaluate(VIDEO_MEAN), "a first video frame")


def test_widget_sends_the_webcam_through_passthrough(page, lab):
    """Chromium's fake camera stands in for a webcam; its moving picture comes back."""
    stream_passthrough(page, lab, "webcam")
    wait_until(page, lambda: page.evaluate(VIDEO_MEAN), "a first video frame")
    first = page.evaluate(VIDEO_MEAN)
    wait_until(page, lambda: page.evaluate(VIDEO_MEAN) != first, "the returned video to move")
    assert "webcam" not in page.inner_text(".scope-widget .scope-messages"), "the camera must have been used"


def test_widget_without_webrtc_says_so(browser, lab):
    """A browser with no RTCPeerConnection (some locked-down or embedded ones), told to use WebRTC
    only: a message, not a blank box. (With the default ``transport="auto"`` it streams over the
    WebSocket instead: tests/test_browser_websocket.py.)"""
    context = browser.new_context()
    context.set_default_timeout(30_000)
    context.add_init_script("delete window.RTCPeerConnection;")
    page = context.new_page()
    page.console_lines = []
    try:
        open_notebook(page, lab, "no-webrtc.ipynb", notebook(
            "from scope.widgets import ScopeWidget\nw = ScopeWidget(transport='webrtc', autostart=True)\nw",
        ))
        run_cell(page, 0)
        wait_for(page, "document.querySelector('.scope-widget')?.dataset.status === 'unavailable'")
        assert "offers no WebRTC" in page.inner_text(".scope-widget")
    finally:
        context.close()


#: The outputs of every cell of the open notebook, as JSON text.
NOTEBOOK_OUTPUTS = """() => {
  const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
  const out = [];
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type === 'code') out.push(cell.outputs.toJSON());
  }
  return JSON.stringify(out);
}"""

QUICK_START = Path(__file__).resolve().parent.parent / "notebooks" / "01_quick_start.ipynb"


#: What the quick start's status cell prints once its wait returns.
STATUS_LINE = re.compile(r"status='([^']*)' fps=([\d.]+) chunk=(\d+) synthetic=(\w+)")


def test_quick_start_notebook_runs_in_lab_with_its_widget_streaming(page, lab):
    """The real quick-start notebook, run top to bottom: ``scope.serve()`` answers the Lab server
    itself, the widget streams from it same-origin, its status cell reads what the view reports
    (it waits for it), and the client cells read frames from the same server."""
    shutil.copy(QUICK_START, lab.root / QUICK_START.name)
    page.goto(lab.url + f"lab?token={lab.token}", wait_until="commit")
    page.goto(lab.url + f"lab/workspaces/{uuid.uuid4().hex}/tree/{QUICK_START.name}")
    wait_for(page, "document.querySelector('.jp-StatusBar-Widget')?.parentElement?.innerText.includes('| Idle')")
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

    wait_for(page, "document.querySelector('.scope-widget')?.dataset.status === 'streaming'")
    # textContent: Lab skips drawing cells scrolled out of view, and innerText of those is ''.
    server = page.evaluate("document.querySelector('.scope-widget .scope-server').textContent")
    assert server == lab.url, "the widget must use the page's own server"
    wait_until(page, lambda: page.evaluate(VIDEO_MEAN), "a first video frame")

    def outputs() -> str:
        """Every cell's outputs, from the notebook model (Lab renders only the cells in view)."""
        return page.evaluate(NOTEBOOK_OUTPUTS)

    wait_until(page, lambda: '"image/png"' in outputs() or '"output_type":"error"' in outputs(),
               "the last cell's plot", timeout=120, interval_ms=500)
    assert '"output_type":"error"' not in outputs(), outputs()[-3000:]
    assert repr(lab.url) in outputs(), "scope.serve() must answer the Lab server"
    assert "frames: (24, 160, 288, 3) uint8" in outputs(), "the client reads frames from the same server"

    # The status cell right after the widget, run in the same "Run All": it waited for the view's
    # reports, so it reads the stream as the widget shows it, and the server the view resolved.
    readings = STATUS_LINE.search(outputs())
    assert readings, outputs()[-3000:]
    status, fps, chunk, synthetic = readings.groups()
    assert (status, synthetic) == ("streaming", "True") and float(fps) > 0 and int(chunk) > 0, readings.group(0)
    assert f"server: {lab.url}" in outputs(), "w.server reports the page's own server"

    # The view goes away (its output cleared): Python reads that it no longer streams.
    cells = page.evaluate("window.jupyterapp.shell.currentWidget.content.widgets.length")
    page.evaluate(
        """([widgetCell, cells]) => {
          const notebook = window.jupyterapp.shell.currentWidget.content;
          notebook.activeCellIndex = widgetCell;
          window.jupyterapp.commands.execute('notebook:clear-cell-output');
          notebook.activeCellIndex = cells - 1;
          window.jupyterapp.commands.execute('notebook:insert-cell-below');
          notebook.activeCell.model.sharedModel.setSource(
            'await w.wait_for("closed", timeout=60)\\nprint("after clearing:", repr(w.status), w._view_count, w._view_seen)');
          window.jupyterapp.commands.execute('notebook:run-cell');
        }""",
        [quick_start_cell("ScopeWidget("), cells],
    )
    wait_until(page, lambda: "after clearing:" in outputs() or '"output_type":"error"' in outputs(),
               "the kernel to read the closed view", timeout=60, interval_ms=500)
    # (No views left, after one was counted: ipywidgets counts the views it draws.)
    assert "after clearing: 'closed' 0 True" in outputs(), outputs()[-3000:]


def quick_start_cell(text: str) -> int:
    """The index (among all cells) of the quick start's first code cell containing ``text``."""
    cells = nbformat.read(QUICK_START, as_version=4).cells
    return next(i for i, cell in enumerate(cells) if cell.cell_type == "code" and text in cell.source)


def test_widget_records_on_the_server_and_python_reads_it(page, lab, tmp_path):
    """Record and Stop in the widget: the link's MP4 (fetched with the page's login) holds the
    frames, and ``w.recording`` in the kernel says it stopped."""
    open_notebook(page, lab, "record.ipynb", notebook(
        "from scope.widgets import ScopeWidget\n"
        "w = ScopeWidget(pipeline_id='passthrough', input_source='pattern', autostart=True)\n"
        "w",
        "import json; print(json.dumps(w.recording))",
    ))
    run_cell(page, 0)
    wait_for(page, "document.querySelector('.scope-widget')?.dataset.status === 'streaming'")
    # Once the figures line shows chunks the view's layout has settled: a click aimed at the
    # button before that line appears can land where the button no longer is.
    wait_for(page, "/chunk \\d+/.test(document.querySelector('.scope-widget .scope-stats')?.textContent ?? '')")
    page.click(".scope-widget .scope-record")
    wait_for(page, "document.querySelector('.scope-widget .scope-recording-state')?.textContent.startsWith('Recording… ')")
    wait_for(page, "parseFloat(document.querySelector('.scope-widget .scope-recording-state').textContent.slice(11)) >= 0.5")
    page.click(".scope-widget .scope-record")
    wait_for(page, "!document.querySelector('.scope-widget .scope-recording-link').hidden")

    session_id = page.evaluate("document.querySelector('.scope-widget').dataset.session")
    href = page.get_attribute(".scope-widget .scope-recording-link", "href")
    assert href == f"{lab.url}api/v1/recordings/{session_id}"
    reply = page.request.get(href)  # the page's cookies: Jupyter's login
    assert reply.status == 200 and reply.headers["content-type"] == "video/mp4"
    (tmp_path / "recording.mp4").write_bytes(reply.body())
    import av

    with av.open(str(tmp_path / "recording.mp4")) as container:
        frames = sum(1 for _ in container.decode(container.streams.video[0]))
    assert frames > 0

    def readback():
        run_cell(page, 1)
        page.wait_for_timeout(500)
        lines = cell_output(page, 1).strip().splitlines()
        values = json.loads(lines[-1]) if lines else {}
        return values if values.get("state") == "stopped" else None

    recording = wait_until(page, readback, "the kernel to read the stopped recording", interval_ms=500)
    assert recording["session_id"] == session_id and recording["url"] == href
    assert recording["stop_reason"] == "requested" and recording["frames"] == frames
