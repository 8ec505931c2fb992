"""VACE on the causal core: the hint path, the encodings, the layout, loading, and the streams.

The arithmetic is checked against direct computations and values worked out by hand; the
streams run on synthetic weights in the real file layout.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import scope
from scope.models.artifacts import VACE, local_path
from scope.params import ParameterErrors
from scope.pipelines.wan.components import MissingModelFiles
from scope.pipelines.wan.config import WanConfig
from scope.pipelines.wan.loading import CheckpointError
from scope.pipelines.wan.rope import FrameRope
from scope.pipelines.wan.transformer import CausalWanTransformer, pad_with_zero_keys, sdpa_attention
from scope.pipelines.wan.vace import VaceContext, VaceLayers, load_vace_layers
from scope.pipelines.wan.vace_encoding import VaceEncoder, encode_masks, extension_frames
from scope.pipelines.wan.vace_inputs import LoopingFrames, mask_pixels, reference_pixels

H, W = 32, 48  # 2x3 tokens per latent frame: 18 per 3-frame chunk, padded to 128 in the hint blocks
CONFIG = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=4, text_dim=32, freq_dim=32)


def random_model(seed: int = 0) -> CausalWanTransformer:
    torch.manual_seed(seed)
    model = CausalWanTransformer(CONFIG)
    model.vace = VaceLayers(CONFIG)
    for name, param in model.named_parameters():
        if name.endswith(("before_proj.weight", "after_proj.weight")):
            torch.nn.init.normal_(param, std=0.2 / math.sqrt(param.shape[1]))
    return model.eval().requires_grad_(False)


def chunk_inputs(frames: int = 3, context_frames: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, frames, 16, H // 8, W // 8, generator=g)
    context = torch.randn(1, context_frames, 96, H // 8, W // 8, generator=g)
    text = torch.randn(1, 7, CONFIG.text_dim, generator=g)
    return latents, context, text


# The hint path ---------------------------------------------------------------------------------


def test_zero_keys_take_part_in_the_softmax_as_the_reference_pads_them():
    q, k, v = (torch.randn(1, 5, 2, 8) for _ in range(3))
    padded = sdpa_attention(q, *pad_with_zero_keys(k, v, 4), None)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8)
    weights = scores.exp()
    by_hand = torch.einsum("bhqk,bkhd->bqhd", weights, v) / (weights.sum(-1) + 3).transpose(1, 2)[..., None]
    assert torch.allclose(padded, by_hand, atol=1e-6), "3 zero keys: exp(0) each in the denominator, zero values"
    assert pad_with_zero_keys(k[:, :4], v[:, :4], 4)[0].shape[1] == 4, "nothing added to a multiple"


def direct_forward(model, latents, t, text, context, scale, lead=0, pad=128):
    """The generator without a cache, written out: VACE blocks over the context alone, hints
    added after every second base block, times the scale."""
    b, frames, _, h, w = latents.shape
    gh, gw = h // 2, w // 2
    tokens = gh * gw

    def embed(conv, x):
        return conv(x.permute(0, 2, 1, 3, 4)).flatten(2).transpose(1, 2)

    x = embed(model.patch_embedding, latents)
    timestep = torch.full((b, frames), float(t))
    from scope.pipelines.wan.transformer import sinusoidal_embedding

    e = model.time_embedding(sinusoidal_embedding(CONFIG.freq_dim, timestep).float())
    e0 = model.time_projection(e).unflatten(1, (6, CONFIG.dim)).unflatten(0, (b, frames))
    txt = model.text_embedding(text)
    c = embed(model.vace.vace_patch_embedding, context)
    want = (lead + frames) * tokens
    c = torch.cat([c, c.new_zeros(b, max(0, want - c.shape[1]), CONFIG.dim)], dim=1)[:, :want]
    x_all = torch.cat([x.new_zeros(b, lead * tokens, CONFIG.dim), x], dim=1)
    e_all = torch.cat([e0[:, :1].expand(-1, lead, -1, -1), e0], dim=1)
    c = model.vace.vace_blocks[0].before_proj(c) + x_all
    rope0 = FrameRope(model.rope, 0, lead + frames, gh, gw, "cpu")
    hints = []
    for block in model.vace.vace_blocks:
        c = block(c, e_all, rope0, txt, pad_keys_to=pad)
        hints.append(block.after_proj(c)[:, lead * tokens :])
    rope = FrameRope(model.rope, 0, frames, gh, gw, "cpu")
    for index, block in enumerate(model.blocks):
        x = block(x, e0, rope, txt)
        if index % 2 == 0:
            x = x + hints[index // 2] * scale
    x = model.head(x, e.unflatten(0, (b, frames)).unsqueeze(2))
    return model._unpatchify(x, frames, gh, gw)


@pytest.mark.parametrize("context_frames,lead", [(4, 0), (1, 0), (5, 2)])
def test_the_hint_path_equals_a_direct_computation(context_frames, lead):
    model = random_model()
    latents, context, text = chunk_inputs(context_frames=context_frames)
    out = model(latents, 750, text, vace=VaceContext(context, scale=0.7, lead_frames=lead))
    assert torch.allclose(out, direct_forward(model, latents, 750, text, context, 0.7, lead), atol=1e-5)
    masked = model(latents, 750, text, vace=VaceContext(context, scale=0.7, lead_frames=lead, mask_padding=True))
    assert torch.allclose(masked, direct_forward(model, latents, 750, text, context, 0.7, lead, pad=0), atol=1e-5)
    assert not torch.allclose(masked, out, atol=1e-4), "the padding keys change the hints"


def test_scale_zero_equals_vace_off_at_the_generator_output():
    model = random_model()
    latents, context, text = chunk_inputs()
    off = model(latents, 500, text)
    assert torch.equal(model(latents, 500, text, vace=VaceContext(context, scale=0.0)), off)
    assert not torch.allclose(model(latents, 500, text, vace=VaceContext(context, scale=1.0)), off, atol=1e-4)


def test_several_references_keep_every_control_latent_in_the_hint_window():
    """Three references ahead of three control latents: the last control latent still reaches
    the hints (with the single-reference layout it would be cut off)."""
    model = random_model()
    latents, context, text = chunk_inputs(context_frames=6)
    base = model(latents, 750, text, vace=VaceContext(context, lead_frames=3))
    touched = context.clone()
    touched[:, 5] += 1.0
    assert not torch.allclose(model(latents, 750, text, vace=VaceContext(touched, lead_frames=3)), base, atol=1e-5)
    swapped = context[:, [1, 0, 2, 3, 4, 5]]
    assert not torch.allclose(model(latents, 750, text, vace=VaceContext(swapped, lead_frames=3)), base, atol=1e-5), (
        "references keep their order"
    )


# Encodings, worked out by hand -------------------------------------------------------------------


def test_mask_encoding_puts_each_8x8_block_on_64_channels_and_resizes_time_nearest_exact():
    masks = torch.rand(13, 16, 32)
    encoded = encode_masks(masks)
    assert encoded.shape == (64, 4, 2, 4)
    # nearest-exact from 13 to 4 frames: floor((i + 0.5) * 13 / 4) -> 1, 4, 8, 11
    for latent_t, source_t in enumerate([1, 4, 8, 11]):
        for y in range(2):
            for x in range(4):
                for row in range(8):
                    for col in range(8):
                        assert encoded[8 * row + col, latent_t, y, x] == masks[source_t, 8 * y + row, 8 * x + col]
    assert [int(i) for i in encode_masks(torch.arange(12.0)[:, None, None].expand(12, 16, 16))[0, :, 0, 0]] == [2, 6, 10]
    leading = encode_masks(masks, leading=2)
    assert leading.shape == (64, 6, 2, 4) and not leading[:, :2].any() and torch.equal(leading[:, 2:], encoded)


def test_reference_images_are_fitted_aspect_kept_and_centred_on_white():
    flat = np.full((3, 6, 3), 51, dtype=np.uint8)  # 0.2 -> -0.6 in [-1, 1]
    fitted = reference_pixels(flat, 8, 8)  # scale min(8/3, 8/6) = 4/3 -> 4x8, rows 2..5
    assert fitted.shape == (3, 8, 8)
    assert torch.allclose(fitted[:, 2:6], torch.full((3, 4, 8), -0.6), atol=1e-6)
    assert torch.equal(fitted[:, :2], torch.ones(3, 2, 8)) and torch.equal(fitted[:, 6:], torch.ones(3, 2, 8))
    tall = reference_pixels(np.zeros((6, 3, 3), dtype=np.uint8), 8, 8)  # 8x4, columns 2..5
    assert torch.equal(tall[:, :, 2:6], -torch.ones(3, 8, 4)) and torch.equal(tall[:, :, :2], torch.ones(3, 8, 2))
    exact = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    assert torch.equal(reference_pixels(exact, 8, 8), (torch.from_numpy(exact).permute(2, 0, 1).float() / 255 - 0.5) / 0.5)


def test_extension_frames_keep_the_images_and_generate_between():
    first, last = torch.full((3, 8, 8), 0.5), torch.full((3, 8, 8), -0.5)
    frames, masks = extension_frames(first, last, 12)
    assert torch.equal(frames[:, :4], first[:, None].expand(-1, 4, -1, -1))
    assert torch.equal(frames[:, 8:], last[:, None].expand(-1, 4, -1, -1)) and not frames[:, 4:8].any()
    assert masks[:4].sum() == 0 and masks[8:].sum() == 0 and bool(masks[4:8].all())
    frames, masks = extension_frames(None, last, 12)
    assert not frames[:, :8].any() and bool(masks[:8].all()) and masks[8:].sum() == 0


def test_masks_are_binarised_and_follow_the_frames_resampling():
    masks = np.zeros((6, 8, 8), dtype=np.uint8)
    masks[3:] = 200
    out = mask_pixels(masks, count=12, source_count=6, height=8, width=8)
    assert out.shape == (12, 8, 8) and set(out.unique().tolist()) == {0.0, 1.0}
    # round(linspace(0, 5, 12)) = 0 0 1 1 2 2 3 3 4 4 5 5: the second half follows frame 3 onwards
    assert out[:6].sum() == 0 and bool(out[6:].all())
    assert mask_pixels(np.ones((8, 8)) * 0.4, count=3, source_count=3, height=8, width=8).sum() == 0
    reference_form = torch.from_numpy(masks).float()[None, None] / 255
    assert torch.equal(mask_pixels(reference_form, count=12, source_count=6, height=8, width=8), out)
    with pytest.raises(ValueError, match="5 masks for 6 control frames"):
        mask_pixels(np.ones((5, 8, 8)), count=12, source_count=6, height=8, width=8)


# Streams on synthetic weights ------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vace-images")
    rng = np.random.default_rng(5)
    paths = []
    for i, size in enumerate([(20, 40), (48, 32)]):
        path = folder / f"ref{i}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def embeds(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(seed)) * 0.1


def control(chunk: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + chunk)
    return rng.integers(0, 255, (13 if chunk == 0 else 12, H, W, 3), dtype=np.uint8)


def run(pipeline, chunks: int = 3, **per_chunk) -> list[np.ndarray]:
    stream = pipeline.open_stream()
    out = []
    for i in range(chunks):
        params = {k: (v(i) if callable(v) else v) for k, v in per_chunk.items()}
        out.append(stream.generate(prompt_embeds=embeds(), **params).frames.astype(np.int16))
    return out


def load(models, pipeline_id="longlive", **params):
    size = {"height": 64, "width": 64} if pipeline_id == "streamdiffusionv2" else {"height": H, "width": W}
    return scope.load_pipeline(pipeline_id, models_dir=models, seed=3, **size, **params)


@pytest.fixture(scope="module")
def longlive_vace(synthetic_models):
    return load(synthetic_models, vace_enabled=True)


@pytest.mark.parametrize("pipeline_id", ["longlive", "reward-forcing", "memflow", "streamdiffusionv2"])
def test_vace_enabled_without_a_context_equals_vace_off(synthetic_models, pipeline_id, one_thread):
    on = load(synthetic_models, pipeline_id, vace_enabled=True)
    assert on.components.generator.vace is not None and on.info.supports_vace
    assert [f.tolist() for f in run(on)] == [f.tolist() for f in run(load(synthetic_models, pipeline_id))]


def test_a_reference_and_a_control_video_change_the_stream_and_scale_zero_does_not(longlive_vace, images, one_thread):
    off = run(longlive_vace)
    guided = run(longlive_vace, vace_ref_images=[images[0]], vace_input_frames=control, vace_context_scale=1.0)
    assert all(np.abs(a - b).mean() > 1 for a, b in zip(off, guided))
    zero = run(longlive_vace, vace_ref_images=[images[0]], vace_input_frames=control, vace_context_scale=0.0)
    assert all(np.array_equal(a, b) for a, b in zip(off, zero))


def test_a_reference_conditions_its_chunk_and_later_ones_only_through_their_latents(longlive_vace, images, one_thread):
    once = run(longlive_vace, chunks=2, vace_ref_images=lambda i: [images[0]] if i == 0 else None)
    always = run(longlive_vace, chunks=2, vace_ref_images=[images[0]])
    off = run(longlive_vace, chunks=2)
    assert np.array_equal(once[0], always[0]) and not np.array_equal(once[0], off[0])
    assert not np.array_equal(once[1], always[1]) and not np.array_equal(once[1], off[1])


def test_only_denoising_steps_carry_the_context(longlive_vace, images, monkeypatch):
    """The clean pass (t = 0) and the re-cache never see VACE, as in the reference."""
    calls = []
    generator = longlive_vace.components.generator
    forward = type(generator).forward

    def spy(self, latents, timestep, context, **kwargs):
        calls.append((int(torch.as_tensor(timestep).flatten()[0]), kwargs.get("vace") is not None))
        return forward(self, latents, timestep, context, **kwargs)

    monkeypatch.setattr(type(generator), "forward", spy)
    stream = longlive_vace.open_stream()
    stream.generate(prompt_embeds=embeds(), vace_ref_images=[images[0]])
    stream.generate(prompt_embeds=embeds(1), vace_ref_images=[images[0]])  # a prompt change: re-cache first
    assert calls[:5] == [(1000, True), (750, True), (500, True), (250, True), (0, False)]
    assert calls[5] == (0, False) and [c[1] for c in calls[6:10]] == [True] * 4 and calls[10] == (0, False)


def test_changing_the_input_inside_the_generated_region_changes_the_output(longlive_vace, one_thread):
    keep_left = np.zeros((H, W), dtype=np.uint8)
    keep_left[:, W // 2 :] = 255  # 1 = generate the right half, keep the left

    def edited(chunk):
        frames = control(chunk)
        frames[:, :, W // 2 :] = 255 - frames[:, :, W // 2 :]
        return frames

    base = run(longlive_vace, chunks=1, vace_input_frames=control, vace_input_masks=keep_left)
    changed = run(longlive_vace, chunks=1, vace_input_frames=edited, vace_input_masks=keep_left)
    assert not np.array_equal(base[0], changed[0])
    unmasked = run(longlive_vace, chunks=1, vace_input_frames=control)
    assert not np.array_equal(base[0], unmasked[0]), "the mask itself conditions the chunk"


def test_several_references_are_each_encoded_in_order(longlive_vace, images):
    stream = longlive_vace.open_stream()
    vace = stream.vace
    refs = [reference_pixels(path, H, W) for path in images]
    latents, lead = vace.encoder.context(refs)
    assert lead == 2 and latents.shape == (1, 2, 96, H // 8, W // 8) and not latents[:, :, 16:].any()
    alone = [vace.encoder.reference_latents([ref]) for ref in refs]
    assert torch.equal(latents[:, :1, :16], alone[0]) and torch.equal(latents[:, 1:, :16], alone[1])
    frames = torch.rand(1, 3, 13, H, W) * 2 - 1
    latents, lead = vace.encoder.context(refs, frames, torch.ones(13, H, W))
    assert lead == 2 and latents.shape == (1, 2 + 4, 96, H // 8, W // 8)
    assert not latents[:, :2, 16:].any(), "references carry no reactive latents and no mask"
    assert bool((latents[:, 2:, 32:] == 1).all()), "all-ones masks on the control latents"
    latents, lead = vace.encoder.context(refs[:1], frames, torch.ones(13, H, W))
    assert lead == 0 and latents.shape[1] == 1 + 4, "one reference: the reference implementation's layout"


def test_control_streams_share_the_wan_vae_cache_unless_asked_not_to(longlive_vace):
    vae = longlive_vace.components.vae
    frames = [torch.rand(1, 3, n, H, W) * 2 - 1 for n in (13, 12)]
    masks = [torch.ones(n, H, W) for n in (13, 12)]
    masks[1][:, :, : W // 2] = 0

    def latents(separate):
        state = vae.new_state()
        encoder = VaceEncoder(vae, state, separate_caches=separate)
        out = []
        for f, m in zip(frames, masks):
            out.append(encoder.control_latents(f, m))
            state.first_batch = False  # the chunk's decode
        return out

    shared, separate = latents(False), latents(True)
    assert torch.equal(shared[0], separate[0]), "both start afresh on the first chunk"
    assert not torch.allclose(shared[1], separate[1], atol=1e-3)
    own = vae.new_state()
    vae.stream_encode(frames[0] * masks[0][None, None], own)
    own.first_batch = False
    assert torch.allclose(separate[1][:, :, 16:], vae.stream_encode(frames[1] * masks[1][None, None], own), atol=1e-6)


def test_the_input_track_becomes_the_control_video_when_asked(longlive_vace, one_thread):
    as_track = longlive_vace.open_stream()
    as_param = longlive_vace.open_stream()
    for i in range(2):
        a = as_track.generate(control(i), prompt_embeds=embeds(), vace_use_input_video=True)
        b = as_param.generate(prompt_embeds=embeds(), vace_input_frames=control(i))
        assert np.array_equal(a.frames, b.frames) and a.info["noise_scale"] is None


def test_a_video_file_plays_as_the_control_video_and_loops(longlive_vace, tmp_path, one_thread):
    import av

    path = tmp_path / "control.mp4"
    rng = np.random.default_rng(2)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for _ in range(20):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert len(decoded) == 20
    looped = np.concatenate([decoded, decoded])
    by_path = run(longlive_vace, chunks=2, vace_input_frames=str(path))
    by_array = run(longlive_vace, chunks=2, vace_input_frames=lambda i: looped[:13] if i == 0 else looped[13:25])
    assert all(np.array_equal(a, b) for a, b in zip(by_path, by_array))
    frames = LoopingFrames(path)
    assert np.array_equal(frames.take(13), decoded[:13]) and np.array_equal(frames.take(12), looped[13:25])


def test_first_and_last_frame_images_condition_the_chunk(longlive_vace, images, one_thread):
    off = run(longlive_vace, chunks=1)
    first = run(longlive_vace, chunks=1, first_frame_image=images[0])
    both = run(longlive_vace, chunks=1, first_frame_image=images[0], last_frame_image=images[1])
    assert not np.array_equal(first[0], off[0]) and not np.array_equal(both[0], first[0])


def test_vace_inputs_need_vace_loaded(synthetic_models, images):
    plain = load(synthetic_models)
    with pytest.raises(ParameterErrors) as refused:
        plain.open_stream().generate(prompt_embeds=embeds(), vace_ref_images=[images[0]])
    assert refused.value.errors[0]["loc"] == ["vace_ref_images"] and "vace_enabled" in refused.value.errors[0]["msg"]


def test_streamdiffusionv2_takes_vace_in_text_mode_only(synthetic_models, images, one_thread):
    sdv2 = load(synthetic_models, "streamdiffusionv2", vace_enabled=True)
    stream = sdv2.open_stream()
    text = stream.generate(prompt_embeds=embeds(), vace_ref_images=[images[0]])
    assert text.frames.shape[0] == 5
    with pytest.raises(ParameterErrors) as refused:
        stream.generate(prompt_embeds=embeds(), vace_use_input_video=True)
    assert refused.value.errors[0]["loc"] == ["vace_use_input_video"]
    with pytest.raises(ValueError, match="text mode only"):
        sdv2.open_stream().generate(np.zeros((5, 64, 64, 3), np.uint8), prompt_embeds=embeds(), vace_ref_images=[images[0]])


def test_memflow_runs_vace_where_the_chunk_needs_no_padding(synthetic_models, one_thread):
    """3 frames of 128 tokens are already a multiple of 128 (the reference's MemFlow crashes there)."""
    memflow = scope.load_pipeline("memflow", models_dir=synthetic_models, height=128, width=256, seed=1, vace_enabled=True)
    stream = memflow.open_stream()
    frames = np.random.default_rng(0).integers(0, 255, (13, 128, 256, 3), dtype=np.uint8)
    assert stream.generate(prompt_embeds=embeds(), vace_input_frames=frames).frames.shape == (9, 128, 256, 3)


def test_vace_with_a_merged_lora_and_fp8(synthetic_models, tmp_path, images, one_thread):
    from scope.models.synthetic.lora import write_synthetic_lora

    config = load(synthetic_models).components.generator.config
    lora = write_synthetic_lora(tmp_path / "style.safetensors", "peft", config, seed=4)
    with_lora = load(synthetic_models, vace_enabled=True, loras=[{"path": str(lora), "scale": 0.8}])
    lora_only = load(synthetic_models, loras=[{"path": str(lora), "scale": 0.8}])
    assert [f.tolist() for f in run(with_lora, chunks=1)] == [f.tolist() for f in run(lora_only, chunks=1)]
    fp8 = load(synthetic_models, vace_enabled=True, quantization="fp8_e4m3fn")
    assert type(fp8.components.generator.vace.vace_blocks[0].self_attn.q).__name__ == "Fp8Linear"
    assert run(fp8, chunks=1, vace_ref_images=[images[0]])[0].shape == (9, H, W, 3)


# Loading ---------------------------------------------------------------------------------------


def vace_file(models):
    return local_path(models, VACE, VACE.files[0])


def test_vace_enabled_without_the_module_file_asks_for_a_download(synthetic_models, tmp_path):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(synthetic_models, models)
    vace_file(models).unlink()
    with pytest.raises(MissingModelFiles, match="download_models --pipeline longlive") as missing:
        load(models, vace_enabled=True)
    assert vace_file(models) in missing.value.missing
    assert load(models).components.generator.vace is None, "without VACE the file is not needed"


def test_the_vace_module_is_checked_when_loaded(synthetic_models, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(vace_file(synthetic_models)))
    base = load(synthetic_models).components.generator

    def attach(tensors, name):
        path = tmp_path / name
        save_file(tensors, str(path))
        return load_vace_layers(base, path)

    full = {**state, "blocks.0.self_attn.q.weight": torch.zeros(2, 2)}
    assert attach(full, "full.safetensors") is base.vace, "a full VACE checkpoint is filtered to its VACE keys"
    missing = {k: v for k, v in state.items() if k != "vace_blocks.0.after_proj.bias"}
    with pytest.raises(CheckpointError, match="vace_blocks.0.after_proj.bias"):
        attach(missing, "missing.safetensors")
    wrong = {**state, "vace_patch_embedding.weight": torch.ones(state["vace_patch_embedding.weight"].shape[0], 48, 1, 2, 2)}
    with pytest.raises(CheckpointError, match=r"vace_patch_embedding.weight is \[.*48, 1, 2, 2\], expected"):
        attach(wrong, "wrong.safetensors")
    zeros = {**state, "vace_patch_embedding.weight": torch.zeros_like(state["vace_patch_embedding.weight"])}
    with pytest.raises(CheckpointError, match="all zeros"):
        attach(zeros, "zeros.safetensors")
    with pytest.raises(CheckpointError, match="no VACE weights"):
        attach({"blocks.0.x": torch.ones(1)}, "none.safetensors")
