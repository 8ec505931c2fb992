"""``ScopeWidget``: load a pipeline and watch, steer and measure its live stream inline.

The widget's front end does all the talking: it calls the Scope REST API and opens the WebRTC
connection from the browser, to the Jupyter server hosting the page (``server=""``) or to a
standalone ``daydream-scope`` (``server="http://localhost:8000"``). The kernel only holds
traitlets, so Python and the controls drive the same stream::

    w = ScopeWidget(pipeline_id="longlive", prompts="a red fox in the snow", autostart=True)
    w                                    # shows the controls and the video
    w.prompts = [{"text": "a city at night", "weight": 1.0}]
    w.transition_to("a forest at dawn", steps=8)
    w.paused = True
    w.status, w.fps, w.chunk             # read back from the browser

The stream-parameter traitlets are generated from the data channel's parameter model, and
validated with it, so a bad value fails in the cell that sets it, naming the field, and a new
parameter becomes a traitlet without a change here.
"""

from __future__ import annotations

import copy
import itertools
import types
from pathlib import Path
from typing import Any

import anywidget
import traitlets
from pydantic import BaseModel, ValidationError

from scope.client.auth import normalise_base_url, serves_url
from scope.params import ONE_SHOT_KEYS, StreamParameters, describe_errors, validation_errors

HERE = Path(__file__).parent

#: Stream parameters the widget drives through its own API rather than a traitlet: the input
#: source decides the mode, ``transition_to`` sends transitions, and one-shot requests are
#: methods (``reset_cache``), since a traitlet's value persists.
OWN_API = frozenset({"input_mode", "transition"}) | ONE_SHOT_KEYS

#: Initial values other than None ("the server's default").
TRAIT_DEFAULTS: dict[str, Any] = {"prompts": [], "prompt_interpolation_method": "linear", "paused": False}


def stream_trait_names(model: type[BaseModel] = StreamParameters) -> tuple[str, ...]:
    """The parameters of ``model`` that are traitlets: all but :data:`OWN_API`, in its order."""
    return tuple(name for name in model.model_fields if name not in OWN_API)


def _stream_traits_namespace(namespace: dict[str, Any]) -> None:
    """The body of :data:`StreamParameterTraits`: a traitlet per name, helped by its field's description."""
    for name in STREAM_TRAITS:
        help_text = StreamParameters.model_fields[name].description or ""
        namespace[name] = traitlets.Any(None, allow_none=True, help=help_text).tag(sync=True)
        # A fresh copy per widget, so no two widgets share a mutable default.
        namespace[f"_default_{name}"] = traitlets.default(name)(
            lambda self, value=TRAIT_DEFAULTS.get(name): copy.deepcopy(value)
        )


#: Traitlets that are stream parameters: a change goes to the live stream on the data channel.
STREAM_TRAITS = stream_trait_names()

#: One synced traitlet per stream parameter; values are checked by the parameter model.
StreamParameterTraits = types.new_class(
    "StreamParameterTraits", (traitlets.HasTraits,), exec_body=_stream_traits_namespace
)

#: Where the video comes from: text only, the browser's webcam, a generated pattern, or an asset.
INPUT_SOURCES = ("none", "webcam", "pattern")


def _parameter_value(name: str, value: Any) -> Any:
    """``value`` as the data channel would accept it for ``name``, or a TraitError naming it."""
    if value is None:
        return None
    try:
        parsed = StreamParameters.model_validate({name: value})
    except ValidationError as exc:
        raise traitlets.TraitError(describe_errors(validation_errors(exc))) from None
    return parsed.model_dump(mode="json")[name]


def _server_url(value: str) -> str:
    """"" for the page's own Jupyter server (also when ``value`` names the kernel's own server)."""
    value = (value or "").strip()
    if not value:
        return ""
    from scope.serving import parent_jupyter_server

    parent = parent_jupyter_server()
    if parent and serves_url(parent, value):
        return ""
    return normalise_base_url(value)


