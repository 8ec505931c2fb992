"""``ScopeClient.unload_pipeline`` and ``add_ice_candidates`` against a real in-process server.

The server runs in this process, so a test can look at a session's own peer connection and see
that a trickled candidate reached it. The client is synchronous: its calls run in a thread
while the server keeps the event loop.
"""

from __future__ import annotations

import asyncio
import re
import threading

import pytest

from scope.client import PipelineLoadError, ScopeApiError, ScopeClient
from scope.client.peer import ScopePeer
from scope.streaming.pattern import read_index
from tests.pipelines import PatternPipeline, prompt_level
from tests.polling import wait_until

pytestmark = pytest.mark.usefixtures("jp_serverapp")

#: The discard port: no candidate the peers gather uses it, so a candidate on it was trickled.
TRICKLED = ("127.0.0.1", 9)


@pytest.fixture
def client(scope_url):
    with ScopeClient(scope_url, token="") as client:  # the in-process server's API is open
        yield client


def run(method, *args):
    """A client call, off the event loop the server answers on."""
    return asyncio.to_thread(method, *args)


async def loaded(client: ScopeClient, pipeline_id: str):
    return await wait_until(
        lambda status: status.status == "loaded" and status.pipeline_id == pipeline_id,
        value=lambda: run(client.pipeline_status),
        what=f"{pipeline_id} to be loaded",
    )


def ice_connection(pc):
    """The aioice connection of ``pc``'s (bundled) transport."""
    return pc.getTransceivers()[0].sender.transport.transport._connection


def remote_candidates(pc) -> set[tuple[str, int]]:
    return {(c.host, c.port) for c in ice_connection(pc).remote_candidates}


async def test_unload_pipeline_returns_the_server_to_not_loaded(client, services):
    await run(client.load_pipeline, "passthrough")
    await loaded(client, "passthrough")
    assert services.manager.pipeline is not None

    reply = await run(client.unload_pipeline)
    assert reply.message == "Pipeline unloaded"
    status = await run(client.pipeline_status)  # the reply comes once the weights are freed
    assert (status.status, status.pipeline_id, status.load_params) == ("not_loaded", None, None)
    assert services.manager.pipeline is None


@pytest.mark.usefixtures("test_pipelines")
async def test_unload_pipeline_during_a_load_raises_the_servers_409(client):
    PatternPipeline.gate = threading.Event()  # holds the load until the test has tried to unload
    await run(client.load_pipeline, "test-pattern")
    await wait_until(lambda status: status.status == "loading", value=lambda: run(client.pipeline_status), what="a load in progress")
    with pytest.raises(ScopeApiError) as refused:
        await run(client.unload_pipeline)
    assert refused.value.status == 409 and "loading" in str(refused.value.detail)

    PatternPipeline.gate.set()
    await loaded(client, "test-pattern")
    await run(client.unload_pipeline)
    assert (await run(client.pipeline_status)).status == "not_loaded"


async def test_add_ice_candidates_reach_the_sessions_peer_and_bad_ones_get_the_servers_4xx(client, services):
    await run(client.load_pipeline, "passthrough")
    await loaded(client, "passthrough")
    peer = ScopePeer(recvonly=True)
    try:
        offer = await peer.create_offer()
        # As a browser that trickles: more candidates may follow the offer's.
        answer = await run(client.offer, offer["sdp"].replace("a=end-of-candidates\r\n", ""))
        session = services.sessions.sessions[answer.sessionId]
        assert TRICKLED not in remote_candidates(session.pc)
        assert not ice_connection(session.pc)._remote_candidates_end
        mid = re.search(r"a=mid:(\S+)", offer["sdp"]).group(1)

        with pytest.raises(ScopeApiError) as unparsable:
            await run(client.add_ice_candidates, answer.sessionId, [{"candidate": "candidate:garbage", "sdpMid": mid}])
        assert unparsable.value.status == 400 and "Invalid ICE candidate" in str(unparsable.value.detail)
        with pytest.raises(ScopeApiError) as unplaced:
            await run(client.add_ice_candidates, answer.sessionId, [{"candidate": f"candidate:9 1 udp 2130706431 {TRICKLED[0]} {TRICKLED[1]} typ host"}])
        assert unplaced.value.status == 400 and "sdpMid" in str(unplaced.value.detail)
        with pytest.raises(ScopeApiError) as unknown:
            await run(client.add_ice_candidates, "00000000-0000-0000-0000-000000000000", [{"candidate": ""}])
        assert unknown.value.status == 404

        host, port = TRICKLED
        await run(client.add_ice_candidates, answer.sessionId, [
            {"candidate": f"candidate:9 1 udp 2130706431 {host} {port} typ host", "sdpMid": mid, "sdpMLineIndex": 0},
            {"candidate": "", "sdpMid": mid, "sdpMLineIndex": 0},  # end of candidates
        ])
        # The server adds trickled candidates in the background: wait for this one to arrive.
        await wait_until(lambda: TRICKLED in remote_candidates(session.pc), what="the trickled candidate on the server's peer")
        await wait_until(lambda: ice_connection(session.pc)._remote_candidates_end, what="the end of the candidates")
        await run(client.delete_session, answer.sessionId)
    finally:
        await peer.close()


