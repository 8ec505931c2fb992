"""Server render jobs: a timeline rendered into an MP4 beside the live sessions, never in their way.

A job takes its pipeline from the pool as a session would (bound to it as ``render-<id>``, so
the pool keeps it loaded and the current pipeline stays as it is), and runs one chunk per call
on the device thread: live sessions' chunks interleave with its own. Encoding runs on a thread of
its own, overlapping the next chunk. The job's files live in ``<renders>/<job id>/``; a cancel,
a failure or a forgotten job removes them, and only complete videos carry their final name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from scope.models.artifacts import local_paths
from scope.pipelines.base import LoadContext
from scope.recording import provenance as provenance_module
from scope.recording.media import VideoWriter
from scope.recording.render import RenderResult, environment_notes, render_chunks, replay_start
from scope.recording.render_file import open_input, partial_path, render_provenance, write_json_atomically
from scope.recording.timeline import Timeline
from scope.streaming.manager import PipelineManager
from scope.streaming.placement import NoWorker
from scope.streaming.pool import ERROR, LOADING, OverBudget

logger = logging.getLogger(__name__)

QUEUED, LOADING_JOB, RENDERING, DONE, FAILED, CANCELLED = "queued", "loading", "rendering", "done", "failed", "cancelled"
ACTIVE = (QUEUED, LOADING_JOB, RENDERING)
VIDEO_NAME, PROVENANCE_NAME = "render.mp4", "provenance.json"
#: A job id as :func:`uuid.uuid4` ``.hex`` writes it; anything else names no job.
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class TooManyJobs(Exception):
    """As many jobs as allowed are queued or running."""


@dataclass
class RenderJob:
    """One render: its state as ``GET /api/v1/render/{id}`` reports it, and its files."""

    id: str
    timeline: Timeline
    pipeline_class: Any
    load_params: BaseModel
    timeline_dir: Path | None
    folder: Path
    status: str = QUEUED
    chunks_done: int = 0
    chunks_total: int = 0
    error: str | None = None
    result: RenderResult | None = None
    finished_at: float | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None

    @property
    def session_id(self) -> str:
        return f"render-{self.id}"

    @property
    def video(self) -> Path:
        return self.folder / VIDEO_NAME

    @property
    def provenance(self) -> Path:
        return self.folder / PROVENANCE_NAME

    def describe(self, base: str = "/api/v1/render") -> dict[str, Any]:
        result = None
        if self.status == DONE and self.result is not None:
            result = {
                "url_video": f"{base}/{self.id}/video",
                "url_provenance": f"{base}/{self.id}/provenance",
                "render": {**self.result.to_json(), "hashes": {str(k): v for k, v in self.result.hashes.items()}},
            }
        return {
            "job_id": self.id,
            "status": self.status,
            "progress": {"chunks_done": self.chunks_done, "chunks_total": self.chunks_total},
            "error": self.error,
            "result": result,
        }


class RenderJobs:
    """The server's render jobs: at most ``max_active`` queued or running, the latest
    ``max_finished`` finished ones kept (the oldest forgotten, its files removed)."""

    def __init__(
        self,
        manager: PipelineManager,
        root: Path,
        *,
        assets_dir: Path,
        max_active: int = 4,
        max_finished: int = 16,
        digests: provenance_module.FileDigests | None = None,
    ):
        self.manager = manager
        self.root = root
        self.assets_dir = assets_dir
        self.max_active = max_active
        self.max_finished = max_finished
        self.digests = digests or provenance_module.FileDigests()
        self.jobs: dict[str, RenderJob] = {}
        # Encoding beside the device thread, so neither it nor the event loop waits on it.
        self.encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scope-render-encode")
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Jobs live as long as the server: folders of an earlier run belong to no job."""
        if not self.root.is_dir():
            return
        for child in self.root.iterdir():
            if child.is_dir() and JOB_ID.match(child.name):
                shutil.rmtree(child, ignore_errors=True)

    @property
    def context(self) -> LoadContext:
        return self.manager.context

    def get(self, job_id: str) -> RenderJob | None:
        return self.jobs.get(job_id) if JOB_ID.match(job_id) else None

    def submit(self, timeline: Timeline, pipeline_class, load_params: BaseModel, timeline_dir: Path | None) -> RenderJob:
        """Queue a validated timeline; :class:`TooManyJobs` when the active ones are at the limit."""
        active = sum(1 for job in self.jobs.values() if job.status in ACTIVE)
        if active >= self.max_active:
            raise TooManyJobs(f"{active} render jobs are queued or running (at most {self.max_active}); wait for one to finish or cancel one")
        job_id = uuid.uuid4().hex
        job = RenderJob(job_id, timeline, pipeline_class, load_params, timeline_dir, self.root / job_id)
        job.chunks_total = timeline.end_chunk - replay_start(timeline)
        self.jobs[job_id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job))
        return job

    async def delete(self, job: RenderJob) -> None:
        """Cancel an active job (it stops between chunks; its files are removed), or forget a
        finished one (and its files)."""
        if job.status in ACTIVE:
            job.cancel.set()
            if job.task is not None:
                await asyncio.shield(job.task)
            return
        self.jobs.pop(job.id, None)
        await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, job.folder, True)

    async def close(self) -> None:
        """Cancel every active job and wait for them (server shutdown)."""
        for job in list(self.jobs.values()):
            job.cancel.set()
        tasks = [job.task for job in self.jobs.values() if job.task is not None and not job.task.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.encoder.shutdown(wait=True)

    # The job itself -----------------------------------------------------------------------

    async def _run(self, job: RenderJob) -> None:
        loop = asyncio.get_running_loop()
        slot = None
        try:
            job.status = LOADING_JOB
            started = time.monotonic()
            missing = self._missing_files(job)
            if missing:
                raise _Failed(missing)
            target = job.load_params.model_dump(mode="json")
            slot = await self.manager.slot_for(job.timeline.pipeline_id, target, session_id=job.session_id)
            while slot.status == LOADING and not job.cancel.is_set():
                await _first(slot.wait_changed(), job.cancel.wait())
            if job.cancel.is_set():
                raise _Cancelled
            if slot.status == ERROR or slot.pipeline is None:
                raise _Failed(slot.error or f"pipeline {job.timeline.pipeline_id} is not loaded")
            load_s = time.monotonic() - started
            job.status = RENDERING
            await self._render(job, slot, load_s)
            job.status = DONE
        except _Cancelled:
            job.status = CANCELLED
        except (OverBudget, NoWorker, _Failed) as exc:  # told to the client; no traceback to log
            logger.warning("render job %s failed: %s", job.id, exc)
            job.status, job.error = FAILED, str(exc)
        except Exception as exc:  # noqa: BLE001 - the job reports it; the server goes on
            logger.exception("render job %s failed", job.id)
            job.status, job.error = FAILED, str(exc) or exc.__class__.__name__
        finally:
            job.finished_at = time.monotonic()
            if job.status != DONE:
                await loop.run_in_executor(None, shutil.rmtree, job.folder, True)
            if slot is not None:
                await self.manager.release(slot, job.session_id)
            self._forget_oldest()

    async def _render(self, job: RenderJob, slot, load_s: float) -> None:
        loop = asyncio.get_running_loop()
        device, pipeline = slot.executor, slot.pipeline  # the thread of the worker that holds it
        job.folder.mkdir(parents=True, exist_ok=True)
        reader = await loop.run_in_executor(None, open_input, job.timeline, job.timeline_dir)
        environment = provenance_module.run_environment()
        result = RenderResult(notes=environment_notes(job.timeline, environment["device"], environment["dtype"], environment["torch_threads"]))
        chunks = render_chunks(
            job.timeline, pipeline, input_frames=reader.read if reader is not None else None, assets_dir=self.assets_dir
        )
        partial = partial_path(job.video)
        writer: list[VideoWriter] = []
        encoding: asyncio.Future | None = None
        rendering = time.monotonic()
        try:
            while True:
                if job.cancel.is_set():
                    raise _Cancelled
                chunk = await loop.run_in_executor(device, next, chunks, None)
                if chunk is None:
                    break
                result.add(chunk)
                job.chunks_done = result.chunks
                if chunk.index >= job.timeline.first_chunk:
                    if encoding is not None:
                        await encoding
                    encoding = loop.run_in_executor(self.encoder, _encode, writer, partial, chunk.frames, job.timeline.fps)
            if encoding is not None:
                await encoding
            if not writer:
                raise ValueError("the timeline generated no frames to write")
            await loop.run_in_executor(self.encoder, writer[0].close)
            result.seconds = time.monotonic() - rendering
            os.replace(partial, job.video)
            document = await loop.run_in_executor(
                None,
                lambda: render_provenance(
                    job.timeline, job.pipeline_class, job.load_params, self.context, environment,
                    load_s=load_s, render_s=result.seconds, frames=result.frames, digests=self.digests,
                ),
            )
            await loop.run_in_executor(None, write_json_atomically, job.provenance, document)
            job.result = result
        finally:
            if encoding is not None and not encoding.done():
                await asyncio.gather(encoding, return_exceptions=True)
            await loop.run_in_executor(device, chunks.close)  # closes the stream on the device thread
            if writer:
                await loop.run_in_executor(self.encoder, _close_quietly, writer[0])
            if reader is not None:
                reader.close()

    def _missing_files(self, job: RenderJob) -> str | None:
        """Why the job's pipeline cannot load (its weight files are missing, and the server
        writes no synthetic ones), or None: said before any load is tried."""
        cls = job.pipeline_class
        if not cls.artifacts or self.manager.synthetic_fallback:
            return None
        missing = [path for path in local_paths(self.context.models_dir, cls.artifacts) if not path.exists()]
        if not missing:
            return None
        shown = ", ".join(str(path) for path in missing[:4]) + (" ..." if len(missing) > 4 else "")
        return f"model files for {cls.info.id} are missing ({shown}); download them with 'download_models --pipeline {cls.info.id}'"

    def _forget_oldest(self) -> None:
        finished = sorted((job for job in self.jobs.values() if job.status not in ACTIVE), key=lambda job: job.finished_at or 0.0)
        for job in finished[: max(0, len(finished) - self.max_finished)]:
            self.jobs.pop(job.id, None)
            shutil.rmtree(job.folder, ignore_errors=True)


class _Cancelled(Exception):
    """The job was cancelled (DELETE, or the server stopping)."""


class _Failed(Exception):
    """The job cannot go on, for a reason the client is told (its pipeline did not load)."""


def _encode(writer: list[VideoWriter], path: Path, frames, fps: float) -> None:
    """Encode one chunk (on the encoder thread), opening the video at the first chunk's size."""
    if not writer:
        writer.append(VideoWriter(path, frames.shape[2], frames.shape[1], fps))
    writer[0].write(frames)


def _close_quietly(writer: VideoWriter) -> None:
    try:
        writer.close()
    except Exception:  # noqa: BLE001 - the render's own error, if any, is the one reported
        logger.debug("closing a render's video after an error", exc_info=True)


async def _first(*waits) -> None:
    """Wait until the first of ``waits`` finishes; cancel the others."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
