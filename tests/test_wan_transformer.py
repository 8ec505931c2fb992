"""Causal Wan generator: KV-cache rollout vs a masked full-sequence forward, cache bookkeeping,
and a cross-check of one uncached forward against diffusers' WanTransformer3DModel."""

from __future__ import annotations

import json

import pytest
import torch

from scope.models.synthetic.generator import generator_state_dict, write_generator, write_wan_config
from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG, WanConfig
from scope.pipelines.wan.kv_cache import GeneratorCache
from scope.pipelines.wan.loading import load_generator
from scope.pipelines.wan.rope import axis_pairs, rope_table
from scope.pipelines.wan.transformer import CausalWanTransformer, set_attention_kernel, sdpa_attention

CONFIG = SYNTHETIC_WAN_CONFIG
H = W = 8  # latent size -> 4x4 tokens per frame
FSL = (H // 2) * (W // 2)
BLOCK, SINK, CAPACITY = 3, 3, 12


@pytest.fixture(scope="module")
def model() -> CausalWanTransformer:
    net = CausalWanTransformer(CONFIG)
    net.load_state_dict(generator_state_dict(CONFIG, seed=7))
    return net.eval().requires_grad_(False)


def make_context(seed: int, tokens: int = 9) -> torch.Tensor:
    """A text-encoder-like context: a few non-zero rows, zero padding to text_len."""
    gen = torch.Generator().manual_seed(seed)
    ctx = torch.zeros(1, CONFIG.text_len, CONFIG.text_dim)
    ctx[:, :tokens] = 0.2 * torch.randn(1, tokens, CONFIG.text_dim, generator=gen)
    return ctx


def new_cache(**kwargs) -> GeneratorCache:
    args = dict(frame_seq_len=FSL, capacity_frames=CAPACITY, sink_frames=SINK)
    args.update(kwargs)
    return GeneratorCache(CONFIG, **args)


def streaming_mask(num_frames: int, block: int, sink: int, window: int) -> torch.Tensor:
    """Token mask of LongLive streaming: each block sees the sink and the newest (window - sink) frames."""
    allowed = torch.zeros(num_frames, num_frames, dtype=torch.bool)
    for start in range(0, num_frames, block):
        end = min(start + block, num_frames)
        keys = list(range(min(sink, end))) + list(range(max(sink, end - (window - sink)), end))
        allowed[start:end, keys] = True
    return allowed.repeat_interleave(FSL, 0).repeat_interleave(FSL, 1)


def test_rope_table_layout():
    assert axis_pairs(128) == (22, 21, 21)
    table = rope_table(128)
    assert table.shape == (1024, 64) and table.dtype == torch.complex128

    def unit(angle: float) -> torch.Tensor:
        return torch.polar(torch.tensor(1.0, dtype=torch.float64), torch.tensor(angle, dtype=torch.float64))

    # Frame axis: position 5, pair 1 rotates by 5 / 10000^(2/44).
    assert torch.allclose(table[5, 1], unit(5 / 10000 ** (2 / 44)))
    # Height and width axes each start a fresh ladder (pairs 22 and 43) with angle = position.
    assert torch.allclose(table[3, 22], unit(3.0)) and torch.allclose(table[7, 43], unit(7.0))
    assert torch.allclose(table[7, 44], unit(7 / 10000 ** (2 / 42)))


def test_cached_rollout_matches_masked_full_sequence(model):
    """Seven 3-frame blocks (the window overflows from block 5 on), each run twice like denoising
    steps; the kept outputs equal one masked full-sequence forward on the final inputs."""
    blocks = 7
    frames = blocks * BLOCK
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, frames, 16, H, W, generator=gen)
    timesteps = torch.tensor([[1000, 750, 500]]).repeat(1, blocks) - torch.arange(frames) * 3
    context = make_context(1)
    cache = new_cache()
    outputs = []
    for b in range(blocks):
        sl = slice(b * BLOCK, (b + 1) * BLOCK)
        # A noisy step first: it must be rewritten in place by the final pass of the same block.
        noisy = torch.randn(1, BLOCK, 16, H, W, generator=gen)
        model(noisy, torch.full((1, BLOCK), 999), context if b == 0 else None, cache=cache, start_frame=b * BLOCK)
        ends = [(layer.global_end, layer.local_end) for layer in cache.layers]
        assert ends == [((b + 1) * BLOCK * FSL, min((b + 1) * BLOCK, CAPACITY) * FSL)] * CONFIG.num_layers
        out = model(latents[:, sl], timesteps[:, sl], None, cache=cache, start_frame=b * BLOCK)
        assert [(layer.global_end, layer.local_end) for layer in cache.layers] == ends
        outputs.append(out)
    cached = torch.cat(outputs, dim=1)

    mask = streaming_mask(frames, BLOCK, SINK, CAPACITY)
    with torch.no_grad():
        reference = model(latents, timesteps, context, attention_mask=mask)
    assert torch.isfinite(cached).all()
    assert (cached - reference).abs().max().item() < 1e-5
    # The mask matters: without eviction the late blocks would differ.
    with torch.no_grad():
        unwindowed = model(latents, timesteps, context, attention_mask=streaming_mask(frames, BLOCK, SINK, frames))
    assert (unwindowed[:, 12:] - reference[:, 12:]).abs().max().item() > 1e-3
    assert (unwindowed[:, :12] - reference[:, :12]).abs().max().item() < 1e-5