def centre_level(frames) -> float:
    """The mean grey level of the frames' centres, where ``test-pattern`` paints its prompt's level."""
    height, width = frames.shape[1:3]
    return float(frames[:, height // 4: 3 * height // 4, width // 2:].mean())


@pytest.mark.usefixtures("test_pipelines")
async def test_each_client_streams_from_the_pipeline_it_loaded(scope_url):
    """Two clients, two pipelines: a stream keeps its client's pipeline after another client's
    load made another one current, and the client's waits follow its own pipeline too."""
    with ScopeClient(scope_url, token="") as fox, ScopeClient(scope_url, token="") as relay:
        # A load that fails, then another client's load: the wait is about this client's pipeline,
        # and says why it failed (its entry keeps the error once another pipeline is current).
        await run(fox.load_pipeline, "test-pattern", {"fail_load": True})
        await wait_until(lambda s: s.status == "error", value=lambda: run(fox.pipeline_status), what="the failed load")
        await run(relay.ensure_pipeline, "passthrough")
        with pytest.raises(PipelineLoadError, match="test-pattern.*weights are corrupt"):
            await run(fox.wait_for_pipeline)

        await run(fox.ensure_pipeline, "test-pattern", {"height": 32, "width": 48})
        # Its pipeline as the server normalised it: a failing load of the same size by another
        # client (now current, holding everything fox asked for) is not fox's.
        assert fox.pipeline.load_params["seed"] == 42 and not fox.pipeline.load_params["fail_load"]
        await run(relay.load_pipeline, "test-pattern", {"height": 32, "width": 48, "fail_load": True})
        with pytest.raises(PipelineLoadError, match="weights are corrupt"):
            await run(relay.wait_for_pipeline)
        assert (await run(fox.wait_for_pipeline)).status == "error"  # the server's: the current one failed
        await run(relay.ensure_pipeline, "passthrough")  # current again: it loaded last
        assert (await run(fox.pipeline_status)).pipeline_id == "passthrough"
        async with fox.stream("a red fox") as text, relay.stream(input="pattern") as video:
            sessions = {info.id: info for info in await run(fox.sessions)}
            assert (sessions[text.session_id].pipeline_id, sessions[text.session_id].input_mode) == ("test-pattern", "text")
            assert sessions[text.session_id].load_params["width"] == 48
            assert sessions[video.session_id].pipeline_id == "passthrough"
            # Both stream at once, each its own pipeline's pictures.
            foxes, patterns = await asyncio.gather(text.read(6, timeout=30), video.read(6, timeout=30))
            assert foxes.shape == (6, 32, 48, 3)
            assert abs(centre_level(foxes) - prompt_level({"prompts": [{"text": "a red fox"}]})) < 12
            indices = [read_index(frame) for frame in patterns]
            assert indices == sorted(indices) and len(set(indices)) > 2, indices
            # The spec's way: no pipeline named, the current one.
            async with fox.stream(input="pattern", pipeline=None) as current:
                assert (await run(current.info)).pipeline_id == "passthrough"

        # A pipeline named that is not loaded: the offer loads it into the pool, then it streams.
        async with relay.stream("a blue bird", pipeline=("test-pattern", {"height": 16, "width": 16})) as named:
            assert (await named.read(2, timeout=30)).shape == (2, 16, 16, 3)
