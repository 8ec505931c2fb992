"""Krea's KV recompute context: what a stream keeps to rebuild its attention window each chunk.

Krea Realtime Video does not carry its KV cache from chunk to chunk. Before every chunk after
the first the window is cleared and recomputed at t=0 from a few context latents under the
current prompt, so a long stream never attends to keys made under an old prompt or drifting
positions. The context is "a clean first-frame-style latent, then the newest latents": the
stream's own first latent while the stream is young, and later the oldest of the newest decoded
frames re-encoded on its own, which the Wan VAE turns into one first-frame latent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from scope.pipelines.wan.autoencoders import VideoAutoencoder

#: Pixel frames one latent decodes to after a stream's first.
FRAMES_PER_LATENT = 4


class ContextFrames:
    """The newest latents and decoded frames of one stream, and the context they make.

    ``count`` context latents (Krea: 3): the first-frame latent, then the ``count - 1`` newest
    latents; ``1 + (count - 1) * 4`` decoded frames are kept, whose oldest is the last pixel frame
    of the latent ``count`` positions back.
    """

    def __init__(self, count: int):
        if count < 1:
            raise ValueError(f"a recompute context needs at least one latent, got {count}")
        self.count = count
        self.pixel_count = 1 + (count - 1) * FRAMES_PER_LATENT
        self.reset()

    def reset(self) -> None:
        self.first: torch.Tensor | None = None
        self.latents: torch.Tensor | None = None
        self.pixels: torch.Tensor | None = None

    def remember(self, start_frame: int, latents: torch.Tensor, decoded: torch.Tensor) -> None:
        """After a chunk: its clean latents ``[1, F, 16, h, w]`` and decoded frames ``[1, T, 3, H, W]``."""
        if start_frame == 0:
            self.first = latents[:, :1]
        self.latents = _newest(self.latents, latents, self.count - 1)
        self.pixels = _newest(self.pixels, decoded.clamp(-1.0, 1.0), self.pixel_count)

    def latents_for(self, start_frame: int, frames_per_block: int, vae: VideoAutoencoder) -> torch.Tensor:
        """``[1, count, 16, h, w]``: the context of the chunk starting at ``start_frame`` (> 0).

        While the chunk before this one started within the first ``count`` frames, the stream's
        first latent leads; afterwards the oldest kept frame, encoded alone with a fresh encoder
        cache, does.
        """
        if self.first is None:
            raise RuntimeError("no chunk has been remembered since the stream started")
        if start_frame - frames_per_block < self.count:
            lead = self.first
        else:
            frame = self.pixels[:, :1].permute(0, 2, 1, 3, 4)  # [1, 3, 1, H, W]
            lead = vae.encode(frame.to(device=vae.device, dtype=vae.dtype)).to(self.first.dtype)
        if self.count == 1:
            return lead
        return torch.cat([lead, self.latents.to(lead.device)], dim=1)


def _newest(kept: torch.Tensor | None, new: torch.Tensor, count: int) -> torch.Tensor | None:
    if count <= 0:
        return None
    joined = new if kept is None else torch.cat([kept, new], dim=1)
    return joined[:, -count:]
