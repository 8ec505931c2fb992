"""The motion-aware noise controller of video-to-video: more motion, less noise."""

from __future__ import annotations

import torch

MOTION_SCALE = 0.2


class NoiseController:
    """Per-stream memory of the previous input frame and of the last scale it gave; ``reset``
    forgets both (cache init)."""

    def __init__(self) -> None:
        self.last_frame: torch.Tensor | None = None
        self.last_scale: float | None = None

    def reset(self) -> None:
        self.last_frame = None
        self.last_scale = None

    def __call__(self, video: torch.Tensor, noise_scale: float, window: int) -> float:
        """New noise scale from the motion in the last ``window`` frames of ``video`` [1,3,T,H,W].

        Each of those frames is compared with ``curr``: the frames just before it, except that
        once a previous chunk exists its last frame stands in front (the reference's pairing).
        The largest per-frame RMSE over 0.2, clamped to 1, maps the scale into 0.54..0.72, plus
        a tenth of the incoming value. Computed in the video's dtype, as the reference does.
        """
        prev = video[:, :, -window:]
        if self.last_frame is None:
            curr = video[:, :, -window - 1 : -1]
        else:
            curr = torch.cat([self.last_frame, video[:, :, -window:-1]], dim=2)
        self.last_frame = video[:, :, -1:].clone()
        rmse = (prev - curr).pow(2).mean(dim=(0, 1, 3, 4)).sqrt()
        motion = (rmse.max() / MOTION_SCALE).clamp(0.0, 1.0).item()
        self.last_scale = (0.8 - 0.2 * motion) * 0.9 + float(noise_scale) * 0.1
        return self.last_scale
