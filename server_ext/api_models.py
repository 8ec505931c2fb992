"""Request and response bodies of the Scope REST API.

These models validate requests and generate the OpenAPI document served at
``/openapi.json``; pipeline-specific load and stream parameters live with their pipelines.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from scope.params import StreamParameters
from scope.recording.timeline import Timeline
from scope.streaming.session_stats import SessionStats, Transport


def examples(*bodies: dict[str, Any]) -> dict[str, Any]:
    """``json_schema_extra`` giving a request model its examples; the first one is what ``/docs``
    fills in for "Try it out", so it must succeed as it is on a freshly started server (after
    the example load, for the WebRTC bodies)."""
    return {"examples": list(bodies)}


#: A browser-like offer: sendrecv VP8 video and the parameters data channel, ICE candidates to be
#: trickled. Its credentials and fingerprint are placeholders: the server answers it, and the
#: session ends at the connect timeout unless a real peer stands behind it.
EXAMPLE_OFFER_SDP = "\r\n".join(
    [
        "v=0",
        "o=- 0 0 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=msid-semantic:WMS *",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 0.0.0.0",
        "a=sendrecv",
        "a=mid:0",
        "a=rtcp-mux",
        "a=rtpmap:96 VP8/90000",
        "a=ice-ufrag:exam",
        "a=ice-pwd:exampleexampleexample0",
        "a=fingerprint:sha-256 " + ":".join(["0A"] * 32),
        "a=setup:actpass",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=mid:1",
        "a=sctp-port:5000",
        "a=ice-ufrag:exam",
        "a=ice-pwd:exampleexampleexample0",
        "a=fingerprint:sha-256 " + ":".join(["0A"] * 32),
        "a=setup:actpass",
        "",
    ]
)


class ErrorResponse(BaseModel):
    detail: str | list[dict[str, Any]] = Field(description="What went wrong; validation errors list each field.")


class MessageResponse(BaseModel):
    message: str


class HealthResponse(BaseModel):
    status: Literal["healthy"]
    timestamp: str = Field(description="Server local time, ISO 8601.")


class HardwareInfo(BaseModel):
    vram_gb: float | None = Field(description="Total memory of CUDA device 0 in GiB; null without CUDA.")
    spout_available: bool = Field(description="True only on Windows.")
    device_name: str = Field(description="Name of the compute device (GPU name, or 'cpu').")
    cuda_available: bool
    ram_gb: float = Field(description="Total system memory in GiB.")


class LoadRequest(BaseModel):
    """Load a pipeline. ``pipeline_ids`` (a chain) wins over ``pipeline_id``."""

    # passthrough needs no weights, so the example loads on any server.
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra=examples({"pipeline_id": "passthrough", "load_params": {"height": 512, "width": 512}}),
    )

    pipeline_id: str | None = Field(None, description="Pipeline to load (the Quick Start form).")
    pipeline_ids: list[str] | None = Field(
        None, description="Pipelines to load as a chain; only one id is supported for now."
    )
    load_params: dict[str, Any] | None = Field(
        None, description="Load parameters, validated against the pipeline's own model."
    )

    @property
    def target_id(self) -> str:
        return self.pipeline_ids[0] if self.pipeline_ids else self.pipeline_id  # type: ignore[return-value]


class UnloadRequest(BaseModel):
    """Which pipeline to unload; an empty body unloads the current one."""

    # The pipeline the load example loads, as it loaded it.
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra=examples({"pipeline_id": "passthrough", "load_params": {"height": 512, "width": 512}}),
    )

    pipeline_id: str | None = Field(None, description="A loaded pipeline of the pool (not necessarily the current one).")
    load_params: dict[str, Any] | None = Field(
        None, description="Its load parameters, as it was loaded with (defaults filled in); omitted: the defaults."
    )


class PoolMemory(BaseModel):
    held_bytes: int = Field(
        description="What the pool counts for it: its weights, its shared caches at full size, and one "
        "stream's caches per session (one at least)."
    )
    estimated_weights_bytes: int = Field(description="Its weights as estimated before the load, from its files.")
    measured_weights_bytes: int | None = Field(description="Its weights as the load measured them (null while loading).")
    cache_bytes: int = Field(description="The caches its streams share, at their full size (prompt embeddings).")
    stream_bytes: int = Field(description="One stream's caches: as measured once a stream has run, else as estimated.")
    estimated_stream_bytes: int = Field(description="One stream's caches as estimated from the pipeline's shapes.")
    measured_stream_bytes: int | None = Field(description="The largest stream of it measured so far (null before).")


class PooledPipeline(BaseModel):
    pipeline_id: str
    load_params: dict[str, Any]
    status: Literal["loading", "loaded", "error"] = Field(
        description="'error': a failed load, listed (holding nothing) until it is loaded again or "
        "dismissed by an unload naming it."
    )
    error: str | None = Field(None, description="Why the load failed.")
    current: bool = Field(description="The pipeline the top-level fields describe (pipeline/load's last).")
    sessions: list[str] = Field(description="Ids of the sessions streaming from it.")
    unload_when_idle: bool = Field(description="An unload was asked for while sessions used it: it unloads when the last ends.")
    synthetic: bool
    loaded_lora_adapters: list[dict[str, Any]] | None = None
    warnings: list[str] = Field(default_factory=list, description="What its load advises.")
    memory: PoolMemory
    worker: str | None = Field(None, description="The id of the worker (listed under workers) that holds it.")


class WorkerInfo(BaseModel):
    """One worker: a device with its own pool, memory budget and generation thread."""

    id: str = Field(description="'local-N' for a device of the server's machine, 'ray-N' for a Ray actor.")
    kind: Literal["local", "ray"]
    device: str = Field(description="The device it computes on, as torch names it (cuda:1, cpu).")
    state: Literal["ready", "lost"] = Field(description="'lost': its actor or process is gone; its sessions ended.")
    error: str | None = Field(None, description="Why it was lost.")
    sessions: int = Field(description="Sessions and renders bound to its pipelines.")
    max_sessions: int | None = Field(None, description="Its session limit (max_sessions_per_worker), if any.")
    pipelines: int = Field(description="Pipelines loading or loaded on it.")
    held_bytes: int = Field(description="What its pipelines hold, or will once loaded.")
    memory_budget_bytes: int = Field(description="What its pool may hold on its device (0 once lost).")
    torch_threads: int | None = Field(None, description="Torch threads a local worker computes with (null: torch's default).")
    node_ip: str | None = Field(None, description="A Ray worker's node.")
    pid: int | None = Field(None, description="A Ray worker's process on its node.")
    gpu_ids: list[str] | None = Field(None, description="The GPUs Ray gave a Ray worker.")


class PipelineStatusResponse(BaseModel):
    status: Literal["not_loaded", "loading", "loaded", "error"]
    pipeline_id: str | None
    load_params: dict[str, Any] | None
    loaded_lora_adapters: list[dict[str, Any]] | None
    error: str | None
    synthetic: bool = Field(False, description="True when the loaded weights are synthetic.")
    warnings: list[str] = Field(
        default_factory=list, description="What the load advises, e.g. fp8 quantization on a GPU with too little memory."
    )
    pipelines: list[PooledPipeline] = Field(
        default_factory=list, description="Every pipeline of the pool, loading or loaded, the current one among them."
    )
    memory_budget_bytes: int = Field(
        0, description="What the current pipeline's worker (else the first) may hold on its device (the setting, or the free memory less a margin)."
    )
    workers: list[WorkerInfo] = Field(default_factory=list, description="The workers pipelines load on, one per device.")


class PipelineSchemasResponse(BaseModel):
    pipelines: dict[str, dict[str, Any]] = Field(description="Per pipeline id: metadata, config_schema, mode_defaults, load_params_schema, parameters_schema.")


class DownloadProgress(BaseModel):
    is_downloading: bool
    percentage: float = Field(description="Percent of the whole pipeline's bytes.")
    bytes_done: int
    bytes_total: int
    current_artifact: str | None
    error: str | None


class ModelsStatusResponse(BaseModel):
    downloaded: bool
    progress: DownloadProgress | None
    synthetic: bool = Field(False, description="The files on disk are synthetic (tiny, random) weights.")


class DownloadRequest(BaseModel):
    # Synthetic weights take seconds and never replace a real file; a real download takes GBs.
    model_config = ConfigDict(extra="ignore", json_schema_extra=examples({"pipeline_id": "longlive", "synthetic": True}))

    pipeline_id: str = Field(min_length=1, description="Pipeline whose files to download.")
    synthetic: bool = Field(
        False, description="Write tiny random weights in the real file layouts instead of downloading."
    )


class IceServer(BaseModel):
    urls: str | list[str]
    username: str | None = None
    credential: str | None = None


class IceServersResponse(BaseModel):
    iceServers: list[IceServer]


class InitialParameters(StreamParameters):
    """Stream parameters of an offer; unknown keys are ignored (and named in a warning)."""

    model_config = ConfigDict(extra="ignore")


class OfferRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra=examples({"sdp": EXAMPLE_OFFER_SDP, "type": "offer", "initialParameters": {"input_mode": "video"}}),
    )

    sdp: str = Field(description="The client's SDP offer.")
    type: str = Field(description="Must be 'offer'.")
    initialParameters: InitialParameters | None = Field(
        None, description="Stream parameters applied from the first chunk (validated against the session's pipeline)."
    )
    pipeline_id: str | None = Field(
        None,
        description="The pipeline this session streams from, loaded into the pool if needed (the session "
        "waits in state 'loading'); omitted: the current pipeline. The session keeps it until it ends.",
    )
    load_params: dict[str, Any] | None = Field(None, description="That pipeline's load parameters (with pipeline_id).")


class OfferResponse(BaseModel):
    sdp: str
    type: Literal["answer"]
    sessionId: str


class IceCandidate(BaseModel):
    candidate: str = Field(description="A browser candidate line (the 'candidate:' prefix is optional); empty means end of candidates.")
    sdpMid: str | None = None
    sdpMLineIndex: int | None = None


class IceCandidatesRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra=examples({"candidates": [{"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}]}))

    candidates: list[IceCandidate]


class SessionInfo(BaseModel):
    id: str
    input_mode: str
    pipeline_id: str | None
    load_params: dict[str, Any] | None = Field(None, description="The load parameters of the pipeline the session streams from.")
    transport: Transport = Field("webrtc", description="What carries the session: webrtc, websocket or headless.")
    worker: str | None = Field(None, description="The id of the worker its pipeline runs on (see pipeline/status workers).")
    connection_state: str
    parameters: dict[str, Any]
    stats: SessionStats
    lora_scales: list[dict[str, Any]] = Field(
        default_factory=list,
        description="This session's scales of the LoRAs kept apart from the weights (runtime_peft): "
        "[{path, scale}], as its last chunk applied them.",
    )


class SessionsResponse(BaseModel):
    sessions: list[SessionInfo]


class Asset(BaseModel):
    name: str = Field(description="File name without extension.")
    path: str = Field(description="Absolute path on the server.")
    size_mb: float
    folder: str | None = Field(description="Sub-folder relative to the assets directory, or null.")
    type: Literal["image", "video"]
    created_at: float = Field(description="File creation (change) time, Unix seconds.")


class AssetsResponse(BaseModel):
    assets: list[Asset]


class LoraFile(BaseModel):
    name: str
    path: str
    size_mb: float
    folder: str | None


class LoraListResponse(BaseModel):
    lora_files: list[LoraFile]


class LoraTargets(BaseModel):
    count: int = Field(description="How many linear modules the LoRA changes.")
    kinds: list[str] = Field(description="Which linears of a block (self_attn.q, ffn.0, ...), or whole names outside the blocks.")
    examples: list[str] = Field(description="The first few module names (original Wan names).")


class LoraEntry(LoraFile):
    """A LoRA file as ``GET /api/v1/loras`` lists it: the spec's fields plus what is in it."""

    size_bytes: int
    sha256: str = Field(description="Hex sha256 of the file (computed once per path, mtime and size).")
    format: str | None = Field(
        description="Key convention: peft, dotted, kohya, diffusers (several joined with '+'); null with error."
    )
    rank: int | None = Field(description="The largest rank of its modules; null with error.")
    targets: LoraTargets | None = Field(description="The modules it changes; null with error.")
    error: str | None = Field(description="Why the file is not a Wan LoRA (its first bad key); null for a LoRA.")


