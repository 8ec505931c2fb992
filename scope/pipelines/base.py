"""The pipeline interface: weights are shared, stream state is not.

A :class:`Pipeline` owns what is expensive and read-only (weights, encoders). Every consumer
(a WebRTC session, a notebook) opens its own :class:`Stream`, which holds everything that
evolves over time (caches, conditioning, random state), so two streams never disturb each
other. All methods are blocking and run on the device worker thread, never on the event loop.
"""

from __future__ import annotations

import functools
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel

from scope.models.artifacts import Artifact
from scope.params import StreamParameters, path_context

Mode = Literal["text", "video"]


@dataclass(frozen=True)
class PipelineInfo:
    """Static facts about a pipeline, served by ``/api/v1/pipelines/schemas``."""

    id: str
    name: str
    description: str
    supported_modes: tuple[Mode, ...]
    default_mode: Mode
    version: str = "1.0.0"
    supports_prompts: bool = True
    default_temporal_interpolation_method: Literal["linear", "slerp"] = "slerp"
    default_temporal_interpolation_steps: int = 0
    docs_url: str | None = None
    estimated_vram_gb: float | None = None
    requires_models: bool = True
    supports_lora: bool = False
    supports_vace: bool = False
    supports_cache_management: bool = False
    supports_kv_cache_bias: bool = False
    supports_quantization: bool = False
    min_dimension: int = 1
    recommended_quantization_vram_threshold: float | None = None
    modified: bool = False


@dataclass(frozen=True)
class LoadContext:
    """Where a pipeline finds its files."""

    models_dir: Path
    lora_dir: Path
    assets_dir: Path

    def validation_context(self) -> dict[str, Path]:
        """The context under which the server validates client parameters (paths contained)."""
        return path_context(self.assets_dir, self.lora_dir)


@dataclass(frozen=True)
class MemoryEstimate:
    """What a pipeline is expected to hold on its device: its weights, the caches its streams
    share at their full size (e.g. prompt embeddings), and each stream's own caches."""

    weights_bytes: int = 0
    stream_bytes: int = 0
    cache_bytes: int = 0


@dataclass
class Chunk:
    """One pipeline call's output.

    ``frames`` is uint8 ``(T, H, W, 3)`` RGB. ``transition_active`` tells the caller whether a
    temporal transition is still running, so it keeps passing ``transition`` until it ends.
    """

    frames: np.ndarray
    transition_active: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class Stream(ABC):
    """Per-consumer generation state over a shared :class:`Pipeline`.

    Two ways in. The server keeps each session's parameters itself and calls :meth:`run_chunk`
    with the merged dict. Scripts and notebooks call :meth:`generate` with just what changes;
    the stream then keeps the parameters the way a session does (validated by the pipeline's
    parameter model, persistent, one-shot keys acting once, a finished transition's targets
    becoming the prompts).
    """

    #: Validates :meth:`generate`'s parameters: the opening pipeline's ``parameters_model``.
    parameters_model: type[BaseModel] = StreamParameters

    @abstractmethod
    def frames_needed(self, params: dict[str, Any]) -> int:
        """Input frames the next chunk consumes in video mode (0: none)."""

    @abstractmethod
    def run_chunk(
        self, params: dict[str, Any], video: np.ndarray | None = None, *, init_cache: bool = False
    ) -> Chunk:
        """Produce the next chunk from a complete parameter dict.

        ``params`` is the merged parameter dict (one-shot keys included once). ``video`` is
        uint8 ``(T, H, W, 3)`` input in video mode, else None. ``init_cache`` resets the
        stream's caches before generating.
        """

    def generate(self, video: np.ndarray | None = None, *, reset_cache: bool = False, **updates: Any) -> Chunk:
        """The next chunk, after applying ``updates`` (the data channel's parameters).

        Raises :class:`scope.params.ParameterErrors` for an invalid value or an unknown name.
        A parameter the pipeline accepts but does not use is ignored with an
        :class:`~scope.params.UnusedParametersWarning` naming it. A chunk that raises keeps
        its one-shot parameters for the next call.
        """
        from scope.params import ParameterErrors, UnusedParametersWarning, parse_parameters, unused_parameters
        from scope.streaming.parameter_state import ParameterState

        state = getattr(self, "_parameter_state", None)
        if state is None:
            state = self._parameter_state = ParameterState()
        # An extra given as a string is a path the parameter model validates like the server's.
        extras = {k: updates.pop(k) for k in self.extra_parameters if k in updates and not isinstance(updates[k], str)}
        for_chunk = {k: extras.pop(k) for k in self.chunk_parameters if k in extras}
        validated, unknown = parse_parameters(updates, self.parameters_model)
        if unknown:
            errors = [{"loc": [k], "msg": "unknown parameter", "type": "extra_forbidden"} for k in unknown]
            raise ParameterErrors(errors)
        errors = self.check_parameters(validated)
        if errors:
            raise ParameterErrors(errors)
        unused = unused_parameters(self.parameters_model, validated)
        if unused:
            warnings.warn(
                f"this pipeline does not use {', '.join(unused)}: accepted and ignored", UnusedParametersWarning, stacklevel=2
            )
        validated.update(extras)
        if validated:
            state.update(validated)
        params = {**state.take_chunk(), **for_chunk}
        first = not getattr(self, "_generated", False)
        try:
            chunk = self.run_chunk(params, video, init_cache=reset_cache or first)
        except Exception:
            state.restore()
            raise
        self._generated = True
        if "transition" in params and not chunk.transition_active:
            state.finish_transition()
        return chunk

    #: Parameters :meth:`generate` accepts beyond the data channel's (e.g. tensors).
    extra_parameters: tuple[str, ...] = ()
    #: Extras that act on the one chunk they are given with (per-chunk arrays), never kept.
    chunk_parameters: tuple[str, ...] = ()

    def check_parameters(self, update: dict[str, Any]) -> list[dict[str, Any]]:
        """What the opening pipeline's :meth:`Pipeline.check_parameters` finds wrong (set on open)."""
        return []

    def close(self) -> None:
        """Release per-stream buffers."""


