"""Server-side recordings of live sessions, end to end.

Real servers on loopback (in-process, or ``daydream-scope`` in a subprocess where the server
itself is stopped or killed), real aiortc peers, the files read back with PyAV, and timelines
generated again offline to the hashes the live session recorded.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

import scope
from scope.client.peer import ScopePeer
from scope.recording.media import LosslessInputReader
from scope.recording.render import render_chunks, torch_threads
from scope.recording.service import read_info
from scope.recording.timeline import Timeline, parse_timeline, read_timeline
from scope.streaming.pattern import PatternTrack
from tests._subprocess_server import isolated_env, running_scope_server
from tests.conftest import wait_for_status
from tests.polling import wait_until
from tests.rtc import connected

REPO = Path(__file__).resolve().parent.parent
#: What the peers send in video mode: small, so each test stays short.
PATTERN = {"fps": 30, "width": 64, "height": 48}
#: ``longlive`` on its synthetic weights at a tiny size (a chunk takes about 0.1 s on one core).
LONGLIVE = {"height": 32, "width": 32, "seed": 3}
FOX = {"prompts": [{"text": "a red fox", "weight": 1.0}]}
#: Short liveness timeouts, so a killed peer is noticed in seconds.
SHORT_TIMEOUT_S = 3


@pytest.fixture
def server_settings(request) -> dict:
    """A test's own ScopeApp settings (parametrize indirectly); ``synthetic`` serves the
    synthetic weights."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def scope_extra_config(tmp_path, server_settings, request) -> dict:
    settings = dict(server_settings)
    if settings.pop("synthetic", False):
        settings["models_dir"] = str(request.getfixturevalue("synthetic_models"))
    return {
        "recordings_dir": str(tmp_path / "recordings"),
        "disconnect_timeout": SHORT_TIMEOUT_S,
        **settings,
    }


def recordings_root(tmp_path: Path) -> Path:
    return tmp_path / "recordings"


async def load(api, pipeline_id: str, load_params: dict | None = None) -> None:
    body = {"pipeline_id": pipeline_id, **({"load_params": load_params} if load_params else {})}
    reply = await api("POST", "api/v1/pipeline/load", body)
    assert reply.status == 200, reply.body
    await wait_for_status(api, "loaded", timeout=60)


async def listed(api) -> dict[str, dict]:
    """``GET /api/v1/recordings`` by session id."""
    reply = await api("GET", "api/v1/recordings")
    assert reply.status == 200, reply.body
    return {entry["session_id"]: entry for entry in reply.json["recordings"]}


async def wait_recorded(api, session_id: str, chunks: int, timeout: float = 60.0) -> dict:
    """The recording's listing entry once it holds ``chunks`` chunks."""
    return await wait_until(
        lambda entry: entry is not None and entry["chunks"] >= chunks, timeout, f"{chunks} recorded chunks",
        value=lambda: _entry(api, session_id),
    )


async def _entry(api, session_id: str) -> dict | None:
    return (await listed(api)).get(session_id)


async def wait_streamed(api, session_id: str, chunks: int, timeout: float = 60.0) -> None:
    """Wait until the session has generated ``chunks`` chunks."""

    async def generated() -> int:
        sessions = (await api("GET", "api/v1/webrtc/sessions")).json["sessions"]
        return next(s for s in sessions if s["id"] == session_id)["stats"]["chunk"]

    await wait_until(lambda count: count >= chunks, timeout, f"{chunks} generated chunks", value=generated)


async def download(api, path: str, destination: Path, content_type: str) -> Path:
    reply = await api("GET", path)
    assert reply.status == 200, reply.body[:500]
    assert reply.headers["Content-Type"].startswith(content_type)
    destination.write_bytes(reply.body)
    return destination


