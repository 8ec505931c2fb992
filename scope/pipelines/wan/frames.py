"""Pixels in and out of the Wan pipelines: uint8 frames to [-1, 1] video tensors and back."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resample_indices(count: int, target: int) -> list[int]:
    """``round(linspace(0, count - 1, target))``: even sampling, duplicating when short."""
    return [int(i) for i in np.round(np.linspace(0, count - 1, target))]


def as_frames(video) -> torch.Tensor:
    """The input video as one ``(T, H, W, 3)`` tensor of 0..255 values.

    Takes what callers have at hand: a uint8 array or tensor ``(T, H, W, 3)``, a list of
    ``(H, W, 3)`` or ``(1, H, W, 3)`` frames (the reference's form), or a ``[1, 3, T, H, W]``
    tensor already in [-1, 1], which is mapped back to 0..255.
    """
    if isinstance(video, (list, tuple)):
        if not video:
            raise ValueError("input video holds no frames")
        parts = [torch.as_tensor(np.asarray(f) if not isinstance(f, torch.Tensor) else f) for f in video]
        video = torch.cat([p if p.ndim == 4 else p.unsqueeze(0) for p in parts])
    elif not isinstance(video, torch.Tensor):
        video = torch.from_numpy(np.ascontiguousarray(video))
    if video.ndim == 5 and video.shape[:2] == (1, 3) and video.is_floating_point():
        return (video[0].permute(1, 2, 3, 0) + 1.0) / 2.0 * 255.0
    if video.ndim != 4 or video.shape[-1] != 3 or len(video) == 0:
        raise ValueError(f"input video must be (T, H, W, 3) uint8 frames, got shape {tuple(video.shape)}")
    return video


def frames_to_video(
    frames, *, height: int, width: int, target_frames: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Input frames (see :func:`as_frames`) to ``[1, 3, target_frames, height, width]`` in [-1, 1].

    Frames are resampled to the count the chunk needs and resized bilinearly
    (``align_corners=False``) when their size differs from the pipeline's.
    """
    frames = as_frames(frames)
    if len(frames) != target_frames:
        frames = frames[resample_indices(len(frames), target_frames)]
    video = frames.to(device=device).permute(0, 3, 1, 2).to(dtype)  # T, C, H, W
    if video.shape[-2:] != (height, width):
        video = F.interpolate(video, size=(height, width), mode="bilinear", align_corners=False)
    video = video / 255.0 * 2.0 - 1.0
    return video.permute(1, 0, 2, 3).unsqueeze(0)


def video_to_frames(video: torch.Tensor) -> np.ndarray:
    """``[1, T, 3, H, W]`` in [-1, 1] to uint8 ``(T, H, W, 3)``, truncating like the reference."""
    pixels = (video[0].float() / 2.0 + 0.5).clamp(0.0, 1.0)
    pixels = (pixels * 255.0).to(torch.uint8).permute(0, 2, 3, 1)
    return np.ascontiguousarray(pixels.cpu().numpy())