class LoraEntriesResponse(BaseModel):
    lora_files: list[LoraEntry]


#: Synthetic LoRA formats ``POST /api/v1/loras`` can write (``scope.models.synthetic.lora``).
SyntheticLoraFormat = Literal["peft", "peft_alpha", "peft_base_model", "dotted", "kohya", "diffusers"]


class LoraInstallRequest(BaseModel):
    """Install a LoRA into the LoRA directory: from ``url``, or a synthetic one (``synthetic``)."""

    # A synthetic file needs no network, so the example works on any server.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=examples(
            {"synthetic": "peft"},
            {"url": "https://huggingface.co/<user>/<repo>/resolve/main/<file>.safetensors"},
        ),
    )

    url: str | None = Field(
        None,
        description="An http(s) URL of the file, on a host in ScopeApp.lora_url_hosts (redirects are followed).",
    )
    filename: str | None = Field(
        None,
        description="Name to store it under; default: the URL's last path segment, else the answer's "
        "Content-Disposition, else 'synthetic-<format>.safetensors'.",
    )
    overwrite: bool = Field(False, description="Replace a file of that name (otherwise 409).")
    synthetic: SyntheticLoraFormat | None = Field(
        None,
        description="Write a tiny synthetic LoRA in this key convention, for the synthetic generator "
        "(instead of url).",
    )


