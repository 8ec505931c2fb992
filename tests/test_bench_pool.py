"""bench/pool.py at its smallest: the memory table on synthetic weights, one stream at real width,
and /health while a pipeline loads beside a streaming session on a real server."""

from __future__ import annotations

import json
import math

from bench import pool
from scope.pipelines.wan.device import compute_device
from scope.pipelines.wan.text_encoder import CACHE_SIZE


def test_memory_table_measures_each_stream_and_its_caches(tmp_path, capsys, synthetic_models, one_thread):
    out = tmp_path / "memory.json"
    lines = ["longlive+fp8", "memflow", "krea-realtime-video"]
    argv = ["--skip", "health", "--size", "64x64", "--lines", *lines, "--models-dir", str(synthetic_models), "--json", str(out)]
    assert pool.main(argv) == 0
    section = json.loads(out.read_text())["memory"]
    assert list(section["lines"]) == lines and section["without_weights"] == ["passthrough"]
    for line, row in section["lines"].items():
        weights, cache, stream = row["weights"], row["cache"], row["stream"]
        # On synthetic weights the headers give the weights to the byte (fp8 and Krea's
        # warm-up prompt included); the pipeline grows only by its prompt cache while streaming.
        assert abs(weights["ratio"] - 1) < 0.02 and weights["after_streaming_bytes"] == weights["measured_bytes"], line
        assert sum(weights["parts_bytes"].values()) == weights["measured_bytes"] + cache["after_load_bytes"], line
        embedding = cache["estimate_bytes"] // CACHE_SIZE
        assert cache["after_load_bytes"] < cache["after_streaming_bytes"] <= cache["estimate_bytes"], line
        assert cache["after_load_bytes"] % embedding == 0 == cache["after_streaming_bytes"] % embedding, line
        # The stream as a session measures it, split by attribute; the attention caches are
        # estimated exactly, the VAE's streaming caches left out (the pool learns them).
        assert sum(stream["parts_bytes"].values()) == stream["measured_bytes"] > stream["estimate_bytes"], line
        assert stream["parts_bytes"]["vae_state.decoder"] > 0 and {"cache.layers", "cache.cross"} <= set(stream["parts_bytes"])
        assert stream["ratio_to_kv"] == 1.0 or line == "memflow", line
    memflow = section["lines"]["memflow"]["stream"]  # its bank is not estimated
    assert memflow["parts_bytes"]["memory.banks"] > 0 and memflow["ratio_to_kv"] < 1.0
    assert "Memory estimate ÷ measured" in capsys.readouterr().out


def test_stream_estimate_at_real_width(tmp_path, one_thread):
    out = tmp_path / "real.json"
    device = compute_device()[0].type
    argv = ["--device", device, "--layers", "1", "--vae-base", "4", "--sizes", "32x32", "--real-lines", "longlive", "--json", str(out)]
    assert pool.main(argv) == 0
    row = json.loads(out.read_text())["real_width"]["sizes"]["32x32"]["longlive"]
    assert sum(row["parts_bytes"].values()) == row["measured_bytes"] > row["estimate_bytes"] == row["kv_bytes"] > 0


def test_health_while_a_pipeline_loads_beside_a_session(tmp_path, capsys):
    out = tmp_path / "health.json"
    argv = ["--skip", "memory", "--stream-size", "256x64", "--fps", "15", "--load-layers", "1", "--baseline", "1",
            "--tail", "0.5", "--json", str(out)]
    assert pool.main(argv) == 0
    health = json.loads(out.read_text())["health"]
    for phase in ("baseline", "during_load"):
        figures = health["health_ms"][phase]
        assert figures["n"] > 0 and 0 < figures["p50"] <= figures["p99"] <= figures["max"]
    assert health["load_s"] > 0 and math.isfinite(health["p99_ratio"]) and health["probe_failures"] == 0
    session = health["session"]
    assert session["baseline"]["frames"] > 0 and session["kept_streaming"], session
    assert session["listed_after_load"] == [{"pipeline_id": "passthrough", "state": "streaming"}]
    assert health["pool"]["krea-realtime-video"]["status"] == "loaded" and health["pool"]["passthrough"]["sessions"] == 1
    assert "/health while krea-realtime-video" in capsys.readouterr().out
