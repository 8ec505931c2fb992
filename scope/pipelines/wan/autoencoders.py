"""The one interface every pipeline uses for its video autoencoder.

Four autoencoders share it: the Wan2.1 VAE, LightVAE (the same network with
pruned widths), TAE and LightTAE. Weights live in the module and are shared by
every stream; everything that evolves over a stream (causal caches, block
memories, the ``first_batch`` flag) lives in a state object from
:meth:`VideoAutoencoder.new_state`, so two streams over one module never
interact.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from scope.pipelines.wan.loading import CheckpointError, read_state_dict, require_tensors
from scope.pipelines.wan.loading import load_strict as strict_load

# Per-channel statistics of the Wan2.1 latent space (the Wan repo's constants). The generator
# works in the normalised space ``(mu - mean) / std``.
WAN_LATENT_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN_LATENT_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

LATENT_CHANNELS = 16

# vae_type -> (folder under the models directory, file name). The Wan VAE is
# identical for the 1.3B and 14B models, so it is always read from the 1.3B
# folder (the 14B folder is never downloaded).
VAE_FILES: dict[str, tuple[str, str]] = {
    "wan": ("Wan2.1-T2V-1.3B", "Wan2.1_VAE.pth"),
    "lightvae": ("Autoencoders", "lightvaew2_1.pth"),
    "tae": ("Autoencoders", "taew2_1.pth"),
    "lighttae": ("Autoencoders", "lighttaew2_1.pth"),
}


#: A VAE checkpoint that cannot be loaded; the message names the file (and the key).
VAELoadError = CheckpointError


class StreamState:
    """What one stream carries between calls: the encoder's and the decoder's
    cache slots, and the ``first_batch`` flag.

    ``first_batch`` is shared by encode and decode and is cleared only by
    decode, so within one pipeline call the encoder and the decoder both see
    the first chunk. :meth:`reset` is the upstream ``clear_cache()``.
    """

    def __init__(self, encoder_slots: int = 0, decoder_slots: int = 0) -> None:
        self._sizes = (encoder_slots, decoder_slots)
        self.first_batch = True
        self.encoder: list = [None] * encoder_slots
        self.decoder: list = [None] * decoder_slots

    def reset(self) -> None:
        self.first_batch = True
        self.reset_encoder()
        self.reset_decoder()

    def reset_encoder(self) -> None:
        self.encoder = [None] * self._sizes[0]

    def reset_decoder(self) -> None:
        self.decoder = [None] * self._sizes[1]


class VideoAutoencoder(nn.Module, ABC):
    """Shared weights plus the streaming encode/decode contract.

    Shapes: pixels go in as ``[B, 3, T, H, W]`` in [-1, 1]; latents are
    ``[B, F, 16, H/8, W/8]`` in the generator's normalised space; decoded
    frames come out as ``[B, T, 3, H, W]`` float32 clamped to [-1, 1].
    """

    latent_channels = LATENT_CHANNELS
    spatial_factor = 8
    temporal_factor = 4
    #: Whether the reference encodes VACE's two control streams through the stream's one
    #: encoder cache (its Wan VAE wrapper ignores the separate caches it is handed; TAE keeps them).
    shares_control_cache = False

    def __init__(self) -> None:
        super().__init__()
        # buffers, so the statistics follow the module's device and dtype and no
        # host-to-device copy happens per call
        stats = {"latent_mean": WAN_LATENT_MEAN, "latent_std": WAN_LATENT_STD}
        for name, values in stats.items():
            self.register_buffer(name, torch.tensor(values).view(-1, 1, 1), persistent=False)

    @abstractmethod
    def new_state(self) -> StreamState:
        """Fresh per-stream state; any number may exist over one module."""

    @abstractmethod
    def stream_encode(self, video: Tensor, state: StreamState, *, normalize: bool = True) -> Tensor:
        """Encode the next chunk of a stream. ``normalize=False`` returns the raw
        latent mean (StreamDiffusionV2's encoder skips the normalisation)."""

    @abstractmethod
    def stream_decode(self, latents: Tensor, state: StreamState) -> Tensor:
        """Decode the next chunk of a stream; clears ``state.first_batch``."""

    @abstractmethod
    def encode(self, video: Tensor, *, normalize: bool = True) -> Tensor:
        """One-shot encode with throw-away caches; no stream state is touched."""

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """One-shot decode with throw-away caches."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def normalize_latents(self, mu: Tensor) -> Tensor:
        """``(mu - mean) / std`` over ``[..., 16, h, w]``."""
        return (mu - self.latent_mean.to(mu.dtype)) / self.latent_std.to(mu.dtype)

    def denormalize_latents(self, z: Tensor) -> Tensor:
        """``z * std + mean`` over ``[..., 16, h, w]``."""
        return z * self.latent_std.to(z.dtype) + self.latent_mean.to(z.dtype)


def vae_path(models_dir: Path, vae_type: str) -> Path:
    """Where the checkpoint for ``vae_type`` lives under ``models_dir``."""
    try:
        folder, name = VAE_FILES[vae_type]
    except KeyError:
        raise ValueError(f"unknown vae_type {vae_type!r}; expected one of {sorted(VAE_FILES)}") from None
    return Path(models_dir) / folder / name


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    """Read a flat ``{name: tensor}`` checkpoint without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VAE checkpoint not found: {path}")
    return require_tensors(read_state_dict(path), path, "autoencoder")


def require(state_dict: Mapping[str, Tensor], key: str, path: Path, ndim: int) -> torch.Size:
    """Shape of a tensor the architecture is inferred from, or a clear error."""
    if key not in state_dict:
        raise VAELoadError(f"{path}: missing key {key!r}")
    shape = state_dict[key].shape
    if len(shape) != ndim:
        raise VAELoadError(f"{path}: key {key!r} has shape {tuple(shape)}, expected {ndim} dimensions")
    return shape


def load_strict(
    build: Callable[[], nn.Module],
    state_dict: Mapping[str, Tensor],
    path: Path,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
) -> nn.Module:
    """Build on ``meta``, load every key strictly (errors name the file and key), then place it."""
    with torch.device("meta"):
        module = build()
    tensors = {k: v.to(dtype=dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    strict_load(module, tensors, path)
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_vae(
    vae_type: str,
    models_dir: Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> VideoAutoencoder:
    """Load the autoencoder named by ``vae_type`` from its standard location."""
    path = vae_path(models_dir, vae_type)
    if vae_type in ("wan", "lightvae"):
        from scope.pipelines.wan.vae import load_wan_vae

        return load_wan_vae(path, device=device, dtype=dtype)
    from scope.pipelines.wan.tae import load_tae

    return load_tae(path, normalized=vae_type == "lighttae", device=device, dtype=dtype)