class LoraInstallResponse(BaseModel):
    message: str
    file: LoraEntry


class LoraDeleteResponse(BaseModel):
    success: bool
    message: str


class RecordingInfo(BaseModel):
    """A server-side recording of a session (running or finished)."""

    session_id: str
    pipeline_id: str
    state: Literal["recording", "stopped"]
    started_at: str = Field(description="UTC, ISO 8601.")
    stopped_at: str | None = None
    stop_reason: Literal["requested", "session_ended", "max_duration", "quota", "server_stopped", "failed"] | None = None
    first_chunk: int = Field(description="The stream's chunk the recording starts with (its timeline holds every update since chunk 0).")
    chunks: int = Field(description="Chunks written.")
    frames: int = Field(description="Frames recorded.")
    fps: float = Field(description="The frame rate the MP4 plays at (the pipeline's).")
    duration_s: float
    video_mode: bool = Field(description="The input is stored too (input.mkv, lossless).")
    error: str | None = Field(None, description="Why writing failed, if it did.")
    bytes: int = Field(description="What the recording's files hold.")


class RecordingsResponse(BaseModel):
    recordings: list[RecordingInfo]


#: A tiny hand-written timeline: synthetic weights render it in seconds on a CPU.
EXAMPLE_TIMELINE = {
    "pipeline_id": "longlive",
    "load_params": {"height": 64, "width": 96, "seed": 7},
    "initial_parameters": {"prompts": "a red fox in the snow"},
    "events": [{"chunk": 2, "parameters": {"prompts": "a lighthouse at dusk"}}],
    "length_chunks": 4,
}


