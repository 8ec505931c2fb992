"""The figures a session reports: the ``stats`` data-channel message and ``SessionInfo.stats``.

Both are built from :class:`SessionStats`, so the message, the REST answer and the OpenAPI
document list the same fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

SessionState = Literal["streaming", "paused", "waiting", "loading"]
Transport = Literal["webrtc", "websocket", "headless"]


class SessionStats(BaseModel):
    fps: float = Field(
        description="Frames per second sent to the peer lately (over a WebSocket, the frames actually sent: "
        "those dropped for a slow link do not count)."
    )
    chunk: int = Field(description="Chunks generated so far.")
    chunk_ms: float = Field(description="Time the last chunk took, in milliseconds.")
    pipeline_id: str | None = Field(description="The pipeline the session runs (null before any load).")
    synthetic: bool = Field(description="True while the pipeline runs on synthetic weights.")
    state: SessionState = Field(
        description="'streaming'; 'paused' by the client; 'waiting' for input; 'loading' while the "
        "session's pipeline loads (an offer that named one not loaded yet)."
    )
    input_frames_received: int = Field(
        description="Video frames received from the peer in video mode since the session started "
        "(frames that arrive in text mode are discarded uncounted, so a text-mode session reports 0)."
    )
    input_frames_used: int = Field(description="Of those, frames a chunk took as input.")
    input_frames_dropped: int = Field(
        description="Of those, frames that left the input buffer unused: pushed out of the 30-frame ring, "
        "passed over by a chunk that took newer ones, or discarded on a mode switch or when the stream opens. "
        "received = used + dropped + the frames buffered now (at most 30)."
    )
    latency_ms: float | None = Field(
        description="Median input-to-output latency, in milliseconds, over the last 30 frames sent to the peer: "
        "from the arrival of the input frame an output frame was made from to the moment that output frame "
        "is handed to the encoder. Null when none of them was made from input (text mode)."
    )
    latency_p95_ms: float | None = Field(
        description="The 95th percentile of the same latencies, in milliseconds (null likewise)."
    )
    transport: Transport = Field(
        description="How the session's output leaves the server: 'webrtc' (RTP over UDP), 'websocket' "
        "(frames on a WebSocket, through any HTTP proxy) or 'headless' (no client: frame, metrics and output.ts endpoints)."
    )
    frames_sent: int = Field(
        description="Output frames the transport delivered: handed to the WebRTC encoder, sent on the WebSocket, "
        "or taken from the headless session's output."
    )
    link_frames_dropped: int = Field(
        description="Output frames not sent because the link or the reader was behind (a WebSocket client more "
        "than 6 frames behind, an output.ts reader whose queue is full). Always 0 over WebRTC, whose encoder "
        "lowers its bitrate instead."
    )
    bytes_per_s: float | None = Field(
        description="Bytes per second the transport sent lately (WebSocket frames; the headless session's "
        "output.ts readers together). Null over WebRTC."
    )
