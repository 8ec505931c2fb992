"""Workers: one per device, each with its own pool, memory budget and generation thread.

Placement is checked on workers whose load and room are set by hand; then a real server on
loopback with two CPU workers (one torch thread each) streams two aiortc sessions on two workers.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from scope.streaming.placement import NoWorker, for_load, for_session
from scope.streaming.pool import LoadTarget
from tests.conftest import wait_for_status
from tests.pipelines import PatternStream, pattern_level, prompt_level
from tests.polling import wait_until
from tests.rtc import ScopeRtcClient, connected

PATTERN = LoadTarget("test-pattern", {})
OTHER = LoadTarget("passthrough", {})


def worker(name: str, *, sessions: int = 0, room: int = 0, holds: tuple = (), cap: int = 0, alive: bool = True):
    """A worker as placement sees it: its sessions, its room, what it holds, its limit."""
    pool = SimpleNamespace(holds=lambda target: target in holds, room_bytes=lambda: room)
    return SimpleNamespace(
        id=name, alive=alive, error=None if alive else "gone", max_sessions=cap, pool=pool,
        sessions=lambda: sessions, has_room_for_session=lambda: alive and (not cap or sessions < cap),
    )


def test_a_load_goes_to_the_least_loaded_holder_else_to_the_most_room():
    busy = worker("busy", sessions=3, room=10, holds=(PATTERN,))
    idle = worker("idle", sessions=1, room=1, holds=(PATTERN,))
    empty = worker("empty", room=50)
    assert for_load([busy, idle, empty], PATTERN) is idle
    assert for_load([busy, idle, empty], OTHER) is empty
    # Ties go to the worker listed first.
    assert for_load([worker("a", room=5), worker("b", room=5)], OTHER).id == "a"


def test_a_session_skips_full_and_lost_workers_and_503s_when_none_may_take_it():
    full = worker("full", sessions=1, cap=1, holds=(PATTERN,))
    lost = worker("lost", alive=False, room=99, holds=(PATTERN,))
    spare = worker("spare", room=5)
    # The holder is at its limit: the pipeline is loaded on the worker with room for a session.
    assert for_session([full, lost, spare], PATTERN) is spare
    assert for_session([worker("h", sessions=2, holds=(PATTERN,)), spare], PATTERN).id == "h"
    with pytest.raises(NoWorker, match="session limit"):
        for_session([full, worker("full2", sessions=1, cap=1)], PATTERN)
    with pytest.raises(NoWorker, match="No worker is left"):
        for_load([lost], PATTERN)


# The server ----------------------------------------------------------------------------


@pytest.fixture
def scope_extra_config():
    return {"workers": "cpu,cpu", "worker_threads": 1, "max_sessions_per_worker": 1}


@pytest.mark.usefixtures("jp_serverapp", "test_pipelines")
async def test_two_cpu_workers_stream_two_sessions_each_on_its_own(api, services, monkeypatch):
    threads: dict[str, set[str]] = {}
    run_chunk = PatternStream.run_chunk

    def recording_run_chunk(self, params, video=None, *, init_cache=False):
        text = params["prompts"][0]["text"]
        threads.setdefault(text, set()).add(threading.current_thread().name)
        return run_chunk(self, params, video, init_cache=init_cache)

    monkeypatch.setattr(PatternStream, "run_chunk", recording_run_chunk)
    state = (await api("GET", "api/v1/pipeline/status")).json
    assert [(w["id"], w["device"], w["kind"], w["torch_threads"], w["max_sessions"]) for w in state["workers"]] == [
        ("local-0", "cpu", "local", 1, 1), ("local-1", "cpu", "local", 1, 1),
    ]
    reply = await api("POST", "api/v1/pipeline/load", {"pipeline_id": "test-pattern", "load_params": {}})
    assert reply.status == 200, reply.body
    state = await wait_for_status(api, "loaded")
    assert [e["worker"] for e in state["pipelines"]] == ["local-0"]

    async with connected(api, {"prompts": "a red fox"}, recvonly=True) as fox:
        await fox.wait_frames(5)
        # local-0 is at its limit of one session: the second loads the pipeline on local-1.
        async with connected(api, {"prompts": "a blue whale"}, recvonly=True) as whale:
            await whale.wait_frames(5, timeout=60)
            live = {s["id"]: s for s in (await api("GET", "api/v1/webrtc/sessions")).json["sessions"]}
            assert (live[fox.session_id]["worker"], live[whale.session_id]["worker"]) == ("local-0", "local-1")
            state = (await api("GET", "api/v1/pipeline/status")).json
            assert sorted((e["worker"], tuple(e["sessions"])) for e in state["pipelines"]) == [
                ("local-0", (fox.session_id,)), ("local-1", (whale.session_id,)),
            ]
            assert [w["sessions"] for w in state["workers"]] == [1, 1]
            # The right pictures: each session's brightness is its own prompt's.
            for client, text in ((fox, "a red fox"), (whale, "a blue whale")):
                mark = len(client.frames)
                await client.wait_frames(mark + 3, timeout=60)
                expected = prompt_level({"prompts": [{"text": text}]})
                shown = pattern_level(client.frames[-1].array)
                assert abs(shown - expected) <= 6, (text, shown, expected)
            # Each worker's chunks ran on its own generation thread.
            assert threads["a red fox"] == {"scope-device-local-0_0"} and threads["a blue whale"] == {"scope-device-local-1_0"}

            # Both workers are at their limit: a third session is refused, naming why.
            third = ScopeRtcClient(api, recvonly=True)
            reply = await third.connect({"prompts": "a third"}, expect_status=503)
            assert "session limit" in reply.body.decode()
        await wait_until(lambda s: [w["sessions"] for w in s["workers"]] == [1, 0], what="local-1 free again",
                         value=lambda: _status(api))


async def _status(api) -> dict:
    return (await api("GET", "api/v1/pipeline/status")).json


def test_a_ray_workers_stand_in_checks_parameters_as_its_pipeline_does(synthetic_models):
    """The server checks a Ray worker's pipeline from its facts alone, with the pipeline's own code."""
    import scope
    from scope.streaming.ray_worker import RemotePipeline

    loaded = scope.load_pipeline("streamdiffusionv2", models_dir=synthetic_models, height=64, width=64)
    facts = {"handle": 1, "synthetic": True, "load_warnings": [], "loaded_lora_adapters": loaded.loaded_lora_adapters}
    worker = SimpleNamespace(pool=SimpleNamespace(context=SimpleNamespace(lora_dir=loaded.lora_dir)))
    stand_in = RemotePipeline(worker, type(loaded), loaded.load_params, facts)
    updates = [
        {"vace_ref_images": ["ref.png"]},  # VACE was not loaded
        {"lora_scales": [{"path": "style.safetensors", "scale": 0.5}]},  # nor this LoRA
        {"input_mode": "video", "prompts": [{"text": "a pier", "weight": 1.0}]},
    ]
    found = [stand_in.check_parameters(update) for update in updates]
    assert found == [loaded.check_parameters(update) for update in updates]
    assert [bool(errors) for errors in found] == [True, True, False]
    assert stand_in.info is loaded.info and stand_in.synthetic and stand_in.vace_in_video_mode is False
