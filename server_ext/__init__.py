"""Jupyter server extension of Scope Workbench."""

from __future__ import annotations


def _jupyter_server_extension_points() -> list[dict]:
    from scope.server_ext.application import ScopeApp

    return [{"module": "scope.server_ext", "app": ScopeApp}]
