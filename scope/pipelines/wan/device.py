"""Where the Wan pipelines compute: CUDA in bfloat16 when available, else CPU in float32."""

from __future__ import annotations

import torch


def compute_device() -> tuple[torch.device, torch.dtype]:
    """The device and compute dtype chosen at load time."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32
