"""The Python client against a real ``daydream-scope`` (and a real ``jupyter lab``) on loopback."""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
import pytest

from scope.client import PipelineLoadError, ScopeApiError, ScopeClient
from scope.server_ext.api_models import Asset, HardwareInfo, HealthResponse, IceServer, SessionStats
from scope.streaming.pattern import pattern_frame, read_index
from tests._subprocess_server import TEST_TOKEN, running_scope_server
from tests.polling import wait_until
from tests.test_longlive_server import blocks

SMALL = {"height": 128, "width": 128, "seed": 3}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server with an empty models directory and no ``--synthetic``: the client must provide the weights."""
    with running_scope_server(tmp_path_factory.mktemp("client-server")) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    with ScopeClient(server.url) as client:
        yield client


@pytest.fixture
def longlive(client) -> ScopeClient:
    client.ensure_pipeline("longlive", SMALL, synthetic=True, timeout=120)
    return client


@pytest.fixture
def passthrough(client) -> ScopeClient:
    client.ensure_pipeline("passthrough", timeout=60)
    return client


def nearest_mse(frame: np.ndarray, references: np.ndarray) -> float:
    """Distance to the most similar reference (streams may be shifted by a frame or two)."""
    return min(float(np.mean((blocks(frame) - blocks(ref)) ** 2)) for ref in references)


def test_rest_calls_answer_typed_models(client, tmp_path):
    assert isinstance(client.health(), HealthResponse) and client.health().status == "healthy"
    hardware = client.hardware_info()
    assert isinstance(hardware, HardwareInfo) and hardware.ram_gb > 0
    schemas = client.pipeline_schemas()
    assert {"longlive", "passthrough"} <= set(schemas)
    assert schemas["longlive"]["load_params_schema"]["properties"]["height"]["default"] == 320
    assert client.models_status("passthrough").downloaded is True
    assert all(isinstance(server, IceServer) for server in client.ice_servers())
    assert client.sessions() == [] and client.lora_files() == []
    assert client.openapi()["info"]["title"] == "Scope"
    assert client.current_log().strip()

    uploaded = client.upload_asset(PNG, "dot.png")
    assert isinstance(uploaded, Asset) and (uploaded.name, uploaded.type) == ("dot", "image")
    source = tmp_path / "again.png"
    source.write_bytes(PNG[::-1])
    assert client.upload_asset(source).name == "again"
    assert {asset.name for asset in client.assets("image")} == {"dot", "again"}
    assert client.assets("video") == []
    assert client.asset_bytes("dot.png") == PNG
    assert client.asset_bytes(uploaded) == PNG  # by its absolute path on the server


def test_errors_raise_scope_api_error_naming_the_field(client):
    with pytest.raises(ScopeApiError) as bad_height:
        client.load_pipeline("longlive", {"height": 330})
    assert bad_height.value.status == 422
    assert bad_height.value.fields == ["body.load_params.height"]
    assert "body.load_params.height" in str(bad_height.value) and "422" in str(bad_height.value)
    with pytest.raises(ScopeApiError) as unknown:
        client.models_status("no-such-pipeline")
    assert unknown.value.status == 422 and unknown.value.fields == ["query.pipeline_id"]
    assert "Known pipelines" in unknown.value.detail[0]["msg"]
    with pytest.raises(ScopeApiError) as missing:
        client.delete_session("no-such-session")
    assert missing.value.status == 404 and isinstance(missing.value.detail, str)
    with pytest.raises(ScopeApiError) as wrong_type:
        client.upload_asset(b"MZ", "tool.exe")
    assert wrong_type.value.status == 400 and "Allowed types" in wrong_type.value.detail
    # A refusal over the pool's memory budget says what holds the memory.
    holders = [{"pipeline_id": "passthrough", "load_params": {}, "sessions": ["s1"], "held_bytes": 3 * 2**20}]
    over = ScopeApiError(409, [{"loc": ["body", "pipeline_id"], "msg": "Not enough memory.", "type": "memory_budget", "holders": holders}])
    assert str(over) == "409: body.pipeline_id: Not enough memory. Held by: passthrough (1 session, 3.0 MiB)."


def test_ensure_pipeline_writes_synthetic_weights_where_a_plain_load_fails(client):
    assert client.models_status("longlive").downloaded is False, "this module's server starts without weights"
    client.load_pipeline("longlive", SMALL)
    with pytest.raises(PipelineLoadError) as failed:
        client.wait_for_pipeline("loaded", timeout=60)
    assert "missing" in failed.value.error and "missing" in str(failed.value)

    status = client.ensure_pipeline("longlive", SMALL, synthetic=True, timeout=120)
    assert status.status == "loaded" and status.synthetic is True
    assert status.pipeline_id == "longlive" and status.load_params["height"] == 128
    models = client.models_status("longlive")
    assert models.downloaded is True and models.synthetic is True
    # The same status, but for the budget, which follows the machine's free memory.
    again = client.ensure_pipeline("longlive", SMALL, synthetic=True, timeout=60)
    assert again.model_dump(exclude={"memory_budget_bytes"}) == status.model_dump(exclude={"memory_budget_bytes"})
    assert "already" in client.load_pipeline("longlive", SMALL).message


async def test_stream_reads_frames_that_change_over_time(longlive, recwarn):
    async with longlive.stream("a red fox") as stream:
        assert [info.id for info in longlive.sessions()] == [stream.session_id]
        frames = await stream.read(12, timeout=60)
        assert frames.shape == (12, 128, 128, 3) and frames.dtype == np.uint8
        assert len({frame.tobytes() for frame in frames}) > 6, "the picture does not move"
        stats = await stream.wait_message("stats", timeout=30)
        assert stats["synthetic"] is True and stats["pipeline_id"] == "longlive"
        assert isinstance(stream.stats(), SessionStats)
        info = stream.info()
        assert info.parameters["prompts"] == [{"text": "a red fox", "weight": 1.0}]
    assert longlive.sessions() == [], "leaving the block deletes the session"
    deadline = time.monotonic() + 5
    while (left := asyncio.all_tasks() - {asyncio.current_task()}) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not left, f"the stream left tasks behind: {left}"
    assert [str(w.message) for w in recwarn] == []


async def test_update_is_applied_and_changes_the_picture(longlive):
    # The same seed and prompt from a reset cache give the same pictures: `reference` is what the
    # stream would show without the update.
    async with longlive.stream("a red fox", reset_cache=True) as stream:
        reference = await stream.read(90, timeout=90)
    async with longlive.stream(["a red fox"], parameters={"reset_cache": True}) as stream:
        before = await stream.read(10, timeout=60)
        stream.update(prompts=[{"text": "a blue whale"}])
        deadline = time.monotonic() + 30
        while stream.info().parameters["prompts"] != [{"text": "a blue whale", "weight": 1.0}]:
            assert time.monotonic() < deadline, stream.info().parameters
            await asyncio.sleep(0.05)
        after = await stream.read(45, timeout=90)
        assert not [m for m in stream.messages if m.get("type") == "parameters_rejected"]
    assert max(nearest_mse(frame, reference) for frame in before[:5]) < 100, "the reference does not match"
    assert min(nearest_mse(frame, reference) for frame in after[-15:]) > 150, "the new prompt changed nothing"


async def test_update_needs_an_open_channel(longlive):
    stream = longlive.stream("a red fox")
    with pytest.raises(RuntimeError, match="not open"):
        stream.update(prompts="a blue whale")
    async with stream:
        assert stream.info().parameters.get("noise_scale") != 0.5
        stream.update(noise_scale=0.5)
        await wait_until(lambda parameters: parameters.get("noise_scale") == 0.5, what="noise_scale 0.5 in the session",
                         value=lambda: stream.info().parameters)
    with pytest.raises(RuntimeError, match="not open"):
        stream.update(prompts="a blue whale")


async def test_record_writes_an_mp4_that_reads_back(longlive, tmp_path):
    async with longlive.stream("a red fox") as stream:
        await stream.read(3, timeout=60)  # playing at its pace before the recording starts
        clip = await stream.record(tmp_path / "clip.mp4", seconds=2, timeout=60)
        served_fps = stream.stats().fps
        five = await stream.record(tmp_path / "five.mp4", frames=5, timeout=60)
    assert (clip.width, clip.height) == (128, 128) and five.frames == 5
    times = {}
    for info in (clip, five):
        with av.open(str(info.path)) as container:
            video = container.streams.video[0]
            assert video.codec_context.name in ("h264", "mpeg4")
            decoded = [(frame.time, frame.to_ndarray(format="rgb24")) for frame in container.decode(video)]
        assert len(decoded) == info.frames
        assert {frame.shape for _, frame in decoded} == {(info.height, info.width, 3)}
        times[info.path.name] = [t for t, _ in decoded]
    # The file's own timestamps (arrival times) lie within the two seconds and give its rate; it
    # holds as many frames as the server sent in two seconds (generous bounds: chunks come in
    # bursts, and a busy machine makes them late). A frame that arrived just under 2 s after the
    # first is stamped 2.000 (the file counts milliseconds).
    stamps = times["clip.mp4"]
    span = stamps[-1] - stamps[0]
    assert all(a < b for a, b in zip(stamps, stamps[1:])) and span <= 2.0, stamps
    assert clip.fps == pytest.approx((clip.frames - 1) / span, rel=0.05), (clip, stamps)
    expected = 2.0 * served_fps
    assert 0.5 * expected <= clip.frames <= 2 * expected + 1, (clip.frames, served_fps, stamps)


async def test_pattern_input_comes_back_from_passthrough(passthrough):
    async with passthrough.stream(input="pattern") as stream:
        assert stream.info().input_mode == "video"
        indices = [read_index(frame) for frame in await stream.read(20, timeout=30)]
    assert indices == sorted(indices) and len(set(indices)) > 5, indices


async def test_array_input_comes_back_from_passthrough(passthrough):
    colours = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)], dtype=np.uint8)
    frames = np.broadcast_to(colours[:, None, None, :], (4, 48, 64, 3)).copy()
    async with passthrough.stream(input=list(frames)) as stream:
        received = await stream.read(12, timeout=30)
    assert received.shape == (12, 48, 64, 3)
    nearest = [int(np.argmin(np.abs(colours.astype(float) - f.reshape(-1, 3).mean(0)).sum(1))) for f in received]
    distances = [float(np.abs(colours[i].astype(float) - f.reshape(-1, 3).mean(0)).max()) for i, f in zip(nearest, received)]
    assert max(distances) < 16 and len(set(nearest)) >= 3, (nearest, distances)


def write_pattern_video(path, count: int, fps: int = 30) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(pattern_frame(index), format="rgb24")
            frame.pts, frame.time_base = index, fractions.Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


async def test_video_file_input_loops_through_passthrough(passthrough, tmp_path):
    path = tmp_path / "pattern.mp4"
    write_pattern_video(path, count=15)
    async with passthrough.stream(input=path) as stream:
        indices = [read_index(frame) for frame in await stream.read(40, timeout=30)]
    assert set(indices) <= set(range(15)) and len(set(indices)) > 8, indices
    assert any(later < earlier for earlier, later in zip(indices, indices[1:])), f"the file never looped: {indices}"


@pytest.mark.slow
async def test_client_under_jupyter_lab_finds_the_token_itself(lab_server_process, monkeypatch):
    lab = lab_server_process
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(lab.root / "jupyter-runtime"))
    with ScopeClient(lab.url.replace("127.0.0.1", "localhost")) as client:
        assert client.token == TEST_TOKEN
        assert client.health().status == "healthy"
        client.ensure_pipeline("passthrough", timeout=60)
        async with client.stream(input="pattern") as stream:
            frames = await stream.read(5, timeout=30)
        assert frames.shape == (5, 240, 320, 3)
        assert client.sessions() == []
    with ScopeClient(lab.url, token="not-the-token") as stranger, pytest.raises(ScopeApiError) as denied:
        stranger.health()
    assert denied.value.status == 403
