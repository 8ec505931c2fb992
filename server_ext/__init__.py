"""Jupyter server extension of Scope Workbench."""

from __future__ import annotations

from scope import __version__

__all__ = ["EXTENSION_CONFIG", "EXTENSION_CONFIG_FILE", "__version__"]

#: The Jupyter config that enables this extension (installed as a data file by ``pip install .``).
EXTENSION_CONFIG = {"ServerApp": {"jpserver_extensions": {"scope.server_ext": True}}}
EXTENSION_CONFIG_FILE = "scope.json"


def _jupyter_server_extension_points() -> list[dict]:
    from scope.server_ext.application import ScopeApp

    return [{"module": "scope.server_ext", "app": ScopeApp}]
