"""What a stream does with VACE parameters: gather the chunk's inputs and build its context.

A chunk's context comes from, in the reference's order of precedence: first/last frame images
(extension), else control frames (the input track when ``vace_use_input_video`` is on, an array,
or a video asset that plays on), with optional reference images; else reference images alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scope.pipelines.wan.autoencoders import StreamState, VideoAutoencoder
from scope.pipelines.wan.frames import as_frames, frames_to_video
from scope.pipelines.wan.vace import VaceContext
from scope.pipelines.wan.vace_encoding import TEMPORAL_STRIDE, VaceEncoder, extension_frames
from scope.pipelines.wan.vace_inputs import LoopingFrames, mask_pixels, reference_pixels

#: The stream parameters that carry VACE inputs (``vace_context_scale`` only scales them).
VACE_INPUTS = ("vace_ref_images", "vace_input_frames", "vace_input_masks", "first_frame_image", "last_frame_image")
#: Every VACE stream parameter.
VACE_PARAMETERS = frozenset({*VACE_INPUTS, "vace_context_scale", "vace_use_input_video"})
DEFAULT_CONTEXT_SCALE = 1.0


@dataclass(frozen=True)
class VaceOptions:
    """How a pipeline loaded with VACE runs it (load parameters and pipeline facts)."""

    #: Mask the hint blocks' padding keys (off: the reference's unmasked padding).
    mask_padding: bool = False
    #: Give the control streams their own encoder caches with the Wan VAE (off: the reference's one).
    separate_caches: bool = False
    #: Whether VACE may condition a chunk made from input video (StreamDiffusionV2: text mode only).
    video_mode: bool = True


def has_inputs(params: dict[str, Any]) -> bool:
    """Whether ``params`` carry any VACE input."""
    return any(_given(params.get(name)) for name in VACE_INPUTS)


def _given(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, (list, tuple)) and not value:
        return False
    return True


class VaceConditioner:
    """One stream's VACE state: its encoder caches and the asset videos it is playing."""

    def __init__(
        self,
        vae: VideoAutoencoder,
        stream_state: StreamState,
        options: VaceOptions,
        *,
        height: int,
        width: int,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.options = options
        self.encoder = VaceEncoder(vae, stream_state, separate_caches=options.separate_caches)
        self.height, self.width = height, width
        self.device, self.dtype = device, dtype
        self._sources: dict[tuple[str, str], LoopingFrames] = {}

    def reset(self) -> None:
        self.encoder.reset()

    def takes_input_video(self, params: dict[str, Any]) -> bool:
        """Whether the input track is the control video rather than video-to-video input."""
        if params.get("vace_use_input_video") is not True:
            return False
        if not self.options.video_mode:
            raise ValueError("this pipeline takes VACE in text mode only: vace_use_input_video must stay false")
        return True

    def has_control(self, params: dict[str, Any], input_frames: Any) -> bool:
        """Whether the chunk is conditioned by control frames (a prompt change then resets the cache)."""
        return input_frames is not None or _given(params.get("vace_input_frames"))

    def _source(self, path: str, mode: str) -> LoopingFrames:
        key = (str(Path(path)), mode)
        if key not in self._sources:
            self._sources = {k: v for k, v in self._sources.items() if k[1] != mode}  # one playing per kind
            self._sources[key] = LoopingFrames(path, mode)
        return self._sources[key]

    def _image(self, source: Any) -> torch.Tensor:
        return reference_pixels(source, self.height, self.width)

    def _control(self, params: dict[str, Any], input_frames: Any, count: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The chunk's control frames ``[1, 3, count, H, W]`` and masks ``[count, H, W]``, if any."""
        frames = input_frames if input_frames is not None else params.get("vace_input_frames")
        if frames is None:
            return None
        if isinstance(frames, (str, Path)):
            frames = self._source(str(frames), "RGB").take(count)
        frames = as_frames(frames)
        video = frames_to_video(
            frames, height=self.height, width=self.width, target_frames=count, device=self.device, dtype=self.dtype
        )
        masks = params.get("vace_input_masks")
        if masks is None:
            masks = torch.ones(count, self.height, self.width)
        else:
            source_count = len(frames)
            if isinstance(masks, (str, Path)):
                masks, source_count = self._source(str(masks), "L").take(count), count
            masks = mask_pixels(masks, count=count, source_count=source_count, height=self.height, width=self.width)
        return video, masks

    def context(
        self, params: dict[str, Any], input_frames: Any, *, first_chunk: bool, frames_per_block: int
    ) -> VaceContext | None:
        """The chunk's VACE context, or None when it carries no VACE input."""
        scale = params.get("vace_context_scale")
        scale = DEFAULT_CONTEXT_SCALE if scale is None else float(scale)
        first_image, last_image = params.get("first_frame_image"), params.get("last_frame_image")
        if first_image is not None or last_image is not None:
            first = self._image(first_image) if first_image is not None else None
            last = self._image(last_image) if last_image is not None else None
            frames, masks = extension_frames(first, last, frames_per_block * TEMPORAL_STRIDE)
            video = frames[None].to(device=self.device, dtype=self.dtype)
            latents, lead = self.encoder.context([], video, masks)
            return VaceContext(latents, scale, lead, self.options.mask_padding)
        references = [self._image(path) for path in params.get("vace_ref_images") or ()]
        count = frames_per_block * TEMPORAL_STRIDE + (1 if first_chunk else 0)
        control = self._control(params, input_frames, count)
        if control is None and not references:
            return None
        video, masks = control if control is not None else (None, None)
        latents, lead = self.encoder.context(references, video, masks)
        return VaceContext(latents.to(self.dtype), scale, lead, self.options.mask_padding)

