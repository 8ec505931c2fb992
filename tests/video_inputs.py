"""Inputs for the video-to-video tests: settings under which the input leads, and still pictures."""

from __future__ import annotations

import numpy as np

from scope.streaming.paced import PacedVideoTrack

#: Video-mode settings under which the input leads: little noise and one step. Under the mode
#: defaults (noise 0.7, two steps) the synthetic generator lets the input move frames only a little.
INPUT_LEADS = {"noise_scale": 0.2, "noise_controller": False, "denoising_step_list": [1000]}


def gradient(height: int, width: int, *, inverted: bool = False) -> np.ndarray:
    """An RGB picture with red growing to the right and green downwards (or its negative)."""
    ys, xs = np.mgrid[0:height, 0:width]
    picture = np.stack([xs * 255 // (width - 1), ys * 255 // (height - 1), np.full_like(xs, 96)], axis=-1)
    picture = picture.astype(np.uint8)
    return 255 - picture if inverted else picture


class StillTrack(PacedVideoTrack):
    """Sends one picture at a fixed rate, so what a chunk takes from it does not depend on timing."""

    def __init__(self, picture: np.ndarray, fps: float = 30.0):
        super().__init__(fps)
        self.picture = picture

    async def next_frame(self) -> np.ndarray:
        return self.picture
