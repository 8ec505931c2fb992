"""Each chunk takes the freshest input; what is passed over or flushed is counted, never queued.

Real sessions on loopback with an aiortc peer that stamps a frame counter into big blocks
(:mod:`scope.streaming.pattern`), against ``test-echo``: a slow pipeline that returns its input.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from scope.streaming.pattern import PatternTrack, read_index
from scope.streaming.tracks import INPUT_BUFFER_FRAMES
from tests.conftest import wait_for_status
from tests.pipelines import EchoPipeline, PatternPipeline, echo_chunk, registered
from tests.polling import wait_until
from tests.rtc import connected
from tests.test_streaming import load

pytestmark = pytest.mark.usefixtures("jp_serverapp")

#: How far behind the newest frame sent a fresh chunk's newest frame may be: the trip through
#: the encoder, loopback and decoder (a few frames at 30 fps), with room for a loaded machine.
#: A chunk ending mid-ring instead of at its end would be 15 frames behind.
TRANSIT_SLACK_FRAMES = 10


@pytest.fixture
def echo():
    with registered(EchoPipeline) as cls:
        cls.gate = None
        try:
            yield cls
        finally:
            gate, cls.gate = cls.gate, None
            if gate is not None:
                gate.release(100)  # a chunk still waiting must not hold the device thread


async def test_stats_count_dropped_input_and_the_latency_of_a_slow_pipeline(api, echo):
    chunk_seconds = 0.2
    await load(api, "test-echo", {"frames": 2, "chunk_seconds": chunk_seconds})
    async with connected(api, send_track=PatternTrack(fps=30, width=64, height=48)) as client:

        def slow_enough(m: dict) -> bool:
            return m.get("type") == "stats" and m["input_frames_dropped"] > 0 and m["latency_ms"] is not None

        stats = await client.wait_message(slow_enough)
        assert stats["input_frames_used"] > 0
        buffered = stats["input_frames_received"] - stats["input_frames_used"] - stats["input_frames_dropped"]
        assert 0 <= buffered <= INPUT_BUFFER_FRAMES, stats
        # Every output frame waited at least one whole chunk after its input arrived.
        assert stats["latency_ms"] >= chunk_seconds * 1000, stats
        assert stats["latency_p95_ms"] >= stats["latency_ms"], stats


async def test_after_a_stall_the_next_chunk_ends_at_the_newest_frame(api, echo, services):
    echo.gate = threading.Semaphore(0)
    await load(api, "test-echo", {"frames": 2})
    source = PatternTrack(fps=30, width=256, height=64)
    async with connected(api, send_track=source) as client:
        session = await wait_until(lambda: services.sessions.sessions.get(client.session_id), what="the session")

        def chunks_received() -> dict[int, list[int]]:
            """The input frame numbers each chunk's frames showed, by chunk number."""
            shown: dict[int, list[int]] = {}
            for received in list(client.frames):
                shown.setdefault(echo_chunk(received.array), []).append(read_index(received.array))
            return shown

        for _ in range(2):
            # A chunk waits at the gate, its input taken, while the ring fills up.
            stream = await wait_until(lambda: echo.streams and echo.streams[-1], what="the session's stream")
            await wait_until(lambda: stream.at_gate and len(session.input) == INPUT_BUFFER_FRAMES,
                             what="a chunk at the gate and a full input ring")
            stalled = stream.chunks
            newest_sent = source.index - 1
            # The stalled chunk, the one after it (taken from the full ring), and one more whose
            # frames push the last of those out of the receiver's jitter buffer.
            echo.gate.release(3)
            shown = await wait_until(lambda chunks: stalled + 2 in chunks, what="the frames of three chunks",
                                     value=chunks_received)
            fresh = shown[stalled + 1]
            assert newest_sent - max(fresh) <= TRANSIT_SLACK_FRAMES, (newest_sent, shown)
            # The stalled chunk took its input before the stall, and it shows.
            assert newest_sent - max(shown[stalled]) > INPUT_BUFFER_FRAMES - TRANSIT_SLACK_FRAMES, (newest_sent, shown)


async def test_a_reset_discards_the_chunk_in_flight(api, echo, services):
    echo.gate = threading.Semaphore(0)
    await load(api, "test-echo", {"frames": 2})
    async with connected(api, send_track=PatternTrack(fps=30, width=256, height=64)) as client:
        await asyncio.wait_for(client.channel_open.wait(), 10)
        session = await wait_until(lambda: services.sessions.sessions.get(client.session_id), what="the session")
        stream = await wait_until(lambda: echo.streams and echo.streams[-1], what="the session's stream")
        await wait_until(lambda: stream.at_gate, what="the first chunk in flight")
        client.send({"reset_cache": True})
        await wait_until(lambda: session.parameters.snapshot().get("reset_cache"), what="the reset applied")
        echo.gate.release(3)  # the chunk in flight, then two more (the last one's frames flush the jitter buffer)

        def chunks_shown() -> set[int]:
            return {echo_chunk(received.array) for received in list(client.frames)}

        shown = await wait_until(lambda chunks: 3 in chunks, what="frames of the third chunk", value=chunks_shown)
        assert 1 not in shown, "the chunk made before the reset reached the peer"
        assert 2 in shown


async def test_reset_and_mode_switch_flush_the_output_but_parameter_changes_and_loads_do_not(
    api, test_pipelines, services
):
    await load(api, "test-pattern")
    initial = {"input_mode": "video", "prompts": ["one"]}
    async with connected(api, initial, send_track=PatternTrack(fps=30, width=64, height=48)) as client:
        await client.wait_frames(6)
        await asyncio.wait_for(client.channel_open.wait(), 10)
        session = services.sessions.sessions[client.session_id]

        async def pause_with_output_queued() -> int:
            client.send({"paused": True})
            await wait_until(lambda: session.state == "paused", what="the generation loop paused")
            return await wait_until(lambda: session.track.queued, what="frames queued for playback")

        async def resume() -> None:
            chunks = session.chunks
            client.send({"paused": False})
            await wait_until(lambda: session.chunks > chunks + 1, what="new chunks after the resume")

        queued = await pause_with_output_queued()
        client.send({"prompts": ["two"], "noise_scale": 0.5})
        await wait_until(lambda: session.parameters.snapshot()["prompts"][0]["text"] == "two",
                         what="the new prompt applied")
        assert session.track.queued == queued, "an ordinary parameter change flushed the output"

        client.send({"reset_cache": True})
        await wait_until(lambda: session.track.queued == 0, what="the output flushed on reset_cache")
        await resume()

        await pause_with_output_queued()
        client.send({"input_mode": "text"})
        await wait_until(lambda: session.track.queued == 0 and len(session.input) == 0,
                         what="output and input flushed on a mode switch")
        counters = session.input
        assert counters.received == counters.used + counters.dropped
        await resume()

        # Loading another pipeline leaves the session on its own, its output untouched.
        queued = await pause_with_output_queued()
        assert (await api("POST", "api/v1/pipeline/load",
                          {"pipeline_id": "test-pattern", "load_params": {"seed": 7}})).status == 200
        await wait_for_status(api, "loaded")
        assert session.track.queued == queued, "a load of another pipeline flushed the output"
        await resume()
        assert len(PatternPipeline.streams) == 1, "the session opened another stream"
