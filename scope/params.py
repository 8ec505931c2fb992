"""Request and stream parameter models: the one source of truth for validation and schemas.

The same models validate HTTP bodies and data-channel messages, generate the JSON Schemas
served by ``/api/v1/pipelines/schemas`` and the OpenAPI document, and drive the widget's
controls.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from scope.paths import PathOutside, resolve_inside

InputMode = Literal["text", "video"]
InterpolationMethod = Literal["linear", "slerp"]

#: The largest seed a client may choose (a signed 64-bit integer); chunk seeds wrap mod 2**64.
MAX_SEED = 2**63 - 1

#: Validation-context keys naming the directories client paths must stay inside.
ASSETS_DIR, LORA_DIR = "assets_dir", "lora_dir"


def path_context(assets_dir: str | Path, lora_dir: str | Path) -> dict[str, Path]:
    """The validation context the server passes, so every client-named path is contained.

    Without it (the in-kernel API), paths are the user's own and any local path is allowed.
    """
    return {ASSETS_DIR: Path(assets_dir), LORA_DIR: Path(lora_dir)}


def _inside(context_key: str, label: str, *, must_exist: bool = False):
    """A validator keeping a path inside the context's ``context_key`` directory, when given
    (and, with ``must_exist``, naming a file there)."""

    def check(value: str, info: ValidationInfo) -> str:
        base = (info.context or {}).get(context_key)
        if base is None:
            return value
        try:
            resolved = resolve_inside(Path(base), value)
        except PathOutside:
            raise ValueError(f"'{value}' is outside the {label} directory: name a file inside it") from None
        except (OSError, ValueError):  # NUL bytes, over-long names
            raise ValueError(f"'{value[:120]}' is not a valid path") from None
        if must_exist and not resolved.is_file():
            raise ValueError(f"there is no {label} file '{value}' in the {label} directory")
        return value

    return AfterValidator(check)


#: A path to an image or video: inside the assets directory when validated by the server.
AssetPath = Annotated[str, _inside(ASSETS_DIR, "assets")]
#: A path to a LoRA file: inside the LoRA directory when validated by the server.
LoraPath = Annotated[str, _inside(LORA_DIR, "LoRA", must_exist=True)]


class PromptItem(BaseModel):
    """One weighted prompt; several are blended spatially."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="Prompt text.")
    weight: float = Field(1.0, ge=0, description="Relative weight; weights are normalised to sum to 1.")


def _coerce_prompts(value: Any) -> Any:
    """Accept a string, a list of strings, or a list of prompt objects."""
    if isinstance(value, str):
        return [{"text": value, "weight": 1.0}]
    if isinstance(value, list):
        return [{"text": item, "weight": 1.0} if isinstance(item, str) else item for item in value]
    return value


Prompts = list[PromptItem]


class Transition(BaseModel):
    """Temporal interpolation from the current conditioning to ``target_prompts``."""

    model_config = ConfigDict(extra="forbid")

    target_prompts: Prompts = Field(description="Prompts to move towards.")
    num_steps: int = Field(4, ge=0, le=1000, description="Number of chunks the transition spans; 0 switches at once.")
    temporal_interpolation_method: InterpolationMethod = Field(
        "linear", description="How embeddings are interpolated between chunks."
    )

    _coerce = field_validator("target_prompts", mode="before")(lambda cls, v: _coerce_prompts(v))


