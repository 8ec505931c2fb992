"""The Python client's VACE flow against a real ``daydream-scope``: upload an image asset, stream
``longlive`` (synthetic weights, VACE loaded, 64x64) with it as the reference, see the frames change.

A stream's frames depend only on the seed, the prompts and the conditioning, so a second stream
with the same parameters replays the first up to the codec's noise. That replay is the yardstick:
the reference at ``vace_context_scale`` 0 (which must equal no reference) stays within it, the
reference at full scale moves the frames far beyond it.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import statistics

import numpy as np
import pytest
from PIL import Image

from scope.client import ScopeClient
from scope.server_ext.api_models import Asset
from tests._subprocess_server import running_scope_server
from tests.test_longlive_server import blocks

pytestmark = pytest.mark.timeout(240)

LOAD = {"height": 64, "width": 64, "seed": 3, "vace_enabled": True}
PROMPT = "a watercolour of a lighthouse"
#: The frames compared: the first chunks, which the reference conditions (later ones only through the cache).
FRAMES = 12


@pytest.fixture(scope="module")
def client(tmp_path_factory, synthetic_models):
    root = tmp_path_factory.mktemp("client-vace")
    shutil.copytree(synthetic_models, root / "models")
    with running_scope_server(root) as server, ScopeClient(server.url) as client:
        client.ensure_pipeline("longlive", LOAD, timeout=180)
        yield client


def halves_png() -> bytes:
    """Red on the left, blue on the right: a reference far from the stream's own pictures."""
    picture = np.zeros((64, 64, 3), np.uint8)
    picture[:, :32] = (255, 0, 0)
    picture[:, 32:] = (0, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    return buffer.getvalue()


async def opening_frames(client: ScopeClient, **parameters) -> np.ndarray:
    """The first frames of a receive-only stream started with ``parameters``."""
    async with client.stream(PROMPT, paused=True, **parameters) as stream:
        reader = asyncio.ensure_future(stream.read(FRAMES, timeout=120))
        await asyncio.sleep(0)  # the reader waits before the first frame can come
        stream.update(paused=False)
        frames = await reader
        assert not [m for m in stream.messages if m.get("type") == "parameters_rejected"], stream.messages
        return frames


def distance(frames: np.ndarray, reference: np.ndarray) -> float:
    """Median over ``frames`` of the block-mean MSE to the nearest frame of ``reference``."""
    return statistics.median(min(float(np.mean((blocks(f) - blocks(r)) ** 2)) for r in reference) for f in frames)


def test_an_uploaded_image_as_the_reference_changes_the_stream(client):
    asset = client.upload_asset(halves_png(), "lighthouse_ref.png")
    assert isinstance(asset, Asset) and asset.type == "image"
    assert [a.path for a in client.assets("image")] == [asset.path]

    plain = asyncio.run(opening_frames(client))
    # The Asset itself stands for its path; at scale 0 the context adds nothing.
    unscaled = asyncio.run(opening_frames(client, vace_ref_images=[asset], vace_context_scale=0))
    guided = asyncio.run(opening_frames(client, vace_ref_images=[asset.path]))

    replay, moved = distance(unscaled, plain), distance(guided, plain)
    assert moved > 3 * max(replay, 1.0), f"reference moved the frames by {moved:.1f}, a replay by {replay:.1f}"
