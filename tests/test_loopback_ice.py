"""The test suite's WebRTC stays on loopback: servers and peers gather 127.0.0.1 candidates only,
remote candidates elsewhere are ignored, and sessions (aiortc and Chromium) stream over 127.0.0.1.

Before, aioice offered a host candidate on every interface except loopback, so every test
session sent its ICE checks and media over the machine's other interfaces.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from aioice import ice as aioice_ice
from playwright import sync_api

from scope.client.peer import ScopePeer
from scope.streaming import host_addresses
from scope.streaming.pattern import PatternTrack
from tests import test_browser
from tests.chromium import CHROMIUM_ARGS, launch_chromium, new_page
from tests.chromium import wait_until as chromium_wait_until
from tests.conftest import wait_for_status
from tests.polling import wait_until
from tests.rtc import connected
from tests.servers import ScopeServer

CANDIDATE_ADDRESS = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) ", re.M)
FOREIGN = "192.0.2.7"  # TEST-NET-1: never a real peer
#: A loopback port no test listens on (the discard service): a remote candidate that is never used.
MARKER_PORT = 9


def candidate_addresses(sdp: str) -> list[str]:
    return CANDIDATE_ADDRESS.findall(sdp)


def nominated_addresses(pc) -> list[tuple[str, str]]:
    """(local, remote) host of each nominated ICE pair of ``pc``'s (bundled) transport."""
    connection = pc.getTransceivers()[0].sender.transport.transport._connection
    return [(pair.local_addr[0], pair.remote_addr[0]) for pair in connection._nominated.values()]


def remote_hosts(pc) -> list[str]:
    return [c.host for c in pc.getTransceivers()[0].sender.transport.transport._connection.remote_candidates]


# -- the restriction itself ---------------------------------------------------------------------


def test_the_test_process_gathers_on_loopback_only():
    assert host_addresses.allowed_host_addresses() == ("127.0.0.1",)
    assert aioice_ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1"]
    assert host_addresses.loopback_only()


def test_candidate_filter_keeps_loopback_lines_only():
    sdp = (
        "v=0\r\n"
        "a=candidate:1 1 UDP 2130706431 127.0.0.1 5000 typ host\r\n"
        f"a=candidate:2 1 UDP 2130706431 {FOREIGN} 5001 typ host\r\n"
        "a=candidate:3 1 UDP 2130706431 0a1b2c3d.local 5002 typ host\r\n"
        "a=candidate:4 1 UDP 2130706431 ::1 5003 typ host\r\n"
        "a=end-of-candidates\r\n"
    )
    kept = host_addresses.drop_unreachable_candidates(sdp)
    assert candidate_addresses(kept) == ["127.0.0.1", "::1"]
    assert kept.endswith("a=end-of-candidates\r\n")
    assert not host_addresses.may_check(FOREIGN) and host_addresses.may_check("127.0.0.5")


def test_an_empty_restriction_restores_every_interface(monkeypatch):
    every = ["10.1.2.3", "192.168.7.7"]
    monkeypatch.setattr(host_addresses, "_discover_every_interface", lambda v4, v6: every)
    try:
        host_addresses.restrict_host_addresses([])
        assert aioice_ice.get_host_addresses(True, True) == every
        assert not host_addresses.loopback_only() and host_addresses.may_check(FOREIGN)
        with pytest.raises(ValueError, match="not an IP address"):
            host_addresses.restrict_host_addresses(["eth0"])
    finally:
        assert host_addresses.install_from_env()
    assert aioice_ice.get_host_addresses(True, True) == ["127.0.0.1"]


async def test_an_aiortc_client_gathers_only_loopback():
    peer = ScopePeer(PatternTrack(fps=30, width=64, height=48))
    try:
        offer = await peer.create_offer()
    finally:
        await peer.close()
    assert set(candidate_addresses(offer["sdp"])) == {"127.0.0.1"}


# -- servers ------------------------------------------------------------------------------------


def test_the_in_process_server_listens_on_loopback(jp_serverapp, http_server, http_server_port):
    assert http_server_port[0].getsockname()[0] == "127.0.0.1"


def test_a_subprocess_server_answers_with_loopback_candidates_only(scope_server_process: ScopeServer):
    async def offer_and_answer() -> str:
        peer = ScopePeer(recvonly=True)
        try:
            offer = await peer.create_offer()
            with scope_server_process.client() as client:
                reply = client.post("/api/v1/webrtc/offer", json=offer)
                assert reply.status_code == 200, reply.text
                answer = reply.json()
                client.delete(f"/api/v1/webrtc/sessions/{answer['sessionId']}")
            return answer["sdp"]
        finally:
            await peer.close()

    with scope_server_process.client() as client:
        assert client.post("/api/v1/pipeline/load", json={"pipeline_id": "passthrough"}).status_code == 200
        scope_server_process.wait_status(client, ("loaded",))
    loop = asyncio.new_event_loop()
    try:
        answer_sdp = loop.run_until_complete(offer_and_answer())
    finally:
        loop.close()
    assert candidate_addresses(answer_sdp), answer_sdp
    assert set(candidate_addresses(answer_sdp)) == {"127.0.0.1"}, answer_sdp


