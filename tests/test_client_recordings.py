"""Server-side recordings through ``ScopeClient``, against a real ``daydream-scope`` on loopback."""

from __future__ import annotations

import asyncio
import json

import av
import pytest

from scope.client import ScopeApiError, ScopeClient
from tests._subprocess_server import running_scope_server
from tests.polling import wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_scope_server(tmp_path_factory.mktemp("client-recordings")) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    with ScopeClient(server.url) as client:
        client.ensure_pipeline("passthrough", timeout=60)
        yield client


def decoded_frames(path, kind: str = "video") -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(getattr(container.streams, kind)[0]))


async def recorded_frames(client: ScopeClient, session_id: str) -> int:
    """Frames the running recording of ``session_id`` holds, as the listing says."""
    listing = await asyncio.to_thread(client.server_recordings)
    return next((info["frames"] for info in listing if info["session_id"] == session_id), 0)


async def test_start_stop_list_and_download_round_trip(client, tmp_path):
    async with client.stream(input="pattern") as stream:
        await stream.read(3, timeout=30)
        started = await asyncio.to_thread(client.start_server_recording)  # the client's own stream
        assert started["session_id"] == stream.session_id and started["state"] == "recording"
        assert started["pipeline_id"] == "passthrough" and started["video_mode"] is True
        await wait_until(lambda frames: frames >= 10, what="10 recorded frames",
                         value=lambda: recorded_frames(client, stream.session_id))
        stopped = await asyncio.to_thread(client.stop_server_recording, stream.session_id)
    assert stopped["state"] == "stopped" and stopped["stop_reason"] == "requested"
    assert stopped["frames"] >= 10 and stopped["duration_s"] > 0 and stopped["bytes"] > 0

    [listed] = [info for info in client.server_recordings() if info["session_id"] == stopped["session_id"]]
    assert listed["state"] == "stopped" and listed["frames"] == stopped["frames"]

    video = client.download_server_recording(stopped["session_id"], tmp_path / "clip.mp4")
    assert video == tmp_path / "clip.mp4"
    assert decoded_frames(video) == stopped["frames"]
    # A folder: the file is named after the session, as the server's Content-Disposition names it.
    timeline = client.download_server_recording(stopped["session_id"], tmp_path, what="timeline")
    assert timeline == tmp_path / f"{stopped['session_id']}-timeline.json"
    document = json.loads(timeline.read_text())
    assert document["format"] == "scope-timeline/1" and document["pipeline_id"] == "passthrough"
    assert sum(chunk["frames"] for chunk in document["chunks"]) == stopped["frames"]
    provenance = json.loads(client.download_server_recording(stopped["session_id"], tmp_path, "provenance").read_text())
    assert provenance, "provenance must say what produced the frames"
    assert decoded_frames(client.download_server_recording(stopped["session_id"], tmp_path, "input")) > 0
    assert not list(tmp_path.glob("*.partial")), "no half-written file may be left"


async def test_refusals_raise_with_the_servers_message(client, tmp_path):
    with pytest.raises(ValueError, match="no live stream"):
        client.start_server_recording()
    async with client.stream(input="pattern") as stream:
        await stream.read(1, timeout=30)
        with pytest.raises(ScopeApiError) as not_recording:
            await asyncio.to_thread(client.stop_server_recording)
        assert not_recording.value.status == 409
        assert f"Session {stream.session_id} is not recording" in str(not_recording.value)

        await asyncio.to_thread(client.start_server_recording)
        with pytest.raises(ScopeApiError) as twice:
            await asyncio.to_thread(client.start_server_recording)
        assert twice.value.status == 409 and "already recording" in twice.value.detail
        await asyncio.to_thread(client.stop_server_recording)
        with pytest.raises(ScopeApiError) as again:
            await asyncio.to_thread(client.start_server_recording)
        assert again.value.status == 409 and "finished recording" in again.value.detail
        async with client.stream(input="pattern") as other:
            with pytest.raises(ValueError, match="2 live streams"):
                client.start_server_recording()
    assert other.session_id and not stream.live
    with pytest.raises(ValueError, match="no live stream"):  # closed streams are not the client's any more
        client.start_server_recording()

    unknown = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(ScopeApiError) as gone:
        client.start_server_recording(unknown)
    assert gone.value.status == 404 and unknown in gone.value.detail
    with pytest.raises(ScopeApiError) as missing:
        client.download_server_recording(unknown, tmp_path / "nothing.mp4")
    assert missing.value.status == 404 and "No recording of session" in missing.value.detail
    assert list(tmp_path.iterdir()) == [], "a refused download leaves no file"
    with pytest.raises(ValueError, match="'video', 'timeline'"):
        client.download_server_recording(unknown, tmp_path / "x", what="audio")