class Pipeline(ABC):
    """A loaded pipeline. Subclasses declare their facts as class attributes."""

    info: ClassVar[PipelineInfo]
    #: Validates ``load_params``; its defaults are this pipeline's load defaults.
    load_params_model: ClassVar[type[BaseModel]]
    #: The pipeline's configuration schema, served as ``config_schema`` (UI hints).
    config_model: ClassVar[type[BaseModel]]
    #: Validates stream parameters (``initialParameters`` and data-channel messages).
    parameters_model: ClassVar[type[BaseModel]] = StreamParameters
    #: Per-mode parameter defaults; the server applies ``video`` ones in video mode.
    mode_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Parameter defaults the server applies whatever the mode.
    default_parameters: ClassVar[dict[str, Any]] = {}
    #: Hugging Face files the pipeline needs.
    artifacts: ClassVar[tuple[Artifact, ...]] = ()
    #: The frame rate the output is meant to play at (recordings and renders); None: the
    #: input's (a pipeline that passes its input through).
    frame_rate: ClassVar[float | None] = None

    def __init__(self, load_params: BaseModel):
        self.load_params = load_params
        #: What the load advises the user (``pipeline/status`` ``warnings``; a Python warning in
        #: :func:`scope.load_pipeline`), e.g. fp8 on a GPU with too little memory.
        self.load_warnings: list[str] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every stream a pipeline opens validates ``generate`` with the pipeline's own model.

        Done here once, so no pipeline's ``open_stream`` can forget it.
        """
        super().__init_subclass__(**kwargs)
        opener = cls.__dict__.get("open_stream")
        if opener is None or getattr(opener, "__isabstractmethod__", False):
            return

        @functools.wraps(opener)
        def open_stream(self: "Pipeline") -> Stream:
            stream = opener(self)
            stream.parameters_model = self.parameters_model
            stream.check_parameters = self.check_parameters
            return stream

        cls.open_stream = open_stream

    @classmethod
    @abstractmethod
    def load(cls, load_params: BaseModel, context: LoadContext) -> "Pipeline":
        """Read weights and build the pipeline (blocking)."""

    def check_parameters(self, update: dict[str, Any]) -> list[dict[str, Any]]:
        """Errors (``{"loc", "msg", "type"}``) in a validated parameter update that only the loaded
        pipeline can see, e.g. a ``lora_scales`` entry naming an adapter it did not load."""
        return []

    @classmethod
    def memory_estimate(cls, load_params: BaseModel, context: LoadContext) -> MemoryEstimate:
        """What a load of this pipeline is expected to hold on its device, read from its files
        before loading them (the pool corrects it with what loads actually took). Nothing by
        default: a pipeline without weights."""
        return MemoryEstimate()

    def memory_held(self) -> int:
        """Bytes of the tensors this pipeline holds for good on the device the pool budgets (its
        weights, not the caches that fill with use): what the pool measures after a load to
        correct its estimates."""
        from scope.streaming.memory_budget import budget_device, held_bytes

        return held_bytes(self, device=budget_device().type)

    @abstractmethod
    def open_stream(self) -> Stream:
        """A fresh, independent stream over this pipeline's weights (its own caches and state)."""

    def unload(self) -> None:
        """Free the weights (and device memory)."""

    @property
    def synthetic(self) -> bool:
        """True when the weights in use are synthetic (tiny, random)."""
        return False

    @property
    def loaded_lora_adapters(self) -> list[dict[str, Any]] | None:
        """LoRA adapters in use; None for pipelines without LoRA support."""
        return [] if self.info.supports_lora else None
