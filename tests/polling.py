"""The suite's one way to wait for a state: poll it until it holds, with a generous deadline.

Tests wait for what they are about to assert (a status, a file, a frame count), never for a
fixed time. A deadline that passes fails the test with what was awaited and the last value
seen, so a slow machine shows up as a clear message rather than a flaky assertion.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

#: Long enough for a loaded CI machine; a test that needs longer says so.
DEFAULT_TIMEOUT_S = 30.0
INTERVAL_S = 0.05

_NOT_READ = object()


def _failure(what: str, timeout: float, last: Any) -> AssertionError:
    seen = "nothing (never read)" if last is _NOT_READ else repr(last)
    if len(seen) > 2000:
        seen = seen[:2000] + "..."
    return AssertionError(f"waited {timeout:g} s for {what}; last seen: {seen}")


def wait_until_sync(
    predicate: Callable[..., Any],
    timeout: float = DEFAULT_TIMEOUT_S,
    what: str = "the condition",
    *,
    value: Callable[[], Any] | None = None,
    interval: float = INTERVAL_S,
) -> Any:
    """:func:`wait_until` for code outside the event loop (threads, subprocess servers)."""
    deadline = time.monotonic() + timeout
    last: Any = _NOT_READ
    while True:
        if value is None:
            last = predicate()
            if last:
                return last
        else:
            last = value()
            if predicate(last):
                return last
        if time.monotonic() > deadline:
            raise _failure(what, timeout, last)
        time.sleep(interval)


async def _resolve(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


async def wait_until(
    predicate: Callable[..., Any],
    timeout: float = DEFAULT_TIMEOUT_S,
    what: str = "the condition",
    *,
    value: Callable[[], Any] | None = None,
    interval: float = INTERVAL_S,
) -> Any:
    """Poll until ``predicate`` holds; return what held. Sleeps without blocking the loop.

    Without ``value``, ``predicate()`` is the state: its first truthy result is returned. With
    ``value``, ``predicate(value())`` is checked and the value read is returned. Either may be
    a coroutine function (an HTTP read, a stats call).
    """
    deadline = time.monotonic() + timeout
    last: Any = _NOT_READ
    while True:
        if value is None:
            last = await _resolve(predicate())
            if last:
                return last
        else:
            last = await _resolve(value())
            if await _resolve(predicate(last)):
                return last
        if time.monotonic() > deadline:
            raise _failure(what, timeout, last)
        await asyncio.sleep(interval)
