"""The causal Wan pipelines through the in-kernel API, on synthetic weights.

What they share is checked once, for each; where they differ (a re-cache on a prompt switch,
the first video chunk's advance, whether denoising steps write the cache, latent frames per
chunk) the tables and :func:`frames` below say how. Then what each paper changes: Reward Forcing's EMA sink; MemFlow's denoising
steps that leave the cache alone and its memory bank, and that without the bank it is
LongLive's mechanics with MemFlow's weights. What is checked on ``longlive`` alone (its load
parameters, a changed step list, the video noise scale) is in tests/test_longlive_stream.py.
Small sizes keep each chunk fast; the algorithm (window, sink, steps, clean pass) is the real one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scope
from scope.params import ParameterErrors
from tests.conftest import SYNTHETIC_PIPELINES as PIPELINES
from tests.video_inputs import INPUT_LEADS

HEIGHT, WIDTH = 64, 96
#: Whether a prompt change re-computes the cached frames (§7.4: Reward Forcing rebuilds only
#: the cross-attention cache; §7.5: MemFlow re-caches like LongLive).
RECACHES = {"longlive": True, "reward-forcing": False, "memflow": True, "streamdiffusionv2": False, "krea-realtime-video": False}
#: Latent frames the first video chunk moves the counter on by (§7.4: Reward Forcing 3 of 4).
FIRST_VIDEO_ADVANCE = {"longlive": 4, "reward-forcing": 3, "memflow": 4, "streamdiffusionv2": 2, "krea-realtime-video": 4}
#: Whether the denoising steps write the cache (§7.5: MemFlow's leave it to the clean pass).
DENOISING_COMMITS = {"longlive": True, "reward-forcing": True, "memflow": False, "streamdiffusionv2": True, "krea-realtime-video": True}
#: Krea (§7.3): no clean pass; instead each chunk after the first first rebuilds the window
#: from its context frames, and it takes no VACE.
KREA = "krea-realtime-video"
#: The reference's `compression_alpha`: what the sink keeps of itself per eviction.
SINK_ALPHA = 0.999
#: MemFlow's model.yaml: frames in the bank, and every how many chunks the clean pass records one.
BANK_SIZE, RECORD_INTERVAL = 3, 3


def diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 pictures, in levels."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def frames(pipeline) -> tuple[int, int, int]:
    """Latent frames per chunk, and pixel frames of a text stream's first chunk and of later ones
    (a stream starts with at least two latent frames: §7.2, StreamDiffusionV2's one becomes two)."""
    block = pipeline.settings.frames_per_block
    return block, 1 + 4 * (max(block, 2) - 1), 4 * block


def run(stream, count: int, **first):
    """``count`` chunks of ``stream``, the first with ``first``'s parameters."""
    chunks = [stream.generate(**first)]
    chunks += [stream.generate() for _ in range(count - 1)]
    return chunks


def load(models_dir, pipeline_id: str, **params):
    return scope.load_pipeline(pipeline_id, models_dir=models_dir, height=HEIGHT, width=WIDTH, **{"seed": 7, **params})


@pytest.fixture(scope="module", params=PIPELINES)
def pipeline(request, synthetic_models):
    return load(synthetic_models, request.param)


@pytest.fixture(scope="module")
def reward_forcing(synthetic_models):
    return load(synthetic_models, "reward-forcing")


@pytest.fixture(scope="module")
def memflow(synthetic_models):
    return load(synthetic_models, "memflow")


@pytest.fixture(scope="module")
def memflow_without_bank(synthetic_models):
    return load(synthetic_models, "memflow", memory_bank=False)


def layer_state(stream) -> list[tuple[torch.Tensor, torch.Tensor, int, int]]:
    return [(l.k.clone(), l.v.clone(), l.global_end, l.local_end) for l in stream.cache.layers]


def same_state(a, b) -> bool:
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2:] == y[2:] for x, y in zip(a, b))


# What the three share ---------------------------------------------------------------------


def test_pipeline_reports_synthetic_weights(pipeline):
    assert pipeline.synthetic is True
    assert pipeline.info.id in PIPELINES and pipeline.info.supported_modes == ("text", "video")
    assert pipeline.info.supports_vace is (pipeline.info.id != KREA) and pipeline.info.supports_lora is True


