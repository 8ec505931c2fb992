"""VACE's inputs as pixels: reference images, control videos and masks, from files or arrays.

A file is an image or a video (decoded with PyAV, the library aiortc already brings). A video
named as a control or mask source plays on, chunk after chunk, one file frame per output frame,
and starts again at its end, so a short clip can steer a long stream.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scope.pipelines.wan.frames import resample_indices

#: Suffixes read as still images; any other file is opened as a video.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def read_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """An image file as uint8 ``(H, W, 3)`` (``mode="L"``: ``(H, W)``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from exc


def reference_pixels(source, height: int, width: int) -> torch.Tensor:
    """A reference image fitted to the frame, as ``[3, H, W]`` float32 in [-1, 1].

    ``source`` is a path or a uint8 ``(h, w, 3)`` array. An image of another size is scaled to
    fit (aspect kept, bilinear) and centred on a white canvas, as the reference does.
    """
    image = read_image(source) if isinstance(source, (str, Path)) else np.asarray(source)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"a reference image must be (H, W, 3), got shape {image.shape}")
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)
    pixels = (pixels - 0.5) / 0.5
    h, w = pixels.shape[-2:]
    if (h, w) == (height, width):
        return pixels
    scale = min(height / h, width / w)
    new_h, new_w = int(h * scale), int(w * scale)
    resized = F.interpolate(pixels[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    canvas = torch.ones(3, height, width)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[:, top : top + new_h, left : left + new_w] = resized
    return canvas


class LoopingFrames:
    """Frames of an image or video file handed out chunk by chunk, starting over at the end."""

    def __init__(self, path: str | Path, mode: str = "RGB"):
        self.path = Path(path)
        self.mode = mode
        if not self.path.is_file():
            raise ValueError(f"{self.path}: no such file")
        self._still = read_image(self.path, mode) if self.path.suffix.lower() in IMAGE_SUFFIXES else None
        self._frames = None

    def _decoded(self):
        import av

        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                fmt = "rgb24" if self.mode == "RGB" else "gray"
                yield from (frame.to_ndarray(format=fmt) for frame in container.decode(stream))
        except (av.error.FFmpegError, IndexError) as exc:
            raise ValueError(f"{self.path}: not a readable video ({exc})") from exc

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` frames: uint8 ``(count, H, W, 3)`` (``(count, H, W)`` for masks)."""
        if self._still is not None:
            return np.repeat(self._still[None], count, axis=0)
        taken = []
        at_start = False  # just started over: a second end with nothing read means no frames
        while len(taken) < count:
            if self._frames is None:
                self._frames = self._decoded()
            frame = next(self._frames, None)
            if frame is None:
                if at_start:
                    raise ValueError(f"{self.path}: the video holds no frames")
                self._frames, at_start = None, True
                continue
            at_start = False
            taken.append(frame)
        return np.stack(taken)


def mask_pixels(masks, *, count: int, source_count: int, height: int, width: int) -> torch.Tensor:
    """Masks as ``[count, H, W]`` of 0 and 1 (1 = generate, 0 = keep), binarised at 0.5.

    ``masks`` is one mask for every frame (``(H, W)``), or one per control frame
    (``(T, H, W)``, ``(T, H, W, 1)`` or the reference's ``[1, 1, T, H, W]``), either per frame given (``source_count``, resampled with
    the frames) or per frame encoded (``count``). uint8 masks are read as 0..255.
    """
    tensor = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks)
    if tensor.ndim == 5 and tensor.shape[:2] == (1, 1):  # the reference's [B, 1, T, H, W] form
        tensor = tensor[0, 0]
    if tensor.ndim == 4 and tensor.shape[-1] == 1:
        tensor = tensor[..., 0]
    if tensor.ndim == 2:
        tensor = tensor[None].expand(count, -1, -1)
    if tensor.ndim != 3:
        raise ValueError(f"masks must be (H, W) or (T, H, W), got shape {tuple(tensor.shape)}")
    values = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
    if len(values) != count:
        if len(values) != source_count:
            raise ValueError(f"{len(values)} masks for {source_count} control frames: give one mask or one per frame")
        values = values[resample_indices(source_count, count)]
    if values.shape[-2:] != (height, width):
        values = F.interpolate(values[None], size=(height, width), mode="nearest")[0]
    return (values > 0.5).float()

