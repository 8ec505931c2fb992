"""One stream's VACE encoding: pixels and masks to the 96-channel context of a chunk.

Control frames (a control video, or the extension frames built around a first/last frame
image) are split by the mask into what is kept (``inactive = frames * (1 - m)``) and what is
generated (``reactive = frames * m``); each goes through the streaming encoder (16 + 16
channels). The mask itself becomes 64 channels: each 8x8 pixel block is one position, its 64
pixels the channels, resized in time to the latent count. Reference images are encoded one
by one with a fresh cache and stand ahead of the control latents, with empty mask channels.

Layout of a chunk's context (latent frames, in order): references, then control latents.
One reference takes the place of the chunk's first frame, as in the reference implementation
(the control latents follow it, and the generator keeps as many frames as the chunk has).
Several references all stand ahead of the chunk (``lead_frames``), so every control latent keeps
its own chunk frame and no reference pushes one out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scope.pipelines.wan.autoencoders import StreamState, VideoAutoencoder
from scope.pipelines.wan.vace import VACE_IN_DIM

#: The VAE's strides: 4 frames and 8x8 pixels to one latent position.
TEMPORAL_STRIDE, SPATIAL_STRIDE = 4, 8
LATENT_CHANNELS = 16


def encode_masks(masks: torch.Tensor, leading: int = 0) -> torch.Tensor:
    """``[T, H, W]`` masks to ``[64, leading + (T + 3) // 4, H/8, W/8]``.

    Channel ``8 * row + column`` holds that pixel of each 8x8 block; time is resized with
    nearest-exact interpolation; ``leading`` empty frames stand for the reference latents.
    """
    t, height, width = masks.shape
    h, w = 2 * (height // (SPATIAL_STRIDE * 2)), 2 * (width // (SPATIAL_STRIDE * 2))
    blocks = masks.reshape(t, h, SPATIAL_STRIDE, w, SPATIAL_STRIDE).permute(2, 4, 0, 1, 3)
    blocks = blocks.reshape(SPATIAL_STRIDE * SPATIAL_STRIDE, t, h, w)
    encoded = F.interpolate(blocks[None], size=((t + 3) // TEMPORAL_STRIDE, h, w), mode="nearest-exact")[0]
    if leading:
        encoded = torch.cat([encoded.new_zeros(encoded.shape[0], leading, h, w), encoded], dim=1)
    return encoded


def extension_frames(
    first: torch.Tensor | None, last: torch.Tensor | None, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames and masks that keep a first and/or last frame image and generate the rest.

    Each given image fills one 4-frame group (mask 0) at its end of ``count`` frames; the frames
    between are zeros to generate (mask 1). Images are ``[3, H, W]``; returns ``[3, count, H, W]``
    and ``[count, H, W]``.
    """
    if first is None and last is None:
        raise ValueError("extension needs a first or a last frame image")
    image = first if first is not None else last
    height, width = image.shape[-2:]
    groups = [g for g in (first, last) if g is not None]
    middle = count - TEMPORAL_STRIDE * len(groups)
    if middle < 0:
        raise ValueError(f"{count} frames cannot hold {len(groups)} image group(s) of {TEMPORAL_STRIDE}")
    frames, masks = [], []
    if first is not None:
        frames.append(first[:, None].expand(-1, TEMPORAL_STRIDE, -1, -1))
        masks.append(torch.zeros(TEMPORAL_STRIDE, height, width))
    frames.append(image.new_zeros(3, middle, height, width))
    masks.append(torch.ones(middle, height, width))
    if last is not None:
        frames.append(last[:, None].expand(-1, TEMPORAL_STRIDE, -1, -1))
        masks.append(torch.zeros(TEMPORAL_STRIDE, height, width))
    return torch.cat(frames, dim=1), torch.cat(masks)


class VaceEncoder:
    """Encodes a stream's VACE inputs; owns the control streams' encoder caches when they have their own.

    With the Wan VAE the reference encodes both control streams through the stream's one
    encoder cache (each starts afresh on the first chunk, then each continues from where the
    other left it): that is the default here. ``separate_caches`` (and TAE, always) gives each
    control stream its own cache, carried from chunk to chunk.
    """

    def __init__(self, vae: VideoAutoencoder, stream_state: StreamState, *, separate_caches: bool = False):
        self.vae = vae
        self.stream_state = stream_state
        self.shared = vae.shares_control_cache and not separate_caches
        self._states = None if self.shared else (vae.new_state(), vae.new_state())

    def reset(self) -> None:
        """A new sequence: the control streams' own caches start afresh (the shared one resets with the stream)."""
        if self._states is not None:
            for state in self._states:
                state.reset()

    def _encode_control(self, pixels: torch.Tensor, stream: int) -> torch.Tensor:
        if self.shared:
            return self.vae.stream_encode(pixels, self.stream_state)
        state = self._states[stream]
        latents = self.vae.stream_encode(pixels, state)
        state.first_batch = False  # no decode follows on this state: carry the cache from here on
        return latents

    def reference_latents(self, references: list[torch.Tensor]) -> torch.Tensor:
        """``[1, N, 16, h, w]``: each ``[3, H, W]`` image encoded alone with a fresh cache."""
        dtype = self.vae.dtype
        return torch.cat([self.vae.encode(image[None, :, None].to(self.vae.device, dtype)) for image in references], dim=1)

    def control_latents(self, frames: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``[1, F, 32, h, w]`` from frames ``[1, 3, T, H, W]`` and masks ``[T, H, W]`` of 0/1."""
        m = masks.to(device=frames.device, dtype=frames.dtype)[None, None]
        inactive = self._encode_control(frames * (1 - m), 0)
        reactive = self._encode_control(frames * m, 1)
        return torch.cat([inactive, reactive], dim=2)

    def context(
        self,
        references: list[torch.Tensor],
        frames: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int]:
        """The chunk's ``[1, S, 96, h, w]`` context and its lead frames (see the module's layout)."""
        lead = len(references) if len(references) > 1 else 0
        refs = self.reference_latents(references) if references else None
        if frames is None:
            if refs is None:
                raise ValueError("a VACE context needs reference images or control frames")
            pad = refs.new_zeros(*refs.shape[:2], VACE_IN_DIM - LATENT_CHANNELS, *refs.shape[3:])
            return torch.cat([refs, pad], dim=2), lead
        if masks is None:
            masks = torch.ones(frames.shape[2], *frames.shape[-2:])
        control = self.control_latents(frames, masks)
        if refs is not None:
            refs = torch.cat([refs, torch.zeros_like(refs)], dim=2)
            control = torch.cat([refs, control], dim=1)
        mask_channels = encode_masks(masks.to(control.device), leading=len(references))
        mask_channels = mask_channels.to(control.dtype).permute(1, 0, 2, 3)[None]
        return torch.cat([control, mask_channels], dim=2), lead