def test_chunks_have_the_reference_frame_counts_and_change_over_time(pipeline):
    stream = pipeline.open_stream()
    chunks = run(stream, 3, prompts="a red fox in the snow")
    block, first, later = frames(pipeline)
    assert [c.frames.shape for c in chunks] == [(first, HEIGHT, WIDTH, 3)] + [(later, HEIGHT, WIDTH, 3)] * 2
    assert all(c.frames.dtype == np.uint8 for c in chunks)
    start = max(block, 2)
    assert [c.info["current_start_frame"] for c in chunks] == [0, start, start + block]
    assert chunks[0].info["init_cache"] is True and chunks[1].info["init_cache"] is False
    assert {"text_ms", "dit_ms", "vae_ms"} <= set(chunks[1].info)
    # Each chunk is new content (measured: chunk to chunk 46.7, 43.3 and 39.0 levels, another
    # prompt 30.7, 26.6 and 30.1, in the order of PIPELINES; for longlive with noise that does
    # not advance with the frame, 8.8 against 28.5).
    other = run(pipeline.open_stream(), 3, prompts="a grey wolf in a pine forest")
    over_time, by_prompt = diff(chunks[1].frames, chunks[2].frames), diff(chunks[2].frames, other[2].frames)
    assert over_time > 0.5 * by_prompt, f"chunk to chunk {over_time:.1f} levels, another prompt {by_prompt:.1f}"
    assert chunks[0].frames.std() > 5, "frames are flat"


def test_same_seed_gives_identical_frames_and_streams_do_not_disturb_each_other(synthetic_models, pipeline):
    a, b = pipeline.open_stream(), pipeline.open_stream()
    first = [a.generate(prompts="a lighthouse at dusk").frames]
    other = pipeline.open_stream()
    other.generate(prompts="something else entirely")
    second = [b.generate(prompts="a lighthouse at dusk").frames]
    # Five chunks: past the first eviction (Reward Forcing's sink moves) and the first bank frame.
    for _ in range(4):
        first.append(a.generate().frames)
        other.generate()
        second.append(b.generate().frames)
    for x, y in zip(first, second):
        assert np.array_equal(x, y)
    reseeded = load(synthetic_models, pipeline.info.id, seed=8).open_stream()
    third = run(reseeded, 5, prompts="a lighthouse at dusk")
    apart = [diff(x, y.frames) for x, y in zip(first, third)]
    assert min(apart) > 5.0, apart  # measured: 37 to 41, 40 to 44 and 27 to 32 levels


def test_a_prompt_change_changes_the_next_chunk(pipeline):
    base, changed = pipeline.open_stream(), pipeline.open_stream()
    before = run(base, 2, prompts="a quiet forest")
    run(changed, 2, prompts="a quiet forest")
    kept = [(l.k.clone(), l.v.clone()) for l in changed.cache.layers]
    cached = changed.cache.local_end  # the tokens cached before the switch
    same = base.generate()
    switched = changed.generate(prompts="a busy city street at night")
    assert switched.info["recached"] is RECACHES[pipeline.info.id] and same.info["recached"] is False
    by_prompt, over_time = diff(same.frames, switched.frames), diff(before[-1].frames, same.frames)
    # Measured: the switch 21.8, 21.8 and 21.9 levels, a chunk 45.7, 47.6 and 44.3; for longlive
    # with cross-attention weakened tenfold, 6.4 against 51.2.
    assert by_prompt > 0.25 * over_time, f"the switch moved {by_prompt:.1f} levels, a chunk {over_time:.1f}"
    # The frames cached before the switch: a re-cache rewrites them under the new prompt (so does
    # Krea's rebuild of its window, on every chunk), and without one they stay as they were.
    # (The first layer's keys come before any text.)
    rebuilt = RECACHES[pipeline.info.id] or pipeline.info.id == KREA
    for (k, v), layer in list(zip(kept, changed.cache.layers))[1:]:
        rewritten = not torch.equal(k[:, :cached], layer.k[:, :cached])
        assert rewritten is rebuilt
        assert torch.equal(v[:, :cached], layer.v[:, :cached]) is not rebuilt


def test_a_transition_spans_its_chunks_then_settles_on_the_target(pipeline):
    stream = pipeline.open_stream()
    run(stream, 2, prompts="a desert")
    steps = []
    chunk = stream.generate(transition={"target_prompts": "an ocean", "num_steps": 3})
    steps.append(chunk)
    while chunk.transition_active:
        chunk = stream.generate()
        steps.append(chunk)
        assert len(steps) <= 4
    assert len(steps) == 3 and all(c.info["recached"] is RECACHES[pipeline.info.id] for c in steps)
    after = stream.generate()
    assert after.info["recached"] is False and not after.transition_active

    snapped, kept = pipeline.open_stream(), pipeline.open_stream()
    run(snapped, 2, prompts="a desert")
    run(kept, 2, prompts="a desert")
    direct, unchanged = snapped.generate(prompts="an ocean"), kept.generate()
    # The first transition chunk is still the source prompt (where the stream re-caches, only
    # that differs): far closer to the unchanged stream than to a snap (measured: 0.08 against
    # 21.2 levels, 0.0 against 24.1, and 0.02 against 25.6; for longlive, a grid that skips the
    # source, 13.7 against 18.0).
    to_source, to_snap = diff(unchanged.frames, steps[0].frames), diff(direct.frames, steps[0].frames)
    assert to_source < 0.25 * to_snap, f"first transition chunk: {to_source:.2f} from the source, {to_snap:.2f} a snap"


