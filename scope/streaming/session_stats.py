"""The figures a session reports: the ``stats`` data-channel message and ``SessionInfo.stats``.

Both are built from :class:`SessionStats`, so the message, the REST answer and the OpenAPI
document list the same fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

SessionState = Literal["streaming", "paused", "waiting"]


class SessionStats(BaseModel):
    fps: float = Field(description="Frames per second sent to the peer lately.")
    chunk: int = Field(description="Chunks generated so far.")
    chunk_ms: float = Field(description="Time the last chunk took, in milliseconds.")
    pipeline_id: str | None = Field(description="The pipeline the session runs (null before any load).")
    synthetic: bool = Field(description="True while the pipeline runs on synthetic weights.")
    state: SessionState = Field(
        description="'streaming'; 'paused' by the client; 'waiting' for a pipeline or for input."
    )