class ScopeWidget(anywidget.AnyWidget, StreamParameterTraits):
    """A Scope stream in a notebook: pick, download and load a pipeline, then stream it inline."""

    _esm = HERE / "scope_widget.js"
    _css = HERE / "scope_widget.css"

    # Where and what -------------------------------------------------------------------
    server = traitlets.Unicode("", help="Scope server URL; '' is the Jupyter server hosting the page.").tag(sync=True)
    pipeline_id = traitlets.Unicode("longlive", help="Pipeline to load and stream.").tag(sync=True)
    load_params = traitlets.Dict(help="Load parameters (the pipeline's load schema).").tag(sync=True)
    autostart = traitlets.Bool(False, help="Load the pipeline (if needed) and stream as soon as shown.").tag(sync=True)
    input_source = traitlets.Unicode(
        "none", help="'none' (text to video), 'webcam', 'pattern', or 'asset:<path>' (a video asset)."
    ).tag(sync=True)

    # Stream parameters (STREAM_TRAITS, from StreamParameterTraits; None: the server's default).
    #: Which traitlets the front end sends on the data channel when they change.
    _stream_traits = traitlets.List(list(STREAM_TRAITS), read_only=True).tag(sync=True)

    # One-shot requests to the front end: a fresh id makes a repeat count ---------------
    _transition = traitlets.Dict().tag(sync=True)
    _command = traitlets.Dict().tag(sync=True)

    # Read back from the front end ------------------------------------------------------
    status = traitlets.Unicode("not shown", help="Widget state: e.g. loading, streaming, stopped, error.").tag(sync=True)
    pipeline_status = traitlets.Unicode("", help="The server's pipeline status.").tag(sync=True)
    models = traitlets.Unicode("", help="'downloaded', 'synthetic', 'missing' or 'downloading'.").tag(sync=True)
    synthetic = traitlets.Bool(False, help="The stream comes from synthetic (random) weights.").tag(sync=True)
    session_id = traitlets.Unicode("").tag(sync=True)
    fps = traitlets.Float(0.0, help="Frames per second decoded by the browser.").tag(sync=True)
    latency_ms = traitlets.Float(None, allow_none=True, help="Network plus jitter-buffer delay.").tag(sync=True)
    chunk = traitlets.Int(0, help="Chunks generated in this stream.").tag(sync=True)
    chunk_ms = traitlets.Float(0.0, help="Generation time of the last chunk.").tag(sync=True)
    error = traitlets.Unicode("", help="The last error, in words; '' when none.").tag(sync=True)
    messages = traitlets.List(traitlets.Unicode(), help="Recent messages, newest last.").tag(sync=True)

    _ids = itertools.count(1)

    # Validation: the data channel's own model -------------------------------------------
    @traitlets.validate(*STREAM_TRAITS)
    def _validate_parameter(self, proposal: dict) -> Any:
        return _parameter_value(proposal["trait"].name, proposal["value"])

    @traitlets.validate("server")
    def _validate_server(self, proposal: dict) -> str:
        return _server_url(proposal["value"])

    @traitlets.validate("input_source")
    def _validate_input_source(self, proposal: dict) -> str:
        value = proposal["value"]
        if value not in INPUT_SOURCES and not value.startswith("asset:"):
            raise traitlets.TraitError(f"input_source: expected one of {INPUT_SOURCES} or 'asset:<path>', got {value!r}")
        return value

    # Actions -------------------------------------------------------------------------
    def transition_to(self, prompts: Any, steps: int = 8, method: str = "linear") -> None:
        """Move the live stream to ``prompts`` over ``steps`` chunks (0 switches at once)."""
        transition = _parameter_value(
            "transition",
            {"target_prompts": prompts, "num_steps": steps, "temporal_interpolation_method": method},
        )
        self._transition = {"id": next(self._ids), **transition}
        # The stream ends on the target; the front end does not resend it as a jump.
        self.prompts = transition["target_prompts"]

    def reset_cache(self) -> None:
        """Flush queued frames and restart the stream's caches on the next chunk."""
        self._send_command("reset_cache")

    def load(self) -> None:
        """Load ``pipeline_id`` with ``load_params`` on the server (downloads are the user's call)."""
        self._send_command("load")

    def start(self) -> None:
        """Start streaming (the pipeline must be loaded)."""
        self._send_command("start")

    def stop(self) -> None:
        """End the stream; the server frees its state at once."""
        self._send_command("stop")

    def _send_command(self, name: str) -> None:
        self._command = {"id": next(self._ids), "name": name}
