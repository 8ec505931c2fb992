"""The base of every Scope handler: auth policy, CORS, JSON bodies and JSON errors.

Two policies share one handler class. *Closed* (the default under ``jupyter lab``): Jupyter's
own auth applies (token or login cookie, XSRF on writes). *Open* (``daydream-scope``, or
``ScopeApp.open_api``): no token; the request's ``Origin`` decides instead (``origins.py``): local
pages, the server's own and listed origins are served with CORS, any other page gets 403. Jupyter's
own endpoints (kernels, contents, terminals) keep their auth in both cases, because this policy
lives on Scope's handlers only.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from pydantic import BaseModel, ValidationError
from tornado import web

from scope.params import validation_errors
from scope.server_ext.origins import is_well_formed, null_refusal_detail, refusal_detail

#: Content types a cross-site form may send without a CORS preflight.
#: How much of a downloaded file is read at a time.
DOWNLOAD_BLOCK_BYTES = 1 << 20
SIMPLE_REQUEST_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
#: Request headers a cross-origin caller of the open API may send (the page, widget and client
#: send no other header cross-origin).
CORS_ALLOW_HEADERS = "Content-Type"


class ApiError(web.HTTPError):
    """An error answered as ``{"detail": ...}`` with the given status."""

    def __init__(self, status: int, detail: Any):
        super().__init__(status, log_message=detail if isinstance(detail, str) else json.dumps(detail))
        self.detail = detail


@dataclass
class Operation:
    """OpenAPI facts of one handler method; the same models validate the requests."""

    summary: str
    response: type[BaseModel] | None = None
    request: type[BaseModel] | None = None
    status: int = 200
    errors: dict[int, str] = field(default_factory=dict)
    query: dict[str, tuple[str, bool, str]] = field(default_factory=dict)  # name: (type, required, doc)
    content: str | tuple[str, ...] = "application/json"  # several: the media types served
    request_content: str = "application/json"
    tags: tuple[str, ...] = ()
    #: Admit ``Origin: null`` (a page opened from a file) on the open API: only for what such a
    #: page needs to stream; sandboxed iframes of any site send ``null`` too.
    null_origin: bool = False


class ScopeHandler(ExtensionHandlerMixin, APIHandler):
    """JSON API handler for the Scope endpoints."""

    #: URL pattern (below the base URL) and its OpenAPI path.
    pattern: str = ""
    openapi_path: str = ""
    operations: dict[str, Operation] = {}

    @property
    def scope(self):
        """The extension's services (manager, sessions, downloads, settings)."""
        return self.settings["scope"]

    @property
    def open_api(self) -> bool:
        return self.scope.settings.open_api

    # Auth and CORS ----------------------------------------------------------------------

    async def prepare(self) -> None:
        if self.open_api:
            # First of all, before any body is read or anything is done: is the page admitted?
            self.admit_origin()
        await super().prepare()
        if self.request.method == "OPTIONS":
            return
        if not self.open_api and not self.current_user:
            raise ApiError(403, "Authentication required: log in to Jupyter or send its token.")
        if self.open_api and self.request.method == "POST":
            # A POST with no or a form-like Content-Type needs no CORS preflight, so any web page
            # could send it; demanding another type makes the browser ask first.
            content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if not content_type or content_type in SIMPLE_REQUEST_TYPES:
                shown = content_type or "(none)"
                raise ApiError(415, f"Content-Type {shown} is not accepted; send application/json.")

    def check_xsrf_cookie(self) -> None:
        if self.open_api:
            return  # no cookies are trusted on open routes; the preflight is the guard
        super().check_xsrf_cookie()

    def check_origin(self, origin_to_satisfy_tornado: str = "") -> bool:
        if self.open_api:
            return True
        return super().check_origin(origin_to_satisfy_tornado)

    #: ``Access-Control-Allow-Origin`` for this request (open API): None until admitted, or for
    #: a request without ``Origin``; the refused origin itself on its 403, so the page can read why.
    _cors_origin: str | None = None

    @classmethod
    def http_methods(cls) -> list[str]:
        """The methods this handler serves: those of its operations (else the ones it defines)."""
        names = list(cls.operations) or [
            m for m in ("get", "post", "patch", "delete") if getattr(cls, m) is not getattr(APIHandler, m)
        ]
        return [name.upper() for name in names]

    def admits_null_origin(self, method: str) -> bool:
        operation = self.operations.get("get" if method.lower() == "head" else method.lower())
        return bool(operation and operation.null_origin)

    def admit_origin(self) -> None:
        """Refuse (403) a request whose ``Origin`` is not admitted by the server's origin policy.

        The own origin is derived from ``Host``, so Jupyter's host check (DNS rebinding) runs first.
        """
        if not self.check_host():
            raise web.HTTPError(403)
        origin = self.request.headers.get("Origin")
        if origin is None:
            return  # not a browser's cross-origin request
        method = self.request.method or ""
        if method == "OPTIONS":
            method = self.request.headers.get("Access-Control-Request-Method", "")
        null_endpoint = self.admits_null_origin(method)
        policy = self.scope.origins
        if policy.admits(origin, self.request.host, null_endpoint):
            self._cors_origin = policy.allow_origin_header(origin)
            return
        if not is_well_formed(origin):
            raise ApiError(403, f"Origin {origin!r} is malformed.")
        self._cors_origin = origin  # only the refusal is readable
        if origin.strip().lower() == "null":
            raise ApiError(403, null_refusal_detail(null_endpoint and not policy.allow_null))
        raise ApiError(403, refusal_detail(origin))

    def write_cors_headers(self) -> None:
        """CORS headers of an open-API answer (also after an error cleared the headers)."""
        self.set_header("Vary", "Origin")
        if self._cors_origin is not None:
            self.set_header("Access-Control-Allow-Origin", self._cors_origin)
            self.set_header("Access-Control-Expose-Headers", "Content-Disposition")

    def set_cors_headers(self) -> None:
        if self.open_api:
            self.write_cors_headers()
        else:
            super().set_cors_headers()

    @allow_unauthenticated
    def options(self, *args: Any, **kwargs: Any) -> None:
        if self.open_api:
            self.write_cors_headers()
            self.set_header("Access-Control-Allow-Methods", ", ".join([*self.http_methods(), "OPTIONS"]))
            self.set_header("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS)
            self.set_header("Access-Control-Max-Age", "600")
            self.set_status(204)
            self.finish()
        else:
            super().options(*args, **kwargs)

    # Bodies and answers -----------------------------------------------------------------

    def json_body(self, model: type[BaseModel] | None = None) -> Any:
        """The request body as JSON (400 if malformed), validated by ``model`` (422)."""
        raw = self.request.body or b""
        try:
            data = json.loads(raw.decode("utf-8")) if raw.strip() else None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"Malformed JSON body: {exc}") from None
        except RecursionError:
            raise ApiError(400, "Malformed JSON body: nested too deeply") from None
        self.raw_json = data
        if model is None:
            return data
        if data is None:
            raise ApiError(422, [{"loc": ["body"], "msg": "Field required", "type": "missing"}])
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise ApiError(422, validation_errors(exc, prefix=("body",))) from None
        except RecursionError:
            raise ApiError(400, "Malformed JSON body: nested too deeply") from None

    def query(self, name: str, required: bool = False) -> str | None:
        value = self.get_query_argument(name, None)
        if required and not value:
            raise ApiError(422, [{"loc": ["query", name], "msg": "Field required", "type": "missing"}])
        return value

    async def send_download(self, path: Path, content_type: str, filename: str, missing: str) -> None:
        """Stream a file the server wrote as an attachment, read off the event loop; 404
        ``missing`` when it is not there."""
        try:
            handle = path.open("rb")
        except OSError:
            raise ApiError(404, missing) from None
        with handle:
            size = os.fstat(handle.fileno()).st_size
            self.set_header("Content-Type", content_type)
            self.set_header("Content-Length", str(size))
            self.set_header("Content-Disposition", f'attachment; filename="{filename}"')
            sent = 0
            while sent < size and (block := await asyncio.to_thread(handle.read, min(DOWNLOAD_BLOCK_BYTES, size - sent))):
                sent += len(block)
                self.write(block)
                await self.flush()
        self.finish(set_content_type=content_type)

    def reply(self, payload: BaseModel | dict[str, Any] | list[Any], status: int = 200) -> None:
        self.set_status(status)
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json")
        self.finish(json.dumps(payload))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            detail = exc.detail
        elif isinstance(exc, web.HTTPError):
            detail = exc.log_message or exc.reason or self._reason
        else:
            self.log.error("unhandled error in %s", self.request.path, exc_info=kwargs.get("exc_info"))
            detail = "Internal server error"
        self.set_header("Content-Type", "application/json")
        if self.open_api:
            self.write_cors_headers()
        self.finish(json.dumps({"detail": detail}))
