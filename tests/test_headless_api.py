"""The headless session API against a real ``daydream-scope`` on loopback, through ``ScopeClient``.

One session per server, driven by plain HTTP calls: start, steer, read its latest frame (JPEG,
PNG), its metrics, and its live MPEG-TS output with PyAV; then stop. None of it is open to
``null`` origins.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import av
import numpy as np
import pytest

from scope.client import ScopeApiError, ScopeClient
from scope.server_ext.api_models import HeadlessStartResponse
from tests._subprocess_server import ScopeServer, spawn_scope_server
from tests.pipelines import prompt_level
from tests.polling import wait_until_sync

PATTERN = "test-pattern"  # text mode: the prompt sets the brightness, the corner counts chunks
SIZE = (64, 96, 3)
LOCAL_PAGE = "http://localhost:5173"
FOX = [{"text": "a red fox", "weight": 1.0}]
WHALE = [{"text": "a blue whale", "weight": 1.0}]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ScopeServer]:
    server = spawn_scope_server(tmp_path_factory.mktemp("headless-server"), test_pipelines=True)
    try:
        server.wait_ready(60)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(server) -> Iterator[ScopeClient]:
    with ScopeClient(server.url) as client:
        yield client


@pytest.fixture(scope="module")
def session(client) -> Iterator[HeadlessStartResponse]:
    """The module's headless session, on the test pattern, its first frame out."""
    started = client.start_headless("a red fox", pipeline=PATTERN)
    wait_until_sync(lambda: _has_frame(client), 60, "the headless session's first frame")
    yield started
    try:
        client.stop_headless()
    except ScopeApiError as exc:
        assert exc.status == 404  # the test of stopping stopped it


def _has_frame(client: ScopeClient) -> bool:
    try:
        client.headless_frame_bytes()
    except ScopeApiError as exc:
        assert exc.status == 404, exc
        return False
    return True


def brightness(frame: np.ndarray) -> float:
    return float(frame[16:, 16:].mean())


def corner(frame: np.ndarray) -> float:
    """The chunk counter of the test pattern (its top-left 8x8 block)."""
    return float(frame[1:7, 1:7].mean())


def test_only_text_mode(client):
    with pytest.raises(ScopeApiError) as video:
        client.start_headless("a red fox", pipeline=PATTERN, input_mode="video")
    assert video.value.status == 422
    assert any(field.endswith("input_mode") for field in video.value.fields), video.value.detail
    with pytest.raises(ScopeApiError) as bad:
        client.start_headless(pipeline=PATTERN, parameters={"noise_scale": "loud"})
    assert bad.value.status == 422
    assert any(field.endswith("parameters.noise_scale") for field in bad.value.fields), bad.value.detail
    assert client.sessions() == []


def test_start_answers_the_session_and_a_second_start_is_409(client, session):
    assert session.status == "ok" and session.pipeline_id == PATTERN
    assert session.input_mode == "text" and session.load_params["height"] == 64
    assert session.session_id
    with pytest.raises(ScopeApiError) as again:
        client.start_headless("a blue whale", pipeline=PATTERN)
    assert again.value.status == 409
    [info] = client.request("GET", "api/v1/webrtc/sessions").json()["sessions"]
    assert info["id"] == session.session_id and info["stats"]["transport"] == "headless"
    assert info["parameters"]["prompts"] == FOX


def test_parameters_apply_read_and_refuse(client, session):
    assert client.headless_parameters()["prompts"] == FOX
    reply = client.update_headless(prompts="a blue whale")
    assert reply.status == "ok" and reply.applied_parameters["prompts"] == WHALE and reply.warnings == []
    wait_until_sync(lambda p: p["prompts"] == WHALE, what="the new prompt", value=client.headless_parameters)
    level = prompt_level({"prompts": WHALE})
    wait_until_sync(lambda frame: abs(brightness(frame) - level) < 6, what="frames of the new prompt",
                    value=client.headless_frame)

    with pytest.raises(ScopeApiError) as invalid:
        client.update_headless(noise_scale=7)
    assert invalid.value.status == 422
    assert any(field.endswith("noise_scale") for field in invalid.value.fields), invalid.value.detail
    with pytest.raises(ScopeApiError) as empty:
        client.update_headless()
    assert empty.value.status == 400
    assert client.headless_parameters().get("noise_scale") != 7

    client.update_headless(paused=True)
    wait_until_sync(lambda m: m.sessions[session.session_id].state == "paused", what="paused",
                    value=client.headless_metrics)
    client.update_headless(paused=False)
    wait_until_sync(lambda m: m.sessions[session.session_id].state == "streaming", what="streaming",
                    value=client.headless_metrics)