class RenderRequest(BaseModel):
    """What to render: a timeline, or the timeline of a server-side recording."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=examples({"timeline": EXAMPLE_TIMELINE}))

    timeline: Timeline | None = Field(
        None, description="A timeline document (see daydream-scope render --schema); a video-mode one's input.path is in the assets directory."
    )
    recording: str | None = Field(None, description="The session id of a recording whose timeline (and stored input) to render.")


class RenderJobAccepted(BaseModel):
    job_id: str
    status: Literal["queued"]
    url: str = Field(description="Where to poll the job.")


class RenderProgress(BaseModel):
    chunks_done: int
    chunks_total: int


class RenderSummary(BaseModel):
    chunks: int
    frames: int
    compared: int = Field(description="Chunks with a recorded hash to compare against.")
    mismatched_chunks: list[int] = Field(description="Chunks whose hash differs from the recording's.")
    reproduced: bool = Field(description="Every recorded chunk was generated again bit for bit.")
    seconds: float
    notes: list[str] = Field(description="Why the render may not reproduce the recording (another device, dtype, thread count).")
    hashes: dict[str, str] = Field(description="Per chunk index: the sha256 of its generated frames.")


class RenderJobResult(BaseModel):
    url_video: str
    url_provenance: str
    render: RenderSummary


class RenderJobStatus(BaseModel):
    job_id: str
    status: Literal["queued", "loading", "rendering", "done", "failed", "cancelled"]
    progress: RenderProgress
    error: str | None = Field(description="Why the job failed.")
    result: RenderJobResult | None = Field(description="Once done: the files and the chunks' hashes.")


class ProvenanceDocument(BaseModel):
    """What produced a render's frames (scope-provenance/1)."""

    model_config = ConfigDict(extra="allow")

    format: str
    pipeline_id: str
    load_params: dict[str, Any]
    weights: list[dict[str, Any]] = Field(description="Every weight file read: path, bytes, sha256, synthetic.")
    timings: dict[str, float]