def test_reset_cache_restarts_the_stream(pipeline):
    stream = pipeline.open_stream()
    first = run(stream, 5, prompts="a red balloon")  # past an eviction and into the bank
    again = [stream.generate(reset_cache=True), stream.generate()]
    assert again[0].info["current_start_frame"] == 0 and again[0].frames.shape[0] == frames(pipeline)[1]
    for a, b in zip(first, again):
        assert np.array_equal(a.frames, b.frames)


def test_video_to_video_follows_the_input_and_advances_the_counter(synthetic_models, pipeline):
    block, _, later = frames(pipeline)
    one, other = (np.random.default_rng(s).integers(0, 255, (later, HEIGHT, WIDTH, 3), dtype=np.uint8) for s in (0, 1))

    def chunks(pipeline, video, **params):
        stream = pipeline.open_stream()
        return [stream.generate(video, prompts="a painting", **params)] + [stream.generate(video) for _ in range(2)]

    first = chunks(pipeline, one)
    assert [c.frames.shape[0] for c in first] == [later + 1, later, later]
    advance = FIRST_VIDEO_ADVANCE[pipeline.info.id]
    assert [c.info["current_start_frame"] for c in first] == [0, advance, advance + block]
    assert all(0.61 <= c.info["noise_scale"] <= 0.79 for c in first[:1])
    # Fresh streams, the same seed and input: the same frames, bit for bit.
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(first, chunks(pipeline, one)))
    # Under the mode defaults another input still changes every chunk (measured: 2.3 to 5.7 levels).
    apart = [diff(a.frames, b.frames) for a, b in zip(first, chunks(pipeline, other))]
    assert min(apart) > 1.0, apart
    # When the input leads, changing it moves the picture about as far as changing the seed does
    # (measured: 30.4 against 36.1 levels, 28.1 against 35.6, and 30.3 against 37.9).
    reseeded = load(synthetic_models, pipeline.info.id, seed=8)
    base = chunks(pipeline, one, **INPUT_LEADS)
    by_input = np.mean([diff(a.frames, b.frames) for a, b in zip(base, chunks(pipeline, other, **INPUT_LEADS))])
    by_seed = np.mean([diff(a.frames, b.frames) for a, b in zip(base, chunks(reseeded, one, **INPUT_LEADS))])
    assert by_input > 0.5 * by_seed, f"the input moves the picture by {by_input:.1f}, a seed by {by_seed:.1f}"


def test_a_video_mode_prompt_change_restarts_the_stream_only_with_manage_cache(pipeline):
    block, _, later = frames(pipeline)
    video = np.random.default_rng(0).integers(0, 255, (later, HEIGHT, WIDTH, 3), dtype=np.uint8)
    for manage_cache in (True, False):
        stream = pipeline.open_stream()
        stream.generate(video, prompts="a painting", manage_cache=manage_cache)
        stream.generate(video)
        chunk = stream.generate(video, prompts="a photograph")
        assert chunk.info["init_cache"] is manage_cache
        assert chunk.info["current_start_frame"] == (0 if manage_cache else FIRST_VIDEO_ADVANCE[pipeline.info.id] + block)


def test_precomputed_prompt_embeds_replace_prompts(pipeline):
    embeds = pipeline.components.text_encoder.encode(["a green field"])[0:1]
    by_text = run(pipeline.open_stream(), 2, prompts="a green field")
    by_embeds = run(pipeline.open_stream(), 2, prompt_embeds=embeds)
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(by_text, by_embeds))
    # Scaling the embedding moves the picture like a prompt change does (measured: 16.1 against
    # 26.9 levels, 13.1 against 28.9, and 15.9 against 32.3).
    plain = by_text[0].frames
    scaled = pipeline.open_stream().generate(prompt_embeds=embeds * 3.0).frames
    other = pipeline.open_stream().generate(prompts="a red barn").frames
    by_scale, by_prompt = diff(scaled, plain), diff(other, plain)
    assert by_scale > 0.25 * by_prompt, f"scaling moved {by_scale:.1f} levels, another prompt {by_prompt:.1f}"


