"""Which web pages may call the open Scope API, decided from the request's ``Origin`` header.

A browser names the page behind every cross-origin request in ``Origin``; with the API open (no
token), that header is the only thing keeping a page the user happens to visit from driving the
server. Admitted by default: the server's own origin, loopback pages, local editor webviews, and
``null`` (a page opened from a file) on the endpoints that declare it. Anything else must be
listed in ``ScopeApp.allowed_origins``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

NULL_ORIGIN = "null"
ANY_ORIGIN = "*"
#: Schemes of the notebook webviews local editors run widgets in (VS Code and its forks).
EDITOR_WEBVIEW_SCHEMES = ("vscode-webview",)
WEB_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": ":80", "https": ":443"}
#: Printable ASCII without spaces: what a browser sends, and what is safe to echo in a header.
_ORIGIN_CHARS = re.compile(r"[\x21-\x7e]+")

#: Fixed words of the refusal, which the widget recognises to show the setting to change.
REFUSAL_PHRASE = "is not allowed to use this Scope API"
ALLOW_FLAG = "--allow-origin"


def normalise_origin(value: str) -> str:
    """An origin as browsers send it: lower case, no trailing slash."""
    return value.strip().rstrip("/").lower()


def is_well_formed(origin: str) -> bool:
    """Whether ``origin`` can be compared and echoed back in a header at all."""
    return bool(_ORIGIN_CHARS.fullmatch(origin)) and len(origin) <= 2048


def is_loopback_origin(origin: str) -> bool:
    """``http(s)://localhost``, ``127.x.x.x`` or ``[::1]``, any port."""
    try:
        parts = urlsplit(origin)
        host = parts.hostname
    except ValueError:
        return False
    if parts.scheme not in WEB_SCHEMES or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_editor_webview(origin: str) -> bool:
    return origin.split("://", 1)[0] in EDITOR_WEBVIEW_SCHEMES and "://" in origin


def _without_default_port(netloc: str, scheme: str) -> str:
    suffix = DEFAULT_PORTS.get(scheme, "")
    return netloc[: -len(suffix)] if suffix and netloc.endswith(suffix) else netloc


def is_own_origin(origin: str, host: str) -> bool:
    """The page was served by this server: its origin names the ``Host`` the request came to.

    ``host`` must have passed Jupyter's host check already (a forged name never gets here).
    Either scheme matches, as in Jupyter's own origin check, so a TLS proxy in front still works.
    """
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in WEB_SCHEMES or not parts.netloc or not host:
        return False
    return _without_default_port(parts.netloc, parts.scheme) == _without_default_port(host.lower(), parts.scheme)


@dataclass(frozen=True)
class OriginPolicy:
    """The allow-list of one server: its configured origins and whether ``null`` is admitted."""

    allowed: frozenset[str] = frozenset()
    allow_null: bool = True

    @classmethod
    def from_settings(cls, settings) -> "OriginPolicy":
        return cls(frozenset(normalise_origin(o) for o in settings.allowed_origins if o.strip()), settings.allow_null_origin)

    @property
    def admits_any(self) -> bool:
        return ANY_ORIGIN in self.allowed

    def admits(self, origin: str, host: str, null_endpoint: bool) -> bool:
        """Whether a request carrying ``Origin: origin`` may be served.

        ``null_endpoint``: the endpoint is one a page opened from a file needs (see
        ``Operation.null_origin``).
        """
        if self.admits_any:
            return True
        origin = normalise_origin(origin)
        if not is_well_formed(origin):
            return False
        if origin == NULL_ORIGIN:
            return null_endpoint and self.allow_null
        return (
            origin in self.allowed
            or is_own_origin(origin, host)
            or is_loopback_origin(origin)
            or is_editor_webview(origin)
        )

    def allow_origin_header(self, origin: str) -> str:
        """The ``Access-Control-Allow-Origin`` value for an admitted ``origin``."""
        return ANY_ORIGIN if self.admits_any else origin


def refusal_detail(origin: str) -> str:
    """The 403 text: names the origin and the exact setting that admits it."""
    return (
        f"Origin {origin} {REFUSAL_PHRASE}. To admit it, start daydream-scope with "
        f"{ALLOW_FLAG} {origin} (under Jupyter: ScopeApp.allowed_origins=['{origin}'])."
    )


def null_refusal_detail(null_endpoint: bool) -> str:
    """The 403 text for ``null`` (a file page or a sandboxed iframe) where it is not admitted."""
    if null_endpoint:
        why = "this server refuses it (ScopeApp.allow_null_origin is False)"
    else:
        why = "this endpoint is not one a page opened from a file may call"
    return f"Origin null {REFUSAL_PHRASE}: {why}. Serve the page from http://localhost instead."
