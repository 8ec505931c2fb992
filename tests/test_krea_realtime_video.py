"""What ``krea-realtime-video`` changes on the causal core, checked on its arithmetic.

The window rebuilt before every chunk against one full block-causal forward over the context
and the chunk (positions 3..5 for ever); the context's make-up (first latent, then a re-encoded
decoded frame); the attention bias on hand-made scores, with the reference's unmasked padding
and masked; the fused q/k/v projection against the three linears, LoRA deltas included; and the
stream's behaviour a user relies on (determinism, prompt switches, transitions, video mode).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scope
from scope.models.artifacts import KREA_GENERATOR, WAN_14B_CONFIG, local_path
from scope.models.synthetic.lora import write_synthetic_lora
from scope.pipelines import krea_realtime_video as krea
from scope.pipelines.wan.attention_bias import CacheAttentionBias
from scope.pipelines.wan.config import SYNTHETIC_WAN_14B_CONFIG
from scope.pipelines.wan.loading import load_generator
from scope.pipelines.wan.lora import RuntimeLoras, read_lora

HEIGHT, WIDTH = 64, 96  # 4x6 = 24 tokens per latent frame: 72 per chunk, padded to 128 by the bias
FSL = 24


def embeds(seed: int) -> torch.Tensor:
    return 0.5 * torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(seed))


A, B = embeds(1), embeds(2)


@pytest.fixture(scope="module")
def pipeline(synthetic_models):
    return scope.load_pipeline("krea-realtime-video", models_dir=synthetic_models, height=HEIGHT, width=WIDTH, seed=42)


def record_forwards(stream) -> list[dict]:
    """Every generator call of the stream: inputs, position, bias and output."""
    calls: list[dict] = []
    forward = stream._forward

    def recording(latents, timestep, start_frame=None, **kwargs):
        out = forward(latents, timestep, start_frame, **kwargs)
        start = stream.current_start_frame if start_frame is None else start_frame
        calls.append(dict(latents=latents.clone(), timestep=timestep.clone(), start=start, bias=kwargs.get("bias"), out=out.clone()))
        return out

    stream._forward = recording
    return calls


# The recompute ----------------------------------------------------------------------------


def block_causal_forward(generator, context_latents, chunk, step, embedding) -> torch.Tensor:
    """One uncached forward over [context (t=0), chunk (t=step)] from position 0: the context
    frames attend among themselves, the chunk's to everything."""
    frames = context_latents.shape[1] + chunk.shape[1]
    seen = torch.zeros(frames, frames, dtype=torch.bool)
    seen[:3, :3] = True
    seen[3:, :] = True
    mask = seen.repeat_interleave(FSL, 0).repeat_interleave(FSL, 1)
    timesteps = torch.tensor([[0, 0, 0] + [step] * chunk.shape[1]])
    with torch.no_grad():
        flow = generator(torch.cat([context_latents, chunk], dim=1), timesteps, embedding, attention_mask=mask)
    return flow[:, 3:]


def test_every_chunk_after_the_first_rebuilds_the_window_and_denoises_at_positions_3_to_5(pipeline):
    stream = pipeline.open_stream()
    calls = record_forwards(stream)
    for index in range(5):
        context = None
        if index > 0:
            context = stream.context.latents_for(stream.current_start_frame, 3, pipeline.components.vae)
        calls.clear()
        stream.generate(prompt_embeds=A, kv_cache_attention_bias=1.0)
        if index == 0:  # no recompute: four steps at positions 0..2 over an empty window
            assert [c["start"] for c in calls] == [0, 0, 0, 0]
            continue
        recompute, first_step = calls[0], calls[1]
        assert recompute["start"] == 0 and torch.equal(recompute["latents"], context)
        assert int(recompute["timestep"].abs().max()) == 0
        assert [c["start"] for c in calls[1:]] == [3, 3, 3, 3]  # no clean pass follows
        assert stream.cache.local_end == 6 * FSL
        expected = block_causal_forward(
            pipeline.components.generator, context, first_step["latents"], 1000, stream.embedding
        )
        assert (first_step["out"] - expected).abs().max().item() < 2e-5, index


