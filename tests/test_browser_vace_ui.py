"""The ``/scope/`` page's VACE panel in a real Chromium against ``daydream-scope`` (synthetic
weights, ``longlive`` loaded with VACE at 64x64): an image uploaded through the page, picked and
sent as the reference goes with the stream's first chunk (or straight to a running stream), and
the server takes it; a video uploaded through the page becomes the control video, and the webcam
does once chosen.

That a reference changes the picture is checked where frames can be compared exactly: over
aiortc against the in-kernel stream (tests/test_vace_server.py) and through the client
(tests/test_client_vace.py). In the browser the codec's noise between two plain streams is as
large as a one-shot reference's effect on synthetic weights.
"""

from __future__ import annotations

import io
import json
import shutil

import av
import numpy as np
import pytest
from PIL import Image

from tests._subprocess_server import running_scope_server
from tests.chromium import browser, page, wait_for, wait_until  # noqa: F401  (fixtures)
from tests.subprocess_only import jp_asyncio_loop, jp_server_cleanup  # noqa: F401  (autouse fixtures)
from tests.test_browser import (
    INPUT, LOAD, MESSAGES, MODELS, PAGE, PIPELINE_STATUS, START, STOP, messages, open_page, sessions, text_is,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

PANEL = f"{PAGE} .scope-vace"
IMAGE, UPLOAD, THUMB = f"{PANEL} .scope-vace-image", f"{PANEL} .scope-vace-upload", f"{PANEL} .scope-vace-thumb"
SEND_REF, CONTROL = f"{PANEL} .scope-vace-send-ref", f"{PANEL} .scope-vace-control"
SCALE = f"{PANEL} .scope-vace-scale"

#: Keeps the ``initialParameters`` of every offer the page posts, in window.__offers.
RECORD_OFFERS = """(() => {
  window.__offers = [];
  const fetch = window.fetch;
  window.fetch = (url, options) => {
    if (String(url).endsWith("api/v1/webrtc/offer") && options?.method === "POST") {
      window.__offers.push(JSON.parse(options.body).initialParameters);
    }
    return fetch(url, options);
  };
})();"""

@pytest.fixture(scope="module")
def vace_server(tmp_path_factory, synthetic_models):
    root = tmp_path_factory.mktemp("vace-page")
    shutil.copytree(synthetic_models, root / "models")
    with running_scope_server(root) as server:
        yield server


@pytest.fixture
def server(vace_server):
    """The module's server with nothing loaded, so the page opens on no pipeline loaded with VACE."""
    with vace_server.client() as client:
        assert client.post("/api/v1/pipeline/unload", json={}).status_code == 200
    return vace_server


def png(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    return buffer.getvalue()


def halves() -> np.ndarray:
    """Red on the left, blue on the right: far from the stream's own pictures."""
    picture = np.zeros((64, 64, 3), np.uint8)
    picture[:, :32] = (255, 0, 0)
    picture[:, 32:] = (0, 0, 255)
    return picture


def clip_mp4(frames: int = 8) -> bytes:
    """A short 64x64 MP4 of a bar sweeping across."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            picture = np.full((64, 64, 3), 30, np.uint8)
            picture[:, index * 8 : index * 8 + 8] = 230
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def load_with_vace(page, server) -> None:
    """Open the page on ``longlive``, ask for VACE at 64x64 (the panel appears), and load it."""
    open_page(page, server.url + "/scope/", "longlive")
    wait_for(page, text_is(MODELS, "Synthetic weights in place."))
    assert page.is_hidden(PANEL), "no VACE panel until VACE is asked for"
    page.click(f"{PAGE} .scope-load summary")
    for caption, value in (("Height", "64"), ("Width", "64")):
        page.locator(f"{PAGE} .scope-load label", has_text=caption).locator("input").fill(value)
    page.locator(f"{PAGE} .scope-load label", has_text="Vace Enabled").locator("input").check()
    wait_for(page, f"!document.querySelector({json.dumps(PANEL)}).hidden")
    page.click(LOAD)
    wait_for(page, text_is(PIPELINE_STATUS, "Loaded longlive."), 60_000)


def upload(page, name: str, mime: str, data: bytes) -> None:
    page.set_input_files(UPLOAD, files=[{"name": name, "mimeType": mime, "buffer": data}])
    wait_for(page, f"document.querySelector({json.dumps(MESSAGES)}).textContent.includes('Uploaded {name}.')")


def live_parameters(server) -> dict:
    (live,) = sessions(server)
    return live["parameters"]


def stop(page, server) -> None:
    page.click(STOP)
    wait_until(page, lambda: not sessions(server), "the server to close the session", timeout=60)


def queue_reference(page) -> None:
    page.click(SEND_REF)
    wait_for(page, f"document.querySelector({json.dumps(MESSAGES)}).firstChild.dataset.text === "
             "\"Queued for the stream's first chunk: vace_ref_images: lighthouse.png.\"")


def test_an_image_uploaded_on_the_page_and_picked_as_the_reference_changes_the_stream(page, server):
    page.add_init_script(RECORD_OFFERS)
    load_with_vace(page, server)
    upload(page, "lighthouse.png", "image/png", png(halves()))
    (asset,) = [a for a in server_assets(server) if a["name"] == "lighthouse"]
    assert page.input_value(IMAGE) == asset["path"], "the uploaded image is the one picked"
    wait_for(page, f"document.querySelector({json.dumps(THUMB)}).naturalWidth === 64")
    # The slider sets the context scale every stream starts with (a stream without VACE inputs has no context).
    page.eval_on_selector(SCALE, "(s) => { s.value = 2; s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change')); }")
    assert page.inner_text(f"{PANEL} .scope-vace-scale-value") == "2.00"

    page.click(START)
    wait_until(page, lambda: sessions(server) and sessions(server)[0]["stats"]["chunk"] >= 1, "a plain stream's chunk")
    assert live_parameters(server)["vace_context_scale"] == 2 and "vace_ref_images" not in live_parameters(server)
    stop(page, server)
    # Sent with no stream, the reference goes with the next stream's first chunk, which takes
    # it: one-shot, it is gone from the session's parameters once that chunk has run.
    queue_reference(page)
    page.click(START)
    wait_until(page, lambda: sessions(server) and sessions(server)[0]["stats"]["chunk"] >= 2, "the guided stream's chunks")
    assert "vace_ref_images" not in live_parameters(server)
    page.click(SEND_REF)  # while streaming: straight to the stream
    wait_for(page, f"document.querySelector({json.dumps(MESSAGES)}).textContent.includes('Sent vace_ref_images: lighthouse.png.')")
    wait_until(page, lambda: sessions(server)[0]["stats"]["chunk"] > 4, "chunks after the reference")
    assert "Parameters refused" not in (shown := messages(page)), shown
    stop(page, server)
    offered = [parameters.get("vace_ref_images") for parameters in page.evaluate("window.__offers")]
    assert offered[-1] == [asset["path"]] and not any(offered[:-1]), offered

    # The same image as a still control video: kept by the session and taken by every chunk.
    page.select_option(CONTROL, asset["path"])
    page.click(START)
    wait_until(page, lambda: sessions(server) and sessions(server)[0]["stats"]["chunk"] >= 2, "chunks with the control image")
    assert live_parameters(server)["vace_input_frames"] == asset["path"]
    assert "Parameters refused" not in (shown := messages(page)) and "failed" not in shown, shown
    stop(page, server)


def server_assets(server) -> list[dict]:
    with server.client() as client:
        return client.get("/api/v1/assets").json()["assets"]


def test_a_control_video_from_an_uploaded_video_then_from_the_webcam(page, server):
    load_with_vace(page, server)
    assert page.input_value(INPUT) == "none"
    page.click(START)
    wait_until(page, lambda: len(sessions(server)) == 1 and sessions(server)[0]["stats"]["chunk"] > 0, "a first chunk")

    upload(page, "sweep.mp4", "video/mp4", clip_mp4())
    (video,) = [a for a in server_assets(server) if a["name"] == "sweep"]
    assert video["type"] == "video"
    page.select_option(CONTROL, video["path"])
    wait_until(page, lambda: live_parameters(server).get("vace_input_frames") == video["path"], "the control video")
    played_from = sessions(server)[0]["stats"]["chunk"]
    wait_until(page, lambda: sessions(server)[0]["stats"]["chunk"] >= played_from + 2, "chunks with the control video")
    page.select_option(CONTROL, "")
    wait_until(page, lambda: "vace_input_frames" in live_parameters(server) and live_parameters(server)["vace_input_frames"] is None,
               "the control video to stop (null)")
    assert "Parameters refused" not in messages(page) and "Stream stopped" not in messages(page)

    # The webcam: it needs an input track, so the input becomes the webcam and a new stream sends it.
    page.select_option(CONTROL, "input")
    assert page.input_value(INPUT) == "webcam"
    wait_for(page, f"document.querySelector({json.dumps(MESSAGES)}).textContent.includes('Stop and Start it')")
    stop(page, server)
    page.click(START)
    wait_until(page, lambda: len(sessions(server)) == 1 and sessions(server)[0]["stats"]["chunk"] > 1, "chunks from the webcam")
    (live,) = sessions(server)
    assert live["input_mode"] == "video" and live["parameters"]["vace_use_input_video"] is True
    assert live["stats"]["input_frames_used"] > 0, live["stats"]
    assert "No webcam" not in messages(page) and "Parameters refused" not in messages(page)
    stop(page, server)
