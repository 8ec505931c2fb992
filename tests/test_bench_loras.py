"""bench/loras.py, run tiny in both modes: every line's figure and its ratio to no LoRA exist.

Speed is not asserted (figures are findings); what is checked is that each line ran what it says:
the merged lines and the runtime lines load their adapters, and every figure is a positive time.
"""

from __future__ import annotations

import json

from bench import loras

LINES = {"none", "merge_x1", "merge_x3", "runtime_x1", "runtime_x3"}


def check_figures(report: dict) -> None:
    assert set(report["lines"]) == LINES
    for line, row in report["lines"].items():
        assert row["dit_ms"] > 0 and row["chunk_ms"] >= row["dit_ms"], (line, row)
    assert set(report["dit_vs_none"]) == LINES and report["dit_vs_none"]["none"] == 1.0
    assert all(value > 0 for value in report["dit_vs_none"].values()), report["dit_vs_none"]
    # Each line ran with the adapters it is named for.
    for line, (mode, count) in loras.LINES.items():
        assert report["lines"][line]["adapters"] == [mode] * count, (line, report["lines"][line])


def test_synthetic_run_has_every_figure(tmp_path, synthetic_models, one_thread, capsys):
    out = tmp_path / "loras.json"
    argv = ["--size", "64x64", "--chunks", "2", "--models-dir", str(synthetic_models), "--json", str(out)]
    assert loras.main(argv) == 0
    report = json.loads(out.read_text())
    check_figures(report)
    assert report["weights"] == "synthetic" and report["rank"] == 4
    assert all(row["chunks"] == 2 for row in report["lines"].values())
    printed = capsys.readouterr().out
    assert "DiT vs none:" in printed and "runtime_x3: DiT" in printed


def test_real_size_cpu_run_applies_real_size_adapters(tmp_path, one_thread):
    """One real-width layer on the CPU: rank-32 adapters over all 10 linears of the block."""
    out = tmp_path / "real.json"
    argv = ["--device", "cpu", "--layers", "1", "--vae-base", "4", "--size", "32x32",
            "--warmup", "0", "--timed", "1", "--json", str(out)]
    assert loras.main(argv) == 0
    report = json.loads(out.read_text())
    check_figures(report)
    assert (report["dim"], report["layers"], report["rank"], report["adapter_linears"]) == (1536, 1, 32, 10)
