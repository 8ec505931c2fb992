"""A session's parameters: a persistent shallow merge with one-shot keys.

Updates arrive at any time (data channel, REST) and wait in ``pending`` until the next chunk
takes them; several updates before a chunk are merged, never dropped. Keys persist until
overwritten, except the one-shot keys, which act on one chunk and are then removed.
"""

from __future__ import annotations

import copy
from typing import Any

#: Consumed by the chunk that sees them.
CHUNK_ONE_SHOT = ("reset_cache", "lora_scales", "vace_ref_images")


class ParameterState:
    def __init__(self, initial: dict[str, Any] | None = None):
        self.current: dict[str, Any] = {}
        self.pending: dict[str, Any] = dict(initial or {})

    def update(self, message: dict[str, Any]) -> None:
        """Queue a validated update for the next chunk."""
        if "prompts" in message and "transition" not in message:
            # New prompts without a transition cancel any transition not yet finished.
            self.pending.pop("transition", None)
            self.current.pop("transition", None)
        self.pending.update(message)

    def snapshot(self) -> dict[str, Any]:
        """The parameters as the next chunk would see them (for reporting)."""
        merged = {**self.current, **self.pending}
        return copy.deepcopy({k: v for k, v in merged.items() if k != "paused"})

    def take_chunk(self) -> dict[str, Any]:
        """Apply pending updates and return this chunk's parameters, one-shots included once."""
        self.current.update(self.pending)
        self.pending = {}
        params = dict(self.current)
        for key in CHUNK_ONE_SHOT:
            self.current.pop(key, None)
        self.current.pop("paused", None)
        params.pop("paused", None)
        return params

    def finish_transition(self) -> None:
        """A transition ended: its targets become the prompts, so stale prompts cannot revert it."""
        transition = self.current.pop("transition", None)
        if transition and "prompts" not in self.pending:
            self.current["prompts"] = transition["target_prompts"]

    @property
    def input_mode(self) -> str | None:
        return self.pending.get("input_mode", self.current.get("input_mode"))
