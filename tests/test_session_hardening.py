"""Sessions a client cannot exhaust or kill: slots, liveness, offer checks, deep JSON, failures.

Most tests run against a real ``daydream-scope`` (passthrough pre-loaded, short timeouts); the
repeated-failure tests use the in-process server, which can register test-only pipelines.
Measured reaping times are printed (``-s`` shows them); nothing here asserts speed beyond a
deadline well below the old behaviour (about 30 s for both a killed client and a stale offer).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from aiortc import RTCPeerConnection
from pydantic import BaseModel, ConfigDict

from scope.client.peer import ScopePeer
from scope.pipelines.base import Chunk, Stream
from scope.streaming.pattern import PatternTrack
from tests._subprocess_server import isolated_env, running_scope_server
from tests.pipelines import PatternPipeline, registered
from tests.polling import wait_until
from tests.rtc import connected
from tests.test_streaming import load

SHORT_TIMEOUT_S = 3
#: Well below the ~30 s an aioice consent failure or the old connect timeout took.
REAP_DEADLINE_S = 20
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """daydream-scope with passthrough loaded, 3 s timeouts, room for 5 pending offers."""
    args = (
        f"--ScopeApp.disconnect_timeout={SHORT_TIMEOUT_S}",
        f"--ScopeApp.connect_timeout={SHORT_TIMEOUT_S}",
        "--ScopeApp.max_sessions=4",
        "--ScopeApp.max_pending_sessions=5",
    )
    with running_scope_server(tmp_path_factory.mktemp("hardening"), *args, env={"PIPELINE": "passthrough"}) as srv:
        with srv.client() as client:
            srv.wait_status(client, ("loaded",))
        yield srv


def session_ids(server) -> dict[str, str]:
    """Session id -> connection state."""
    with server.client() as client:
        return {s["id"]: s["connection_state"] for s in client.get("/api/v1/webrtc/sessions").json()["sessions"]}


async def wait_sessions_gone(server, ids: set[str], deadline_s: float = REAP_DEADLINE_S) -> float:
    """Seconds until none of ``ids`` is listed (fails after ``deadline_s``)."""
    started = time.monotonic()
    await wait_until(lambda listed: not ids & listed, deadline_s, f"sessions {sorted(ids)} to be reaped",
                     value=lambda: set(session_ids(server)), interval=0.1)
    return time.monotonic() - started


async def post_offer(server, offer: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        return await client.post("/api/v1/webrtc/offer", json=offer)


async def stream_from(server) -> tuple[ScopePeer, str, list]:
    """A connected peer sending a test pattern, its session id and the frames it receives."""
    frames: list = []
    peer = ScopePeer(PatternTrack(fps=30, width=64, height=48), on_frame=frames.append)
    reply = await post_offer(server, await peer.create_offer())
    assert reply.status_code == 200, reply.text
    await peer.accept_answer(reply.json()["sdp"], "answer")
    await wait_until(lambda: len(frames) >= 3, timeout=30)
    return peer, reply.json()["sessionId"], frames


# Liveness and slots ---------------------------------------------------------------------------


async def test_a_killed_client_is_reaped_within_disconnect_timeout(server):
    client = subprocess.Popen(
        [sys.executable, "-m", "tests.killable_peer", server.url],
        cwd=REPO, env=isolated_env(server.root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(client.stdout.readline), 60)
        assert line.startswith("STREAMING "), line + client.stdout.read() if client.poll() is not None else line
        session_id = line.split()[1]
        assert session_ids(server)[session_id] == "connected"
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        reaped = await wait_sessions_gone(server, {session_id})
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)
        client.stdout.close()
    print(f"\nkilled client reaped after {reaped:.1f} s (disconnect_timeout {SHORT_TIMEOUT_S} s)")


async def test_offers_that_never_connect_do_not_block_a_real_client(server):
    stale_peers = [ScopePeer(recvonly=True) for _ in range(4)]
    live = None
    try:
        stale_ids = set()
        for peer in stale_peers:  # offer posted, answer never applied
            reply = await post_offer(server, await peer.create_offer())
            assert reply.status_code == 200, reply.text
            stale_ids.add(reply.json()["sessionId"])
        posted = time.monotonic()
        # max_sessions is 4: four stale offers used to take every slot.
        live, live_id, frames = await stream_from(server)
        count = len(frames)
        await wait_until(lambda: len(frames) > count + 5, timeout=20)
        assert session_ids(server)[live_id] == "connected"
        # A fifth waiting offer fills the pending cap; a sixth is refused, saying why.
        extra = ScopePeer(recvonly=True)
        stale_peers.append(extra)
        reply = await post_offer(server, await extra.create_offer())
        assert reply.status_code == 200, reply.text
        stale_ids.add(reply.json()["sessionId"])
        refused_peer = ScopePeer(recvonly=True)
        stale_peers.append(refused_peer)
        refused = await post_offer(server, await refused_peer.create_offer())
        assert refused.status_code == 503
        assert "pending" in refused.json()["detail"] and "at most 5" in refused.json()["detail"]
        await wait_sessions_gone(server, stale_ids)
        reaped = time.monotonic() - posted
        print(f"\nstale offers reaped {reaped:.1f} s after posting (connect_timeout {SHORT_TIMEOUT_S} s)")
        assert session_ids(server) == {live_id: "connected"}
        count = len(frames)
        await wait_until(lambda: len(frames) > count + 5, timeout=20)
    finally:
        for peer in stale_peers:
            await peer.close()
        if live is not None:
            await live.close()


# Offer checks -------------------------------------------------------------------------------


async def real_offer() -> str:
    peer = ScopePeer(recvonly=True)
    try:
        return (await peer.create_offer())["sdp"]
    finally:
        await peer.close()


async def data_only_offer() -> str:
    pc = RTCPeerConnection()
    pc.createDataChannel("parameters")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        return pc.localDescription.sdp
    finally:
        await pc.close()


async def test_unusable_offers_get_400_saying_what_is_missing_and_leave_nothing(server):
    sdp = await real_offer()
    before = set(session_ids(server))
    cases = {
        "no fingerprint": ("\r\n".join(l for l in sdp.split("\r\n") if not l.startswith("a=fingerprint")), "fingerprint"),
        "no video": (await data_only_offer(), "no video"),
        "inactive video": (sdp.replace("a=recvonly", "a=inactive"), "inactive"),
        "no ICE credentials": ("\r\n".join(l for l in sdp.split("\r\n") if not l.startswith("a=ice-")), "ICE"),
        "garbage": ("v=0 garbage", "cannot parse"),
        "bare video line": ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "codec"),
        "not SDP": ("hello", "v=0"),
    }
    for name, (text, expected) in cases.items():
        reply = await post_offer(server, {"sdp": text, "type": "offer"})
        assert reply.status_code == 400, (name, reply.status_code, reply.text)
        assert expected in reply.json()["detail"], (name, reply.json())
    await asyncio.sleep(SHORT_TIMEOUT_S + 1)  # a failing background task would have logged by now
    assert set(session_ids(server)) <= before
    output = server.output()
    assert "Task exception was never retrieved" not in output
    assert "None is not in list" not in output


# Deep JSON ----------------------------------------------------------------------------------

DEPTH = 5000
DEEP_BODIES = {
    "arrays": "[" * DEPTH + "]" * DEPTH,
    "objects": '{"a":' * DEPTH + "1" + "}" * DEPTH,
}


def test_deeply_nested_json_bodies_get_400_on_every_json_endpoint(server):
    paths = [
        ("POST", "/api/v1/pipeline/load"),
        ("POST", "/api/v1/webrtc/offer"),
        ("POST", "/api/v1/models/download"),
        ("PATCH", "/api/v1/webrtc/offer/00000000-0000-0000-0000-000000000000"),
    ]
    with server.client() as client:
        for method, path in paths:
            for shape, body in DEEP_BODIES.items():
                reply = client.request(method, path, content=body, headers={"Content-Type": "application/json"})
                assert reply.status_code == 400, (method, path, shape, reply.status_code, reply.text[:200])
                assert "nested too deeply" in reply.json()["detail"]
        # Deep values inside otherwise valid bodies are refused too, never a 500.
        inner = json.loads('{"a":' * 400 + "1" + "}" * 400)
        for method, path, body in [
            ("POST", "/api/v1/pipeline/load", {"pipeline_id": "passthrough", "load_params": inner}),
            ("POST", "/api/v1/webrtc/offer", {"sdp": "v=0", "type": "offer", "initialParameters": inner}),
            ("POST", "/api/v1/models/download", {"pipeline_id": inner}),
        ]:
            reply = client.request(method, path, json=body)
            assert 400 <= reply.status_code < 500, (path, reply.status_code, reply.text[:200])
        assert client.get("/health").status_code == 200
    assert "RecursionError" not in server.output()


async def test_deeply_nested_data_channel_message_is_rejected_and_the_stream_goes_on(server):
    peer, session_id, frames = await stream_from(server)
    try:
        await asyncio.wait_for(peer.channel_open.wait(), 20)
        for shape, body in DEEP_BODIES.items():
            since = len(peer.messages)
            peer.channel.send(body)
            rejected = await peer.wait_message(lambda m: m.get("type") == "parameters_rejected", 10, since)
            assert "nested too deeply" in rejected["errors"][0]["msg"], shape
        since = len(peer.messages)
        await peer.wait_message(lambda m: m.get("type") == "stats", 10, since)
        count = len(frames)
        await wait_until(lambda: len(frames) > count + 10, timeout=20)
        assert session_ids(server)[session_id] == "connected"
        assert not any(m.get("type") == "stream_stopped" for m in peer.messages)
    finally:
        await peer.close()


# In-process server: max_sessions checked again on connect; repeated chunk failures ---------------


@pytest.fixture
def scope_extra_config():
    return {"max_sessions": 1, "max_pending_sessions": 4}


async def test_a_peer_connecting_beyond_max_sessions_is_told_and_closed(api, test_pipelines, services):
    await load(api, "test-pattern")
    peers = [ScopePeer(recvonly=True), ScopePeer(recvonly=True)]
    try:
        answers = []
        for peer in peers:  # both offers are answered while nothing streams yet
            reply = await api("POST", "api/v1/webrtc/offer", await peer.create_offer())
            assert reply.status == 200, reply.body
            answers.append(reply.json)
        assert services.sessions.pending_count() == 2
        for peer, answer in zip(peers, answers):
            await peer.accept_answer(answer["sdp"], answer["type"])
        await wait_until(lambda: len(services.sessions.sessions) == 1, timeout=20)
        assert services.sessions.streaming_count() == 1
        (kept,) = services.sessions.sessions
        refused = [p for p, a in zip(peers, answers) if a["sessionId"] != kept]
        assert len(refused) == 1
        stopped = await refused[0].wait_message(lambda m: m.get("type") == "stream_stopped", 20)
        assert "at most 1 may stream" in stopped["error_message"]
    finally:
        for peer in peers:
            await peer.close()
    await wait_until(lambda: not services.sessions.sessions, timeout=20)


# Repeated chunk failures (test-only pipeline) -----------------------------------------------------


class FailingLoadParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    failure: Literal["always", "intermittent", "alternating"] = "always"


class FailingStream(Stream):
    """``always``: the same error every chunk; ``intermittent``: two of three chunks fail the same
    way; ``alternating``: every chunk fails, with two different errors in turn."""

    def __init__(self, failure: str):
        self.failure = failure
        self.calls = 0

    def frames_needed(self, params: dict[str, Any]) -> int:
        return 0

    def run_chunk(self, params, video=None, *, init_cache=False) -> Chunk:
        import numpy as np

        self.calls += 1
        if self.failure == "always" or (self.failure == "intermittent" and self.calls % 3):
            raise ValueError("Overflow when unpacking long long")
        if self.failure == "alternating":
            raise (ValueError("first problem") if self.calls % 2 else KeyError("second problem"))
        return Chunk(frames=np.full((2, 32, 32, 3), 90, dtype=np.uint8), transition_active=False)


class FailingPipeline(PatternPipeline):
    info = dataclasses.replace(PatternPipeline.info, id="test-failing", name="Test failing", supported_modes=("text",))
    load_params_model = FailingLoadParams
    streams: list[FailingStream] = []

    @classmethod
    def load(cls, load_params, context) -> "FailingPipeline":
        return cls(load_params)

    def open_stream(self) -> Stream:
        stream = FailingStream(self.load_params.failure)
        type(self).streams.append(stream)
        return stream


@pytest.fixture
def failing_pipeline(test_pipelines):
    with registered(FailingPipeline) as pipeline:
        yield pipeline


async def test_the_same_chunk_failure_three_times_ends_the_stream(api, failing_pipeline, services):
    await load(api, "test-failing", {"failure": "always"})
    async with connected(api, {"prompts": ["p"]}) as client:
        stopped = await client.wait_message(lambda m: m.get("type") == "stream_stopped", timeout=30)
        assert "Overflow when unpacking long long" in stopped["error_message"]
        assert "3" in stopped["error_message"]
        failed = [m for m in client.messages if m.get("type") == "pipeline_event" and m["event"] == "chunk_failed"]
        assert len(failed) == 3
    assert failing_pipeline.streams[-1].calls == 3
    await wait_until(lambda: not services.sessions.sessions, timeout=20)


@pytest.mark.parametrize("failure", ["intermittent", "alternating"])
async def test_failures_broken_by_a_success_or_a_different_error_do_not_end_the_stream(
    api, failing_pipeline, services, failure
):
    await load(api, "test-failing", {"failure": failure})
    async with connected(api, {"prompts": ["p"]}) as client:
        await wait_until(lambda: failing_pipeline.streams and failing_pipeline.streams[-1].calls >= 12, timeout=30)
        assert not any(m.get("type") == "stream_stopped" for m in client.messages)
        assert client.pc.connectionState == "connected"
        if failure == "intermittent":
            await client.wait_frames(3)
    await wait_until(lambda: not services.sessions.sessions, timeout=20)
