"""Per-stream key/value caches of the causal Wan generator (LongLive's sink + rolling window).

A cache belongs to a stream, not to the model: the pipeline creates it, the transformer reads
and writes it during `forward`. Self-attention keys are stored after RoPE at absolute frame
positions. Each forward applies, per layer, LongLive's write rule:

* roll: the window is finite, the chunk extends the stream (`current_end > global_end`) and the
  buffer would overflow: the oldest non-sink tokens are dropped, the rest shift left, and the
  new tokens land at the end;
* otherwise the new tokens are written at `local_end + (current_end - global_end) - new`, which
  rewrites the same slots when the same chunk runs again (denoising steps, the clean pass);
* recompute (`current_end <= global_end` and `current_start > 0`): the sink is never written
  and the end indices do not move.

The new queries attend to the sink plus the most recent `window - sink` tokens ending at the new
`local_end`, without a mask inside the chunk. Upstream builds the updated buffer in a copy and
commits it after all layers ran; every layer reads only its own buffer and all layers share the
same indices, so updating each layer's buffer in place just before its attention is equivalent
and avoids a full-buffer copy per layer.

Four generalisations serve LongLive's siblings, each off by default (LongLive uses none):

* `relative_positions`: keys are stored without RoPE; the attention layer rotates the attended
  window at frame positions `0..N-1` and the queries at its last positions (Reward Forcing), so
  positions stay bounded however long the stream runs;
* `on_evict`: called with the tokens a roll drops, after the write (Reward Forcing's EMA sink);
* `commit=False` on a forward: it attends to the buffer as the write *would* leave it, built
  from slices, and changes nothing (MemFlow's denoising steps); and `memory`, frames attended
  between the sink and the window (MemFlow's memory bank);
* `protect_sink=False`: no recompute rule; a rewrite of the current chunk overwrites its slots
  even inside the sink (StreamDiffusionV2, whose sink fills with the first chunks' clean keys).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from .config import WanConfig


@dataclass(frozen=True)
class WritePlan:
    """Where one forward's tokens go in a layer buffer, and which slice its queries attend to."""

    current_end: int
    evicted: int  # tokens dropped from just after the sink (0 when not rolling)
    rolled: int  # tokens shifted left by `evicted`
    local_start: int
    local_end: int
    write_start: int  # >= local_start; > it only when a recompute would touch the sink
    recompute: bool

    @property
    def source_offset(self) -> int:
        """Index into the new tokens of the first one actually written."""
        return self.write_start - self.local_start


class LayerKV:
    """One layer's self-attention buffers and fill indices."""

    __slots__ = ("k", "v", "global_end", "local_end")

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k = k
        self.v = v
        self.global_end = 0  # absolute token position one past the last cached token
        self.local_end = 0  # fill level of the physical buffer

    @property
    def capacity(self) -> int:
        return self.k.shape[1]


#: Called on a roll as `on_evict(layer, evicted_k, evicted_v, sink_tokens)`, after the write.
EvictionHook = Callable[[LayerKV, torch.Tensor, torch.Tensor, int], None]


