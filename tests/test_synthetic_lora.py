"""Synthetic LoRA files: every key convention encodes the same delta, and the key-only inspection
that listings use reads each one's format, rank and targets without loading tensors."""

from __future__ import annotations

import hashlib

import pytest
import torch

from scope.models.lora_files import LoraFileCache, summarize_lora
from scope.models.synthetic.lora import (
    SYNTHETIC_LORA_FORMATS,
    synthetic_lora_deltas,
    write_synthetic_lora,
)
from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG
from scope.pipelines.wan.lora import read_lora
from scope.pipelines.wan.transformer import CausalWanTransformer

#: What the loader reports for each written format (PEFT variants are one convention to it).
LOADER_FORMAT = {
    "peft": "peft", "peft_alpha": "peft", "peft_base_model": "peft",
    "dotted": "dotted", "kohya": "kohya", "diffusers": "diffusers",
}
SUFFIXES = (".safetensors", ".pt")


@pytest.fixture(scope="module")
def model():
    return CausalWanTransformer(SYNTHETIC_WAN_CONFIG)


def effective(lora) -> dict[str, torch.Tensor]:
    return {module: delta.up @ delta.down for module, delta in lora.deltas.items()}


def test_every_format_gives_the_same_effective_weights(model, tmp_path):
    expected = {m: up @ down for m, (down, up) in synthetic_lora_deltas(SYNTHETIC_WAN_CONFIG, seed=7, rank=4).items()}
    assert len(expected) == 10 * SYNTHETIC_WAN_CONFIG.num_layers
    for fmt in SYNTHETIC_LORA_FORMATS:
        for suffix in SUFFIXES:
            path = write_synthetic_lora(tmp_path / f"{fmt}{suffix}", fmt, SYNTHETIC_WAN_CONFIG, seed=7)
            lora = read_lora(path, model)
            assert lora.format == LOADER_FORMAT[fmt], (fmt, suffix)
            assert lora.rank == 4
            got = effective(lora)
            assert set(got) == set(expected), (fmt, suffix)
            for module, weight in expected.items():
                assert torch.equal(got[module], weight), (fmt, suffix, module)


def test_an_odd_alpha_still_gives_the_same_delta_up_to_rounding(model, tmp_path):
    reference = effective(read_lora(write_synthetic_lora(tmp_path / "a.safetensors", "peft", SYNTHETIC_WAN_CONFIG, 3), model))
    for fmt in ("kohya", "dotted", "peft_alpha"):
        path = write_synthetic_lora(tmp_path / f"{fmt}.safetensors", fmt, SYNTHETIC_WAN_CONFIG, 3, alpha=3.3)
        got = effective(read_lora(path, model))
        for module, weight in reference.items():
            torch.testing.assert_close(got[module], weight, rtol=1e-6, atol=1e-8)


def test_seeds_and_targets_change_the_file(tmp_path):
    one = synthetic_lora_deltas(SYNTHETIC_WAN_CONFIG, seed=1)
    two = synthetic_lora_deltas(SYNTHETIC_WAN_CONFIG, seed=2)
    assert not torch.equal(one["blocks.0.self_attn.q"][0], two["blocks.0.self_attn.q"][0])
    only = synthetic_lora_deltas(SYNTHETIC_WAN_CONFIG, seed=1, targets=["blocks.1.ffn.2"])
    assert list(only) == ["blocks.1.ffn.2"]
    with pytest.raises(ValueError, match="not a LoRA-targeted linear"):
        synthetic_lora_deltas(SYNTHETIC_WAN_CONFIG, seed=1, targets=["blocks.9.ffn.2"])
    with pytest.raises(ValueError, match="unknown synthetic LoRA format 'lycoris'"):
        write_synthetic_lora(tmp_path / "x.safetensors", "lycoris", SYNTHETIC_WAN_CONFIG, 1)


@pytest.mark.parametrize("fmt", SYNTHETIC_LORA_FORMATS)
def test_key_only_inspection_reads_each_format(fmt, tmp_path):
    for suffix in SUFFIXES:
        path = write_synthetic_lora(tmp_path / f"{fmt}{suffix}", fmt, SYNTHETIC_WAN_CONFIG, seed=1, rank=8,
                                    targets=["blocks.0.self_attn.q", "blocks.1.self_attn.q", "blocks.1.ffn.0"])
        summary = summarize_lora(path)
        assert summary.error is None, summary.error
        assert summary.format == LOADER_FORMAT[fmt]
        assert summary.rank == 8
        assert summary.targets == ("blocks.0.self_attn.q", "blocks.1.ffn.0", "blocks.1.self_attn.q")
        assert summary.kinds == ["ffn.0", "self_attn.q"]


def test_files_that_are_not_wan_loras_get_an_error_naming_why(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    assert "header does not parse" in summarize_lora(tmp_path / "junk.safetensors").error
    save_file({"lora_unet_down_blocks_0_attn.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attn.lora_up.weight": torch.zeros(8, 4)}, str(tmp_path / "sdxl.safetensors"))
    error = summarize_lora(tmp_path / "sdxl.safetensors").error
    assert "'lora_unet_down_blocks_0_attn.lora_down.weight' names no linear module of the Wan generator" in error
    save_file({"blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 256)}, str(tmp_path / "half.safetensors"))
    assert "the up (lora_B) weight of blocks.0.self_attn.q is missing" in summarize_lora(tmp_path / "half.safetensors").error
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(256, 256)}, str(tmp_path / "full.safetensors"))
    assert "is not a LoRA key" in summarize_lora(tmp_path / "full.safetensors").error
    torch.save({"generator_lora": {}}, tmp_path / "nested.pt")
    assert "'generator_lora' is a dict, not a tensor" in summarize_lora(tmp_path / "nested.pt").error


def test_sha256_is_computed_once_per_file_version(tmp_path):
    path = write_synthetic_lora(tmp_path / "a.safetensors", "kohya", SYNTHETIC_WAN_CONFIG, seed=1)
    cache = LoraFileCache()
    size, digest, summary = cache.describe(path)
    assert (size, digest) == (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    assert summary.format == "kohya"
    assert cache.describe(path)[1] == digest and cache.hashed == 1
    write_synthetic_lora(path, "kohya", SYNTHETIC_WAN_CONFIG, seed=2, rank=2)  # a new size
    size, digest, summary = cache.describe(path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() and summary.rank == 2
    assert cache.hashed == 2
