"""Every setting of the Scope server, in one place.

Each setting is a traitlet (so ``jupyter_server_config.py`` and the command line can set
it as ``ScopeApp.<name>``) and may also be set by an environment variable named in its
``env`` metadata. Precedence: explicit config > environment > default. ``docs/configuration.md``
is generated from this module (see ``settings_table``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, HasTraits, Integer, List, Unicode
from traitlets.config import Configurable

DEFAULT_HOME = Path("~/.daydream-scope")
#: Where weights live unless ``models_dir`` (or its environment variable) says otherwise.
DEFAULT_MODELS_DIR = DEFAULT_HOME / "models"
DEFAULT_LOGS_DIR = DEFAULT_HOME / "logs"
DEFAULT_ASSETS_QUOTA_GIB = 2
DEFAULT_LORA_MAX_FILE_GIB = 2
DEFAULT_LORA_QUOTA_GIB = 64
DEFAULT_RECORDINGS_QUOTA_GIB = 20
DEFAULT_MAX_RECORDING_S = 3600.0


class ScopeSettings(Configurable):
    """Settings shared by the server extension and the standalone command."""

    models_dir = Unicode(
        "",
        help="Where pipeline weights live (one folder per Hugging Face repo). "
        f"Default: {DEFAULT_MODELS_DIR}.",
    ).tag(config=True, env="DAYDREAM_SCOPE_MODELS_DIR")

    assets_dir = Unicode(
        "",
        help="Uploaded images and videos (VACE references, video inputs). "
        "Default: the 'assets' folder beside the models directory.",
    ).tag(config=True, env="DAYDREAM_SCOPE_ASSETS_DIR")

    assets_quota_bytes = Integer(
        DEFAULT_ASSETS_QUOTA_GIB * 1024**3,
        min=0,
        help="Most bytes the assets directory may hold, counting uploads in progress. An upload "
        f"that would exceed it gets 507 and leaves nothing behind. Default: {DEFAULT_ASSETS_QUOTA_GIB} GiB.",
    ).tag(config=True, env="DAYDREAM_SCOPE_ASSETS_QUOTA_BYTES")

    recordings_dir = Unicode(
        "",
        help="Server-side recordings (one folder per session: the MP4, the lossless input in video "
        "mode, the timeline and the provenance) and server renders. Default: the 'recordings' "
        "folder beside the models directory.",
    ).tag(config=True, env="DAYDREAM_SCOPE_RECORDINGS_DIR")

    recordings_quota_bytes = Integer(
        DEFAULT_RECORDINGS_QUOTA_GIB * 1024**3,
        min=0,
        help="Most bytes the recordings directory may hold. A recording that reaches it stops "
        "(the session is told why); a start that cannot fit gets 507. "
        f"Default: {DEFAULT_RECORDINGS_QUOTA_GIB} GiB.",
    ).tag(config=True, env="DAYDREAM_SCOPE_RECORDINGS_QUOTA_BYTES")

    max_recording_seconds = Float(
        DEFAULT_MAX_RECORDING_S,
        min=1.0,
        help="Longest recording, in seconds of video; one that reaches it stops (the session is "
        f"told why). Default: {DEFAULT_MAX_RECORDING_S:g} s.",
    ).tag(config=True, env="DAYDREAM_SCOPE_MAX_RECORDING_SECONDS")

    lora_dir = Unicode(
        "", help="LoRA weight files. Default: the 'lora' folder inside the models directory."
    ).tag(config=True, env="DAYDREAM_SCOPE_LORA_DIR")

    lora_max_file_bytes = Integer(
        DEFAULT_LORA_MAX_FILE_GIB * 1024**3,
        min=1,
        help="Largest LoRA file an upload or a URL install may store; a larger one gets 413 and "
        f"leaves nothing behind. Default: {DEFAULT_LORA_MAX_FILE_GIB} GiB.",
    ).tag(config=True, env="DAYDREAM_SCOPE_LORA_MAX_FILE_BYTES")

    lora_quota_bytes = Integer(
        DEFAULT_LORA_QUOTA_GIB * 1024**3,
        min=0,
        help="Most bytes the LoRA directory may hold, counting uploads and installs in progress. One "
        f"that would exceed it gets 507 and leaves nothing behind. Default: {DEFAULT_LORA_QUOTA_GIB} GiB.",
    ).tag(config=True, env="DAYDREAM_SCOPE_LORA_QUOTA_BYTES")

    lora_url_hosts = List(
        Unicode(),
        default_value=["huggingface.co", "hf.co", "civitai.com"],
        help="Hosts (and their subdomains) POST /api/v1/loras may install a LoRA from by URL; "
        "'*' allows any host. Redirects are followed to any host.",
    ).tag(config=True, env="DAYDREAM_SCOPE_LORA_URL_HOSTS")

    logs_dir = Unicode(
        "", help=f"Server log files. Default: {DEFAULT_LOGS_DIR}."
    ).tag(config=True, env="DAYDREAM_SCOPE_LOGS_DIR")

    pipeline = Unicode(
        "", help="Pipeline id to load at start-up (pre-warm). Empty: none."
    ).tag(config=True, env="PIPELINE")

    open_api = Bool(
        False,
        help="Serve the Scope endpoints without Jupyter auth, to local pages and the origins in "
        "allowed_origins, as the standalone daydream-scope command does. Jupyter's own endpoints "
        "keep their auth.",
    ).tag(config=True, env="DAYDREAM_SCOPE_OPEN_API")

    allowed_origins = List(
        Unicode(),
        default_value=[],
        help="Web origins (e.g. https://notebooks.example:8443) that may call the open Scope API "
        "besides the default ones (the server's own, loopback, VS Code webviews, and 'null' where "
        "allowed). '*' admits every origin and prints a warning. daydream-scope: --allow-origin.",
    ).tag(config=True, env="DAYDREAM_SCOPE_ALLOWED_ORIGINS")

    allow_null_origin = Bool(
        True,
        help="Admit the 'null' origin (pages opened from a file, but also sandboxed iframes of any "
        "site) on the endpoints a file page needs. False refuses it everywhere.",
    ).tag(config=True, env="DAYDREAM_SCOPE_ALLOW_NULL_ORIGIN")

    pipeline_memory_budget_bytes = Integer(
        0,
        min=0,
        help="Most bytes the loaded pipelines may hold on a device, together. 0: the device's free memory "
        "(the GPU's, or the host's available RAM) plus what the pipelines hold, less 20%. A load that does "
        "not fit first unloads the least recently used pipelines no session uses, and gets 409 naming "
        "what holds the memory when that is not enough.",
    ).tag(config=True, env="DAYDREAM_SCOPE_PIPELINE_MEMORY_BUDGET_BYTES")

    workers = Unicode(
        "auto",
        help="The devices pipelines run on, one worker each with its own pool, memory budget and "
        "generation thread: 'auto' is every CUDA device (the CPU when there is none); or a "
        "comma-separated list such as 'cuda:0,cuda:1' ('cpu,cpu' is two CPU workers). Ignored "
        "with ray_address, where the workers are Ray actors.",
    ).tag(config=True, env="DAYDREAM_SCOPE_WORKERS")

    worker_threads = Integer(
        0,
        min=0,
        help="Torch threads each worker computes with (intra-op); 0 leaves torch's default. Set it "
        "when several CPU workers share one machine's cores.",
    ).tag(config=True, env="DAYDREAM_SCOPE_WORKER_THREADS")

    max_sessions_per_worker = Integer(
        0,
        min=0,
        help="Most sessions (and renders) one worker runs at once; 0: no limit but max_sessions. "
        "When every worker holding a pipeline is full, the next session of it loads it on another worker.",
    ).tag(config=True, env="DAYDREAM_SCOPE_MAX_SESSIONS_PER_WORKER")

    ray_address = Unicode(
        "",
        help="A Ray cluster to run the workers on: 'auto' (the cluster this machine belongs to), "
        "'HOST:PORT' of its head, or 'ray://HOST:10001'. Empty: workers in this process. Needs "
        "the 'ray' extra; the server itself (REST, signalling, media) stays on this machine.",
    ).tag(config=True, env="DAYDREAM_SCOPE_RAY_ADDRESS")

    ray_resource = Unicode(
        "GPU",
        help="The Ray resource each worker actor takes one of: 'GPU' (one GPU each), or a custom "
        "resource name the cluster's nodes declare (such workers compute on the CPU unless the "
        "node has a GPU).",
    ).tag(config=True, env="DAYDREAM_SCOPE_RAY_RESOURCE")

    ray_workers = Integer(
        0,
        min=0,
        help="How many worker actors to start on the Ray cluster; 0: one per unit of ray_resource the cluster has.",
    ).tag(config=True, env="DAYDREAM_SCOPE_RAY_WORKERS")

    max_sessions = Integer(
        4,
        help="How many WebRTC sessions may stream (have a connected peer) at once; further offers "
        "get 503, and a peer that connects while this many stream is closed.",
    ).tag(config=True, env="DAYDREAM_SCOPE_MAX_SESSIONS")

    max_pending_sessions = Integer(
        4,
        help="How many answered offers may wait for their peer to connect at once; further offers "
        "get 503. They do not count against max_sessions, and connect_timeout reaps them.",
    ).tag(config=True, env="DAYDREAM_SCOPE_MAX_PENDING_SESSIONS")

    max_repeated_chunk_failures = Integer(
        3,
        help="Consecutive chunk failures with the same error after which a session's stream ends "
        "(stream_stopped with the error); 0 never ends it.",
    ).tag(config=True, env="DAYDREAM_SCOPE_MAX_REPEATED_CHUNK_FAILURES")

    disconnect_timeout = Float(
        10.0,
        help="Seconds without any packet from a session's peer (RTCP, data channel, media) or in "
        "the 'disconnected' state before the session is closed: a killed client's slot is free "
        "after about this long.",
    ).tag(config=True, env="DAYDREAM_SCOPE_DISCONNECT_TIMEOUT")

    connect_timeout = Float(
        10.0,
        help="Seconds a new session's peer has to connect; a peer that never does is closed.",
    ).tag(config=True, env="DAYDREAM_SCOPE_CONNECT_TIMEOUT")

    webrtc_fallback_timeout = Float(
        5.0,
        help="Seconds the widget, the /scope/ page and scope.client (transport 'auto') wait for a "
        "WebRTC connection before streaming over the WebSocket instead (through SSH tunnels and "
        "HTTP proxies, which carry no UDP). Clients read it from /api/v1/transports.",
    ).tag(config=True, env="DAYDREAM_SCOPE_WEBRTC_FALLBACK_TIMEOUT")

    server_ice_servers = List(
        Unicode(),
        default_value=[],
        help="ICE server URLs (stun:/turn:) for the server's own peer connections. Default: "
        "none, so host candidates only and an unreachable STUN host never delays an answer. "
        "TURN credentials configured through HF_TOKEN or Twilio are added automatically.",
    ).tag(config=True, env="DAYDREAM_SCOPE_SERVER_ICE_SERVERS")

    ice_host_addresses = List(
        Unicode(),
        default_value=[],
        help="Local IP addresses the server's peer connections gather host candidates on "
        "(loopback allowed). Default: every interface except loopback. When every address is "
        "loopback, remote candidates that are not loopback are ignored, so ICE stays on the machine.",
    ).tag(config=True, env="DAYDREAM_SCOPE_ICE_HOST_ADDRESSES")

    cloudflare_turn_url = Unicode(
        "https://turn.fastrtc.org/credentials?ttl=600",
        help="Endpoint that turns HF_TOKEN into Cloudflare TURN credentials.",
    ).tag(config=True, env="DAYDREAM_SCOPE_CLOUDFLARE_TURN_URL")

    twilio_base_url = Unicode(
        "https://api.twilio.com",
        help="Base URL of the Twilio API used for TURN credentials when HF_TOKEN is unset.",
    ).tag(config=True, env="DAYDREAM_SCOPE_TWILIO_BASE_URL")

    stun_fallback = Unicode(
        "stun:stun.l.google.com:19302", help="STUN server advertised to clients when no TURN is configured."
    ).tag(config=True, env="DAYDREAM_SCOPE_STUN_FALLBACK")

    synthetic = Bool(
        False,
        help="When a pipeline loads and its weight files are missing, write synthetic ones (tiny, "
        "random, in the real layouts) first. For trying Scope without a GPU or the real weights; "
        "the stream then reports synthetic: true. Never done unless asked for.",
    ).tag(config=True, env="DAYDREAM_SCOPE_SYNTHETIC")

    verbose_logging = Bool(
        False, help="Write Scope's DEBUG lines (to the server log, and to daydream-scope's terminal) and "
        "the WebRTC libraries' (aiortc, aioice) INFO lines (to the server log) too."
    ).tag(config=True, env="VERBOSE_LOGGING")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        apply_environment(self)

    # Resolved directories -------------------------------------------------------------

    @property
    def models_path(self) -> Path:
        return Path(self.models_dir or DEFAULT_MODELS_DIR).expanduser().resolve()

    @property
    def assets_path(self) -> Path:
        if self.assets_dir:
            return Path(self.assets_dir).expanduser().resolve()
        return (self.models_path.parent / "assets").resolve()

    @property
    def recordings_path(self) -> Path:
        if self.recordings_dir:
            return Path(self.recordings_dir).expanduser().resolve()
        return (self.models_path.parent / "recordings").resolve()

    @property
    def lora_path(self) -> Path:
        if self.lora_dir:
            return Path(self.lora_dir).expanduser().resolve()
        return (self.models_path / "lora").resolve()

    @property
    def logs_path(self) -> Path:
        return Path(self.logs_dir or DEFAULT_LOGS_DIR).expanduser().resolve()

    def ensure_dirs(self) -> None:
        for path in (self.models_path, self.assets_path, self.lora_path, self.logs_path, self.recordings_path):
            path.mkdir(parents=True, exist_ok=True)


def setting_default(name: str) -> Any:
    """The default of setting ``name``, for code that takes it as an argument: defined only here."""
    return ScopeSettings.class_traits()[name].default()


def apply_environment(obj: HasTraits) -> None:
    """Fill traits from their environment variables unless config set them explicitly."""
    configured: set[str] = set()
    config = getattr(obj, "config", None)
    if config is not None:
        for cls in type(obj).__mro__:
            section = config.get(cls.__name__) if cls.__name__ in config else None
            if section:
                configured.update(section.keys())
    for name, trait in obj.traits(env=lambda e: bool(e)).items():
        raw = os.environ.get(trait.metadata["env"])
        if raw is None or raw == "" or name in configured:
            continue
        if isinstance(trait, Bool):
            value = raw.strip().lower() in {"1", "true", "yes", "on"}
        elif isinstance(trait, List):
            value = [part.strip() for part in raw.split(",") if part.strip()]
        else:
            value = trait.from_string(raw)
        setattr(obj, name, value)


CONFIG_DOC_BEGIN = "<!-- settings-table: generated from scope/config.py by `python -m scope.config` -->"
CONFIG_DOC_END = "<!-- end settings-table -->"


def settings_table() -> str:
    """Markdown table of every setting: the source of docs/configuration.md."""
    rows = ["| Setting | Environment variable | Default | Description |", "|---|---|---|---|"]
    for name, trait in sorted(ScopeSettings.class_traits(config=True).items()):
        env = trait.metadata.get("env", "")
        default_value = trait.default()  # containers' declared default_value is Undefined
        shown = "(empty)" if default_value in ("", []) else f"`{default_value!r}`"
        rows.append(f"| `ScopeApp.{name}` | `{env}` | {shown} | {trait.help} |")
    return "\n".join(rows)


def render_config_doc(existing: str) -> str:
    """``docs/configuration.md`` with its settings table regenerated in place."""
    head, _, rest = existing.partition(CONFIG_DOC_BEGIN)
    _, _, tail = rest.partition(CONFIG_DOC_END)
    return f"{head}{CONFIG_DOC_BEGIN}\n{settings_table()}\n{CONFIG_DOC_END}{tail}"


if __name__ == "__main__":
    doc = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    doc.write_text(render_config_doc(doc.read_text()))
    print(f"updated {doc}")