def read_video(path: Path) -> tuple[np.ndarray, float]:
    """Every frame of a video file (RGB) and its frame rate, read with PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8), rate


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def timeline_of(document: dict) -> Timeline:
    timeline, _, _ = parse_timeline(document)
    return timeline


def render_with_input(timeline: Timeline, input_path: Path, pipeline) -> list:
    """Every chunk of ``timeline`` generated again on ``pipeline`` from the stored input."""
    with LosslessInputReader(input_path) as reader, torch_threads(timeline.torch_threads):
        return list(render_chunks(timeline, pipeline, input_frames=reader.read))


# REST and data channel ---------------------------------------------------------------------


async def test_rest_recording_of_a_passthrough_stream_keeps_what_the_chunks_made(api, tmp_path):
    await load(api, "passthrough")
    async with connected(api, send_track=PatternTrack(**PATTERN)) as client:
        session_id = client.session_id
        await wait_streamed(api, session_id, 2)  # the recording starts mid-stream
        # Two starts at once: one records, the other is told it records already.
        replies = await asyncio.gather(*(api("POST", f"api/v1/recordings/{session_id}/start") for _ in range(2)))
        assert sorted(reply.status for reply in replies) == [200, 409], [reply.body for reply in replies]
        started = next(reply.json for reply in replies if reply.status == 200)
        assert started["state"] == "recording" and started["video_mode"] is True
        assert started["pipeline_id"] == "passthrough" and started["first_chunk"] >= 2
        told = await client.wait_message(lambda m: m.get("type") == "recording_started")
        assert told == {"type": "recording_started", "session_id": session_id, "first_chunk": started["first_chunk"]}
        assert (await api("POST", f"api/v1/recordings/{session_id}/start")).status == 409
        await wait_recorded(api, session_id, 6)
        assert (await api("DELETE", f"api/v1/recordings/{session_id}")).status == 409
        reply = await api("POST", f"api/v1/recordings/{session_id}/stop")
        assert reply.status == 200, reply.body
        info = reply.json
        assert info["state"] == "stopped" and info["stop_reason"] == "requested" and info["error"] is None
        assert info["chunks"] >= 6 and info["frames"] == 4 * info["chunks"]
        stopped = await client.wait_message(lambda m: m.get("type") == "recording_stopped")
        assert stopped["reason"] == "requested" and stopped["frames"] == info["frames"]
        assert stopped["duration_s"] == info["duration_s"] == round(info["frames"] / info["fps"], 3)
        assert (await api("POST", f"api/v1/recordings/{session_id}/stop")).status == 409
        # A finished recording stays as it is: the session cannot record over it.
        assert (await api("POST", f"api/v1/recordings/{session_id}/start")).status == 409
        await client.wait_frames(len(client.frames) + 4)  # the stream went on throughout

    reply = await api("GET", f"api/v1/recordings/{session_id}/timeline")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    timeline = timeline_of(reply.json)
    assert timeline.pipeline_id == "passthrough" and timeline.fps == info["fps"]
    assert timeline.first_chunk == info["first_chunk"]
    assert [record.chunk for record in timeline.chunks] == list(range(info["first_chunk"], info["first_chunk"] + info["chunks"]))
    assert sum(record.frames for record in timeline.chunks) == info["frames"]
    consumed = sum(record.input_frames for record in timeline.chunks)
    assert consumed == info["frames"] and timeline.input.frames == consumed
    assert timeline.input.first_chunk == info["first_chunk"]

    reply = await api("GET", f"api/v1/recordings/{session_id}/provenance")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    assert reply.json["format"] == "scope-provenance/1" and reply.json["pipeline_id"] == "passthrough"

    video, rate = read_video(await download(api, f"api/v1/recordings/{session_id}", tmp_path / "out.mp4", "video/mp4"))
    assert video.shape == (info["frames"], PATTERN["height"], PATTERN["width"], 3)
    assert rate == pytest.approx(info["fps"])

    # The stored input is exactly what the chunks consumed: passthrough fed from it makes every
    # recorded chunk again, bit for bit.
    stored = await download(api, f"api/v1/recordings/{session_id}/input", tmp_path / "input.mkv", "video/x-matroska")
    with LosslessInputReader(stored) as reader:
        assert (reader.width, reader.height) == (PATTERN["width"], PATTERN["height"])
        reader.read(consumed)
        with pytest.raises(EOFError):
            reader.read(1)
    rendered = render_with_input(timeline, stored, scope.load_pipeline("passthrough"))
    assert [(c.index, c.sha256) for c in rendered] == [(r.chunk, r.sha256) for r in timeline.chunks]
    # The MP4 holds those frames, in order (lossy coding: close, not equal).
    generated = np.concatenate([c.frames for c in rendered])
    quality = [psnr(a, b) for a, b in zip(video, generated)]
    assert min(quality) > 30, quality

    entry = (await listed(api))[session_id]
    assert entry["pipeline_id"] == "passthrough" and entry["state"] == "stopped"
    assert entry["duration_s"] == info["duration_s"] and entry["frames"] == info["frames"]
    folder = recordings_root(tmp_path) / session_id
    assert entry["bytes"] == sum(path.stat().st_size for path in folder.iterdir()) > 0
    assert sorted(path.name for path in folder.iterdir()) == [
        "input.mkv", "provenance.json", "recording.json", "recording.mp4", "timeline.json"
    ]
    assert (await api("DELETE", f"api/v1/recordings/{session_id}")).status == 204
    assert not folder.exists() and session_id not in await listed(api)
    assert (await api("GET", f"api/v1/recordings/{session_id}")).status == 404


async def test_the_data_channel_starts_and_stops_a_recording(api):
    await load(api, "passthrough")
    async with connected(api, send_track=PatternTrack(**PATTERN)) as client:
        await asyncio.wait_for(client.channel_open.wait(), 10)
        client.send({"recording": True})
        started = await client.wait_message(lambda m: m.get("type") == "recording_started", timeout=30)
        assert started["session_id"] == client.session_id
        entry = await wait_recorded(api, client.session_id, 3)
        assert entry["state"] == "recording" and entry["first_chunk"] == started["first_chunk"]
        client.send({"recording": False})
        stopped = await client.wait_message(lambda m: m.get("type") == "recording_stopped", timeout=30)
        assert stopped["reason"] == "requested" and stopped["frames"] >= 12
        entry = (await listed(api))[client.session_id]
        assert entry["state"] == "stopped" and entry["frames"] == stopped["frames"]
        # Refused on the channel as over REST (409: the session has a finished recording).
        client.send({"recording": True})
        rejected = await client.wait_message(lambda m: m.get("type") == "parameters_rejected", timeout=30)
        assert rejected["errors"][0]["loc"] == ["recording"]
        assert len([m for m in client.messages if m.get("type") == "recording_started"]) == 1


# Rendering a recording again ---------------------------------------------------------------


@pytest.mark.parametrize("server_settings", [{"synthetic": True}], indirect=True)
async def test_a_late_text_mode_recording_renders_again_to_every_recorded_hash(api, synthetic_models):
    """Started after a few chunks, with a prompt switch (resetting the caches) and a transition
    while it records: the renderer replays every update from the stream's first chunk and makes
    each recorded chunk again."""
    await load(api, "longlive", LONGLIVE)
    async with connected(api, FOX, recvonly=True) as client:
        session_id = client.session_id
        await asyncio.wait_for(client.channel_open.wait(), 10)
        await wait_streamed(api, session_id, 2)
        reply = await api("POST", f"api/v1/recordings/{session_id}/start")
        assert reply.status == 200, reply.body
        first = reply.json["first_chunk"]
        assert first >= 2 and reply.json["video_mode"] is False and reply.json["fps"] == 16.0
        await wait_recorded(api, session_id, 2)
        client.send({"prompts": [{"text": "a blue whale", "weight": 1.0}], "reset_cache": True})
        await wait_recorded(api, session_id, 4)
        client.send({"transition": {"target_prompts": [{"text": "a green forest", "weight": 1.0}], "num_steps": 2}})
        await wait_recorded(api, session_id, 8)
        info = (await api("POST", f"api/v1/recordings/{session_id}/stop")).json
        assert info["stop_reason"] == "requested"
    timeline = timeline_of((await api("GET", f"api/v1/recordings/{session_id}/timeline")).json)
    assert timeline.input is None and timeline.first_chunk == first
    assert len(timeline.chunks) == info["chunks"] >= 8
    updates = {key: event.chunk for event in timeline.events for key in event.parameters}
    assert first < updates["prompts"] < updates["transition"] <= timeline.chunks[-1].chunk, timeline.events

    pipeline = scope.load_pipeline("longlive", models_dir=synthetic_models, **timeline.load_params)
    with torch_threads(timeline.torch_threads):
        rendered = list(render_chunks(timeline, pipeline))
    assert [c.index for c in rendered] == list(range(timeline.end_chunk))
    compared = [c for c in rendered if c.recorded is not None]
    assert [c.index for c in compared] == [record.chunk for record in timeline.chunks]
    assert [c.index for c in compared if not c.matches] == []
    # The updates changed the pictures (a timeline without them would not reproduce them).
    assert len({c.sha256 for c in compared}) == len(compared)


@pytest.mark.parametrize("input_mode", ["text", "video"])
@pytest.mark.parametrize("server_settings", [{"synthetic": True}], indirect=True)
async def test_a_recording_asked_for_in_the_offer_starts_at_chunk_0_and_renders_again(
    api, synthetic_models, tmp_path, input_mode
):
    """``initialParameters.recording``: the only way to an exactly reproducible video-mode
    recording, since its stored input then starts with the stream."""
    await load(api, "longlive", LONGLIVE)
    params = {"recording": True, "input_mode": input_mode, **FOX}
    video = input_mode == "video"
    track = PatternTrack(fps=30, width=LONGLIVE["width"], height=LONGLIVE["height"]) if video else None
    async with connected(api, params, send_track=track, recvonly=not video) as client:
        session_id = client.session_id
        started = await client.wait_message(lambda m: m.get("type") == "recording_started", timeout=30)
        assert started["first_chunk"] == 0
        await wait_recorded(api, session_id, 4)
        info = (await api("POST", f"api/v1/recordings/{session_id}/stop")).json
    assert info["video_mode"] is video and info["first_chunk"] == 0
    timeline = timeline_of((await api("GET", f"api/v1/recordings/{session_id}/timeline")).json)
    assert timeline.initial_parameters["input_mode"] == input_mode and "recording" not in timeline.initial_parameters
    pipeline = scope.load_pipeline("longlive", models_dir=synthetic_models, **timeline.load_params)
    if video:
        rendered = render_with_input(timeline, recordings_root(tmp_path) / session_id / "input.mkv", pipeline)
    else:
        assert timeline.input is None
        with torch_threads(timeline.torch_threads):
            rendered = list(render_chunks(timeline, pipeline))
    assert [c.index for c in rendered] == [record.chunk for record in timeline.chunks] == list(range(info["chunks"]))
    assert [c.index for c in rendered if not c.matches] == []


# Limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize("server_settings", [{"recordings_quota_bytes": 6000}], indirect=True)
async def test_a_recording_stops_at_the_quota_and_a_full_directory_refuses_a_start(api, tmp_path):
    await load(api, "passthrough")
    async with connected(api, send_track=PatternTrack(**PATTERN)) as client:
        await wait_streamed(api, client.session_id, 1)
        assert (await api("POST", f"api/v1/recordings/{client.session_id}/start")).status == 200
        stopped = await client.wait_message(lambda m: m.get("type") == "recording_stopped", timeout=60)
        assert stopped["reason"] == "quota" and stopped["frames"] > 0
        entry = (await listed(api))[client.session_id]
        assert entry["state"] == "stopped" and entry["stop_reason"] == "quota" and entry["bytes"] >= 6000
        video, _ = read_video(recordings_root(tmp_path) / client.session_id / "recording.mp4")
        assert len(video) == entry["frames"]
    async with connected(api, send_track=PatternTrack(**PATTERN)) as other:
        reply = await api("POST", f"api/v1/recordings/{other.session_id}/start")
        assert reply.status == 507, reply.body
        assert "recordings_quota_bytes" in reply.json["detail"]
        assert not (recordings_root(tmp_path) / other.session_id).exists()


@pytest.mark.parametrize("server_settings", [{"max_recording_seconds": 1.0}], indirect=True)
async def test_a_recording_stops_at_its_maximum_duration(api, tmp_path):
    await load(api, "passthrough")
    async with connected(api, send_track=PatternTrack(**PATTERN)) as client:
        await wait_streamed(api, client.session_id, 1)
        fps = (await api("POST", f"api/v1/recordings/{client.session_id}/start")).json["fps"]
        stopped = await client.wait_message(lambda m: m.get("type") == "recording_stopped", timeout=60)
        assert stopped["reason"] == "max_duration"
        assert fps - 4 < stopped["frames"] <= fps  # as many 4-frame chunks as fit in one second
        assert stopped["duration_s"] <= 1.0
    video, _ = read_video(recordings_root(tmp_path) / client.session_id / "recording.mp4")
    assert len(video) == stopped["frames"]


# Ends nobody asked for -----------------------------------------------------------------------


async def test_a_killed_client_leaves_a_finished_readable_recording(api, scope_url, tmp_path):
    await load(api, "passthrough")
    peer = subprocess.Popen(
        [sys.executable, "-m", "tests.killable_peer", scope_url],
        cwd=REPO, env=isolated_env(tmp_path / "peer"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(peer.stdout.readline), 60)
        assert line.startswith("STREAMING "), line
        session_id = line.split()[1]
        assert (await api("POST", f"api/v1/recordings/{session_id}/start")).status == 200
        await wait_recorded(api, session_id, 4)
        peer.send_signal(signal.SIGKILL)
        peer.wait(10)
        entry = await wait_until(lambda e: e["state"] == "stopped", 30, "the recording stopped",
                                 value=lambda: _entry(api, session_id))
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait(10)
        peer.stdout.close()
    assert entry["stop_reason"] == "session_ended" and entry["error"] is None
    folder = recordings_root(tmp_path) / session_id
    assert json.loads((folder / "recording.json").read_text())["state"] == "stopped"
    video, _ = read_video(folder / "recording.mp4")
    assert len(video) == entry["frames"] >= 16


async def stream_to(server) -> tuple[ScopePeer, str]:
    """A peer streaming a test pattern to a subprocess server, and its session id."""
    peer = ScopePeer(PatternTrack(**PATTERN))
    try:
        async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
            reply = await client.post("/api/v1/webrtc/offer", json=await peer.create_offer())
            assert reply.status_code == 200, reply.text
            await peer.accept_answer(reply.json()["sdp"], "answer")
            session_id = reply.json()["sessionId"]
            reply = await client.post(f"/api/v1/recordings/{session_id}/start", json={})
            assert reply.status_code == 200, reply.text
    except BaseException:
        await peer.close()
        raise
    return peer, session_id


async def recorded_frames(server, session_id: str, frames: int) -> None:
    async def entry() -> dict | None:
        async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
            listing = (await client.get("/api/v1/recordings")).json()["recordings"]
        return next((e for e in listing if e["session_id"] == session_id), None)

    await wait_until(lambda e: e is not None and e["frames"] >= frames, 60, f"{frames} recorded frames", value=entry)


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
async def test_a_server_that_stops_mid_recording_leaves_readable_files(tmp_path, stop):
    """SIGTERM finishes the files (``server_stopped``); even SIGKILL leaves an MP4 that reads
    back up to its last fragment, and a timeline that parses, listed as stopped after."""
    with running_scope_server(tmp_path / "server", env={"PIPELINE": "passthrough"}) as server:
        with server.client() as client:
            server.wait_status(client, ("loaded",))
        peer, session_id = await stream_to(server)
        try:
            await recorded_frames(server, session_id, 100)  # a few MP4 fragments (one a second)
            if stop == "SIGKILL":
                server.process.kill()
            else:
                server.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(server.process.wait, 30)
            told = [m for m in peer.messages if m.get("type") == "recording_stopped"]
        finally:
            await peer.close()
    folder = tmp_path / "server" / "recordings" / session_id
    info = json.loads((folder / "recording.json").read_text())
    timeline, _, _ = read_timeline(folder / "timeline.json")
    video, rate = read_video(folder / "recording.mp4")
    assert video.shape[1:] == (PATTERN["height"], PATTERN["width"], 3) and rate == pytest.approx(info["fps"])
    stored = count_frames(folder / "input.mkv")
    if stop == "SIGTERM":
        assert info["state"] == "stopped" and info["stop_reason"] == "server_stopped", info
        assert [m["reason"] for m in told] == ["server_stopped"]  # the peer was told why
        assert len(video) == info["frames"] == sum(record.frames for record in timeline.chunks) >= 100
        assert stored == timeline.input.frames == info["frames"]
    else:
        # The sidecars were written at most a second before the kill, and the media files hold
        # everything but the frames their encoders still held (about a second at most).
        assert info["state"] == "recording"
        assert len(video) > 0 and len(video) >= sum(record.frames for record in timeline.chunks) - 2 * info["fps"]
        assert stored > 0 and stored >= timeline.input.frames - 2 * info["fps"]
        assert read_info(folder)["state"] == "stopped" and read_info(folder)["stop_reason"] == "server_stopped"


def count_frames(path: Path) -> int:
    """Frames a lossless input file reads back (each one decodes)."""
    with LosslessInputReader(path) as reader:
        count = 0
        while True:
            try:
                reader.read(1)
            except EOFError:
                return count
            count += 1


# Paths ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("session_id", ["..", "%2e%2e", "..%2fx", "../x", "%2e%2e%2f%2e%2e", "x%2f..%2f.."])
async def test_session_ids_that_are_no_uuid_name_no_file(api, tmp_path, session_id):
    # Files where an escaping id would lead: the recordings directory's parent and beside it.
    recordings_root(tmp_path).mkdir(exist_ok=True)
    for folder in (tmp_path, tmp_path / "x"):
        folder.mkdir(exist_ok=True)
        for name in ("recording.mp4", "timeline.json", "provenance.json", "input.mkv", "recording.json"):
            (folder / name).write_text("{}")
    routes = [("GET", ""), ("DELETE", ""), ("GET", "/timeline"), ("GET", "/provenance"), ("GET", "/input"),
              ("POST", "/start"), ("POST", "/stop")]
    # A literal slash routes to no recordings handler: Jupyter answers (403 for an unknown DELETE).
    refusals = {404} if "/" not in session_id else {403, 404}
    for method, tail in routes:
        reply = await api(method, f"api/v1/recordings/{session_id}{tail}")
        assert reply.status in refusals, (method, tail, reply.status, reply.body[:200])
        assert b"{}" != reply.body
    for folder in (tmp_path, tmp_path / "x"):
        assert (folder / "recording.mp4").read_text() == "{}"



async def test_a_session_that_ends_while_its_recording_opens_leaves_none_running(api, services, monkeypatch):
    """A start measures the directory off the event loop (slow when it holds many recordings):
    a session that ends meanwhile must not leave a recording that nothing will ever stop."""
    import scope.recording.service as service

    measuring, ended = threading.Event(), threading.Event()
    measure = service.directory_bytes

    def measure_until_the_session_ended(*args, **kwargs) -> int:
        measuring.set()
        ended.wait(30)
        return measure(*args, **kwargs)

    monkeypatch.setattr(service, "directory_bytes", measure_until_the_session_ended)
    await load(api, "passthrough")
    async with connected(api, send_track=PatternTrack(**PATTERN)) as client:
        await wait_streamed(api, client.session_id, 1)
        start = asyncio.ensure_future(api("POST", f"api/v1/recordings/{client.session_id}/start"))
        await wait_until(measuring.is_set, 30, "the start measuring the directory")
        assert (await api("DELETE", f"api/v1/webrtc/sessions/{client.session_id}")).status == 204
        ended.set()
        reply = await start
    assert reply.status == 404, reply.body
    assert services.sessions.recordings.active == {}
    entry = (await listed(api)).get(client.session_id)
    assert entry is None or entry["state"] == "stopped"
