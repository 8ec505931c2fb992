"""Find the token of the Jupyter server behind a URL.

Under ``jupyter lab`` the Scope endpoints follow Jupyter's auth, and a kernel or script on the
same machine can read the server's token from its runtime file. ``daydream-scope`` needs none.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

#: Host names that all mean "this machine" when comparing a URL with a server's runtime info.
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", ""})


def is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in LOCAL_HOSTS - {"0.0.0.0", "::"}


def normalise_base_url(url: str) -> str:
    """``url`` with a scheme and a trailing slash (``127.0.0.1:8000`` -> ``http://127.0.0.1:8000/``)."""
    if "://" not in url:
        url = "http://" + url
    return url if url.endswith("/") else url + "/"


def _address(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(normalise_base_url(url))
    scheme = parts.scheme or "http"
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, parts.hostname or "", port, parts.path or "/"


def _same_host(a: str, b: str) -> bool:
    return a == b or (a in LOCAL_HOSTS and b in LOCAL_HOSTS)


def serves_url(info: dict[str, Any], url: str) -> bool:
    """Whether the Jupyter runtime ``info`` describes the server at ``url``."""
    scheme, host, port, path = _address(url)
    own_scheme, own_host, own_port, own_path = _address(info.get("url", ""))
    base_url = info.get("base_url") or own_path
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    hosts = {own_host, info.get("hostname") or ""}
    return (
        scheme == own_scheme
        and port == int(info.get("port") or own_port)
        and path == base_url
        and any(_same_host(host, candidate) for candidate in hosts)
    )


def running_servers() -> Iterable[dict[str, Any]]:
    from jupyter_server.serverapp import list_running_servers

    return list_running_servers()


def jupyter_token(url: str) -> str | None:
    """The token of a running Jupyter server on this machine serving ``url``, if any."""
    for info in running_servers():
        if serves_url(info, url):
            return info.get("token") or None
    return None
