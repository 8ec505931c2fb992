"""A peer that goes away leaves no "Task exception was never retrieved" traceback.

The window is replayed exactly with two real aiortc peers on loopback: the sender's ICE
connection has dropped its nominated pair (what closing it after a consent expiry or a remote
close does first), while DTLS and SCTP above it still believe they are connected, and a
data-channel message goes out. aiortc sends it from a task nobody awaits, which fails with
``ConnectionError``.
"""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from aiortc import RTCPeerConnection

from scope.streaming import closed_connections
from tests.polling import wait_until

pytestmark = pytest.mark.asyncio

NEVER_RETRIEVED = "Task exception was never retrieved"


async def _connected_pair() -> tuple[RTCPeerConnection, RTCPeerConnection, object]:
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    channel = sender.createDataChannel("parameters")
    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)
    await wait_until(lambda: channel.readyState == "open", timeout=30, what="the data channel to open")
    return sender, receiver, channel


async def _send_after_ice_dropped(caplog, reported) -> list[logging.LogRecord]:
    """Replay the departure window; the records logged until ``reported(record)`` holds for one."""
    sender, receiver, channel = await _connected_pair()
    try:
        ice = sender.sctp.transport.transport._connection
        ice._nominated.clear()
        caplog.clear()
        channel.send("stats")

        def collected() -> bool:
            gc.collect()  # a failed task nobody awaited is reported when it is collected
            return any(reported(record) for record in caplog.records)

        await wait_until(collected, timeout=30, what="the failed send task to be reported")
        return list(caplog.records)
    finally:
        await receiver.close()
        await sender.close()


def _never_retrieved(record: logging.LogRecord) -> bool:
    return NEVER_RETRIEVED in record.getMessage()


def _departure_line(record: logging.LogRecord) -> bool:
    return record.name == "scope.streaming" and "went away" in record.getMessage()


async def test_without_the_handler_the_departure_window_prints_a_traceback(caplog):
    """The scenario is real: aiortc's failed send task reaches asyncio's error report."""
    caplog.set_level(logging.DEBUG)
    records = await _send_after_ice_dropped(caplog, _never_retrieved)
    errors = [r for r in records if r.levelno >= logging.ERROR and _never_retrieved(r)]
    assert errors, [r.getMessage() for r in records]
    assert isinstance(errors[0].exc_info[1], ConnectionError)


async def test_with_the_handler_it_is_one_debug_line(caplog):
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    closed_connections.install(loop)
    try:
        caplog.set_level(logging.DEBUG)
        caplog.set_level(logging.DEBUG, logger="scope.streaming")  # a server run earlier set "scope" to INFO
        records = await _send_after_ice_dropped(caplog, _departure_line)
    finally:
        loop.set_exception_handler(previous)
    assert not [r for r in records if r.levelno >= logging.WARNING], [r.getMessage() for r in records]
    assert len([r for r in records if _departure_line(r)]) == 1, [r.getMessage() for r in records]


async def test_other_unhandled_exceptions_still_reach_the_previous_handler():
    loop = asyncio.get_running_loop()
    seen: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda loop, context: seen.append(context))
    closed_connections.install(loop)
    closed_connections.install(loop)  # idempotent: one layer only
    try:

        async def ours() -> None:
            raise ConnectionError("not aiortc's")

        task = asyncio.ensure_future(ours())
        await asyncio.wait([task])
        del task
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert [str(c["exception"]) for c in seen] == ["not aiortc's"]
