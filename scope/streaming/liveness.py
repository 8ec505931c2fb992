"""Notice a peer that has gone without saying so (killed, unplugged, asleep).

A peer that closes its connection is seen at once, but one that simply stops (``kill -9``, a
laptop lid, a dropped network) only fails ICE consent after about 30 s. Every live peer sends
datagrams much more often than that: RTCP receiver reports for the video it receives (about one
a second from browsers and aiortc, ``recvonly`` included), and SCTP acknowledgements for the
``stats`` messages the session sends twice a second on the data channel. So a peer from which
no datagram (RTP, RTCP, SCTP or DTLS) has arrived for ``timeout`` seconds is taken to be gone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiortc import RTCPeerConnection


async def packets_received(pc: RTCPeerConnection) -> int:
    """Datagrams received so far on the connection's DTLS transports (media and data)."""
    report = await pc.getStats()
    counted: set[str] = set()
    total = 0
    for stats in report.values():
        if stats.type == "transport" and stats.id not in counted:
            counted.add(stats.id)
            total += stats.packetsReceived or 0
    return total


async def watch_peer(pc: RTCPeerConnection, timeout: float, on_gone: Callable[[float], None]) -> None:
    """Call ``on_gone(silent_seconds)`` once nothing has arrived from the peer for ``timeout``.

    Runs until the peer is found gone or the task is cancelled. The connection is polled a few
    times per ``timeout``, so a gone peer is noticed within about 1.25 times ``timeout``.
    """
    interval = min(1.0, max(0.1, timeout / 4))
    last_count = await packets_received(pc)
    last_arrival = time.monotonic()
    while True:
        await asyncio.sleep(interval)
        count = await packets_received(pc)
        now = time.monotonic()
        if count != last_count:
            last_count, last_arrival = count, now
        elif now - last_arrival >= timeout:
            on_gone(now - last_arrival)
            return
