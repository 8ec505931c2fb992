"""Wan2.1 causal video VAE (``Wan2.1_VAE.pth``) and LightVAE (``lightvaew2_1.pth``).

The network keeps the original Wan module tree, so checkpoints load with their
own key names. Channel widths are read from the checkpoint's tensors, which is
what lets LightVAE (every width x0.25) and tiny synthetic files load through
the same code as the real 96-wide model.

Activations travel as ``[B, T, C, H, W]`` tensors whose memory is
channels-last per frame (``B, T, H, W, C``): a frame batch for a 2-D conv is
then a free view, and temporal slices stay contiguous. Causal caches live in a
per-stream :class:`~scope.pipelines.wan.autoencoders.StreamState`, never on the module.
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

CACHE_T = 2
_REP = "rep"  # marks an upsampling time conv that has seen its first latent

# PyTorch's CPU convolution takes its slow reference path for a single small
# volume (batch * channels * depth * height <= this), where per-tap 2-D
# convolutions over the frame batch are several times faster.
_CPU_CONV3D_MIN_WORK = 20480


# --------------------------------------------------------------------------- helpers


def _empty_frames(b: int, t: int, c: int, h: int, w: int, like: Tensor) -> Tensor:
    """``[B, T, C, H, W]`` whose memory is channels-last per frame."""
    return torch.empty((b, t, h, w, c), device=like.device, dtype=like.dtype).permute(0, 1, 4, 2, 3)


def _as_frames(x: Tensor) -> Tensor:
    """``[B, T, C, H, W]`` -> ``[B*T, C, H, W]`` (a view for our layout)."""
    return x.flatten(0, 1)


def _conv_frames(x: Tensor, weight: Tensor, bias: Tensor | None, **kw) -> Tensor:
    """A 2-D convolution applied to every frame."""
    b, t = x.shape[:2]
    return F.conv2d(_as_frames(x), weight, bias, **kw).unflatten(0, (b, t))


def _temporal_conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int = 1) -> Tensor:
    """Valid (unpadded in time) 3-D convolution of ``x`` ``[B, Tin, C, H, W]``.

    Spatial padding is ``k // 2``. On CPU, for small volumes, the 3-D kernel is
    computed as one 2-D convolution per temporal tap over the frame batch, which
    is the same sum in a different order.
    """
    b, tin, c, h, w = x.shape
    kt, ks = weight.shape[2], weight.shape[3]
    tout = (tin - kt) // stride + 1
    pad = ks // 2
    if x.device.type != "cpu" or b * c * tin * h > _CPU_CONV3D_MIN_WORK:
        y = F.conv3d(x.transpose(1, 2), weight, bias, stride=(stride, 1, 1), padding=(0, pad, pad))
        return y.transpose(1, 2)
    out = None
    for k in range(kt):
        xk = x[:, k : k + stride * (tout - 1) + 1 : stride]
        yk = F.conv2d(xk.reshape(b * tout, c, h, w), weight[:, :, k], bias if k == 0 else None, padding=pad)
        out = yk if out is None else out.add_(yk)
    return out.unflatten(0, (b, tout))


# --------------------------------------------------------------------------- layers


class CausalConv3d(nn.Module):
    """3-D convolution, causal in time, holding the original ``weight``/``bias``.

    With a temporal kernel of 3 it reads the last ``CACHE_T`` frames of its
    input history from the stream cache instead of zero padding, and writes the
    new last two frames back; zeros stand for history before the stream start.
    """

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int, int], slot: int | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_out, c_in, *kernel))
        self.bias = nn.Parameter(torch.empty(c_out))
        self.slot = slot

    def forward(self, x: Tensor, cache: list | None, pre: RMSNorm | None = None) -> Tensor:
        """``pre``: an RMS norm applied (with SiLU) to ``x`` first, written straight
        into the time-padded input so the activation is not copied again."""
        if self.weight.shape[2] == 1:
            if pre is not None:
                x = pre.silu_into(x, torch.empty_like(x))
            return _conv_frames(x, self.weight[:, :, 0], self.bias, padding=self.weight.shape[3] // 2)
        b, t, c, h, w = x.shape
        padded = _empty_frames(b, t + CACHE_T, c, h, w, x)
        history = cache[self.slot] if cache is not None else None
        if history is None or isinstance(history, str):
            padded[:, :CACHE_T].zero_()
        else:
            padded[:, :CACHE_T].copy_(history)
        if pre is None:
            padded[:, CACHE_T:].copy_(x)
        else:
            pre.silu_into(x, padded[:, CACHE_T:])
        if cache is not None:
            cache[self.slot] = padded[:, -CACHE_T:].clone()
        return _temporal_conv(padded, self.weight, self.bias)


class RMSNorm(nn.Module):
    """L2 normalisation over channels times ``sqrt(C) * gamma`` (Wan's RMS_norm)."""

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.empty(dim, 1, 1) if images else torch.empty(dim, 1, 1, 1))
        self.scale = dim**0.5

    def forward(self, x: Tensor) -> Tensor:
        """Frames ``[N, C, H, W]`` (the attention block's norm)."""
        g = self.gamma.reshape(-1, 1, 1) * self.scale
        return F.normalize(x, dim=1).mul_(g)

    def silu_into(self, x: Tensor, out: Tensor) -> Tensor:
        """``silu(norm(x))`` for ``[B, T, C, H, W]`` written into ``out``."""
        g = self.gamma.reshape(-1, 1, 1) * self.scale
        inv = torch.linalg.vector_norm(x, dim=2, keepdim=True).clamp_min_(1e-12).reciprocal_()
        torch.mul(x, inv, out=out)
        return F.silu(out.mul_(g), inplace=True)


