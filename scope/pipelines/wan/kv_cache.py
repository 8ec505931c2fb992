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
"""

from __future__ import annotations

from dataclasses import dataclass

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


class GeneratorCache:
    """Self-attention K/V (sink + rolling window) and cross-attention K/V for every layer.

    `capacity_frames`: buffer length; `sink_frames`: frames at the start of the buffer that a roll
    never evicts; `window_frames`: how many frames the queries see (sink included), defaults to the
    capacity; `rolling=False` disables eviction (a plain growing cache, LongLive's `local_attn_size
    == -1`), in which case writing past the capacity is an error.
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
        for layer in self.layers:
            layer.k.zero_()
            layer.v.zero_()
            layer.global_end = 0
            layer.local_end = 0
        self.reset_cross()

    def reset_cross(self) -> None:
        """Forget the cross-attention K/V (the next forward recomputes them from its context)."""
        self.cross = [None] * len(self.layers)

    def plan(self, layer: LayerKV, current_start: int, num_new: int) -> WritePlan:
        """LongLive's write rule for `num_new` tokens starting at absolute token `current_start`."""
        current_end = current_start + num_new
        capacity = layer.capacity
        sink = self.sink_tokens
        recompute = current_end <= layer.global_end and current_start > 0
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
        self, index: int, current_start: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Commit this forward's keys/values for layer `index`; return the keys/values to attend to."""
        layer = self.layers[index]
        plan = self.plan(layer, current_start, k.shape[1])
        if plan.rolled > 0 and plan.evicted > 0:
            _shift_left(layer.k, self.sink_tokens, plan.evicted, plan.rolled)
            _shift_left(layer.v, self.sink_tokens, plan.evicted, plan.rolled)
        if plan.local_end > plan.write_start:
            src = slice(plan.source_offset, plan.source_offset + plan.local_end - plan.write_start)
            layer.k[:, plan.write_start : plan.local_end].copy_(k[:, src])
            layer.v[:, plan.write_start : plan.local_end].copy_(v[:, src])
        if not plan.recompute:
            layer.global_end = plan.current_end
            layer.local_end = plan.local_end
        return self._window(layer.k, plan.local_end), self._window(layer.v, plan.local_end)

    def _window(self, buf: torch.Tensor, local_end: int) -> torch.Tensor:
        """The sink followed by the newest `window - sink` tokens up to `local_end`.

        Upstream always takes the full sink slice; before the sink is filled it would include
        never-written (zero) slots, which no LongLive schedule reaches. Here the sink slice stops
        at `local_end`, so only written tokens are attended to.
        """
        sink = min(self.sink_tokens, local_end)
        start = max(sink, local_end - (self.window_tokens - self.sink_tokens))
        if start == sink:
            return buf[:, :local_end]
        return torch.cat([buf[:, :sink], buf[:, start:local_end]], dim=1)


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
