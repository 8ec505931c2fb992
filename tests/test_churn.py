"""Hundreds of connect/disconnect cycles leave no tasks, threads or sessions behind."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from scope.streaming.session import StreamSession
from tests.polling import wait_until
from tests.rtc import ScopeRtcClient
from tests.test_streaming import load

#: Its own bound, well above a loaded machine's run (about 30 s on two cores), below the suite's.
pytestmark = [pytest.mark.usefixtures("jp_serverapp"), pytest.mark.timeout(180)]


async def test_connect_disconnect_churn_leaks_nothing(api, services):
    await load(api, "passthrough")
    from scope.streaming.pattern import PatternTrack

    async def cycle(i: int) -> None:
        client = ScopeRtcClient(api, send_track=PatternTrack(fps=30, width=64, height=48) if i % 2 else None)
        await client.connect()
        await wait_until(lambda: client.pc.connectionState == "connected", timeout=20)
        if i % 10 == 1:  # senders get their pictures back
            await client.wait_frames(1, timeout=20)
        await client.close()
        await wait_until(lambda: client.session_id not in services.sessions.sessions, timeout=20)

    for i in range(3):  # warm up thread pools
        await cycle(i)
    await wait_until(lambda: not services.sessions.sessions)
    gc.collect()
    tasks_before = len(asyncio.all_tasks())
    threads_before = threading.active_count()
    for i in range(200):
        await cycle(i)
    await wait_until(lambda: not services.sessions.sessions, timeout=30)

    def leftovers() -> dict:
        gc.collect()
        return {
            "sessions referenced": sum(type(o) is StreamSession for o in gc.get_objects()),
            "session tasks": [t.get_name() for t in asyncio.all_tasks() if "scope-session" in t.get_name()],
            "extra tasks": len(asyncio.all_tasks()) - tasks_before,
            "extra threads": threading.active_count() - threads_before,
        }

    def settled(left: dict) -> bool:
        return (left["sessions referenced"] <= 1 and not left["session tasks"]
                and left["extra tasks"] <= 5 and left["extra threads"] <= 4)

    await wait_until(settled, 30, "closed sessions to leave nothing behind", value=leftovers, interval=0.5)
