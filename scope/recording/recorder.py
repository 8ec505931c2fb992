"""One session's server-side recording: the frames as generated, its input, timeline and provenance.

A recording is a folder named after its session:

- ``recording.mp4``: the generated frames (not the WebRTC-decoded ones), H.264 at the
  pipeline's frame rate, timestamps counting generated frames. Fragmented, so the file reads
  back however the server ends.
- ``input.mkv``: in video mode, the input frames each chunk consumed, lossless (FFV1).
- ``timeline.json``: the session's timeline (``scope-timeline/1``) with a hash per recorded
  chunk, rewritten atomically as the session runs (at most once a second).
- ``provenance.json``: what produced the frames (weights' hashes, versions, device).
- ``recording.json``: the listing's facts (session, pipeline, start, state, why it stopped).

Hashing, encoding and file writes run on the recording's own thread, in chunk order, so neither
the event loop nor the device thread waits for them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scope.recording.media import LosslessInputWriter, VideoWriter
from scope.recording.session_log import SessionLog
from scope.recording.timeline import FORMAT, chunk_hash

logger = logging.getLogger(__name__)

VIDEO_FILE = "recording.mp4"
INPUT_FILE = "input.mkv"
TIMELINE_FILE = "timeline.json"
PROVENANCE_FILE = "provenance.json"
INFO_FILE = "recording.json"
#: How often the timeline sidecar is rewritten while recording.
SIDECAR_INTERVAL_S = 1.0

RECORDING, STOPPED = "recording", "stopped"


def write_json_atomically(path: Path, document: Any) -> None:
    """Write ``path`` through a temporary file and a rename, so a reader (or a crash) never
    finds it half-written."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=1))
    os.replace(partial, path)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class SessionRecorder:
    """Records one session from chunk ``first_chunk`` on (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        session_id: str,
        pipeline_id: str,
        load_params: dict[str, Any],
        environment: dict[str, Any],
        fps: float,
        log: SessionLog,
        first_chunk: int,
        video_mode: bool,
        earlier_input: bool,
        max_seconds: float,
        provenance: Callable[[], dict[str, Any]] | None = None,
    ):
        self.directory = directory
        self.session_id = session_id
        self.pipeline_id = pipeline_id
        self.load_params = load_params
        self.environment = environment
        self.fps = fps
        self.log = log
        self.first_chunk = first_chunk
        self.video_mode = video_mode
        #: The stream consumed input before the recording began: that input was never kept, so
        #: a render can only start at ``first_chunk`` (else it replays from the stream's start).
        self.earlier_input = earlier_input
        self.max_frames = int(max_seconds * fps)
        self.state = RECORDING
        self.stop_reason: str | None = None
        self.started_at = utc_now()
        self.stopped_at: str | None = None
        #: Frames queued for writing (the duration limit counts them as they come).
        self.frames = 0
        self.input_frames = 0
        self.chunks: list[dict[str, Any]] = []
        self.error: str | None = None
        self._started = time.monotonic()
        self._video: VideoWriter | None = None
        self._input: LosslessInputWriter | None = None
        self._provenance = provenance
        self._provenance_doc: dict[str, Any] | None = None
        self._sidecars_at = 0.0
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"scope-recording-{session_id[:8]}")
        self._closing: Future | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self._submit(self._begin)

    # Called on the event loop ---------------------------------------------------------

    def fits(self, frames: int) -> bool:
        """Whether a chunk of ``frames`` more stays within the maximum duration."""
        return self.frames + frames <= self.max_frames

    def add_chunk(self, index: int, frames: np.ndarray, video: np.ndarray | None) -> None:
        """Queue chunk ``index`` (and the input it consumed) for writing."""
        if self._closing is not None:  # a stop was decided: nothing more is written
            return
        self.frames += len(frames)
        self.input_frames += 0 if video is None else len(video)
        self._submit(self._write_chunk, index, frames, video)

    def bytes(self) -> int:
        """What the recording's files hold on disk now."""
        total = 0
        for name in (VIDEO_FILE, INPUT_FILE, TIMELINE_FILE, PROVENANCE_FILE, INFO_FILE):
            try:
                total += (self.directory / name).stat().st_size
            except OSError:
                pass
        return total

    @property
    def seconds(self) -> float:
        return self.frames / self.fps

    async def finish(self, reason: str) -> dict[str, Any]:
        """Stop: write everything queued, close the files, write the sidecars; returns the info.

        The state reads ``stopped`` only once the files are complete, so a client that sees it
        downloads whole files."""
        if self._closing is None:
            self.stop_reason = reason
            self.stopped_at = utc_now()
            self._closing = self._worker.submit(self._close)
            self._worker.shutdown(wait=False)
        await asyncio.wrap_future(self._closing)
        return self.info()

    def info(self) -> dict[str, Any]:
        """The listing's entry (``recording.json``)."""
        return {
            "session_id": self.session_id,
            "pipeline_id": self.pipeline_id,
            "state": self.state,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "stop_reason": self.stop_reason,
            "first_chunk": self.first_chunk,
            "chunks": len(self.chunks),
            "frames": self.frames,
            "fps": self.fps,
            "duration_s": round(self.frames / self.fps, 3),
            "video_mode": self.video_mode,
            "error": self.error,
        }

    def timeline(self) -> dict[str, Any]:
        """The session's timeline so far: every update since the stream's first chunk, the chunks
        recorded with their hashes, and the stored input in video mode."""
        document: dict[str, Any] = {
            "format": FORMAT,
            "pipeline_id": self.pipeline_id,
            "load_params": self.load_params,
            "initial_parameters": self.log.initial or {},
            **self.environment,
            "fps": self.fps,
            "first_chunk": self.first_chunk,
            "events": list(self.log.events),
            "chunks": list(self.chunks),
        }
        stored = sum(record["input_frames"] for record in self.chunks)
        if self.video_mode or stored:  # a text-mode recording may switch to video mode
            first = self.first_chunk if self.earlier_input else 0
            document["input"] = {"path": INPUT_FILE, "first_chunk": first, "frames": stored}
        if not self.chunks:
            document["length_chunks"] = 1  # nothing recorded yet: still a valid document
        return document

    # On the recording's thread ----------------------------------------------------------

    def _submit(self, fn, *args) -> None:
        future = self._worker.submit(fn, *args)
        future.add_done_callback(self._report)

    def _report(self, future: Future) -> None:
        error = future.exception()
        if error is not None and self.error is None:
            self.error = f"{type(error).__name__}: {error}"
            logger.error("recording of session %s failed: %s", self.session_id, self.error)

    def _begin(self) -> None:
        write_json_atomically(self.directory / INFO_FILE, self.info())
        if self._provenance is not None:
            self._provenance_doc = self._provenance()
            write_json_atomically(self.directory / PROVENANCE_FILE, self._provenance_doc)

    def _write_chunk(self, index: int, frames: np.ndarray, video: np.ndarray | None) -> None:
        if self.error is not None:
            return  # the files are broken: keep what was written readable
        height, width = frames.shape[1:3]
        if self._video is None:
            self._video = VideoWriter(self.directory / VIDEO_FILE, width, height, self.fps)
        self._video.write(frames)
        if video is not None and len(video):
            if self._input is None:
                self._input = LosslessInputWriter(self.directory / INPUT_FILE, video.shape[2], video.shape[1], self.fps)
            self._input.write(video)
        self.chunks.append({
            "chunk": index, "frames": len(frames), "sha256": chunk_hash(frames),
            "input_frames": 0 if video is None else len(video),
        })
        if time.monotonic() - self._sidecars_at >= SIDECAR_INTERVAL_S:
            self._write_sidecars()

    def _write_sidecars(self) -> None:
        self._sidecars_at = time.monotonic()
        write_json_atomically(self.directory / TIMELINE_FILE, self.timeline())
        write_json_atomically(self.directory / INFO_FILE, self.info())

    def _close(self) -> None:
        for writer in (self._video, self._input):
            if writer is not None:
                try:
                    writer.close()
                except Exception as exc:  # keep closing the rest; the info says what failed
                    self.error = self.error or f"closing {type(writer).__name__}: {exc}"
        if self._provenance_doc is not None:
            elapsed = time.monotonic() - self._started
            self._provenance_doc["timings"] = {
                **self._provenance_doc.get("timings", {}),
                "recorded_s": round(elapsed, 3),
                "frames": self.frames,
                "generated_fps": round(self.frames / elapsed, 3) if elapsed > 0 else None,
            }
            write_json_atomically(self.directory / PROVENANCE_FILE, self._provenance_doc)
        write_json_atomically(self.directory / TIMELINE_FILE, self.timeline())
        # Everything is on disk: only now does the recording read as stopped, here and in memory.
        write_json_atomically(self.directory / INFO_FILE, {**self.info(), "state": STOPPED})
        self.state = STOPPED
