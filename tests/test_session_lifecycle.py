"""Session behaviour: reloads, limits, pause, reset, failures, trickle ICE, isolation, churn."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from scope.streaming.pattern import PatternTrack
from tests.conftest import wait_for_status
from tests.pipelines import PatternPipeline, prompt_level
from tests.polling import wait_until
from tests.rtc import ScopeRtcClient, connected, cut_network
from tests.test_streaming import load

pytestmark = pytest.mark.usefixtures("jp_serverapp")


def brightness(frame) -> float:
    return float(frame.array[40:, 40:].mean())


async def session_info(api, session_id: str) -> dict:
    sessions = (await api("GET", "api/v1/webrtc/sessions")).json["sessions"]
    return next(s for s in sessions if s["id"] == session_id)


async def test_a_load_while_streaming_leaves_the_session_on_its_own_pipeline_and_stream(api, test_pipelines, services):
    await load(api, "test-pattern")
    async with connected(api, {"prompts": ["steady"]}) as client:
        await client.wait_frames(5)
        await asyncio.wait_for(client.channel_open.wait(), 30)
        [first_stream] = PatternPipeline.streams
        PatternPipeline.gate = threading.Event()
        try:
            assert (await api("POST", "api/v1/pipeline/load", {"pipeline_id": "test-pattern", "load_params": {"seed": 1}})).status == 200
            assert (await api("GET", "api/v1/pipeline/status")).json["status"] == "loading"
            # While the other pipeline loads, the session goes on with its own stream.
            chunks = first_stream.chunk
            await wait_until(lambda: first_stream.chunk >= chunks + 3, what="chunks while another pipeline loads")
            assert services.sessions.sessions[client.session_id].state == "streaming"
            # An offer for the current pipeline while it loads is a conflict.
            reply = await ScopeRtcClient(api).connect({"prompts": ["x"]}, expect_status=409)
            assert "loading" in reply.json["detail"]
        finally:
            PatternPipeline.gate.set()
        await wait_for_status(api, "loaded")
        # A new session streams the new pipeline; the first keeps its stream on the old one.
        async with connected(api, {"prompts": ["fresh"]}) as second:
            await second.wait_frames(3)
            first, fresh = PatternPipeline.streams
            assert first is first_stream and fresh.pipeline.load_params.seed == 1
            assert first_stream.pipeline.load_params.seed == 42
            chunks = first_stream.chunk
            await wait_until(lambda: first_stream.chunk >= chunks + 3, what="chunks of the first session's stream")
        assert not [m for m in client.messages if m.get("type") in ("pipeline_event", "stream_stopped")]
        assert client.session_id in services.sessions.sessions


async def test_a_failed_load_of_another_pipeline_leaves_streaming_sessions_alone(api, test_pipelines):
    await load(api, "test-pattern")
    async with connected(api, {"prompts": ["a"]}) as client:
        await asyncio.wait_for(client.channel_open.wait(), 30)
        await api("POST", "api/v1/pipeline/load", {"pipeline_id": "test-pattern", "load_params": {"fail_load": True}})
        state = await wait_for_status(api, "error")
        assert "weights are corrupt" in state["error"]
        # Stats keep coming after the failure (the data channel is ordered), frames too, and
        # nothing about a load that was not this session's.
        since, count = len(client.messages), len(client.frames)
        await client.peer.wait_message(lambda m: m.get("type") == "stats", 30, since=since)
        await client.wait_frames(count + 6)
        assert not [m for m in client.messages if m.get("type") in ("pipeline_event", "stream_stopped")]
        assert client.pc.connectionState == "connected"
        # The spec's offer, without a pipeline of its own, finds none loaded.
        assert (await ScopeRtcClient(api).connect({"prompts": ["b"]}, expect_status=400)).status == 400


@pytest.fixture
def scope_extra_config():
    return {"max_sessions": 2, "disconnect_timeout": 1.0, "connect_timeout": 3.0}


async def test_session_limit_gives_503(api, test_pipelines, services):
    await load(api, "test-pattern")
    clients = [ScopeRtcClient(api) for _ in range(2)]
    try:
        for client in clients:
            await client.connect({"prompts": ["p"]})
        # Only connected peers count against max_sessions (pending offers have their own cap).
        await wait_until(lambda: all(c.pc.connectionState == "connected" for c in clients))
        await wait_until(lambda: services.sessions.streaming_count() == 2)
        reply = await ScopeRtcClient(api).connect({"prompts": ["p"]}, expect_status=503)
        assert "at most 2" in reply.json["detail"]
    finally:
        for client in clients:
            await client.close()
    await wait_until(lambda: not services.sessions.sessions)
    ok = ScopeRtcClient(api)
    await ok.connect({"prompts": ["p"]})
    await ok.close()


async def test_sessions_are_isolated(api, test_pipelines):
    await load(api, "test-pattern")
    one, two = ScopeRtcClient(api), ScopeRtcClient(api)
    await one.connect({"prompts": ["first prompt"]})
    await two.connect({"prompts": ["second prompt"]})
    try:
        await one.wait_frames(6)
        await two.wait_frames(6)
        assert abs(brightness(one.frames[-1]) - prompt_level({"prompts": [{"text": "first prompt"}]})) < 12
        assert abs(brightness(two.frames[-1]) - prompt_level({"prompts": [{"text": "second prompt"}]})) < 12
        assert len({id(s) for s in PatternPipeline.streams}) == 2
        # The event loop stays free while two sessions generate.
        assert (await api("GET", "health")).status == 200
        info_one = await session_info(api, one.session_id)
        info_two = await session_info(api, two.session_id)
        assert info_one["parameters"]["prompts"] != info_two["parameters"]["prompts"]
    finally:
        await one.close()
        await two.close()


async def test_pause_repeats_last_frame_and_stops_pipeline_calls(api, test_pipelines, services):
    await load(api, "test-pattern")
    async with connected(api, {"prompts": ["p"]}) as client:
        await client.wait_frames(5)
        await asyncio.wait_for(client.channel_open.wait(), 30)
        client.send({"paused": True})
        await client.wait_message(lambda m: m.get("type") == "stats" and m["state"] == "paused")
        stream = PatternPipeline.streams[-1]
        chunks = stream.chunk
        count = len(client.frames)
        # Twenty frames take several chunks when streaming; while paused they are all repeats.
        await wait_until(lambda: len(client.frames) >= count + 20, what="the last frame repeated while paused")
        assert stream.chunk == chunks, "no pipeline calls while paused"
        corner = [int(f.array[2, 2, 0]) for f in client.frames[count:]]
        assert max(corner) - min(corner) < 12, "repeated frames are the same picture"
        info = await session_info(api, client.session_id)
        assert "paused" not in info["parameters"] and info["stats"]["state"] == "paused"
        client.send({"paused": False})
        await wait_until(lambda: stream.chunk > chunks)


async def test_reset_cache_is_one_shot_and_updates_merge(api, test_pipelines, services):
    await load(api, "test-pattern")
    PatternPipeline.gate = None
    async with connected(api, {"prompts": ["p"], "transition": {"target_prompts": ["q"]}}) as client:
        await asyncio.wait_for(client.channel_open.wait(), 30)
        stream = await wait_until(lambda: PatternPipeline.streams and PatternPipeline.streams[-1])
        await wait_until(lambda: stream.chunk >= 1)
        first = stream.seen[0]["params"]
        assert first["transition"]["num_steps"] == 4, "transition.num_steps defaults to 4 in initialParameters"
        session = services.sessions.sessions[client.session_id]
        # Pause so several messages queue up, then check they were merged, none dropped.
        client.send({"paused": True})
        await wait_until(lambda: session.paused)
        client.send({"noise_scale": 0.3})
        client.send({"manage_cache": False})
        client.send({"reset_cache": True, "transition": {"target_prompts": ["r"]}})
        await wait_until(lambda: "reset_cache" in session.parameters.pending)
        before = stream.chunk
        client.send({"paused": False})
        await wait_until(lambda: stream.chunk >= before + 2)
        applied = stream.seen[before]
        assert applied["params"]["noise_scale"] == 0.3 and applied["params"]["manage_cache"] is False
        assert applied["init_cache"] is True and "reset_cache" not in applied["params"]
        assert applied["params"]["transition"]["num_steps"] == 4, "num_steps defaults to 4 on the channel too"
        assert stream.seen[before + 1]["init_cache"] is False, "reset_cache acts once"


async def test_chunk_failures_are_events_and_fatal_errors_stop_the_stream(api, test_pipelines):
    await load(api, "test-pattern", {"fail_chunks": [2, 3], "fatal_chunk": 6})
    async with connected(api, {"prompts": ["p"]}) as client:
        failed = await client.wait_message(lambda m: m.get("type") == "pipeline_event" and m["event"] == "chunk_failed")
        assert "failed on purpose" in failed["message"]
        stopped = await client.wait_message(lambda m: m.get("type") == "stream_stopped", timeout=20)
        assert "out of memory" in stopped["error_message"]
        assert len(client.frames) > 0, "frames between the failures were delivered"


async def test_video_mode_applies_mode_defaults_and_reads_input(api, test_pipelines):
    await load(api, "test-pattern")
    initial = {"input_mode": "video", "prompts": ["v"], "noise_scale": 0.2}
    async with connected(api, initial, send_track=PatternTrack(fps=30, width=128, height=96)):
        stream = await wait_until(lambda: PatternPipeline.streams and PatternPipeline.streams[-1])
        await wait_until(lambda: stream.chunk >= 2)
        seen = stream.seen[0]
        assert seen["video"] == (2, 96, 128, 3)
        assert seen["params"]["noise_scale"] == 0.2, "the client's value wins"
        assert seen["params"]["noise_controller"] is True, "left out: the pipeline's video default"
        assert "height" not in seen["params"]


async def test_trickle_candidates(api, test_pipelines):
    await load(api, "test-pattern")
    async with connected(api, {"prompts": ["p"]}) as client:
        sid = client.session_id
        line = "candidate:842163049 1 udp 1677729535 127.0.0.1 49152 typ host generation 0"
        ok = await api("PATCH", f"api/v1/webrtc/offer/{sid}", {"candidates": [{"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0}]})
        assert ok.status == 204 and ok.body == b""
        no_prefix = line.removeprefix("candidate:")
        assert (await api("PATCH", f"api/v1/webrtc/offer/{sid}", {"candidates": [{"candidate": no_prefix, "sdpMLineIndex": 0}]})).status == 204
        end = await api("PATCH", f"api/v1/webrtc/offer/{sid}", {"candidates": [{"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}]})
        assert end.status == 204
        assert (await api("PATCH", f"api/v1/webrtc/offer/{sid}", {"candidates": []})).status == 204
        bad = await api("PATCH", f"api/v1/webrtc/offer/{sid}", {"candidates": [{"candidate": "candidate:garbage", "sdpMid": "0"}]})
        assert bad.status == 400 and "Invalid ICE candidate" in bad.json["detail"]
        nulls = await api("PATCH", f"api/v1/webrtc/offer/{sid}", {"candidates": [{"candidate": line}]})
        assert nulls.status == 400
        assert (await api("PATCH", "api/v1/webrtc/offer/unknown-id", {"candidates": []})).status == 404
        shape = await api("PATCH", f"api/v1/webrtc/offer/{sid}", {"candidates": "nope"})
        assert shape.status == 422 and shape.json["detail"][0]["loc"] == ["body", "candidates"]
        await client.wait_frames(3)


async def test_a_peer_whose_network_goes_is_closed_after_disconnect_timeout(api, test_pipelines, services, caplog):
    """A real peer streams both ways, then its sockets close without a word (no DTLS close, no
    SCTP abort): only ``disconnect_timeout`` (1 s here) of silence can end the session."""
    await load(api, "test-pattern")
    client = ScopeRtcClient(api, send_track=PatternTrack(fps=30, width=64, height=48))
    await client.connect({"prompts": ["p"]})
    try:
        await client.wait_frames(3)
        session = services.sessions.sessions[client.session_id]
        assert (await session_info(api, client.session_id))["connection_state"] == "connected"
        with caplog.at_level(logging.INFO, logger="scope.streaming.session"):
            await cut_network(client.pc)

            async def listed() -> list[str]:
                return [s["id"] for s in (await api("GET", "api/v1/webrtc/sessions")).json["sessions"]]

            await wait_until(lambda ids: client.session_id not in ids, 30, "the silent session to close", value=listed)
        assert session.closed
        assert f"session {client.session_id}: nothing from the peer for" in caplog.text
    finally:
        await client.close()
