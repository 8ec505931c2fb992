"""``ScopeApp``: the Jupyter server extension that serves the Scope API.

The same app serves inside ``jupyter lab`` (closed by default: Jupyter's auth applies) and as
the standalone ``daydream-scope`` command (open API on port 8000), so the handlers are shared.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os

from jupyter_core.application import JupyterApp
from jupyter_server.extension.application import ExtensionApp
from jupyter_server.serverapp import ServerApp, aliases as server_aliases, flags as server_flags
from tornado.netutil import bind_sockets
from traitlets import Bool, default

from scope import __version__
from scope.build_info import version_line
from scope.config import ScopeSettings
from scope.server_ext.banner import Banner, usable_host
from scope.server_ext.routes import route_table
from scope.server_ext.services import ScopeServices
from scope.streaming import closed_connections

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
        "ray-address": (
            "ScopeApp.ray_address",
            "Run the pipeline workers as actors of this Ray cluster ('auto', or HOST:PORT of its head).",
        ),
        "workers": ("ScopeApp.workers", "The devices to run pipelines on, one worker each ('auto', 'cuda:0,cuda:1', 'cpu,cpu')."),
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

    @default("answer_yes")
    def _default_answer_yes(self) -> bool:
        return True  # one Ctrl-C stops the server, without Jupyter's "Shut down (y/[n])?"

    @default("log_level")
    def _default_log_level(self) -> int:
        # Jupyter's own start-up lines (extensions linked, notebook directory, kernels) do not
        # apply here; its warnings and errors still show, and Scope's lines have their own handler.
        return logging.WARN

    def init_httpserver(self) -> None:
        if not self.sock and self.port and port_in_use(self.ip, self.port):
            self.log.critical(
                "port %d is in use: another server is listening there. Stop it, or pick another "
                "port with --port.", self.port
            )
            self.exit(1)
        super().init_httpserver()

    def start_app(self) -> None:
        """Jupyter's start, with the Scope banner in place of its URL, token and file:// lines."""
        JupyterApp.start(self)
        if not self.allow_root and os.geteuid() == 0:
            self.log.critical("Running as root is not recommended. Use --allow-root to bypass.")
            self.exit(1)
        if getattr(self.starter_app, "services", None) is None:
            # Jupyter logged why (a setting naming a missing device, an unreachable Ray cluster).
            self.log.critical("Scope could not start: see the error above.")
            self.exit(1)
        self.write_server_info_file()
        if not self.no_browser_open_file:
            self.write_browser_open_files()
        print(self.banner().text(), end="", flush=True)
        if self.open_browser and not self.sock:
            self.launch_browser()

    def banner(self) -> Banner:
        scope = self.starter_app
        page_query = ""
        if not scope.open_api and self.identity_provider.token:
            token = self.identity_provider.token if self.identity_provider.token_generated else "<your token>"
            page_query = f"?token={token}"
        scheme = "https" if self.certfile else "http"
        return Banner(
            version=version_line(),
            base_url=f"{scheme}://{usable_host(self.ip)}:{self.port}{self.base_url}",
            page_query=page_query,
            synthetic=scope.synthetic,
            models_dir=scope.models_path,
            log_file=scope.services.logs.current_file(),
        )

    def launch_browser(self) -> None:
        """Open the page where this machine has a browser; without one, the banner's URL does."""
        import webbrowser

        try:
            webbrowser.get(self.browser or None)
        except webbrowser.Error:
            return
        super().launch_browser()


def port_in_use(ip: str, port: int) -> bool:
    """Whether ``ip:port`` is taken (Jupyter would only say the server "could not be started")."""
    try:
        sockets = bind_sockets(port, ip or None)
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    for sock in sockets:
        sock.close()
    return False


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
        self.services.open_log(console=self.standalone)
        self.settings["scope"] = self.services
        # Handlers read the services from the shared tornado settings.
        self.serverapp.web_app.settings["scope"] = self.services

    def initialize_handlers(self) -> None:
        self.handlers.extend(route_table())

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        closed_connections.install(asyncio.get_running_loop())
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

    def _warn_if_any_origin(self) -> None:
        if self.open_api and "*" in self.allowed_origins:
            message = (
                "The Scope API admits every web origin ('*' in allowed_origins): any web page this "
                "machine's browsers visit can load pipelines, upload files, read and stop sessions."
            )
            self.log.warning(message)

    async def stop_extension(self) -> None:
        services = getattr(self, "services", None)
        if services is not None:
            await services.stop()


main = launch_new_instance = ScopeApp.launch_instance