def test_cross_cache_skips_text_and_reset_cross_takes_new_prompt(model):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, BLOCK, 16, H, W, generator=gen)
    t = torch.full((1, BLOCK), 500)
    cache = new_cache()
    first = model(x, t, make_context(1), cache=cache)
    assert cache.cross_filled
    # With the cross K/V cached, the prompt argument is not used at all.
    again = model(x, t, make_context(2), cache=cache)
    assert torch.equal(first, again)
    cache.reset_cross()
    switched = model(x, t, make_context(2), cache=cache)
    assert (switched - first).abs().max().item() > 1e-3
    cache.reset()
    assert cache.global_end == cache.local_end == 0 and not cache.cross_filled
    assert all(not layer.k.any() for layer in cache.layers)


def _positions_cache(capacity: int, sink: int) -> GeneratorCache:
    return GeneratorCache(CONFIG, frame_seq_len=1, capacity_frames=capacity, sink_frames=sink)


def _write_positions(cache: GeneratorCache, start: int, count: int, offset: float = 0.0):
    """Write keys whose value is their absolute position (+offset) and return the attended positions."""
    pos = torch.arange(start, start + count, dtype=torch.float32) + offset
    kv = pos.view(1, count, 1, 1).expand(1, count, CONFIG.num_heads, CONFIG.head_dim)
    windows = [cache.write_and_window(i, start, kv, kv) for i in range(CONFIG.num_layers)]
    return windows[0][0][0, :, 0, 0].tolist()


def _stored(cache: GeneratorCache) -> list[float]:
    return cache.layers[0].k[0, : cache.local_end, 0, 0].tolist()


def test_write_rule_positions():
    cache = _positions_cache(capacity=12, sink=3)
    for start in range(0, 12, 3):
        assert _write_positions(cache, start, 3) == list(range(start + 3))
    assert (cache.global_end, cache.local_end) == (12, 12)
    # Roll: evict the 3 oldest non-sink tokens, keep the sink.
    assert _write_positions(cache, 12, 3) == [0, 1, 2] + list(range(6, 15))
    plan = cache.plan(cache.layers[0], 15, 3)
    assert (plan.evicted, plan.rolled, plan.local_start, plan.local_end) == (3, 6, 9, 12)
    # Same chunk again (a denoising step): in place, no index move.
    assert _write_positions(cache, 12, 3, offset=0.5) == [0, 1, 2] + list(range(6, 12)) + [12.5, 13.5, 14.5]
    assert (cache.global_end, cache.local_end) == (15, 12)
    # Recompute the last 12 positions: the sink is protected, the rest rewritten, indices kept.
    attended = _write_positions(cache, 3, 12, offset=100.0)
    assert attended == [0, 1, 2] + [p + 100.0 for p in range(6, 15)]
    assert _stored(cache) == attended
    assert (cache.global_end, cache.local_end) == (15, 12)
    for layer in cache.layers:
        assert layer.k[0, :3, 0, 0].tolist() == [0, 1, 2]
    # Recomputing a chunk in the middle rewrites its slots and attends up to it, indices kept.
    assert _write_positions(cache, 6, 3, offset=200.0) == [0, 1, 2, 206.0, 207.0, 208.0]
    assert (cache.global_end, cache.local_end) == (15, 12)
    assert _stored(cache) == [0, 1, 2, 206.0, 207.0, 208.0] + [p + 100.0 for p in range(9, 15)]


