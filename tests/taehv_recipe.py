"""The published TAEHV recipe written out plainly, as an oracle for ``scope.pipelines.wan.tae``.

A video is a Python list of ``[1, C, H, W]`` frames and every layer walks it in time order,
reading its weights straight from the checkpoint's state dict: no modules, no stream state,
no frames batched together. The layer order and each layer's rule are TAEHV's:

- ``MemBlock``: ``relu(conv(relu(conv(relu(conv(cat(x_t, x_{t-1}))))))) + skip(x_t))`` with
  zeros before the first frame; ``skip`` is a 1x1 conv when the widths differ, else identity.
- ``TPool(s)``: ``s`` consecutive frames stacked on channels, then a 1x1 conv.
- ``TGrow(s)``: a 1x1 conv, then output channel block ``k`` is frame ``k``; a stored weight
  with more output channels than that keeps its last ones.
- ``Clamp``: ``tanh(x / 3) * 3``. Upsampling is nearest-neighbour, 2x.
- Encoding pads the frames to a multiple of 4 with the last one; decoding clamps to [0, 1]
  and drops the first ``2**2 - 1`` frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Frames = list[Tensor]
StateDict = dict[str, Tensor]

TIME_DOWNSCALE = 4
FRAMES_TO_TRIM = 3


def _encoder_layers() -> list[tuple]:
    layers: list[tuple] = [("conv", "encoder.0", 1), ("relu",)]
    for stage, stride in enumerate((2, 2, 1)):
        first = 2 + 5 * stage
        layers += [("tpool", f"encoder.{first}", stride), ("conv", f"encoder.{first + 1}", 2)]
        layers += [("mem", f"encoder.{first + j}") for j in (2, 3, 4)]
    return layers + [("conv", "encoder.17", 1)]


def _decoder_layers() -> list[tuple]:
    layers: list[tuple] = [("clamp",), ("conv", "decoder.1", 1), ("relu",)]
    for stage, stride in enumerate((1, 2, 2)):
        first = 3 + 6 * stage
        layers += [("mem", f"decoder.{first + j}") for j in (0, 1, 2)]
        layers += [("up",), ("tgrow", f"decoder.{first + 4}", stride), ("conv", f"decoder.{first + 5}", 1)]
    return layers + [("relu",), ("conv", "decoder.22", 1)]


def _conv(sd: StateDict, key: str, x: Tensor, stride: int = 1) -> Tensor:
    weight = sd[f"{key}.weight"]
    return F.conv2d(x, weight, sd.get(f"{key}.bias"), stride=stride, padding=weight.shape[-1] // 2)


def _memblock(sd: StateDict, key: str, frames: Frames) -> Frames:
    out, past = [], torch.zeros_like(frames[0])
    for x in frames:
        h = torch.relu(_conv(sd, f"{key}.conv.0", torch.cat([x, past], dim=1)))
        h = torch.relu(_conv(sd, f"{key}.conv.2", h))
        h = _conv(sd, f"{key}.conv.4", h)
        skip = _conv(sd, f"{key}.skip", x) if f"{key}.skip.weight" in sd else x
        out.append(torch.relu(h + skip))
        past = x
    return out


def _tpool(sd: StateDict, key: str, frames: Frames, stride: int) -> Frames:
    assert len(frames) % stride == 0
    groups = [torch.cat(frames[i : i + stride], dim=1) for i in range(0, len(frames), stride)]
    return [F.conv2d(g, sd[f"{key}.conv.weight"]) for g in groups]


def _tgrow(sd: StateDict, key: str, frames: Frames, stride: int) -> Frames:
    weight = sd[f"{key}.conv.weight"]
    width = weight.shape[1]
    weight = weight[-width * stride :]
    return [part for x in frames for part in F.conv2d(x, weight).split(width, dim=1)]


def _apply(sd: StateDict, layers: list[tuple], frames: Frames) -> Frames:
    for kind, *args in layers:
        if kind == "conv":
            frames = [_conv(sd, args[0], x, stride=args[1]) for x in frames]
        elif kind == "relu":
            frames = [torch.relu(x) for x in frames]
        elif kind == "clamp":
            frames = [torch.tanh(x / 3) * 3 for x in frames]
        elif kind == "up":
            frames = [F.interpolate(x, scale_factor=2, mode="nearest") for x in frames]
        elif kind == "mem":
            frames = _memblock(sd, args[0], frames)
        elif kind == "tpool":
            frames = _tpool(sd, args[0], frames, args[1])
        elif kind == "tgrow":
            frames = _tgrow(sd, args[0], frames, args[1])
        else:
            raise ValueError(kind)
    return frames


@torch.no_grad()
def encode_video(sd: StateDict, video: Tensor) -> Tensor:
    """``[T, 3, H, W]`` pixels in [0, 1] to ``[ceil(T/4), 16, H/8, W/8]`` raw latents."""
    frames = list(video.unsqueeze(1).unbind(0))
    frames += frames[-1:] * (-len(frames) % TIME_DOWNSCALE)
    return torch.cat(_apply(sd, _encoder_layers(), frames))


@torch.no_grad()
def decode_video(sd: StateDict, latents: Tensor) -> Tensor:
    """``[F, 16, h, w]`` raw latents to ``[4F - 3, 3, 8h, 8w]`` pixels in [0, 1]."""
    frames = _apply(sd, _decoder_layers(), list(latents.unsqueeze(1).unbind(0)))
    return torch.cat(frames).clamp(0, 1)[FRAMES_TO_TRIM:]
