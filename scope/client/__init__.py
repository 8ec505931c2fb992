"""Python client of the Scope API: REST calls (:class:`ScopeClient`) and WebRTC streams (:class:`ScopeStream`).

.. code-block:: python

    from scope.client import ScopeClient

    client = ScopeClient("http://127.0.0.1:8000/")
    client.ensure_pipeline("longlive", {"height": 320, "width": 576}, synthetic=True)
    async with client.stream(prompts="a red fox in the snow") as stream:
        frames = await stream.read(30)
"""

from scope.client.errors import ModelDownloadError, PipelineLoadError, ScopeApiError, StreamClosed
from scope.client.pipelines import PipelineTarget
from scope.client.rest import ScopeClient

__all__ = [
    "ArrayTrack",
    "ModelDownloadError",
    "PipelineLoadError",
    "PipelineTarget",
    "RecordingInfo",
    "ScopeApiError",
    "ScopeClient",
    "ScopeStream",
    "StreamClosed",
    "VideoFileTrack",
]

#: Imported on first use, so REST-only use (and ``scope.serve``) never loads aiortc.
_LAZY = {
    "ScopeStream": "scope.client.stream",
    "RecordingInfo": "scope.client.recording",
    "ArrayTrack": "scope.client.sources",
    "VideoFileTrack": "scope.client.sources",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'scope.client' has no attribute {name!r}")
