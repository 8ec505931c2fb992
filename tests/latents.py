"""Seeded random latents shared by the autoencoder tests."""

import torch

#: Latent size of the autoencoder tests: 64x96 pixels keeps every test fast on CPU.
H, W = 8, 12


def random_latents(n: int, seed: int) -> torch.Tensor:
    """``[1, n, 16, H, W]`` standard normal latents, the same for the same seed."""
    return torch.randn(1, n, 16, H, W, generator=torch.Generator().manual_seed(seed))
