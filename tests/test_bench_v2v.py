"""bench/v2v_latency.py: V2V through a real server beside passthrough, and the real-size mode.

The streaming run is short and tiny (64x64, a few seconds): its figures are not under test,
only that every one of them is measured. The real-size plan is checked on ``meta`` against the
spec's cache sizes and the performance notes' FLOP count; one real-width layer runs on the CPU.
"""

from __future__ import annotations

import json

import pytest

from bench import v2v_latency
from scope.pipelines.wan.vae import WanVAE

LINE = "streamdiffusionv2"


def test_streaming_run_measures_every_figure(tmp_path, one_thread):
    out = tmp_path / "v2v.json"
    argv = ["--size", "64", "--seconds", "2", "--warmup", "0.5", "--chunks", "1", "--json", str(out)]
    assert v2v_latency.main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report["stream"]) == {"passthrough", LINE}
    for line, row in report["stream"].items():
        # Every message's p95 is at least its p50, so the medians keep that order.
        assert 0 < row["latency_p50_ms"] <= row["latency_p95_ms"] <= row["latency_p95_max_ms"], line
        assert row["delivered_fps"] > 0 and row["frames_received"] > 0, line
        assert row["input_frames_received"] > 0 and row["input_frames_used"] > 0, line
        assert row["input_frames_dropped"] >= 0 and 0 <= row["input_dropped_fraction"] <= 1, line
        # Over any span, received = used + dropped + the change in what the 30-frame ring holds.
        held = row["input_frames_received"] - row["input_frames_used"] - row["input_frames_dropped"]
        assert -30 <= held <= 30, line
        assert row["chunks"] > 0 and row["server_chunk_ms"] > 0, line
        assert row["warmup_frames_reached"] and row["stats_timeline"], line
    vs = report["vs_passthrough"]
    assert vs["latency_p50_ratio"] > 0 and vs["latency_p95_ratio"] > 0 and vs["delivered_fps_ratio"] > 0
    assert vs["dropped_fraction_added"] is not None
    split = report["chunk_split"]
    assert split["input_frames_per_chunk"] == 4 and split["frames_per_chunk"] == 4
    assert split["first_chunk"]["frames"] == 5 and split["first_chunk"]["text_ms"] > 0
    assert split["dit_ms"] > 0 and split["vae_ms"] > 0 and split["text_ms"] >= 0
    assert report["server_vs_in_process"] > 0


def test_real_size_plan_on_meta(tmp_path, capsys):
    """Spec §6.3: SDv2 at 512x512 caches 6144 tokens per layer, 1.13 GB in bf16; notes §2.4:
    2.86 DiT TFLOP per output frame (2 steps + clean pass, 1 latent frame -> 4 frames)."""
    out = tmp_path / "meta.json"
    assert v2v_latency.main(["--device", "meta", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    row = report["sizes"]["512x512"]["plan"][LINE]
    assert (row["tokens_per_frame"], row["window_tokens_per_layer"], row["attended_tokens"]) == (1024, 6144, 6144)
    assert row["bank_tokens_per_layer"] == 0
    assert row["kv_gb"] == pytest.approx(1.13, abs=0.01)
    assert row["dit_tflop_per_frame"] == pytest.approx(2.86, abs=0.01)
    assert report["paper"]["fps"] == 64.52
    assert "paper 64.52 FPS on 4 H100s" in capsys.readouterr().out


def test_real_width_cpu_run_encodes_its_input(tmp_path, one_thread, monkeypatch):
    """One real-width layer on the CPU: every chunk encodes its input frames (V2V, not text
    mode), and the timed chunk attends to the full 6-frame buffer."""
    encodes = []
    original = WanVAE.stream_encode

    def counting(self, pixels, *args, **kwargs):
        encodes.append(tuple(pixels.shape))
        return original(self, pixels, *args, **kwargs)

    monkeypatch.setattr(WanVAE, "stream_encode", counting)
    out = tmp_path / "cpu.json"
    argv = ["--device", "cpu", "--layers", "1", "--vae-base", "4", "--sizes", "64x64",
            "--warmup-chunks", "0", "--timed", "1", "--json", str(out)]
    assert v2v_latency.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["model"]["dim"] == 1536 and report["model"]["layers"] == 1
    timed = report["sizes"]["64x64"]["timed"][LINE]
    assert timed["attended_frames"] == [6.0]
    assert timed["warmup_chunks"] == 4  # chunks 0-4 fill the window (the first is 2 latent frames)
    assert len(encodes) == 1 + 4 + 1
    assert timed["fps"] > 0 and timed["vae_ms"] > 0 and timed["paper_fps"] == 64.52