class ResidualBlock(nn.Module):
    """norm, SiLU, causal conv, norm, SiLU, causal conv, plus a 1x1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, slots: _Slots) -> None:
        super().__init__()
        # Indices follow the original nn.Sequential so the keys match
        # (residual.0/2/3/6); 1, 4, 5 are SiLU, SiLU and an inactive dropout.
        self.residual = nn.Sequential(
            RMSNorm(c_in),
            nn.SiLU(),
            CausalConv3d(c_in, c_out, (3, 3, 3), slots.take()),
            RMSNorm(c_out),
            nn.SiLU(),
            nn.Identity(),
            CausalConv3d(c_out, c_out, (3, 3, 3), slots.take()),
        )
        self.shortcut = CausalConv3d(c_in, c_out, (1, 1, 1)) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, cache: list | None) -> Tensor:
        r = self.residual
        skip = self.shortcut(x, None) if isinstance(self.shortcut, CausalConv3d) else x
        h = r[2](x, cache, pre=r[0])
        h = r[6](h, cache, pre=r[3])
        return h.add_(skip)


class AttentionBlock(nn.Module):
    """Single-head self-attention inside each frame (mid blocks only)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor, cache: list | None = None) -> Tensor:
        """``cache`` is unused: attention stays inside each frame."""
        b, t, c, h, w = x.shape
        frames = _as_frames(x)
        qkv = self.to_qkv(self.norm(frames))
        # [N, 3C, h, w] channels-last -> tokens [N, 1, h*w, 3C] without a copy
        tokens = qkv.permute(0, 2, 3, 1).reshape(b * t, 1, h * w, 3 * c)
        q, k, v = (part.contiguous() for part in tokens.chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.reshape(b * t, h, w, c).permute(0, 3, 1, 2)
        return self.proj(out).unflatten(0, (b, t)).add_(x)


class Resample(nn.Module):
    """Spatial 2x down/up sampling, optionally with a causal time conv.

    ``downsample3d`` halves time with a stride-2 (3,1,1) conv over the last
    stored frame and the new ones; its first call only stores. ``upsample3d``
    doubles time with a conv to 2C channels interleaved into frames; its first
    call (the stream's first latent) skips it, so latent 0 gives one frame.
    """

    def __init__(self, dim: int, out_dim: int, mode: str, slots: _Slots) -> None:
        super().__init__()
        self.mode = mode
        stride = 2 if mode.startswith("down") else 1
        pad = 0 if stride == 2 else 1
        self.resample = nn.Sequential(nn.Identity(), nn.Conv2d(dim, out_dim, 3, stride=stride, padding=pad))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), slots.take())
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), slots.take())

    def forward(self, x: Tensor, cache: list | None) -> Tensor:
        if self.mode == "upsample3d":
            x = self._time_up(x, cache)
        conv = self.resample[1]
        b, t = x.shape[:2]
        if self.mode.startswith("up"):
            # nearest is an exact copy in any dtype, so no float32 round trip
            up = F.interpolate(_as_frames(x), scale_factor=2.0, mode="nearest-exact")
            x = F.conv2d(up, conv.weight, conv.bias, padding=1).unflatten(0, (b, t))
        else:
            padded = F.pad(_as_frames(x), (0, 1, 0, 1))
            x = F.conv2d(padded, conv.weight, conv.bias, stride=2).unflatten(0, (b, t))
        if self.mode == "downsample3d":
            x = self._time_down(x, cache)
        return x

    def _time_up(self, x: Tensor, cache: list | None) -> Tensor:
        slot = self.time_conv.slot
        if cache is not None and cache[slot] is None:
            cache[slot] = _REP
            return x
        y = self.time_conv(x, cache)  # [B, T, 2C, h, w]
        b, t, c2, h, w = y.shape
        c = c2 // 2
        # channels [0:C] become frame 2t, [C:2C] frame 2t+1
        pairs = y.permute(0, 1, 3, 4, 2).reshape(b, t, h, w, 2, c).permute(0, 1, 4, 2, 3, 5)
        out = _empty_frames(b, 2 * t, c, h, w, y)
        out.permute(0, 1, 3, 4, 2).view(b, t, 2, h, w, c).copy_(pairs)
        return out

    def _time_down(self, x: Tensor, cache: list | None) -> Tensor:
        if cache is None:
            raise ValueError("the Wan encoder needs a cache: it runs on frame 0 first, then groups of 4")
        slot = self.time_conv.slot
        last = cache[slot]
        cache[slot] = x[:, -1:].clone()
        if last is None:
            return x
        b, t, c, h, w = x.shape
        joined = _empty_frames(b, t + 1, c, h, w, x)
        joined[:, :1].copy_(last)
        joined[:, 1:].copy_(x)
        return _temporal_conv(joined, self.time_conv.weight, self.time_conv.bias, stride=2)


