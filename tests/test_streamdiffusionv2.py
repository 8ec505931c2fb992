"""What ``streamdiffusionv2`` changes on the causal core, checked on its arithmetic.

The cache's roll rule on keys that encode their frame and pass; a cached rollout against one
full forward under the pipeline's mask; the noise controller against values worked out by
hand; the first chunk's 4 -> 5 resampling and the encoder that skips the latent normalisation;
the steps it runs in each mode. What it shares with the other causal pipelines (frame counts,
seeds, prompts, transitions, resets) is in tests/test_causal_streams.py.
"""

from __future__ import annotations

import dataclasses
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scope
from scope.models.synthetic.generator import generator_state_dict
from scope.pipelines import longlive, streamdiffusionv2
from scope.pipelines.registry import schema_entry
from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG
from scope.pipelines.wan.frames import resample_indices
from scope.pipelines.wan.kv_cache import GeneratorCache
from scope.pipelines.wan.noise_controller import NoiseController
from scope.pipelines.wan.rope import apply_rope
from scope.pipelines.wan.transformer import CausalWanTransformer, WanSelfAttention
from scope.pipelines.wan.vae import WanVAE

CONFIG = SYNTHETIC_WAN_CONFIG
SETTINGS = streamdiffusionv2.SETTINGS
SIZE = 64
H, W = 8, 12  # latent size of the rollout -> 4x6 tokens per frame
FSL = (H // 2) * (W // 2)


def blocks(count: int) -> list[tuple[int, int]]:
    """``(start, frames)`` of each chunk: two latent frames at a stream start, then one."""
    out, start = [], 0
    for b in range(count):
        frames = 2 if b == 0 else SETTINGS.frames_per_block
        out.append((start, frames))
        start += frames
    return out


# The roll rule ----------------------------------------------------------------------------


def test_the_cache_keeps_a_sink_of_three_and_rolls_the_rest_on_position_coded_keys():
    """Keys are ``frame + pass/10``: after each chunk the buffer reads ``[0, 1, 2][n-2, n-1][n]``
    with every frame's clean-pass keys (pass 2), the sink never changes once its third frame is
    written, and the queries see the whole filled buffer."""
    cache = GeneratorCache(CONFIG, frame_seq_len=1, capacity_frames=6, sink_frames=3, protect_sink=False)
    sink_after_block_1 = None
    for b, (start, frames) in enumerate(blocks(10)):
        for step in range(3):  # [750, 250] and the clean pass
            k = (torch.arange(start, start + frames, dtype=torch.float32) + step / 10).view(1, frames, 1, 1)
            k = k.expand(1, frames, CONFIG.num_heads, CONFIG.head_dim)
            keys, _ = cache.write_and_window(0, start, k, k.clone())
            assert torch.equal(keys, cache.layers[0].k[:, : cache.layers[0].local_end])  # the whole buffer
        slots = [round(x, 1) for x in cache.layers[0].k[0, : cache.layers[0].local_end, 0, 0].tolist()]
        end = start + frames
        expected = list(range(end)) if end <= 6 else [0, 1, 2, end - 3, end - 2, end - 1]
        assert slots == [e + 0.2 for e in expected], (b, slots)
        if b == 1:
            sink_after_block_1 = cache.layers[0].k[:, :3].clone()
        elif b > 1:
            assert torch.equal(cache.layers[0].k[:, :3], sink_after_block_1)


def test_with_longlives_recompute_rule_the_sink_would_keep_a_noisy_frame():
    """Why the pipeline turns the rule off: block 1 writes frame 2, inside the sink; LongLive's
    rule would keep its first step's keys there for good instead of its clean ones."""
    cache = GeneratorCache(CONFIG, frame_seq_len=1, capacity_frames=6, sink_frames=3)
    for start, frames in blocks(2):
        for step in range(3):
            k = (torch.arange(start, start + frames, dtype=torch.float32) + step / 10).view(1, frames, 1, 1)
            k = k.expand(1, frames, CONFIG.num_heads, CONFIG.head_dim)
            cache.write_and_window(0, start, k, k.clone())
    assert round(cache.layers[0].k[0, 2, 0, 0].item(), 1) == 2.0


def test_a_stream_leaves_each_frames_clean_pass_keys_in_the_sink(synthetic_models):
    stream = scope.load_pipeline("streamdiffusionv2", models_dir=synthetic_models, height=SIZE, width=SIZE).open_stream()
    written: dict[int, list[torch.Tensor]] = {}
    write = stream.cache.write_and_window

    def recording(index, current_start, k, v, *, commit=True):
        if index == 0:
            written.setdefault(current_start, []).append(k.clone())
        return write(index, current_start, k, v, commit=commit)

    stream.cache.write_and_window = recording  # this stream's own cache
    for _ in range(3):
        stream.generate(prompts="a lantern")
    fsl = stream.frame_seq_len
    passes = written[2 * fsl]  # block 1: frame 2, the sink's last frame
    assert len(passes) == 3 and not torch.equal(passes[0], passes[-1])
    assert torch.equal(stream.cache.layers[0].k[:, 2 * fsl : 3 * fsl], passes[-1])


# A cached rollout against one full forward -------------------------------------------------


@pytest.fixture(scope="module")
def model() -> CausalWanTransformer:
    net = CausalWanTransformer(CONFIG)
    net.load_state_dict(generator_state_dict(CONFIG, seed=3))
    return net.eval().requires_grad_(False)


def context() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    ctx = torch.zeros(1, CONFIG.text_len, CONFIG.text_dim)
    ctx[:, :8] = 0.2 * torch.randn(1, 8, CONFIG.text_dim, generator=gen)
    return ctx


def rollout(model, latents, timesteps, protect_sink: bool = False) -> torch.Tensor:
    """Chunk by chunk as the stream runs them: a noisy step, then the pass whose keys stay."""
    cache = GeneratorCache(
        CONFIG, frame_seq_len=FSL, capacity_frames=SETTINGS.local_attn_size, sink_frames=SETTINGS.sink_size,
        protect_sink=protect_sink,
    )
    gen = torch.Generator().manual_seed(11)
    outputs = []
    for start, frames in blocks(latents.shape[1] - 1):
        sl = slice(start, start + frames)
        noisy = torch.randn(1, frames, 16, H, W, generator=gen)
        model(noisy, torch.full((1, frames), 600), context(), cache=cache, start_frame=start)
        outputs.append(model(latents[:, sl], timesteps[:, sl], context(), cache=cache, start_frame=start))
    return torch.cat(outputs, dim=1)


def pipeline_mask(frames: int) -> torch.Tensor:
    """Which key frames each query frame sees: its chunk's sink (the first three frames written)
    and the newest three frames up to its chunk's end."""
    mask = torch.zeros(frames, frames, dtype=torch.bool)
    for start, count in blocks(frames - 1):
        end = start + count
        seen = set(range(min(SETTINGS.sink_size, end))) | set(range(max(0, end - 3), end))
        mask[start:end, sorted(seen)] = True
    return mask


def full_forward(model, latents, timesteps) -> torch.Tensor:
    """One uncached forward over every frame, self-attention under :func:`pipeline_mask`."""
    frames = latents.shape[1]
    tokens = pipeline_mask(frames).repeat_interleave(FSL, 0).repeat_interleave(FSL, 1)
    freqs = model.rope.freqs(0, frames, H // 2, W // 2, "cpu")

    def self_attention(self, x, frame_rope, **_):
        b, n, _ = x.shape
        shape = (b, n, self.num_heads, self.head_dim)
        q, k, v = self.norm_q(self.q(x)).view(shape), self.norm_k(self.k(x)).view(shape), self.v(x).view(shape)
        q, k = apply_rope(q, freqs), apply_rope(k, freqs)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=tokens)
        return self.o(out.transpose(1, 2).flatten(2))

    with torch.no_grad(), mock.patch.object(WanSelfAttention, "forward", self_attention):
        return model(latents, timesteps, context())


def test_a_cached_rollout_equals_the_full_forward_under_the_pipelines_mask(model):
    frames = 11  # 2 + 9 chunks of one frame: the roll runs six times
    gen = torch.Generator().manual_seed(5)
    latents = torch.randn(1, frames, 16, H, W, generator=gen)
    timesteps = torch.zeros(1, frames, dtype=torch.long) + torch.arange(frames) * 3
    cached = rollout(model, latents, timesteps)
    expected = full_forward(model, latents, timesteps)
    assert (cached - expected).abs().max().item() < 2e-5
    # LongLive's recompute rule would leave frame 2's noisy keys in the sink: a different stream.
    protected = rollout(model, latents, timesteps, protect_sink=True)
    assert (protected - expected)[:, 3:].abs().max().item() > 1e-3


# The noise controller by hand -------------------------------------------------------------


def flat_frames(levels: list[int]) -> np.ndarray:
    """Frames of one grey level each: the RMSE between two is their difference in [-1, 1] units."""
    return np.stack([np.full((SIZE, SIZE, 3), level, dtype=np.uint8) for level in levels])


def by_hand(level: int, before: int, incoming: float = 0.7) -> float:
    """``(0.8 - 0.2 d) 0.9 + 0.1 incoming`` with ``d = clamp(RMSE / 0.2, 0, 1)``."""
    d = min(abs(level - before) / 255 * 2 / 0.2, 1.0)
    return (0.8 - 0.2 * d) * 0.9 + 0.1 * incoming


def test_the_controller_formula_on_one_frame_windows():
    controller = NoiseController()
    first = torch.tensor([100, 104, 110, 110, 116], dtype=torch.float32).view(1, 1, 5, 1, 1) / 255 * 2 - 1
    # One-frame window: the last frame against the one before it; then against the previous
    # chunk's last frame, as the reference pairs them.
    assert controller(first.expand(1, 3, 5, 4, 4), 0.7, 1) == pytest.approx(by_hand(116, 110), abs=1e-6)
    second = torch.tensor([120, 124, 128, 121], dtype=torch.float32).view(1, 1, 4, 1, 1) / 255 * 2 - 1
    assert controller(second.expand(1, 3, 4, 4, 4), 0.7, 1) == pytest.approx(by_hand(121, 116), abs=1e-6)
    # Past 0.2 RMSE the motion term saturates: 0.54 + 0.1 * incoming.
    still = torch.full((1, 3, 4, 4, 4), -1.0)
    assert NoiseController()(torch.cat([still, still[:, :, :1] + 1.0], dim=2), 0.5, 1) == pytest.approx(0.54 + 0.05)


@pytest.fixture(scope="module")
def pipeline(synthetic_models):
    return scope.load_pipeline("streamdiffusionv2", models_dir=synthetic_models, height=SIZE, width=SIZE)


def first_steps(stream) -> list[int]:
    """Record the timestep of every generator call the stream makes."""
    seen: list[int] = []
    forward = stream._forward

    def recording(latents, timestep, *args, **kwargs):
        seen.append(int(timestep[0, 0]))
        return forward(latents, timestep, *args, **kwargs)

    stream._forward = recording
    return seen


def test_the_stream_smooths_from_the_default_every_chunk_and_steps_from_its_scale(pipeline):
    stream = pipeline.open_stream()
    steps = first_steps(stream)
    a = stream.generate(flat_frames([100, 104, 110, 116]), prompts="a watercolour")
    b = stream.generate(flat_frames([120, 124, 128, 121]))
    # The first chunk is resampled to 100, 104, 110, 110, 116: its last pair differs by 6.
    assert a.info["noise_scale"] == pytest.approx(by_hand(116, 110), abs=1e-6)
    assert b.info["noise_scale"] == pytest.approx(by_hand(121, 116), abs=1e-6)  # from 0.7, not from a's
    assert steps == [int(1000 * a.info["noise_scale"]) - 100, 250, 0, int(1000 * b.info["noise_scale"]) - 100, 250, 0]
    # The controller off: the sent scale as it is, and so the first step.
    fixed = pipeline.open_stream()
    steps = first_steps(fixed)
    chunk = fixed.generate(flat_frames([100, 104, 110, 116]), prompts="a watercolour", noise_controller=False, noise_scale=0.5)
    assert chunk.info["noise_scale"] == 0.5 and steps == [400, 250, 0]


def test_smooth_noise_scale_smooths_from_the_previous_chunk(synthetic_models):
    smooth = scope.load_pipeline("streamdiffusionv2", models_dir=synthetic_models, height=SIZE, width=SIZE, smooth_noise_scale=True)
    stream = smooth.open_stream()
    a = stream.generate(flat_frames([100, 104, 110, 116]), prompts="a watercolour")
    b = stream.generate(flat_frames([120, 124, 128, 121]))
    assert a.info["noise_scale"] == pytest.approx(by_hand(116, 110), abs=1e-6)
    assert b.info["noise_scale"] == pytest.approx(by_hand(121, 116, incoming=a.info["noise_scale"]), abs=1e-6)
    c = stream.generate(flat_frames([120, 124, 128, 121]), reset_cache=True)
    assert c.info["noise_scale"] == pytest.approx(by_hand(121, 128), abs=1e-6)  # a reset forgets it


# Input video -----------------------------------------------------------------------------


def test_the_first_chunk_resamples_4_frames_to_5_and_encodes_raw_latent_means(pipeline):
    assert resample_indices(4, 5) == [0, 1, 2, 2, 3]
    vae = pipeline.components.vae
    assert isinstance(vae, WanVAE)
    calls = []
    encode = vae.stream_encode

    def recording(video, state, *, normalize=True):
        out = encode(video, state, normalize=normalize)
        calls.append((video.clone(), normalize, out))
        return out

    levels = [10, 80, 160, 240]
    with mock.patch.object(vae, "stream_encode", recording):
        stream = pipeline.open_stream()
        stream.generate(flat_frames(levels), prompts="a watercolour")
        stream.generate(flat_frames(levels))
    (first, normalize, raw), (second, _, _) = calls
    expected = torch.tensor([levels[i] for i in (0, 1, 2, 2, 3)], dtype=torch.float32) / 255 * 2 - 1
    assert torch.allclose(first[0, :, :, 0, 0], expected.expand(3, 5)) and second.shape[2] == 4
    assert normalize is False
    # Raw means: the normalised latents a LongLive stream would see, de-normalised.
    fresh = vae.new_state()
    normalised = vae.stream_encode(first, fresh)
    assert torch.allclose(vae.denormalize_latents(normalised), raw, atol=1e-5)
    assert (normalised - raw).abs().max() > 0.1


def test_encoding_skips_the_latent_statistics_and_decoding_applies_them(pipeline):
    """The asymmetry the model was trained with: a video chunk never normalises its encoded
    input, while its decode de-normalises the chunk's latents as for every pipeline."""
    vae = pipeline.components.vae
    used = {"normalize": 0, "denormalize": []}
    normalize, denormalize = vae.normalize_latents, vae.denormalize_latents

    def normalizing(mu):
        used["normalize"] += 1
        return normalize(mu)

    def denormalizing(z):
        used["denormalize"].append(z.shape)
        return denormalize(z)

    with mock.patch.object(vae, "normalize_latents", normalizing), mock.patch.object(vae, "denormalize_latents", denormalizing):
        stream = pipeline.open_stream()
        stream.generate(flat_frames([10, 80, 160, 240]), prompts="a watercolour")
        stream.generate(flat_frames([10, 80, 160, 240]))
    assert used["normalize"] == 0
    assert [shape[1] for shape in used["denormalize"]] == [2, 1]  # each chunk's latent frames


def test_vae_type_is_accepted_and_the_full_wan_vae_loads_anyway(synthetic_models):
    tae = scope.load_pipeline("streamdiffusionv2", models_dir=synthetic_models, height=SIZE, width=SIZE, vae_type="tae")
    assert tae.load_params.vae_type == "tae" and isinstance(tae.components.vae, WanVAE)


# Modes, steps and the schema --------------------------------------------------------------


def test_both_modes_run_the_pipelines_two_steps(pipeline):
    text = pipeline.open_stream()
    steps = first_steps(text)
    chunks = [text.generate(prompts="a harbour at dawn"), text.generate()]
    assert [c.frames.shape[0] for c in chunks] == [5, 4] and steps == [750, 250, 0] * 2
    assert chunks[0].info["noise_scale"] is None
    # A changed step list restarts the stream (manage_cache).
    restarted = text.generate(denoising_step_list=[1000, 750])
    assert restarted.info["init_cache"] is True and steps[-3:] == [1000, 750, 0]


def test_the_schema_defaults_to_video_at_512_and_keeps_the_ui_hints():
    entry = schema_entry(streamdiffusionv2.StreamDiffusionV2Pipeline)
    assert entry["default_mode"] == "video" and entry["supported_modes"] == ["text", "video"]
    assert entry["min_dimension"] == 64  # its load parameters take 64..2048
    config = entry["config_schema"]["properties"]
    assert (config["height"]["default"], config["width"]["default"]) == (512, 512)
    assert config["denoising_steps"]["default"] == [750, 250]
    assert config["noise_scale"]["default"] == 0.7 and config["noise_controller"]["default"] is True
    assert config["input_size"]["default"] == 4
    assert "ignored" in config["vae_type"]["description"]
    assert entry["mode_defaults"]["text"] == {"height": 512, "width": 512, "denoising_steps": [1000, 750]}
    load = entry["load_params_schema"]["properties"]
    assert "ignored" in load["vae_type"]["description"] and load["height"]["default"] == 512
    assert load["smooth_noise_scale"]["default"] is False


def test_longlive_settings_keep_the_rules_streamdiffusionv2_turns_off():
    """The core's new switches default to LongLive's behaviour."""
    assert longlive.SETTINGS.protect_sink and longlive.SETTINGS.normalize_video_latents
    assert not longlive.SETTINGS.noise_scale_from_default and not longlive.SETTINGS.controller_smooths_own_output
    changed = {f.name for f in dataclasses.fields(SETTINGS) if getattr(SETTINGS, f.name) != getattr(longlive.SETTINGS, f.name)}
    assert changed == {
        "frames_per_block", "local_attn_size", "timestep_shift", "recache_on_prompt_change",
        "protect_sink", "normalize_video_latents", "noise_scale_from_default",
    }


def test_input_video_comes_as_an_array_a_list_of_frames_or_a_normalised_tensor(pipeline):
    """The forms callers have at hand (the reference's list of ``(1, H, W, 3)`` frames among
    them) give the same chunk, bit for bit."""
    clip = np.random.default_rng(3).integers(0, 255, (4, SIZE, SIZE, 3), dtype=np.uint8)
    forms = {
        "array": clip,
        "frames": [torch.from_numpy(frame)[None] for frame in clip],
        "tensor": torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float() / 255 * 2 - 1,
    }
    chunks = {name: pipeline.open_stream().generate(video, prompts="a mosaic") for name, video in forms.items()}
    assert all(np.array_equal(chunks["array"].frames, c.frames) for c in chunks.values())
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        pipeline.open_stream().generate(clip[..., 0], prompts="a mosaic")
