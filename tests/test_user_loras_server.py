"""User LoRAs through the real server: a load with ``loras``, and a live scale change per session."""

from __future__ import annotations

import numpy as np
import pytest

from tests.polling import wait_until
from tests.rtc import connected
from tests.test_longlive_server import blocks, load
from tests.test_user_loras import delta, write

pytestmark = pytest.mark.usefixtures("jp_serverapp")

SMALL = {"height": 64, "width": 64}


@pytest.fixture
def scope_extra_config(synthetic_models):
    return {"models_dir": str(synthetic_models)}


@pytest.fixture
def style(scope_dirs):
    """A LoRA file in the server's LoRA directory, named as clients name it (relative)."""
    write(scope_dirs["lora"] / "style.safetensors", delta(1))
    return "style.safetensors"


async def session_info(api, session_id: str) -> dict:
    sessions = (await api("GET", "api/v1/webrtc/sessions")).json["sessions"]
    return next(s for s in sessions if s["id"] == session_id)


def mean_level_change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


async def test_a_load_with_loras_reports_its_adapters(api, style, scope_dirs):
    status = await load(api, {**SMALL, "loras": [{"path": style, "scale": 0.5}], "lora_merge_mode": "runtime_peft"})
    [adapter] = status["loaded_lora_adapters"]
    assert adapter == {
        "path": str((scope_dirs["lora"] / style).resolve()), "scale": 0.5, "merge_mode": "runtime_peft", "name": "style",
    }
    assert status["load_params"]["loras"] == [{"path": style, "scale": 0.5, "merge_mode": None}]


async def test_a_data_channel_scale_change_reaches_the_session_and_its_picture(api, style, scope_dirs):
    await load(api, {**SMALL, "loras": [{"path": style, "scale": 0.0, "merge_mode": "runtime_peft"}]})
    async with connected(api, {"prompts": "a lighthouse"}, recvonly=True) as client:
        before = await client.wait_frames(18, timeout=90)
        client.send({"lora_scales": [{"path": style, "scale": 5.0}]})
        resolved = str((scope_dirs["lora"] / style).resolve())

        async def scaled() -> bool:
            return (await session_info(api, client.session_id))["lora_scales"] == [{"path": resolved, "scale": 5.0}]

        await wait_until(scaled, what="the session to apply the new scale", timeout=60)
        seen = len(client.frames)
        after = await client.wait_frames(seen + 24, timeout=90)
        # The change restarts the stream (manage_cache): frame 0 again, the same seed. Had the
        # scale not reached the model, nine frames after the change would replay the first chunk
        # (measured: 1.2 levels on 8x8 block means, the codec's loss); under the new scale the
        # closest window is 10.7 levels away.
        first = [frame.array for frame in before[:9]]
        replays = [
            np.mean([mean_level_change(blocks(a), blocks(b.array)) for a, b in zip(first, after[start : start + 9])])
            for start in range(max(0, seen - 12), len(after) - 8)
        ]
        assert min(replays) > 3.0, f"a window after the change replays the first chunk ({min(replays):.1f} levels)"
        # A merged adapter or an unknown file is refused by name, and the stream goes on.
        client.send({"lora_scales": [{"path": "nope.safetensors", "scale": 1.0}]})
        rejected = await client.wait_message(lambda m: m.get("type") == "parameters_rejected")
        assert rejected["errors"][0]["loc"][:2] == ["lora_scales", 0]


async def test_merged_adapters_refuse_scale_changes(api, style):
    await load(api, {**SMALL, "loras": [{"path": style, "scale": 1.0}]})
    async with connected(api, {"prompts": "a lighthouse"}, recvonly=True) as client:
        await client.wait_frames(9, timeout=90)
        client.send({"lora_scales": [{"path": style, "scale": 2.0}]})
        rejected = await client.wait_message(lambda m: m.get("type") == "parameters_rejected")
    assert rejected["errors"] == [
        {"loc": ["lora_scales", 0, "path"], "msg": f"'{style}' is merged into the weights (permanent_merge): its scale cannot change"}
    ]
