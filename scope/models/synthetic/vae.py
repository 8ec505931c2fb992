"""Tiny, seeded autoencoder checkpoints in the real file layouts.

The key names and tensor ranks are those of ``Wan2.1_VAE.pth`` /
``lightvaew2_1.pth`` (original Wan naming) and ``taew2_1.pth`` /
``lighttaew2_1.pth`` (TAEHV ``nn.Sequential`` indices); only the channel
widths are small. The loaders infer widths from the tensors, so these files
exercise exactly the code that reads the real ones.

Initialisation aims at outputs that are finite and show structure: convs are
scaled by their fan-in, RMS-norm gains sit near one, and temporal resampling
convs start near identity plus noise, so decoded frames vary smoothly in time
and differ between different latents.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

# Synthetic widths, chosen so that decoding 12 frames at 576x320 stays well
# under the real-time budget on a 2-core CPU (about 0.45 s for the Wan VAE,
# 0.3 s for LightVAE and 0.07 s for TAE in float32). Base 4 is also the
# narrowest Wan width whose RMS norms are well enough conditioned to match the
# library decoder to ~1e-5.
WAN_VAE_SYNTHETIC_BASE_DIM = 4  # the real model uses 96
LIGHTVAE_SYNTHETIC_BASE_DIM = 2  # the real LightVAE is 96 x 0.25 = 24
TAE_SYNTHETIC_ENCODER_WIDTH = 8  # the real TAE uses 64
TAE_SYNTHETIC_DECODER_WIDTHS = (32, 16, 8, 8)  # the real TAE uses (256, 128, 64, 64)
LATENT_CHANNELS = 16


# --------------------------------------------------------------------------- Wan VAE layout


def wan_vae_layout(base_dim: int, z_dim: int = LATENT_CHANNELS) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a Wan2.1 VAE with base width ``base_dim`` (96 for the
    real file, 24 for LightVAE), in the original module order."""
    enc = [base_dim * m for m in (1, 1, 2, 4, 4)]
    dec = [base_dim * m for m in (4, 4, 4, 2, 1)]
    layout: dict[str, tuple[int, ...]] = {}

    def conv3(name: str, c_in: int, c_out: int, kernel=(3, 3, 3)) -> None:
        layout[f"{name}.weight"] = (c_out, c_in, *kernel)
        layout[f"{name}.bias"] = (c_out,)

    def residual(name: str, c_in: int, c_out: int) -> None:
        layout[f"{name}.residual.0.gamma"] = (c_in, 1, 1, 1)
        conv3(f"{name}.residual.2", c_in, c_out)
        layout[f"{name}.residual.3.gamma"] = (c_out, 1, 1, 1)
        conv3(f"{name}.residual.6", c_out, c_out)
        if c_in != c_out:
            conv3(f"{name}.shortcut", c_in, c_out, (1, 1, 1))

    def middle(name: str, c: int) -> None:
        residual(f"{name}.0", c, c)
        layout[f"{name}.1.norm.gamma"] = (c, 1, 1)
        layout[f"{name}.1.to_qkv.weight"] = (3 * c, c, 1, 1)
        layout[f"{name}.1.to_qkv.bias"] = (3 * c,)
        layout[f"{name}.1.proj.weight"] = (c, c, 1, 1)
        layout[f"{name}.1.proj.bias"] = (c,)
        residual(f"{name}.2", c, c)

    def head(name: str, c_in: int, c_out: int) -> None:
        layout[f"{name}.0.gamma"] = (c_in, 1, 1, 1)
        conv3(f"{name}.2", c_in, c_out)

    conv3("encoder.conv1", 3, enc[0])
    index, c_in = 0, enc[0]
    for level in range(4):
        c_out = enc[level + 1]
        for _ in range(2):
            residual(f"encoder.downsamples.{index}", c_in, c_out)
            index, c_in = index + 1, c_out
        if level < 3:
            layout[f"encoder.downsamples.{index}.resample.1.weight"] = (c_out, c_out, 3, 3)
            layout[f"encoder.downsamples.{index}.resample.1.bias"] = (c_out,)
            if level > 0:
                conv3(f"encoder.downsamples.{index}.time_conv", c_out, c_out, (3, 1, 1))
            index += 1
    middle("encoder.middle", c_in)
    head("encoder.head", c_in, 2 * z_dim)
    conv3("conv1", 2 * z_dim, 2 * z_dim, (1, 1, 1))
    conv3("conv2", z_dim, z_dim, (1, 1, 1))

    conv3("decoder.conv1", z_dim, dec[0])
    middle("decoder.middle", dec[0])
    index, c_in = 0, dec[0]
    for level in range(4):
        c_out = dec[level + 1]
        for _ in range(3):
            residual(f"decoder.upsamples.{index}", c_in, c_out)
            index, c_in = index + 1, c_out
        if level < 3:
            layout[f"decoder.upsamples.{index}.resample.1.weight"] = (c_out // 2, c_out, 3, 3)
            layout[f"decoder.upsamples.{index}.resample.1.bias"] = (c_out // 2,)
            if level < 2:
                conv3(f"decoder.upsamples.{index}.time_conv", c_out, 2 * c_out, (3, 1, 1))
            index, c_in = index + 1, c_out // 2
    head("decoder.head", c_in, 3)
    return layout


def _fan_in(shape: tuple[int, ...]) -> int:
    return math.prod(shape[1:])


def _wan_tensor(key: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    if key.endswith("gamma"):
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if key.endswith("bias"):
        return 0.02 * torch.randn(shape, generator=gen)
    weight = torch.randn(shape, generator=gen) / math.sqrt(_fan_in(shape))
    if key.endswith("time_conv.weight"):
        # near identity on the newest frame: smooth motion between frames
        c_out, c_in = shape[:2]
        weight *= 0.3
        for half in range(c_out // c_in):
            weight[half * c_in : (half + 1) * c_in, :, -1, 0, 0] += torch.eye(c_in)
    elif key in ("conv1.weight", "conv2.weight"):
        weight = 0.2 * weight + torch.eye(shape[0]).view(shape)
    elif key.endswith("proj.weight") or key.endswith("residual.6.weight"):
        weight *= 0.5
    elif key == "decoder.head.2.weight":
        weight *= 0.6
    return weight


def wan_vae_state_dict(base_dim: int, seed: int, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """A seeded Wan2.1 VAE state dict at ``base_dim`` (shapes only on ``meta``)."""
    layout = wan_vae_layout(base_dim)
    if torch.device(device).type == "meta":
        return {key: torch.empty(shape, device="meta") for key, shape in layout.items()}
    gen = torch.Generator().manual_seed(seed)
    return {key: _wan_tensor(key, shape, gen).to(device) for key, shape in layout.items()}


def write_wan_vae(path: Path, seed: int, base_dim: int = WAN_VAE_SYNTHETIC_BASE_DIM) -> Path:
    """Write a synthetic ``Wan2.1_VAE.pth``."""
    return _save(wan_vae_state_dict(base_dim, seed), path)


def write_lightvae(path: Path, seed: int, base_dim: int = LIGHTVAE_SYNTHETIC_BASE_DIM) -> Path:
    """Write a synthetic ``lightvaew2_1.pth`` (the Wan layout at pruned widths)."""
    return _save(wan_vae_state_dict(base_dim, seed), path)


# --------------------------------------------------------------------------- TAE layout


def tae_layout(
    encoder_width: int = TAE_SYNTHETIC_ENCODER_WIDTH,
    decoder_widths: tuple[int, int, int, int] = TAE_SYNTHETIC_DECODER_WIDTHS,
    latent_channels: int = LATENT_CHANNELS,
    first_tgrow_factor: int = 1,
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a TAEHV-for-Wan2.1 checkpoint.

    ``first_tgrow_factor > 1`` stores the first (stride-1) TGrow with that many
    times its output channels, as checkpoints trained with a temporal upscale
    there do; the loader keeps the last block.
    """
    e = encoder_width
    n0, n1, n2, n3 = decoder_widths
    layout: dict[str, tuple[int, ...]] = {}

    def conv(name: str, c_in: int, c_out: int, k: int = 3, bias: bool = True) -> None:
        layout[f"{name}.weight"] = (c_out, c_in, k, k)
        if bias:
            layout[f"{name}.bias"] = (c_out,)

    def memblock(name: str, c: int) -> None:
        conv(f"{name}.conv.0", 2 * c, c)
        conv(f"{name}.conv.2", c, c)
        conv(f"{name}.conv.4", c, c)

    conv("encoder.0", 3, e)
    index = 2
    for stride in (2, 2, 1):
        conv(f"encoder.{index}.conv", e * stride, e, 1, bias=False)
        conv(f"encoder.{index + 1}", e, e, bias=False)
        for j in range(3):
            memblock(f"encoder.{index + 2 + j}", e)
        index += 5
    conv(f"encoder.{index}", e, latent_channels)

    conv("decoder.1", latent_channels, n0)
    index = 3
    for c_in, c_out, stride in ((n0, n1, 1), (n1, n2, 2), (n2, n3, 2)):
        for j in range(3):
            memblock(f"decoder.{index + j}", c_in)
        rows = c_in * (first_tgrow_factor if index == 3 else stride)
        conv(f"decoder.{index + 4}.conv", c_in, rows, 1, bias=False)
        conv(f"decoder.{index + 5}", c_in, c_out, bias=False)
        index += 6
    conv(f"decoder.{index + 1}", n3, 3)
    return layout


def _tae_tensor(key: str, shape: tuple[int, ...], gen: torch.Generator, latent_channels: int) -> Tensor:
    if key.endswith("bias"):
        if key == "decoder.22.bias":
            return 0.5 + 0.05 * torch.randn(shape, generator=gen)
        return 0.02 * torch.randn(shape, generator=gen)
    fan_in = _fan_in(shape)
    weight = torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)
    c_out, c_in = shape[:2]
    if shape[2] == 1:
        # TPool / TGrow: average (pool) or copy (grow) frames, plus noise
        weight *= 0.2
        if c_in > c_out:
            eye = torch.eye(c_out).repeat(1, c_in // c_out) * (c_out / c_in)
        else:
            eye = torch.eye(c_in).repeat(c_out // c_in, 1)
        weight += eye.view(c_out, c_in, 1, 1)
    elif key.endswith("conv.4.weight"):
        weight *= 0.3
    elif key == "decoder.22.weight":
        # zero-mean taps: the post-ReLU input has a positive mean that would
        # otherwise push whole channels into the [0, 1] clamp
        weight = 0.1 * (weight - weight.mean(dim=(1, 2, 3), keepdim=True))
    elif shape[0] == latent_channels and key.startswith("encoder."):
        weight *= 0.5
    return weight


def tae_state_dict(
    seed: int,
    encoder_width: int = TAE_SYNTHETIC_ENCODER_WIDTH,
    decoder_widths: tuple[int, int, int, int] = TAE_SYNTHETIC_DECODER_WIDTHS,
    first_tgrow_factor: int = 1,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """A seeded TAE state dict (shapes only on ``meta``)."""
    layout = tae_layout(encoder_width, decoder_widths, LATENT_CHANNELS, first_tgrow_factor)
    if torch.device(device).type == "meta":
        return {key: torch.empty(shape, device="meta") for key, shape in layout.items()}
    gen = torch.Generator().manual_seed(seed)
    return {key: _tae_tensor(key, shape, gen, LATENT_CHANNELS).to(device) for key, shape in layout.items()}


def write_tae(
    path: Path,
    seed: int,
    encoder_width: int = TAE_SYNTHETIC_ENCODER_WIDTH,
    decoder_widths: tuple[int, int, int, int] = TAE_SYNTHETIC_DECODER_WIDTHS,
) -> Path:
    """Write a synthetic ``taew2_1.pth``."""
    return _save(tae_state_dict(seed, encoder_width, decoder_widths), path)


def write_lighttae(
    path: Path,
    seed: int,
    encoder_width: int = TAE_SYNTHETIC_ENCODER_WIDTH,
    decoder_widths: tuple[int, int, int, int] = TAE_SYNTHETIC_DECODER_WIDTHS,
) -> Path:
    """Write a synthetic ``lighttaew2_1.pth``; its first TGrow is stored twice
    as wide so the loader's channel cut is exercised."""
    return _save(tae_state_dict(seed, encoder_width, decoder_widths, first_tgrow_factor=2), path)


def _save(state_dict: dict[str, Tensor], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in state_dict.items()}, path)
    return path