async def test_a_session_streams_over_loopback_and_ignores_foreign_candidates(jp_serverapp, api, services):
    assert (await api("POST", "api/v1/pipeline/load", {"pipeline_id": "passthrough"})).status == 200
    await wait_for_status(api, "loaded")
    source = PatternTrack(fps=30, width=64, height=48)
    async with connected(api, send_track=source) as client:
        assert set(candidate_addresses(client.answer_sdp)) == {"127.0.0.1"}
        session = services.sessions.sessions[client.session_id]
        handed_to_ice = []  # what the server passes on to its peer connection, in order
        add_candidate = session.pc.addIceCandidate

        async def recording_add(candidate):
            handed_to_ice.append(candidate)
            return await add_candidate(candidate)

        session.pc.addIceCandidate = recording_add
        trickled = {"candidates": [
            {"candidate": f"candidate:9 1 udp 2130706431 {FOREIGN} 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0},
            {"candidate": "candidate:8 1 udp 2130706431 0a1b2c3d.local 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0},
            # Passed on last, in order, in the background: once it is, the others were handled.
            {"candidate": f"candidate:7 1 udp 2130706431 127.0.0.1 {MARKER_PORT} typ host", "sdpMid": "0",
             "sdpMLineIndex": 0},
        ]}
        assert (await api("PATCH", f"api/v1/webrtc/offer/{client.session_id}", trickled)).status == 204
        await client.wait_frames(10)
        await wait_until(lambda: any(c.port == MARKER_PORT for c in handed_to_ice if c is not None),
                         what="the trickled loopback candidate to be handled")
        assert [c.ip for c in handed_to_ice] == ["127.0.0.1"], handed_to_ice
        assert set(remote_hosts(session.pc)) == {"127.0.0.1"}, remote_hosts(session.pc)
        for pc in (client.pc, session.pc):
            pairs = nominated_addresses(pc)
            assert pairs and all(local == remote == "127.0.0.1" for local, remote in pairs), pairs


async def test_foreign_candidates_in_an_offer_are_dropped(jp_serverapp, api, services):
    assert (await api("POST", "api/v1/pipeline/load", {"pipeline_id": "passthrough"})).status == 200
    await wait_for_status(api, "loaded")
    peer = ScopePeer(recvonly=True)
    try:
        offer = await peer.create_offer()
        foreign = f"a=candidate:7 1 udp 2130706431 {FOREIGN} 40000 typ host\r\n"
        offer["sdp"] = re.sub(r"(a=candidate:[^\r\n]*\r\n)", lambda m: m.group(1) + foreign, offer["sdp"], count=1)
        assert FOREIGN in offer["sdp"]
        reply = await api("POST", "api/v1/webrtc/offer", offer)
        assert reply.status == 200, reply.body
        session = services.sessions.sessions[reply.json["sessionId"]]
        assert FOREIGN not in remote_hosts(session.pc)
        assert set(remote_hosts(session.pc)) == {"127.0.0.1"}
        await api("DELETE", f"api/v1/webrtc/sessions/{reply.json['sessionId']}")
    finally:
        await peer.close()


# -- Chromium -----------------------------------------------------------------------------------

SELECTED_PAIR = """
async () => {
  for (const pc of window.__peerConnections) {
    const stats = await pc.getStats();
    let pairId = null;
    stats.forEach((r) => { if (r.type === "transport" && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId; });
    if (!pairId) continue;
    const pair = stats.get(pairId);
    const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
    const locals = [];
    stats.forEach((r) => { if (r.type === "local-candidate") locals.push(r.address || r.ip); });
    return {local: local.address || local.ip, remote: remote.address || remote.ip, state: pair.state, locals};
  }
  return null;
}
"""


@pytest.mark.browser
@pytest.mark.timeout(120)
class TestChromium:
    """A Chromium page streams from a subprocess server through the server's 127.0.0.1 candidate."""

    @pytest.fixture(autouse=True)
    def jp_asyncio_loop(self):
        """Playwright's sync API owns this thread's loop (see tests/test_browser.py)."""
        yield None

    @pytest.fixture(autouse=True)
    def jp_server_cleanup(self):
        yield

    def test_a_chromium_page_streams_over_loopback(self, scope_server_process: ScopeServer):
        assert "--allow-loopback-in-peer-connection" in CHROMIUM_ARGS
        with scope_server_process.client() as client:
            for session in client.get("/api/v1/webrtc/sessions").json()["sessions"]:
                client.delete(f"/api/v1/webrtc/sessions/{session['id']}")
            assert client.post("/api/v1/pipeline/unload", json={}).status_code == 200
        with sync_api.sync_playwright() as playwright:
            chromium = launch_chromium(playwright)
            try:
                page = new_page(chromium)
                context = page.context
                test_browser.load_passthrough_on_page(page, scope_server_process.url + "/scope/")
                assert page.input_value(test_browser.INPUT) == "webcam"
                page.click(test_browser.START)
                test_browser.wait_for_chunks(page)
                test_browser.assert_frames_flow(page)
                pair = chromium_wait_until(
                    page, lambda: (found := page.evaluate(SELECTED_PAIR)) and found["state"] == "succeeded" and found,
                    "a succeeded candidate pair",
                )
                assert pair["local"] == "127.0.0.1" and pair["remote"] == "127.0.0.1", pair
                page.click(test_browser.STOP)
                context.close()
            finally:
                chromium.close()
