"""Sessions of every transport, and WebRTC signalling: offers become sessions, trickled
candidates reach their peer. The WebSocket and headless ways in are mixins of the same service
(``websocket_sessions.py``, ``headless_sessions.py``), so every session shares its limits."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from scope.config import setting_default
from scope.params import ParameterErrors, parse_parameters, unused_parameters
from scope.pipelines.base import Pipeline
from scope.recording.service import RecordingService
from scope.streaming.asset_parameters import ASSET_PARAMETERS, names_assets, unreadable_assets
from scope.streaming.host_addresses import drop_unreachable_candidates, may_check
from scope.streaming.manager import LOADED, LOADING, LoadTarget, NoWorker, OverBudget, PipelineManager, TargetErrors
from scope.streaming.messages import parameter_warnings
from scope.streaming.headless_sessions import HeadlessSessions
from scope.streaming.offer_check import OfferProblem, check_offer, sends_video
from scope.streaming.peers import SessionPeer, WebRTCPeer
from scope.streaming.pool import PipelineSlot
from scope.streaming.session import StreamSession
from scope.streaming.session_errors import SignallingError
from scope.streaming.websocket_sessions import WebSocketSessions

logger = logging.getLogger(__name__)

#: The spec's answer to an offer when no pipeline is loaded.
NO_PIPELINE = "Pipeline not loaded. Please load pipeline first."


def parse_candidate(entry: dict[str, Any]):
    """A browser ``RTCIceCandidateInit`` as an aiortc candidate (None: end of candidates)."""
    text = (entry.get("candidate") or "").strip()
    for prefix in ("a=", "candidate:"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    if not text:
        return None
    try:
        candidate = candidate_from_sdp(text)
    except (ValueError, IndexError, AssertionError):  # aioice asserts on short lines
        raise SignallingError(400, f"Invalid ICE candidate: cannot parse '{text[:120]}'") from None
    candidate.sdpMid = entry.get("sdpMid")
    candidate.sdpMLineIndex = entry.get("sdpMLineIndex")
    if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
        raise SignallingError(400, "Invalid ICE candidate: sdpMid and sdpMLineIndex are both null")
    return candidate


class SessionService(WebSocketSessions, HeadlessSessions):
    """Creates, lists and closes streaming sessions, over WebRTC, a WebSocket or none.

    Two limits: ``max_pending`` answered offers may wait for their peer at once (until
    ``connect_timeout`` reaps them), and ``max_sessions`` peers may be connected at once. Offers
    that never complete therefore cannot take the slots of peers that do connect. The streaming
    limit is checked at offer time and again when a peer connects, since several pending
    sessions may connect at about the same time.

    A session streams from the current pipeline, or from the one its offer names (loaded into
    the pool if needed), and keeps that pipeline until it ends.
    """

    def __init__(
        self,
        manager: PipelineManager,
        ice_servers: Callable[[], Awaitable[list[RTCIceServer]]],
        max_sessions: int = setting_default("max_sessions"),
        disconnect_timeout: float = setting_default("disconnect_timeout"),
        connect_timeout: float = setting_default("connect_timeout"),
        max_pending: int = setting_default("max_pending_sessions"),
        max_repeated_failures: int = setting_default("max_repeated_chunk_failures"),
        recordings: RecordingService | None = None,
    ):
        self.manager = manager
        #: Where sessions record (None: a server that keeps no recordings).
        self.recordings = recordings
        self.ice_servers = ice_servers
        self.max_sessions = max_sessions
        self.max_pending = max_pending
        self.disconnect_timeout = disconnect_timeout
        self.connect_timeout = connect_timeout
        self.max_repeated_failures = max_repeated_failures
        self.sessions: dict[str, StreamSession] = {}
        self._creating = 0
        self._releasing: set[asyncio.Task] = set()
        HeadlessSessions.__init__(self)

    def streaming_count(self) -> int:
        """Sessions whose peer has connected."""
        return sum(1 for s in self.sessions.values() if s.connected)

    def pending_count(self) -> int:
        """Offers answered (or being answered) whose peer has not connected yet."""
        return len(self.sessions) - self.streaming_count() + self._creating

    def _streaming_full_message(self) -> str:
        return f"Too many streaming sessions: at most {self.max_sessions} may stream at once."

    def _check_capacity(self) -> None:
        if self.streaming_count() >= self.max_sessions:
            raise SignallingError(503, self._streaming_full_message())
        if self.pending_count() >= self.max_pending:
            raise SignallingError(
                503,
                f"Too many pending offers: at most {self.max_pending} sessions may wait for their peer "
                f"to connect at once (each waits at most {self.connect_timeout:g} s); try again shortly.",
            )

    def _current_pipeline(self) -> type[Pipeline]:
        """The current pipeline's class, for an offer that names none (it must be loaded)."""
        if self.manager.status == LOADING:
            raise SignallingError(409, "A pipeline is loading; send the offer once it has loaded.")
        if self.manager.status != LOADED or self.manager.pipeline is None:
            raise SignallingError(400, NO_PIPELINE)
        return self.manager.current.pipeline_class

    def _named_pipeline(self, pipeline_id: Any, load_params: Any) -> tuple[type[Pipeline], LoadTarget]:
        """The class of the pipeline an offer names, its ``load_params`` validated (422 naming the field)."""
        try:
            cls, _, target = self.manager.validate_named(pipeline_id, load_params)
        except TargetErrors as exc:
            raise SignallingError(422, exc.errors) from None
        return cls, target

    def initial_parameters(
        self,
        raw: dict[str, Any] | None,
        sends_video: bool = True,
        cls: type[Pipeline] | None = None,
        pipeline: Pipeline | None = None,
        loc: tuple[str, ...] = ("body", "initialParameters"),
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Validate ``initialParameters`` and add the pipeline's defaults for its mode.

        ``cls`` is the session's pipeline class and ``pipeline`` the loaded pipeline (the
        current one by default); without it (still loading) the checks only a loaded pipeline
        can make wait until it has loaded.

        Without an ``input_mode`` the session takes the pipeline's default mode, except that a
        peer that sends no video (``sends_video`` false) gets text mode where the pipeline has
        one: video mode would wait for input that never comes.

        Returns the parameters and the ``parameters_warning`` messages for the data channel
        (unknown keys, and keys the pipeline does not use: both ignored).
        """
        if cls is None:
            pipeline = self.manager.pipeline
            cls = self.manager.current.pipeline_class
        try:
            context = self.manager.context.validation_context()
            given, unknown = parse_parameters(raw or {}, cls.parameters_model, context=context)
        except ParameterErrors as exc:
            raise SignallingError(422, [{**e, "loc": [*loc, *e["loc"]]} for e in exc.errors]) from None
        info = cls.info
        mode = given.get("input_mode") or info.default_mode
        if "input_mode" not in given and not sends_video and "text" in info.supported_modes:
            mode = "text"
        if mode not in info.supported_modes:
            raise SignallingError(
                400,
                f"input_mode '{mode}' is not supported by pipeline '{info.id}' "
                f"(supported: {', '.join(info.supported_modes)})",
            )
        errors = pipeline.check_parameters({**given, "input_mode": mode}) if pipeline is not None else []
        if errors:
            raise SignallingError(422, [{**e, "loc": [*loc, *e["loc"]]} for e in errors])
        params: dict[str, Any] = dict(cls.default_parameters)
        if mode == "video":
            # Mode defaults use the config schema's names; only those that are stream parameters apply.
            fields = cls.parameters_model.model_fields
            video_defaults = cls.mode_defaults.get("video", {})
            params.update({k: v for k, v in video_defaults.items() if v is not None and k in fields})
        params.update(given)
        params["input_mode"] = mode
        return params, parameter_warnings(cls, list(given), unknown)

    async def create(
        self,
        sdp: str,
        sdp_type: str,
        raw_parameters: dict[str, Any] | None,
        pipeline_id: str | None = None,
        load_params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Answer an offer and start its session, on the current pipeline or the one named."""

        def check(cls: type[Pipeline]) -> None:
            if sdp_type != "offer":
                raise SignallingError(400, f"type must be 'offer', got '{sdp_type}'")
            try:
                check_offer(sdp)
            except OfferProblem as exc:
                raise SignallingError(400, str(exc)) from None

        async def make_peer() -> WebRTCPeer:
            servers = await self.ice_servers()
            return WebRTCPeer(RTCPeerConnection(RTCConfiguration(iceServers=servers)))

        answers: list = []

        async def negotiate(session: StreamSession) -> None:
            answers.append(await self._negotiate(session.peer, session, sdp))

        session = await self.open_session(
            raw_parameters, pipeline_id, load_params, make_peer, check=check, sends_video=lambda: sends_video(sdp),
            connect=negotiate,
        )
        answer = answers[0]
        return {"sdp": answer.sdp, "type": answer.type, "sessionId": session.id}

    async def open_session(
        self,
        raw_parameters: dict[str, Any] | None,
        pipeline_id: str | None,
        load_params: dict[str, Any] | None,
        make_peer: Callable[[], Awaitable[SessionPeer]],
        *,
        check: Callable[[type[Pipeline]], None] = lambda cls: None,
        sends_video: Callable[[], bool] = lambda: True,
        connect: Callable[[StreamSession], Awaitable[None]] | None = None,
        loc: tuple[str, ...] = ("body", "initialParameters"),
    ) -> StreamSession:
        """Validate, bind and start a session of any transport; ``make_peer`` builds its peer
        and ``connect`` (before the session starts) what the transport needs first.

        The checks run in the order every transport answers them: capacity, the named pipeline,
        the transport's own ``check``, the initial parameters (``loc`` names where they were).
        """
        self._check_capacity()
        named = pipeline_id is not None or load_params is not None
        if named:
            cls, target = self._named_pipeline(pipeline_id, load_params)
            pooled = self.manager.find(target)
            loaded = pooled.pipeline if pooled is not None else None
        else:
            cls, loaded = self._current_pipeline(), self.manager.pipeline
        check(cls)
        params, warnings = self.initial_parameters(raw_parameters, sends_video(), cls, loaded, loc)
        session_id = str(uuid.uuid4())
        self._creating += 1
        try:
            slot = await self._bind(pipeline_id, load_params, session_id) if named else await self._bind_current(session_id)
            try:
                await self._check_assets(params, cls, loc)
                peer = await make_peer()
            except BaseException:
                await self.manager.release(slot, session_id)
                raise
            session = StreamSession(
                session_id, peer, slot, params, on_closed=self._forget,
                max_repeated_failures=self.max_repeated_failures, recordings=self.recordings,
            )
            try:
                if connect is not None:
                    await connect(session)
            except Exception:
                await session.close(notify=False)
                raise
            self.sessions[session.id] = session
        finally:
            self._creating -= 1
        for warning in warnings:
            session.send(warning)
        session.start(self.connect_timeout)
        logger.info(
            "session %s opened (%s): pipeline %s, mode %s (%d active)",
            session.id, peer.transport, slot.target.pipeline_id, params["input_mode"], len(self.sessions),
        )
        return session

    async def _bind(self, pipeline_id: str, load_params: dict[str, Any] | None, session_id: str) -> PipelineSlot:
        """Bind ``session_id`` to the pipeline an offer names, loading it into the pool if needed
        (409 naming what holds the memory when it does not fit)."""
        try:
            return await self.manager.slot_for(pipeline_id, load_params, session_id)
        except OverBudget as exc:
            raise SignallingError(409, exc.errors(["body", "pipeline_id"])) from None
        except NoWorker as exc:
            raise SignallingError(503, str(exc)) from None

    async def _bind_current(self, session_id: str) -> PipelineSlot:
        """Bind ``session_id`` to the current pipeline, on the least-loaded worker holding it
        (it was unloaded meanwhile: 400, as for none)."""
        try:
            return await self.manager.bind_current(session_id)
        except LookupError:
            raise SignallingError(400, NO_PIPELINE) from None
        except OverBudget as exc:
            raise SignallingError(409, exc.errors(["body"])) from None
        except NoWorker as exc:
            raise SignallingError(503, str(exc)) from None

    async def _check_assets(self, params: dict[str, Any], cls: type[Pipeline], loc: tuple[str, ...]) -> None:
        """422 naming each asset file of ``initialParameters`` the stream could not read (read off the loop)."""
        if not names_assets(params):
            return
        skip = frozenset(unused_parameters(cls.parameters_model, ASSET_PARAMETERS))
        errors = await asyncio.to_thread(unreadable_assets, params, self.manager.context.assets_dir, skip)
        if errors:
            raise SignallingError(422, [{**e, "loc": [*loc, *e["loc"]]} for e in errors])

    async def _negotiate(self, peer: WebRTCPeer, session: StreamSession, sdp: str):
        pc = peer.pc

        @pc.on("datachannel")
        def _on_channel(channel) -> None:
            peer.attach_channel(channel)

        @pc.on("track")
        def _on_track(track) -> None:
            session.attach_input(track)

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            state = pc.connectionState
            if state == "connected" and not session.connected and self.streaming_count() >= self.max_sessions:
                session.refuse(self._streaming_full_message())
                return
            session.connection_state_changed(state, self.disconnect_timeout)

        # The output track goes in first so the client's first video m-line carries it.
        pc.addTrack(session.track)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=drop_unreachable_candidates(sdp), type="offer"))
        except Exception as exc:
            raise SignallingError(400, f"Invalid SDP offer: {exc}") from None
        if not any(t.kind == "video" for t in pc.getTransceivers()):
            raise SignallingError(400, "The offer has no video media section.")
        try:
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as exc:
            raise SignallingError(400, f"Cannot answer the offer: {exc}") from None
        return pc.localDescription

    async def add_candidates(self, session_id: str, candidates: list[dict[str, Any]]) -> None:
        session = self.sessions.get(session_id)
        if session is None or session.pc is None:
            raise SignallingError(404, f"Session {session_id} not found")
        if session.closed or session.pc.connectionState in ("closed", "failed"):
            raise SignallingError(404, f"Session {session_id} is closed or failed")
        parsed = [parse_candidate(entry) for entry in candidates]
        parsed = [c for c in parsed if c is None or may_check(c.ip)]
        # Adding can take a second per mDNS candidate: do it off the request path.
        asyncio.get_running_loop().create_task(self._add(session, parsed))

    @staticmethod
    async def _add(session: StreamSession, candidates) -> None:
        for candidate in candidates:
            try:
                await session.pc.addIceCandidate(candidate)
            except Exception as exc:  # the peer may already be gone
                logger.debug("session %s: candidate not added: %s", session.id, exc)

    def _forget(self, session: StreamSession) -> None:
        self.sessions.pop(session.id, None)
        self.headless_ended(session)
        # The pipeline may unload now (asked to once idle): off this callback, kept until done.
        task = asyncio.get_running_loop().create_task(self.manager.release(session.slot, session.id))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        logger.info("session %s closed after %d chunk(s) (%d active)", session.id, session.chunks, len(self.sessions))

    async def close(self, session_id: str) -> None:
        session = self.sessions.get(session_id)
        if session is None:
            raise SignallingError(404, f"Session {session_id} not found")
        await session.close()

    async def close_all(self) -> None:
        # Recordings first: a session that ends would record its stop as "session_ended".
        sessions = list(self.sessions.values())
        await asyncio.gather(*(s.stop_recording("server_stopped") for s in sessions), return_exceptions=True)
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        if self.recordings is not None:  # none should be left: each session finished its own
            await self.recordings.close_all()
        await asyncio.gather(*self._releasing, return_exceptions=True)
