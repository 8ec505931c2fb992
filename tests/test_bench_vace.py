"""bench/vace.py, run tiny in both modes: every line's figures, its ratios to no VACE, and that
each line ran what it is named for (its frames equal the baseline's exactly when it sends no
VACE input, and move away when it does).

Speed is not asserted (figures are findings).
"""

from __future__ import annotations

import json

import pytest

from bench import vace

INPUTS = {
    "none": [],
    "loaded": [],
    "control": ["vace_input_frames"],
    "ref_control": ["vace_input_frames", "vace_ref_images"],
}


def check_figures(report: dict, chunks: int) -> None:
    lines = report["lines"]
    assert set(lines) == set(INPUTS)
    for line, row in lines.items():
        assert row["chunks"] == chunks, (line, row)
        assert row["dit_ms"] > 0 and row["vae_ms"] > 0 and row["chunk_ms"] >= row["dit_ms"], (line, row)
        assert set(row["first_chunk"]) == set(vace.FIGURES), (line, row)
        first = row["first_chunk"]  # one chunk: its timed spans do not overlap, so they fit in its wall time
        assert first["dit_ms"] + first["vae_ms"] <= first["chunk_ms"], (line, first)
        assert row["vace_inputs"] == INPUTS[line], (line, row)
        # Only the lines that send VACE inputs encode them, on every chunk.
        assert (row["encode_ms"] > 0) is bool(INPUTS[line]), (line, row)
        assert (row["first_chunk"]["encode_ms"] > 0) is bool(INPUTS[line]), (line, row)
    assert report["vs_none"]["none"] == {"dit_ms": 1.0, "vae_ms": 1.0, "chunk_ms": 1.0}
    assert all(value > 0 for row in report["vs_none"].values() for value in row.values()), report["vs_none"]
    # VACE loaded but unused is the plain pipeline; a control video (and a reference) moves the frames.
    assert lines["none"]["distance_from_none"] == 0 and lines["loaded"]["distance_from_none"] == 0
    assert lines["control"]["distance_from_none"] > 1 and lines["ref_control"]["distance_from_none"] > 1, lines
    assert lines["ref_control"]["distance_from_none"] != lines["control"]["distance_from_none"]
    assert report["dit_predicted"] > 1


def test_synthetic_run_has_every_figure(tmp_path, synthetic_models, one_thread, capsys):
    out = tmp_path / "vace.json"
    argv = ["--size", "64x64", "--chunks", "2", "--models-dir", str(synthetic_models), "--json", str(out)]
    assert vace.main(argv) == 0
    report = json.loads(out.read_text())
    check_figures(report, 2)
    assert report["weights"] == "synthetic" and report["size"] == "64x64"
    printed = capsys.readouterr().out
    assert "ref_control: chunk" in printed and "vs none:" in printed and "predicted for a chunk with VACE" in printed


def test_real_size_cpu_run_attaches_real_width_vace_blocks(tmp_path, one_thread):
    """One real-width layer on the CPU, with its VACE block (1536 wide, 96 context channels)."""
    out = tmp_path / "real.json"
    argv = ["--device", "cpu", "--layers", "1", "--vae-base", "4", "--size", "32x32",
            "--warmup", "0", "--timed", "1", "--json", str(out)]
    assert vace.main(argv) == 0
    report = json.loads(out.read_text())
    check_figures(report, 1)
    assert (report["dim"], report["layers"], report["vace_blocks"]) == (1536, 1, 1)
    # One block (8 attention linears, q/k norms of both attentions, norm3, FFN, modulation),
    # its before_proj and after_proj, and the patch embedding of 96 channels over 1x2x2 patches.
    d, ffn = 1536, 8960
    block = 8 * (d * d + d) + 4 * d + 2 * d + (d * ffn + ffn) + (ffn * d + d) + 6 * d
    projections = 2 * (d * d + d)
    embedding = d * 96 * 2 * 2 + d
    assert report["vace_parameters"] == block + projections + embedding


def test_predicted_ratio_at_real_size():
    """The FLOP model on the real shape (meta: nothing computed). At 832x480, by hand: a forward
    is 30 layers x 4680 tokens x (83.4 M linear + 118 M attention over 18720 keys) FLOP, 28.3
    TFLOP, five per chunk; the hints are 15 blocks x 4680 tokens x (83.4 M + 29.1 M over 4736
    padded keys + 3.1 M text) plus the projections and the text's k and v, 8.5 TFLOP, on four of
    them: 175 / 141 = 1.242."""
    import torch

    from bench.real_size import random_components

    components = random_components("meta", torch.bfloat16)
    assert vace.predicted_dit_ratio(components, 832, 480) == pytest.approx(1.242, abs=0.002)
    # Fewer tokens, a shorter window: the hints' share grows.
    assert vace.predicted_dit_ratio(components, 576, 320) > 1.242
