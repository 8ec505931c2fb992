"""TAE / LightTAE: both match the published TAEHV recipe written out independently,
chunked streaming equals whole-sequence processing, the first-frames trim,
LightTAE-only normalisation, and the TAEHV key layout."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from scope.models.synthetic import vae as synthetic
from scope.pipelines.wan.autoencoders import WAN_LATENT_MEAN, WAN_LATENT_STD, VAELoadError, load_vae, vae_path
from scope.pipelines.wan.tae import FRAMES_TO_TRIM, TAENet, infer_tae_widths, load_tae
from tests import taehv_recipe
from tests.latents import H, W, random_latents


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    synthetic.write_tae(vae_path(root, "tae"), seed=1)
    synthetic.write_lighttae(vae_path(root, "lighttae"), seed=2)
    return root


@pytest.fixture(scope="module", params=["tae", "lighttae"])
def tae(request, models_dir):
    return load_vae(request.param, models_dir, device="cpu", dtype=torch.float32)


def _video(t: int, seed: int) -> torch.Tensor:
    return torch.rand(1, 3, t, 8 * H, 8 * W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _stats():
    return torch.tensor(WAN_LATENT_MEAN).view(16, 1, 1), torch.tensor(WAN_LATENT_STD).view(16, 1, 1)


def test_streamed_decode_equals_whole_sequence(tae):
    z = random_latents(9, seed=3)
    state = tae.new_state()
    chunks = [tae.stream_decode(z[:, i : i + 3], state) for i in (0, 3, 6)]
    assert [c.shape[1] for c in chunks] == [9, 12, 12]
    assert chunks[0].shape[2:] == (3, 8 * H, 8 * W) and chunks[0].dtype == torch.float32
    whole = tae.decode(z)
    assert whole.shape[1] == 33
    torch.testing.assert_close(torch.cat(chunks, 1), whole, atol=1e-6, rtol=0)
    # without the memory carried across chunks the second chunk would differ
    cold = tae.new_state()
    cold.first_batch = False
    assert (tae.stream_decode(z[:, 3:6], cold) - chunks[1]).abs().max() > 1e-3


def test_first_three_frames_of_a_stream_are_trimmed(tae):
    z = random_latents(2, seed=4)
    net = tae.net
    lat = z * _stats()[1] + _stats()[0] if tae.normalized else z
    frames = lat.flatten(0, 1).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        raw = net.run(net.decoder, frames, 1, [None] * net.memblocks[1]).unsqueeze(0)
    assert raw.shape[1] == 8 and FRAMES_TO_TRIM == 3
    expected = raw[:, 3:].clamp(0, 1) * 2 - 1
    torch.testing.assert_close(tae.stream_decode(z, tae.new_state()), expected, atol=1e-5, rtol=0)
    # one latent alone gives a single frame at the stream start
    assert tae.stream_decode(z[:, :1], tae.new_state()).shape[1] == 1


def test_streamed_encode_equals_whole_sequence(tae):
    video = _video(24, seed=5)
    state = tae.new_state()
    first = tae.stream_encode(video[:, :, :12], state)
    tae.stream_decode(first, state)  # a pipeline call: decode clears first_batch
    second = tae.stream_encode(video[:, :, 12:], state)
    assert first.shape == second.shape == (1, 3, 16, H, W)
    streamed = torch.cat([first, second], 1)
    torch.testing.assert_close(streamed, tae.encode(video), atol=1e-6, rtol=0)
    # the whole sequence through the network in one parallel pass
    frames = ((video[0].transpose(0, 1) + 1) / 2).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        whole = tae.net.run(tae.net.encoder, frames, 1, [None] * tae.net.memblocks[0]).unsqueeze(0)
    if tae.normalized:
        whole = (whole - _stats()[0]) / _stats()[1]
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=0)
    # frames are padded to a multiple of 4 by repeating the last one: 13 -> 16 -> 4 latents
    video13 = _video(13, seed=6)
    padded = torch.cat([video13, video13[:, :, -1:].expand(-1, -1, 3, -1, -1)], dim=2)
    got = tae.stream_encode(video13, tae.new_state())
    assert got.shape == (1, 4, 16, H, W)
    torch.testing.assert_close(got, tae.encode(padded), atol=1e-6, rtol=0)


#: Float32 rounding of two orderings of the same sums: measured up to 4e-6 on CPU.
RECIPE_ATOL = 3e-5


def _checkpoint(tae, models_dir) -> dict[str, torch.Tensor]:
    return torch.load(vae_path(models_dir, "lighttae" if tae.normalized else "tae"), weights_only=True)


def test_decode_matches_the_published_recipe(tae, models_dir):
    """Against TAEHV's layers written out plainly (tests/taehv_recipe.py), on the same file."""
    z = random_latents(3, seed=21)
    raw = z * _stats()[1] + _stats()[0] if tae.normalized else z
    expected = taehv_recipe.decode_video(_checkpoint(tae, models_dir), raw[0]).unsqueeze(0) * 2 - 1
    assert expected.shape == (1, 9, 3, 8 * H, 8 * W)
    torch.testing.assert_close(tae.decode(z), expected, atol=RECIPE_ATOL, rtol=0)
    state = tae.new_state()
    streamed = torch.cat([tae.stream_decode(z[:, :1], state), tae.stream_decode(z[:, 1:], state)], 1)
    torch.testing.assert_close(streamed, expected, atol=RECIPE_ATOL, rtol=0)