class _Slots:
    """Hands out cache slot numbers in call order while the network is built."""

    def __init__(self) -> None:
        self.count = 0

    def take(self) -> int:
        self.count += 1
        return self.count - 1


# --------------------------------------------------------------------------- network


@dataclass(frozen=True)
class WanVAEWidths:
    """Channel plan of one checkpoint.

    ``encoder``: conv1 output then the four level outputs (96, 96, 192, 384,
    384 for the real model). ``decoder``: conv1 output then the four level
    outputs (384, 384, 384, 192, 96). ``upsample``: outputs of the three
    spatial upsampling convs (192, 192, 96), which feed the next level.
    """

    encoder: tuple[int, int, int, int, int]
    decoder: tuple[int, int, int, int, int]
    upsample: tuple[int, int, int]

    @classmethod
    def from_base(cls, base: int) -> WanVAEWidths:
        """The unpruned plan ``base x [1, 2, 4, 4]`` (96: Wan2.1, 24: LightVAE)."""
        return cls(
            encoder=(base, base, 2 * base, 4 * base, 4 * base),
            decoder=(4 * base, 4 * base, 4 * base, 2 * base, base),
            upsample=(2 * base, 2 * base, base),
        )


ENCODER_TEMPORAL_DOWN = (False, True, True)
DECODER_TEMPORAL_UP = (True, True, False)


class Encoder(nn.Module):
    """Four levels of two residual blocks; spatial 8x and temporal 4x (after
    the causal first frame) downsampling; mid attention; 2 x z_dim outputs."""

    def __init__(self, widths: tuple[int, ...], z2: int) -> None:
        super().__init__()
        slots = _Slots()
        self.conv1 = CausalConv3d(3, widths[0], (3, 3, 3), slots.take())
        blocks: list[nn.Module] = []
        c_in = widths[0]
        for level in range(4):
            c_out = widths[level + 1]
            for _ in range(2):
                blocks.append(ResidualBlock(c_in, c_out, slots))
                c_in = c_out
            if level < 3:
                mode = "downsample3d" if ENCODER_TEMPORAL_DOWN[level] else "downsample2d"
                blocks.append(Resample(c_out, c_out, mode, slots))
        self.downsamples = nn.Sequential(*blocks)
        self.middle = nn.Sequential(ResidualBlock(c_in, c_in, slots), AttentionBlock(c_in), ResidualBlock(c_in, c_in, slots))
        self.head = nn.Sequential(RMSNorm(c_in), nn.SiLU(), CausalConv3d(c_in, z2, (3, 3, 3), slots.take()))
        self.num_slots = slots.count

    def forward(self, x: Tensor, cache: list) -> Tensor:
        x = self.conv1(x, cache)
        for block in self.downsamples:
            x = block(x, cache)
        for block in self.middle:
            x = block(x, cache)
        return self.head[2](x, cache, pre=self.head[0])


