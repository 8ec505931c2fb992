"""The motion-aware noise controller of video-to-video: more motion, less noise."""

from __future__ import annotations

import torch

MOTION_SCALE = 0.2


class NoiseController:
    """Per-stream memory of the previous input frame; ``reset`` forgets it (cache init)."""

    def __init__(self) -> None:
        self.last_frame: torch.Tensor | None = None

    def reset(self) -> None:
        self.last_frame = None

    def __call__(self, video: torch.Tensor, noise_scale: float, window: int) -> float:
        """New noise scale from the motion in the last ``window`` frames of ``video`` [1,3,T,H,W].

        ``curr`` is the window shifted one frame earlier (the previous chunk's last frame
        fills in once one exists); the largest per-frame RMSE, over 0.2 and clamped to 1, maps
        the scale into 0.54..0.72, plus a tenth of the incoming value.
        """
        frames = video.float()
        prev = frames[:, :, -window:]
        if self.last_frame is not None:
            shifted = torch.cat([self.last_frame, frames], dim=2)
        else:
            shifted = torch.cat([frames[:, :, :1], frames], dim=2)
        curr = shifted[:, :, -window - 1 : -1]
        self.last_frame = frames[:, :, -1:].clone()
        rmse = (prev - curr).pow(2).mean(dim=(0, 1, 3, 4)).sqrt()
        motion = float((rmse.max() / MOTION_SCALE).clamp(0.0, 1.0))
        return 0.9 * (0.8 - 0.2 * motion) + 0.1 * float(noise_scale)
