"""A session's server-side recording: the part of :class:`StreamSession` that starts and stops
it, hands it each generated chunk, and stops it at its limits.

The recording itself (files, encoding, sidecars) is :class:`scope.recording.recorder.SessionRecorder`;
the server's recordings (quota, listing) are :class:`scope.recording.service.RecordingService`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from scope.recording.service import STOP_REASONS, RecordingError

logger = logging.getLogger(__name__)

#: The frame rate a recording plays at when the pipeline passes its input through and the
#: input's rate is not known yet.
FALLBACK_RECORDING_FPS = 30.0


class SessionRecording:
    """Mixed into :class:`~scope.streaming.session.StreamSession` (its ``id``, ``slot``,
    ``chunks``, ``log``, ``recordings``, ``recorder``, ``send`` and ``_spawn``)."""

    async def start_recording(self) -> dict[str, Any]:
        """Record this session from its next chunk on; returns the recording's entry. Raises
        :class:`RecordingError` (409 recording already, 507 quota reached, 503 no recordings)."""
        if self.recordings is None:
            raise RecordingError(503, "This server keeps no recordings.")
        if self.closed:
            raise RecordingError(404, f"Session {self.id} has ended")
        from scope.recording.provenance import run_environment

        environment = await asyncio.to_thread(run_environment)
        recorder = await self.recordings.open(self.id, functools.partial(self._make_recorder, environment))
        if self.closed:  # it ended while the recording opened: nothing else would stop it
            await self.recordings.close(self.id, "session_ended")
            raise RecordingError(404, f"Session {self.id} has ended")
        self.recorder = recorder
        self.send({"type": "recording_started", "session_id": self.id, "first_chunk": recorder.first_chunk})
        logger.info("session %s: recording from chunk %d", self.id, recorder.first_chunk)
        return {**recorder.info(), "bytes": recorder.bytes()}

    def _make_recorder(self, environment: dict[str, Any], directory):
        from scope.recording.recorder import SessionRecorder

        slot = self.slot
        fps = slot.pipeline_class.frame_rate or round(self.input.meter.fps or 0.0) or FALLBACK_RECORDING_FPS
        return SessionRecorder(
            directory,
            session_id=self.id,
            pipeline_id=slot.target.pipeline_id,
            load_params=slot.target.load_params,
            environment=environment,
            fps=float(fps),
            log=self.log,
            first_chunk=self.chunks,
            video_mode=self._mode() == "video",
            earlier_input=self._consumed_input,
            max_seconds=self.recordings.max_seconds,
            provenance=functools.partial(self._provenance, environment),
        )

    def _provenance(self, environment: dict[str, Any]) -> dict[str, Any]:
        """What produced this session's frames (run on the recording's thread: it hashes the weights)."""
        from scope.recording.provenance import provenance, seeds_of

        slot = self.slot
        cls = slot.pipeline_class
        load_params = cls.load_params_model.model_validate(slot.target.load_params)
        return provenance(
            pipeline_class=cls, load_params=load_params, context=slot.context,
            initial_parameters=self.log.initial or self.parameters.snapshot(), seeds=seeds_of(load_params),
            device=environment["device"], dtype=environment["dtype"], torch_threads=environment["torch_threads"],
            timings={}, digests=self.recordings.digests,
        )

    async def stop_recording(self, reason: str = "requested") -> dict[str, Any] | None:
        """Stop the recording (None when none runs); the peer reads ``recording_stopped`` with why."""
        if self.recorder is None:
            return None
        self.recorder = None  # at once: no chunk is added once a stop is decided
        return await self._finish_recording(reason)

    def _stop_recording_soon(self, reason: str) -> None:
        self.recorder = None
        self._spawn(self._finish_recording(reason), "recording")

    async def _finish_recording(self, reason: str) -> dict[str, Any] | None:
        if self.recordings is None:
            return None
        info = await self.recordings.close(self.id, reason)
        if info is not None and info["stop_reason"] == reason:  # not a stop already told
            self.send({
                "type": "recording_stopped", "session_id": self.id, "reason": reason, "message": STOP_REASONS[reason],
                "frames": info["frames"], "duration_s": info["duration_s"],
            })
            logger.info("session %s: recording stopped (%s) after %d frames", self.id, reason, info["frames"])
        return info

    async def _recording_request(self, on: bool) -> None:
        """The data channel's ``recording`` parameter: refusals are told on the channel."""
        try:
            if on:
                await self.start_recording()
            else:
                await self.stop_recording("requested")
        except RecordingError as exc:
            self.send({"type": "parameters_rejected", "errors": [{"loc": ["recording"], "msg": str(exc)}]})

    def _record(self, index: int, frames, video) -> None:
        """Hand a generated chunk to the recording; stop it at its duration or the quota."""
        recorder = self.recorder
        if recorder is None:
            return
        if recorder.error is not None:
            self._stop_recording_soon("failed")
            return
        if not recorder.fits(len(frames)):
            self._stop_recording_soon("max_duration")
            return
        recorder.add_chunk(index, frames, video)
        if self.recordings.limit_reached(self.id):
            self._stop_recording_soon("quota")
