"""The headless session: one per server, started and steered over plain HTTP (scripts, agents).

A mixin of :class:`~scope.streaming.webrtc.SessionService`: the headless session is opened,
bound to its pipeline and counted like any other session; it is connected from the start, since
nobody has to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scope.streaming.headless_peer import HeadlessPeer
from scope.streaming.session_errors import SignallingError

if TYPE_CHECKING:
    from scope.pipelines.base import Pipeline
    from scope.streaming.session import StreamSession

HEADLESS_RUNNING = "A headless session is running; stop it first (POST /api/v1/session/stop)."
NO_HEADLESS = "No active headless session"


class HeadlessSessions:
    """Start, find and stop the server's headless session."""

    def __init__(self) -> None:
        self.headless: StreamSession | None = None
        self._headless_starting = False
        #: How the last headless session ended (its id and last events), until the next starts.
        self.ended_headless: dict[str, Any] | None = None

    async def start_headless(
        self,
        parameters: dict[str, Any] | None,
        prompts: Any = None,
        input_mode: str | None = None,
        pipeline_id: str | None = None,
        load_params: dict[str, Any] | None = None,
    ) -> StreamSession:
        if self.headless is not None or self._headless_starting:
            raise SignallingError(409, HEADLESS_RUNNING)
        raw = dict(parameters or {})
        if prompts is not None:
            raw["prompts"] = prompts
        if input_mode is not None:
            raw["input_mode"] = input_mode

        def check(cls: type[Pipeline]) -> None:
            if raw.get("input_mode") not in (None, "text"):
                msg = "a headless session has no input video: input_mode must be 'text'"
            elif "text" not in cls.info.supported_modes:
                msg = f"a headless session has no input video, and pipeline '{cls.info.id}' only transforms video"
            else:
                return
            raise SignallingError(422, [{"loc": ["body", "input_mode"], "msg": msg, "type": "value_error"}])

        async def make_peer() -> HeadlessPeer:
            return HeadlessPeer()

        self._headless_starting = True
        try:
            session = await self.open_session(
                raw, pipeline_id, load_params, make_peer, check=check, sends_video=lambda: False,
                loc=("body", "parameters"),
            )
        finally:
            self._headless_starting = False
        if self.streaming_count() >= self.max_sessions:  # others connected while it loaded
            await session.close(notify=False)
            raise SignallingError(503, self._streaming_full_message())
        self.headless, self.ended_headless = session, None
        session.connection_state_changed("connected", self.disconnect_timeout)
        session.peer.start_output()
        return session

    def require_headless(self) -> StreamSession:
        if self.headless is None or self.headless.closed:
            raise SignallingError(404, NO_HEADLESS)
        return self.headless

    async def stop_headless(self) -> None:
        await self.require_headless().close()

    def headless_ended(self, session: StreamSession) -> None:
        """Called for every session that closes: the headless one keeps how it ended."""
        if session is self.headless:
            self.headless = None
            self.ended_headless = {"session_id": session.id, "events": list(session.peer.events)}
