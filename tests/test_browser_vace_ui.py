"""The ``/scope/`` page's VACE panel in a real Chromium against ``daydream-scope`` (synthetic
weights, ``longlive`` loaded with VACE at 64x64): an image uploaded through the page and sent as
the reference while streaming changes the picture; a video uploaded through the page becomes the
control video, and the webcam does once chosen.

How the reference is seen: a stream's frames depend only on the seed, the prompts and the
conditioning, so a second stream replays the first. The frames of the second stream before the
reference are found among the first stream's frames; the frames after it are not.
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
from tests.test_browser_loras import frames_after, frames_seen, replayed

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

#: Keeps an 8x8 RGB thumbnail of every frame the video presents, in window.__frames (the
#: reference is red and blue: grey levels would hide much of what it does).
RECORD_FRAMES = """(selector) => {
  window.__frames = [];
  const video = document.querySelector(selector);
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 8;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const grab = () => {
    if (video.videoWidth) {
      ctx.drawImage(video, 0, 0, 8, 8);
      const data = ctx.getImageData(0, 0, 8, 8).data;
      window.__frames.push([...data].filter((_, i) => i % 4 !== 3));
    }
    video.requestVideoFrameCallback(grab);
  };
  video.requestVideoFrameCallback(grab);
}"""


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


#: A stream whose first frame shows after more chunks than this may have lost its opening frames:
#: the server drops the stalest queued frames when the viewer takes long to connect.
OPENING_CHUNKS = 3


def opening(page, server, count: int = 14, before_start=lambda: None) -> list[list[float]]:
    """Start a stream (after ``before_start()``); answers the thumbnails of its opening frames,
    past the first (key) frames. One that may have lost them to a slow connection is started again."""
    for _attempt in range(3):
        before_start()
        mark = frames_seen(page)
        page.click(START)
        wait_until(page, lambda: frames_seen(page) > mark, "the first frame", timeout=60)
        if sessions(server)[0]["stats"]["chunk"] <= OPENING_CHUNKS:
            return frames_after(page, mark, count)[2:count]
        stop(page, server)
    raise AssertionError("three streams' opening frames came after their chunk 3: the machine is too slow here")


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
    page.evaluate(RECORD_FRAMES, f"{PAGE} .scope-video")
    # The slider sets the context scale every stream starts with (a stream without VACE inputs has no context).
    page.eval_on_selector(SCALE, "(s) => { s.value = 2; s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change')); }")
    assert page.inner_text(f"{PANEL} .scope-vace-scale-value") == "2.00"

    plain = opening(page, server, 40)
    assert sessions(server)[0]["parameters"]["vace_context_scale"] == 2
    stop(page, server)
    # Sent with no stream, the reference goes with the next stream's first chunk. It conditions
    # that chunk (later ones only through its latents), so a stream whose first chunk never
    # reached the screen (a lost opening keyframe) can look plain: such a stream is run again.
    for _attempt in range(3):
        guided = opening(page, server, before_start=lambda: queue_reference(page))
        stop(page, server)
        if replayed(guided, plain) > 8:
            break
    # One-shot: the stream after it starts without it, and replays the plain one.
    again = opening(page, server)
    page.click(SEND_REF)  # while streaming: straight to the stream
    wait_for(page, f"document.querySelector({json.dumps(MESSAGES)}).textContent.includes('Sent vace_ref_images: lighthouse.png.')")
    wait_until(page, lambda: sessions(server)[0]["stats"]["chunk"] > 4, "chunks after the reference")
    assert "Parameters refused" not in (shown := messages(page)), shown
    stop(page, server)

    replay, moved = replayed(again, plain), replayed(guided, plain)
    # What the page offered: the reference with the second stream only.
    offered = [bool(parameters.get("vace_ref_images")) for parameters in page.evaluate("window.__offers")]
    assert offered[0] is False and offered[-1] is False and True in offered[1:-1], offered
    assert replay < 4 and moved > replay + 5, f"a plain stream replayed at {replay:.1f}; with the reference at {moved:.1f}"


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
