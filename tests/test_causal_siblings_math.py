"""The mathematics of LongLive's siblings on the causal core.

A cached rollout, block by block, must equal an uncached full-sequence forward whose
self-attention is written out plainly per block: which frames each block sees, the positions
they are rotated at, Reward Forcing's EMA-blended sink and MemFlow's bank frames. The oracle
shares the model's projections and every other layer, but none of the cache's bookkeeping
(rolls, slots, indices, uncommitted reads). Then the EMA arithmetic on keys that encode their
position, the bank's choice against scores computed by hand, and MemFlow's uncommitted steps.
"""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from scope.models.synthetic.generator import generator_state_dict
from scope.pipelines import longlive, memflow, reward_forcing
from scope.pipelines.wan.causal_stream import CausalStreamSettings
from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG
from scope.pipelines.wan.kv_cache import GeneratorCache
from scope.pipelines.wan.rope import apply_rope
from scope.pipelines.wan.transformer import CausalWanTransformer, WanSelfAttention

CONFIG = SYNTHETIC_WAN_CONFIG
H, W = 8, 12  # latent size -> 4x6 tokens per frame
FSL = (H // 2) * (W // 2)
BLOCK = 3


@pytest.fixture(scope="module")
def model() -> CausalWanTransformer:
    net = CausalWanTransformer(CONFIG)
    net.load_state_dict(generator_state_dict(CONFIG, seed=3))
    return net.eval().requires_grad_(False)


def context(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ctx = torch.zeros(1, CONFIG.text_len, CONFIG.text_dim)
    ctx[:, :8] = 0.2 * torch.randn(1, 8, CONFIG.text_dim, generator=gen)
    return ctx


def new_cache(settings: CausalStreamSettings) -> GeneratorCache:
    memory = settings.memory(CONFIG.num_layers, FSL) if settings.memory else None
    return GeneratorCache(
        CONFIG,
        frame_seq_len=FSL,
        capacity_frames=settings.local_attn_size,
        sink_frames=settings.sink_size,
        relative_positions=settings.relative_positions,
        on_evict=settings.on_evict,
        memory=memory,
    )


# The rollout ------------------------------------------------------------------------------


def rollout(model, settings: CausalStreamSettings, latents, timesteps, ctx) -> tuple[torch.Tensor, GeneratorCache]:
    """Each block as a stream runs it: a noisy denoising step (committed or not, as the pipeline
    does), then the final pass whose keys stay in the cache; the final passes' outputs."""
    cache = new_cache(settings)
    gen = torch.Generator().manual_seed(11)
    outputs = []
    for b in range(latents.shape[1] // BLOCK):
        sl = slice(b * BLOCK, (b + 1) * BLOCK)
        noisy = torch.randn(1, BLOCK, 16, H, W, generator=gen)
        model(noisy, torch.full((1, BLOCK), 999), ctx, cache=cache, start_frame=b * BLOCK, commit=settings.denoising_commits)
        if cache.memory is not None:
            cache.memory.before_clean_pass(b)
        outputs.append(model(latents[:, sl], timesteps[:, sl], ctx, cache=cache, start_frame=b * BLOCK))
    return torch.cat(outputs, dim=1), cache


# The oracle: a full forward whose self-attention is written out per block -------------------


@dataclasses.dataclass
class BlockAttention:
    """Per block: the key frames it attends to and their positions, from the pipeline's rules."""

    settings: CausalStreamSettings
    bank_size: int = memflow.BANK_SIZE
    record_interval: int = memflow.RECORD_INTERVAL
    alpha: float = reward_forcing.SINK_ALPHA

    def __call__(self, model, q, k, v) -> torch.Tensor:
        s = self.settings
        frames = q.shape[1] // FSL
        per_frame = lambda t: t.unflatten(1, (frames, FSL))  # noqa: E731
        qf, kf, vf = per_frame(q), per_frame(k), per_frame(v)
        out = torch.empty_like(q)
        blended = (kf[:, : s.sink_size].clone(), vf[:, : s.sink_size].clone())
        for b in range(frames // BLOCK):
            start, end = b * BLOCK, (b + 1) * BLOCK
            # The window: the sink, then the newest (window - sink) frames up to the block's end.
            recent = list(range(max(s.sink_size, end - (s.local_attn_size - s.sink_size)), end))
            if s.on_evict is not None and end > s.local_attn_size:
                evicted = list(range(recent[0] - BLOCK, recent[0]))
                blended = tuple(self.alpha * part + (1 - self.alpha) * whole[:, evicted] for part, whole in zip(blended, (kf, vf)))
            bank = [r * BLOCK for r in range(b) if r % self.record_interval == 0][-self.bank_size :] if s.memory else []
            sink = list(range(min(s.sink_size, end)))
            if s.on_evict is not None:
                keys = [blended[0][:, : len(sink)], kf[:, recent]]
                values = [blended[1][:, : len(sink)], vf[:, recent]]
            else:
                keys = [kf[:, sink], kf[:, bank], kf[:, recent]]
                values = [vf[:, sink], vf[:, bank], vf[:, recent]]
            key = torch.cat(keys, dim=1).flatten(1, 2)
            value = torch.cat(values, dim=1).flatten(1, 2)
            query = qf[:, start:end].flatten(1, 2)
            count = key.shape[1] // FSL
            if s.relative_positions:
                query = apply_rope(query, rope(model, count - BLOCK, BLOCK))
                key = apply_rope(key, rope(model, 0, count))
            else:
                query = apply_rope(query, rope(model, start, BLOCK))
                key = apply_rope(key, torch.cat([rope(model, p, 1) for p in sink + bank + recent]))
            attended = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
            out[:, start * FSL : end * FSL] = attended.transpose(1, 2)
        return out


def rope(model, start: int, frames: int) -> torch.Tensor:
    return model.rope.freqs(start, frames, H // 2, W // 2, "cpu")


def oracle(model, settings, latents, timesteps, ctx) -> torch.Tensor:
    """One uncached forward over every frame, self-attention replaced by :class:`BlockAttention`."""
    attend = BlockAttention(settings)

    def self_attention(self, x, frame_rope, **_):
        b, n, _ = x.shape
        shape = (b, n, self.num_heads, self.head_dim)
        q, k, v = self.norm_q(self.q(x)).view(shape), self.norm_k(self.k(x)).view(shape), self.v(x).view(shape)
        return self.o(attend(model, q, k, v).flatten(2))

    with torch.no_grad(), mock.patch.object(WanSelfAttention, "forward", self_attention):
        return model(latents, timesteps, ctx)


def inputs(blocks: int):
    gen = torch.Generator().manual_seed(5)
    frames = blocks * BLOCK
    latents = torch.randn(1, frames, 16, H, W, generator=gen)
    timesteps = torch.tensor([[0, 250, 500]]).repeat(1, blocks) + torch.arange(frames) * 7
    return latents, timesteps


@pytest.mark.parametrize(
    "settings, blocks",
    [
        (longlive.SETTINGS, 7),  # the oracle itself agrees with the core LongLive was proven on
        (reward_forcing.SETTINGS, 7),  # evictions from block 3 on: four EMA blends
        (dataclasses.replace(memflow.SETTINGS, memory=None), 7),  # memory_bank: false
        (memflow.SETTINGS, 8),  # the bank records blocks 0, 3, 6 and attends to them from 1, 4, 7
    ],
    ids=["longlive", "reward-forcing", "memflow-no-bank", "memflow-bank"],
)
def test_cached_rollout_equals_the_full_forward_with_each_pipelines_window(model, settings, blocks):
    latents, timesteps = inputs(blocks)
    ctx = context(1)
    cached, cache = rollout(model, settings, latents, timesteps, ctx)
    expected = oracle(model, settings, latents, timesteps, ctx)
    assert torch.isfinite(cached).all()
    assert (cached - expected).abs().max().item() < 2e-5
    if settings.memory:
        assert cache.memory.frame_count() == 3


def test_each_difference_of_a_sibling_shows_in_the_rollout(model):
    """The oracle's rules are not vacuous: dropping any one of them changes the output."""
    latents, timesteps = inputs(7)
    ctx = context(1)
    rf = reward_forcing.SETTINGS
    reference, _ = rollout(model, rf, latents, timesteps, ctx)
    for changed in (
        dataclasses.replace(rf, on_evict=None),  # a frozen sink
        dataclasses.replace(rf, relative_positions=False),  # absolute positions
        dataclasses.replace(rf, local_attn_size=12),  # LongLive's window
    ):
        other, _ = rollout(model, changed, latents, timesteps, ctx)
        assert (other - reference)[:, 9:].abs().max().item() > 1e-4, changed
    bank, _ = rollout(model, memflow.SETTINGS, latents, timesteps, ctx)
    no_bank, _ = rollout(model, dataclasses.replace(memflow.SETTINGS, memory=None), latents, timesteps, ctx)
    assert torch.equal(bank[:, :BLOCK], no_bank[:, :BLOCK])  # nothing is committed before block 1
    assert (bank - no_bank)[:, BLOCK:].abs().max().item() > 1e-4


def test_relative_positions_stay_bounded_however_long_the_stream(model):
    """Reward Forcing rotates the window from 0: no position past the window's 9 frames is ever
    used, however far the stream runs, while LongLive's keys sit at their absolute frames."""
    used: dict[str, int] = {}
    rotary = model.rope.freqs

    def frames_used(settings, name, blocks=12):
        def spy(start, frames, *args):
            used[name] = max(used.get(name, 0), start + frames)
            return rotary(start, frames, *args)

        latents, timesteps = inputs(blocks)
        with mock.patch.object(model.rope, "freqs", spy):
            rollout(model, settings, latents, timesteps, context(2))
        return used[name]

    assert frames_used(reward_forcing.SETTINGS, "reward-forcing") == reward_forcing.SETTINGS.local_attn_size
    assert frames_used(longlive.SETTINGS, "longlive") == 12 * BLOCK


# The EMA sink on keys that encode their positions -----------------------------------------


def write_positions(cache: GeneratorCache, start: int, count: int, offset: float = 0.0) -> list[float]:
    pos = torch.arange(start, start + count, dtype=torch.float32) + offset
    kv = pos.view(1, count, 1, 1).expand(1, count, CONFIG.num_heads, CONFIG.head_dim)
    windows = [cache.write_and_window(i, start, kv, kv + 1000) for i in range(CONFIG.num_layers)]
    return windows[0][0][0, :, 0, 0].tolist()


def test_ema_sink_blends_each_eviction_once():
    cache = GeneratorCache(CONFIG, frame_seq_len=1, capacity_frames=9, sink_frames=3, on_evict=reward_forcing.EmaSink())
    for start in range(0, 9, 3):
        assert write_positions(cache, start, 3) == list(range(start + 3))
    sink = [0.0, 1.0, 2.0]
    for start in (9, 12, 15):
        evicted = [start - 6 + i for i in range(3)]
        sink = [0.999 * s + (1 - 0.999) * e for s, e in zip(sink, evicted)]
        attended = write_positions(cache, start, 3)
        assert attended == pytest.approx(sink + list(range(start - 3, start + 3)), abs=1e-5)
        # A denoising step again and the clean pass rewrite the chunk's slots: no second blend.
        write_positions(cache, start, 3, offset=0.5)
        assert write_positions(cache, start, 3) == pytest.approx(attended, abs=1e-5)
    for layer in cache.layers:  # values blend the same way (they are the keys + 1000 here)
        assert layer.v[0, :3, 0, 0].tolist() == pytest.approx([s + 1000 for s in sink], abs=1e-3)


def test_ema_sink_overwrites_when_another_count_is_evicted():
    cache = GeneratorCache(CONFIG, frame_seq_len=1, capacity_frames=9, sink_frames=3, on_evict=reward_forcing.EmaSink())
    write_positions(cache, 0, 8)
    # 3 more tokens: 8 + 3 - 9 = 2 evicted (positions 3 and 4), which overwrite sink slots 0 and 1.
    assert write_positions(cache, 8, 3) == [3.0, 4.0, 2.0] + list(range(5, 11))


# MemFlow's bank ---------------------------------------------------------------------------


def coded(values: list[list[float]], fsl: int = 2, heads: int = 2, dim: int = 4) -> torch.Tensor:
    """Frames of keys, ``values[f][h]`` filling every token and dimension of frame f, head h."""
    out = torch.zeros(1, len(values) * fsl, heads, dim)
    for f, per_head in enumerate(values):
        for h, value in enumerate(per_head):
            out[0, f * fsl : (f + 1) * fsl, h] = value
    return out


def by_hand(text_keys: torch.Tensor, frames: torch.Tensor, fsl: int) -> list[float]:
    """MemFlow's score, spelled out: the mean of q.k/sqrt(d) over text tokens, heads and the
    frame's tokens."""
    _, length, heads, dim = text_keys.shape
    scores = []
    for f in range(frames.shape[1] // fsl):
        total = 0.0
        for t in range(length):
            for h in range(heads):
                for j in range(f * fsl, (f + 1) * fsl):
                    total += float(text_keys[0, t, h] @ frames[0, j, h]) / dim**0.5
        scores.append(total / (length * heads * fsl))
    return scores


def test_bank_scores_match_the_hand_computation():
    gen = torch.Generator().manual_seed(0)
    text_keys = torch.randn(1, 5, 2, 4, generator=gen)
    frames = torch.randn(1, 3 * 2, 2, 4, generator=gen)
    assert memflow.frame_relevance(text_keys, frames, 2).tolist() == pytest.approx(by_hand(text_keys, frames, 2), abs=1e-5)


def test_bank_records_every_third_clean_pass_commits_once_and_keeps_the_relevant_frames():
    bank = memflow.MemoryBank(num_layers=1, frame_seq_len=2)
    text = torch.ones(1, 3, 2, 4)  # every text query is all ones: a frame scores its mean key
    frames = {0: 1.0, 3: 5.0, 6: -2.0, 9: 3.0, 12: 0.5}

    def chunk(index: int) -> None:
        bank.before_attention(0, lambda: text)  # the chunk's first forward commits what was staged
        bank.before_clean_pass(index)
        value = frames.get(index, 0.0)
        written = coded([[value, value], [value + 100, value + 100], [value + 200, value + 200]])
        bank.written(0, written, written + 0.25)
        bank.written(0, written * 7, written * 7)  # a later committed write (a re-cache) records nothing

    recorded = []
    for index in range(15):
        chunk(index)
        kept = bank.frames(0)
        recorded.append([] if kept is None else kept[0][0, ::2, 0, 0].tolist())
    # Staged at chunks 0, 3, 6, ... (their first frame), committed at the next chunk's first forward.
    assert recorded[0] == [] and recorded[1] == recorded[2] == recorded[3] == [1.0]
    assert recorded[4] == [1.0, 5.0] and recorded[7] == [1.0, 5.0, -2.0]
    # Full: the two frames scoring highest for the text stay, in recorded order, then the new one.
    assert by_hand(text, coded([[1.0, 1.0], [5.0, 5.0], [-2.0, -2.0]]), 2) == pytest.approx([2.0, 10.0, -4.0])
    assert recorded[10] == [1.0, 5.0, 3.0]
    assert recorded[11] == recorded[12] == [1.0, 5.0, 3.0]  # committed once, never again
    assert recorded[13] == [5.0, 3.0, 0.5]
    assert bank.frames(0)[1][0, ::2, 0, 0].tolist() == [5.25, 3.25, 0.75]  # values follow their keys
    bank.reset()
    assert bank.frames(0) is None and bank.frame_count() == 0


def test_uncommitted_steps_leave_the_cache_untouched_and_attend_as_a_committed_one(model):
    """MemFlow's denoising steps: the same output as a committed step from the same state, and
    the cache exactly as before; so its rollout without a bank is LongLive's, value for value."""
    latents, timesteps = inputs(6)
    ctx = context(4)
    settings = dataclasses.replace(memflow.SETTINGS, memory=None)
    uncommitted, cache = rollout(model, settings, latents, timesteps, ctx)
    committed, _ = rollout(model, longlive.SETTINGS, latents, timesteps, ctx)
    assert torch.equal(uncommitted, committed)

    gen = torch.Generator().manual_seed(8)
    for step in range(2):  # the next block (it rolls the window) and a re-run of it
        before = [(layer.k.clone(), layer.v.clone(), layer.global_end, layer.local_end) for layer in cache.layers]
        noisy = torch.randn(1, BLOCK, 16, H, W, generator=gen)
        read = model(noisy, torch.full((1, BLOCK), 750), ctx, cache=cache, start_frame=18 + 3 * step, commit=False)
        for (k, v, g, local), layer in zip(before, cache.layers, strict=True):
            assert torch.equal(layer.k, k) and torch.equal(layer.v, v) and (layer.global_end, layer.local_end) == (g, local)
        written = model(noisy, torch.full((1, BLOCK), 750), ctx, cache=cache, start_frame=18 + 3 * step)
        assert torch.equal(read, written)
        assert any(not torch.equal(layer.k, k) for (k, *_), layer in zip(before, cache.layers, strict=True))
