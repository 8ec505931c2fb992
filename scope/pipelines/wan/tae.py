"""TAE and LightTAE (``taew2_1.pth``, ``lighttaew2_1.pth``): TAEHV-family tiny
autoencoders for the Wan2.1 latent space.

Everything is per-frame 2-D convolution except three kinds of temporal blocks:
``MemBlock`` mixes each frame with the previous frame's input, ``TPool``
stacks consecutive frames on channels (encoder, 4x in time overall) and
``TGrow`` splits channels into frames (decoder, 4x in time). Streaming keeps,
per MemBlock, the last input frame of the previous chunk, so a stream
processed chunk by chunk equals the whole sequence processed at once.

Pixels are [0, 1] inside the network. LightTAE is wrapped with the Wan latent
mean/std; plain TAE's latent space already matches the generator's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scope.pipelines.wan.autoencoders import (
    LATENT_CHANNELS,
    StreamState,
    VideoAutoencoder,
    load_strict,
    read_checkpoint,
    require,
)

ENCODER_TIME_STRIDES = (2, 2, 1)
DECODER_TIME_STRIDES = (1, 2, 2)
FRAMES_TO_TRIM = 2 ** sum(s == 2 for s in DECODER_TIME_STRIDES) - 1  # 3


def _frames_like(b: int, t: int, c: int, h: int, w: int, like: Tensor) -> Tensor:
    """``[B*T, C, H, W]`` in channels-last memory."""
    return torch.empty((b * t, h, w, c), device=like.device, dtype=like.dtype).permute(0, 3, 1, 2)


def _as_frames(x: Tensor) -> Tensor:
    """``[B, T, C, H, W]`` -> ``[B*T, C, H, W]`` (a view when B is 1)."""
    return x.flatten(0, 1)


def _count_memblocks(seq: nn.Sequential) -> int:
    return sum(isinstance(layer, MemBlock) for layer in seq)


class MemBlock(nn.Module):
    """``relu(conv(cat(x, past)) + skip(x))`` where ``past`` is the previous
    frame's input to this block."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(2 * c_in, c_out, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, b: int, memory: Tensor | None) -> Tensor:
        """``x`` is ``[B*T, C, H, W]``; ``memory`` the ``[B, C, H, W]`` input frame
        before this chunk (None = zeros, the stream start)."""
        nt, c, h, w = x.shape
        t = nt // b
        joined = _frames_like(b, t, 2 * c, h, w, x)
        joined[:, :c].copy_(x)
        past = joined[:, c:].unflatten(0, (b, t))
        x5 = x.unflatten(0, (b, t))
        past[:, 1:].copy_(x5[:, :-1])
        if memory is None:
            past[:, 0].zero_()
        else:
            past[:, 0].copy_(memory)
        y = self.conv[0](joined)
        y = self.conv[2](F.relu_(y))
        y = self.conv[4](F.relu_(y))
        return F.relu_(y.add_(self.skip(x)))


