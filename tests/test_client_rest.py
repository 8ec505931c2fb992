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

from scope.client import ScopeApiError, ScopeClient
from scope.client.peer import ScopePeer
from tests.pipelines import PatternPipeline
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
