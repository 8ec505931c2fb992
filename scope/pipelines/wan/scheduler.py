"""The few-step flow-matching schedule, exactly as the reference applies it.

The model is fed raw timesteps from the step list (e.g. 750); the noise level of a timestep is
looked up in a 1000-entry table of shifted sigmas by nearest match, so the shift only changes
the quantisation of the grid. Predictions are velocities; ``x0 = x_t - sigma * v`` in float64.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


class FlowMatchSchedule:
    """Sigma lookup, x0 conversion and re-noising for one timestep shift."""

    def __init__(self, shift: float):
        self.shift = float(shift)
        base = torch.linspace(1.0, 0.0, NUM_TRAIN_TIMESTEPS + 1, dtype=torch.float64)[:-1]
        self.sigmas = self.shift * base / (1.0 + (self.shift - 1.0) * base)
        self.timesteps = self.sigmas * NUM_TRAIN_TIMESTEPS

    def sigma(self, timestep: float | int | torch.Tensor) -> torch.Tensor:
        """Noise level of each timestep: the table entry whose timestep is nearest (float64)."""
        t = torch.as_tensor(timestep, dtype=torch.float64).cpu()
        index = (self.timesteps - t.reshape(-1, 1)).abs().argmin(dim=1)
        return self.sigmas[index].reshape(t.shape)

    def to_x0(self, flow: torch.Tensor, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """``x0 = x_t - sigma(t) * v`` per frame; ``timestep`` is ``[B, F]``, latents ``[B, F, ...]``."""
        sigma = self.sigma(timestep).to(x_t.device)
        sigma = sigma.reshape(*sigma.shape, *([1] * (x_t.dim() - sigma.dim())))
        x0 = x_t.double() - sigma * flow.double()
        return x0.to(x_t.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timestep: float | int) -> torch.Tensor:
        """``(1 - sigma) * x0 + sigma * noise`` at one timestep (the re-noise between steps)."""
        sigma = float(self.sigma(timestep))
        return (1.0 - sigma) * x0 + sigma * noise
