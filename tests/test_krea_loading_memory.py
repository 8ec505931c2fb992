"""The generator loader keeps host memory near "model + one tensor", measured by peak RssAnon.

A 0.98 GB bf16 checkpoint in Krea's layout (flat safetensors, ``model.`` keys; Wan2.1-1.3B's
width, 10 layers) is loaded to float32 with q/k/v fused, each load in a fresh interpreter with
a thread sampling ``RssAnon`` every millisecond (bench/memory_peak.py). The streamed loader must
stay under model + largest tensor + margin; the naive load (whole file in memory, then a float32
state dict) must not, which shows the bound is tight enough to catch the load it replaces.
"""

from __future__ import annotations

import pytest
import torch

from bench.memory_peak import MEMORY_CONFIG, bound, measure_in_subprocess, mib, write_memory_files


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("krea-memory")
    config_path, file = write_memory_files(directory, MEMORY_CONFIG)
    yield config_path, file
    file.unlink()  # 1 GB: not left behind in pytest's kept temp dirs


def figures(result: dict) -> str:
    return ", ".join(f"{key} {mib(value)} MiB" for key, value in result.items() if key.endswith("_bytes"))


def test_streamed_load_stays_under_the_bound(checkpoint):
    config_path, file = checkpoint
    result = measure_in_subprocess(config_path, file, "streamed")
    expected = bound(MEMORY_CONFIG, file_dtype=torch.bfloat16)
    assert result["bound_bytes"] == expected["bound_bytes"]
    assert result["parameters_loaded"] == expected["parameters"] and result["fused_qkv"]
    # The sampler sees the model itself (it is not blind), and the load kept nothing else.
    assert result["peak_bytes"] >= result["model_bytes"], figures(result)
    assert result["peak_bytes"] <= result["bound_bytes"], figures(result)


def test_naive_load_breaks_the_bound(checkpoint):
    config_path, file = checkpoint
    result = measure_in_subprocess(config_path, file, "naive")
    assert result["parameters_loaded"] == bound(MEMORY_CONFIG, file_dtype=torch.bfloat16)["parameters"]
    # The whole file (bf16) beside the float32 model: the bound is far below it.
    assert result["peak_bytes"] > result["bound_bytes"] + result["file_bytes"] // 2, figures(result)
