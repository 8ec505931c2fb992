"""Wan2.1 VAE / LightVAE: streaming equals one-shot, the diffusers oracle,
independent streams, and strict loading of the original key layout."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from scope.models.synthetic import vae as synthetic
from scope.pipelines.wan.autoencoders import (
    VAE_FILES,
    WAN_LATENT_MEAN,
    WAN_LATENT_STD,
    VAELoadError,
    load_vae,
    vae_path,
)
from scope.pipelines.wan.vae import WanVAENet, WanVAEWidths, infer_widths, load_wan_vae
from tests.latents import H, W, random_latents

ORACLE_BASE = 4  # wide enough that the RMS norms are well conditioned


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    synthetic.write_wan_vae(vae_path(root, "wan"), seed=1, base_dim=ORACLE_BASE)
    synthetic.write_lightvae(vae_path(root, "lightvae"), seed=2)
    return root


@pytest.fixture(scope="module", params=["wan", "lightvae"])
def vae(request, models_dir):
    return load_vae(request.param, models_dir, device="cpu", dtype=torch.float32)


def _video(t: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth content plus noise, in [-1, 1]
    base = torch.linspace(-1, 1, 8 * W).view(1, 1, 1, 1, -1) * torch.linspace(-1, 1, 8 * H).view(1, 1, 1, -1, 1)
    video = 0.6 * base.expand(1, 3, t, -1, -1) + 0.3 * torch.rand(1, 3, t, 8 * H, 8 * W, generator=g)
    return video.clamp(-1, 1)


# --------------------------------------------------------------------------- streaming


def test_stream_decode_chunks_equal_one_shot(vae):
    z = random_latents(9, seed=3)
    state = vae.new_state()
    first = vae.stream_decode(z[:, :3], state)
    second = vae.stream_decode(z[:, 3:6], state)
    third = vae.stream_decode(z[:, 6:], state)
    assert first.shape == (1, 9, 3, 8 * H, 8 * W)
    assert second.shape == third.shape == (1, 12, 3, 8 * H, 8 * W)
    assert first.dtype == torch.float32
    streamed = torch.cat([first, second, third], dim=1)
    one_shot = vae.decode(z)
    assert one_shot.shape == (1, 33, 3, 8 * H, 8 * W)
    torch.testing.assert_close(streamed, one_shot, atol=1e-5, rtol=0)
    # the caches carried over matter: without them the second chunk differs
    cold = vae.new_state()
    cold.first_batch = False
    assert (vae.stream_decode(z[:, 3:6], cold)[:, -4:] - second[:, -4:]).abs().max() > 1e-2
    # reset() starts a new stream: the next chunk is a first chunk again
    state.reset()
    torch.testing.assert_close(vae.stream_decode(z[:, :3], state), first, atol=0, rtol=0)


def test_decoded_frames_show_structure(vae):
    a = vae.decode(random_latents(2, seed=4))
    b = vae.decode(random_latents(2, seed=5))
    assert torch.isfinite(a).all() and a.abs().max() <= 1.0
    per_frame_std = a.flatten(2).std(dim=-1)
    assert per_frame_std.min() > 0.05, per_frame_std
    assert (a - b).abs().mean() > 0.05


def _pipeline_call(vae, state, video):
    """What a pipeline does per chunk: encode, then decode (which clears first_batch)."""
    latents = vae.stream_encode(video, state)
    vae.stream_decode(latents, state)
    return latents


def test_stream_encode_counts_and_matches_one_shot(vae):
    video = _video(21, seed=6)
    state = vae.new_state()
    first = _pipeline_call(vae, state, video[:, :, :9])
    second = _pipeline_call(vae, state, video[:, :, 9:])
    assert first.shape == (1, 3, 16, H, W) and second.shape == (1, 3, 16, H, W)
    torch.testing.assert_close(torch.cat([first, second], 1), vae.encode(video), atol=1e-5, rtol=0)
    # the first chunk of a video stream holds 13 frames -> 4 latents, then 12 -> 3
    state = vae.new_state()
    assert _pipeline_call(vae, state, _video(13, seed=7)).shape == (1, 4, 16, H, W)
    assert _pipeline_call(vae, state, _video(12, seed=7)).shape == (1, 3, 16, H, W)


def test_first_chunk_with_odd_remainder_goes_in_one_call(vae):
    # 12 frames as a first chunk: frame 0, then 11 frames in one call -> 1 + 2
    video = _video(12, seed=15)
    assert vae.stream_encode(video, vae.new_state()).shape == (1, 3, 16, H, W)


def test_first_batch_is_cleared_by_decode_only(vae):
    state = vae.new_state()
    assert state.first_batch
    vae.stream_encode(_video(9, seed=8), state)
    assert state.first_batch, "encode must leave first_batch for the decode of the same call"
    vae.stream_decode(random_latents(3, seed=8), state)
    assert not state.first_batch
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.stream_encode(_video(6, seed=8), state)
    state.reset()
    assert state.first_batch


def test_two_streams_over_one_vae_do_not_interact(vae):
    za, zb = random_latents(6, seed=9), random_latents(6, seed=10)
    va, vb = _video(21, seed=11), _video(21, seed=12)

    def alone(z, v):
        s = vae.new_state()
        lat = [_pipeline_call(vae, s, v[:, :, :9]), _pipeline_call(vae, s, v[:, :, 9:])]
        s2 = vae.new_state()
        pix = [vae.stream_decode(z[:, :3], s2), vae.stream_decode(z[:, 3:], s2)]
        return lat, pix

    ref_a, ref_b = alone(za, va), alone(zb, vb)
    ea, eb, da, db = vae.new_state(), vae.new_state(), vae.new_state(), vae.new_state()
    lat_a0 = _pipeline_call(vae, ea, va[:, :, :9])
    lat_b0 = _pipeline_call(vae, eb, vb[:, :, :9])
    pix_a0, pix_b0 = vae.stream_decode(za[:, :3], da), vae.stream_decode(zb[:, :3], db)
    lat_b1 = _pipeline_call(vae, eb, vb[:, :, 9:])
    lat_a1 = _pipeline_call(vae, ea, va[:, :, 9:])
    pix_b1, pix_a1 = vae.stream_decode(zb[:, 3:], db), vae.stream_decode(za[:, 3:], da)
    for got, want in (
        ([lat_a0, lat_a1], ref_a[0]),
        ([lat_b0, lat_b1], ref_b[0]),
        ([pix_a0, pix_a1], ref_a[1]),
        ([pix_b0, pix_b1], ref_b[1]),
    ):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=0, rtol=0)


def test_batch_items_are_independent(vae):
    z = torch.cat([random_latents(3, seed=16), random_latents(3, seed=17)])
    video = torch.cat([_video(9, seed=16), _video(9, seed=17)])
    state = vae.new_state()
    lat, pix = vae.stream_encode(video, state), vae.stream_decode(z, state)
    # a batch may take another convolution path (rounding only); mixing items
    # would show up as differences of order 0.1
    for i in range(2):
        single = vae.new_state()
        torch.testing.assert_close(lat[i : i + 1], vae.stream_encode(video[i : i + 1], single), atol=2e-4, rtol=0)
        torch.testing.assert_close(pix[i : i + 1], vae.stream_decode(z[i : i + 1], single), atol=2e-4, rtol=0)


# --------------------------------------------------------------------------- library oracle


@pytest.fixture(scope="module")
def diffusers_reference(models_dir):
    import diffusers
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    raw = torch.load(vae_path(models_dir, "wan"), map_location="cpu", weights_only=True)
    ref = diffusers.AutoencoderKLWan(
        base_dim=ORACLE_BASE,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
    ).eval()
    ref.load_state_dict(convert_wan_vae_to_diffusers(raw), strict=True)
    return ref


def _stats():
    return torch.tensor(WAN_LATENT_MEAN).view(1, 16, 1, 1, 1), torch.tensor(WAN_LATENT_STD).view(1, 16, 1, 1, 1)


def test_streamed_decode_matches_diffusers(models_dir, diffusers_reference):
    vae = load_vae("wan", models_dir)
    z = random_latents(6, seed=13)
    state = vae.new_state()
    ours = torch.cat([vae.stream_decode(z[:, :3], state), vae.stream_decode(z[:, 3:], state)], dim=1)
    mean, std = _stats()
    with torch.no_grad():
        ref = diffusers_reference.decode(z.transpose(1, 2) * std + mean).sample
    ref = ref.clamp(-1, 1).transpose(1, 2)
    assert ref.shape == ours.shape == (1, 21, 3, 8 * H, 8 * W)
    torch.testing.assert_close(ours, ref, atol=5e-5, rtol=0)


def test_streamed_encode_matches_diffusers(models_dir, diffusers_reference):
    vae = load_vae("wan", models_dir)
    video = _video(13, seed=14)
    ours = vae.stream_encode(video, vae.new_state())
    mean, std = _stats()
    with torch.no_grad():
        mu = diffusers_reference.encode(video).latent_dist.mean
    ref = ((mu - mean) / std).transpose(1, 2)
    torch.testing.assert_close(ours, ref, atol=5e-5, rtol=0)
    raw = vae.stream_encode(video, vae.new_state(), normalize=False)
    torch.testing.assert_close(raw, mu.transpose(1, 2), atol=5e-5, rtol=0)


# --------------------------------------------------------------------------- loading


def _real_wan_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the real Wan2.1_VAE.pth, spelled out from the published
    channel plan (96 x [1, 2, 4, 4]; decoder levels 384, 384, 192, 96 with the
    upsampling convs halving channels)."""
    enc_blocks = [  # (index, kind, in, out)
        (0, "res", 96, 96), (1, "res", 96, 96), (2, "down2d", 96, 96),
        (3, "res", 96, 192), (4, "res", 192, 192), (5, "down3d", 192, 192),
        (6, "res", 192, 384), (7, "res", 384, 384), (8, "down3d", 384, 384),
        (9, "res", 384, 384), (10, "res", 384, 384),
    ]  # fmt: skip
    dec_blocks = [
        (0, "res", 384, 384), (1, "res", 384, 384), (2, "res", 384, 384), (3, "up3d", 384, 192),
        (4, "res", 192, 384), (5, "res", 384, 384), (6, "res", 384, 384), (7, "up3d", 384, 192),
        (8, "res", 192, 192), (9, "res", 192, 192), (10, "res", 192, 192), (11, "up2d", 192, 96),
        (12, "res", 96, 96), (13, "res", 96, 96), (14, "res", 96, 96),
    ]  # fmt: skip
    table: dict[str, tuple[int, ...]] = {}

    def res(p, i, o):
        table.update({
            f"{p}.residual.0.gamma": (i, 1, 1, 1),
            f"{p}.residual.2.weight": (o, i, 3, 3, 3), f"{p}.residual.2.bias": (o,),
            f"{p}.residual.3.gamma": (o, 1, 1, 1),
            f"{p}.residual.6.weight": (o, o, 3, 3, 3), f"{p}.residual.6.bias": (o,),
        })  # fmt: skip
        if i != o:
            table.update({f"{p}.shortcut.weight": (o, i, 1, 1, 1), f"{p}.shortcut.bias": (o,)})

    def mid(p, c):
        res(f"{p}.0", c, c)
        res(f"{p}.2", c, c)
        table.update({
            f"{p}.1.norm.gamma": (c, 1, 1),
            f"{p}.1.to_qkv.weight": (3 * c, c, 1, 1), f"{p}.1.to_qkv.bias": (3 * c,),
            f"{p}.1.proj.weight": (c, c, 1, 1), f"{p}.1.proj.bias": (c,),
        })  # fmt: skip

    for section, blocks in (("encoder.downsamples", enc_blocks), ("decoder.upsamples", dec_blocks)):
        for index, kind, i, o in blocks:
            p = f"{section}.{index}"
            if kind == "res":
                res(p, i, o)
                continue
            table.update({f"{p}.resample.1.weight": (o, i, 3, 3), f"{p}.resample.1.bias": (o,)})
            if kind == "down3d":
                table.update({f"{p}.time_conv.weight": (i, i, 3, 1, 1), f"{p}.time_conv.bias": (i,)})
            if kind == "up3d":
                table.update({f"{p}.time_conv.weight": (2 * i, i, 3, 1, 1), f"{p}.time_conv.bias": (2 * i,)})
    mid("encoder.middle", 384)
    mid("decoder.middle", 384)
    table.update({
        "encoder.conv1.weight": (96, 3, 3, 3, 3), "encoder.conv1.bias": (96,),
        "encoder.head.0.gamma": (384, 1, 1, 1), "encoder.head.2.weight": (32, 384, 3, 3, 3), "encoder.head.2.bias": (32,),
        "conv1.weight": (32, 32, 1, 1, 1), "conv1.bias": (32,),
        "conv2.weight": (16, 16, 1, 1, 1), "conv2.bias": (16,),
        "decoder.conv1.weight": (384, 16, 3, 3, 3), "decoder.conv1.bias": (384,),
        "decoder.head.0.gamma": (96, 1, 1, 1), "decoder.head.2.weight": (3, 96, 3, 3, 3), "decoder.head.2.bias": (3,),
    })  # fmt: skip
    return table


