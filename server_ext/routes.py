"""Every Scope route, in one list: the server mounts it and the OpenAPI document reads it."""

from __future__ import annotations

from pathlib import Path

import importlib.resources
import importlib.util
from tornado import web

from scope.server_ext.handlers.base import ScopeHandler
from scope.server_ext.handlers.docs import OpenApiHandler, SwaggerHandler
from scope.server_ext.handlers.guides import GuidesHandler
from scope.server_ext.handlers.files import AssetFileHandler, AssetsHandler, LoraListHandler
from scope.server_ext.handlers.loras import LoraFileHandler, LorasHandler, LoraUploadHandler
from scope.server_ext.handlers.headless import (
    HeadlessFrameHandler,
    HeadlessMetricsHandler,
    HeadlessOutputHandler,
    HeadlessParametersHandler,
    HeadlessStartHandler,
    HeadlessStopHandler,
)
from scope.server_ext.handlers.health import CurrentLogHandler, HardwareInfoHandler, HealthHandler
from scope.server_ext.handlers.models import ModelsDownloadHandler, ModelsStatusHandler
from scope.server_ext.handlers.page import WidgetStateHandler
from scope.server_ext.handlers.pipeline import LoadHandler, SchemasHandler, StatusHandler, UnloadHandler
from scope.server_ext.handlers.recordings import (
    RecordingInputHandler,
    RecordingProvenanceHandler,
    RecordingsHandler,
    RecordingStartHandler,
    RecordingStopHandler,
    RecordingTimelineHandler,
    RecordingVideoHandler,
)
from scope.server_ext.handlers.render import (
    RenderHandler,
    RenderJobHandler,
    RenderProvenanceHandler,
    RenderVideoHandler,
)
from scope.server_ext.handlers.webrtc import (
    CandidatesHandler,
    IceServersHandler,
    OfferHandler,
    SessionHandler,
    SessionsHandler,
)
from scope.server_ext.handlers.websocket import SessionSocketHandler, TransportsHandler, WebSocketOfferHandler

PAGE_DIR = Path(__file__).parent / "static" / "page"
#: The notebook widget's package: its stylesheet is the page's too (found without importing it).
WIDGET_DIR = importlib.util.find_spec("scope.widgets").submodule_search_locations[0]
#: Swagger UI 5 (OpenAPI 3.1 support), shipped inside a PyPI package: /docs works offline.
SWAGGER_DIR = str(importlib.resources.files("swagger_ui") / "static")

#: API handlers, in the order the API reference lists them.
HANDLERS: list[type[ScopeHandler]] = [
    HealthHandler,
    HardwareInfoHandler,
    LoadHandler,
    UnloadHandler,
    StatusHandler,
    SchemasHandler,
    ModelsStatusHandler,
    ModelsDownloadHandler,
    IceServersHandler,
    OfferHandler,
    CandidatesHandler,
    SessionsHandler,
    SessionHandler,
    TransportsHandler,
    WebSocketOfferHandler,
    HeadlessStartHandler,
    HeadlessStopHandler,
    HeadlessParametersHandler,
    HeadlessFrameHandler,
    HeadlessMetricsHandler,
    HeadlessOutputHandler,
    RecordingsHandler,
    RecordingStartHandler,
    RecordingStopHandler,
    RecordingVideoHandler,
    RecordingTimelineHandler,
    RecordingProvenanceHandler,
    RecordingInputHandler,
    RenderHandler,
    RenderJobHandler,
    RenderVideoHandler,
    RenderProvenanceHandler,
    AssetsHandler,
    AssetFileHandler,
    LoraListHandler,
    LorasHandler,
    LoraUploadHandler,  # before LoraFileHandler, whose pattern would take "upload" as a name
    LoraFileHandler,
    CurrentLogHandler,
]


class PageHandler(web.StaticFileHandler):
    """The server's own page (``/scope/``): plain files, no build step.

    The notebook widget imports these modules from whichever server it streams from, possibly
    another origin than the notebook's page, so they are public to every origin (they hold code
    only, never data).
    """

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Access-Control-Allow-Origin", "*")


def route_table() -> list[tuple]:
    """(pattern, handler[, kwargs]) rules, relative to the server's base URL."""
    # The WebSocket is no OpenAPI operation: docs/server.md describes it.
    extra = (SessionSocketHandler, OpenApiHandler, SwaggerHandler, WidgetStateHandler, GuidesHandler)
    rules: list[tuple] = [(h.pattern, h) for h in (*HANDLERS, *extra)]
    rules.append((r"/docs/static/(.*)", web.StaticFileHandler, {"path": SWAGGER_DIR}))
    rules.append((r"/scope", web.RedirectHandler, {"url": "scope/"}))
    rules.append((r"/scope/(scope_widget\.css)", PageHandler, {"path": WIDGET_DIR}))
    rules.append((r"/scope/(.*)", PageHandler, {"path": str(PAGE_DIR), "default_filename": "index.html"}))
    return rules
