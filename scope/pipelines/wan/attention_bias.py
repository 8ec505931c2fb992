"""Krea's KV-cache attention bias: lean less on the cached past than on the first frame.

Krea Realtime Video adds ``log(bias)`` (``kv_cache_attention_bias``, 0.01..1.0) to the attention
logits of every cached key except those of the window's first frame and of the chunk being
denoised; a bias below 1 damps what errors in recent frames can feed forward. The reference
computes it with flex attention over q/k/v zero-padded to a multiple of 128 tokens and masks
none of the padding, so each padded key takes part in the softmax with a zero logit and a
zero value. That dilution is part of the numbers the reference gives (about 4 % on pixels at
24 tokens per frame), so it is reproduced by default; ``mask_padding`` leaves it out.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

#: The reference's flex-attention alignment: q/k/v are padded to a multiple of this many tokens.
REFERENCE_PADDING = 128
#: A bias of 1 changes nothing: the reference then takes its plain attention path (no padding).
NO_BIAS = 1.0


@dataclass(frozen=True)
class CacheAttentionBias:
    """How one denoising forward biases its attention over the cached window.

    ``frame_seq_len``: tokens per latent frame; ``current_frames``: frames at the window's end
    left unbiased (the reference takes the pipeline's frames per chunk); ``mask_padding``:
    attend to the real keys only instead of the reference's unmasked zero padding.
    """

    bias: float
    frame_seq_len: int
    current_frames: int
    mask_padding: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.bias <= 1.0:
            raise ValueError(f"kv_cache_attention_bias must lie in (0, 1], got {self.bias}")

    @property
    def log_bias(self) -> float:
        return math.log(self.bias)

    def apply(
        self, q_len: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys and values ``[B, L, H, D]`` (padded as the reference pads them) and the additive
        logit mask ``[1, 1, 1, L']`` to attend with."""
        kv_len = k.shape[1]
        total = kv_len
        if not self.mask_padding:
            total = math.ceil(max(q_len, kv_len) / REFERENCE_PADDING) * REFERENCE_PADDING
        end = kv_len - self.current_frames * self.frame_seq_len
        mask = _logit_mask(total, self.frame_seq_len, end, self.log_bias, k.device, k.dtype)
        if total > kv_len:
            zeros = k.new_zeros(k.shape[0], total - kv_len, *k.shape[2:])
            k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
        return k, v, mask


@functools.lru_cache(maxsize=16)
def _logit_mask(total: int, start: int, end: int, log_bias: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[1, 1, 1, total]``: ``log_bias`` on keys ``[start, end)``, 0 elsewhere. Every layer and
    step of a chunk attends with the same one, so it is built once and only read."""
    mask = torch.zeros(total, device=device, dtype=dtype)
    if end > start:
        mask[start:end] = log_bias
    return mask.view(1, 1, 1, total)