def test_real_layout_matches_writer_and_loader():
    expected = _real_wan_layout()
    # the published size: ~127 M parameters (508 MB in float32)
    assert abs(sum(math.prod(s) for s in expected.values()) - 126.9e6) < 0.1e6
    written = synthetic.wan_vae_state_dict(96, seed=0, device="meta")
    assert {k: tuple(v.shape) for k, v in written.items()} == expected
    widths = infer_widths(written, Path("Wan2.1_VAE.pth"))
    assert widths.encoder == (96, 96, 192, 384, 384)
    assert widths.decoder == (384, 384, 384, 192, 96)
    assert widths.upsample == (192, 192, 96)
    assert widths == WanVAEWidths.from_base(96)
    with torch.device("meta"):
        net = WanVAENet(widths)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expected
    # LightVAE: every width x0.25, ~32 MB in float32
    light = synthetic.wan_vae_state_dict(24, seed=0, device="meta")
    light_widths = infer_widths(light, Path("lightvaew2_1.pth"))
    assert light_widths.encoder == (24, 24, 48, 96, 96) and light_widths.decoder == (96, 96, 96, 48, 24)
    assert light_widths == WanVAEWidths.from_base(24)
    assert abs(sum(v.numel() for v in light.values()) * 4 / 1e6 - 32) < 1


