"""bench/krea.py: the real-size wiring it would time on a GPU, and the CPU mode end to end.

No GPU here: the ``--device cuda`` path runs on ``meta`` with all 40 layers of Wan2.1-14B (the
fused q/k/v, the fp8 storage, the stream's window and KV bytes) and on the CPU with one layer of
the real width at 32x32, through the same functions.
"""

from __future__ import annotations

import json
import math

import pytest

from bench import krea


def numbers(value):
    """Every number inside a JSON value."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers(item)


def test_real_size_plan_on_meta(tmp_path, capsys):
    out = tmp_path / "meta.json"
    assert krea.main(["--device", "meta", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    bf16, fp8 = runs["none"]["model"], runs["fp8"]["model"]
    # Wan2.1-T2V-14B: 40 layers of 5120, 14.29 B parameters, 28.6 GB in bf16 (the Krea file's size).
    assert (bf16["layers"], bf16["dim"], bf16["parameters"]) == (40, 5120, 14_288_491_584)
    assert bf16["weights_gb"] == pytest.approx(28.58, abs=0.01) and bf16["fp8_linears"] == 0
    assert bf16["fused_qkv"] == fp8["fused_qkv"] == [[15360, 5120]]  # every block's q/k/v fused
    # fp8 after the fusion: 8 linears per block (qkv, o, cross q/k/v/o, ffn.0, ffn.2), 1 byte each.
    assert fp8["fp8_linears"] == 8 * 40 and fp8["weights_gb"] == pytest.approx(14.53, abs=0.01)
    for run in runs.values():
        small, large = run["sizes"]["576x320"]["plan"], run["sizes"]["832x480"]["plan"]
        assert (small["tokens_per_frame"], large["tokens_per_frame"]) == (720, 1560)
        assert small["window_frames"] == large["window_frames"] == 6
        # k and v, 6 frames, 40 layers, bf16: 6 * 1560 * 2 * 5120 * 2 * 40 bytes.
        assert large["kv_gb"] == pytest.approx(6 * 1560 * 2 * 5120 * 2 * 40 / 1e9, abs=1e-3)
        assert "timed" not in run["sizes"]["576x320"]
    assert "plan fp8 832x480:" in capsys.readouterr().out


def test_real_width_layer_on_cpu(tmp_path, capsys, one_thread):
    out = tmp_path / "cpu.json"
    argv = ["--device", "cpu", "--layers", "1", "--vae-base", "4", "--sizes", "32x32", "--warmup", "0",
            "--timed", "1", "--quantizations", "none", "--json", str(out)]
    assert krea.main(argv) == 0
    run = json.loads(out.read_text())["runs"]["none"]
    assert run["model"]["dim"] == 5120 and run["model"]["fused_qkv"] == [[15360, 5120]]
    timed = run["sizes"]["32x32"]["timed"]
    assert timed["frames_per_chunk"] == 12 and timed["fps"] > 0 and timed["dit_ms"] > 0
    # The recompute attends to the 3 context frames (4 tokens each); the biased window of 6 frames
    # is padded to 128 keys, as the reference pads it.
    assert timed["self_attention_keys"] == [12, 128]
    assert all(math.isfinite(v) for v in numbers(timed))
    assert krea.REFERENCE in capsys.readouterr().out


def test_synthetic_mode_end_to_end(tmp_path, capsys, synthetic_models, one_thread):
    out = tmp_path / "synthetic.json"
    argv = ["--size", "96x64", "--chunks", "1", "--memory-layers", "1", "--models-dir", str(synthetic_models),
            "--json", str(out)]
    assert krea.main(argv) == 0
    report = json.loads(out.read_text())
    split = report["chunk_split"]
    assert set(split["lines"]) == {"krea-realtime-video", "longlive"}
    for row in split["lines"].values():
        assert row["frames_per_chunk"] == 12 and row["first_chunk"]["frames"] == 9
        assert min(row["dit_ms"], row["vae_ms"], row["wall_ms"]) > 0
    assert set(split["krea_vs_longlive"]) >= {"dit_ms", "vae_ms", "wall_ms", "fps"}
    loads = report["loader_memory"]["loads"]
    assert set(loads) == {"streamed", "naive"} and loads["streamed"]["within_bound"]
    assert loads["streamed"]["peak_mib"] >= loads["streamed"]["model_mib"] * 0.95
    assert all(math.isfinite(v) and v >= 0 for v in numbers(split)) and all(math.isfinite(v) for v in numbers(loads))
    printed = capsys.readouterr().out
    assert "chunk split krea ÷ longlive:" in printed and "loader memory naive (1 layers):" in printed