class LoraScale(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: LoraPath = Field(description="Path of a loaded LoRA file (absolute, or relative to the LoRA directory).")
    scale: float = Field(ge=-10, le=10, description="New adapter scale.")


class SpoutConfig(BaseModel):
    """Windows-only Spout I/O; accepted for compatibility and ignored elsewhere."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    name: str = "ScopeOut"


#: Schema keyword marking a parameter that acts on one chunk and is then dropped.
ONE_SHOT = "x-scope-one-shot"
#: Schema keyword marking a parameter the pipeline accepts (validates) but does not use.
UNUSED = "x-scope-unused"
_ONE_SHOT = {ONE_SHOT: True}

#: Parameters the session itself acts on, so every pipeline takes them. The ``spout_*`` ones
#: are documented as accepted and ignored off Windows.
SESSION_KEYS = frozenset({"input_mode", "paused", "reset_cache", "spout_sender", "spout_receiver", "recording"})
#: The session keys the session acts on itself, never handed to the stream.
SESSION_ONLY_KEYS = frozenset({"paused", "spout_sender", "spout_receiver", "recording"})


def _mark_unused(schema: dict[str, Any], model: type["StreamParameters"]) -> None:
    """Flag in the JSON Schema the parameters a pipeline's model accepts without using them."""
    for name in unused_parameters(model, schema.get("properties", {})):
        schema["properties"][name][UNUSED] = True


class StreamParameters(BaseModel):
    """Parameters of one streaming session.

    Every field is optional: a message carries only what changes, and fields it leaves out keep
    their current value. ``initialParameters`` of an offer and every data-channel message are
    validated by this model.

    A pipeline's own model derives from this one and sets ``takes``: every field is still
    validated (so a client's paths stay contained), and those it does not take are reported to
    the client as unused instead of being ignored silently.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_mark_unused)

    #: The parameters the pipeline acts on besides :data:`SESSION_KEYS`; None: all of them.
    takes: ClassVar[frozenset[str] | None] = None

    input_mode: InputMode | None = Field(None, description="'text' generates from prompts; 'video' consumes the client's track.")
    prompts: Prompts | None = Field(None, description="Weighted prompts, blended spatially. A string or list of strings is accepted too.")
    prompt_interpolation_method: InterpolationMethod | None = Field(None, description="Spatial blend of several prompts.")
    transition: Transition | None = Field(None, description="Move to new prompts over several chunks.")
    denoising_step_list: list[Annotated[int, Field(ge=0, le=1000)]] | None = Field(
        None, min_length=1, description="Descending timesteps of the few-step schedule."
    )
    noise_scale: float | None = Field(None, ge=0, le=1, description="Video mode: how much noise is added to the input latents.")
    noise_controller: bool | None = Field(None, description="Video mode: adjust noise automatically from motion.")
    manage_cache: bool | None = Field(None, description="Reset the KV cache automatically when conditioning changes.")
    reset_cache: bool | None = Field(
        None, description="One-shot: flush queued frames and reset caches on the next chunk.", json_schema_extra=_ONE_SHOT
    )
    kv_cache_attention_bias: float | None = Field(None, ge=0.01, le=1.0, description="Log-scale reliance on past frames.")
    lora_scales: list[LoraScale] | None = Field(None, description="One-shot runtime LoRA scale update.", json_schema_extra=_ONE_SHOT)
    vace_ref_images: list[AssetPath] | None = Field(
        None,
        description="One-shot: VACE reference images (paths in the assets directory), for the chunk they come with.",
        json_schema_extra=_ONE_SHOT,
    )
    vace_context_scale: float | None = Field(None, ge=0, le=2, description="Strength of VACE conditioning (default 1.0).")
    vace_use_input_video: bool | None = Field(
        None, description="Video mode with VACE: the input track becomes the VACE control video (default false)."
    )
    vace_input_frames: AssetPath | None = Field(
        None,
        description="VACE control video: a video (or image) asset played one frame per output frame, "
        "looping; null stops it. In the kernel, also a uint8 (T, H, W, 3) array for one chunk.",
    )
    vace_input_masks: AssetPath | None = Field(
        None,
        description="VACE masks for the control video (1 = generate, 0 = keep): an image asset for "
        "every frame or a video asset; null: all ones. In the kernel, also an array for one chunk.",
    )
    first_frame_image: AssetPath | None = Field(
        None, description="One-shot: VACE extension, the image the chunk starts from.", json_schema_extra=_ONE_SHOT
    )
    last_frame_image: AssetPath | None = Field(
        None, description="One-shot: VACE extension, the image the chunk ends on.", json_schema_extra=_ONE_SHOT
    )
    paused: bool | None = Field(None, description="Freeze the output (repeat the last frame) and stop pipeline calls.")
    recording: bool | None = Field(
        None, description="Start (true) or stop (false) the server-side recording of this session (see /api/v1/recordings)."
    )
    spout_sender: SpoutConfig | None = Field(None, description="Windows only; ignored elsewhere.")
    spout_receiver: SpoutConfig | None = Field(None, description="Windows only; ignored elsewhere.")

    _coerce = field_validator("prompts", mode="before")(lambda cls, v: _coerce_prompts(v))


#: Keys that act on one chunk and are then removed from the session's parameters (marked in
#: the schema). ``paused`` is not one of them: the session acts on it at once and never stores it.
ONE_SHOT_KEYS = frozenset(
    name for name, field in StreamParameters.model_fields.items() if (field.json_schema_extra or {}).get(ONE_SHOT)
)


def unused_parameters(model: type[BaseModel], keys: Iterable[str]) -> list[str]:
    """The ``keys`` that ``model`` validates but its pipeline does not use, sorted."""
    takes = getattr(model, "takes", None)
    if takes is None:
        return []
    return sorted(k for k in keys if k in model.model_fields and k not in takes and k not in SESSION_KEYS)


class UnusedParametersWarning(UserWarning):
    """``Stream.generate`` was given parameters its pipeline accepts but does not use."""


def describe_errors(errors: list[dict[str, Any]]) -> str:
    """Validation errors as one line, each as ``dotted.loc: msg``."""
    return "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e['msg']}" for e in errors)


class ParameterErrors(Exception):
    """A parameters message was refused; ``errors`` lists ``{"loc", "msg"}`` items."""

    def __init__(self, errors: list[dict[str, Any]]):
        super().__init__(describe_errors(errors))
        self.errors = errors


def validation_errors(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Reduce pydantic's errors to JSON-safe ``{"loc", "msg", "type"}`` items."""
    return [
        {"loc": [*prefix, *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def parse_parameters(
    message: dict[str, Any],
    model: type[BaseModel] = StreamParameters,
    *,
    context: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Validate one parameters message.

    ``context`` is the validation context (:func:`path_context` on the server). Returns the validated update (only the keys the message carried, prompts normalised to
    objects) and the unknown keys, which are ignored. Raises :class:`ParameterErrors` when any
    known key has an invalid value: the message is then refused as a whole.
    """
    if not isinstance(message, dict):
        raise ParameterErrors([{"loc": [], "msg": "parameters must be a JSON object", "type": "dict_type"}])
    known = set(model.model_fields)
    unknown = sorted(key for key in message if key not in known)
    try:
        parsed = model.model_validate({k: v for k, v in message.items() if k in known}, context=context)
    except ValidationError as exc:
        raise ParameterErrors(validation_errors(exc)) from None
    full = parsed.model_dump(mode="json")
    # Only the keys the message carried, but nested models complete with their defaults.
    return {key: full[key] for key in parsed.model_fields_set}, unknown
