"""Every way a session can fail reaches its client, against the real (in-process) server.

Opening the stream, reading the input and pushing frames fail outside ``run_chunk``: each must
end the session with ``stream_stopped`` naming the error, and log it. A failed chunk keeps the
one-shot requests it carried. Parameters a pipeline does not use, and messages of a type the
server does not take, are answered instead of being ignored silently; errors suppressed while
closing are logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiortc import MediaStreamTrack

import scope
from scope.params import UnusedParametersWarning
from scope.pipelines.base import Chunk, Stream
from scope.streaming.pattern import PatternTrack
from scope.streaming.session import StreamSession
from scope.streaming.session_stats import SessionStats
from tests.conftest import wait_for_status
from tests.pipelines import PatternPipeline, PatternStream, registered
from tests.polling import wait_until
from tests.rtc import connected

pytestmark = pytest.mark.usefixtures("jp_serverapp")

SERVER_DOC = Path(__file__).resolve().parent.parent / "docs" / "server.md"
SESSION_LOGGER = "scope.streaming.session"


@pytest.fixture
def scope_extra_config(synthetic_models):
    """Synthetic ``longlive`` weights, for the test of its unused parameters."""
    return {"models_dir": str(synthetic_models)}


# Test pipelines -----------------------------------------------------------------------------


class BrokenStream(PatternStream):
    """A pattern stream that breaks in the way its pipeline's ``failure`` says."""

    def __init__(self, pipeline: "BrokenPipeline"):
        super().__init__(pipeline)
        self.failed_once = False

    def run_chunk(self, params, video=None, *, init_cache=False) -> Chunk:
        failure = type(self.pipeline).failure
        if failure == "frames":
            self.chunk += 1
            return Chunk(frames=np.zeros((2, 16, 16, 3), dtype=np.float32))
        if failure == "reset_once" and init_cache and self.chunk >= 2 and not self.failed_once:
            self.failed_once = True
            self.seen.append({"params": params, "init_cache": init_cache, "failed": True})
            raise ValueError("resetting failed on purpose")
        return super().run_chunk(params, video, init_cache=init_cache)

    def close(self) -> None:
        if type(self.pipeline).failure == "close":
            raise RuntimeError("releasing the stream buffers failed on purpose")


class BrokenPipeline(PatternPipeline):
    info = dataclasses.replace(PatternPipeline.info, id="test-broken", name="Test broken")
    #: "open", "frames", "reset_once" or "close".
    failure = "open"
    streams: list[BrokenStream] = []

    @classmethod
    def load(cls, load_params, context) -> "BrokenPipeline":
        return cls(load_params)

    def open_stream(self) -> Stream:
        if type(self).failure == "open":
            raise RuntimeError("cannot allocate the KV cache (on purpose)")
        stream = BrokenStream(self)
        type(self).streams.append(stream)
        return stream


@pytest.fixture
def broken(test_pipelines):
    with registered(BrokenPipeline) as pipeline:
        yield pipeline


class BreakingTrack(MediaStreamTrack):
    """The server's view of the client's track: relays ``good`` frames, then fails."""

    kind = "video"

    def __init__(self, track: MediaStreamTrack, good: int):
        super().__init__()
        self.track = track
        self.good = good

    async def recv(self):
        if self.good <= 0:
            raise RuntimeError("the input decoder broke (on purpose)")
        self.good -= 1
        return await self.track.recv()


async def load(api, pipeline_id: str, load_params: dict[str, Any] | None = None) -> None:
    body: dict[str, Any] = {"pipeline_id": pipeline_id}
    if load_params is not None:
        body["load_params"] = load_params
    reply = await api("POST", "api/v1/pipeline/load", body)
    assert reply.status == 200, reply.body
    await wait_for_status(api, "loaded", timeout=60)


async def stopped(client) -> dict:
    return await client.wait_message(lambda m: m.get("type") == "stream_stopped", timeout=30)


def logged(caplog, text: str) -> list[logging.LogRecord]:
    """Records of the session logger whose message or exception mentions ``text``."""
    return [
        r for r in caplog.records
        if r.name == SESSION_LOGGER and (text in r.getMessage() or (r.exc_info and text in str(r.exc_info[1])))
    ]


# Failures outside run_chunk -----------------------------------------------------------------


async def test_a_stream_that_cannot_be_opened_stops_the_session_with_the_error(api, broken, services, caplog):
    broken.failure = "open"
    await load(api, "test-broken")
    with caplog.at_level(logging.ERROR, logger=SESSION_LOGGER):
        async with connected(api, {"prompts": ["p"]}, recvonly=True) as client:
            message = await stopped(client)
            assert message["error_message"] == "generation failed: RuntimeError: cannot allocate the KV cache (on purpose)"
        await wait_until(lambda: not services.sessions.sessions, what="the session to be gone")
    [record] = logged(caplog, "cannot allocate the KV cache")
    assert record.levelno == logging.ERROR and record.exc_info, "logged with its traceback"


