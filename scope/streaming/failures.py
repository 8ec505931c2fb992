"""Tell a passing chunk failure from one that will repeat forever.

A chunk that fails once (a bad frame, a transient error) is reported and the stream goes on.
A chunk that fails the same way every time (a value the pipeline cannot run with) would flood
the client with ``chunk_failed`` events; after ``limit`` identical failures in a row the session
ends the stream instead.
"""

from __future__ import annotations


class RepeatedFailures:
    """Counts consecutive failures with the same exception type and message."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0
        self._signature: tuple[str, str] | None = None

    def record(self, exc: BaseException) -> bool:
        """Count ``exc``; True when it is the ``limit``-th identical failure in a row."""
        signature = (type(exc).__name__, str(exc))
        if signature == self._signature:
            self.count += 1
        else:
            self._signature, self.count = signature, 1
        return self.limit > 0 and self.count >= self.limit

    def succeeded(self) -> None:
        """A chunk worked: the next failure starts a new count."""
        self._signature, self.count = None, 0