def test_encode_matches_the_published_recipe(tae, models_dir):
    video = _video(11, seed=22)  # padded to 12 frames with the last one: 3 latents
    expected = taehv_recipe.encode_video(_checkpoint(tae, models_dir), (video[0].transpose(0, 1) + 1) / 2)
    if tae.normalized:
        expected = (expected - _stats()[0]) / _stats()[1]
    assert expected.shape == (3, 16, H, W)
    torch.testing.assert_close(tae.encode(video)[0], expected, atol=RECIPE_ATOL, rtol=0)


def test_outputs_show_structure(tae):
    a, b = tae.decode(random_latents(2, seed=7)), tae.decode(random_latents(2, seed=8))
    assert torch.isfinite(a).all() and a.abs().max() <= 1.0
    assert a.flatten(2).std(dim=-1).min() > 0.05
    assert (a - b).abs().mean() > 0.05
    lat = tae.encode(_video(8, seed=9))
    assert torch.isfinite(lat).all() and lat.std() > 0.05


def test_two_streams_do_not_interact(tae):
    za, zb = random_latents(6, seed=10), random_latents(6, seed=11)
    sa, sb = tae.new_state(), tae.new_state()
    a0, b0 = tae.stream_decode(za[:, :3], sa), tae.stream_decode(zb[:, :3], sb)
    b1, a1 = tae.stream_decode(zb[:, 3:], sb), tae.stream_decode(za[:, 3:], sa)
    torch.testing.assert_close(torch.cat([a0, a1], 1), tae.decode(za), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cat([b0, b1], 1), tae.decode(zb), atol=1e-6, rtol=0)
    sa.reset()
    assert sa.first_batch and tae.stream_decode(za[:, :3], sa).shape[1] == 9


def test_batch_items_are_independent(tae):
    z = torch.cat([random_latents(3, seed=14), random_latents(3, seed=15)])
    video = torch.cat([_video(9, seed=14), _video(9, seed=15)])
    state = tae.new_state()
    lat, pix = tae.stream_encode(video, state), tae.stream_decode(z, state)
    for i in range(2):
        single = tae.new_state()
        torch.testing.assert_close(lat[i : i + 1], tae.stream_encode(video[i : i + 1], single), atol=1e-5, rtol=0)
        torch.testing.assert_close(pix[i : i + 1], tae.stream_decode(z[i : i + 1], single), atol=1e-5, rtol=0)


