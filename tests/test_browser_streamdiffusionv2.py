"""The ``/scope/`` page with ``streamdiffusionv2``: a video-to-video pipeline starts on the
webcam, and the page applies its ``mode_defaults`` (the reference UI's hints) per input mode.

``daydream-scope --synthetic`` writes the weights when the module loads the pipeline at 64x64,
before any page opens, so the page opens on it as on a server someone else loaded. Chromium's
fake camera (``tests/chromium.py``) is the webcam.
"""

from __future__ import annotations

import json

import pytest

from tests._subprocess_server import running_scope_server
from tests.polling import wait_until_sync
from tests.chromium import VIDEO_PIXELS, browser, page, wait_for, wait_until  # noqa: F401  (fixtures)
from tests.subprocess_only import jp_asyncio_loop, jp_server_cleanup  # noqa: F401  (autouse fixtures)
from tests.test_browser import (
    INPUT,
    PAGE,
    PIPELINE,
    PIPELINE_STATUS,
    START,
    STOP,
    VIDEO,
    messages,
    sample_per_chunk,
    server_chunks,
    sessions,
    text_is,
    wait_for_chunks,
    wait_for_status,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

SIZE = {"height": 64, "width": 64}
LOADED = text_is(PIPELINE_STATUS, "Loaded streamdiffusionv2.")


@pytest.fixture(scope="module")
def sdv2_server(tmp_path_factory):
    """A ``--synthetic`` server with ``streamdiffusionv2`` loaded at 64x64."""
    with running_scope_server(tmp_path_factory.mktemp("sdv2-page"), "--synthetic") as server:
        with server.client() as client:
            reply = client.post("/api/v1/pipeline/load", json={"pipeline_id": "streamdiffusionv2", "load_params": SIZE})
            assert reply.status_code == 200, reply.text
            status = wait_until_sync(lambda s: s["status"] != "loading", 120, "the load to settle",
                                     value=lambda: client.get("/api/v1/pipeline/status").json())
            assert status["status"] == "loaded", status
        yield server


@pytest.fixture
def server(sdv2_server):
    """The module's server with no session left from an earlier test."""
    with sdv2_server.client() as client:
        for live in client.get("/api/v1/webrtc/sessions").json()["sessions"]:
            client.delete(f"/api/v1/webrtc/sessions/{live['id']}")
    return sdv2_server


def field(page, caption: str, kind: str = "input", section: str = ".scope-parameters"):
    """The control under ``caption`` (its schema title) in the stream or load form."""
    return page.locator(f"{PAGE} {section} .scope-field", has_text=caption).locator(kind)


def hinted(page, caption: str, section: str = ".scope-parameters") -> bool:
    """Whether the field shows a mode's hint rather than a value the user set."""
    label = page.locator(f"{PAGE} {section} .scope-field", has_text=caption)
    return "scope-hint" in (label.get_attribute("class") or "")


def started_parameters(page, server) -> dict:
    """Start a stream from the page; the parameters its session started with, then stop it."""
    page.click(START)
    wait_until(page, lambda: len(sessions(server)) == 1, "the page's session")
    (live,) = sessions(server)
    page.click(STOP)
    wait_for_status(page, "stopped")
    wait_until(page, lambda: not sessions(server), "the server to close the session")
    return live


def test_scope_page_streams_the_fake_webcam_through_streamdiffusionv2(page, server):
    page.goto(server.url + "/scope/")
    wait_for(page, LOADED)
    # Opened on the loaded pipeline: its default mode is video, so the webcam is the input, and
    # the noise controls come from its parameters schema with video mode's hints.
    assert page.input_value(PIPELINE) == "streamdiffusionv2"
    assert page.input_value(INPUT) == "webcam"
    assert field(page, "Noise Scale").input_value() == "0.7" and hinted(page, "Noise Scale")
    assert field(page, "Noise Controller", "select").input_value() == "true" and hinted(page, "Noise Controller")
    page.click(START)

    wait_for_chunks(page)
    wait_for_status(page, "streaming")
    wait_for(page, f"document.querySelector({json.dumps(VIDEO)}).videoWidth === 64 "
                   f"&& document.querySelector({json.dumps(VIDEO)}).videoHeight === 64")
    shots = sample_per_chunk(page, server_chunks(server), lambda: tuple(page.evaluate(VIDEO_PIXELS, VIDEO)), 3, VIDEO)
    assert len(set(shots)) > 1, "the video does not change from chunk to chunk"
    assert "No webcam" not in messages(page), "the fake camera must have been used"
    (live,) = sessions(server)
    assert live["input_mode"] == "video" and live["stats"]["chunk"] > 0
    params = live["parameters"]
    assert params["noise_scale"] == 0.7 and params["noise_controller"] is True
    # Video mode has no step-list hint: the pipeline's own [750, 250] stands.
    assert params.get("denoising_step_list") in (None, [750, 250]), params
    page.click(STOP)
    wait_until(page, lambda: not sessions(server), "the server to close the session")


def test_scope_page_applies_streamdiffusionv2s_mode_defaults(page, server):
    page.goto(server.url + "/scope/")
    wait_for(page, LOADED)
    # The page took the loaded pipeline's load parameters as set: text mode's 512 does not replace them.
    page.select_option(INPUT, "none")
    assert field(page, "Height", section=".scope-load").input_value() == "64"
    assert not hinted(page, "Height", ".scope-load")

    # Chosen again in the select, with nothing set: the webcam again, and text mode's hints.
    page.select_option(PIPELINE, "longlive")
    assert page.input_value(INPUT) == "none"
    page.select_option(PIPELINE, "streamdiffusionv2")
    assert page.input_value(INPUT) == "webcam"
    assert field(page, "Height", section=".scope-load").input_value() == ""
    assert field(page, "Denoising Step List").input_value() == ""
    page.select_option(INPUT, "none")
    assert field(page, "Height", section=".scope-load").input_value() == "512" and hinted(page, "Height", ".scope-load")
    assert field(page, "Denoising Step List").input_value() == "1000, 750" and hinted(page, "Denoising Step List")
    assert field(page, "Noise Scale").input_value() == ""

    # Text mode starts with the hinted step list, on the pipeline as loaded (no reload for a hint).
    live = started_parameters(page, server)
    assert live["input_mode"] == "text"
    assert live["parameters"]["denoising_step_list"] == [1000, 750]
    with server.client() as client:
        status = client.get("/api/v1/pipeline/status").json()
    assert status["status"] == "loaded" and (status["load_params"]["height"], status["load_params"]["width"]) == (64, 64)

    # A step list the user types wins over the hint.
    field(page, "Denoising Step List").fill("500, 250")
    field(page, "Denoising Step List").press("Tab")
    assert not hinted(page, "Denoising Step List")
    live = started_parameters(page, server)
    assert live["input_mode"] == "text" and live["parameters"]["denoising_step_list"] == [500, 250]
