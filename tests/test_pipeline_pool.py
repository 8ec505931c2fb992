"""Several pipelines loaded at once: sessions keep theirs, offers name theirs, a memory budget.

Real servers on loopback with aiortc peers. ``longlive`` on synthetic weights is the pipeline
that holds memory (the budget is set from what the status reports, never from a written size);
``passthrough`` and ``test-pattern`` hold none and load at once (``test-pattern`` behind a gate
when a test needs to watch a load in progress).
"""

from __future__ import annotations

import threading

import pytest

from scope.streaming.pattern import PatternTrack, read_index
from tests.conftest import wait_for_status
from tests.pipelines import PatternPipeline, prompt_level
from tests.polling import wait_until
from tests.rtc import ScopeRtcClient, connected

pytestmark = pytest.mark.usefixtures("jp_serverapp")

SMALL = {"height": 64, "width": 96, "seed": 3}


@pytest.fixture
def scope_extra_config(synthetic_models):
    return {"models_dir": str(synthetic_models)}


async def load(api, pipeline_id: str, load_params: dict | None = None) -> dict:
    reply = await api("POST", "api/v1/pipeline/load", {"pipeline_id": pipeline_id, "load_params": load_params or {}})
    assert reply.status == 200, reply.body
    return await wait_for_status(api, "loaded", timeout=60)


async def status(api) -> dict:
    return (await api("GET", "api/v1/pipeline/status")).json


def pooled(state: dict, pipeline_id: str, **params) -> dict | None:
    """The ``pipelines`` entry of ``pipeline_id`` whose load parameters include ``params``."""
    for entry in state["pipelines"]:
        if entry["pipeline_id"] == pipeline_id and params.items() <= entry["load_params"].items():
            return entry
    return None


async def sessions(api) -> dict[str, dict]:
    return {s["id"]: s for s in (await api("GET", "api/v1/webrtc/sessions")).json["sessions"]}


def message(kind: str, event: str | None = None):
    return lambda m: m.get("type") == kind and (event is None or m.get("event") == event)


async def test_two_pipelines_stream_side_by_side_and_each_session_keeps_its_own(api):
    await load(api, "longlive", SMALL)
    async with connected(api, {"prompts": "a lighthouse"}, recvonly=True) as causal:
        await causal.wait_frames(5, timeout=60)
        # Another pipeline made current: the streaming session stays on the one it started with.
        # 256 wide: room for the frame counter the pattern stamps across its top rows.
        await load(api, "passthrough", {"height": 48, "width": 256})
        async with connected(api, send_track=PatternTrack(fps=30, width=256, height=48)) as echo:
            echoed = await echo.wait_frames(20)
            mark = len(causal.frames)
            await causal.wait_frames(mark + 12, timeout=60)
            assert {f.array.shape for f in causal.frames[mark:]} == {(64, 96, 3)}
            assert len({f.array.tobytes() for f in causal.frames[mark:]}) > 4, "the causal stream stopped moving"
            # passthrough's pictures are the peer's own pattern, counting up.
            assert {f.array.shape for f in echoed} == {(48, 256, 3)}
            indices = [read_index(f.array) for f in echoed[5:20]]
            assert indices == sorted(indices) and len(set(indices)) > 5, indices
            assert not [m for m in causal.messages if m.get("type") in ("pipeline_event", "stream_stopped")]

            live = await sessions(api)
            assert live[causal.session_id]["pipeline_id"] == "longlive"
            assert SMALL.items() <= live[causal.session_id]["load_params"].items()
            assert live[causal.session_id]["stats"]["pipeline_id"] == "longlive"
            assert live[echo.session_id]["pipeline_id"] == "passthrough"
            assert live[echo.session_id]["load_params"] == {"height": 48, "width": 256}
            assert live[echo.session_id]["stats"]["pipeline_id"] == "passthrough"
            state = await status(api)
            assert (state["status"], state["pipeline_id"]) == ("loaded", "passthrough")
            assert len(state["pipelines"]) == 2
            causal_entry, echo_entry = pooled(state, "longlive", **SMALL), pooled(state, "passthrough")
            assert causal_entry["sessions"] == [causal.session_id] and causal_entry["current"] is False
            assert echo_entry["sessions"] == [echo.session_id] and echo_entry["current"] is True
            assert causal_entry["memory"]["held_bytes"] > 0 and causal_entry["synthetic"] is True

            # Unloading the current pipeline while a session uses it: spec clients see none
            # loaded; the pool keeps it for its session, marked, until that session ends.
            reply = await api("POST", "api/v1/pipeline/unload")
            assert reply.status == 200 and "unloads when its session ends" in reply.json["message"], reply.body
            state = await status(api)
            assert (state["status"], state["pipeline_id"]) == ("not_loaded", None)
            echo_entry = pooled(state, "passthrough")
            assert echo_entry["unload_when_idle"] is True and echo_entry["current"] is False
            count = len(echo.frames)
            await echo.wait_frames(count + 10)
        await wait_until(lambda s: pooled(s, "passthrough") is None, what="passthrough gone with its session",
                         value=lambda: status(api))
        state = await status(api)
        assert [e["pipeline_id"] for e in state["pipelines"]] == ["longlive"]
        count = len(causal.frames)
        await causal.wait_frames(count + 5, timeout=60)