def test_the_context_is_the_first_latent_then_a_reencoded_frame_and_the_two_newest_latents(pipeline):
    stream = pipeline.open_stream()
    vae = pipeline.components.vae
    latents, decoded = [], []
    decode = vae.stream_decode

    def keep(x0, state):
        out = decode(x0, state)
        latents.append(x0.clone())
        decoded.append(out.clone())
        return out

    vae.stream_decode = keep
    try:
        for _ in range(3):
            stream.generate(prompt_embeds=A)
    finally:
        del vae.stream_decode
    all_latents, all_frames = torch.cat(latents, dim=1), torch.cat(decoded, dim=1)
    assert all_latents.shape[1] == 9 and all_frames.shape[1] == 9 + 12 + 12
    # Second chunk: the stream's first latent and latents 1, 2.
    early = stream.context.latents_for(3, 3, vae)
    # Fourth chunk (start 9): decoded frames 24..32 are kept; frame 24 is latent 6's last frame.
    context = stream.context.latents_for(9, 3, vae)
    reencoded = vae.encode(all_frames[:, 24:25].clamp(-1, 1).permute(0, 2, 1, 3, 4))
    assert torch.equal(context[:, 1:], all_latents[:, 7:9])
    assert torch.allclose(context[:, :1], reencoded, atol=1e-6)
    assert not torch.allclose(context[:, :1], all_latents[:, 6:7], atol=1e-3)  # a re-encode, not the latent
    assert torch.equal(stream.context.first, all_latents[:, :1])
    assert early.shape[1] == 3


# The attention bias -----------------------------------------------------------------------


def by_hand(q, k, v, bias: float, fsl: int, current_frames: int, padded_to: int | None) -> torch.Tensor:
    """Softmax written out: log(bias) on keys [fsl, kv - current*fsl), and ``padded_to - kv``
    zero keys (logit 0, value 0) in the denominator when the padding is not masked."""
    d = q.shape[-1]
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(d)
    kv = k.shape[1]
    scores[..., fsl : kv - current_frames * fsl] += math.log(bias)
    weights = scores.exp()
    denominator = weights.sum(-1, keepdim=True)
    if padded_to is not None:
        denominator = denominator + (padded_to - kv)
    return torch.einsum("bhqk,bkhd->bqhd", weights / denominator, v.double())


