"""Keep a peer's departure out of the terminal as a traceback.

aiortc sends SCTP data (data-channel messages, retransmissions) from tasks nobody awaits. When a
client goes away, its ICE connection closes, and for a moment the DTLS layer above still believes
it is connected: a send in that moment raises ``ConnectionError`` ("Cannot send data, not
connected") inside such a task, and asyncio reports "Task exception was never retrieved" with a
traceback at the error level. Nothing is wrong: the session notices the closed connection and ends
itself. This event-loop exception handler logs exactly that case as one debug line and hands every
other exception to the handler that was there before.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import PurePath
from typing import Any

logger = logging.getLogger("scope.streaming")

#: Top-level packages whose fire-and-forget send tasks fail this way when a peer leaves.
WEBRTC_PACKAGES = frozenset({"aiortc", "aioice"})


def from_webrtc_stack(task: Any) -> bool:
    """Whether ``task`` runs a coroutine defined in aiortc or aioice."""
    code = getattr(task.get_coro(), "cr_code", None) if isinstance(task, asyncio.Task) else None
    return code is not None and not WEBRTC_PACKAGES.isdisjoint(PurePath(code.co_filename).parts)


def is_departure_noise(context: dict[str, Any]) -> bool:
    """A ``ConnectionError`` left in one of aiortc's own send tasks: a peer that has gone away."""
    exception = context.get("exception")
    return isinstance(exception, ConnectionError) and from_webrtc_stack(context.get("future") or context.get("task"))


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Route ``loop``'s unhandled exceptions through :func:`is_departure_noise` (idempotent)."""
    previous = loop.get_exception_handler()
    if getattr(previous, "scope_departures", False):
        return

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if is_departure_noise(context):
            logger.debug("a peer went away while WebRTC was sending: %s", context["exception"])
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handle.scope_departures = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handle)