# Streaming without WebRTC ---------------------------------------------------------------------

OutputEncoding = Literal["h264", "jpeg"]


class TransportsResponse(BaseModel):
    transports: list[Literal["webrtc", "websocket", "headless"]] = Field(description="The ways this server streams.")
    encodings: list[OutputEncoding] = Field(
        description="Output encodings the WebSocket transport sends, best first (h264 where PyAV's FFmpeg has libx264)."
    )
    webrtc_fallback_timeout: float = Field(
        description="Seconds a client with transport 'auto' waits for WebRTC to connect before it streams over the WebSocket."
    )


class WebSocketOfferRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra=examples(
            {"initialParameters": {"input_mode": "video"}, "sends_video": True, "encodings": ["h264", "jpeg"]}
        ),
    )

    initialParameters: InitialParameters | None = Field(
        None, description="Stream parameters applied from the first chunk (validated against the session's pipeline)."
    )
    pipeline_id: str | None = Field(
        None, description="The pipeline this session streams from, loaded into the pool if needed; omitted: the current pipeline."
    )
    load_params: dict[str, Any] | None = Field(None, description="That pipeline's load parameters (with pipeline_id).")
    sends_video: bool = Field(
        False,
        description="Whether the client will send input frames. A session that sends none and names no input_mode "
        "takes text mode where the pipeline has one.",
    )
    encodings: list[str] = Field(
        default_factory=lambda: ["jpeg"],
        min_length=1,
        description="Output encodings the client decodes, preferred first: 'h264' (Annex B access units) or 'jpeg'.",
    )


class WebSocketOfferResponse(BaseModel):
    sessionId: str
    encoding: OutputEncoding = Field(description="The output encoding the session sends.")
    url: str = Field(description="The session's socket, relative to the server's base URL: api/v1/websocket/{sessionId}.")


class HeadlessStartRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=examples(
            {
                "pipeline_id": "longlive",
                "load_params": {"height": 64, "width": 96, "seed": 7},
                "prompts": "a red fox in the snow",
                "parameters": {"denoising_step_list": [1000, 750, 500, 250]},
            }
        ),
    )

    pipeline_id: str | None = Field(
        None, description="The pipeline the session runs, loaded into the pool if needed; omitted: the current pipeline."
    )
    load_params: dict[str, Any] | None = Field(None, description="That pipeline's load parameters (with pipeline_id).")
    input_mode: str | None = Field(None, description="'text' (the only mode without an input video), or omitted.")
    prompts: Any = Field(None, description="The prompts: a shortcut for parameters.prompts.")
    parameters: dict[str, Any] | None = Field(
        None, description="Initial stream parameters, validated like an offer's initialParameters."
    )


class HeadlessStartResponse(BaseModel):
    status: Literal["ok"]
    session_id: str
    pipeline_id: str
    load_params: dict[str, Any]
    input_mode: str


class HeadlessStopResponse(BaseModel):
    status: Literal["ok"]
    message: str


class HeadlessParametersResponse(BaseModel):
    parameters: dict[str, Any] = Field(description="The session's parameters as its next chunk takes them.")


class HeadlessParametersUpdate(StreamParameters):
    """A parameters update for the headless session: a data-channel message."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=examples({"prompts": [{"text": "a lighthouse at dusk", "weight": 1.0}]}))


class HeadlessUpdateResponse(BaseModel):
    status: Literal["ok"]
    applied_parameters: dict[str, Any]
    warnings: list[dict[str, Any]] = Field(
        default_factory=list, description="parameters_warning messages: unknown or unused keys, ignored."
    )


class SessionMetrics(SessionStats):
    headless: bool = Field(False, description="True for the headless session.")
    events: list[dict[str, Any]] | None = Field(
        None, description="The headless session's recent messages other than stats (pipeline events, warnings, stream_stopped)."
    )


class MetricsResponse(BaseModel):
    sessions: dict[str, SessionMetrics] = Field(description="Every session's stats, by session id.")
    gpu: dict[str, float] = Field(description="vram_allocated_mb, vram_reserved_mb, vram_total_mb on CUDA; empty otherwise.")
    ended_headless: dict[str, Any] | None = Field(
        None, description="How the last headless session ended (session_id, events), until the next one starts."
    )
