"""What a session's stream took, chunk by chunk: the timeline a recording is written from.

Every session keeps one from its stream's first chunk, because a recording started later still
needs every earlier update to be rendered again (the caches carry them). It is small: the
updates, not the frames.

It logs the parameter state's ``pending`` updates as each chunk takes them, which is exactly
what :func:`scope.recording.render.render_chunks` feeds back: the updates the first chunk took
become the initial parameters, later ones become events at the chunk that took them. A chunk
that fails takes its updates again on the next try, so they are logged with the chunk that
succeeds.
"""

from __future__ import annotations

import copy
from typing import Any


class SessionLog:
    def __init__(self) -> None:
        #: The parameters the stream's first chunk started from (None before it).
        self.initial: dict[str, Any] | None = None
        #: ``{"chunk", "parameters"}`` in chunk order (a timeline's ``events``).
        self.events: list[dict[str, Any]] = []
        #: Updates taken by attempts that have not yet produced a chunk.
        self._taken: dict[str, Any] = {}
        #: Session notes (pause, resume) for the next chunk's event: the renderer ignores them.
        self._notes: dict[str, Any] = {}

    def taking(self, pending: dict[str, Any]) -> None:
        """A chunk attempt takes these pending updates."""
        self._taken.update(copy.deepcopy(pending))

    def note(self, name: str, value: Any) -> None:
        """Something the session did that changed no frame (``paused``), kept for the reader."""
        self._notes[name] = value

    def took(self, chunk: int) -> None:
        """Chunk ``chunk`` was generated from what the attempts since the last one took."""
        taken, self._taken = self._taken, {}
        notes, self._notes = self._notes, {}
        if self.initial is None:
            self.initial = taken
            return
        if taken or notes:
            self.events.append({"chunk": chunk, "parameters": {**notes, **taken}})