def test_paths_and_registry(tmp_path):
    assert vae_path(tmp_path, "wan") == tmp_path / "Wan2.1-T2V-1.3B" / "Wan2.1_VAE.pth"
    assert vae_path(tmp_path, "lightvae") == tmp_path / "Autoencoders" / "lightvaew2_1.pth"
    assert set(VAE_FILES) == {"wan", "lightvae", "tae", "lighttae"}
    with pytest.raises(ValueError, match="unknown vae_type"):
        vae_path(tmp_path, "sdxl")
    with pytest.raises(FileNotFoundError, match="Wan2.1_VAE.pth"):
        load_vae("wan", tmp_path)


def test_synthetic_files_are_deterministic(tmp_path):
    a = synthetic.write_wan_vae(tmp_path / "a.pth", seed=5, base_dim=2)
    b = synthetic.write_wan_vae(tmp_path / "b.pth", seed=5, base_dim=2)
    c = synthetic.write_wan_vae(tmp_path / "c.pth", seed=6, base_dim=2)
    sa, sb, sc = (torch.load(p, weights_only=True) for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def _broken(tmp_path, edit) -> Path:
    sd = synthetic.wan_vae_state_dict(2, seed=0)
    edit(sd)
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(sd, path)
    return path


def test_missing_key_is_named(tmp_path):
    path = _broken(tmp_path, lambda sd: sd.pop("decoder.upsamples.5.residual.3.gamma"))
    with pytest.raises(VAELoadError, match=r"Wan2\.1_VAE\.pth.*decoder\.upsamples\.5\.residual\.3\.gamma"):
        load_wan_vae(path)


def test_width_defining_key_missing_is_named(tmp_path):
    path = _broken(tmp_path, lambda sd: sd.pop("encoder.conv1.weight"))
    with pytest.raises(VAELoadError, match=r"Wan2\.1_VAE\.pth.*encoder\.conv1\.weight"):
        load_wan_vae(path)


def test_unexpected_key_is_named(tmp_path):
    path = _broken(tmp_path, lambda sd: sd.__setitem__("decoder.extra.weight", torch.zeros(1)))
    with pytest.raises(VAELoadError, match=r"Wan2\.1_VAE\.pth.*decoder\.extra\.weight"):
        load_wan_vae(path)


def test_wrong_shape_is_named(tmp_path):
    def edit(sd):
        sd["encoder.downsamples.4.residual.6.weight"] = torch.zeros(4, 3, 3, 3, 3)

    path = _broken(tmp_path, edit)
    with pytest.raises(VAELoadError, match=r"encoder\.downsamples\.4\.residual\.6\.weight.*\[4, 3, 3, 3, 3\]"):
        load_wan_vae(path)


class PickledPayload:
    """Stands for any object whose unpickling would run project code."""


def test_pickle_needing_code_is_refused(tmp_path):
    sd = synthetic.wan_vae_state_dict(2, seed=0)
    sd["payload"] = PickledPayload()
    path = vae_path(tmp_path, "wan")
    path.parent.mkdir(parents=True)
    torch.save(sd, path)
    with pytest.raises(VAELoadError, match=r"Wan2\.1_VAE\.pth.*pickled code"):
        load_vae("wan", tmp_path)


def test_loaded_weights_equal_file_and_follow_dtype(tmp_path):
    path = synthetic.write_wan_vae(tmp_path / "w.pth", seed=3, base_dim=2)
    raw = torch.load(path, weights_only=True)
    vae = load_wan_vae(path, dtype=torch.bfloat16)
    loaded = vae.net.state_dict()
    assert loaded.keys() == raw.keys()
    assert all(v.dtype == torch.bfloat16 for v in loaded.values())
    torch.testing.assert_close(loaded["decoder.head.2.weight"].float(), raw["decoder.head.2.weight"], atol=1e-2, rtol=1e-2)
    out = vae.stream_decode(random_latents(3, seed=1), vae.new_state())
    assert out.dtype == torch.float32 and out.shape == (1, 9, 3, 8 * H, 8 * W) and torch.isfinite(out).all()
