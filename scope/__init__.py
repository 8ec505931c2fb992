"""Scope Workbench: a notebook-first research workbench for real-time generative video."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("daydream-scope")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
