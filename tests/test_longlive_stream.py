"""The ``longlive`` pipeline through the in-kernel API, on synthetic weights.

Small sizes keep each chunk fast; the algorithm (window, sink, steps, clean pass) is the real one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scope
from scope.params import ParameterErrors

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
    assert diff(chunks[1].frames[0], chunks[2].frames[0]) > 1.0, "the output does not change over time"
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
    run(base, 2, prompts="a quiet forest")
    run(changed, 2, prompts="a quiet forest")
    same = base.generate()
    switched = changed.generate(prompts="a busy city street at night")
    assert switched.info["recached"] is True and same.info["recached"] is False
    assert diff(same.frames, switched.frames) > 1.0


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

    snapped = pipeline.open_stream()
    run(snapped, 2, prompts="a desert")
    direct = snapped.generate(prompts="an ocean")
    assert diff(direct.frames, steps[0].frames) > 0.5, "the first transition chunk should not equal a snap"


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
    assert diff(scaled.frames, by_text.generate(reset_cache=True).frames) > 0.5


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


def test_missing_files_fail_with_the_download_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_models --pipeline longlive"):
        scope.load_pipeline("longlive", models_dir=tmp_path)


@pytest.mark.parametrize("vae_type", ["lightvae", "tae", "lighttae"])
def test_every_vae_type_streams(synthetic_models, vae_type):
    pipeline = scope.load_pipeline("longlive", models_dir=synthetic_models, height=HEIGHT, width=WIDTH, vae_type=vae_type)
    stream = pipeline.open_stream()
    shapes = [stream.generate(prompts="a kite").frames.shape, stream.generate().frames.shape]
    assert shapes == [(9, HEIGHT, WIDTH, 3), (12, HEIGHT, WIDTH, 3)]


def test_fp8_quantization_is_accepted_and_close(synthetic_models, pipeline):
    quantized = scope.load_pipeline(
        "longlive", models_dir=synthetic_models, height=HEIGHT, width=WIDTH, seed=7, quantization="fp8_e4m3fn"
    )
    a = pipeline.open_stream().generate(prompts="a tree").frames
    b = quantized.open_stream().generate(prompts="a tree").frames
    assert a.shape == b.shape
    assert diff(a, b) < 40
    assert any(p.dtype == torch.float8_e4m3fn for p in quantized.components.generator.parameters()) or any(
        b.dtype == torch.float8_e4m3fn for b in quantized.components.generator.buffers()
    )