class FrameMemory(Protocol):
    """Frames a layer attends to between the sink and the window, kept by the pipeline's rules."""

    def before_attention(self, index: int, text_keys: Callable[[], torch.Tensor]) -> None:
        """Layer `index` is about to attend; `text_keys()` gives its cross-attention keys."""

    def frames(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Keys and values to attend to (None when empty)."""

    def written(self, index: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """A committed forward wrote these new tokens into layer `index`."""

    def reset(self) -> None:
        """The stream starts again."""


class GeneratorCache:
    """Self-attention K/V (sink + rolling window) and cross-attention K/V for every layer.

    `capacity_frames`: buffer length; `sink_frames`: frames at the start of the buffer that a roll
    never evicts; `window_frames`: how many frames the queries see (sink included), defaults to the
    capacity; `rolling=False` disables eviction (a plain growing cache, LongLive's `local_attn_size
    == -1`), in which case writing past the capacity is an error. `relative_positions`,
    `on_evict`, `memory` and `protect_sink`: see the module docstring.
    """

    def __init__(
        self,
        config: WanConfig,
        *,
        frame_seq_len: int,
        capacity_frames: int,
        sink_frames: int,
        batch: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        window_frames: int | None = None,
        rolling: bool = True,
        relative_positions: bool = False,
        on_evict: EvictionHook | None = None,
        memory: FrameMemory | None = None,
        protect_sink: bool = True,
    ):
        if frame_seq_len <= 0 or capacity_frames <= 0:
            raise ValueError("frame_seq_len and capacity_frames must be positive")
        if not 0 <= sink_frames <= capacity_frames:
            raise ValueError(f"sink_frames {sink_frames} must lie in [0, capacity_frames {capacity_frames}]")
        window_frames = capacity_frames if window_frames is None else window_frames
        if not sink_frames <= window_frames:
            raise ValueError(f"window_frames {window_frames} must be at least sink_frames {sink_frames}")
        self.config = config
        self.frame_seq_len = frame_seq_len
        self.capacity_frames = capacity_frames
        self.sink_frames = sink_frames
        self.window_frames = window_frames
        self.rolling = rolling
        if relative_positions and memory is not None:
            raise ValueError("a frame memory needs keys stored at absolute positions")
        self.relative_positions = relative_positions
        self.on_evict = on_evict
        self.memory = memory
        self.protect_sink = protect_sink
        self.batch = batch
        self.dtype = dtype
        shape = (batch, capacity_frames * frame_seq_len, config.num_heads, config.head_dim)
        self.layers = [
            LayerKV(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
            for _ in range(config.num_layers)
        ]
        self.device = self.layers[0].k.device  # resolved, e.g. "cuda" -> cuda:0
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * config.num_layers

    @property
    def sink_tokens(self) -> int:
        return self.sink_frames * self.frame_seq_len

    @property
    def window_tokens(self) -> int:
        return self.window_frames * self.frame_seq_len

    @property
    def cross_filled(self) -> bool:
        return all(slot is not None for slot in self.cross)

    @property
    def global_end(self) -> int:
        return self.layers[0].global_end

    @property
    def local_end(self) -> int:
        return self.layers[0].local_end

    def reset(self) -> None:
        """Start a new stream: zero the buffers, rewind the indices, forget the prompt."""
        self.clear_self_attention()
        if self.memory is not None:
            self.memory.reset()
        self.reset_cross()

    def clear_self_attention(self) -> None:
        """Zero the self-attention buffers and rewind their indices, keeping the prompt's K/V
        (Krea rebuilds its window from context frames before every chunk)."""
        for layer in self.layers:
            layer.k.zero_()
            layer.v.zero_()
            layer.global_end = 0
            layer.local_end = 0

    def reset_cross(self) -> None:
        """Forget the cross-attention K/V (the next forward recomputes them from its context)."""
        self.cross = [None] * len(self.layers)

    def plan(self, layer: LayerKV, current_start: int, num_new: int) -> WritePlan:
        """LongLive's write rule for `num_new` tokens starting at absolute token `current_start`."""
        current_end = current_start + num_new
        capacity = layer.capacity
        sink = self.sink_tokens
        recompute = self.protect_sink and current_end <= layer.global_end and current_start > 0
        evicted = rolled = 0
        if self.rolling and current_end > layer.global_end and layer.local_end + num_new > capacity:
            evicted = layer.local_end + num_new - capacity
            rolled = layer.local_end - evicted - sink
            if rolled < 0:
                raise ValueError(
                    f"cannot roll {num_new} new tokens into a {capacity}-token cache with a {sink}-token sink"
                )
        local_end = layer.local_end + (current_end - layer.global_end) - evicted
        local_start = local_end - num_new
        if local_start < 0 or local_end > capacity:
            raise ValueError(
                f"tokens {current_start}..{current_end} do not fit the cache "
                f"(local_end {layer.local_end}, global_end {layer.global_end}, capacity {capacity})"
            )
        write_start = max(local_start, sink) if recompute else local_start
        return WritePlan(current_end, evicted, rolled, local_start, local_end, write_start, recompute)

    def write_and_window(
        self, index: int, current_start: int, k: torch.Tensor, v: torch.Tensor, *, commit: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply this forward's write to layer `index`; return the keys/values to attend to.

        With `commit=False` nothing changes: the window is read from the buffer as the write
        would leave it.
        """
        layer = self.layers[index]
        plan = self.plan(layer, current_start, k.shape[1])
        if not commit:
            return self._window(layer.k, index, 0, plan, k), self._window(layer.v, index, 1, plan, v)
        sink = self.sink_tokens
        evicted = None
        if plan.evicted > 0 and self.on_evict is not None:
            taken = slice(sink, sink + plan.evicted)
            evicted = layer.k[:, taken].clone(), layer.v[:, taken].clone()
        if plan.rolled > 0 and plan.evicted > 0:
            _shift_left(layer.k, sink, plan.evicted, plan.rolled)
            _shift_left(layer.v, sink, plan.evicted, plan.rolled)
        src = slice(plan.source_offset, plan.source_offset + max(0, plan.local_end - plan.write_start))
        if plan.local_end > plan.write_start:
            layer.k[:, plan.write_start : plan.local_end].copy_(k[:, src])
            layer.v[:, plan.write_start : plan.local_end].copy_(v[:, src])
        if evicted is not None:
            self.on_evict(layer, evicted[0], evicted[1], sink)
        if not plan.recompute:
            layer.global_end = plan.current_end
            layer.local_end = plan.local_end
        if self.memory is not None:
            self.memory.written(index, k[:, src], v[:, src])
        return self._window(layer.k, index, 0, plan), self._window(layer.v, index, 1, plan)

    def window_bounds(self, local_end: int) -> tuple[int, int]:
        """`(sink_end, start)`: the window is `[0, sink_end) ++ [start, local_end)`.

        Upstream always takes the full sink slice; before the sink is filled it would include
        never-written (zero) slots, which no schedule of these pipelines reaches. Here the sink
        slice stops at `local_end`, so only written tokens are attended to.
        """
        sink = min(self.sink_tokens, local_end)
        return sink, max(sink, local_end - (self.window_tokens - self.sink_tokens))

    def _window(
        self, buf: torch.Tensor, index: int, which: int, plan: WritePlan, new: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The sink, the memory's frames (`which`: 0 keys, 1 values), then the newest tokens up
        to the plan's `local_end`; with `new` given, read as that uncommitted write would leave
        the buffer."""
        sink, start = self.window_bounds(plan.local_end)
        remembered = self.memory.frames(index) if self.memory is not None else None
        if new is None and remembered is None and start == sink:
            return buf[:, : plan.local_end]
        pieces = self._pieces(buf, plan, new, 0, sink)
        if remembered is not None:
            pieces.append(remembered[which])
        pieces += self._pieces(buf, plan, new, start, plan.local_end)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)

    def _pieces(
        self, buf: torch.Tensor, plan: WritePlan, new: torch.Tensor | None, lo: int, hi: int
    ) -> list[torch.Tensor]:
        """Slices making up slots `[lo, hi)` of `buf`, or, with `new`, of `buf` after `plan`'s
        roll and write."""
        if hi <= lo:
            return []
        if new is None:
            return [buf[:, lo:hi]]
        sink = self.sink_tokens
        rolling = plan.rolled > 0 and plan.evicted > 0
        cuts = {lo, hi}
        cuts.update(c for c in (sink, sink + plan.rolled, plan.write_start, plan.local_end) if lo < c < hi)
        edges = sorted(cuts)
        pieces = []
        for a, b in zip(edges, edges[1:]):
            if plan.write_start <= a < plan.local_end:
                pieces.append(new[:, a - plan.local_start : b - plan.local_start])
            elif rolling and sink <= a < sink + plan.rolled:
                pieces.append(buf[:, a + plan.evicted : b + plan.evicted])
            else:
                pieces.append(buf[:, a:b])
        return pieces


def _shift_left(buf: torch.Tensor, start: int, by: int, count: int) -> None:
    """`buf[:, start:start+count] = buf[:, start+by:start+by+count]` along dim 1, without a full copy.

    Copying in pieces of at most `by` tokens, front to back, never reads a slot already
    overwritten; when `by` is tiny compared with `count` one temporary copy is cheaper.
    """
    if count <= 0 or by <= 0:
        return
    if by * 8 < count:
        buf[:, start : start + count] = buf[:, start + by : start + by + count].clone()
        return
    done = 0
    while done < count:
        step = min(by, count - done)
        buf[:, start + done : start + done + step].copy_(buf[:, start + by + done : start + by + done + step])
        done += step
