"""``ScopeWidget``: load a pipeline and watch, steer and measure its live stream inline.

The widget's front end does all the talking: it calls the Scope REST API and opens the stream
(WebRTC, or a WebSocket where UDP cannot pass) from the browser, to the Jupyter server hosting the page (``server=""``) or to a
standalone ``daydream-scope`` (``server="http://localhost:8000"``). The kernel only holds
traitlets, so Python and the controls drive the same stream::

    w = ScopeWidget(pipeline_id="longlive", prompts="a red fox in the snow", autostart=True)
    display(w)                           # shows the controls and the video
    w.prompts = [{"text": "a city at night", "weight": 1.0}]
    w.transition_to("a forest at dawn", steps=8)
    await w.wait_for("streaming")        # lets the browser's reports in while it waits
    w.status, w.fps, w.chunk, w.server   # read back from the browser

The readings arrive as messages from the view, which the kernel takes in between cells or while
a cell awaits (:mod:`scope.widgets.waiting`); a cell that reads them without waiting sees the
values from before it started.

The stream-parameter traitlets are generated from the data channel's parameter model, and
validated with it, so a bad value fails in the cell that sets it, naming the field, and a new
parameter becomes a traitlet without a change here.
"""

from __future__ import annotations

import copy
import itertools
import types
from pathlib import Path
from typing import Any, Callable

import anywidget
import traitlets
from pydantic import BaseModel, ValidationError

from scope.client.auth import normalise_base_url, serves_url
from scope.params import ONE_SHOT_KEYS, StreamParameters, describe_errors, validation_errors
from scope.widgets import waiting

HERE = Path(__file__).parent

#: Stream parameters the widget drives through its own API rather than a traitlet: the input
#: source decides the mode, ``transition_to`` sends transitions, ``record()`` and
#: ``stop_recording()`` the server-side recording (whose state ``recording`` reads back), and
#: one-shot requests are methods (``reset_cache``), since a traitlet's value persists.
OWN_API = frozenset({"input_mode", "transition", "recording"}) | ONE_SHOT_KEYS

#: ``recording`` before the view reports one (the view's ``NO_RECORDING``).
NO_RECORDING: dict[str, Any] = {
    "state": "idle", "session_id": "", "url": "", "timeline_url": "", "frames": 0, "duration_s": 0,
    "stop_reason": None, "message": "",
}

#: The prompt a new widget (and the server's ``/scope/`` page) starts with, so the first Start
#: generates something: the API spec's own example prompt.
DEFAULT_PROMPT = "A 3D animated scene. A **panda** walks along a path towards the camera in a park on a spring day."

#: Initial values other than None ("the server's default").
TRAIT_DEFAULTS: dict[str, Any] = {
    "prompts": [{"text": DEFAULT_PROMPT, "weight": 1.0}],
    "prompt_interpolation_method": "linear",
    "paused": False,
}


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

#: Where the video comes from: the pipeline's default (""), text only, the browser's webcam, a
#: generated pattern, or an asset.
INPUT_SOURCES = ("", "none", "webcam", "pattern")

#: How a stream's video travels: WebRTC, falling back to the WebSocket ("auto"), or one of them.
TRANSPORTS = ("auto", "webrtc", "websocket")


def _parameter_value(name: str, value: Any) -> Any:
    """``value`` as the data channel would accept it for ``name``, or a TraitError naming it."""
    if value is None:
        return None
    try:
        parsed = StreamParameters.model_validate({name: value})
    except ValidationError as exc:
        raise traitlets.TraitError(describe_errors(validation_errors(exc))) from None
    return parsed.model_dump(mode="json")[name]


def _asset_path(image: Any) -> str:
    """An asset's path on the server: a string or Path as given, or the ``path`` of an ``Asset``."""
    return str(getattr(image, "path", image))


