"""The spec's Quick Start page, byte for byte, streaming ``longlive`` on synthetic weights, and
with only its ``pipeline_id`` changed, ``reward-forcing`` and ``memflow``.

``daydream-scope --synthetic`` writes the weights on the page's load request (nothing else is
prepared), as the README tells a user without a GPU to do. Chromium runs the page from
``file://``; only ``API_BASE`` is pointed at the test server. Pictures are sampled once per
chunk the server reports, each after the video has presented a new frame.
"""

from __future__ import annotations

import json
import statistics

import pytest

from tests._subprocess_server import running_scope_server
from tests.chromium import browser, page, wait_for, wait_until  # noqa: F401  (fixtures)
from tests.subprocess_only import jp_asyncio_loop, jp_server_cleanup  # noqa: F401  (autouse fixtures)
from tests.test_browser import (
    assert_frames_flow,
    quickstart_html,
    replace_once,
    sample_per_chunk,
    send_and_receive_html,
    server_chunks,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

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


def thumbnail(page, size: tuple[int, int] = (16, 9)) -> tuple[int, ...]:
    """A grey thumbnail of the picture, 16x9 unless ``size`` says otherwise."""
    return tuple(round(sum(p) / 3) for p in page.evaluate(SCALED_PIXELS, list(size)))


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
    wait_until(page, lambda: session(server)["stats"]["chunk"] >= start + more, f"{more} more chunks", timeout=180)
    return session(server)["stats"]["chunk"]


def per_chunk(page, server, sample, count: int) -> list:
    """``count`` samples of the picture, one per chunk the session produces."""
    return sample_per_chunk(page, server_chunks(server), sample, count, timeout=180)


def mean_colour(page, server, samples: int = 5) -> tuple[list[float], float, list[tuple[int, ...]]]:
    """The picture's mean colour over a few chunks, how much it moved between them (standard
    deviation, the largest of the channels'), and the pictures' grey thumbnails."""
    shots = per_chunk(page, server, lambda: (picture_mean(page), thumbnail(page)), samples)
    values = [mean for mean, _ in shots]
    mean = [statistics.fmean(v[c] for v in values) for c in range(3)]
    wobble = max(statistics.stdev(v[c] for v in values) for c in range(3))
    return mean, wobble, [shot for _, shot in shots]


def assert_moved(first, second, what: str) -> None:
    """Two phases' mean colours differ by more than twice the picture's own chunk-to-chunk
    movement (pooled over both phases), and by more than 2.5 levels."""
    (a, wobble_a, _), (b, wobble_b, _) = first, second
    shift = max(abs(x - y) for x, y in zip(a, b))
    wobble = ((wobble_a ** 2 + wobble_b ** 2) / 2) ** 0.5
    assert shift > 2.5 and shift > 2 * max(wobble, 0.5), f"{what}: shift {shift:.1f}, movement {wobble:.1f} ({a} -> {b})"


def send(page, message: dict) -> None:
    page.evaluate(f"window.__dataChannels.at(-1).send({json.dumps(json.dumps(message))})")


def open_quickstart(page, server, tmp_path, pipeline_id: str = "longlive") -> None:
    """The page, pointed at ``server``, with ``pipeline_id`` in its load request."""
    html = replace_once(quickstart_html(), 'const API_BASE = "http://localhost:8000";', f'const API_BASE = "{server.url}";')
    html = replace_once(html, 'pipeline_id: "longlive"', f'pipeline_id: "{pipeline_id}"')
    path = tmp_path / "index.html"
    path.write_text(html)
    page.goto(path.as_uri())


@pytest.mark.timeout(600)  # some twenty chunks at the page's 320x576 on a CPU
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

    # The picture changes from chunk to chunk; a prompt change over the data channel moves it to
    # another colour balance and it stays there.
    before = mean_colour(page, server)
    assert len(set(before[2])) > 1, "the video does not change"
    send(page, {"prompts": [{"text": "a blue whale in the deep ocean", "weight": 1.0}]})
    wait_chunks(page, server, 2)
    after = mean_colour(page, server)
    assert_moved(before, after, "the prompt change")
    assert session(server)["parameters"]["prompts"][0]["text"] == "a blue whale in the deep ocean"

    # A transition moves it again, over its chunks, and then the transition is dropped.
    send(page, {"transition": {"target_prompts": [{"text": "a forest fire at night", "weight": 1.0}], "num_steps": 3}})
    wait_chunks(page, server, 5)  # the transition's 3 chunks, and the picture settles
    target = mean_colour(page, server)
    assert_moved(after, target, "the transition")
    params = session(server)["parameters"]
    assert "transition" not in params and params["prompts"][0]["text"] == "a forest fire at night"
    assert page.inner_text("#status") == "Connected - Streaming"


@pytest.mark.parametrize("pipeline_id", ["reward-forcing", "memflow"])
def test_quickstart_page_with_only_the_pipeline_id_changed_streams_it(page, server, tmp_path, pipeline_id):
    """At the page's 576x320. Prompts and transitions behave as above: the causal core serves them
    alike for the three (and the server tests check a prompt change moves each one's pictures)."""
    open_quickstart(page, server, tmp_path, pipeline_id)
    wait_until(page, lambda: page.inner_text("#status") == "Connected - Streaming", "the page to stream", timeout=180)
    assert_frames_flow(page, minimum_growth=12)
    wait_for(page, "video.videoWidth === 576 && video.videoHeight === 320")
    with server.client() as client:
        status = client.get("/api/v1/pipeline/status").json()
    assert status["status"] == "loaded" and status["pipeline_id"] == pipeline_id and status["synthetic"] is True
    assert (status["load_params"]["height"], status["load_params"]["width"]) == (320, 576)
    live = session(server)
    assert live["pipeline_id"] == pipeline_id and live["stats"]["synthetic"] is True
    # The picture of one chunk against the next: measured 7.5 to 9 levels apart, where a stream
    # repeating one frame gives 0.05.
    first = thumbnail(page, (64, 36))
    [later] = per_chunk(page, server, lambda: thumbnail(page, (64, 36)), 1)
    change = statistics.fmean(abs(a - b) for a, b in zip(first, later))
    assert change > 2.0, f"the picture does not change from chunk to chunk ({change:.2f} levels)"


#: Video-to-video runs at a small size: what is tested is that the stream runs on the page's input.
V2V_SIZE = {"height": 160, "width": 288}
#: Stops (null) or restores the page's outgoing track, as a page does when its camera goes away.
REPLACE_INPUT = """
async (restore) => {
  const sender = window.__peerConnections[0].getSenders()[0];
  if (!restore) { window.__inputTrack = sender.track; await sender.replaceTrack(null); }
  else await sender.replaceTrack(window.__inputTrack);
}
"""


def test_quickstart_video_to_video_runs_on_the_pages_input(page, server, tmp_path):
    """The page sends a canvas: chunks are made from it, wait while it is gone, and go on when it
    is back. (That the pixels follow the input is shown through passthrough in test_browser.py
    and in-kernel: on synthetic weights the input moves longlive's picture by less than the
    picture moves by itself from chunk to chunk.)"""
    path = tmp_path / "v2v.html"
    path.write_text(send_and_receive_html(server.url, "longlive", V2V_SIZE))
    page.goto(path.as_uri())
    wait_until(page, lambda: page.inner_text("#status") == "Connected - Streaming", "the page to stream", timeout=180)
    assert_frames_flow(page, minimum_growth=24)
    wait_for(page, f"video.videoWidth === {V2V_SIZE['width']} && video.videoHeight === {V2V_SIZE['height']}")
    live = session(server)
    assert live["input_mode"] == "video" and live["pipeline_id"] == "longlive"
    assert live["parameters"]["noise_scale"] == 0.7
    wait_chunks(page, server, 2)

    page.evaluate(REPLACE_INPUT, False)
    wait_until(page, lambda: session(server)["stats"]["state"] == "waiting", "the session to wait for input", timeout=120)
    stalled_at = session(server)["stats"]["chunk"]
    page.evaluate(REPLACE_INPUT, True)
    wait_until(page, lambda: session(server)["stats"]["chunk"] >= stalled_at + 2, "chunks from the restored input",
               timeout=180)
