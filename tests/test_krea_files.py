"""Krea's synthetic files are in its real layout, and its load reads the 14B architecture.

The generator is one flat safetensors file of ``model.``-prefixed original Wan keys in bf16 (not
LongLive's ``generator`` container), its architecture the 14B folder's ``config.json``: a load
that read the 1.3B config instead must fail, naming the file and a key.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors import safe_open

import scope
from scope.models.artifacts import (
    KREA_GENERATOR,
    PIPELINE_ARTIFACTS,
    WAN_1_3B,
    WAN_14B_CONFIG,
    local_path,
)
from scope.models.synthetic.generator import generator_shapes
from scope.models.synthetic.writer import is_synthetic_file, write_synthetic
from scope.pipelines.wan.config import (
    SYNTHETIC_WAN_14B_CONFIG,
    SYNTHETIC_WAN_CONFIG,
    WanConfig,
)
from scope.pipelines.wan.loading import CheckpointMismatch


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("krea-models")
    written = write_synthetic(root, PIPELINE_ARTIFACTS["krea-realtime-video"])
    return root, written


def krea_paths(root):
    return local_path(root, WAN_14B_CONFIG, "config.json"), local_path(root, KREA_GENERATOR, KREA_GENERATOR.files[0])


def test_the_generator_is_flat_prefixed_bf16_in_the_14b_stand_ins_shapes(models):
    root, written = models
    config_path, generator_path = krea_paths(root)
    assert config_path.relative_to(root).as_posix() == "Wan2.1-T2V-14B/config.json"
    assert generator_path.relative_to(root).as_posix() == "krea-realtime-video/krea-realtime-video-14b.safetensors"
    assert {config_path, generator_path} <= set(written)
    assert is_synthetic_file(config_path) and is_synthetic_file(generator_path)
    with safe_open(str(generator_path), framework="pt", device="cpu") as file:
        keys = list(file.keys())
        shapes = {key: tuple(file.get_slice(key).get_shape()) for key in keys}
        dtypes = {file.get_slice(key).get_dtype() for key in keys}
        first = file.get_tensor(keys[0])
    assert all(key.startswith("model.") for key in keys)
    assert shapes == {f"model.{key}": shape for key, shape in generator_shapes(SYNTHETIC_WAN_14B_CONFIG).items()}
    assert dtypes == {"BF16"} and first.dtype == torch.bfloat16
    assert WanConfig.from_json(config_path) == SYNTHETIC_WAN_14B_CONFIG
    assert SYNTHETIC_WAN_14B_CONFIG.dim != SYNTHETIC_WAN_CONFIG.dim, "the 1.3B stand-in would hide a wrong config"


def test_a_krea_load_reads_the_14b_config(models, tmp_path):
    """The two synthetic configs swapped: under the 14B name the 1.3B stand-in's no longer fits
    the generator, and the load says which file and which key (a load that built from the 1.3B
    folder's config, or from no config, would go through)."""
    root = tmp_path / "models"
    shutil.copytree(models[0], root)
    config_path, generator_path = krea_paths(root)
    small_path = local_path(root, WAN_1_3B, "config.json")
    small, large = small_path.read_bytes(), config_path.read_bytes()
    small_path.write_bytes(large)
    config_path.write_bytes(small)
    with pytest.raises(CheckpointMismatch) as refused:
        scope.load_pipeline("krea-realtime-video", models_dir=root, height=64, width=96)
    message = str(refused.value)
    assert str(generator_path) in message
    assert "blocks.0.cross_attn.k.weight: file [384, 384] vs model [256, 256]" in message, message