def test_write_rule_small_evictions_and_no_sink():
    # One token at a time into a 40-slot window without sink: many overlapping shifts.
    cache = _positions_cache(capacity=40, sink=0)
    for start in range(100):
        attended = _write_positions(cache, start, 1)
        assert attended == list(range(max(0, start - 39), start + 1))
    # A window narrower than the buffer attends to the newest tokens only.
    narrow = GeneratorCache(CONFIG, frame_seq_len=1, capacity_frames=10, sink_frames=2, window_frames=6)
    for start in range(0, 30, 2):
        attended = _write_positions(narrow, start, 2)
    assert attended == [0, 1, 26, 27, 28, 29]
    # Without rolling, writing past the capacity is an error rather than silent corruption.
    fixed = GeneratorCache(CONFIG, frame_seq_len=1, capacity_frames=4, sink_frames=0, rolling=False)
    _write_positions(fixed, 0, 4)
    with pytest.raises(ValueError, match="do not fit"):
        _write_positions(fixed, 4, 2)


def test_recompute_protects_sink_only_when_stream_is_longer_than_window(model):
    gen = torch.Generator().manual_seed(5)
    context = make_context(1)

    def stream(num_blocks: int) -> GeneratorCache:
        cache = new_cache()
        for b in range(num_blocks):
            x = torch.randn(1, BLOCK, 16, H, W, generator=gen)
            model(x, torch.zeros(1, BLOCK), context, cache=cache, start_frame=b * BLOCK)
        return cache

    def snapshot(cache):
        return [(layer.k.clone(), layer.v.clone(), layer.global_end, layer.local_end) for layer in cache.layers]

    # Long stream (21 frames): re-cache the newest 12 frames with a new prompt.
    cache = stream(7)
    before = snapshot(cache)
    cache.reset_cross()
    frames = torch.randn(1, CAPACITY, 16, H, W, generator=gen)
    out = model(frames, torch.zeros(1, CAPACITY), make_context(2), cache=cache, start_frame=21 - CAPACITY)
    assert torch.isfinite(out).all()
    for (k0, v0, g0, l0), layer in zip(before, cache.layers, strict=True):
        assert (layer.global_end, layer.local_end) == (g0, l0) == (21 * FSL, CAPACITY * FSL)
        assert torch.equal(layer.k[:, : SINK * FSL], k0[:, : SINK * FSL])
        assert torch.equal(layer.v[:, : SINK * FSL], v0[:, : SINK * FSL])
        assert not torch.equal(layer.k[:, SINK * FSL :], k0[:, SINK * FSL :])

    # Short stream (6 frames): re-caching from frame 0 rewrites the sink too.
    cache = stream(2)
    before = snapshot(cache)
    cache.reset_cross()
    frames = torch.randn(1, 6, 16, H, W, generator=gen)
    model(frames, torch.zeros(1, 6), make_context(2), cache=cache, start_frame=0)
    for (k0, _, g0, l0), layer in zip(before, cache.layers, strict=True):
        assert (layer.global_end, layer.local_end) == (g0, l0) == (6 * FSL, 6 * FSL)
        assert not torch.equal(layer.k[:, : SINK * FSL], k0[:, : SINK * FSL])