def test_frames_decode_to_the_size_and_change(client, session):
    jpeg = client.headless_frame_bytes("jpeg", quality=50)
    png = client.headless_frame_bytes("png")
    assert jpeg[:3] == b"\xff\xd8\xff" and png[:8] == b"\x89PNG\r\n\x1a\n"
    first = client.headless_frame()
    assert first.shape == SIZE and first.dtype == np.uint8
    assert client.headless_frame("png").shape == SIZE
    wait_until_sync(lambda frame: abs(corner(frame) - corner(first)) > 5, what="a later chunk's frame",
                    value=lambda: client.headless_frame("png"))
    with pytest.raises(ScopeApiError) as bad_quality:
        client.headless_frame_bytes("jpeg", quality=0)
    assert bad_quality.value.status in (400, 422)


def test_metrics_list_the_headless_session(client, session):
    metrics = client.headless_metrics()
    stats = metrics.sessions[session.session_id]
    assert stats.headless is True and stats.transport == "headless"
    assert stats.pipeline_id == PATTERN and stats.chunk > 0 and stats.frames_sent > 0
    assert isinstance(stats.events, list)
    # The raw answer as a script reads it.
    raw = client.request("GET", "api/v1/session/metrics").json()
    assert raw["sessions"][session.session_id]["headless"] is True and isinstance(raw["gpu"], dict)


class ChunksFile(io.RawIOBase):
    """A read-only file over an iterator of byte chunks, for PyAV to demux a live stream."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._left:
            self._left = next(self._chunks, b"")
            if not self._left:
                return 0
        count = min(len(buffer), len(self._left))
        buffer[:count] = self._left[:count]
        self._left = self._left[count:]
        return count


def test_output_ts_plays_with_pyav(client, session):
    chunks = client.headless_output_ts()
    try:
        with av.open(io.BufferedReader(ChunksFile(chunks)), format="mpegts") as container:
            video = container.streams.video[0]
            assert video.codec_context.name == "h264"
            frames = []
            for frame in container.decode(video):
                frames.append(frame)
                if len(frames) == 10:
                    break
    finally:
        chunks.close()
    assert {(f.height, f.width) for f in frames} == {SIZE[:2]}
    times = [f.time for f in frames]
    assert all(a < b for a, b in zip(times, times[1:])), times
    pictures = [f.to_ndarray(format="rgb24") for f in frames]
    assert len({round(corner(p)) for p in pictures}) > 1, "the output does not move"


def test_refuses_null_origins_and_serves_local_pages(server, client, session):
    null = {"Origin": "null"}
    with server.client() as http:
        for method, path in (("POST", "/api/v1/session/start"), ("POST", "/api/v1/session/stop"),
                             ("GET", "/api/v1/session/parameters"), ("POST", "/api/v1/session/parameters"),
                             ("GET", "/api/v1/session/frame"), ("GET", "/api/v1/session/metrics"),
                             ("GET", "/api/v1/session/output.ts")):
            body = {"json": {"paused": False}} if method == "POST" else {}
            with http.stream(method, path, headers=null, **body) as refused:  # output.ts would not end
                assert refused.status_code == 403, (method, path, refused.read())
        page = {"Origin": LOCAL_PAGE}
        assert http.get("/api/v1/session/metrics", headers=page).status_code == 200
        frame = http.get("/api/v1/session/frame", params={"format": "png"}, headers=page)
        assert frame.status_code == 200 and frame.headers["Access-Control-Allow-Origin"] == LOCAL_PAGE
        assert http.get("/api/v1/session/parameters", headers=null).status_code == 403
    assert session.session_id in client.headless_metrics().sessions, "still running"


def test_stop_then_404(client, session):
    reply = client.stop_headless()
    assert (reply.status, reply.message) == ("ok", "Headless session stopped")
    for call in (client.stop_headless, client.headless_parameters, client.headless_frame_bytes,
                 lambda: client.update_headless(paused=True), lambda: next(client.headless_output_ts())):
        with pytest.raises(ScopeApiError) as gone:
            call()
        assert gone.value.status == 404, call
    assert session.session_id not in client.headless_metrics().sessions
    assert client.sessions() == []