def test_bad_parameters_are_refused_by_name(pipeline):
    stream = pipeline.open_stream()
    with pytest.raises(ParameterErrors) as caught:
        stream.generate(prompts="x", noise_scale=5)
    assert caught.value.errors[0]["loc"] == ["noise_scale"]
    with pytest.raises(ParameterErrors) as caught:
        stream.generate(prompts="x", not_a_parameter=1)
    assert caught.value.errors[0]["loc"] == ["not_a_parameter"]
    with pytest.raises(ValueError, match="prompts are required"):
        pipeline.open_stream().generate()


@pytest.mark.parametrize(
    "pipeline_id,params,field",
    [
        *[
            (pipeline_id, params, field)
            for pipeline_id in PIPELINES
            for params, field in [
                ({"vace_enabled": "maybe"}, "vace_enabled"),
                ({"loras": [{"path": "a.safetensors", "scale": 11}]}, "loras"),
                ({"lora_merge_mode": "fuse"}, "lora_merge_mode"),
                ({"height": 100}, "height"),
                ({"vae_type": "nope"}, "vae_type"),
                ({"quantization": "int4"}, "quantization"),
                ({"seed": -1}, "seed"),
            ]
        ],
        ("memflow", {"memory_bank": "maybe"}, "memory_bank"),
        ("streamdiffusionv2", {"height": 48}, "height"),  # 64..2048 for StreamDiffusionV2
        ("streamdiffusionv2", {"smooth_noise_scale": "maybe"}, "smooth_noise_scale"),
        ("longlive", {"smooth_noise_scale": True}, "smooth_noise_scale"),
        ("reward-forcing", {"memory_bank": False}, "memory_bank"),  # MemFlow's alone
        ("longlive", {"memory_bank": False}, "memory_bank"),
    ],
)
def test_bad_load_parameters_name_the_field(synthetic_models, pipeline_id, params, field):
    with pytest.raises(ParameterErrors) as caught:
        scope.load_pipeline(pipeline_id, models_dir=synthetic_models, **params)
    assert caught.value.errors[0]["loc"][0] == field


@pytest.mark.parametrize("pipeline_id", PIPELINES)
def test_missing_files_fail_with_the_download_command(tmp_path, pipeline_id):
    with pytest.raises(FileNotFoundError, match=f"download_models --pipeline {pipeline_id}"):
        scope.load_pipeline(pipeline_id, models_dir=tmp_path)


def test_only_memflow_chunks_leave_the_cache_to_the_clean_pass_and_the_recache(pipeline):
    """Every forward of a chunk, and whether it wrote the cache: MemFlow's denoising steps read it only."""
    pipeline_id = pipeline.info.id
    stream = pipeline.open_stream()
    commits: list[bool] = []
    write = stream.cache.write_and_window

    def recording(index, current_start, k, v, *, commit=True):
        if index == 0:
            commits.append(commit)
        return write(index, current_start, k, v, commit=commit)

    stream.cache.write_and_window = recording  # this stream's own cache
    stream.generate(prompts="a kite")
    stream.generate(prompts="a balloon")
    steps, count = DENOISING_COMMITS[pipeline_id], len(pipeline.default_steps)
    recache = [True] if RECACHES[pipeline_id] else []
    if pipeline_id == KREA:  # the second chunk's rebuild at t=0, no clean passes
        assert commits == [steps] * count + [True] + [steps] * count
        return
    assert commits == [steps] * count + [True] + recache + [steps] * count + [True]


# Reward Forcing -------------------------------------------------------------------------


def test_reward_forcing_sink_blends_in_what_each_overflowing_chunk_evicts(reward_forcing):
    """Untouched while the 9-frame cache fills (chunks 1-3); from the 4th chunk on, each chunk
    evicts the three frames after the sink once, and ``sink <- 0.999*sink + 0.001*evicted``."""
    stream = reward_forcing.open_stream()
    fsl = stream.frame_seq_len
    sink, slots = slice(0, 3 * fsl), slice(3 * fsl, 6 * fsl)
    stream.generate(prompts="a sailing boat")
    for chunk in range(2, 7):
        before = layer_state(stream)
        stream.generate()
        for (k, v, *_), layer in zip(before, stream.cache.layers):
            if chunk <= 3:
                assert torch.equal(layer.k[:, sink], k[:, sink]) and torch.equal(layer.v[:, sink], v[:, sink])
                continue
            for old, new in ((k, layer.k), (v, layer.v)):
                assert not torch.equal(new[:, sink], old[:, sink]), f"chunk {chunk} left the sink as it was"
                blended = SINK_ALPHA * old[:, sink] + (1 - SINK_ALPHA) * old[:, slots]
                torch.testing.assert_close(new[:, sink], blended, rtol=1e-6, atol=1e-7)


