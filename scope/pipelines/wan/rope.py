"""3-axis rotary position embedding of Wan2.1 (frame, row, column), with an absolute frame offset.

Streaming needs the frame axis to start anywhere: cached keys keep the positions they were
written at, so each chunk's queries and keys are rotated at `start_frame + i`.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import cached_property

import torch
from torch import nn

ROPE_TABLE_LEN = 1024
ROPE_THETA = 10000.0


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs given to (time, height, width): 22/21/21 for head_dim 128."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def rope_axis_table(length: int, axis_dim: int, theta: float = ROPE_THETA) -> torch.Tensor:
    """Unit complex numbers `exp(i * p / theta^(2k/axis_dim))`, shape [length, axis_dim // 2], complex128."""
    inv = 1.0 / torch.pow(theta, torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv)
    return torch.polar(torch.ones_like(angles), angles)


def rope_table(head_dim: int, length: int = ROPE_TABLE_LEN, theta: float = ROPE_THETA) -> torch.Tensor:
    """The concatenated per-axis table, [length, head_dim // 2] complex128."""
    return torch.cat([rope_axis_table(length, 2 * n, theta) for n in axis_pairs(head_dim)], dim=1)


class WanRotaryEmbedding(nn.Module):
    """Holds the RoPE table and the per-grid frequency tensors.

    The table is a plain attribute, not a buffer: it is never saved, a dtype cast of the model
    cannot truncate it to real numbers, and it follows the input's device on first use (so a
    model built on the meta device needs no extra step). The per-(start_frame, F, h, w) tensor
    is rebuilt only on a cache miss; a stream asks for a handful of distinct grids.
    """

    def __init__(self, head_dim: int, length: int = ROPE_TABLE_LEN, cache_size: int = 64):
        super().__init__()
        self.head_dim = head_dim
        self.length = length
        self.cache_size = cache_size
        self._table = rope_table(head_dim, length)
        self._grids: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def rebuild(self, device: torch.device | str = "cpu") -> None:
        """Recompute the table on `device` and drop the cached grids."""
        self._table = rope_table(self.head_dim, self.length).to(device)
        self._grids.clear()

    def table(self, device: torch.device | str) -> torch.Tensor:
        device = torch.device(device)
        if self._table.device != device:
            self.rebuild(device)
        return self._table

    def freqs(self, start_frame: int, frames: int, height: int, width: int, device: torch.device | str) -> torch.Tensor:
        """[frames*height*width, 1, head_dim//2] complex128, tokens in (frame, row, column) order."""
        if start_frame < 0 or start_frame + frames > self.length:
            raise ValueError(
                f"RoPE frames {start_frame}..{start_frame + frames - 1} exceed the {self.length}-row table"
            )
        if height > self.length or width > self.length:
            raise ValueError(f"RoPE grid {height}x{width} exceeds the {self.length}-row table")
        table = self.table(device)
        key = (start_frame, frames, height, width, table.device)
        cached = self._grids.get(key)
        if cached is not None:
            self._grids.move_to_end(key)
            return cached
        nt, nh, nw = axis_pairs(self.head_dim)
        table_t, table_h, table_w = table.split([nt, nh, nw], dim=1)
        grid = torch.cat(
            [
                table_t[start_frame : start_frame + frames].view(frames, 1, 1, nt).expand(frames, height, width, nt),
                table_h[:height].view(1, height, 1, nh).expand(frames, height, width, nh),
                table_w[:width].view(1, 1, width, nw).expand(frames, height, width, nw),
            ],
            dim=-1,
        ).reshape(frames * height * width, 1, nt + nh + nw)
        self._grids[key] = grid
        if len(self._grids) > self.cache_size:
            self._grids.popitem(last=False)
        return grid


class FrameRope:
    """The frequencies of one forward's grid: at its own frames, or at any other frame range."""

    def __init__(self, rope: WanRotaryEmbedding, start_frame: int, frames: int, height: int, width: int, device):
        self.rope = rope
        self.start_frame, self.frames = start_frame, frames
        self.height, self.width, self.device = height, width, device

    @cached_property
    def freqs(self) -> torch.Tensor:
        """At the forward's absolute frames `start_frame .. start_frame + frames - 1`."""
        return self.at(self.start_frame)

    def at(self, start_frame: int, frames: int | None = None) -> torch.Tensor:
        """At frames `start_frame ..` (`frames` of them; by default the forward's count)."""
        count = self.frames if frames is None else frames
        return self.rope.freqs(start_frame, count, self.height, self.width, self.device)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, L, H, D] by freqs [L, 1, D/2] in complex float64; returns x's dtype."""
    b, length, heads, dim = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, length, heads, dim // 2, 2))
    return torch.view_as_real(xc * freqs).reshape(b, length, heads, dim).to(x.dtype)
