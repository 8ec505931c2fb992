"""The WebSocket transport against a real ``daydream-scope`` (and a real ``jupyter lab``) on loopback.

A session over one WebSocket is a session like a WebRTC one: parameters, pausing, listing,
deleting and ``max_sessions`` behave the same. What is its own: the output frames behind the
16-byte header, acknowledged by the client, and the backpressure that keeps the server at most
six frames ahead of the last ``ack``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import av
import numpy as np
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from scope.client import ScopeApiError, ScopeClient, StreamClosed
from scope.client.ws_peer import FRAME_HEADER, socket_url
from scope.streaming.pattern import pattern_frame, read_index
from tests._subprocess_server import TEST_TOKEN, ScopeServer, running_scope_server, spawn_scope_server
from tests.pipelines import prompt_level
from tests.polling import wait_until
from tests.test_longlive_server import blocks

PATTERN = "test-pattern"  # text mode: the prompt sets the brightness, the corner counts chunks
DISCONNECT_TIMEOUT_S = 4.0
MAX_SESSIONS = 2
FOREIGN = "https://evil.example"
LOCAL_PAGE = "http://localhost:5173"
MAX_AHEAD = 6


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ScopeServer]:
    """One server for the module: the test pipelines, two sessions at most, a short disconnect timeout."""
    env = {
        "DAYDREAM_SCOPE_DISCONNECT_TIMEOUT": str(DISCONNECT_TIMEOUT_S),
        "DAYDREAM_SCOPE_MAX_SESSIONS": str(MAX_SESSIONS),
    }
    root = tmp_path_factory.mktemp("websocket-server")
    server = spawn_scope_server(root, env=env, test_pipelines=True)
    try:
        server.wait_ready(60)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(server) -> Iterator[ScopeClient]:
    with ScopeClient(server.url) as client:
        client.ensure_pipeline(PATTERN, timeout=60)
        yield client


@pytest.fixture(autouse=True)
def no_sessions_left(client):
    """Every test starts with a free server: the sessions of the one before have ended."""
    wait_until_no_sessions(client)
    yield


def wait_until_no_sessions(client: ScopeClient) -> None:
    deadline = time.monotonic() + 30
    while listed := client.sessions():
        assert time.monotonic() < deadline, f"sessions still listed: {[s.id for s in listed]}"
        time.sleep(0.1)


def listed(client: ScopeClient, session_id: str) -> dict | None:
    """The session as ``GET webrtc/sessions`` answers it (raw JSON: every stats field)."""
    sessions = client.request("GET", "api/v1/webrtc/sessions").json()["sessions"]
    return next((s for s in sessions if s["id"] == session_id), None)


def corner(frame: np.ndarray) -> float:
    """The chunk counter of the test pattern (its top-left 8x8 block)."""
    return float(frame[1:7, 1:7].mean())


async def raw_socket(server: ScopeServer, url: str, headers: dict[str, str] | None = None) -> WebSocketClientConnection:
    return await websocket_connect(HTTPRequest(socket_url(server.url + "/", url), headers=headers or {}, request_timeout=15))


async def refused_status(server: ScopeServer, url: str, headers: dict[str, str] | None = None) -> int:
    """The status of a handshake the server must refuse."""
    with pytest.raises(HTTPClientError) as refused:
        socket = await raw_socket(server, url, headers)
        socket.close()
    return refused.value.code


# -- Streams over the WebSocket ------------------------------------------------------------


async def test_text_stream_frames_change_and_updates_reach_the_session(client):
    async with client.stream("a red fox", pipeline=PATTERN, transport="websocket") as stream:
        assert stream.transport == "websocket"
        assert stream.encoding == client.transports().encodings[0] == "h264"
        frames = await stream.read(12, timeout=30)
        assert frames.shape == (12, 64, 96, 3) and frames.dtype == np.uint8
        assert abs(float(frames[:, 16:, 16:].mean()) - prompt_level({"prompts": [{"text": "a red fox"}]})) < 6
        assert len({round(corner(frame)) for frame in frames}) > 2, "the chunk counter does not move"

        info = listed(client, stream.session_id)
        assert info["stats"]["transport"] == "websocket" and info["input_mode"] == "text"
        stats = await stream.wait_message("stats", timeout=30)
        assert stats["transport"] == "websocket" and stats["frames_sent"] > 0
        assert stats["bytes_per_s"] is None or stats["bytes_per_s"] >= 0

        stream.update(prompts="a blue whale", noise_scale=0.5)
        whale = [{"text": "a blue whale", "weight": 1.0}]
        await wait_until(lambda s: s["parameters"].get("prompts") == whale and s["parameters"].get("noise_scale") == 0.5,
                         what="the update in the session's parameters", value=lambda: listed(client, stream.session_id))
        level = prompt_level({"prompts": whale})
        await wait_until(lambda frame: abs(float(frame[0, 16:, 16:].mean()) - level) < 6,
                         what="frames of the new prompt", value=lambda: stream.read(1, timeout=30))

        stream.update(paused=True)
        await wait_until(lambda s: s["stats"]["state"] == "paused", what="the session paused",
                         value=lambda: listed(client, stream.session_id))
        stream.update(paused=False)
        await wait_until(lambda s: s["stats"]["state"] == "streaming", what="the session streaming again",
                         value=lambda: listed(client, stream.session_id))
        assert not [m for m in stream.messages if m.get("type") == "parameters_rejected"]
        session_id = stream.session_id
    assert listed(client, session_id) is None, "leaving the block deletes the session"
    deadline = time.monotonic() + 5
    while (left := asyncio.all_tasks() - {asyncio.current_task()}) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not left, f"the stream left tasks behind: {left}"


async def test_video_input_comes_back_from_passthrough(client):
    async with client.stream(input="pattern", pipeline="passthrough", transport="websocket") as stream:
        received = await stream.read(20, timeout=30)
        assert stream.info().input_mode == "video"
        assert listed(client, stream.session_id)["stats"]["input_frames_received"] > 0
    indices = [read_index(frame) for frame in received]
    assert indices == sorted(indices) and len(set(indices)) > 5, indices
    # The picture is the one sent with that index, through JPEG and H.264 (block means).
    errors = [float(np.mean((blocks(frame) - blocks(pattern_frame(index))) ** 2)) for frame, index in zip(received, indices)]
    assert max(errors) < 60, errors


async def test_records_on_both_sides(client, tmp_path):
    async with client.stream("a red fox", pipeline=PATTERN, transport="websocket") as stream:
        started = await asyncio.to_thread(client.start_server_recording)  # this client's live stream
        assert started["session_id"] == stream.session_id
        clip = await stream.record(tmp_path / "clip.mp4", frames=5, timeout=30)
        await stream.read(6, timeout=30)
        stopped = await asyncio.to_thread(client.stop_server_recording)
    assert (clip.frames, clip.width, clip.height) == (5, 96, 64)
    with av.open(str(clip.path)) as container:
        assert len(list(container.decode(video=0))) == 5
    assert stopped["state"] == "stopped" and stopped["frames"] > 0


async def test_delete_ends_the_session_and_closes_the_socket(client):
    async with client.stream("a red fox", pipeline=PATTERN, transport="websocket") as stream:
        await stream.read(2, timeout=30)
        reading = asyncio.ensure_future(stream.read(10_000, timeout=60))
        await asyncio.to_thread(client.delete_session, stream.session_id)
        with pytest.raises(StreamClosed, match="stopped"):
            await reading
        assert not stream.live and stream._peer.connection_state == "closed"
        assert listed(client, stream.session_id) is None


async def test_one_socket_per_session_and_unknown_sessions(server, client):
    async with client.stream("a red fox", pipeline=PATTERN, transport="websocket") as stream:
        path = f"api/v1/websocket/{stream.session_id}"
        assert await refused_status(server, path) == 409
        await stream.read(2, timeout=30)  # the first socket streams on
    assert await refused_status(server, path) == 404, "an ended session"
    assert await refused_status(server, "api/v1/websocket/no-such-session") == 404


async def test_websocket_sessions_count_against_max_sessions(client):
    async with client.stream("a red fox", pipeline=PATTERN, transport="websocket") as first, \
            client.stream("a red fox", pipeline=PATTERN) as second:
        assert (first.transport, second.transport) == ("websocket", "webrtc")
        with pytest.raises(ScopeApiError) as full:
            client.websocket_offer({"prompts": [{"text": "a"}]}, pipeline=PATTERN)
        assert full.value.status == 503
        with pytest.raises(ScopeApiError) as full_webrtc:
            await client.stream("a red fox", pipeline=PATTERN).open()
        assert full_webrtc.value.status == 503
    wait_until_no_sessions(client)
    async with client.stream("a red fox", pipeline=PATTERN, transport="websocket") as again:
        assert (await again.read(1, timeout=30)).shape == (1, 64, 96, 3)


def test_unknown_encodings_are_refused_naming_them(client):
    with pytest.raises(ScopeApiError) as refused:
        client.websocket_offer({"prompts": [{"text": "a"}]}, pipeline=PATTERN, encodings=["nope"])
    assert refused.value.status == 422
    assert any(field.endswith("encodings") for field in refused.value.fields), refused.value.detail
    assert client.sessions() == []


async def test_a_client_that_never_acks_gets_six_frames_then_is_closed(server, client):
    answer = client.websocket_offer({"prompts": [{"text": "a red fox"}]}, pipeline=PATTERN, encodings=["h264"])
    assert answer.encoding == "h264" and answer.url == f"api/v1/websocket/{answer.sessionId}"
    socket = await raw_socket(server, answer.url)
    texts: list[dict] = []
    frames: list[bytes] = []

    async def receive() -> None:
        while (message := await socket.read_message()) is not None:
            if isinstance(message, bytes):
                frames.append(message)
            else:
                texts.append(json.loads(message))

    receiving = asyncio.ensure_future(receive())
    try:
        # The server goes on generating, and drops what it cannot send while the session lives.
        info = await wait_until(lambda s: s is not None and s["stats"]["link_frames_dropped"] >= 10,
                                what="frames dropped for the link", value=lambda: listed(client, answer.sessionId))
        assert len(frames) == MAX_AHEAD, f"{len(frames)} frames sent without an ack"
        assert info["stats"]["frames_sent"] == MAX_AHEAD
        dropped = info["stats"]["link_frames_dropped"]
        await wait_until(lambda s: s is None or s["stats"]["link_frames_dropped"] > dropped,
                         what="more frames dropped", value=lambda: listed(client, answer.sessionId))
        # disconnect_timeout without an ack: the session closes, and its socket with it.
        await asyncio.wait_for(receiving, DISCONNECT_TIMEOUT_S + 30)
    finally:
        receiving.cancel()
        socket.close()
    assert texts[0] == {"type": "session", "sessionId": answer.sessionId, "transport": "websocket", "encoding": "h264"}
    assert listed(client, answer.sessionId) is None
    assert len(frames) == MAX_AHEAD

    headers = [FRAME_HEADER.unpack_from(frame) for frame in frames]
    assert [h[0] for h in headers] == [1] * MAX_AHEAD and [h[3] for h in headers] == list(range(MAX_AHEAD))
    assert headers[0][1] & 1, "the first frame is a key frame"
    assert all(abs(h[4] - time.time() * 1000) < 120_000 for h in headers), "wall-clock milliseconds"
    decoder = av.CodecContext.create("h264", "r")
    pictures = [p.to_ndarray(format="rgb24") for f in frames for p in decoder.decode(av.Packet(f[FRAME_HEADER.size:]))]
    assert len(pictures) == MAX_AHEAD and {p.shape for p in pictures} == {(64, 96, 3)}
    assert abs(float(pictures[0][16:, 16:].mean()) - prompt_level({"prompts": [{"text": "a red fox"}]})) < 6


async def test_auto_takes_webrtc_when_it_connects(client):
    async with client.stream("a red fox", pipeline=PATTERN, transport="auto") as stream:
        assert (stream.transport, stream.encoding) == ("webrtc", None)
        assert (await stream.read(2, timeout=30)).shape == (2, 64, 96, 3)
        assert listed(client, stream.session_id)["stats"]["transport"] == "webrtc"


async def test_auto_falls_back_to_the_websocket_when_webrtc_does_not_connect_in_time(tmp_path):
    # No peer connection is up a millisecond after its answer: every "auto" stream falls back, and
    # the WebRTC session it gave up is deleted at once rather than left to connect beside it.
    env = {"DAYDREAM_SCOPE_WEBRTC_FALLBACK_TIMEOUT": "0.001", "DAYDREAM_SCOPE_MAX_PENDING_SESSIONS": "1"}
    with running_scope_server(tmp_path, env=env, test_pipelines=True) as server, ScopeClient(server.url) as client:
        assert client.transports().webrtc_fallback_timeout == 0.001
        async with client.stream("a red fox", pipeline=PATTERN, transport="auto") as stream:
            assert (stream.transport, stream.encoding) == ("websocket", "h264")
            assert (await stream.read(30, timeout=30)).shape == (30, 64, 96, 3)
            sessions = client.request("GET", "api/v1/webrtc/sessions").json()["sessions"]
            assert [(s["id"], s["stats"]["transport"]) for s in sessions] == [(stream.session_id, "websocket")]


# -- Auth of the handshake -----------------------------------------------------------------


async def test_open_api_handshake_follows_the_origin_policy(server, client):
    answer = client.websocket_offer({"prompts": [{"text": "a"}]}, pipeline=PATTERN)
    with server.client() as http:
        assert http.get("/health", headers={"Origin": FOREIGN}).status_code == 403
        assert http.get("/health", headers={"Origin": LOCAL_PAGE}).status_code == 200
    assert await refused_status(server, answer.url, {"Origin": FOREIGN}) == 403
    socket = await raw_socket(server, answer.url, {"Origin": LOCAL_PAGE})
    try:
        assert json.loads(await socket.read_message())["type"] == "session"
    finally:
        socket.close()


@pytest.mark.slow
async def test_lab_handshake_needs_the_token(lab_server_process):
    lab = lab_server_process
    with ScopeClient(lab.url, token=TEST_TOKEN) as client:
        client.ensure_pipeline("passthrough", timeout=60)

        def new_session() -> str:
            return socket_url(lab.url, client.websocket_offer(sends_video=True).url)

        url = new_session()
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(HTTPRequest(url, request_timeout=15))
        assert refused.value.code == 403
        with pytest.raises(HTTPClientError) as wrong:
            await websocket_connect(HTTPRequest(url, headers={"Authorization": "token not-the-token"}, request_timeout=15))
        assert wrong.value.code == 403
        # Jupyter's token as a header (what the client sends) or in the query (what a page can send).
        requests = (lambda: HTTPRequest(url, headers=client.auth_headers, request_timeout=15),
                    lambda: HTTPRequest(f"{new_session()}?token={TEST_TOKEN}", request_timeout=15))
        for request in requests:
            socket = await websocket_connect(request())
            try:
                assert json.loads(await socket.read_message())["type"] == "session"
            finally:
                socket.close()
            await wait_until(lambda: client.sessions() == [], what="closing the socket ends the session")
