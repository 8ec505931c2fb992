"""bench/workers.py at its smallest: two sessions on one CPU worker and on two, then one session
on a local worker and on a Ray worker, every server a real ``daydream-scope`` on loopback."""

from __future__ import annotations

import json
import math

from bench import workers


def assert_case(case: dict, sessions: int, worker_ids: list[str]) -> None:
    """Every session streamed in the window; the figures add up."""
    assert [w["id"] for w in case["workers"]] == worker_ids
    rows = case["sessions"]
    assert len(rows) == sessions
    for row in rows:
        assert row["frames"] > 0 and row["seconds"] > 0 and row["chunks_seen"] > 0, row
        assert math.isclose(row["fps"], row["frames"] / row["seconds"], abs_tol=0.01), row
        assert 0 < row["chunk_ms_p50"] and math.isclose(row["frame_ms"], row["chunk_ms_p50"] / workers.FRAMES_PER_CHUNK, abs_tol=0.01)
    assert math.isclose(case["delivered_fps"], sum(row["fps"] for row in rows), abs_tol=0.02)
    assert case["cores"]["server"] > 0 and case["cores"]["machine"] > 0


def test_scaling_and_ray_sections(tmp_path, capsys, synthetic_models):
    out = tmp_path / "workers.json"
    argv = ["--size", "64x64", "--seconds", "2", "--warmup", "0.5", "--models-dir", str(synthetic_models), "--json", str(out)]
    assert workers.main(argv) == 0
    report = json.loads(out.read_text())

    scaling = report["scaling"]
    assert_case(scaling["one_worker"], 2, ["local-0"])
    assert_case(scaling["two_workers"], 2, ["local-0", "local-1"])
    # Both sessions took turns on the one worker; with two workers, each had its own.
    assert [row["worker"] for row in scaling["one_worker"]["sessions"]] == ["local-0", "local-0"]
    assert sorted(row["worker"] for row in scaling["two_workers"]["sessions"]) == ["local-0", "local-1"]
    two, one = scaling["two_workers"]["delivered_fps"], scaling["one_worker"]["delivered_fps"]
    assert math.isclose(scaling["scaling"], two / one, abs_tol=0.001)

    ray = report["ray"]
    assert_case(ray["local"], 1, ["local-0"])
    assert_case(ray["ray"], 1, ["ray-0"])
    assert ray["ray"]["sessions"][0]["worker"] == "ray-0"
    local_ms, ray_ms = ray["local"]["sessions"][0]["frame_ms"], ray["ray"]["sessions"][0]["frame_ms"]
    assert ray["frame_ms"] == {"local": local_ms, "ray": ray_ms}
    assert math.isclose(ray["added_ms_per_frame"], ray_ms - local_ms, abs_tol=0.01)
    assert math.isclose(ray["ratio"], ray_ms / local_ms, abs_tol=0.001)
    # A 64x64 RGB frame crosses Ray out, nothing in (text mode).
    assert ray["bytes_per_frame"] == {"output": 64 * 64 * 3, "input": 0, "total": 64 * 64 * 3}
    assert ray["bytes_per_chunk"] == 64 * 64 * 3 * workers.FRAMES_PER_CHUNK

    printed = capsys.readouterr().out
    assert f"scaling (two ÷ one) {scaling['scaling']}" in printed and f"ratio {ray['ratio']}" in printed
