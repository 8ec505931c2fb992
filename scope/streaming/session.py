"""One streaming session: its parameters, input, generation loop and output.

The session is the same whatever carries it; its :class:`~scope.streaming.peers.SessionPeer`
(a WebRTC peer, a WebSocket, or none for a headless session) sends its messages and frames.

The generation loop runs on the event loop and hands each chunk to its worker's generation
thread, so the loop never blocks. Each session is bound to one pipeline of the pool (its slot) until it
ends, and opens its own :class:`~scope.pipelines.base.Stream` on it once it has loaded; a load
that fails ends the session with ``stream_stopped`` naming the error.

Every task of a session ends through one guard: an error nothing else handled (opening the
stream, reading input, pushing frames) closes the session with ``stream_stopped`` naming it,
so a peer never watches a frozen picture without being told why.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from scope.params import ParameterErrors, parse_parameters, unused_parameters
from scope.pipelines.base import Stream
from scope.recording.service import RecordingService
from scope.recording.session_log import SessionLog
from scope.streaming.asset_parameters import ASSET_PARAMETERS, names_assets, resolved_assets, unreadable_assets
from scope.streaming.failures import RepeatedFailures
from scope.streaming.messages import CLIENT_MESSAGE_TYPES, parameter_warnings, unknown_type_rejection
from scope.streaming.parameter_state import ParameterState
from scope.streaming.peers import SessionPeer
from scope.streaming.pool import LOADED, LOADING, PipelineSlot
from scope.streaming.session_recording import SessionRecording
from scope.streaming.session_stats import SessionStats
from scope.streaming.tracks import ChunkRateMeter, InputBuffer, OutputTrack
from scope.streaming.worker import WorkerLost

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 0.5
FAILURE_BACKOFF_S = 0.2
#: Without a chunk for this long while waiting for input, a session reports "waiting".
INPUT_STALL_S = 1.0
#: ``parameters_rejected`` text for JSON too deep to parse (thousands of levels).
TOO_DEEP = "message nested too deeply to parse"
#: How long a session ending with an error waits for its data channel to open, so the peer
#: reads why (a refused peer, or a failure before the peer connected).
CHANNEL_GRACE_S = 5.0
#: After which chunks a session measures what its stream holds (its caches fill over the first
#: chunks), so the pool learns the caches of this pipeline's streams.
STREAM_MEASURES = (1, 8)
#: What each session task does, as ``stream_stopped`` names it when the task fails.
TASK_ROLES = {
    "generate": "generation",
    "input": "reading the input video",
    "stats": "reporting stats",
    "liveness": "watching the peer",
    "refuse": "refusing the peer",
    "assets": "reading the files a message names",
    "recording": "recording",
    "output": "sending the output",
}


class UpdateRefused(Exception):
    """A parameters update refused as a whole; ``errors`` are ``{"loc", "msg"}`` naming each field."""

    def __init__(self, errors: list[dict[str, Any]]):
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


class FatalStreamError(Exception):
    """An error after which the session cannot go on (e.g. out of device memory)."""


def is_fatal(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, FatalStreamError, WorkerLost)):
        return True
    return "out of memory" in str(exc).lower()


class StreamSession(SessionRecording):
    """A peer bound to one pipeline of the pool through its own stream state."""

    def __init__(
        self,
        session_id: str,
        peer: SessionPeer,
        slot: PipelineSlot,
        initial_parameters: dict[str, Any],
        on_closed: Callable[["StreamSession"], None],
        max_repeated_failures: int = 3,
        recordings: RecordingService | None = None,
    ):
        self.id = session_id
        self.peer = peer
        #: The pipeline this session streams from, whatever is loaded after it.
        self.slot = slot
        #: Its worker's generation thread: its chunks take turns there with the worker's other sessions.
        self.executor = slot.executor
        initial_parameters = dict(initial_parameters)
        #: ``recording: true`` in the initial parameters records from the stream's first chunk.
        self._record_from_start = bool(initial_parameters.pop("recording", False))
        self.parameters = ParameterState(initial_parameters)
        #: What the stream took, chunk by chunk: the timeline a recording writes.
        self.log = SessionLog()
        self.recordings = recordings
        self.recorder = None
        self._recording_opens: asyncio.Task | None = None
        #: A chunk has consumed input (a recording started later cannot replay from the start).
        self._consumed_input = False
        self.pipeline_meter = ChunkRateMeter()
        self.input = InputBuffer()
        self.track = OutputTrack(rate=self.output_fps)
        self.paused = False
        self.state = "waiting"
        self.chunks = 0
        self.chunk_ms = 0.0
        self.closed = False
        #: The peer has connected at least once (the session counts as streaming, not pending).
        self.connected = False
        self._on_closed = on_closed
        self._failures = RepeatedFailures(max_repeated_failures)
        self._outbox: list[str] = []
        #: Messages that arrived while an earlier one's files are read (None: none is being read).
        self._held: list[str | bytes] | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._stream: Stream | None = None
        #: The initial parameters were checked against the loaded pipeline (not yet when the
        #: offer came while it loaded: then they are checked before the stream opens).
        self._checked = slot.pipeline is not None
        self._init_cache = True
        self._flushes = 0
        self._last_chunk_frames = 0
        self._last_chunk_at = 0.0
        self._input_track: MediaStreamTrack | None = None
        #: The peer sends input frames (a WebRTC track, or a WebSocket's input messages).
        self._has_input = False
        self._disconnect_timer: asyncio.TimerHandle | None = None
        peer.bind(self)
        slot.add_listener(self._on_pipeline_event)
        if slot.status == LOADING:  # queued before the "loaded" the listener may send
            self._on_pipeline_event("loading", f"Loading pipeline {slot.target.pipeline_id}")

    # Wiring -----------------------------------------------------------------------------

    @property
    def pc(self):
        """The WebRTC peer connection (None for sessions over another transport)."""
        return getattr(self.peer, "pc", None)

    @property
    def transport(self) -> str:
        return self.peer.transport

    def start(self, connect_timeout: float) -> None:
        if self._record_from_start:  # the first chunk waits for it (see _generate_loop)
            self._recording_opens = self._spawn(self._recording_request(True), "recording")
        self._spawn(self._generate_loop(), "generate")
        self._spawn(self._stats_loop(), "stats")
        self._disconnect_timer = asyncio.get_running_loop().call_later(connect_timeout, self._close_if_not_connected)

    def _close_if_not_connected(self) -> None:
        self._disconnect_timer = None
        if self.peer.connection_state != "connected":
            logger.info("session %s: peer never connected; closing", self.id)
            self._spawn_close()

    def spawn_task(self, coro, name: str) -> asyncio.Task:
        """Run ``coro`` as one of the session's tasks: under its guard, cancelled when it closes
        (``name`` is a :data:`TASK_ROLES` key)."""
        return self._spawn(coro, name)

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._guard(coro, name), name=f"scope-session-{self.id[:8]}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro, name: str) -> None:
        """Run a session task; an error it did not handle is logged and ends the session."""
        try:
            await coro
        except Exception as exc:
            if self.closed:
                logger.warning("session %s: the %s task failed while closing: %r", self.id, name, exc)
                return
            logger.exception("session %s: the %s task failed; closing the session", self.id, name)
            await self.close(error_message=f"{TASK_ROLES.get(name, name)} failed: {_describe(exc)}")

    def attach_input(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and self._input_track is None:
            self._input_track = track
            self._has_input = True
            self._spawn(self._read_input(track), "input")

    def put_input(self, frame: np.ndarray | None) -> None:
        """An input frame from the peer (None: one it sent that could not be used). Video mode
        buffers it; text mode takes no input, only its rate, which paces the output."""
        self._has_input = True
        if self._mode() != "video":
            self.input.meter.tick()
        elif frame is None:
            self.input.skip()
        else:
            self.input.put(frame)

    def wants_input(self) -> bool:
        """Whether input frames are buffered now (video mode) rather than only counted."""
        return self._mode() == "video"

    def connection_state_changed(self, state: str, timeout: float) -> None:
        if state in ("failed", "closed"):
            self._spawn_close()
        elif state == "disconnected":
            if self._disconnect_timer is not None:
                self._disconnect_timer.cancel()
            self._disconnect_timer = asyncio.get_running_loop().call_later(timeout, self._spawn_close)
        elif state == "connected":
            if self._disconnect_timer is not None:
                self._disconnect_timer.cancel()
                self._disconnect_timer = None
            if not self.connected:
                self.connected = True
                watch = self.peer.liveness(timeout, self.peer_gone)
                if watch is not None:
                    self._spawn(watch, "liveness")

    def peer_gone(self, silent_s: float) -> None:
        """The peer has sent nothing for ``silent_s`` seconds: it went without closing."""
        logger.info("session %s: nothing from the peer for %.1f s; closing", self.id, silent_s)
        self._spawn_close()

    def refuse(self, reason: str) -> None:
        """Close a session whose peer connected when it may not stream (the limit is reached)."""
        logger.info("session %s: refused on connect: %s", self.id, reason)
        if not self.closed:
            self._spawn(self.close(error_message=reason), "refuse")

    async def _wait_for_channel(self, timeout: float) -> None:
        """Wait until messages reach the peer, unless it has gone (or ``timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and not self.peer.gone:
            if self.peer.message_open:
                return
            await asyncio.sleep(0.05)

    def _spawn_close(self) -> None:
        if not self.closed:
            asyncio.get_running_loop().create_task(self.close(notify=False))

    # Messages ---------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        """Send a JSON message to the peer, queueing it until messages can reach it."""
        text = json.dumps(message)
        if self.peer.message_open:
            self.peer.send_text(text)
        else:
            self._outbox.append(text)

    def flush_outbox(self) -> None:
        """Send what waited for the peer (its data channel or socket has just opened)."""
        outbox, self._outbox = self._outbox, []
        for text in outbox:
            self.peer.send_text(text)

    def handle_message(self, raw: str | bytes) -> None:
        """A data-channel message: validate, then merge it (or refuse it as a whole).

        A message naming asset files waits for them to be read off the event loop; messages
        that arrive meanwhile wait behind it, so updates still apply in arrival order.
        """
        if self._held is not None:
            self._held.append(raw)
            return
        try:
            message = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            self.send({"type": "parameters_rejected", "errors": [{"loc": [], "msg": f"invalid JSON: {exc}"}]})
            return
        except RecursionError:
            self.send({"type": "parameters_rejected", "errors": [{"loc": [], "msg": TOO_DEEP}]})
            return
        if isinstance(message, dict) and message.get("type") not in (None, *CLIENT_MESSAGE_TYPES):
            self.send(unknown_type_rejection(message.get("type")))
            return
        if isinstance(message, dict):
            message = {k: v for k, v in message.items() if k != "type"}
        try:
            update, warnings = self.check_update(message)
        except UpdateRefused as exc:
            self.send({"type": "parameters_rejected", "errors": exc.errors})
            return
        if names_assets(update):
            self._held = []
            self._spawn(self._apply_after_reading(update, warnings), "assets")
            return
        for warning in warnings:
            self.send(warning)
        self.apply_update(update)

    def check_update(self, message: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Validate a parameters update for this session's pipeline: the update and its
        ``parameters_warning`` messages, or :class:`UpdateRefused` naming each field."""
        model = self.slot.pipeline_class.parameters_model
        try:
            context = self.slot.context.validation_context()
            update, unknown = parse_parameters(message, model, context=context)
        except ParameterErrors as exc:
            raise UpdateRefused([{"loc": e["loc"], "msg": e["msg"]} for e in exc.errors]) from None
        except RecursionError:
            raise UpdateRefused([{"loc": [], "msg": TOO_DEEP}]) from None
        pipeline = self.slot.pipeline
        # The pipeline sees the mode the update will run in (StreamDiffusionV2 takes VACE in text mode only).
        in_mode = {"input_mode": self.parameters.input_mode, **update} if self.parameters.input_mode else update
        # Before the pipeline has loaded, what only it can check waits until the stream opens.
        errors = pipeline.check_parameters(in_mode) if pipeline is not None else []
        if errors:
            raise UpdateRefused([{"loc": e["loc"], "msg": e["msg"]} for e in errors])
        mode, info = update.get("input_mode"), self.slot.pipeline_class.info
        if mode and mode not in info.supported_modes:
            raise UpdateRefused([{"loc": ["input_mode"], "msg": f"input_mode '{mode}' is not supported by pipeline '{info.id}'"}])
        return update, parameter_warnings(self.slot.pipeline_class, list(update), unknown)

    async def apply_request(self, message: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """An update from an HTTP request (the headless API): checked like a message, the files it
        names read off the loop, then applied; :class:`UpdateRefused` leaves everything as it was."""
        update, warnings = self.check_update(message)
        if names_assets(update):
            skip = frozenset(unused_parameters(self.slot.pipeline_class.parameters_model, ASSET_PARAMETERS))
            errors = await asyncio.to_thread(unreadable_assets, update, self.slot.context.assets_dir, skip)
            if errors:
                raise UpdateRefused([{"loc": e["loc"], "msg": e["msg"]} for e in errors])
        self.apply_update(update)
        return update, warnings

    async def _apply_after_reading(self, update: dict[str, Any], warnings: list[dict[str, Any]]) -> None:
        """Read the files ``update`` names, then apply it (or refuse it naming each unreadable
        file), then handle the messages held meanwhile."""
        try:
            skip = frozenset(unused_parameters(self.slot.pipeline_class.parameters_model, ASSET_PARAMETERS))
            errors = await asyncio.to_thread(unreadable_assets, update, self.slot.context.assets_dir, skip)
            if errors:
                self.send({"type": "parameters_rejected", "errors": [{"loc": e["loc"], "msg": e["msg"]} for e in errors]})
            else:
                for warning in warnings:
                    self.send(warning)
                self.apply_update(update)
        finally:
            held, self._held = self._held or [], None
            for index, raw in enumerate(held if not self.closed else ()):
                if self._held is not None:  # this one's files are being read: the rest wait behind it
                    self._held.extend(held[index:])
                    break
                self.handle_message(raw)

    def apply_update(self, update: dict[str, Any]) -> None:
        """Apply a validated update; ``paused`` acts at once, the rest on the next chunk."""
        update = dict(update)
        update.pop("spout_sender", None)
        update.pop("spout_receiver", None)
        if update.get("recording") is not None:
            self._spawn(self._recording_request(update.pop("recording")), "recording")
        update.pop("recording", None)
        if "paused" in update:
            self.paused = bool(update.pop("paused"))
            self.log.note("paused", self.paused)
            self.track.hold = self.paused or self.slot.status != LOADED
            self.track.frozen = self.paused
            self.track.wake()
        switched = "input_mode" in update and update["input_mode"] != self._mode()
        if switched:
            self.input.clear()  # frames meant for the other mode
        if update.get("reset_cache") or switched:
            self._flush_output()
        if update:
            self.parameters.update(update)
        self._wake.set()

    def _flush_output(self) -> None:
        """Drop the output queued for playback, and the output of a chunk in flight: it was
        made before a reset or a mode switch, and the viewer should not wait for it."""
        self.track.flush()
        self._flushes += 1

    def _on_pipeline_event(self, event: str, message: str) -> None:
        if event in ("loading", "loaded", "load_failed"):
            self.send({"type": "pipeline_event", "event": event, "message": message})
        self._wake.set()

    # Generation -------------------------------------------------------------------------

    def output_fps(self) -> float:
        pipeline_fps = self.pipeline_meter.fps
        input_fps = self.input.meter.fps if self._has_input else None
        return min(pipeline_fps, input_fps) if input_fps else pipeline_fps

    def _set_state(self, state: str, hold: bool = False) -> None:
        """Record the state; ``hold`` repeats the last frame (paused, or no pipeline to run)."""
        self.state = state
        self.track.hold = self.paused or hold
        self.track.wake()

    async def _wait(self, *aws, timeout: float = 1.0) -> None:
        """Sleep until woken (message, pipeline change) or one of ``aws`` finishes."""
        self._wake.clear()
        waiters = [asyncio.ensure_future(self._wake.wait()), *(asyncio.ensure_future(a) for a in aws)]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _mode(self) -> str:
        return self.parameters.input_mode or self.slot.pipeline_class.info.default_mode

    async def _generate_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.closed:
            if self.track.readyState != "live":
                # The sender stopped the output track (its transport closed): nobody can watch
                # this stream any more, and a queue that never drains would keep this loop busy.
                logger.info("session %s: the output track ended; closing", self.id)
                await self.close(notify=False)
                return
            if self.paused:
                self._set_state("paused", hold=True)
                await self._wait()
                continue
            slot = self.slot
            if slot.status == LOADING:
                self._set_state("loading", hold=True)
                await self._wait(slot.wait_changed())
                continue
            if slot.status != LOADED or slot.pipeline is None:
                await self.close(error_message=slot.error or f"Pipeline {slot.target.pipeline_id} was unloaded")
                return
            if self._stream is None:
                if not self._checked:
                    errors = slot.pipeline.check_parameters(self.parameters.snapshot())
                    if errors:
                        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
                        await self.close(error_message=f"initialParameters: {problems}")
                        return
                    self._checked = True
                self._stream = await loop.run_in_executor(self.executor, slot.pipeline.open_stream)
                self._init_cache = True
                self.input.clear()
                self._flush_output()
                continue
            stream = self._stream
            if self._last_chunk_frames and self.track.queued > self._last_chunk_frames:
                # Playback is more than a chunk behind: wait instead of producing frames to drop.
                await self.track.wait_for_room(self._last_chunk_frames, timeout=1.0)
                continue
            video, arrived = None, ()
            if self._mode() == "video":
                needed = stream.frames_needed(self.parameters.snapshot())
                if needed > 0:
                    if len(self.input) < needed:
                        if self.chunks == 0 or time.monotonic() - self._last_chunk_at > INPUT_STALL_S:
                            self._set_state("waiting")  # no input yet, or the input stopped
                        await self._wait(self.input.wait_for(needed, timeout=INPUT_STALL_S))
                        continue
                    taken = self.input.take(needed)
                    video, arrived = taken.frames, taken.arrived
            if self._recording_opens is not None:
                # initialParameters.recording: the recording starts with the stream's first chunk.
                await asyncio.wait({self._recording_opens})
                self._recording_opens = None
            self.log.taking(self.parameters.pending)
            params = self.parameters.take_chunk()
            flushes = self._flushes
            # A fresh stream starts with its caches reset whatever the client says.
            init_cache = bool(params.pop("reset_cache", False)) or self._init_cache
            started = time.perf_counter()
            try:
                # The stream opens asset files by the paths resolved inside the assets directory.
                for_stream = resolved_assets(params, self.slot.context.assets_dir)
                chunk = await loop.run_in_executor(
                    self.executor, functools.partial(stream.run_chunk, for_stream, video, init_cache=init_cache)
                )
            except Exception as exc:
                if self.closed:
                    return
                # The one-shot requests it carried (reset_cache, ...) go to the next attempt.
                self.parameters.restore()
                if is_fatal(exc):
                    logger.exception("session %s: fatal pipeline error", self.id)
                    await self.close(error_message=str(exc))
                    return
                logger.warning("session %s: chunk failed: %s", self.id, exc)
                self.send({"type": "pipeline_event", "event": "chunk_failed", "message": str(exc)})
                if self._failures.record(exc):
                    count = self._failures.count
                    logger.error("session %s: the same chunk failure %d times in a row; ending the stream", self.id, count)
                    await self.close(error_message=f"{count} chunks in a row failed with: {exc}")
                    return
                await asyncio.sleep(FAILURE_BACKOFF_S)
                continue
            if self.closed or self._stream is not stream:
                self.parameters.restore()  # closed meanwhile
                continue
            elapsed = time.perf_counter() - started
            self._failures.succeeded()
            self._init_cache = False
            frames = chunk.frames
            self.log.took(self.chunks)
            self._record(self.chunks, frames, video)
            self._consumed_input = self._consumed_input or video is not None
            self.chunks += 1
            self.chunk_ms = elapsed * 1000.0
            self._last_chunk_at = time.monotonic()
            self.pipeline_meter.record(elapsed, len(frames))
            if "transition" in params and not chunk.transition_active:
                self.parameters.finish_transition()
            self._last_chunk_frames = len(frames)
            self.track.grow(len(frames))
            if self.chunks in STREAM_MEASURES:
                measure = functools.partial(self.slot.worker.stream_bytes, stream, self.slot.pipeline)
                self.slot.stream_measured(await loop.run_in_executor(self.executor, measure))
            if self._flushes != flushes:
                continue  # flushed while this chunk was made: its frames are stale
            self.track.push(frames, origins_of(len(frames), arrived))
            self._set_state("streaming")

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await asyncio.get_running_loop().run_in_executor(self.executor, stream.close)

    async def _read_input(self, track: MediaStreamTrack) -> None:
        while not self.closed:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.put_input(frame.to_ndarray(format="rgb24") if self.wants_input() else None)

    # Reporting --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The session's :class:`SessionStats`, as JSON (the ``stats`` message and ``SessionInfo``)."""
        pipeline = self.slot.pipeline
        return SessionStats(
            fps=round(self.peer.fps, 2),
            chunk=self.chunks,
            chunk_ms=round(self.chunk_ms, 2),
            pipeline_id=self.slot.target.pipeline_id,
            synthetic=bool(pipeline and pipeline.synthetic),
            state="paused" if self.paused else self.state,
            input_frames_received=self.input.received,
            input_frames_used=self.input.used,
            input_frames_dropped=self.input.dropped,
            latency_ms=self.track.latency.percentile_ms(50),
            latency_p95_ms=self.track.latency.percentile_ms(95),
            transport=self.peer.transport,
            frames_sent=self.peer.frames_sent,
            link_frames_dropped=self.peer.link_frames_dropped,
            bytes_per_s=self.peer.bytes_per_s,
        ).model_dump(mode="json")

    async def _stats_loop(self) -> None:
        while not self.closed:
            await asyncio.sleep(STATS_INTERVAL_S)
            if self.peer.message_open:
                self.send({"type": "stats", **self.stats()})

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "input_mode": self._mode(),
            "pipeline_id": self.slot.target.pipeline_id,
            "load_params": self.slot.target.load_params,
            "transport": self.peer.transport,
            "worker": self.slot.worker.id if self.slot.worker is not None else None,
            "connection_state": self.peer.connection_state,
            "parameters": self.parameters.snapshot(),
            "stats": self.stats(),
            "lora_scales": [
                {"path": str(path), "scale": scale} for path, scale in getattr(self._stream, "lora_scales", {}).items()
            ],
        }

    # Teardown ---------------------------------------------------------------------------

    async def close(self, error_message: str | None = None, notify: bool = True) -> None:
        """Stop everything the session owns. ``notify`` sends ``stream_stopped`` first."""
        if self.closed:
            return
        self.closed = True
        self.slot.remove_listener(self._on_pipeline_event)
        if self._disconnect_timer is not None:
            self._disconnect_timer.cancel()
        if notify and error_message:
            # The channel opens just after the connection: give it a moment so the peer reads
            # why in ``stream_stopped`` instead of just losing the connection.
            await self._wait_for_channel(CHANNEL_GRACE_S)
        if notify and self.peer.message_open:
            message = {"type": "stream_stopped"}
            if error_message:
                message["error_message"] = error_message
            self.peer.send_text(json.dumps(message))
            await self.peer.drain()
        try:
            # A stop already decided (a limit) finishes the same files: this waits for them.
            self.recorder = None
            await self._finish_recording("session_ended")
        except Exception:
            logger.warning("session %s: finishing its recording failed", self.id, exc_info=True)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.track.stop()
        # Teardown goes on whatever fails, but what failed is logged.
        try:
            await self._close_stream()
        except Exception:
            logger.warning("session %s: closing its stream failed", self.id, exc_info=True)
        try:
            await self.peer.close()
        except Exception:
            logger.warning("session %s: closing its peer connection failed", self.id, exc_info=True)
        self._on_closed(self)


def origins_of(count: int, arrived: tuple[float, ...]) -> list[float | None]:
    """The input arrival time each of a chunk's ``count`` output frames carries: outputs map onto
    the inputs in order, proportionally (none when the chunk was made without input)."""
    if not arrived:
        return [None] * count
    last = len(arrived) - 1
    return [arrived[round(j * last / max(count - 1, 1))] for j in range(count)]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