class Decoder(nn.Module):
    """Mirror of the encoder with three residual blocks per level; the
    upsampling convs halve channels (the ``in_dim // 2`` of levels 1..3)."""

    def __init__(self, widths: tuple[int, ...], upsample: tuple[int, ...], z_dim: int) -> None:
        super().__init__()
        slots = _Slots()
        self.conv1 = CausalConv3d(z_dim, widths[0], (3, 3, 3), slots.take())
        c = widths[0]
        self.middle = nn.Sequential(ResidualBlock(c, c, slots), AttentionBlock(c), ResidualBlock(c, c, slots))
        blocks: list[nn.Module] = []
        c_in = c
        for level in range(4):
            c_out = widths[level + 1]
            for _ in range(3):
                blocks.append(ResidualBlock(c_in, c_out, slots))
                c_in = c_out
            if level < 3:
                mode = "upsample3d" if DECODER_TEMPORAL_UP[level] else "upsample2d"
                blocks.append(Resample(c_out, upsample[level], mode, slots))
                c_in = upsample[level]
        self.upsamples = nn.Sequential(*blocks)
        self.head = nn.Sequential(RMSNorm(c_in), nn.SiLU(), CausalConv3d(c_in, 3, (3, 3, 3), slots.take()))
        self.num_slots = slots.count

    def forward(self, x: Tensor, cache: list) -> Tensor:
        x = self.conv1(x, cache)
        for block in self.middle:
            x = block(x, cache)
        for block in self.upsamples:
            x = block(x, cache)
        return self.head[2](x, cache, pre=self.head[0])


class WanVAENet(nn.Module):
    """The module tree of ``Wan2.1_VAE.pth`` (``conv1`` = quant conv on the
    encoder output, ``conv2`` = post-quant conv before the decoder)."""

    def __init__(self, widths: WanVAEWidths, z_dim: int = LATENT_CHANNELS) -> None:
        super().__init__()
        self.widths = widths
        self.z_dim = z_dim
        self.encoder = Encoder(widths.encoder, 2 * z_dim)
        self.conv1 = CausalConv3d(2 * z_dim, 2 * z_dim, (1, 1, 1))
        self.conv2 = CausalConv3d(z_dim, z_dim, (1, 1, 1))
        self.decoder = Decoder(widths.decoder, widths.upsample, z_dim)


def infer_widths(state_dict: dict[str, Tensor], path: Path) -> WanVAEWidths:
    """Read the channel plan from the conv weights that define each width."""

    def out(key: str) -> int:
        return int(require(state_dict, key, path, 5 if "resample" not in key else 4)[0])

    enc_levels = [out(f"encoder.downsamples.{i}.residual.2.weight") for i in (0, 3, 6, 9)]
    dec_levels = [out(f"decoder.upsamples.{i}.residual.2.weight") for i in (0, 4, 8, 12)]
    return WanVAEWidths(
        encoder=(out("encoder.conv1.weight"), *enc_levels),
        decoder=(out("decoder.conv1.weight"), *dec_levels),
        upsample=tuple(out(f"decoder.upsamples.{i}.resample.1.weight") for i in (3, 7, 11)),
    )


# --------------------------------------------------------------------------- streaming wrapper


