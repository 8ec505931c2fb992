"""A session's parameters: a persistent shallow merge with one-shot keys.

Updates arrive at any time (data channel, REST) and wait in ``pending`` until the next chunk
takes them; several updates before a chunk are merged, never dropped. Keys persist until
overwritten, except the one-shot keys, which act on one chunk and are then removed. A chunk
that fails gives its one-shot keys back, so the request is not lost with it.
"""

from __future__ import annotations

import copy
from typing import Any

from scope.params import ONE_SHOT_KEYS, SESSION_ONLY_KEYS


class ParameterState:
    def __init__(self, initial: dict[str, Any] | None = None):
        self.current: dict[str, Any] = {}
        self.pending: dict[str, Any] = dict(initial or {})
        #: The one-shot values the chunk in progress took (given back if it fails).
        self._taken: dict[str, Any] = {}

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
        self._taken = {key: self.current.pop(key) for key in ONE_SHOT_KEYS if key in self.current}
        self.current.pop("paused", None)
        params.pop("paused", None)
        return params

    def restore(self) -> None:
        """The last chunk failed: its one-shot values wait for the next chunk.

        An update that arrived since wins over the value given back.
        """
        for key, value in self._taken.items():
            self.pending.setdefault(key, value)
        self._taken = {}

    def finish_transition(self) -> None:
        """A transition ended: its targets become the prompts, so stale prompts cannot revert it."""
        transition = self.current.pop("transition", None)
        if transition and "prompts" not in self.pending:
            self.current["prompts"] = transition["target_prompts"]

    @property
    def input_mode(self) -> str | None:
        return self.pending.get("input_mode", self.current.get("input_mode"))


def for_stream_only(update: dict[str, Any]) -> dict[str, Any]:
    """``update`` without the keys the session acts on itself (pause, recording, Windows sinks)."""
    return {key: value for key, value in update.items() if key not in SESSION_ONLY_KEYS}
