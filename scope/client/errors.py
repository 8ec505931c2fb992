"""What the client raises: an API answer that is an error, and the waits that end badly."""

from __future__ import annotations

import json
from typing import Any

from scope.params import describe_errors


def describe_detail(detail: Any) -> str:
    """One line from an error ``detail``: the text, or each validation error as ``loc: msg``."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and all(isinstance(item, dict) and "msg" in item for item in detail):
        return describe_errors(detail) + "".join(_holders(item) for item in detail)
    return json.dumps(detail)


def _holders(error: dict[str, Any]) -> str:
    """What holds the memory, for a refusal over the pool's budget (``type: "memory_budget"``)."""
    holders = error.get("holders") if error.get("type") == "memory_budget" else None
    if not holders:
        return ""

    def one(holder: dict[str, Any]) -> str:
        count = len(holder.get("sessions") or [])
        size = holder.get("held_bytes", 0) / 2**20
        return f"{holder.get('pipeline_id')} ({count} session{'' if count == 1 else 's'}, {size:.1f} MiB)"

    return f" Held by: {', '.join(map(one, holders))}."


class ScopeApiError(Exception):
    """The server answered 4xx or 5xx.

    ``status`` is the HTTP status and ``detail`` the answer's JSON ``detail``: a string, or for
    validation errors a list of ``{"loc", "msg", "type"}`` whose ``loc`` names the field.
    """

    def __init__(self, status: int, detail: Any, *, method: str = "", url: str = ""):
        self.status = status
        self.detail = detail
        self.method = method
        self.url = url
        where = f" from {method} {url}" if method else ""
        super().__init__(f"{status}{where}: {describe_detail(detail)}")

    @property
    def fields(self) -> list[str]:
        """Dotted locations of the fields a validation error names (``body.load_params.height``)."""
        if not isinstance(self.detail, list):
            return []
        return [".".join(map(str, item["loc"])) for item in self.detail if isinstance(item, dict) and "loc" in item]


def error_from_response(response: Any) -> ScopeApiError:
    """The :class:`ScopeApiError` of an httpx response that is a 4xx or 5xx (its body read)."""
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text.strip()[:500] or response.reason_phrase
    return ScopeApiError(response.status_code, detail, method=response.request.method, url=str(response.url))


class PipelineLoadError(RuntimeError):
    """A pipeline load ended in ``error``; ``error`` is the server's text."""

    def __init__(self, pipeline_id: str | None, error: str | None):
        self.pipeline_id = pipeline_id
        self.error = error
        # The server's text names the pipeline and the cause already.
        super().__init__(error or f"Loading pipeline {pipeline_id!r} failed (no reason given).")


class ModelDownloadError(RuntimeError):
    """A model download (or synthetic weight writing) failed; ``error`` is the server's text."""

    def __init__(self, pipeline_id: str, error: str | None):
        self.pipeline_id = pipeline_id
        self.error = error
        super().__init__(f"Downloading the files of {pipeline_id!r} failed: {error or 'no reason given'}")


class StreamClosed(ConnectionError):
    """The stream ended (closed here, or stopped by the server) while frames were awaited."""