class WanVAE(VideoAutoencoder):
    """Streaming Wan2.1 VAE / LightVAE with the shared interface."""

    shares_control_cache = True

    def __init__(self, net: WanVAENet) -> None:
        super().__init__()
        self.net = net

    @property
    def widths(self) -> WanVAEWidths:
        return self.net.widths

    def new_state(self) -> StreamState:
        return StreamState(self.net.encoder.num_slots, self.net.decoder.num_slots)

    # ---- encode

    def _mu(self, frames: Tensor) -> Tensor:
        """Quant conv on the encoder output, keeping only the mean half."""
        w = self.net.conv1.weight[: self.net.z_dim, :, 0]
        return _conv_frames(frames, w, self.net.conv1.bias[: self.net.z_dim])

    def _finish_encode(self, outs: list[Tensor], normalize: bool) -> Tensor:
        mu = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        if normalize:
            mu = self.normalize_latents(mu)
        return mu.contiguous()

    def _input(self, video: Tensor) -> Tensor:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video [B, 3, T, H, W], got {tuple(video.shape)}")
        return video.to(device=self.device, dtype=self.dtype).transpose(1, 2)

    def _run_encoder(self, x: Tensor, cache: list, first: bool) -> list[Tensor]:
        """Frame 0 alone when the cache is fresh, then groups of 4 frames.

        Once frame 0 has gone alone, groups of 4 give the same latents as one
        call over all frames, with activations small enough to stay in the CPU's
        caches. A first chunk whose remainder is not a multiple of 4 goes in one
        call, as upstream does.
        """
        outs = []
        start = 0
        if first:
            outs.append(self._mu(self.net.encoder(x[:, :1], cache)))
            start = 1
        step = 4 if (x.shape[1] - start) % 4 == 0 else x.shape[1]
        for i in range(start, x.shape[1], step):
            outs.append(self._mu(self.net.encoder(x[:, i : i + step], cache)))
        return outs

    @torch.no_grad()
    def stream_encode(self, video: Tensor, state: StreamState, *, normalize: bool = True) -> Tensor:
        """First chunk: frame 0 alone, then the rest (1 + 4k frames -> 1 + k
        latents). Later chunks: 4k frames -> k latents. Leaves ``first_batch``."""
        x = self._input(video)
        t = x.shape[1]
        first = state.first_batch
        if first:
            state.reset_encoder()
        elif t == 0 or t % 4:
            raise ValueError(f"a later chunk must hold a multiple of 4 frames, got {t}")
        return self._finish_encode(self._run_encoder(x, state.encoder, first), normalize)

    @torch.no_grad()
    def encode(self, video: Tensor, *, normalize: bool = True) -> Tensor:
        """Frame 0, then the next ``4k`` frames (extra trailing frames are dropped,
        as upstream's 1 + 4 + 4 ... grouping does)."""
        x = self._input(video)
        k = (x.shape[1] - 1) // 4
        cache: list = [None] * self.net.encoder.num_slots
        return self._finish_encode(self._run_encoder(x[:, : 1 + 4 * k], cache, True), normalize)

    # ---- decode

    def _prepare_latents(self, latents: Tensor) -> Tensor:
        if latents.ndim != 5 or latents.shape[2] != self.net.z_dim:
            raise ValueError(f"expected latents [B, F, {self.net.z_dim}, h, w], got {tuple(latents.shape)}")
        z = self.denormalize_latents(latents.to(device=self.device, dtype=self.dtype))
        b, f, c, h, w = z.shape
        frames = _empty_frames(b, f, c, h, w, z)
        frames.copy_(z)
        return self.net.conv2(frames, None)

    def _run_decoder(self, z: Tensor, cache: list) -> Tensor:
        """Latent by latent (4 frames each; 1 for a fresh cache's first latent).

        The result equals decoding all latents after the first in one call, but
        per-latent activations are small enough to stay in the CPU's caches and
        to be reused by the allocator. Frames are written as float32, then
        clamped to [-1, 1].
        """
        outs = [self.net.decoder(z[:, i : i + 1], cache) for i in range(z.shape[1])]
        b, _, c, h, w = outs[0].shape
        total = sum(o.shape[1] for o in outs)
        frames = torch.empty((b, total, h, w, c), device=z.device, dtype=torch.float32).permute(0, 1, 4, 2, 3)
        t = 0
        for o in outs:
            frames[:, t : t + o.shape[1]].copy_(o)
            t += o.shape[1]
        return frames.clamp_(-1.0, 1.0)

    @torch.no_grad()
    def stream_decode(self, latents: Tensor, state: StreamState) -> Tensor:
        """First chunk: latent 0 gives 1 frame, each further latent 4 (3 -> 9);
        later chunks: 4 frames per latent with the caches carried over."""
        z = self._prepare_latents(latents)
        if state.first_batch:
            state.reset_decoder()
            state.first_batch = False
        return self._run_decoder(z, state.decoder)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        z = self._prepare_latents(latents)
        return self._run_decoder(z, [None] * self.net.decoder.num_slots)


def load_wan_vae(path: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> WanVAE:
    """Load a Wan2.1 VAE or LightVAE checkpoint; widths come from its tensors."""
    state_dict = read_checkpoint(path)
    widths = infer_widths(state_dict, Path(path))
    net = load_strict(lambda: WanVAENet(widths), state_dict, Path(path), device=device, dtype=dtype)
    return WanVAE(net).to(device=device, dtype=dtype)