def test_uncached_forward_options(model):
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(1, 2, 16, H, W, generator=gen)
    ctx = make_context(4)
    with torch.no_grad():
        per_frame = model(x, torch.tensor([[250, 250]]), ctx)
        assert torch.equal(model(x, torch.tensor([250.0]), ctx), per_frame)
        assert torch.equal(model(x, 250, ctx), per_frame)
        # RoPE is relative inside one chunk, so only masks or caches make start_frame visible;
        # an additive all-zero mask changes nothing.
        assert (model(x, 250, ctx, start_frame=40) - per_frame).abs().max() < 1e-4
        assert torch.allclose(model(x, 250, ctx, attention_mask=torch.zeros(2 * FSL, 2 * FSL)), per_frame, atol=1e-6)
        assert (model(x, torch.tensor([[250, 900]]), ctx) - per_frame)[:, 1].abs().max() > 1e-3
    with pytest.raises(ValueError, match="attention_mask"):
        model(x, 250, ctx, cache=new_cache(), attention_mask=torch.ones(2 * FSL, 2 * FSL, dtype=torch.bool))
    with pytest.raises(ValueError, match="context"):
        model(x, 250, None)
    with pytest.raises(ValueError, match="RoPE"):
        model(x, 250, ctx, start_frame=1023)


def test_pluggable_attention_kernel(model):
    calls = []

    def counting(q, k, v, mask):
        calls.append(q.shape)
        return sdpa_attention(q, k, v, mask)

    x = torch.randn(1, 1, 16, H, W)
    previous = set_attention_kernel(counting)
    try:
        with torch.no_grad():
            model(x, 10, make_context(0))
    finally:
        set_attention_kernel(previous)
    assert len(calls) == 2 * CONFIG.num_layers


def test_bfloat16_cached_forward_is_finite(model):
    net = CausalWanTransformer(CONFIG)
    net.load_state_dict(model.state_dict())
    net = net.to(torch.bfloat16).eval()
    cache = new_cache(dtype=torch.bfloat16)
    ref_cache = new_cache()
    x = torch.randn(1, BLOCK, 16, H, W)
    out = net(x, torch.full((1, BLOCK), 750), make_context(1), cache=cache)
    ref = model(x, torch.full((1, BLOCK), 750), make_context(1), cache=ref_cache)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().mean() < 0.05 * ref.abs().mean()
    with pytest.raises(ValueError, match="cache is torch.float32"):
        net(x, torch.full((1, BLOCK), 750), make_context(1), cache=new_cache())


def test_matches_diffusers_wan_transformer(tmp_path):
    """Oracle: the first block of a stream equals diffusers' (non-causal) Wan forward on the same frames."""
    import diffusers
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    config_path = write_wan_config(tmp_path / "config.json", CONFIG)
    generator_path = write_generator(tmp_path / "longlive_base.pt", CONFIG, seed=11)
    ours = load_generator(config_path, generator_path)

    raw = torch.load(generator_path, map_location="cpu", weights_only=True)["generator"]
    original = {key.removeprefix("model."): value for key, value in raw.items()}
    cfg = WanConfig.from_dict(json.loads(config_path.read_text()))
    theirs = diffusers.WanTransformer3DModel(
        patch_size=cfg.patch_size,
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim,
        out_channels=cfg.out_dim,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=cfg.eps,
    )
    theirs.load_state_dict(convert_wan_transformer_to_diffusers(dict(original)), strict=True)
    theirs.eval()

    gen = torch.Generator().manual_seed(2)
    latents = torch.randn(1, 3, 16, H, W, generator=gen)
    context = make_context(6)
    t = 750
    with torch.no_grad():
        expected = theirs(
            latents.permute(0, 2, 1, 3, 4), torch.tensor([t]), context, return_dict=False
        )[0].permute(0, 2, 1, 3, 4)
        uncached = ours(latents, torch.full((1, 3), t), context)
    cached = ours(latents, torch.full((1, 3), t), context, cache=new_cache())
    assert (uncached - expected).abs().max().item() < 2e-5
    assert (cached - expected).abs().max().item() < 2e-5
