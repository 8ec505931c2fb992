"""What the ``longlive`` pipeline alone is checked for through the in-kernel API, on synthetic weights.

What it shares with ``reward-forcing`` and ``memflow`` (frame counts, prompt switches,
transitions, resets, video to video, parameter errors) is checked for all three in
tests/test_causal_streams.py; here: its load parameters (sizes, autoencoders, fp8), a changed
step list, the video-mode noise scale and a switch between modes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scope
from scope.params import ParameterErrors
from tests.test_causal_streams import HEIGHT, WIDTH, diff, load, run


@pytest.fixture(scope="module")
def pipeline(synthetic_models):
    return load(synthetic_models, "longlive")


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
    # The first frame of a chunk is compared with the previous chunk's last (the reference's
    # pairing), so a still picture reads as still from its second chunk on.
    held = np.repeat(video[:1], 12, axis=0)
    stream.generate(held, noise_scale=0.7, noise_controller=True)
    still = stream.generate(held)
    moving = stream.generate(video, noise_controller=True)
    assert still.info["noise_scale"] == pytest.approx(0.8 * 0.9 + 0.07)
    assert still.info["noise_scale"] > moving.info["noise_scale"], "more motion must mean less noise"


def test_switching_mode_resets_the_stream(pipeline):
    stream = pipeline.open_stream()
    stream.generate(prompts="a boat")
    video = np.full((12, HEIGHT, WIDTH, 3), 128, dtype=np.uint8)
    chunk = stream.generate(video)
    assert chunk.info["init_cache"] is True and chunk.frames.shape[0] == 13


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


VAE_TYPES = ("wan", "lightvae", "tae", "lighttae")


@pytest.fixture(scope="module")
def streamed_by_vae_type(synthetic_models):
    """Two text-mode chunks per ``vae_type``: the latents the stream decoded and the frames it returned.

    Text-mode latents never pass through the autoencoder, so every type decodes the same ones.
    """
    runs = {}
    for vae_type in VAE_TYPES:
        pipeline = load(synthetic_models, "longlive", vae_type=vae_type)
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
    quantized = load(synthetic_models, "longlive", quantization="fp8_e4m3fn")
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
