"""The spec's Quick Start page, byte for byte, streaming ``longlive`` on synthetic weights.

``daydream-scope --synthetic`` writes the weights on the page's load request (nothing else is
prepared), as the README tells a user without a GPU to do. Chromium runs the page from
``file://``; only ``API_BASE`` is pointed at the test server.
"""

from __future__ import annotations

import json
import statistics

import pytest

from tests._subprocess_server import running_scope_server
from tests.test_browser import (  # noqa: F401  (fixtures)
    CHROMIUM,
    assert_frames_flow,
    browser,
    jp_asyncio_loop,
    jp_server_cleanup,
    needs_spec,
    page,
    quickstart_html,
    replace_once,
    send_and_receive_html,
    wait_for,
    wait_until,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed"),
]

#: The picture scaled down to ``[width, height]``, as RGB triples.
SCALED_PIXELS = """
([width, height]) => {
  const video = document.querySelector("#video");
  const canvas = document.createElement("canvas");
  canvas.width = width; canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(video, 0, 0, width, height);
  const data = ctx.getImageData(0, 0, width, height).data;
  const pixels = [];
  for (let i = 0; i < data.length; i += 4) pixels.push([data[i], data[i + 1], data[i + 2]]);
  return pixels;
}
"""


def picture_mean(page) -> list[float]:
    """The mean RGB of the whole picture."""
    pixels = page.evaluate(SCALED_PIXELS, [64, 36])
    return [statistics.fmean(p[c] for p in pixels) for c in range(3)]


def thumbnail(page) -> tuple[int, ...]:
    """A 16x9 grey thumbnail of the picture."""
    return tuple(round(sum(p) / 3) for p in page.evaluate(SCALED_PIXELS, [16, 9]))


@pytest.fixture(scope="module")
def scope_synthetic_server(tmp_path_factory):
    with running_scope_server(tmp_path_factory.mktemp("quickstart"), "--synthetic") as server:
        yield server


@pytest.fixture
def server(scope_synthetic_server):
    """The module's server with no session left from an earlier test."""
    with scope_synthetic_server.client() as client:
        for live in client.get("/api/v1/webrtc/sessions").json()["sessions"]:
            client.delete(f"/api/v1/webrtc/sessions/{live['id']}")
    return scope_synthetic_server


def session(server) -> dict:
    with server.client() as client:
        sessions = client.get("/api/v1/webrtc/sessions").json()["sessions"]
    assert len(sessions) == 1, sessions
    return sessions[0]


def wait_chunks(page, server, more: int) -> int:
    """Wait until the session has produced ``more`` chunks beyond now; returns the new count."""
    start = session(server)["stats"]["chunk"]
    wait_until(page, lambda: session(server)["stats"]["chunk"] >= start + more, f"{more} more chunks", timeout=120)
    return session(server)["stats"]["chunk"]


def mean_colour(page, samples: int = 8) -> tuple[list[float], float]:
    """The picture's mean colour over a few frames, and how much it moved between them."""
    values = []
    for _ in range(samples):
        values.append(picture_mean(page))
        page.wait_for_timeout(250)
    mean = [statistics.fmean(v[c] for v in values) for c in range(3)]
    wobble = max(statistics.pstdev(v[c] for v in values) for c in range(3))
    return mean, wobble


def send(page, message: dict) -> None:
    page.evaluate(f"window.__dataChannels.at(-1).send({json.dumps(json.dumps(message))})")


def open_quickstart(page, server, tmp_path) -> None:
    html = replace_once(quickstart_html(), 'const API_BASE = "http://localhost:8000";', f'const API_BASE = "{server.url}";')
    path = tmp_path / "index.html"
    path.write_text(html)
    page.goto(path.as_uri())


@needs_spec
def test_quickstart_page_streams_longlive_and_follows_prompts(page, server, tmp_path):
    open_quickstart(page, server, tmp_path)
    wait_until(page, lambda: page.inner_text("#status") == "Connected - Streaming", "the page to stream", timeout=180)
    assert_frames_flow(page, minimum_growth=24)
    wait_for(page, "video.videoWidth === 576 && video.videoHeight === 320")
    with server.client() as client:
        status = client.get("/api/v1/pipeline/status").json()
    assert status["status"] == "loaded" and status["synthetic"] is True
    assert status["load_params"]["height"] == 320 and status["load_params"]["width"] == 576
    live = session(server)
    assert live["stats"]["synthetic"] is True and live["input_mode"] == "text"

    # The picture changes over time.
    shots = []
    for _ in range(4):
        shots.append(thumbnail(page))
        page.wait_for_timeout(500)
    assert len(set(shots)) > 1, "the video does not change"

    # A prompt change over the data channel moves the picture to another colour balance and stays there.
    wait_chunks(page, server, 1)
    before, wobble_before = mean_colour(page)
    send(page, {"prompts": [{"text": "a blue whale in the deep ocean", "weight": 1.0}]})
    wait_chunks(page, server, 3)
    after, wobble_after = mean_colour(page)
    shift = max(abs(a - b) for a, b in zip(before, after))
    assert shift > 2.5 and shift > 2 * max(wobble_before, wobble_after, 0.5), (before, after, wobble_before, wobble_after)
    assert session(server)["parameters"]["prompts"][0]["text"] == "a blue whale in the deep ocean"

    # A transition moves it again, over its chunks, and then the transition is dropped.
    send(page, {"transition": {"target_prompts": [{"text": "a forest fire at night", "weight": 1.0}], "num_steps": 3}})
    wait_chunks(page, server, 5)
    target, wobble_target = mean_colour(page)
    moved = max(abs(a - b) for a, b in zip(after, target))
    assert moved > 2.5 and moved > 2 * max(wobble_after, wobble_target, 0.5), (after, target)
    params = session(server)["parameters"]
    assert "transition" not in params and params["prompts"][0]["text"] == "a forest fire at night"
    assert page.inner_text("#status") == "Connected - Streaming"


@needs_spec
def test_quickstart_video_to_video_with_a_canvas(page, server, tmp_path):
    html = send_and_receive_html(server.url).replace('pipeline_id: "passthrough"', 'pipeline_id: "longlive"')
    path = tmp_path / "v2v.html"
    path.write_text(html)
    page.goto(path.as_uri())
    wait_until(page, lambda: page.inner_text("#status") == "Connected - Streaming", "the page to stream", timeout=180)
    assert_frames_flow(page, minimum_growth=24)
    wait_for(page, "video.videoWidth === 576 && video.videoHeight === 320")
    live = session(server)
    assert live["input_mode"] == "video" and live["pipeline_id"] == "longlive"
    assert live["parameters"]["noise_scale"] == 0.7
    start = live["stats"]["chunk"]
    wait_chunks(page, server, 2)
    assert session(server)["stats"]["chunk"] >= start + 2
