"""The error every way of opening or steering a session answers with: an HTTP status and detail."""

from __future__ import annotations

from typing import Any


class SignallingError(Exception):
    """A request about a session was refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: Any):
        super().__init__(detail if isinstance(detail, str) else str(detail))
        self.status = status
        self.detail = detail
