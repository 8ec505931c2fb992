"""``ScopeApp``: the Jupyter server extension that serves the Scope API.

The same app serves inside ``jupyter lab`` (closed by default: Jupyter's auth applies) and as
the standalone ``daydream-scope`` command (open API on port 8000), so the handlers are shared.
"""

from __future__ import annotations

import ipaddress
import logging
import os

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.serverapp import ServerApp, aliases as server_aliases, flags as server_flags
from traitlets import Bool, default

from scope import __version__
from scope.config import ScopeSettings
from scope.server_ext.routes import route_table
from scope.server_ext.services import ScopeServices

logger = logging.getLogger(__name__)

EXTENSION_NAME = "scope"


class ScopeServerApp(ServerApp):
    """The Jupyter server as ``daydream-scope`` runs it: port 8000, open Scope API, no Lab."""

    name = "daydream-scope"
    description = "Scope server: real-time generative video over REST and WebRTC."
    version = __version__

    flags = {
        **server_flags,
        ("N", "no-browser"): server_flags["no-browser"],
        "reload": ({"ServerApp": {"autoreload": True}}, "Restart the server when Python files change."),
        "synthetic": (
            {"ScopeApp": {"synthetic": True}},
            "Write synthetic (tiny, random) weights for a pipeline whose files are missing when it loads.",
        ),
    }
    aliases = {
        **server_aliases,
        "host": "ServerApp.ip",
        "allow-origin": (
            "ScopeApp.allowed_origins",
            "A web origin (scheme://host:port) that may call the API; repeat for more, '*' for all.",
        ),
    }

    @default("port")
    def _default_port(self) -> int:
        return 8000

    @default("ip")
    def _default_ip(self) -> str:
        return "0.0.0.0"

    @default("port_retries")
    def _default_port_retries(self) -> int:
        return 0  # a busy port is an error, not a silent move to 8001

    @default("allow_root")
    def _default_allow_root(self) -> bool:
        return True  # containers and CI run as root; kernels still need Jupyter's token

    @default("default_url")
    def _default_url(self) -> str:
        return "/scope/"


class ScopeApp(ScopeSettings, ExtensionApp):
    """Scope endpoints (``/health``, ``/api/v1/...``, ``/docs``, ``/scope/``) for Jupyter."""

    name = EXTENSION_NAME
    extension_url = "/scope/"
    load_other_extensions = False
    version = __version__
    description = "Scope Workbench server API"
    serverapp_class = ScopeServerApp
    flags = {}
    aliases = {}

    standalone = Bool(False, help="Set by daydream-scope: open API by default.").tag(config=True)

    @classmethod
    def get_extension_package(cls) -> str:
        return "scope.server_ext"

    def initialize_settings(self) -> None:
        chosen = "open_api" in self.config.get("ScopeApp", {}) or os.environ.get("DAYDREAM_SCOPE_OPEN_API")
        if self.standalone and not chosen:
            self.open_api = True
        self.services = ScopeServices.create(self)
        self.services.open_log()
        self.settings["scope"] = self.services
        # Handlers read the services from the shared tornado settings.
        self.serverapp.web_app.settings["scope"] = self.services

    def initialize_handlers(self) -> None:
        self.handlers.extend(route_table())

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        await self.services.start()
        self._warn_if_exposed(serverapp)
        self._warn_if_any_origin()

    def _warn_if_exposed(self, serverapp) -> None:
        if not self.open_api:
            return
        ip = serverapp.ip or "0.0.0.0"
        try:
            loopback = ip == "localhost" or ipaddress.ip_address(ip).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            message = (
                f"The Scope API is open (no token) and bound to {ip}: anyone who can reach port "
                f"{serverapp.port} can load pipelines and stream. Use --host 127.0.0.1 to keep it local."
            )
            self.log.warning(message)
            print(f"WARNING: {message}", flush=True)

    def _warn_if_any_origin(self) -> None:
        if self.open_api and "*" in self.allowed_origins:
            message = (
                "The Scope API admits every web origin ('*' in allowed_origins): any web page this "
                "machine's browsers visit can load pipelines, upload files, read and stop sessions."
            )
            self.log.warning(message)
            print(f"WARNING: {message}", flush=True)

    async def stop_extension(self) -> None:
        services = getattr(self, "services", None)
        if services is not None:
            await services.stop()


main = launch_new_instance = ScopeApp.launch_instance