def test_normalisation_applies_to_lighttae_only(models_dir):
    path = vae_path(models_dir, "tae")
    plain = load_tae(path, normalized=False)
    light = load_tae(path, normalized=True)
    mean, std = _stats()
    z = random_latents(3, seed=12)
    torch.testing.assert_close(light.decode(z), plain.decode(z * std + mean), atol=1e-6, rtol=0)
    assert (light.decode(z) - plain.decode(z)).abs().max() > 1e-2
    video = _video(8, seed=13)
    torch.testing.assert_close(light.encode(video), (plain.encode(video) - mean) / std, atol=1e-5, rtol=0)
    torch.testing.assert_close(light.encode(video, normalize=False), plain.encode(video), atol=0, rtol=0)


def test_first_tgrow_is_cut_to_its_last_block(models_dir):
    path = vae_path(models_dir, "lighttae")
    raw = torch.load(path, weights_only=True)["decoder.7.conv.weight"]
    n0 = synthetic.TAE_SYNTHETIC_DECODER_WIDTHS[0]
    assert raw.shape == (2 * n0, n0, 1, 1)
    loaded = load_tae(path, normalized=True).net.decoder[7].conv.weight
    torch.testing.assert_close(loaded, raw[-n0:], atol=0, rtol=0)


def _real_tae_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of taew2_1.pth from the TAEHV layer order: encoder 64 wide
    (TPool strides 2, 2, 1), decoder stages 256, 128, 64 then 64."""
    table: dict[str, tuple[int, ...]] = {}

    def conv(key, o, i, k=3, bias=True):
        table[f"{key}.weight"] = (o, i, k, k)
        if bias:
            table[f"{key}.bias"] = (o,)

    def mem(key, c):
        conv(f"{key}.conv.0", c, 2 * c)
        conv(f"{key}.conv.2", c, c)
        conv(f"{key}.conv.4", c, c)

    conv("encoder.0", 64, 3)
    for pool, stride in ((2, 2), (7, 2), (12, 1)):
        conv(f"encoder.{pool}.conv", 64, 64 * stride, k=1, bias=False)
        conv(f"encoder.{pool + 1}", 64, 64, bias=False)
        for j in (2, 3, 4):
            mem(f"encoder.{pool + j}", 64)
    conv("encoder.17", 16, 64)
    conv("decoder.1", 256, 16)
    for first, c, c_next, stride in ((3, 256, 128, 1), (9, 128, 64, 2), (15, 64, 64, 2)):
        for j in (0, 1, 2):
            mem(f"decoder.{first + j}", c)
        conv(f"decoder.{first + 4}.conv", c * stride, c, k=1, bias=False)
        conv(f"decoder.{first + 5}", c_next, c, bias=False)
    conv("decoder.22", 3, 64)
    return table


def test_real_layout_matches_writer_and_loader():
    expected = _real_tae_layout()
    # 11.3 M parameters: the published 22 MB in half precision
    assert abs(sum(math.prod(s) for s in expected.values()) * 2 / 1e6 - 22.6) < 0.2
    written = synthetic.tae_state_dict(0, 64, (256, 128, 64, 64), device="meta")
    assert {k: tuple(v.shape) for k, v in written.items()} == expected
    widths = infer_tae_widths(written, Path("taew2_1.pth"))
    assert widths.encoder == 64 and widths.decoder == (256, 128, 64, 64) and widths.latent == 16
    with torch.device("meta"):
        net = TAENet(widths)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expected


def test_loading_errors_name_file_and_key(tmp_path):
    sd = synthetic.tae_state_dict(0)
    sd.pop("decoder.16.conv.2.bias")
    path = tmp_path / "taew2_1.pth"
    torch.save(sd, path)
    with pytest.raises(VAELoadError, match=r"taew2_1\.pth.*decoder\.16\.conv\.2\.bias"):
        load_tae(path, normalized=False)
    sd = synthetic.tae_state_dict(0)
    sd["encoder.9.conv.0.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(sd, path)
    with pytest.raises(VAELoadError, match=r"encoder\.9\.conv\.0\.weight"):
        load_tae(path, normalized=False)
