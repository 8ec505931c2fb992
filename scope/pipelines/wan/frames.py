"""Pixels in and out of the Wan pipelines: uint8 frames to [-1, 1] video tensors and back."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resample_indices(count: int, target: int) -> list[int]:
    """``round(linspace(0, count - 1, target))``: even sampling, duplicating when short."""
    return [int(i) for i in np.round(np.linspace(0, count - 1, target))]


def frames_to_video(
    frames: np.ndarray, *, height: int, width: int, target_frames: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` to ``[1, 3, target_frames, height, width]`` in [-1, 1].

    Frames are resampled to the count the chunk needs and resized bilinearly
    (``align_corners=False``) when their size differs from the pipeline's.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"input video must be (T, H, W, 3) uint8 frames, got shape {frames.shape}")
    if len(frames) != target_frames:
        frames = frames[resample_indices(len(frames), target_frames)]
    video = torch.from_numpy(np.ascontiguousarray(frames)).to(device=device)
    video = video.permute(0, 3, 1, 2).to(dtype)  # T, C, H, W
    if video.shape[-2:] != (height, width):
        video = F.interpolate(video, size=(height, width), mode="bilinear", align_corners=False)
    video = video / 255.0 * 2.0 - 1.0
    return video.permute(1, 0, 2, 3).unsqueeze(0)


def video_to_frames(video: torch.Tensor) -> np.ndarray:
    """``[1, T, 3, H, W]`` in [-1, 1] to uint8 ``(T, H, W, 3)``, truncating like the reference."""
    pixels = (video[0].float() / 2.0 + 0.5).clamp(0.0, 1.0)
    pixels = (pixels * 255.0).to(torch.uint8).permute(0, 2, 3, 1)
    return np.ascontiguousarray(pixels.cpu().numpy())