class TPool(nn.Module):
    """Merge ``stride`` consecutive frames by stacking them on channels."""

    def __init__(self, c: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(c * stride, c, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            return self.conv(x)
        nt, c, h, w = x.shape
        s = self.stride
        stacked = _frames_like(nt // s, 1, s * c, h, w, x)
        for k in range(s):
            stacked[:, k * c : (k + 1) * c].copy_(x[k::s])
        return self.conv(stacked)


class TGrow(nn.Module):
    """Split a frame into ``stride`` frames: output channel block ``k`` is frame ``k``."""

    def __init__(self, c: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(c, c * stride, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.stride == 1:
            return y
        nt, cs, h, w = y.shape
        s = self.stride
        c = cs // s
        out = _frames_like(nt, s, c, h, w, y)
        for k in range(s):
            out[k::s].copy_(y[:, k * c : (k + 1) * c])
        return out


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


def _conv(c_in: int, c_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


@dataclass(frozen=True)
class TAEWidths:
    """Encoder width (64 in the real files) and decoder stage widths
    (256, 128, 64, 64)."""

    encoder: int
    decoder: tuple[int, int, int, int]
    latent: int = LATENT_CHANNELS


class TAENet(nn.Module):
    """The ``encoder.{i}`` / ``decoder.{i}`` ``nn.Sequential`` trees of TAEHV."""

    def __init__(self, widths: TAEWidths) -> None:
        super().__init__()
        e, z = widths.encoder, widths.latent
        enc: list[nn.Module] = [_conv(3, e), nn.ReLU(inplace=True)]
        for stride in ENCODER_TIME_STRIDES:
            enc += [TPool(e, stride), _conv(e, e, stride=2, bias=False), MemBlock(e, e), MemBlock(e, e), MemBlock(e, e)]
        enc.append(_conv(e, z))
        self.encoder = nn.Sequential(*enc)
        n = widths.decoder
        dec: list[nn.Module] = [Clamp(), _conv(z, n[0]), nn.ReLU(inplace=True)]
        for i, stride in enumerate(DECODER_TIME_STRIDES):
            dec += [MemBlock(n[i], n[i]), MemBlock(n[i], n[i]), MemBlock(n[i], n[i])]
            dec += [nn.Upsample(scale_factor=2), TGrow(n[i], stride), _conv(n[i], n[i + 1], bias=False)]
        dec += [nn.ReLU(inplace=True), _conv(n[3], 3)]
        self.decoder = nn.Sequential(*dec)
        self.widths = widths

    @staticmethod
    def run(seq: nn.Sequential, x: Tensor, b: int, memory: list) -> Tensor:
        """Apply ``seq`` to the frame batch ``x`` (``[B*T, C, H, W]``), parallel
        over frames; ``memory`` holds each MemBlock's last input frame and is
        updated in place for the next chunk."""
        m = 0
        for layer in seq:
            if isinstance(layer, MemBlock):
                last = x.unflatten(0, (b, -1))[:, -1].clone()
                x = layer(x, b, memory[m])
                memory[m] = last
                m += 1
            elif isinstance(layer, nn.ReLU):
                x = F.relu_(x)
            elif isinstance(layer, nn.Upsample):
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            else:
                x = layer(x)
        return x

    @property
    def memblocks(self) -> tuple[int, int]:
        return _count_memblocks(self.encoder), _count_memblocks(self.decoder)


def infer_tae_widths(state_dict: dict[str, Tensor], path: Path) -> TAEWidths:
    """Read the widths from the convs that set them."""
    encoder = int(require(state_dict, "encoder.0.weight", path, 4)[0])
    latent = int(require(state_dict, "encoder.17.weight", path, 4)[0])
    decoder = tuple(int(require(state_dict, f"decoder.{i}.weight", path, 4)[0]) for i in (1, 8, 14, 20))
    return TAEWidths(encoder=encoder, decoder=decoder, latent=latent)


def cut_first_tgrow(state_dict: dict[str, Tensor], widths: TAEWidths) -> dict[str, Tensor]:
    """Checkpoints trained with a temporal upscale at the first (here stride-1)
    TGrow store extra output channels; the last block is the one kept."""
    key = "decoder.7.conv.weight"
    weight = state_dict.get(key)
    c = widths.decoder[0]
    if weight is not None and weight.ndim == 4 and weight.shape[0] > c and weight.shape[0] % c == 0:
        state_dict = dict(state_dict)
        state_dict[key] = weight[-c:]
    return state_dict


# --------------------------------------------------------------------------- streaming wrapper


class TAE(VideoAutoencoder):
    """TAE (``normalized=False``) or LightTAE (``normalized=True``)."""

    def __init__(self, net: TAENet, normalized: bool) -> None:
        super().__init__()
        self.net = net
        self.normalized = normalized

    @property
    def widths(self) -> TAEWidths:
        return self.net.widths

    def new_state(self) -> StreamState:
        return StreamState(*self.net.memblocks)

    # ---- encode

    def _encode(self, video: Tensor, memory: list, normalize: bool) -> Tensor:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video [B, 3, T, H, W], got {tuple(video.shape)}")
        x = video.to(device=self.device, dtype=self.dtype)
        b, _, t, h, w = x.shape
        padded_t = -(-t // 4) * 4
        frames = _frames_like(b, padded_t, 3, h, w, x)
        f5 = frames.unflatten(0, (b, padded_t))
        f5[:, :t].copy_(x.transpose(1, 2))
        if padded_t > t:
            f5[:, t:].copy_(f5[:, t - 1 : t].expand(-1, padded_t - t, -1, -1, -1))
        f5.add_(1.0).mul_(0.5)
        # groups of 4 frames (one latent each) give the same result as the whole
        # sequence at once, with activations that stay in the CPU's caches
        groups = [self.net.run(self.net.encoder, _as_frames(f5[:, i : i + 4]), b, memory) for i in range(0, padded_t, 4)]
        lat = torch.cat([g.unflatten(0, (b, -1)) for g in groups], dim=1)
        if self.normalized and normalize:
            lat = self.normalize_latents(lat)
        return lat.contiguous()

    @torch.no_grad()
    def stream_encode(self, video: Tensor, state: StreamState, *, normalize: bool = True) -> Tensor:
        """Frames are padded to a multiple of 4 by repeating the last one, so a
        13-frame first chunk gives 4 latents; MemBlock memory carries over."""
        if state.first_batch:
            state.reset_encoder()
        return self._encode(video, state.encoder, normalize)

    @torch.no_grad()
    def encode(self, video: Tensor, *, normalize: bool = True) -> Tensor:
        return self._encode(video, [None] * self.net.memblocks[0], normalize)

    # ---- decode

    def _decode(self, latents: Tensor, memory: list, trim: bool) -> Tensor:
        if latents.ndim != 5 or latents.shape[2] != self.net.widths.latent:
            raise ValueError(f"expected latents [B, F, {self.net.widths.latent}, h, w], got {tuple(latents.shape)}")
        z = latents.to(device=self.device, dtype=self.dtype)
        if self.normalized:
            z = self.denormalize_latents(z)
        b, f, c, h, w = z.shape
        frames = _frames_like(b, f, c, h, w, z)
        frames.copy_(z.flatten(0, 1))
        z5 = frames.unflatten(0, (b, f))
        # latent by latent: equal to the whole chunk at once, smaller activations
        outs = [self.net.run(self.net.decoder, _as_frames(z5[:, i : i + 1]), b, memory) for i in range(f)]
        per_latent = outs[0].shape[0] // b
        skip = FRAMES_TO_TRIM if trim else 0
        _, c_out, h_out, w_out = outs[0].shape
        pixels = _frames_like(b, f * per_latent - skip, c_out, h_out, w_out, outs[0].float()).unflatten(0, (b, -1))
        t = 0
        for out in outs:
            out5 = out.unflatten(0, (b, per_latent))[:, skip:]
            pixels[:, t : t + out5.shape[1]].copy_(out5)
            t += out5.shape[1]
            skip = 0
        return pixels.clamp_(0.0, 1.0).mul_(2.0).sub_(1.0).clamp_(-1.0, 1.0)

    @torch.no_grad()
    def stream_decode(self, latents: Tensor, state: StreamState) -> Tensor:
        """Each latent gives 4 frames; the stream's first 3 are trimmed, so a
        3-latent first chunk gives 9 frames and later ones 12. Upstream decodes
        the first latent alone and then the rest; with zero initial memory that
        is the same computation as decoding them in order, as done here."""
        first = state.first_batch
        if first:
            state.reset_decoder()
            state.first_batch = False
        return self._decode(latents, state.decoder, trim=first)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        return self._decode(latents, [None] * self.net.memblocks[1], trim=True)


def load_tae(
    path: Path, *, normalized: bool, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> TAE:
    """Load a TAE (``normalized=False``) or LightTAE (``normalized=True``) file."""
    path = Path(path)
    state_dict = read_checkpoint(path)
    widths = infer_tae_widths(state_dict, path)
    state_dict = cut_first_tgrow(state_dict, widths)
    net = load_strict(lambda: TAENet(widths), state_dict, path, device=device, dtype=dtype)
    return TAE(net, normalized).to(device=device, dtype=dtype)
