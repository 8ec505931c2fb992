"""The ``/scope/`` page with user LoRAs, in a real Chromium against ``daydream-scope --synthetic``:
a LoRA picked from the server's list at load (``runtime_peft``), then its scale moved with the
slider while streaming.

What the slider does is checked where it lands: the session's own LoRA scales
(``GET /api/v1/webrtc/sessions``), and the picture. Under ``manage_cache`` a scale change
restarts the stream from its first frame, and the stream's noise depends only on the seed and the
frame position, so a restart at the opening scale replays the opening frames, and one at another
scale does not: every presented frame is kept as a thumbnail, and the opening frames are looked
for among the frames after each change.
"""

from __future__ import annotations

import json
import shutil
import statistics

import pytest
from safetensors.torch import save_file

from scope.models.synthetic.lora import synthetic_lora_state_dict
from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG
from tests._subprocess_server import running_scope_server
from tests.chromium import browser, page, wait_for, wait_until  # noqa: F401  (fixtures)
from tests.subprocess_only import jp_asyncio_loop, jp_server_cleanup  # noqa: F401  (autouse fixtures)
from tests.test_browser import LOAD, MODELS, PAGE, PIPELINE, PIPELINE_STATUS, START, STOP, open_page, sessions, text_is

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

LORA_FILE = "strong_style.safetensors"
#: The synthetic LoRA's up weights times this: at scale 5 it moves the 64x64 picture by about 12
#: grey levels (8x8 block means), well clear of the codec's noise.
STRENGTH = 10.0
PICKER, SLIDER = f"{PAGE} .scope-loras", f"{PAGE} .scope-lora-scales .scope-lora-slider"

#: Keeps an 8x8 grey thumbnail of every frame the video presents, in window.__frames.
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
      const grey = [];
      for (let i = 0; i < data.length; i += 4) grey.push((data[i] + data[i + 1] + data[i + 2]) / 3);
      window.__frames.push(grey);
    }
    video.requestVideoFrameCallback(grab);
  };
  video.requestVideoFrameCallback(grab);
}"""


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory, synthetic_models):
    """``daydream-scope --synthetic`` with the suite's synthetic weights and one strong LoRA file."""
    root = tmp_path_factory.mktemp("loras-page")
    shutil.copytree(synthetic_models, root / "models")
    state = synthetic_lora_state_dict("peft", SYNTHETIC_WAN_CONFIG, seed=1)
    state = {key: value * STRENGTH if "lora_B" in key else value for key, value in state.items()}
    (root / "lora").mkdir()
    save_file(state, str(root / "lora" / LORA_FILE))
    with running_scope_server(root, "--synthetic") as server:
        server.lora_path = str((root / "lora" / LORA_FILE).resolve())
        yield server


def frames_seen(page) -> int:
    return page.evaluate("window.__frames.length")


def frames_after(page, start: int, count: int) -> list[list[float]]:
    """Wait for ``count`` frames presented after frame ``start``; answers them."""
    wait_until(page, lambda: frames_seen(page) >= start + count, f"{count} frames after frame {start}", timeout=60)
    return page.evaluate(f"window.__frames.slice({start})")


def distance(a: list[float], b: list[float]) -> float:
    return statistics.fmean(abs(x - y) for x, y in zip(a, b))


def replayed(opening: list[list[float]], later: list[list[float]]) -> float:
    """How far the opening frames are from their nearest frames in ``later`` (median, grey levels)."""
    return statistics.median(min(distance(frame, other) for other in later) for frame in opening)


def set_slider(page, value: float) -> None:
    """Move the slider as a user does: input while dragging, change on letting go."""
    page.eval_on_selector(
        SLIDER,
        "(slider, value) => { slider.value = value; slider.dispatchEvent(new Event('input')); "
        "slider.dispatchEvent(new Event('change')); }",
        value,
    )


def session_scales(server) -> list[dict]:
    (live,) = sessions(server)
    return live["lora_scales"]


def test_pick_a_lora_at_load_and_move_its_scale_while_streaming(page, lora_server):
    server = lora_server
    open_page(page, server.url + "/scope/", "passthrough")
    wait_for(page, text_is(MODELS, "No model files needed."))
    assert page.is_hidden(PICKER), "passthrough takes no LoRAs"
    page.select_option(PIPELINE, "longlive")
    wait_for(page, f"document.querySelector({json.dumps(PICKER)}).querySelectorAll('.scope-lora').length === 1")
    row = page.locator(f"{PICKER} .scope-lora")
    assert row.get_attribute("data-path") == server.lora_path
    assert "strong_style" in row.inner_text()

    # Pick it at scale 0, kept apart from the weights, at 64x64.
    page.click(f"{PAGE} .scope-load summary")
    page.locator(f"{PAGE} .scope-load label", has_text="Height").locator("input").fill("64")
    page.locator(f"{PAGE} .scope-load label", has_text="Width").locator("input").fill("64")
    row.locator(".scope-lora-scale").fill("0")
    row.locator(".scope-lora-mode").select_option("runtime_peft")
    row.locator(".scope-lora-use").check()
    page.click(LOAD)
    wait_for(page, text_is(PIPELINE_STATUS, "Loaded longlive."), 60_000)
    with server.client() as client:
        status = client.get("/api/v1/pipeline/status").json()
    assert status["load_params"]["loras"] == [{"path": server.lora_path, "scale": 0.0, "merge_mode": "runtime_peft"}]
    (adapter,) = status["loaded_lora_adapters"]
    assert (adapter["path"], adapter["merge_mode"], adapter["scale"]) == (server.lora_path, "runtime_peft", 0.0)
    assert page.locator(SLIDER).count() == 1 and page.is_disabled(SLIDER), "one slider, live only while streaming"

    page.evaluate(RECORD_FRAMES, f"{PAGE} .scope-video")
    page.click(START)
    wait_until(page, lambda: not page.is_disabled(SLIDER), "the slider to come alive")
    opening = frames_after(page, 0, 12)[2:10]  # past the first (key) frames
    assert session_scales(server) == [{"path": server.lora_path, "scale": 0.0}]

    # Scale 5: the session takes it, and the restarted stream no longer shows the opening.
    mark = frames_seen(page)
    set_slider(page, 5)
    wait_until(page, lambda: session_scales(server) == [{"path": server.lora_path, "scale": 5.0}],
               "the session's scale to be 5")
    assert page.locator(f"{PAGE} .scope-lora-value").inner_text() == "5.00"
    moved = replayed(opening, frames_after(page, mark, 40))

    # Back to 0: the restart replays the opening frames (the check above could see a change).
    mark = frames_seen(page)
    set_slider(page, 0)
    wait_until(page, lambda: session_scales(server) == [{"path": server.lora_path, "scale": 0.0}],
               "the session's scale to be 0 again")
    back = replayed(opening, frames_after(page, mark, 40))
    assert back < 4 and moved > back + 5, f"opening found again at scale 0: {back:.1f}; at scale 5: {moved:.1f}"

    page.click(STOP)
    wait_until(page, lambda: not sessions(server), "the server to close the session", timeout=60)
