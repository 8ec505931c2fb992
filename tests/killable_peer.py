"""A streaming client in its own process, for tests that kill it with SIGKILL.

``python -m tests.killable_peer URL`` offers to the server at URL, sends a moving test pattern,
prints ``STREAMING <session id>`` once frames come back, then streams until it is killed. A
killed process says nothing to the server: no DTLS close, no SCTP abort, no ICE goodbye.
"""

from __future__ import annotations

import asyncio
import sys

import httpx

from scope.client.peer import ScopePeer
from scope.streaming.pattern import PatternTrack


async def stream_until_killed(url: str) -> None:
    first_frame = asyncio.Event()
    peer = ScopePeer(PatternTrack(fps=30, width=64, height=48), on_frame=lambda frame: first_frame.set())
    offer = await peer.create_offer()
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as client:
        reply = await client.post("/api/v1/webrtc/offer", json=offer)
    reply.raise_for_status()
    answer = reply.json()
    await peer.accept_answer(answer["sdp"], answer["type"])
    await asyncio.wait_for(first_frame.wait(), 60)
    print(f"STREAMING {answer['sessionId']}", flush=True)
    while True:
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(stream_until_killed(sys.argv[1]))
