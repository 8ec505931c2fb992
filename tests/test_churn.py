"""Hundreds of connect/disconnect cycles leave no tasks, threads or sessions behind."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from tests.rtc import ScopeRtcClient
from tests.test_session_lifecycle import wait_until
from tests.test_streaming import load

pytestmark = pytest.mark.usefixtures("jp_serverapp")


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
    await asyncio.sleep(1.0)
    gc.collect()
    from scope.streaming.session import StreamSession

    alive = [o for o in gc.get_objects() if type(o) is StreamSession]
    assert len(alive) <= 1, f"{len(alive)} sessions still referenced"
    leftover = [t for t in asyncio.all_tasks() if "scope-session" in t.get_name()]
    assert leftover == [], leftover
    assert len(asyncio.all_tasks()) <= tasks_before + 5
    assert threading.active_count() <= threads_before + 4, [t.name for t in threading.enumerate()]
