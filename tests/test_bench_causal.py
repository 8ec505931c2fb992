"""bench/causal_pipelines.py: the real-size plan it would time, and both modes run end to end.

The real-size figures (1.3B generator, Wan VAE of width 96, bf16) are only timed on a GPU; here
the same stream objects are built on the ``meta`` device and their cache sizes checked against
the spec's token counts (pipelines spec §5.1, §6.3) and the FLOP model (performance notes §2.4).
"""

from __future__ import annotations

import json

import pytest
import torch

from bench import causal_pipelines
from bench.real_size import plan, parameter_count, random_components
from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG


@pytest.fixture(scope="module")
def real_size_meta():
    return random_components("meta", torch.bfloat16)


def test_real_size_model_is_wan_1_3b(real_size_meta):
    # Spec §3.1: ~1.418 B parameters.
    assert 1.418e9 <= parameter_count(real_size_meta) < 1.419e9
    assert real_size_meta.vae.widths.decoder == (384, 384, 384, 192, 96)


@pytest.mark.parametrize(
    ("line", "window", "bank"),
    [
        ("longlive", 12 * 1560, 0),  # 12 frames x 1560 tokens per frame at 832x480
        ("reward-forcing", 9 * 1560, 0),
        ("memflow", 12 * 1560, 3 * 1560),
        ("memflow-no-bank", 12 * 1560, 0),
    ],
)
def test_cache_tokens_per_layer_at_832x480(real_size_meta, line, window, bank):
    row = plan(real_size_meta, line, 832, 480)
    assert row["tokens_per_frame"] == 1560
    assert (row["window_tokens_per_layer"], row["bank_tokens_per_layer"]) == (window, bank)
    assert row["attended_tokens"] == window + bank


def test_kv_bytes_and_flops_match_the_spec(real_size_meta):
    # Spec §6.3, bf16 at 576x320: LongLive 1.59 GB, Reward Forcing 1.19 GB, MemFlow ~2.1 GB
    # (window 8640 + bank 2160 + one staged frame 720 tokens per layer).
    rows = {line: plan(real_size_meta, line, 576, 320) for line in ("longlive", "reward-forcing", "memflow")}
    assert rows["longlive"]["kv_gb"] == pytest.approx(1.59, abs=0.01)
    assert rows["reward-forcing"]["kv_gb"] == pytest.approx(1.19, abs=0.01)
    assert rows["memflow"]["kv_gb"] == pytest.approx(2.12, abs=0.01)
    # Notes §2.4: DiT TFLOP per output frame with a 12-frame window, 4 steps + clean pass.
    assert rows["longlive"]["dit_tflop_per_frame"] == pytest.approx(3.77, abs=0.01)
    assert plan(real_size_meta, "longlive", 832, 480)["dit_tflop_per_frame"] == pytest.approx(11.79, abs=0.01)


def test_real_width_cpu_run_times_the_steady_state(tmp_path, one_thread):
    """One real-width layer on the CPU, through the script: the timed chunks see a full window
    and, for MemFlow, a full bank (attended frames measured at the attention kernel)."""
    out = tmp_path / "real.json"
    argv = ["--device", "cpu", "--layers", "1", "--vae-base", "4", "--sizes", "32x32",
            "--warmup", "0", "--timed", "1", "--lines", "longlive", "memflow", "--json", str(out)]
    assert causal_pipelines.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["model"]["dim"] == 1536 and report["model"]["layers"] == 1
    timed = report["sizes"]["32x32"]["timed"]
    assert timed["longlive"]["attended_frames"] == [12.0]
    assert timed["memflow"]["attended_frames"] == [15.0]  # sink + window 12, bank 3
    assert (timed["longlive"]["warmup_chunks"], timed["memflow"]["warmup_chunks"]) == (2, 6)
    assert all(row["fps"] > 0 for row in timed.values())
    assert report["sizes"]["32x32"]["vs_longlive"]["longlive"]["fps"] == 1.0


def test_synthetic_run_counts_the_bank(tmp_path, synthetic_models, one_thread):
    """The synthetic mode end to end; MemFlow's stream holds exactly its bank more than LongLive's."""
    out = tmp_path / "synthetic.json"
    argv = ["--size", "96x64", "--chunks", "1", "--long-size", "96x64", "--long-chunks", "4",
            "--lines", "longlive", "memflow", "--models-dir", str(synthetic_models), "--json", str(out)]
    assert causal_pipelines.main(argv) == 0
    report = json.loads(out.read_text())
    split = report["chunk_split"]["lines"]
    assert split["memflow"]["frames_per_chunk"] == 12 and split["memflow"]["dit_ms"] > 0
    assert set(report["chunk_split"]["vs_longlive"]) == {"longlive", "memflow"}
    long = report["long_run"]["lines"]
    # After chunk 4 the bank holds 2 frames (recorded on chunks 0 and 3), k and v, every layer, fp32.
    tokens = (64 // 16) * (96 // 16)
    bank_mb = 2 * tokens * SYNTHETIC_WAN_CONFIG.num_layers * SYNTHETIC_WAN_CONFIG.dim * 2 * 4 / 2**20
    held = long["memflow"]["tensor_mb_at_4"] - long["longlive"]["tensor_mb_at_4"]
    assert held == pytest.approx(bank_mb, abs=0.011)
    assert long["memflow"]["current_start_frame"] == long["longlive"]["current_start_frame"] == 15
