"""Frame sizes that must be a multiple of a step within bounds (height and width load parameters).

One check covers the range and the step, so a refused value is answered with the nearest values
that would be accepted ("use 16 or 32") instead of only the rule.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError


def nearest_valid(value: int, step: int, low: int, high: int) -> list[int]:
    """The accepted values closest to ``value``: the multiples of ``step`` either side, kept in bounds."""
    below = min(high, max(low, value // step * step))
    above = max(low, min(high, -(-value // step) * step))
    return sorted({below, above})


def multiple_of(step: int, low: int, high: int) -> Any:
    """An ``int`` type accepting multiples of ``step`` from ``low`` to ``high`` (both multiples too)."""

    def check(value: int) -> int:
        if low <= value <= high and value % step == 0:
            return value
        choices = " or ".join(str(v) for v in nearest_valid(value, step, low, high))
        raise PydanticCustomError(
            "multiple_of",
            "must be a multiple of {step} from {low} to {high}: use {choices}",
            {"step": step, "low": low, "high": high, "choices": choices},
        )

    schema = {"minimum": low, "maximum": high, "multipleOf": step}
    return Annotated[int, AfterValidator(check), Field(json_schema_extra=schema)]
