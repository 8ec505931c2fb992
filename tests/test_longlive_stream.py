"""The ``longlive`` pipeline through the in-kernel API, on synthetic weights.

Small sizes keep each chunk fast; the algorithm (window, sink, steps, clean pass) is the real one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scope
from scope.params import ParameterErrors
from tests.video_inputs import INPUT_LEADS

HEIGHT, WIDTH = 64, 96


@pytest.fixture(scope="module")
def pipeline(synthetic_models):
    return scope.load_pipeline("longlive", models_dir=synthetic_models, height=HEIGHT, width=WIDTH, seed=7)


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def run(stream, count: int, **first):
    chunks = [stream.generate(**first)]
    chunks += [stream.generate() for _ in range(count - 1)]
    return chunks


def test_pipeline_reports_synthetic_weights(pipeline):
    assert pipeline.synthetic is True
    assert pipeline.info.supports_vace is False and pipeline.info.supports_lora is False


def test_chunks_have_the_reference_frame_counts_and_change_over_time(pipeline):
    stream = pipeline.open_stream()
    chunks = run(stream, 3, prompts="a red fox in the snow")
    assert [c.frames.shape for c in chunks] == [(9, HEIGHT, WIDTH, 3)] + [(12, HEIGHT, WIDTH, 3)] * 2
    assert all(c.frames.dtype == np.uint8 for c in chunks)
    assert [c.info["current_start_frame"] for c in chunks] == [0, 3, 6]
    # Each chunk is new content: consecutive chunks differ at least half as much as another
    # prompt's stream differs at the same chunk (measured 46.7 and 30.7 levels; with noise that
    # does not advance with the frame, 8.8 against 28.5).
    other = run(pipeline.open_stream(), 3, prompts="a grey wolf in a pine forest")
    over_time, by_prompt = diff(chunks[1].frames, chunks[2].frames), diff(chunks[2].frames, other[2].frames)
    assert over_time > 0.5 * by_prompt, f"chunk to chunk {over_time:.1f} levels, another prompt {by_prompt:.1f}"
    assert chunks[0].frames.std() > 5, "frames are flat"


def test_same_seed_gives_identical_frames_and_streams_do_not_disturb_each_other(pipeline):
    a, b = pipeline.open_stream(), pipeline.open_stream()
    first = [a.generate(prompts="a lighthouse at dusk").frames]
    other = pipeline.open_stream()
    other.generate(prompts="something else entirely")
    second = [b.generate(prompts="a lighthouse at dusk").frames]
    for _ in range(3):  # interleaved with each other and with a third stream
        first.append(a.generate().frames)
        other.generate()
        second.append(b.generate().frames)
    for x, y in zip(first, second):
        assert np.array_equal(x, y)


def test_a_prompt_change_changes_the_next_chunk_and_recaches(pipeline):
    base, changed = pipeline.open_stream(), pipeline.open_stream()
    before = run(base, 2, prompts="a quiet forest")
    run(changed, 2, prompts="a quiet forest")
    same = base.generate()
    switched = changed.generate(prompts="a busy city street at night")
    assert switched.info["recached"] is True and same.info["recached"] is False
    # The switch moves the chunk at least a quarter as far as the stream moves from one chunk
    # to the next under one prompt (measured 21.8 against 45.7 levels; with cross-attention
    # weakened tenfold, 6.4 against 51.2).
    by_prompt, over_time = diff(same.frames, switched.frames), diff(before[-1].frames, same.frames)
    assert by_prompt > 0.25 * over_time, f"the switch moved {by_prompt:.1f} levels, a chunk {over_time:.1f}"


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
    assert len(steps) == 3 and all(c.info["recached"] for c in steps)
    after = stream.generate()
    assert after.info["recached"] is False and not after.transition_active

    snapped, kept = pipeline.open_stream(), pipeline.open_stream()
    run(snapped, 2, prompts="a desert")
    run(kept, 2, prompts="a desert")
    direct, unchanged = snapped.generate(prompts="an ocean"), kept.generate()
    # The first transition chunk is still the source prompt (only its re-cache differs): far
    # closer to the unchanged stream than to a snap (measured 0.08 against 21.2 levels; a grid
    # that skips the source, 13.7 against 18.0).
    to_source, to_snap = diff(unchanged.frames, steps[0].frames), diff(direct.frames, steps[0].frames)
    assert to_source < 0.25 * to_snap, f"first transition chunk: {to_source:.2f} from the source, {to_snap:.2f} a snap"


def test_reset_cache_restarts_the_stream(pipeline):
    stream = pipeline.open_stream()
    first = stream.generate(prompts="a red balloon").frames
    stream.generate()
    again = stream.generate(reset_cache=True)
    assert again.info["current_start_frame"] == 0 and again.frames.shape[0] == 9
    assert np.array_equal(first, again.frames)


def test_a_changed_step_list_resets_only_with_manage_cache(pipeline):
    stream = pipeline.open_stream()
    run(stream, 2, prompts="a cat")
    assert stream.generate(denoising_step_list=[1000, 500]).info["init_cache"] is True
    kept = pipeline.open_stream()
    run(kept, 2, prompts="a cat", manage_cache=False)
    assert kept.generate(denoising_step_list=[1000, 500]).info["init_cache"] is False


def test_video_to_video_encodes_the_input_with_the_mode_default_noise(pipeline):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (12, 48, 80, 3), dtype=np.uint8)  # resized to 64x96
    stream = pipeline.open_stream()
    first = stream.generate(video, prompts="a painting")
    assert first.frames.shape == (13, HEIGHT, WIDTH, 3)
    # Mode defaults: noise 0.7, smoothed by the motion controller into 0.54..0.72 + 0.07.
    assert 0.61 <= first.info["noise_scale"] <= 0.79
    second = stream.generate(video[::-1].copy(), noise_controller=False)
    assert second.frames.shape == (12, HEIGHT, WIDTH, 3)
    # Without the controller and without a value, the previous chunk's scale carries on.
    assert second.info["noise_scale"] == pytest.approx(first.info["noise_scale"])
    third = stream.generate(video, noise_scale=0.3)
    assert third.info["noise_scale"] == pytest.approx(0.3)
    still = stream.generate(np.repeat(video[:1], 12, axis=0), noise_scale=0.7, noise_controller=True)
    moving = stream.generate(video, noise_controller=True)
    assert still.info["noise_scale"] > moving.info["noise_scale"], "more motion must mean less noise"


def test_video_to_video_output_follows_the_input(synthetic_models, pipeline):
    one, other = (np.random.default_rng(s).integers(0, 255, (12, HEIGHT, WIDTH, 3), dtype=np.uint8) for s in (0, 1))

    def frames(pipeline, video, **params):
        stream = pipeline.open_stream()
        return [stream.generate(video, prompts="a painting", **params).frames, stream.generate(video).frames]

    # Fresh streams, the same seed and input: the same frames, bit for bit.
    first = frames(pipeline, one)
    assert all(np.array_equal(a, b) for a, b in zip(first, frames(pipeline, one)))
    # Under the mode defaults another input still changes every chunk (measured 2.3 and 4.1 levels).
    apart = [diff(a, b) for a, b in zip(first, frames(pipeline, other))]
    assert min(apart) > 1.0, apart
    # When the input leads, changing it moves the picture about as far as changing the seed does
    # (measured: 27.7 levels against 35.8).
    reseeded = scope.load_pipeline("longlive", models_dir=synthetic_models, height=HEIGHT, width=WIDTH, seed=8)
    base = frames(pipeline, one, **INPUT_LEADS)
    by_input = np.mean([diff(a, b) for a, b in zip(base, frames(pipeline, other, **INPUT_LEADS))])
    by_seed = np.mean([diff(a, b) for a, b in zip(base, frames(reseeded, one, **INPUT_LEADS))])
    assert by_input > 0.5 * by_seed, f"the input moves the picture by {by_input:.1f}, a seed by {by_seed:.1f}"


def test_switching_mode_resets_the_stream(pipeline):
    stream = pipeline.open_stream()
    stream.generate(prompts="a boat")
    video = np.full((12, HEIGHT, WIDTH, 3), 128, dtype=np.uint8)
    chunk = stream.generate(video)
    assert chunk.info["init_cache"] is True and chunk.frames.shape[0] == 13


def test_precomputed_prompt_embeds_replace_prompts(pipeline):
    encoder = pipeline.components.text_encoder
    embeds = encoder.encode(["a green field"])[0:1]
    by_text, by_embeds = pipeline.open_stream(), pipeline.open_stream()
    assert np.array_equal(by_text.generate(prompts="a green field").frames, by_embeds.generate(prompt_embeds=embeds).frames)
    scaled = pipeline.open_stream().generate(prompt_embeds=embeds * 3.0)
    plain = by_text.generate(reset_cache=True).frames
    # Scaling the embedding moves the picture like a prompt change does (measured 16.1 against 26.9).
    other = pipeline.open_stream().generate(prompts="a red barn").frames
    by_scale, by_prompt = diff(scaled.frames, plain), diff(other, plain)
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
    "params,field",
    [
        ({"vace_enabled": True}, "vace_enabled"),
        ({"loras": [{"path": "a.safetensors"}]}, "loras"),
        ({"height": 100}, "height"),
        ({"vae_type": "nope"}, "vae_type"),
        ({"quantization": "int4"}, "quantization"),
    ],
)
def test_bad_load_parameters_name_the_field(synthetic_models, params, field):
    with pytest.raises(ParameterErrors) as caught:
        scope.load_pipeline("longlive", models_dir=synthetic_models, **params)
    assert caught.value.errors[0]["loc"][0] == field


@pytest.mark.parametrize(
    "value,advice",
    [(17, "use 16 or 32"), (330, "use 320 or 336"), (8, "use 16"), (2047, "use 2032 or 2048"), (4096, "use 2048")],
)
def test_size_error_names_the_nearest_valid_values(tmp_path, value, advice):
    with pytest.raises(ParameterErrors) as caught:
        scope.load_pipeline("longlive", models_dir=tmp_path, width=value)
    assert caught.value.errors == [
        {"loc": ["width"], "msg": f"must be a multiple of 16 from 16 to 2048: {advice}", "type": "multiple_of"}
    ]
    assert advice in str(caught.value)


def test_size_bounds_themselves_are_valid():
    from scope.pipelines.longlive import LongLiveLoadParams

    params = LongLiveLoadParams(height=16, width=2048)
    assert (params.height, params.width) == (16, 2048)
    schema = LongLiveLoadParams.model_json_schema()["properties"]["width"]
    assert (schema["minimum"], schema["maximum"], schema["multipleOf"]) == (16, 2048, 16)


def test_missing_files_fail_with_the_download_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_models --pipeline longlive"):
        scope.load_pipeline("longlive", models_dir=tmp_path)


VAE_TYPES = ("wan", "lightvae", "tae", "lighttae")


@pytest.fixture(scope="module")
def streamed_by_vae_type(synthetic_models):
    """Two text-mode chunks per ``vae_type``: the latents the stream decoded and the frames it returned.

    Text-mode latents never pass through the autoencoder, so every type decodes the same ones.
    """
    runs = {}
    for vae_type in VAE_TYPES:
        pipeline = scope.load_pipeline(
            "longlive", models_dir=synthetic_models, height=HEIGHT, width=WIDTH, seed=7, vae_type=vae_type
        )
        vae, latents = pipeline.components.vae, []

        def recording(x0, state, decode=vae.stream_decode, latents=latents):
            latents.append(x0.clone())
            return decode(x0, state)

        vae.stream_decode = recording  # this pipeline is private to the fixture
        stream = pipeline.open_stream()
        frames = [stream.generate(prompts="a kite").frames, stream.generate().frames]
        runs[vae_type] = {"latents": latents, "frames": frames, "device": vae.device, "dtype": vae.dtype}
        pipeline.unload()
    return runs


@pytest.mark.parametrize("vae_type", VAE_TYPES)
def test_vae_type_selects_the_autoencoder_that_decodes(synthetic_models, streamed_by_vae_type, vae_type):
    from scope.pipelines.wan.autoencoders import load_vae
    from scope.pipelines.wan.frames import video_to_frames

    run = streamed_by_vae_type[vae_type]
    assert [f.shape for f in run["frames"]] == [(9, HEIGHT, WIDTH, 3), (12, HEIGHT, WIDTH, 3)]
    reference = streamed_by_vae_type["wan"]["latents"]
    assert len(run["latents"]) == 2 and all(torch.equal(a, b) for a, b in zip(run["latents"], reference))
    # The autoencoder loaded on its own from the same file decodes the same latents to the same frames.
    own = load_vae(vae_type, synthetic_models, device=run["device"], dtype=run["dtype"])
    state = own.new_state()
    for latents, frames in zip(run["latents"], run["frames"]):
        expected = video_to_frames(own.stream_decode(latents, state))
        assert np.array_equal(expected, frames), f"not {vae_type}'s decode: {diff(expected, frames):.1f} levels off"
    # ... and every other type decodes them to other pictures (measured: 30 to 50 levels apart).
    for other in VAE_TYPES:
        if other != vae_type:
            apart = diff(run["frames"][1], streamed_by_vae_type[other]["frames"][1])
            assert apart > 10.0, f"{vae_type} and {other} decode alike ({apart:.1f})"


def test_fp8_quantization_is_accepted_and_close(synthetic_models, pipeline):
    quantized = scope.load_pipeline(
        "longlive", models_dir=synthetic_models, height=HEIGHT, width=WIDTH, seed=7, quantization="fp8_e4m3fn"
    )
    a = pipeline.open_stream().generate(prompts="a tree").frames
    b = quantized.open_stream().generate(prompts="a tree").frames
    assert a.shape == b.shape
    # fp8 stays far closer to float than another prompt is, on the same weights (measured: fp8
    # 2.2 levels, another prompt 28.3, another seed 39.6; small weights flushed to zero, 5.8; the
    # scale off by half, 15.5).
    by_fp8, by_prompt = diff(a, b), diff(a, pipeline.open_stream().generate(prompts="a rock").frames)
    assert by_fp8 < 0.15 * by_prompt, f"fp8 is {by_fp8:.1f} levels from float, another prompt {by_prompt:.1f}"
    assert any(p.dtype == torch.float8_e4m3fn for p in quantized.components.generator.parameters()) or any(
        b.dtype == torch.float8_e4m3fn for b in quantized.components.generator.buffers()
    )
