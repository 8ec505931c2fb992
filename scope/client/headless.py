"""The headless session from Python: one server-side session driven by plain HTTP calls.

No peer and no socket: the server runs the session on its own, and a script reads its latest
frame (``/api/v1/session/frame``), its stats and events (``/metrics``) or its live MPEG-TS output
(``/output.ts``) whenever it likes. Mixed into :class:`~scope.client.rest.ScopeClient`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import httpx
import numpy as np

from scope.client.errors import error_from_response
from scope.client.parameters import PromptsLike, merge_parameters, wire_parameters
from scope.client.pipelines import OWN_PIPELINE, PipelineLike, PipelineTarget, pipeline_target
from scope.server_ext.api_models import (
    HeadlessParametersResponse,
    HeadlessStartResponse,
    HeadlessStopResponse,
    HeadlessUpdateResponse,
    MetricsResponse,
)

__all__ = ["HeadlessSession"]

#: Bytes read from ``output.ts`` at a time: about a frame of small video, so a reader sees frames promptly.
TS_CHUNK_BYTES = 64 * 1024


class HeadlessSession:
    """The ``/api/v1/session/*`` calls of :class:`~scope.client.rest.ScopeClient`.

    Answers are the models of :mod:`scope.server_ext.api_models`. Refusals raise :class:`~scope.client.errors.ScopeApiError`:
    404 when no headless session runs, 409 when one runs already, 422 naming the field.
    """

    _http: httpx.Client
    pipeline: PipelineTarget | None
    request: Callable[..., httpx.Response]  # ScopeClient's: raises ScopeApiError on 4xx/5xx

    def start_headless(
        self,
        prompts: PromptsLike | None = None,
        *,
        parameters: Mapping[str, Any] | None = None,
        pipeline: PipelineLike | None = OWN_PIPELINE,
        input_mode: str | None = None,
        **more_parameters: Any,
    ) -> HeadlessStartResponse:
        """Start the server's headless session (text mode); answers its ``session_id``, ``pipeline_id``...

        ``prompts``, ``parameters`` and keyword parameters form its initial parameters, as for
        :meth:`~scope.client.rest.ScopeClient.stream`; ``pipeline`` likewise (left out: this
        client's pipeline, ``None``: the server's current one).
        """
        body: dict[str, Any] = {}
        initial = merge_parameters(prompts, parameters, more_parameters)
        if initial:
            body["parameters"] = initial
        if input_mode is not None:
            body["input_mode"] = input_mode
        target = self.pipeline if pipeline is OWN_PIPELINE else pipeline
        if target is not None:
            body.update(pipeline_target(target).offer_fields())
        return HeadlessStartResponse.model_validate(self.request("POST", "api/v1/session/start", json=body).json())

    def stop_headless(self) -> HeadlessStopResponse:
        """Stop the headless session (404 when none runs)."""
        return HeadlessStopResponse.model_validate(self.request("POST", "api/v1/session/stop", json={}).json())

    def headless_parameters(self) -> dict[str, Any]:
        """The parameters the headless session applies now."""
        reply = self.request("GET", "api/v1/session/parameters").json()
        return HeadlessParametersResponse.model_validate(reply).parameters

    def update_headless(self, parameters: Mapping[str, Any] | None = None, /, **more: Any) -> HeadlessUpdateResponse:
        """Send parameters as a data-channel message would (``update_headless(prompts="a whale")``);
        answers ``applied_parameters`` and ``warnings``."""
        message = wire_parameters({**(parameters or {}), **more})
        reply = self.request("POST", "api/v1/session/parameters", json=message).json()
        return HeadlessUpdateResponse.model_validate(reply)

    def headless_frame_bytes(self, format: str = "jpeg", quality: int = 85) -> bytes:
        """The latest output frame as a JPEG (``quality`` 1..100) or PNG file (404 before the first)."""
        params: dict[str, Any] = {"format": format}
        if format == "jpeg":
            params["quality"] = quality
        return self.request("GET", "api/v1/session/frame", params=params).content

    def headless_frame(self, format: str = "jpeg", quality: int = 85) -> np.ndarray:
        """The latest output frame, decoded: RGB uint8 ``(H, W, 3)``."""
        from PIL import Image

        with Image.open(io.BytesIO(self.headless_frame_bytes(format, quality))) as image:
            return np.asarray(image.convert("RGB"))

    def headless_metrics(self) -> MetricsResponse:
        """Every session's stats by id (the headless one with ``headless=True`` and its recent
        ``events``), the GPU's memory, and how the last headless session ended."""
        return MetricsResponse.model_validate(self.request("GET", "api/v1/session/metrics").json())

    def headless_output_ts(self, chunk_bytes: int = TS_CHUNK_BYTES, *, read_timeout: float | None = 30.0) -> Iterator[bytes]:
        """The headless session's live output as MPEG-TS (H.264), chunk by chunk, until it ends.

        Each call opens its own reader, starting on a key frame; stop iterating (or ``close()``
        the iterator) to let go of it. ``av.open(io.BufferedReader(...))`` or a file plays it.
        """
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout)
        with self._http.stream("GET", "api/v1/session/output.ts", timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                raise error_from_response(response)
            yield from response.iter_bytes(chunk_bytes)