async def test_an_input_track_that_fails_stops_the_session_with_the_error(api, test_pipelines, services, caplog, monkeypatch):
    attach = StreamSession.attach_input
    monkeypatch.setattr(StreamSession, "attach_input", lambda self, track: attach(self, BreakingTrack(track, good=6)))
    await load(api, "test-pattern")
    initial = {"input_mode": "video", "prompts": ["v"]}
    with caplog.at_level(logging.ERROR, logger=SESSION_LOGGER):
        async with connected(api, initial, send_track=PatternTrack(fps=30, width=64, height=48)) as client:
            message = await stopped(client)
            assert message["error_message"] == "reading the input video failed: RuntimeError: the input decoder broke (on purpose)"
            assert PatternPipeline.streams and PatternPipeline.streams[-1].chunk >= 1, "the good frames were used"
        await wait_until(lambda: not services.sessions.sessions, what="the session to be gone")
    assert logged(caplog, "the input decoder broke")


async def test_frames_the_output_track_refuses_stop_the_session(api, broken, services):
    broken.failure = "frames"
    await load(api, "test-broken")
    async with connected(api, {"prompts": ["p"]}, recvonly=True) as client:
        message = await stopped(client)
        assert message["error_message"].startswith("generation failed: ValueError: a chunk's frames must be uint8")
        assert "float32 (2, 16, 16, 3)" in message["error_message"]
    await wait_until(lambda: not services.sessions.sessions, what="the session to be gone")


@pytest.mark.timeout(90)
async def test_a_session_whose_output_track_ended_closes_and_the_server_stays_responsive(api, test_pipelines, services):
    # aiortc's sender stops the output track when its transport goes; until the session notices,
    # its queue never drains, and a generation loop that never waits would hold the event loop.
    await load(api, "test-pattern")
    async with connected(api, {"prompts": ["p"]}, recvonly=True) as client:
        await client.wait_frames(3)
        services.sessions.sessions[client.session_id].track.stop()
        await wait_until(lambda: not services.sessions.sessions, what="the session to close")
        assert (await api("GET", "health")).status == 200


# One-shot requests survive a failed chunk --------------------------------------------------------


async def test_a_failed_chunk_keeps_its_one_shot_requests_for_the_next(api, broken, scope_dirs):
    broken.failure = "reset_once"
    (scope_dirs["lora"] / "style.safetensors").write_bytes(b"lora")  # a LoRA path must name a file
    await load(api, "test-broken")
    async with connected(api, {"prompts": ["p"]}, recvonly=True) as client:
        await asyncio.wait_for(client.channel_open.wait(), 10)
        stream = await wait_until(lambda: broken.streams and broken.streams[-1].chunk >= 2 and broken.streams[-1])
        scale = [{"path": "style.safetensors", "scale": 0.5}]
        client.send({"reset_cache": True, "lora_scales": scale})
        await wait_until(lambda: stream.failed_once, what="the chunk carrying reset_cache to fail")
        await client.wait_message(lambda m: m.get("event") == "chunk_failed")
        failed_at = next(i for i, seen in enumerate(stream.seen) if seen.get("failed"))
        await wait_until(lambda: len(stream.seen) >= failed_at + 3, what="two chunks after the failure")
        retried, after = stream.seen[failed_at + 1], stream.seen[failed_at + 2]
        assert retried["init_cache"] is True, "the reset asked for is not lost with the failed chunk"
        assert retried["params"].get("lora_scales") == scale
        assert after["init_cache"] is False and "lora_scales" not in after["params"], "still one-shot"
        assert not any(m.get("type") == "stream_stopped" for m in client.messages)


def test_in_kernel_generate_keeps_one_shot_parameters_of_a_failed_chunk(test_pipelines, tmp_path):
    stream = scope.load_pipeline("test-pattern", models_dir=tmp_path, fail_chunks=[2]).open_stream()
    stream.generate(prompts="a fox")
    scale = [{"path": str(tmp_path / "style.safetensors"), "scale": 0.5}]
    with pytest.raises(ValueError, match="chunk 2 failed"):
        stream.generate(lora_scales=scale)
    stream.generate()
    assert stream.seen[-1]["params"]["lora_scales"] == scale
    stream.generate()
    assert "lora_scales" not in stream.seen[-1]["params"]


# Parameters a pipeline does not use --------------------------------------------------------------

LONGLIVE_UNUSED = {"kv_cache_attention_bias"}


async def test_longlive_warns_about_the_parameters_it_does_not_use(api):
    schema = (await api("GET", "api/v1/pipelines/schemas")).json["pipelines"]["longlive"]["parameters_schema"]
    flagged = {name for name, prop in schema["properties"].items() if prop.get("x-scope-unused")}
    assert flagged == LONGLIVE_UNUSED
    assert schema["properties"]["reset_cache"]["x-scope-one-shot"] is True
    await load(api, "longlive", {"height": 64, "width": 96, "seed": 3})
    initial = {"prompts": ["a fox"], "kv_cache_attention_bias": 0.3, "future_knob": 1}
    async with connected(api, initial, recvonly=True) as client:
        unknown = await client.wait_message(lambda m: m.get("type") == "parameters_warning" and "unknown_keys" in m)
        assert unknown == {"type": "parameters_warning", "unknown_keys": ["future_knob"]}, "the existing form is kept"
        unused = await client.wait_message(lambda m: m.get("type") == "parameters_warning" and "unused_keys" in m)
        assert unused["unused_keys"] == ["kv_cache_attention_bias"]
        assert "longlive" in unused["message"] and "kv_cache_attention_bias" in unused["message"]
        await asyncio.wait_for(client.channel_open.wait(), 10)
        since = len(client.messages)
        client.send({"prompts": ["a cat"], "kv_cache_attention_bias": 0.5, "vace_context_scale": 1.5})
        warning = await client.peer.wait_message(lambda m: m.get("type") == "parameters_warning", 30, since=since)
        assert warning["unused_keys"] == ["kv_cache_attention_bias"], "VACE's scale is taken (VACE may be loaded)"
        await client.wait_frames(1, timeout=60)
    # Parameters it uses draw no warning.
    async with connected(api, {"prompts": ["a fox"], "manage_cache": True, "denoising_step_list": [1000, 500]}, recvonly=True) as client:
        await client.wait_frames(1, timeout=60)
        assert not [m for m in client.messages if m.get("type") == "parameters_warning"]


async def test_passthrough_warns_about_generation_parameters(api):
    await load(api, "passthrough")
    initial = {"prompts": ["ignored"], "noise_scale": 0.4, "reset_cache": True}
    async with connected(api, initial, send_track=PatternTrack(fps=30, width=64, height=48)) as client:
        warning = await client.wait_message(lambda m: m.get("type") == "parameters_warning")
        assert warning["unused_keys"] == ["noise_scale", "prompts"], "reset_cache is the session's own"
        await client.wait_frames(3)


def test_in_kernel_generate_warns_about_unused_parameters(tmp_path):
    stream = scope.load_pipeline("passthrough", models_dir=tmp_path).open_stream()
    frames = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    with pytest.warns(UnusedParametersWarning, match="does not use noise_scale, prompts"):
        chunk = stream.generate(frames, prompts="x", noise_scale=0.5)
    assert chunk.frames.shape == (4, 16, 16, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stream.generate(frames, input_mode="video")


# Unknown message types, stats, teardown ----------------------------------------------------------


async def test_a_message_of_unknown_type_is_answered_and_not_applied(api, test_pipelines, services):
    await load(api, "test-pattern")
    async with connected(api, {"prompts": ["one"]}, recvonly=True) as client:
        await asyncio.wait_for(client.channel_open.wait(), 10)
        client.send({"type": "subscribe", "prompts": ["two"]})
        rejected = await client.wait_message(lambda m: m.get("type") == "parameters_rejected")
        assert rejected["errors"][0]["loc"] == ["type"]
        assert "'subscribe'" in rejected["errors"][0]["msg"] and "'parameters'" in rejected["errors"][0]["msg"]
        assert rejected["accepted_types"] == ["parameters"]
        client.send({"type": "parameters", "prompts": ["three"]})
        session = services.sessions.sessions[client.session_id]
        await wait_until(lambda: session.parameters.snapshot()["prompts"][0]["text"] == "three")
        stats = await client.wait_message(lambda m: m.get("type") == "stats")
        assert set(stats) == {"type", *SessionStats.model_fields}
        SessionStats.model_validate(stats)


def test_the_documented_stats_fields_are_the_models():
    row = next(line for line in SERVER_DOC.read_text().splitlines() if line.startswith('| `{"type": "stats"'))
    documented = re.findall(r'"(\w+)"', row.split("|")[1])
    assert documented == ["type", "stats", *SessionStats.model_fields]


async def test_errors_while_closing_are_logged(api, broken, services, caplog, monkeypatch):
    broken.failure = "close"
    await load(api, "test-broken")
    with caplog.at_level(logging.WARNING, logger=SESSION_LOGGER):
        async with connected(api, {"prompts": ["p"]}, recvonly=True) as client:
            await client.wait_frames(2)
            session = services.sessions.sessions[client.session_id]
            pc_close = session.pc.close

            async def failing_close():
                await pc_close()
                raise RuntimeError("the peer connection did not close cleanly (on purpose)")

            monkeypatch.setattr(session.pc, "close", failing_close)
            assert (await api("DELETE", f"api/v1/webrtc/sessions/{client.session_id}")).status == 204
            await stopped(client)
        await wait_until(lambda: not services.sessions.sessions, what="the session to be gone")
    [stream_record] = logged(caplog, "releasing the stream buffers failed")
    assert stream_record.levelno == logging.WARNING and "closing its stream failed" in stream_record.getMessage()
    [pc_record] = logged(caplog, "did not close cleanly")
    assert "closing its peer connection failed" in pc_record.getMessage()