# MemFlow --------------------------------------------------------------------------------


def test_memflow_uncommitted_forward_changes_nothing_and_reads_what_a_commit_would_write(memflow):
    stream = memflow.open_stream()
    run(stream, 5, prompts="a windmill")  # a full, rolling cache
    generator, start = memflow.components.generator, stream.current_start_frame
    latents = torch.randn((1, 3, 16, HEIGHT // 8, WIDTH // 8), generator=torch.Generator().manual_seed(0))
    t = torch.full((1, 3), 750, dtype=torch.long)
    before = layer_state(stream)
    with torch.inference_mode():
        read = generator(latents, t, stream.embedding, cache=stream.cache, start_frame=start, commit=False)
        assert same_state(before, layer_state(stream))
        written = generator(latents, t, stream.embedding, cache=stream.cache, start_frame=start, commit=True)
    assert not same_state(before, layer_state(stream))
    assert torch.equal(read, written)


def test_memflow_bank_records_every_third_chunk_and_holds_three_frames(memflow):
    stream = memflow.open_stream()
    fsl = stream.frame_seq_len
    layers = range(len(stream.cache.layers))
    counts, recorded = [], None
    for index in range(11):
        full = [stream.memory.frames(i) for i in layers] if index == 10 else None
        stream.generate(**({"prompts": "a city at night"} if index == 0 else {}))
        counts.append({stream.memory.frame_count(i) for i in range(len(stream.cache.layers))})
        if recorded is not None:  # committed by this chunk: the last frame of every layer's bank
            for (k, v), layer in zip(recorded, layers):
                keys, values = stream.memory.frames(layer)
                assert torch.equal(keys[:, -fsl:], k) and torch.equal(values[:, -fsl:], v)
            recorded = None
        if full is not None:  # the bank was full: it kept two of its three frames, in their order
            for (old, _), (new, _) in zip(full, (stream.memory.frames(i) for i in layers)):
                frames = [old[:, i * fsl : (i + 1) * fsl] for i in range(BANK_SIZE)]
                kept = [torch.cat([frames[a], frames[b]], dim=1) for a, b in ((0, 1), (0, 2), (1, 2))]
                assert any(torch.equal(new[:, : 2 * fsl], pair) for pair in kept)
        if index % RECORD_INTERVAL == 0:  # this chunk's clean pass wrote its first frame here
            end = stream.cache.local_end
            recorded = [(l.k[:, end - 3 * fsl : end - 2 * fsl].clone(), l.v[:, end - 3 * fsl : end - 2 * fsl].clone())
                        for l in stream.cache.layers]
    # Frames committed after each chunk: 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3.
    assert counts == [{min(BANK_SIZE, -(-index // RECORD_INTERVAL))} for index in range(11)]


def test_memflow_bank_changes_the_output_once_it_holds_a_frame(memflow, memflow_without_bank):
    assert memflow_without_bank.open_stream().memory is None
    with_bank = run(memflow.open_stream(), 3, prompts="a harbour")
    without = run(memflow_without_bank.open_stream(), 3, prompts="a harbour")
    assert np.array_equal(with_bank[0].frames, without[0].frames)
    # On synthetic weights the bank's one frame moves the picture a little (measured: 0.24 and 0.31 levels).
    apart = [diff(a.frames, b.frames) for a, b in zip(with_bank[1:], without[1:])]
    assert min(apart) > 0.1, apart


def test_memflow_without_the_bank_is_longlive_mechanics_with_memflow_weights(memflow_without_bank):
    from scope.pipelines.longlive import SETTINGS as LONGLIVE
    from scope.pipelines.wan.causal_stream import CausalStream

    pipeline = memflow_without_bank
    longlive = CausalStream(
        pipeline.components, LONGLIVE, height=HEIGHT, width=WIDTH, seed=7, default_steps=pipeline.default_steps,
        video_defaults={k: pipeline.mode_defaults["video"][k] for k in ("noise_scale", "noise_controller")},
    )
    memflow = pipeline.open_stream()
    # Through the first eviction (chunk 5) and a prompt switch with its re-cache (chunk 6).
    prompts = ["a mountain lake"] + [None] * 4 + ["a volcano"]
    for prompt in prompts:
        params = {"prompts": prompt} if prompt else {}
        a, b = memflow.generate(**params), longlive.generate(**params)
        assert np.array_equal(a.frames, b.frames) and a.info["recached"] == b.info["recached"]
    assert a.info["recached"] is True