@pytest.mark.parametrize("mask_padding", [False, True])
@pytest.mark.parametrize("kv_frames", [3, 6])
def test_the_bias_on_hand_made_scores(kv_frames, mask_padding):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 3 * FSL, 2, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(1, kv_frames * FSL, 2, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(1, kv_frames * FSL, 2, 16, generator=gen, dtype=torch.float64)
    bias = CacheAttentionBias(0.3, FSL, 3, mask_padding)
    padded_k, padded_v, mask = bias.apply(q.shape[1], k, v)
    # The reference pads to a multiple of 128: 72 -> 128 on a first chunk, 144 -> 256 later.
    assert padded_k.shape[1] == (kv_frames * FSL if mask_padding else {3: 128, 6: 256}[kv_frames])
    biased = (mask[0, 0, 0] != 0).nonzero().flatten().tolist()
    assert biased == (list(range(FSL, 3 * FSL)) if kv_frames == 6 else [])  # frames 1, 2 only
    got = F.scaled_dot_product_attention(
        q.transpose(1, 2), padded_k.transpose(1, 2), padded_v.transpose(1, 2), attn_mask=mask
    ).transpose(1, 2)
    expected = by_hand(q, k, v, 0.3, FSL, 3, None if mask_padding else padded_k.shape[1])
    assert (got - expected).abs().max().item() < 1e-12


def test_bias_one_is_plain_attention_and_the_switches_change_the_stream(synthetic_models, pipeline):
    def run(p, **params) -> np.ndarray:
        stream = p.open_stream()
        return np.concatenate([stream.generate(prompt_embeds=A, **params).frames for _ in range(3)])

    default = run(pipeline)
    assert np.array_equal(default, run(pipeline, kv_cache_attention_bias=0.3))
    plain = run(pipeline, kv_cache_attention_bias=1.0)
    assert np.abs(default.astype(int) - plain).max() > 0
    masked = scope.load_pipeline(
        "krea-realtime-video", models_dir=synthetic_models, height=HEIGHT, width=WIDTH, seed=42,
        kv_cache_attention_bias_mask_padding=True,
    )
    assert np.abs(run(masked).astype(int) - default).max() > 0  # the padding is part of the numbers
    assert np.array_equal(run(masked, kv_cache_attention_bias=1.0), plain)  # no bias: nothing padded


# The fused projection ---------------------------------------------------------------------


def generator_files(models_dir):
    return local_path(models_dir, WAN_14B_CONFIG, "config.json"), local_path(models_dir, KREA_GENERATOR, KREA_GENERATOR.files[0])


def outputs(generator, runtime=None, scales=None) -> torch.Tensor:
    if runtime is not None:
        runtime.scales = scales
    gen = torch.Generator().manual_seed(9)
    latents = torch.randn(1, 3, 16, 8, 12, generator=gen)
    with torch.no_grad():
        return generator(latents, torch.full((1, 3), 750), A)


def test_the_fused_projection_equals_q_k_v_with_lora_deltas_on_them(synthetic_models, tmp_path):
    config, weights = generator_files(synthetic_models)
    lora = write_synthetic_lora(
        tmp_path / "qkv.safetensors", "peft", SYNTHETIC_WAN_14B_CONFIG, seed=4,
        targets=[f"blocks.{i}.self_attn.{p}" for i in range(3) for p in "qkv"],
    )
    plain = load_generator(config, weights)
    fused = load_generator(config, weights, fuse_qkv=True)
    assert fused.blocks[0].self_attn.qkv.weight.shape == (3 * 384, 384)
    assert not hasattr(fused.blocks[0].self_attn, "q")
    base = outputs(plain)
    assert (outputs(fused) - base).abs().max().item() < 1e-5
    # Merged at load: the deltas land in the fused weight, as in the three linears.
    merged_plain = load_generator(config, weights, merged_loras=[(lora, 0.8)])
    merged_fused = load_generator(config, weights, merged_loras=[(lora, 0.8)], fuse_qkv=True)
    with_lora = outputs(merged_plain)
    assert (with_lora - base).abs().max().item() > 1e-3
    assert (outputs(merged_fused) - with_lora).abs().max().item() < 1e-5
    # Kept apart: the hook on the fused projection adds each part's delta to its rows.
    runtime_plain = RuntimeLoras(plain, [read_lora(lora, plain)], torch.device("cpu"), torch.float32)
    runtime_fused = RuntimeLoras(fused, [read_lora(lora, fused)], torch.device("cpu"), torch.float32)
    scales = {lora.resolve(): 0.8}
    assert (outputs(plain, runtime_plain, scales) - with_lora).abs().max().item() < 1e-4
    assert (outputs(fused, runtime_fused, scales) - outputs(plain, runtime_plain, scales)).abs().max().item() < 1e-5
    assert (outputs(fused, runtime_fused, {}) - base).abs().max().item() < 1e-5


def test_a_user_lora_on_self_attention_reaches_the_krea_stream(synthetic_models, tmp_path, pipeline):
    """The reference applies user LoRAs after fusing, so its q/k/v deltas never act; here they do."""
    lora = write_synthetic_lora(
        tmp_path / "attn.safetensors", "peft", SYNTHETIC_WAN_14B_CONFIG, seed=5,
        targets=[f"blocks.{i}.self_attn.{p}" for i in range(3) for p in "qkv"],
    )
    with_lora = scope.load_pipeline(
        "krea-realtime-video", models_dir=synthetic_models, height=HEIGHT, width=WIDTH, seed=42,
        loras=[{"path": str(lora), "scale": 1.0}],
    )
    ours = with_lora.open_stream().generate(prompt_embeds=A).frames
    assert np.abs(ours.astype(int) - pipeline.open_stream().generate(prompt_embeds=A).frames).max() > 0


# The stream -------------------------------------------------------------------------------


def run_stream(pipeline, calls) -> list[np.ndarray]:
    stream = pipeline.open_stream()
    return [stream.generate(**call).frames for call in calls]


def test_streams_are_deterministic_and_independent(pipeline):
    calls = [dict(prompt_embeds=A)] * 4
    first = pipeline.open_stream()
    second = pipeline.open_stream()
    interleaved = [(first.generate(**c).frames, second.generate(**c).frames) for c in calls]
    alone = run_stream(pipeline, calls)
    for (a, b), c in zip(interleaved, alone):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    assert [f.shape[0] for f in alone] == [9, 12, 12, 12]


def test_a_new_prompt_acts_on_the_very_next_chunk(pipeline):
    """The window is rebuilt under the current prompt every chunk: no stale keys linger."""
    same = run_stream(pipeline, [dict(prompt_embeds=A)] * 4)
    switched = run_stream(pipeline, [dict(prompt_embeds=A)] * 2 + [dict(prompt_embeds=B)] * 2)
    for i in range(2):
        assert np.array_equal(same[i], switched[i])
    assert np.abs(same[2].astype(int) - switched[2]).mean() > 1.0


def test_transitions_and_resets(pipeline):
    stream = pipeline.open_stream()
    stream.generate(prompts="a red fox")
    chunks = [stream.generate(transition={"target_prompts": "a city at night", "num_steps": 3})]
    while chunks[-1].transition_active:
        chunks.append(stream.generate())
    assert len(chunks) == 3 and not chunks[-1].transition_active
    restarted = stream.generate(reset_cache=True, prompts="a red fox")
    assert restarted.info["current_start_frame"] == 0 and restarted.frames.shape[0] == 9
    fresh = pipeline.open_stream().generate(prompts="a red fox")
    assert np.array_equal(restarted.frames, fresh.frames)


def test_video_to_video_keeps_the_first_latent_of_its_four_latent_first_chunk(pipeline):
    gen = np.random.default_rng(0)
    clip = gen.integers(0, 255, (13 + 12 * 3, HEIGHT, WIDTH, 3), dtype=np.uint8)
    stream = pipeline.open_stream()
    first = stream.generate(clip[:13], prompt_embeds=A, noise_scale=0.7, noise_controller=False)
    assert first.frames.shape[0] == 13 and stream.current_start_frame == 4
    context = stream.context.latents_for(4, 3, pipeline.components.vae)
    assert torch.equal(context[:, :1], stream.context.first)
    for i in range(3):
        chunk = stream.generate(clip[13 + 12 * i : 25 + 12 * i])
        assert chunk.frames.shape[0] == 12
    assert chunk.info["current_start_frame"] == 10


# fp8 and the load's advice ------------------------------------------------------------------


def test_fp8_quantises_the_fused_projection_with_one_scale(synthetic_models):
    from scope.pipelines.wan.loading import Fp8Linear

    config, weights = generator_files(synthetic_models)
    exact = load_generator(config, weights, fuse_qkv=True)
    fp8 = load_generator(config, weights, fuse_qkv=True, quantization="fp8_e4m3fn")
    fused = fp8.blocks[0].self_attn.qkv
    assert isinstance(fused, Fp8Linear) and fused.weight.shape == (3 * 384, 384)
    assert fused.scale.ndim == 0  # per tensor over q, k and v together, as the reference's
    reference, quantised = outputs(exact), outputs(fp8)
    relative = ((quantised - reference).norm() / reference.norm()).item()
    assert 0 < relative < 0.1, relative


@pytest.mark.parametrize(
    "quantization,memory,advised",
    [(None, 24.0, True), (None, 39.5, True), (None, 80.0, False), ("fp8_e4m3fn", 24.0, False), (None, None, False)],
)
def test_fp8_is_advised_below_40_gb(quantization, memory, advised):
    advice = krea.fp8_advice(quantization, memory)
    assert (advice is not None) is advised
    if advised:
        assert "fp8_e4m3fn" in advice and f"{memory:.0f} GB" in advice


def test_load_warnings_reach_the_status_and_the_kernel(synthetic_models, monkeypatch):
    from scope.api import LoadWarning
    from scope.pipelines.base import LoadContext, MemoryEstimate
    from scope.streaming.manager import LOADED, LoadTarget, PipelineManager
    from scope.streaming.pool import PipelineSlot

    monkeypatch.setattr(krea, "gpu_memory_gb", lambda device: 24.0)  # as if on a 24 GB GPU
    with pytest.warns(LoadWarning, match="fp8_e4m3fn"):
        loaded = scope.load_pipeline("krea-realtime-video", models_dir=synthetic_models, height=HEIGHT, width=WIDTH)
    manager = PipelineManager(LoadContext(synthetic_models, synthetic_models, synthetic_models))
    manager.current = PipelineSlot(LoadTarget("krea-realtime-video", {}), manager.context, MemoryEstimate(), type(loaded))
    manager.current.status, manager.current.pipeline = LOADED, loaded
    assert manager.status_dict()["warnings"] == loaded.load_warnings and len(loaded.load_warnings) == 1
    with_fp8 = scope.load_pipeline(
        "krea-realtime-video", models_dir=synthetic_models, height=HEIGHT, width=WIDTH, quantization="fp8_e4m3fn"
    )
    assert with_fp8.load_warnings == []
