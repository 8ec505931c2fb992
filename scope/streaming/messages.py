"""Data-channel replies that the offer and the session both send, built in one place."""

from __future__ import annotations

from typing import Any

from scope.params import unused_parameters
from scope.pipelines.base import Pipeline

#: The ``type`` a client's data-channel message may carry; a message without one is parameters.
CLIENT_MESSAGE_TYPES = ("parameters",)


def parameter_warnings(
    pipeline: Pipeline | type[Pipeline] | None, given: list[str], unknown: list[str]
) -> list[dict[str, Any]]:
    """``parameters_warning`` messages for keys no model knows and keys the pipeline (a loaded one,
    or its class) does not use.

    ``given`` are the validated keys a message carried (never the server's defaults).
    """
    warnings: list[dict[str, Any]] = []
    if unknown:
        warnings.append({"type": "parameters_warning", "unknown_keys": unknown})
    unused = unused_parameters(pipeline.parameters_model, given) if pipeline is not None else []
    if unused:
        text = f"pipeline '{pipeline.info.id}' does not use {', '.join(unused)}: accepted and ignored"
        warnings.append({"type": "parameters_warning", "unused_keys": unused, "message": text})
    return warnings


def unknown_type_rejection(message_type: Any) -> dict[str, Any]:
    """The reply to a message whose ``type`` the server does not take (nothing is applied)."""
    accepted = ", ".join(f"'{t}'" for t in CLIENT_MESSAGE_TYPES)
    shown = repr(message_type)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    msg = f"unknown message type {shown}: the server takes {accepted} (or no type)"
    return {"type": "parameters_rejected", "errors": [{"loc": ["type"], "msg": msg}], "accepted_types": list(CLIENT_MESSAGE_TYPES)}