async def test_a_load_over_budget_unloads_the_least_recently_used_idle_pipeline_else_409(api, services):
    in_use, older, newer, current = SMALL, {"height": 48, "width": 64}, {"height": 64, "width": 64}, {"height": 48, "width": 96}
    named = {"pipeline_id": "longlive", "load_params": in_use}
    async with connected(api, {"prompts": "a pier"}, recvonly=True, offer_fields=named) as client:
        await client.wait_frames(3, timeout=60)
        for params in (older, newer, current):
            await load(api, "longlive", params)
        state = await status(api)
        assert len(state["pipelines"]) == 4
        # Room for one more pipeline of ``older``'s size only once one idle pipeline goes:
        # the least recently used idle one (not the one in use, older still, nor the current).
        needed = pooled(state, "longlive", **older)["memory"]["held_bytes"]
        held = sum(e["memory"]["held_bytes"] for e in state["pipelines"])
        services.manager.memory_budget_bytes = held + needed // 2
        state = await load(api, "longlive", {**older, "seed": 7})
        assert state["load_params"]["seed"] == 7
        for params in (in_use, newer, current):
            assert pooled(state, "longlive", **params) is not None, f"{params} was unloaded"
        assert pooled(state, "longlive", **older, seed=42) is None, "the least recently used idle pipeline stays"
        assert pooled(state, "longlive", **in_use)["sessions"] == [client.session_id]

        # Unloads naming a pipeline; then everything loaded is in use (and current).
        for params in (newer, current, {**older, "seed": 7}):
            reply = await api("POST", "api/v1/pipeline/unload", {"pipeline_id": "longlive", "load_params": params})
            assert (reply.status, reply.json["message"]) == (200, "Pipeline unloaded"), reply.body
        state = await load(api, "longlive", in_use)
        services.manager.memory_budget_bytes = sum(e["memory"]["held_bytes"] for e in state["pipelines"])
        before = await status(api)
        reply = await api("POST", "api/v1/pipeline/load", {"pipeline_id": "longlive", "load_params": newer})
        assert reply.status == 409, reply.body
        [error] = reply.json["detail"]
        assert error["loc"] == ["body", "pipeline_id"] and error["type"] == "memory_budget"
        assert error["budget_bytes"] == services.manager.memory_budget_bytes and error["needed_bytes"] > 0
        [holder] = error["holders"]
        assert holder["pipeline_id"] == "longlive" and holder["sessions"] == [client.session_id]
        assert holder["load_params"] == state["load_params"]
        assert await status(api) == before, "a refused load changed the pool"
        count = len(client.frames)
        await client.wait_frames(count + 5, timeout=60)


