"""``ScopeClient``: the Scope REST API from Python, one method per call, typed answers.

Synchronous (httpx), so it works the same in a script and in a notebook cell, where the
kernel's event loop is already running.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from scope.client.auth import is_loopback, jupyter_token, normalise_base_url
from scope.client.errors import ModelDownloadError, PipelineLoadError, ScopeApiError, error_from_response
from scope.client.headless import HeadlessSession
from scope.client.parameters import PromptsLike, merge_parameters
from scope.client.pipelines import OWN_PIPELINE as _OWN
from scope.client.pipelines import PipelineLike, PipelineTarget, find_in_pool, pipeline_target
from scope.client.server_recordings import ServerRecordings
from scope.server_ext.api_models import (
    Asset,
    AssetsResponse,
    HardwareInfo,
    HealthResponse,
    IceServer,
    IceServersResponse,
    LoraDeleteResponse,
    LoraEntriesResponse,
    LoraEntry,
    LoraFile,
    LoraInstallResponse,
    LoraListResponse,
    MessageResponse,
    ModelsStatusResponse,
    OfferResponse,
    PipelineSchemasResponse,
    PipelineStatusResponse,
    SessionInfo,
    SessionsResponse,
    TransportsResponse,
    WebSocketOfferResponse,
)

if TYPE_CHECKING:
    from scope.client.stream import ScopeStream, StreamInput, Transport

Model = TypeVar("Model", bound=BaseModel)

POLL_SECONDS = 0.25
JSON = {"Content-Type": "application/json"}


#: Methods whose repetition cannot change anything on the server a second time.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


class ScopeClient(ServerRecordings, HeadlessSession):
    """REST client of one Scope server.

    ``url`` is the server's base URL: ``http://127.0.0.1:8000/`` for ``daydream-scope``, or a
    Jupyter server's URL with its base URL (``http://127.0.0.1:8888/lab-base/``). Without a
    ``token``, the token of a Jupyter server running on this machine at that URL is used;
    ``daydream-scope`` needs none. Errors (4xx, 5xx) raise :class:`ScopeApiError`.

    ``pipeline`` is the pipeline this client loaded last (:meth:`load_pipeline`,
    :meth:`ensure_pipeline`): its streams and waits stay with it, whatever another client loads.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0):
        self.url = normalise_base_url(url)
        self.pipeline: PipelineTarget | None = None
        self._open_streams = weakref.WeakSet()
        self.token = token if token is not None else jupyter_token(self.url)
        headers = self.auth_headers
        # Proxies from the environment must not intercept calls to this machine.
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, trust_env=not is_loopback(self.url)
        )

    def __repr__(self) -> str:
        return f"ScopeClient({self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ScopeClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # Plumbing ---------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call below the base URL; raises :class:`ScopeApiError` on 4xx/5xx."""
        if method in ("POST", "PATCH", "PUT") and "json" not in kwargs and "content" not in kwargs:
            kwargs.update(content=b"", headers={**JSON, **kwargs.get("headers", {})})
        try:
            response = self._http.request(method, path.lstrip("/"), **kwargs)
        except (httpx.ReadError, httpx.RemoteProtocolError):
            # A kept-alive connection the server has since closed (it does so after refusing an
            # upload part-way): a call that changes nothing is safe to send once more.
            if method not in IDEMPOTENT:
                raise
            response = self._http.request(method, path.lstrip("/"), **kwargs)
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def _get(self, path: str, model: type[Model], **params: Any) -> Model:
        return model.model_validate(self.request("GET", path, params=params or None).json())

    def _post(self, path: str, model: type[Model], body: Mapping[str, Any]) -> Model:
        return model.model_validate(self.request("POST", path, json=dict(body)).json())

    # Health -----------------------------------------------------------------------------

    def health(self) -> HealthResponse:
        return self._get("health", HealthResponse)

    def hardware_info(self) -> HardwareInfo:
        return self._get("api/v1/hardware/info", HardwareInfo)

    def current_log(self) -> str:
        """The newest server log, as text."""
        return self.request("GET", "api/v1/logs/current").text

    def openapi(self) -> dict[str, Any]:
        return self.request("GET", "openapi.json").json()

    # Pipelines --------------------------------------------------------------------------

    def load_pipeline(self, pipeline_id: str, load_params: Mapping[str, Any] | None = None) -> MessageResponse:
        """Start loading and make it the server's current pipeline, and this client's
        (:attr:`pipeline`); the status is ``loading`` (or already ``loaded``) when this returns."""
        body: dict[str, Any] = {"pipeline_id": pipeline_id}
        if load_params is not None:
            body["load_params"] = dict(load_params)
        reply = self._post("api/v1/pipeline/load", MessageResponse, body)
        asked = PipelineTarget(pipeline_id, None if load_params is None else dict(load_params))
        # The reply is the spec's message: the load parameters as the server normalised them
        # (defaults filled in) are those of the pool's entry, the current one when several match.
        entry = find_in_pool(self.pipeline_status(), asked)
        self.pipeline = asked if entry is None else pipeline_target(entry)
        return reply

    def unload_pipeline(self, pipeline: PipelineLike | None = None) -> MessageResponse:
        """Unload the server's current pipeline, or ``pipeline``; one that sessions use unloads
        when the last of them ends (the reply says so). Unloading the current one or its own, the
        client forgets its :attr:`pipeline`: its streams then use the current one again."""
        target = None if pipeline is None else pipeline_target(pipeline)
        body = {} if target is None else target.offer_fields()
        reply = self._post("api/v1/pipeline/unload", MessageResponse, body)
        mine = self.pipeline
        if target is None or (mine is not None and target.pipeline_id == mine.pipeline_id and self._gone(mine)):
            self.pipeline = None
        return reply

    def _gone(self, target: PipelineTarget) -> bool:
        """Whether ``target`` left the pool or unloads when its sessions end: the server
        normalises an unload's parameters, so only its status says which entry it named."""
        entry = find_in_pool(self.pipeline_status(), target)
        return entry is None or entry.unload_when_idle

    def pipeline_status(self) -> PipelineStatusResponse:
        return self._get("api/v1/pipeline/status", PipelineStatusResponse)

    def pipeline_schemas(self) -> dict[str, dict[str, Any]]:
        """Per pipeline id: metadata, ``config_schema``, ``load_params_schema``, ``parameters_schema``..."""
        return self._get("api/v1/pipelines/schemas", PipelineSchemasResponse).pipelines

    def wait_for_pipeline(self, status: str = "loaded", timeout: float = 300.0) -> PipelineStatusResponse:
        """Poll until this client's pipeline (the current one if it loaded none) is ``status``;
        answers the server's status. A load ending in ``error`` raises :class:`PipelineLoadError`,
        and so does this client's pipeline leaving the pool while awaited."""
        deadline = time.monotonic() + timeout
        mine = self.pipeline
        while True:
            current = self.pipeline_status()
            state, name = current.status, current.pipeline_id
            error = current.error
            if mine is not None:
                # Its own entry: a failed load stays listed with its error, whatever is current now.
                entry = find_in_pool(current, mine)
                name = mine.pipeline_id
                state = entry.status if entry is not None else "not_loaded"
                error = entry.error if entry is not None else None
            if state == status:
                return current
            if state == "error":
                raise PipelineLoadError(name, error)
            if mine is not None and state == "not_loaded":
                raise PipelineLoadError(name, f"Pipeline {name!r} is no longer loaded: it was unloaded, or its failed load dismissed.")
            if time.monotonic() > deadline:
                raise TimeoutError(f"The pipeline status stayed {state!r} ({name}) for {timeout} s; waited for {status!r}.")
            time.sleep(POLL_SECONDS)

    def ensure_pipeline(
        self,
        pipeline_id: str,
        load_params: Mapping[str, Any] | None = None,
        *,
        synthetic: bool = False,
        timeout: float = 600.0,
    ) -> PipelineStatusResponse:
        """Make ``pipeline_id`` loaded with ``load_params`` (``None``: its defaults), whatever it takes.

        Missing files are downloaded first (or, with ``synthetic=True``, synthetic weights are
        written); a pipeline already loaded with the same parameters is left alone; a different
        load in progress is waited out before this one starts.
        """
        deadline = time.monotonic() + timeout
        models = self.models_status(pipeline_id)
        if not models.downloaded:
            if not (models.progress and models.progress.is_downloading):
                try:
                    self.download_models(pipeline_id, synthetic=synthetic)
                except ScopeApiError as exc:
                    if exc.status != 409:  # 409: someone else started it; wait for theirs
                        raise
            self.wait_for_models(pipeline_id, timeout=deadline - time.monotonic())
        while True:
            try:
                self.load_pipeline(pipeline_id, load_params)
                break
            except ScopeApiError as exc:
                # 409 with a text: another load of the current pipeline runs; a list: over the memory budget.
                if exc.status != 409 or not isinstance(exc.detail, str) or time.monotonic() > deadline:
                    raise
            self._wait_while_loading(deadline)
        return self.wait_for_pipeline("loaded", timeout=max(0.0, deadline - time.monotonic()))

    def _wait_while_loading(self, deadline: float) -> None:
        while self.pipeline_status().status == "loading" and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)

    # Models -----------------------------------------------------------------------------

    def models_status(self, pipeline_id: str) -> ModelsStatusResponse:
        return self._get("api/v1/models/status", ModelsStatusResponse, pipeline_id=pipeline_id)

    def download_models(self, pipeline_id: str, synthetic: bool = False) -> MessageResponse:
        """Start downloading a pipeline's files (``synthetic=True``: write synthetic weights)."""
        return self._post("api/v1/models/download", MessageResponse, {"pipeline_id": pipeline_id, "synthetic": synthetic})

    def wait_for_models(self, pipeline_id: str, timeout: float = 3600.0) -> ModelsStatusResponse:
        """Poll until the files are on disk; a failed download raises :class:`ModelDownloadError`."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.models_status(pipeline_id)
            if status.downloaded:
                return status
            progress = status.progress
            if progress is not None and progress.error and not progress.is_downloading:
                raise ModelDownloadError(pipeline_id, progress.error)
            if time.monotonic() > deadline:
                shown = f"{progress.percentage:.0f}%" if progress else "not started"
                raise TimeoutError(f"The files of {pipeline_id!r} were not on disk after {timeout} s ({shown}).")
            time.sleep(POLL_SECONDS)

    # WebRTC -----------------------------------------------------------------------------

    def ice_servers(self) -> list[IceServer]:
        return self._get("api/v1/webrtc/ice-servers", IceServersResponse).iceServers

    def offer(
        self, sdp: str, initial_parameters: Mapping[str, Any] | None = None, *, pipeline: PipelineLike | None = None
    ) -> OfferResponse:
        """Send an SDP offer; the answer starts a session (see :meth:`stream` for the whole flow).

        ``pipeline`` binds the session to that pipeline (loaded into the server's pool if needed);
        ``None`` streams from the current one.
        """
        body: dict[str, Any] = {"sdp": sdp, "type": "offer"}
        if initial_parameters is not None:
            body["initialParameters"] = dict(initial_parameters)
        if pipeline is not None:
            body.update(pipeline_target(pipeline).offer_fields())
        return self._post("api/v1/webrtc/offer", OfferResponse, body)

    def transports(self) -> TransportsResponse:
        """What the server offers: ``transports``, the WebSocket's output ``encodings`` and
        ``webrtc_fallback_timeout`` (seconds)."""
        return self._get("api/v1/transports", TransportsResponse)

    def websocket_offer(
        self,
        initial_parameters: Mapping[str, Any] | None = None,
        *,
        pipeline: PipelineLike | None = None,
        sends_video: bool = False,
        encodings: Sequence[str] | None = None,
    ) -> WebSocketOfferResponse:
        """Start a WebSocket session: answers ``sessionId``, ``encoding`` and ``url``, the socket's
        path below the base URL, to open within the server's ``connect_timeout``.

        ``encodings`` are the output encodings this side decodes, preferred first (``None``: the
        server's default, ``["jpeg"]``); ``sends_video`` says input frames will follow.
        """
        body: dict[str, Any] = {"sends_video": sends_video}
        if initial_parameters is not None:
            body["initialParameters"] = dict(initial_parameters)
        if encodings is not None:
            body["encodings"] = list(encodings)
        if pipeline is not None:
            body.update(pipeline_target(pipeline).offer_fields())
        return self._post("api/v1/websocket/offer", WebSocketOfferResponse, body)

    @property
    def auth_headers(self) -> dict[str, str]:
        """The headers that carry this client's token (none without one), for sockets too."""
        return {"Authorization": f"token {self.token}"} if self.token else {}

    def add_ice_candidates(self, session_id: str, candidates: list[Mapping[str, Any]]) -> None:
        """Trickle candidates (``{"candidate", "sdpMid", "sdpMLineIndex"}``); an empty one ends them."""
        self.request("PATCH", f"api/v1/webrtc/offer/{session_id}", json={"candidates": [dict(c) for c in candidates]})

    def sessions(self) -> list[SessionInfo]:
        return self._get("api/v1/webrtc/sessions", SessionsResponse).sessions

    def session(self, session_id: str) -> SessionInfo:
        """One session from the list; an unknown id raises :class:`ScopeApiError` 404 like ``DELETE``."""
        for info in self.sessions():
            if info.id == session_id:
                return info
        raise ScopeApiError(404, f"Unknown session {session_id}", method="GET", url=f"{self.url}api/v1/webrtc/sessions")

    def delete_session(self, session_id: str) -> None:
        self.request("DELETE", f"api/v1/webrtc/sessions/{session_id}")

    def stream(
        self,
        prompts: PromptsLike | None = None,
        *,
        input: StreamInput = None,
        parameters: Mapping[str, Any] | None = None,
        pipeline: PipelineLike | None = _OWN,
        transport: Transport = "webrtc",
        **more_parameters: Any,
    ) -> ScopeStream:
        """A session: ``async with client.stream("a red fox") as s``.

        ``prompts`` (a string, a list of strings or of ``{"text", "weight"}``), ``parameters``
        and keyword parameters form the offer's ``initialParameters``. ``input`` is what is
        sent: ``None`` (text to video), a video file path, RGB uint8 frames (looped), an aiortc
        track, or ``"pattern"``; with an input, ``input_mode`` defaults to ``"video"``.

        The session streams from ``pipeline`` until it ends (an id, ``(id, load_params)``, or a
        pipeline-status entry; loaded into the pool if needed), left out from this client's
        :attr:`pipeline`, and with ``None`` (or when this client loaded none) from the server's
        current pipeline.

        ``transport`` is ``"webrtc"``, ``"websocket"`` (everything over one WebSocket, for
        networks that carry no UDP), or ``"auto"``: WebRTC, and the WebSocket when its peer does
        not connect within the server's ``webrtc_fallback_timeout``.
        """
        from scope.client.stream import ScopeStream

        initial = merge_parameters(prompts, parameters, more_parameters)
        if input is not None:
            initial.setdefault("input_mode", "video")
        if pipeline is _OWN:
            pipeline = self.pipeline
        target = None if pipeline is None else pipeline_target(pipeline)
        return ScopeStream(self, initial, input, pipeline=target, transport=transport)

    # Assets and LoRA --------------------------------------------------------------------

    def assets(self, type: str | None = None) -> list[Asset]:
        """Images and videos in the assets directory (``type``: ``"image"`` or ``"video"``)."""
        params = {"type": type} if type else {}
        return self._get("api/v1/assets", AssetsResponse, **params).assets

    def upload_asset(self, path_or_bytes: str | Path | bytes, filename: str | None = None) -> Asset:
        """Upload a file (or bytes, then ``filename`` is required) into the assets directory."""
        if isinstance(path_or_bytes, bytes):
            if not filename:
                raise ValueError("upload_asset needs a filename when given bytes")
            data = path_or_bytes
        else:
            source = Path(path_or_bytes)
            filename = filename or source.name
            data = source.read_bytes()
        response = self.request(
            "POST", "api/v1/assets", params={"filename": filename}, content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return Asset.model_validate(response.json())

    def asset_bytes(self, path: str | Asset) -> bytes:
        """The content of an asset: its ``Asset``, its path on the server, or a path below the assets directory."""
        path = path.path if isinstance(path, Asset) else str(path)
        quoted = quote(path, safe="") if path.startswith("/") else quote(path, safe="/")
        return self.request("GET", f"api/v1/assets/{quoted}").content

    def lora_files(self) -> list[LoraFile]:
        return self._get("api/v1/lora/list", LoraListResponse).lora_files

    def loras(self) -> list[LoraEntry]:
        """LoRA files with their size, sha256, format, rank and targets (or why one is not a LoRA)."""
        return self._get("api/v1/loras", LoraEntriesResponse).lora_files

    def install_lora(
        self, url: str | None = None, *, filename: str | None = None, overwrite: bool = False,
        synthetic: str | None = None, timeout: float = 3600.0,
    ) -> LoraEntry:
        """Install a LoRA from ``url`` (or write a synthetic one in format ``synthetic``); the
        server streams it, so the call lasts as long as the transfer."""
        body: dict[str, Any] = {"overwrite": overwrite}
        body.update({k: v for k, v in (("url", url), ("filename", filename), ("synthetic", synthetic)) if v is not None})
        response = self.request("POST", "api/v1/loras", json=body, timeout=timeout)
        return LoraInstallResponse.model_validate(response.json()).file

    def upload_lora(
        self, path_or_bytes: str | Path | bytes, filename: str | None = None, *, overwrite: bool = False,
        timeout: float = 3600.0,
    ) -> LoraEntry:
        """Upload a LoRA file (streamed from disk) or bytes (then ``filename`` is required)."""
        if isinstance(path_or_bytes, bytes):
            if not filename:
                raise ValueError("upload_lora needs a filename when given bytes")
            content: Any = path_or_bytes
            size = len(path_or_bytes)
        else:
            source = Path(path_or_bytes)
            filename = filename or source.name
            size = source.stat().st_size
            content = _chunks(source)
        response = self.request(
            "POST", "api/v1/loras/upload", params={"filename": filename, "overwrite": str(overwrite).lower()},
            content=content, timeout=timeout,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        return LoraEntry.model_validate(response.json())

    def delete_lora(self, name: str | LoraFile) -> None:
        """Delete a LoRA file: its entry, its file name (``style.safetensors``) or its stem."""
        if isinstance(name, LoraFile):
            name = Path(name.path).name if name.folder is None else f"{name.folder}/{Path(name.path).name}"
        LoraDeleteResponse.model_validate(self.request("DELETE", f"api/v1/loras/{quote(name, safe='/')}").json())


def _chunks(path: Path, size: int = 1024 * 1024):
    """A file's bytes in chunks, so an upload never holds the whole file in memory."""
    with path.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk
