"""Causal Wan2.1 DiT with the original Wan parameter names and an external per-stream KV cache.

One call denoises one chunk of F latent frames: per-frame timesteps, self-attention over the
cached window (or over the chunk alone, optionally masked), cross-attention to every text
position, and an output head that returns the flow velocity in the input layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .config import WanConfig
from .kv_cache import GeneratorCache
from .rope import FrameRope, WanRotaryEmbedding, apply_rope

if TYPE_CHECKING:
    from .attention_bias import CacheAttentionBias
    from .vace import VaceContext, VaceLayers

# kernel(q, k, v, mask): q [B, Lq, H, D], k/v [B, Lk, H, D], mask None or broadcastable to
# [B, H, Lq, Lk] (bool: True takes part; float: added to the logits) -> [B, Lq, H, D].
AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Exact attention through PyTorch's fused kernel, softmax scale 1/sqrt(head_dim)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


_attention_kernel: AttentionKernel = sdpa_attention


def set_attention_kernel(kernel: AttentionKernel | None) -> AttentionKernel:
    """Route every attention of the generator through `kernel` (None: back to SDPA); returns the old one."""
    global _attention_kernel
    previous = _attention_kernel
    _attention_kernel = sdpa_attention if kernel is None else kernel
    return previous


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return _attention_kernel(q, k, v, mask)


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep sinusoid in float64: [cos(t*f), sin(t*f)] with f_k = 10000^(-k/half)."""
    half = dim // 2
    t = t.to(torch.float64).flatten()
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = torch.outer(t, freqs)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class WanRMSNorm(nn.Module):
    """RMSNorm over the full width with float32 statistics, then the weight in the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class WanAttentionProjections(nn.Module):
    """The q/k/v/o projections and q/k RMSNorms both attentions share (original Wan names)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()


class WanSelfAttention(WanAttentionProjections):
    """Self-attention with q/k RMSNorm and RoPE; reads and writes the stream's cache when given one.

    With a cache of relative positions the keys are cached as computed and the attended window
    is rotated at frame positions `0..N-1`, the queries at the window's last positions. After
    :meth:`fuse_projections` q, k and v come from one matmul (``qkv``, Krea's load-time fusion).
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__(dim, num_heads, qk_norm, eps)
        self.qkv: nn.Linear | None = None

    @torch.no_grad()
    def fuse_projections(self, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> None:
        """Replace q, k and v by one linear of their stacked weights; the originals are dropped.

        The loader passes the stacked ``weight`` and ``bias`` it already wrote q, k and v into
        (nothing is copied); without them they are stacked here."""
        if self.qkv is not None:
            return
        if weight is None or bias is None:
            parts = (self.q, self.k, self.v)
            if any(not isinstance(p, nn.Linear) for p in parts):
                raise TypeError("fuse q/k/v before quantising them")
            weight = torch.cat([p.weight for p in parts])
            bias = torch.cat([p.bias for p in parts])
        with torch.device("meta"):
            fused = nn.Linear(weight.shape[1], weight.shape[0])
        fused.weight = nn.Parameter(weight, requires_grad=False)
        fused.bias = nn.Parameter(bias, requires_grad=False)
        del self.q, self.k, self.v
        self.qkv = fused

    def _project(self, x: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.qkv is not None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            return self.norm_q(q).view(shape), self.norm_k(k).view(shape), v.reshape(shape)
        return self.norm_q(self.q(x)).view(shape), self.norm_k(self.k(x)).view(shape), self.v(x).view(shape)

    def forward(
        self,
        x: torch.Tensor,
        rope: FrameRope,
        *,
        cache: GeneratorCache | None = None,
        index: int = 0,
        current_start: int = 0,
        mask: torch.Tensor | None = None,
        commit: bool = True,
        pad_keys_to: int = 0,
        bias: CacheAttentionBias | None = None,
    ) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self._project(x, (b, n, self.num_heads, self.head_dim))
        if cache is not None and cache.relative_positions:
            k, v = cache.write_and_window(index, current_start, k, v, commit=commit)
            window, frames = k.shape[1] // cache.frame_seq_len, rope.frames
            q = apply_rope(q, rope.at(window - frames))
            k = apply_rope(k, rope.at(0, window))
        else:
            q = apply_rope(q, rope.freqs)
            k = apply_rope(k, rope.freqs)
            if cache is not None:
                k, v = cache.write_and_window(index, current_start, k, v, commit=commit)
        if pad_keys_to:
            k, v = pad_with_zero_keys(k, v, pad_keys_to)
        if bias is not None:
            if mask is not None:
                raise ValueError("an attention bias applies to cached attention, which takes no mask")
            k, v, mask = bias.apply(n, k, v)
        return self.o(attention(q, k, v, mask).flatten(2))


def pad_with_zero_keys(k: torch.Tensor, v: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Append zero keys and values up to a multiple of `multiple` tokens.

    The reference's uncached attention pads q/k/v for its kernel and masks nothing, so every
    padding key takes part in the softmax with a zero logit and a zero value: this reproduces it.
    """
    extra = -k.shape[1] % multiple
    if not extra:
        return k, v
    zeros = k.new_zeros(k.shape[0], extra, *k.shape[2:])
    return torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)


class WanCrossAttention(WanAttentionProjections):
    """Text cross-attention over every context position (no padding mask, as upstream)."""

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = context.shape
        shape = (b, n, self.num_heads, self.head_dim)
        return self.norm_k(self.k(context)).view(shape), self.v(context).view(shape)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None,
        *,
        cache: GeneratorCache | None = None,
        index: int = 0,
    ) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.norm_q(self.q(x)).view(b, n, self.num_heads, self.head_dim)
        slot = self.cached_kv(context, cache, index)
        return self.o(attention(q, slot[0], slot[1]).flatten(2))

    def cached_kv(
        self, context: torch.Tensor | None, cache: GeneratorCache | None, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The text keys/values of layer `index`: from the cache, or computed (and cached)."""
        slot = cache.cross[index] if cache is not None else None
        if slot is None:
            if context is None:
                raise ValueError("cross-attention needs a context when the cross cache is empty")
            slot = self.context_kv(context)
            if cache is not None:
                cache.cross[index] = slot
        return slot


class WanBlock(nn.Module):
    """One DiT block: modulated self-attention, affine-normed cross-attention, modulated FFN."""

    def __init__(self, config: WanConfig):
        super().__init__()
        dim = config.dim
        self.eps = config.eps
        self.self_attn = WanSelfAttention(dim, config.num_heads, config.qk_norm, config.eps)
        self.norm3 = nn.LayerNorm(dim, eps=config.eps) if config.cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(dim, config.num_heads, config.qk_norm, config.eps)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(config.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), eps=self.eps)

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        rope: FrameRope,
        context: torch.Tensor | None,
        *,
        cache: GeneratorCache | None = None,
        index: int = 0,
        current_start: int = 0,
        mask: torch.Tensor | None = None,
        commit: bool = True,
        pad_keys_to: int = 0,
        bias: CacheAttentionBias | None = None,
    ) -> torch.Tensor:
        b, n, c = x.shape
        frames = e0.shape[1]
        per_frame = (b, frames, n // frames, c)
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.unsqueeze(1) + e0).chunk(6, dim=2)
        h = (self._norm(x).view(per_frame) * (1 + scale1) + shift1).view(b, n, c)
        if cache is not None and cache.memory is not None:
            cache.memory.before_attention(index, lambda: self.cross_attn.cached_kv(context, cache, index)[0])
        y = self.self_attn(
            h, rope, cache=cache, index=index, current_start=current_start, mask=mask, commit=commit,
            pad_keys_to=pad_keys_to, bias=bias,
        )
        x = x + (y.view(per_frame) * gate1).view(b, n, c)
        x = x + self.cross_attn(self.norm3(x), context, cache=cache, index=index)
        h = (self._norm(x).view(per_frame) * (1 + scale2) + shift2).view(b, n, c)
        y = self.ffn(h)
        return x + (y.view(per_frame) * gate2).view(b, n, c)


class WanHead(nn.Module):
    """Final modulated LayerNorm and projection to patch values."""

    def __init__(self, config: WanConfig):
        super().__init__()
        dim = config.dim
        self.eps = config.eps
        self.head = nn.Linear(dim, config.patch_volume * config.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        frames = e.shape[1]
        shift, scale = (self.modulation.unsqueeze(1) + e).chunk(2, dim=2)
        h = F.layer_norm(x, (c,), eps=self.eps).view(b, frames, n // frames, c) * (1 + scale) + shift
        return self.head(h.view(b, n, c))


class CausalWanTransformer(nn.Module):
    """The Wan2.1 text-to-video generator, streaming-capable.

    `forward(latents [B,F,16,h,w], timestep [B,F], context [B,L,text_dim] | None, *, cache,
    start_frame, attention_mask, commit, vace, attention_bias) -> flow [B,F,16,h,w]`. Without a
    cache it is a plain forward over the given frames (RoPE from `start_frame`, optional token
    mask); with a cache it applies the cache's write rule at token `start_frame * frame_seq_len`
    and attends to its window (`commit=False`: reads the window as the write would leave it,
    changing nothing; `attention_bias`: Krea's bias on the cached frames' logits).
    """

    def __init__(self, config: WanConfig):
        super().__init__()
        if config.patch_size[0] != 1:
            raise ValueError(f"temporal patch size must be 1 for per-frame streaming, got {config.patch_size}")
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv3d(config.in_dim, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanBlock(config) for _ in range(config.num_layers))
        self.head = WanHead(config)
        self.rope = WanRotaryEmbedding(config.head_dim)
        #: VACE's hint layers (``vace.VaceLayers``), added by the loader when VACE is enabled.
        self.vace: VaceLayers | None = None

    def fuse_projections(self) -> None:
        """Fuse every self-attention's q/k/v into one linear (see :meth:`WanSelfAttention.fuse_projections`)."""
        for block in self.blocks:
            block.self_attn.fuse_projections()

    def rebuild_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute the unsaved RoPE table, e.g. after loading weights into a meta-built model."""
        if device is None:
            device = self.patch_embedding.weight.device
        self.rope.rebuild(device)

    def frame_seq_len(self, height: int, width: int) -> int:
        """Tokens per latent frame for a latent of height x width."""
        _, q, r = self.config.patch_size
        return (height // q) * (width // r)

    def _patchify(self, latents: torch.Tensor, embedding: nn.Conv3d | None = None) -> torch.Tensor:
        """Conv3d with kernel == stride written as one matmul over flattened patches (same math)."""
        embedding = self.patch_embedding if embedding is None else embedding
        b, f, c, h, w = latents.shape
        _, q, r = self.config.patch_size
        weight = embedding.weight
        patches = latents.to(weight.dtype).view(b, f, c, h // q, q, w // r, r).permute(0, 1, 3, 5, 2, 4, 6)
        patches = patches.reshape(b, f * (h // q) * (w // r), c * q * r)
        return F.linear(patches, weight.reshape(weight.shape[0], -1), embedding.bias)

    def _unpatchify(self, x: torch.Tensor, frames: int, gh: int, gw: int) -> torch.Tensor:
        b = x.shape[0]
        _, q, r = self.config.patch_size
        c = self.config.out_dim
        x = x.view(b, frames, gh, gw, q, r, c).permute(0, 1, 6, 2, 4, 3, 5)
        return x.reshape(b, frames, c, gh * q, gw * r)

    def _frame_timesteps(self, timestep: torch.Tensor | float | int, batch: int, frames: int, device) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device)
        if t.ndim == 0:
            t = t.expand(batch, frames)
        elif t.ndim == 1 and t.shape[0] == batch:
            t = t[:, None].expand(batch, frames)
        if tuple(t.shape) != (batch, frames):
            raise ValueError(f"timestep must be [B, F] = [{batch}, {frames}], got {tuple(t.shape)}")
        return t

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | float | int,
        context: torch.Tensor | None,
        *,
        cache: GeneratorCache | None = None,
        start_frame: int = 0,
        attention_mask: torch.Tensor | None = None,
        commit: bool = True,
        vace: VaceContext | None = None,
        attention_bias: CacheAttentionBias | None = None,
    ) -> torch.Tensor:
        if latents.ndim != 5:
            raise ValueError(f"latents must be [B, F, C, h, w], got {tuple(latents.shape)}")
        b, frames, _, height, width = latents.shape
        _, q, r = self.config.patch_size
        if height % q or width % r:
            raise ValueError(f"latent size {height}x{width} is not divisible by the patch size {(q, r)}")
        gh, gw = height // q, width // r
        current_start = 0
        if cache is not None:
            if attention_mask is not None:
                raise ValueError("attention_mask is only supported without a cache")
            if cache.frame_seq_len != gh * gw:
                raise ValueError(f"cache frame_seq_len {cache.frame_seq_len} != {gh * gw} tokens per frame")
            weight = self.patch_embedding.weight
            if cache.dtype != weight.dtype or cache.device != weight.device:
                raise ValueError(
                    f"cache is {cache.dtype} on {cache.device} but the model is {weight.dtype} on {weight.device}"
                )
            current_start = start_frame * cache.frame_seq_len
        with torch.no_grad() if cache is not None else contextlib.nullcontext():
            x = self._patchify(latents)
            dtype = x.dtype
            t = self._frame_timesteps(timestep, b, frames, latents.device)
            e = self.time_embedding(sinusoidal_embedding(self.config.freq_dim, t).to(dtype))
            e0 = self.time_projection(e).unflatten(1, (6, self.config.dim)).unflatten(0, (b, frames))
            if cache is not None and cache.cross_filled and vace is None:
                text = None
            else:
                if context is None:
                    raise ValueError("context is required unless the cache holds the cross-attention K/V")
                text = self.text_embedding(context.to(dtype))
            hints = None
            if vace is not None:
                if self.vace is None:
                    raise ValueError("this generator was loaded without VACE (load it with vace_enabled)")
                hints = self.vace.hints(self, vace, x, e0, text, (frames, gh, gw))
            rope = FrameRope(self.rope, start_frame, frames, gh, gw, x.device)
            for index, block in enumerate(self.blocks):
                x = block(
                    x, e0, rope, text, cache=cache, index=index, current_start=current_start, mask=attention_mask,
                    commit=commit, bias=attention_bias,
                )
                hint = hints.get(index) if hints is not None else None
                if hint is not None:
                    x = x + hint * vace.scale
            x = self.head(x, e.unflatten(0, (b, frames)).unsqueeze(2))
            return self._unpatchify(x, frames, gh, gw)
