"""Server-side recordings from Python: start, stop, list and download them (``/api/v1/recordings``).

The server records the frames as its pipeline generated them, with the session's timeline and
provenance, so a recording is exact and can be rendered again. :meth:`ScopeStream.record
<scope.client.stream.ScopeStream.record>` records on this side instead: what arrived after WebRTC.
Mixed into :class:`~scope.client.rest.ScopeClient`.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote

import httpx

from scope.client.errors import error_from_response
from scope.server_ext.api_models import RecordingInfo, RecordingsResponse

if TYPE_CHECKING:
    from scope.client.stream import ScopeStream

__all__ = ["DOWNLOADS", "ServerRecordings"]

#: What ``download_server_recording`` fetches: the path below the recording, and the file's name.
DOWNLOADS = {
    "video": ("", "recording.mp4"),
    "timeline": ("/timeline", "timeline.json"),
    "provenance": ("/provenance", "provenance.json"),
    "input": ("/input", "input.mkv"),
}

CHUNK_BYTES = 1 << 20


class ServerRecordings:
    """The recordings calls of :class:`~scope.client.rest.ScopeClient`; answers are
    ``RecordingInfo`` dicts (``session_id``, ``state``, ``stop_reason``, ``frames``, ``duration_s``...)."""

    _http: httpx.Client
    #: This client's streams while they are open: ``session_id=None`` means the live one.
    _open_streams: weakref.WeakSet[ScopeStream]

    request: Callable[..., httpx.Response]  # ScopeClient's: raises ScopeApiError on 4xx/5xx

    def start_server_recording(self, session_id: str | None = None) -> dict[str, Any]:
        """Record ``session_id`` (``None``: this client's live stream) on the server from its next chunk.

        Raises :class:`ScopeApiError`: 404 unknown session, 409 it records already or has
        recorded, 507 the recordings directory is full. To record from a stream's very first
        chunk (an exactly reproducible video-mode recording), open it with ``recording=True``.
        """
        return self._recording_call("start", session_id)

    def stop_server_recording(self, session_id: str | None = None) -> dict[str, Any]:
        """Stop the recording; returns once its files are complete (409 when it does not record)."""
        return self._recording_call("stop", session_id)

    def server_recordings(self) -> list[dict[str, Any]]:
        """Every recording the server keeps, running or finished, newest first."""
        listing = RecordingsResponse.model_validate(self.request("GET", "api/v1/recordings").json())
        return [info.model_dump(mode="json") for info in listing.recordings]

    def download_server_recording(self, session_id: str, path: str | Path, what: str = "video") -> Path:
        """Save a recording's ``what`` (``"video"``, ``"timeline"``, ``"provenance"`` or
        ``"input"``) at ``path`` (a folder: ``<session_id>-<file>`` inside it); answers the path.

        Streamed to ``<path>.partial`` and renamed when complete, so ``path`` never holds half a
        file. A running recording's video is what was written so far.
        """
        if what not in DOWNLOADS:
            raise ValueError(f"what must be one of {', '.join(map(repr, DOWNLOADS))}, got {what!r}")
        suffix, name = DOWNLOADS[what]
        target = Path(path)
        if target.is_dir():
            target = target / f"{session_id}-{name}"
        partial = target.with_name(target.name + ".partial")
        url = f"api/v1/recordings/{quote(session_id, safe='')}{suffix}"
        try:
            with self._http.stream("GET", url) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response)
                with partial.open("wb") as handle:
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        handle.write(chunk)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    # Helpers ----------------------------------------------------------------------------

    def _recording_call(self, action: str, session_id: str | None) -> dict[str, Any]:
        session_id = session_id if session_id is not None else self._live_session_id()
        response = self.request("POST", f"api/v1/recordings/{quote(session_id, safe='')}/{action}")
        return RecordingInfo.model_validate(response.json()).model_dump(mode="json")

    def _live_session_id(self) -> str:
        """The session of this client's one open stream; a ValueError says what to pass otherwise."""
        live = [s.session_id for s in list(self._open_streams) if s.session_id and s.live]
        if len(live) == 1:
            return live[0]
        if not live:
            raise ValueError("This client has no live stream: open one (async with client.stream(...)) or pass session_id.")
        raise ValueError(f"This client has {len(live)} live streams ({', '.join(live)}): pass the session_id to record.")