def _prompts_value(value: Any) -> Any:
    """Prompts as the data channel takes them, refusing an empty text (it would generate from nothing).

    ``[]`` stays allowed: "no prompts chosen", so nothing is sent and Start asks for one.
    """
    prompts = _parameter_value("prompts", value)
    for index, prompt in enumerate(prompts or []):
        if not prompt["text"].strip():
            where = "prompts" if isinstance(value, str) else f"prompts.{index}.text"
            raise traitlets.TraitError(
                f"{where}: the prompt is empty, so there is nothing to generate from; "
                "give it text (or set prompts = [] to choose none)"
            )
    return prompts


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
    server = traitlets.Unicode(
        "",
        help="Scope server URL; '' (or the kernel's own Jupyter server) is the Jupyter server hosting the page, "
        "whose URL a view reports here once shown.",
    ).tag(sync=True)
    #: The view uses the Jupyter server hosting the page (same origin): ``server`` was set to ''.
    _page_server = traitlets.Bool(True).tag(sync=True)
    pipeline_id = traitlets.Unicode("longlive", help="Pipeline to load and stream.").tag(sync=True)
    load_params = traitlets.Dict(help="Load parameters (the pipeline's load schema).").tag(sync=True)
    autostart = traitlets.Bool(False, help="Load the pipeline (if needed) and stream as soon as shown.").tag(sync=True)
    transport = traitlets.Unicode(
        "auto",
        help="How the video travels: 'auto' (WebRTC, or the WebSocket when WebRTC does not connect within "
        "the server's webrtc_fallback_timeout, as through an SSH tunnel or a proxy), 'webrtc' or 'websocket'. "
        "Taken by the next stream.",
    ).tag(sync=True)
    input_source = traitlets.Unicode(
        "",
        help="'' (the pipeline's default: 'none' for one whose default mode is text, else 'webcam'), "
        "'none' (text to video), 'webcam', 'pattern', or 'asset:<path>' (a video asset).",
    ).tag(sync=True)

    # Stream parameters (STREAM_TRAITS, from StreamParameterTraits; None: the server's default).
    #: Which traitlets the front end sends on the data channel when they change.
    _stream_traits = traitlets.List(list(STREAM_TRAITS), read_only=True).tag(sync=True)

    # One-shot requests to the front end: a fresh id makes a repeat count ---------------
    _transition = traitlets.Dict().tag(sync=True)
    _command = traitlets.Dict().tag(sync=True)

    # Read back from the front end ------------------------------------------------------
    status = traitlets.Unicode(
        "not shown",
        help="What the view reports: 'not shown' until one is drawn, then 'idle', 'loading', 'ready', "
        "'connecting', 'streaming', 'paused', 'stopped', 'error', 'unavailable', and 'closed' once the view "
        "goes away (its output cleared or its cell re-run).",
    ).tag(sync=True)
    pipeline_status = traitlets.Unicode(
        "", help="The state of the view's own pipeline on the server: 'not_loaded', 'loading', 'loaded' or 'error'."
    ).tag(sync=True)
    models = traitlets.Unicode("", help="'downloaded', 'synthetic', 'missing' or 'downloading'.").tag(sync=True)
    synthetic = traitlets.Bool(False, help="The stream comes from synthetic (random) weights.").tag(sync=True)
    session_id = traitlets.Unicode("").tag(sync=True)
    active_transport = traitlets.Unicode(
        "", help="The transport the stream runs on: 'webrtc', 'websocket', or '' with no stream."
    ).tag(sync=True)
    fps = traitlets.Float(0.0, help="Frames per second decoded by the browser.").tag(sync=True)
    latency_ms = traitlets.Float(None, allow_none=True, help="Network plus jitter-buffer delay.").tag(sync=True)
    chunk = traitlets.Int(0, help="Chunks generated in this stream.").tag(sync=True)
    chunk_ms = traitlets.Float(0.0, help="Generation time of the last chunk.").tag(sync=True)
    error = traitlets.Unicode("", help="The last error, in words; '' when none.").tag(sync=True)
    messages = traitlets.List(traitlets.Unicode(), help="Recent messages, newest last.").tag(sync=True)
    lora_adapters = traitlets.List(
        help="The loaded pipeline's LoRA adapters kept apart from the weights (runtime_peft): "
        "[{path, name, merge_mode, scale}], scale as this view's stream has it.",
    ).tag(sync=True)
    recording = traitlets.Dict(
        help="The server-side recording of the view's stream, as the view follows it: {state ('idle', "
        "'recording', 'stopped'), session_id, url (the MP4), timeline_url, frames, duration_s, stop_reason, "
        "message}. Read only: w.record() and w.stop_recording() change it.",
    ).tag(sync=True)

    #: Views drawn in the front end (ipywidgets counts them when this is a number).
    _view_count = traitlets.Int(0, allow_none=True).tag(sync=True)

    _ids = itertools.count(1)
    _displayed = False  # the kernel has sent a view of it to be displayed
    _view_seen = False  # a front end has drawn a view of it
    _view_reporting = False  # a front end's update is being applied

    def __init__(self, **kwargs: Any) -> None:
        waiting.acknowledge_comm_messages()  # else the view's reports can stall (see there)
        super().__init__(**kwargs)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        self._displayed = True
        return super()._repr_mimebundle_(**kwargs)

    @traitlets.observe("_view_count")
    def _count_views(self, change: dict) -> None:
        if change["new"]:
            self._view_seen = True
            waiting.view_drawn()
        elif change["old"]:
            self.status = "closed"  # the last view went away (its own report may come a moment later)

    def set_state(self, sync_data: dict) -> None:
        """An update from a view; its ``server`` is the URL it resolved and is kept as reported."""
        self._view_reporting = True
        try:
            super().set_state(sync_data)
        finally:
            self._view_reporting = False

    # Validation: the data channel's own model -------------------------------------------
    @traitlets.validate(*STREAM_TRAITS)
    def _validate_parameter(self, proposal: dict) -> Any:
        name = proposal["trait"].name
        if name == "prompts":
            return _prompts_value(proposal["value"])
        return _parameter_value(name, proposal["value"])

    @traitlets.default("recording")
    def _no_recording(self) -> dict[str, Any]:
        return dict(NO_RECORDING)

    @traitlets.validate("recording")
    def _validate_recording(self, proposal: dict) -> dict[str, Any]:
        """Only the view says what the server records: Python asks through ``record()``."""
        if not self._view_reporting:
            raise traitlets.TraitError("recording is read only: use w.record() and w.stop_recording()")
        return proposal["value"]

    @traitlets.validate("server")
    def _validate_server(self, proposal: dict) -> str:
        if self._view_reporting:
            return proposal["value"]
        return _server_url(proposal["value"])

    @traitlets.observe("server")
    def _choose_page_server(self, change: dict) -> None:
        if not self._view_reporting:
            self._page_server = not change["new"]

    @traitlets.validate("transport")
    def _validate_transport(self, proposal: dict) -> str:
        value = proposal["value"]
        if value not in TRANSPORTS:
            raise traitlets.TraitError(f"transport: expected one of {TRANSPORTS}, got {value!r}")
        return value

    @traitlets.validate("input_source")
    def _validate_input_source(self, proposal: dict) -> str:
        value = proposal["value"]
        if value not in INPUT_SOURCES and not value.startswith("asset:"):
            raise traitlets.TraitError(f"input_source: expected one of {INPUT_SOURCES} or 'asset:<path>', got {value!r}")
        return value

    # Actions -------------------------------------------------------------------------
    def transition_to(self, prompts: Any, steps: int = 8, method: str = "linear") -> None:
        """Move the stream to ``prompts`` over ``steps`` chunks (0 switches at once).

        Asked before the stream starts, it waits: the stream starts on the current prompts and
        the transition follows its first chunk.
        """
        transition = _parameter_value(
            "transition",
            {"target_prompts": prompts, "num_steps": steps, "temporal_interpolation_method": method},
        )
        # ``from_prompts`` lets a view that starts the stream later begin where the move starts.
        self._transition = {"id": next(self._ids), "from_prompts": self.prompts, **transition}
        # The stream ends on the target; the front end does not resend it as a jump.
        self.prompts = transition["target_prompts"]

    def set_lora_scale(self, path: str | Path, scale: float) -> None:
        """Set the scale of a runtime LoRA adapter (``runtime_peft``) in the live stream.

        ``path`` as loaded: absolute, or relative to the server's LoRA directory
        (``w.lora_adapters`` lists them). Sent as ``lora_scales`` on the data channel; the
        server refuses a merged or unknown adapter (``w.error`` then says so). Only the stream
        of this widget changes: each stream has its own scales.
        """
        entries = _parameter_value("lora_scales", [{"path": str(path), "scale": scale}])
        self._send_command("lora_scales", lora_scales=entries)

    def send_reference_images(self, *images: str | Path | Any) -> None:
        """Send VACE reference images: asset paths on the server (or what ``upload_asset`` answers).

        One-shot: they condition the chunk they come with (the stream's first chunk when none
        is running yet), so send them again to renew them. Upload a file with
        ``ScopeClient(w.server).upload_asset(path)``: the kernel holds no connection of its own.
        """
        refs = _parameter_value("vace_ref_images", [_asset_path(image) for image in images])
        self._send_once({"vace_ref_images": refs}, "vace_ref_images: " + ", ".join(refs))

    def send_frame_images(self, first: str | Path | Any = None, last: str | Path | Any = None) -> None:
        """Send VACE extension images (one-shot): the frame the next chunk starts from, ends on, or both."""
        parameters = {
            name: _parameter_value(name, _asset_path(image))
            for name, image in (("first_frame_image", first), ("last_frame_image", last))
            if image is not None
        }
        if not parameters:
            raise ValueError("send_frame_images needs first=, last= or both")
        self._send_once(parameters, ", ".join(f"{name}: {path}" for name, path in parameters.items()))

    def _send_once(self, parameters: dict[str, Any], what: str) -> None:
        self._send_command("send_once", parameters=parameters, what=what)

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

    def record(self) -> None:
        """Record the stream on the server (``w.recording`` follows it; its ``url`` is the MP4).

        A live stream records from its next chunk; with none yet, the next stream records from
        its first chunk, the only way a video-mode recording can be rendered again exactly.
        The server's refusal (it records already, the quota is reached) goes to ``w.messages``.
        """
        self._send_command("record")

    def stop_recording(self) -> None:
        """Stop the server-side recording; ``w.recording`` then says ``stopped`` with its length."""
        self._send_command("stop_recording")

    def _send_command(self, name: str, **arguments: Any) -> None:
        self._command = {"id": next(self._ids), "name": name, **arguments}

    # Waiting for the view ------------------------------------------------------------------
    async def wait_for(self, *statuses: str, timeout: float = 120.0) -> str:
        """Wait until ``status`` is one of ``statuses``; answers it. ``await w.wait_for("streaming")``.

        The view's reports arrive while this waits. Raises ``NoViewError`` at once when no view
        can report (none shown, or a headless run), RuntimeError when the view reports an error,
        TimeoutError after ``timeout`` seconds.
        """
        await waiting.wait_until(
            self, lambda w: w.status in statuses, timeout, "status " + " or ".join(map(repr, statuses))
        )
        return self.status

    async def wait_until(self, condition: Callable[[ScopeWidget], bool], timeout: float = 120.0) -> None:
        """Wait until ``condition(w)`` holds, e.g. ``await w.wait_until(lambda w: w.chunk >= 3)``.

        Raises as :meth:`wait_for` does.
        """
        await waiting.wait_until(self, condition, timeout, "the condition")


def initial_state() -> dict[str, Any]:
    """A new ScopeWidget's synced state, as the front end receives it (the ``/scope/`` page's model).

    Only ScopeWidget's own traitlets: those of its anywidget and ipywidgets base classes (layout,
    the module's code) mean nothing outside a notebook.
    """
    own = set(ScopeWidget.class_trait_names(sync=True)) - set(anywidget.AnyWidget.class_trait_names(sync=True))
    widget = ScopeWidget()
    try:
        state = widget.get_state()
    finally:
        widget.close()
    return {name: state[name] for name in sorted(own)}
