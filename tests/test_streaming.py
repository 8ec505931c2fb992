"""Real WebRTC sessions against the server on loopback, with an aiortc client."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from scope.streaming.pattern import PatternTrack, pattern_frame, read_index
from scope.streaming.session_stats import SessionStats
from tests.conftest import wait_for_status
from tests.pipelines import prompt_level
from tests.polling import wait_until
from tests.rtc import ScopeRtcClient, connected

pytestmark = pytest.mark.usefixtures("jp_serverapp")


async def load(api, pipeline_id: str, load_params: dict | None = None) -> None:
    body = {"pipeline_id": pipeline_id}
    if load_params is not None:
        body["load_params"] = load_params
    assert (await api("POST", "api/v1/pipeline/load", body)).status == 200
    await wait_for_status(api, "loaded")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


async def test_passthrough_returns_the_same_pictures(api):
    await load(api, "passthrough")
    source = PatternTrack(fps=30, width=320, height=240)
    async with connected(api, send_track=source) as client:
        assert "a=msid" in client.answer_sdp
        frames = await client.wait_frames(45)
        checked = 0
        indices = []
        for received in frames[15:]:
            assert received.array.shape == (240, 320, 3)
            index = read_index(received.array)
            indices.append(index)
            expected = pattern_frame(index, 320, 240)
            # Lossy video coding: the picture must match its source closely, not bit for bit.
            assert psnr(received.array[16:], expected[16:]) > 24, f"frame {index} differs"
            checked += 1
        assert checked >= 30
        assert indices == sorted(indices), "frames came back out of order"
        assert len(set(indices)) > 20, "the moving pattern did not move"


async def test_text_mode_with_recvonly_offer_streams_and_follows_prompts(api, test_pipelines):
    await load(api, "test-pattern")
    async with connected(api, {"prompts": [{"text": "a red fox", "weight": 1.0}]}, recvonly=True) as client:
        frames = await client.wait_frames(10)
        level = prompt_level({"prompts": [{"text": "a red fox"}]})
        assert abs(float(frames[-1].array[40:, 40:].mean()) - level) < 12
        await asyncio.wait_for(client.channel_open.wait(), 10)
        client.send({"prompts": "a blue whale"})
        target = prompt_level({"prompts": [{"text": "a blue whale"}]})
        start = len(client.frames)

        def latest_level() -> float | None:
            return float(client.frames[-1].array[40:, 40:].mean()) if len(client.frames) > start else None

        await wait_until(lambda level: level is not None and abs(level - target) < 12,
                         what=f"the new prompt's level {target} in the output", value=latest_level)
        stats = await client.wait_message(lambda m: m.get("type") == "stats")
        assert set(stats) >= {"fps", "chunk", "chunk_ms", "pipeline_id", "synthetic", "state"}
        assert stats["pipeline_id"] == "test-pattern" and stats["synthetic"] is False


async def test_session_listing_and_delete_sends_stream_stopped(api, test_pipelines):
    await load(api, "test-pattern")
    async with connected(api, {"prompts": ["hello"]}) as client:
        await client.wait_frames(3)
        await asyncio.wait_for(client.channel_open.wait(), 10)
        sessions = (await api("GET", "api/v1/webrtc/sessions")).json["sessions"]
        assert [s["id"] for s in sessions] == [client.session_id]
        entry = sessions[0]
        assert entry["input_mode"] == "text" and entry["pipeline_id"] == "test-pattern"
        assert entry["parameters"]["prompts"] == [{"text": "hello", "weight": 1.0}]
        assert entry["parameters"]["denoising_step_list"] == [1000, 750, 500, 250]
        assert set(entry["stats"]) == set(SessionStats.model_fields)
        assert (await api("DELETE", f"api/v1/webrtc/sessions/{client.session_id}")).status == 204
        stopped = await client.wait_message(lambda m: m.get("type") == "stream_stopped")
        assert "error_message" not in stopped
        assert (await api("GET", "api/v1/webrtc/sessions")).json["sessions"] == []
        assert (await api("DELETE", f"api/v1/webrtc/sessions/{client.session_id}")).status == 404


async def test_offer_errors(api, test_pipelines):
    client = ScopeRtcClient(api)
    reply = await client.connect(expect_status=400)
    assert "not loaded" in reply.json["detail"]
    await load(api, "passthrough")
    reply = await ScopeRtcClient(api).connect({"input_mode": "text"}, expect_status=400)
    assert "input_mode" in reply.json["detail"]
    reply = await ScopeRtcClient(api).connect({"noise_scale": 5}, expect_status=422)
    assert reply.json["detail"][0]["loc"] == ["body", "initialParameters", "noise_scale"]
    bad = await api("POST", "api/v1/webrtc/offer", {"sdp": "v=0 garbage", "type": "offer"})
    assert bad.status == 400
    missing = await api("POST", "api/v1/webrtc/offer", {"type": "offer"})
    assert missing.status == 422 and missing.json["detail"][0]["loc"] == ["body", "sdp"]


async def test_parameters_rejected_and_warning_and_stream_goes_on(api, test_pipelines):
    await load(api, "test-pattern")
    async with connected(api, {"prompts": ["one"]}) as client:
        await asyncio.wait_for(client.channel_open.wait(), 10)
        client.send({"noise_scale": 3, "prompts": ["two"]})
        rejected = await client.wait_message(lambda m: m.get("type") == "parameters_rejected")
        assert rejected["errors"][0]["loc"] == ["noise_scale"]
        client.send({"prompts": ["three"], "bogus": 1})
        warning = await client.wait_message(lambda m: m.get("type") == "parameters_warning")
        assert warning["unknown_keys"] == ["bogus"]
        n = len(client.frames)
        await client.wait_frames(n + 5)

        async def sessions_listed() -> list[dict]:
            return (await api("GET", "api/v1/webrtc/sessions")).json["sessions"]

        # The refused message must not apply: the next one does.
        sessions = await wait_until(lambda listed: listed[0]["parameters"]["prompts"][0]["text"] == "three",
                                    what="the prompt 'three' in the session's parameters", value=sessions_listed)
        assert "bogus" not in sessions[0]["parameters"]


async def test_switching_to_an_unsupported_mode_is_refused(api):
    await load(api, "passthrough")
    from scope.streaming.pattern import PatternTrack

    async with connected(api, send_track=PatternTrack(fps=30, width=64, height=48)) as client:
        await asyncio.wait_for(client.channel_open.wait(), 10)
        client.send({"input_mode": "text"})
        rejected = await client.wait_message(lambda m: m.get("type") == "parameters_rejected")
        assert rejected["errors"][0]["loc"] == ["input_mode"]
        count = len(client.frames)
        await client.wait_frames(count + 5)


async def test_unknown_initial_parameters_are_ignored_with_a_warning(api, test_pipelines):
    await load(api, "test-pattern")
    async with connected(api, {"prompts": ["p"], "future_knob": 3}) as client:
        warning = await client.wait_message(lambda m: m.get("type") == "parameters_warning")
        assert warning["unknown_keys"] == ["future_knob"]
        await client.wait_frames(3)


async def test_generation_keeps_pace_with_playback_instead_of_dropping(api, test_pipelines, services):
    await load(api, "test-pattern")
    async with connected(api, {"prompts": ["p"]}) as client:
        await client.wait_frames(60)
        session = services.sessions.sessions[client.session_id]
        assert session.track.frames_dropped == 0
        assert session.track.queued <= 6


async def test_stats_say_streaming_while_video_flows(api):
    await load(api, "passthrough")
    from scope.streaming.pattern import PatternTrack

    async with connected(api, send_track=PatternTrack(fps=30, width=64, height=48)) as client:
        await client.wait_frames(30)
        states = []
        for _ in range(4):
            message = await client.wait_message(lambda m: m.get("type") == "stats" and m not in states)
            states.append(message)
        assert [m["state"] for m in states].count("streaming") >= 3, states


@pytest.mark.asyncio
async def test_a_paused_track_freezes_the_frame_on_screen_and_keeps_the_rest():
    """Pause freezes what the viewer sees at once; frames already generated wait for the resume."""
    from scope.streaming.tracks import OutputTrack

    track = OutputTrack(lambda: 60.0)
    track.push(np.stack([np.full((16, 16, 3), 40 * i, np.uint8) for i in range(5)]))

    def level(frame) -> int:
        return int(frame.to_ndarray(format="rgb24").mean())

    assert abs(level(await track.recv()) - 0) < 8
    track.hold = track.frozen = True
    frozen = [level(await track.recv()) for _ in range(3)]
    assert all(abs(value - 0) < 8 for value in frozen), frozen
    assert track.queued == 4, "nothing generated is lost while paused"
    track.hold = track.frozen = False
    assert abs(level(await track.recv()) - 40) < 8
    track.stop()
