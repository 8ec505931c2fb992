"""Scope Workbench: a notebook-first research workbench for real-time generative video."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("daydream-scope")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "load_pipeline", "render", "serve"]


def __getattr__(name: str):
    # Imported on first use: ``import scope`` stays light (no torch) for the server's CLI.
    if name == "load_pipeline":
        from scope.api import load_pipeline

        return load_pipeline
    if name == "render":
        from scope.api import render

        return render
    if name == "serve":
        from scope.serving import serve

        return serve
    raise AttributeError(f"module 'scope' has no attribute {name!r}")