async def test_an_offer_naming_a_pipeline_loads_it_for_its_session_or_stops_it_with_the_error(
    api, test_pipelines, services
):
    await load(api, "passthrough")
    gate = PatternPipeline.gate = threading.Event()
    try:
        named = {"pipeline_id": "test-pattern", "load_params": {"height": 48, "width": 64}}
        async with connected(api, {"prompts": ["named"]}, recvonly=True, offer_fields=named) as client:
            await client.wait_message(message("pipeline_event", "loading"))
            info = await wait_until(lambda s: s[client.session_id]["stats"]["state"] == "loading",
                                    what="the session loading", value=lambda: sessions(api))
            assert info[client.session_id]["pipeline_id"] == "test-pattern"
            state = await status(api)
            assert (state["status"], state["pipeline_id"]) == ("loaded", "passthrough")
            entry = pooled(state, "test-pattern")
            assert entry["status"] == "loading" and entry["sessions"] == [client.session_id]
            assert entry["current"] is False
            gate.set()
            await client.wait_message(message("pipeline_event", "loaded"))
            frames = await client.wait_frames(6)
            assert frames[-1].array.shape == (48, 64, 3)
            level = prompt_level({"prompts": [{"text": "named"}]})
            assert abs(float(frames[-1].array[16:, 16:].mean()) - level) < 12
            state = await status(api)
            assert (state["status"], state["pipeline_id"]) == ("loaded", "passthrough")

            # A load that fails ends the session waiting for it, with the error.
            gate = PatternPipeline.gate = threading.Event()
            failing = {"pipeline_id": "test-pattern", "load_params": {"fail_load": True}}
            doomed = ScopeRtcClient(api, recvonly=True, offer_fields=failing)
            await doomed.connect({"prompts": ["doomed"]})
            try:
                await wait_until(lambda s: s[doomed.session_id]["stats"]["state"] == "loading",
                                 what="the second session loading", value=lambda: sessions(api))
                gate.set()
                stopped = await doomed.wait_message(message("stream_stopped"))
                assert "weights are corrupt" in stopped["error_message"]
            finally:
                await doomed.close()
            await wait_until(lambda s: doomed.session_id not in s, what="the failed session gone",
                             value=lambda: sessions(api))
            state = await status(api)
            failed = pooled(state, "test-pattern", fail_load=True)
            assert failed["status"] == "error" and "weights are corrupt" in failed["error"], failed
            assert failed["sessions"] == [] and failed["current"] is False
            assert (state["status"], state["pipeline_id"]) == ("loaded", "passthrough")
            count = len(client.frames)
            await client.wait_frames(count + 6)
    finally:
        gate.set()


async def test_offer_and_unload_fields_are_checked_naming_the_field(api, test_pipelines):
    bad = [
        ({"load_params": {"height": 64}}, ["body", "pipeline_id"]),
        ({"pipeline_id": "no-such-pipeline"}, ["body", "pipeline_id"]),
        ({"pipeline_id": "test-pattern", "load_params": {"height": 50}}, ["body", "load_params", "height"]),
    ]
    for fields, loc in bad:
        reply = await ScopeRtcClient(api, recvonly=True, offer_fields=fields).connect({}, expect_status=422)
        assert reply.json["detail"][0]["loc"] == loc, (fields, reply.json)
        reply = await api("POST", "api/v1/pipeline/unload", fields)
        assert reply.status == 422 and reply.json["detail"][0]["loc"] == loc, (fields, reply.json)
    assert (await sessions(api)) == {} and (await status(api))["pipelines"] == []

    await load(api, "test-pattern")
    reply = await api("POST", "api/v1/pipeline/unload", {"pipeline_id": "test-pattern", "load_params": {"width": 64}})
    assert reply.status == 404, reply.body
    assert len((await status(api))["pipelines"]) == 1
    reply = await api("POST", "api/v1/pipeline/unload", {"pipeline_id": "test-pattern"})
    assert (reply.status, reply.json["message"]) == (200, "Pipeline unloaded")
    state = await status(api)
    assert (state["status"], state["pipelines"]) == ("not_loaded", [])

    # A failed load stays listed (holding nothing) until an unload naming it dismisses it.
    failing = {"pipeline_id": "test-pattern", "load_params": {"fail_load": True}}
    assert (await api("POST", "api/v1/pipeline/load", failing)).status == 200
    state = await wait_for_status(api, "error")
    assert [e["status"] for e in state["pipelines"]] == ["error"] and state["pipelines"][0]["current"] is True
    reply = await api("POST", "api/v1/pipeline/unload", failing)
    assert (reply.status, reply.json["message"]) == (200, "Failed load dismissed")
    state = await status(api)
    assert (state["status"], state["error"], state["pipelines"]) == ("not_loaded", None, [])
