"""LongLive on the Wan2.1 causal core: where a chunk's time goes, and whether it stays bounded.

    python bench/longlive.py [--size 576x320] [--chunks 8] [--long-chunks 300] [--json out.json]

Runs on synthetic weights written (once) into ``--models-dir`` (default: a temp dir), through
the same loader and stream as the server. Prints, for this machine and this run:

* per-chunk time split into text encoding, DiT (denoising steps, clean pass, re-cache) and VAE,
  and the frames per second it gives (12 frames per chunk);
* C8: per-chunk time and memory (stream tensors and process RSS) at chunk 300 against chunk 30;
* C9: a prompt-switch chunk (KV re-cache) against a normal chunk, beside the FLOP prediction;
* C7: generator forward time at two token counts and two window sizes against the ratios the
  FLOP count predicts (a missing cache or an accidental recompute breaks the agreement);
* C12: decode time per frame of each VAE type against the full Wan VAE.

It never fails on time; figures are findings. See bench/README.md for the definitions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
import torch

from bench.report import write_json
from scope.models.artifacts import PIPELINE_ARTIFACTS
from scope.models.synthetic.writer import write_synthetic

TEXT_TOKENS = 512
PROMPTS = ["a panda walks along a path in a park on a spring day", "a red fox runs through deep snow at dusk"]


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def spread(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}"


# The FLOP model (performance notes §2.2) --------------------------------------------------------


def forward_flops(config, query_tokens: int, key_tokens: int) -> float:
    """One generator forward: linears, self-attention over ``key_tokens``, cached cross-attention."""
    d, ffn = config.dim, config.ffn_dim
    linear = 2 * (4 * d * d) + 2 * (2 * d * d) + 2 * (2 * d * ffn)
    attention = 4 * key_tokens * d + 4 * TEXT_TOKENS * d
    return config.num_layers * query_tokens * (linear + attention)


# Helpers -------------------------------------------------------------------------------------


def load(models_dir: Path, width: int, height: int, vae_type: str = "wan", pipeline_id: str = "longlive", **params: Any):
    import scope

    return scope.load_pipeline(pipeline_id, models_dir=models_dir, height=height, width=width, vae_type=vae_type, **params)


def side_by_side_arguments(parser) -> None:
    """The options of the benches that run lines side by side on synthetic weights, or at real
    size on random weights with ``--device`` (``loras.py``, ``vace.py``)."""
    synthetic = parser.add_argument_group("synthetic weights (no --device)")
    synthetic.add_argument("--chunks", type=int, default=8, help="timed chunks per line")
    synthetic.add_argument("--models-dir", type=Path, default=None)
    real = parser.add_argument_group("real size on random weights")
    real.add_argument("--device", choices=["cuda", "cpu"], default=None, help="run at real size on this device")
    real.add_argument("--warmup", type=int, default=None, help="untimed chunks after the first (default 0 synthetic; "
                      "with --device 8, at least until the window is full)")
    real.add_argument("--timed", type=int, default=20, help="timed chunks per line")
    real.add_argument("--layers", type=int, default=None, help="fewer transformer layers than the real 30 (a CPU try)")
    real.add_argument("--vae-base", type=int, default=96, help="Wan VAE base width (real: 96)")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def stream_tensor_bytes(stream) -> int:
    """Bytes of every tensor the stream holds (KV and cross caches, re-cache window, VAE caches,
    and a frame memory such as MemFlow's bank)."""
    seen: set[int] = set()
    total = 0

    def visit(value: Any, depth: int = 0) -> None:
        nonlocal total
        if depth > 6:
            return
        if isinstance(value, torch.Tensor):
            key = value.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += value.untyped_storage().nbytes()
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item, depth + 1)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item, depth + 1)
        elif hasattr(value, "__dict__") and not isinstance(value, (torch.nn.Module, type)):
            for item in vars(value).values():
                visit(item, depth + 1)

    for name in ("cache", "memory", "vae_state", "recache_buffer", "conditioner", "embedding", "noise_controller"):
        visit(getattr(stream, name, None))
    return total


# Sections ------------------------------------------------------------------------------------


def timed_chunk(stream, **params: Any) -> dict[str, Any]:
    """One chunk's wall time, its text / DiT / VAE split and its frame count."""
    started = time.perf_counter()
    chunk = stream.generate(**params)
    wall = (time.perf_counter() - started) * 1000
    return {**{k: chunk.info[k] for k in ("text_ms", "dit_ms", "vae_ms")}, "wall_ms": wall, "frames": len(chunk.frames)}


def split_figures(first: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the timed chunks, the FPS they give, and the first chunk apart."""
    wall = [r["wall_ms"] for r in rows]
    frames = rows[0]["frames"]
    result = {k: median_ms([r[k] for r in rows]) for k in ("text_ms", "dit_ms", "vae_ms", "wall_ms")}
    result["wall_spread_ms"] = spread(wall)
    result["frames_per_chunk"] = frames
    result["fps"] = round(frames / (statistics.median(wall) / 1000), 2)
    result["first_chunk"] = {k: (round(v, 1) if k != "frames" else v) for k, v in first.items()}
    return result


def chunk_split(pipeline, chunks: int) -> dict[str, Any]:
    stream = pipeline.open_stream()
    first = timed_chunk(stream, prompts=PROMPTS[0])  # first chunk: 9 frames, text encoding
    return split_figures(first, [timed_chunk(stream) for _ in range(chunks)])


def long_run(pipeline, total: int, early: int = 30, window: int = 5) -> dict[str, Any]:
    early = max(1, min(early, total // 2))
    stream = pipeline.open_stream()
    stream.generate(prompts=PROMPTS[0])
    times: dict[int, float] = {}
    marks: dict[int, dict[str, float]] = {}
    for index in range(1, total + 1):
        started = time.perf_counter()
        stream.generate()
        times[index] = (time.perf_counter() - started) * 1000
        if index in (early, total):
            marks[index] = {"tensor_mb": stream_tensor_bytes(stream) / 2**20, "rss_mb": rss_mb()}
    def around(i: int) -> float:
        return statistics.median(times[j] for j in range(max(1, i - window + 1), i + 1))
    return {
        "chunks": total,
        f"chunk_ms_at_{early}": round(around(early), 1),
        f"chunk_ms_at_{total}": round(around(total), 1),
        "time_ratio": round(around(total) / around(early), 3),
        f"tensor_mb_at_{early}": round(marks[early]["tensor_mb"], 2),
        f"tensor_mb_at_{total}": round(marks[total]["tensor_mb"], 2),
        "tensor_ratio": round(marks[total]["tensor_mb"] / marks[early]["tensor_mb"], 4),
        f"rss_mb_at_{early}": round(marks[early]["rss_mb"], 1),
        f"rss_mb_at_{total}": round(marks[total]["rss_mb"], 1),
        "rss_ratio": round(marks[total]["rss_mb"] / marks[early]["rss_mb"], 4),
        "current_start_frame": stream.current_start_frame,
    }


def prompt_switch(pipeline, repeats: int) -> dict[str, Any]:
    stream = pipeline.open_stream()
    stream.generate(prompts=PROMPTS[0])
    for _ in range(4):  # fill the 12-frame window
        stream.generate()
    for prompt in PROMPTS:  # both embeddings in the encoder's cache: time the DiT, not the text
        pipeline.components.text_encoder.encode([prompt])
    normal, switch, normal_dit, switch_dit = [], [], [], []
    for index in range(repeats):
        started = time.perf_counter()
        chunk = stream.generate()
        normal.append((time.perf_counter() - started) * 1000)
        normal_dit.append(chunk.info["dit_ms"])
        started = time.perf_counter()
        chunk = stream.generate(prompts=PROMPTS[(index + 1) % 2])
        switch.append((time.perf_counter() - started) * 1000)
        switch_dit.append(chunk.info["dit_ms"])
        assert chunk.info["recached"], "a prompt change must re-cache"
    config = pipeline.components.generator.config
    fsl = stream.frame_seq_len
    block = forward_flops(config, 3 * fsl, 12 * fsl)
    recache = forward_flops(config, 12 * fsl, 12 * fsl)
    predicted = (5 * block + recache) / (5 * block)
    return {
        "normal_chunk_ms": median_ms(normal),
        "switch_chunk_ms": median_ms(switch),
        "ratio": round(statistics.median(switch) / statistics.median(normal), 3),
        "dit_ratio": round(statistics.median(switch_dit) / statistics.median(normal_dit), 3),
        "predicted_dit_ratio": round(predicted, 3),
        "dit_ratio_vs_prediction": round(statistics.median(switch_dit) / statistics.median(normal_dit) / predicted, 3),
    }


def flop_conformance(pipeline, sizes: list[tuple[int, int]], windows: list[int], repeats: int) -> dict[str, Any]:
    from scope.pipelines.wan.kv_cache import GeneratorCache

    generator = pipeline.components.generator
    config = generator.config
    device, dtype = pipeline.components.device, pipeline.components.dtype
    context = torch.randn(1, TEXT_TOKENS, config.text_dim, device=device, dtype=dtype)
    rows = []
    for width, height in sizes:
        h, w = height // 8, width // 8
        fsl = (h // 2) * (w // 2)
        for window in windows:
            cache = GeneratorCache(config, frame_seq_len=fsl, capacity_frames=window, sink_frames=3, device=device, dtype=dtype)
            latents = torch.randn(1, 3, 16, h, w, device=device, dtype=dtype)
            t = torch.full((1, 3), 500, device=device, dtype=torch.long)
            start = 0
            with torch.inference_mode():
                while start < window:  # fill the window so every timed forward sees it whole
                    generator(latents, t, context, cache=cache, start_frame=start)
                    start += 3
                samples = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    generator(latents, t, context, cache=cache, start_frame=start)
                    samples.append(time.perf_counter() - started)
                    start += 3
            rows.append({
                "size": f"{width}x{height}", "tokens": 3 * fsl, "window": window,
                "ms": statistics.median(samples) * 1000,
                "gflop": forward_flops(config, 3 * fsl, window * fsl) / 1e9,
            })
    base = rows[0]
    for row in rows:
        row["measured_ratio"] = round(row["ms"] / base["ms"], 3)
        row["predicted_ratio"] = round(row["gflop"] / base["gflop"], 3)
        row["agreement"] = round(row["measured_ratio"] / row["predicted_ratio"], 3)
        row["ms"] = round(row["ms"], 1)
        row["gflop"] = round(row["gflop"], 2)
    return {"rows": rows}


def vae_variants(models_dir: Path, width: int, height: int, repeats: int) -> dict[str, Any]:
    from scope.pipelines.wan.autoencoders import load_vae
    from scope.pipelines.wan.device import compute_device

    device, dtype = compute_device()
    latents = torch.randn(1, 3, 16, height // 8, width // 8, device=device, dtype=dtype)
    rows = {}
    for vae_type in ("wan", "lightvae", "tae", "lighttae"):
        vae = load_vae(vae_type, models_dir, device=device, dtype=dtype)
        state = vae.new_state()
        with torch.inference_mode():
            vae.stream_decode(latents, state)  # the first chunk (9 frames) is a warm-up
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                frames = vae.stream_decode(latents, state).shape[1]
                samples.append((time.perf_counter() - started) * 1000 / frames)
        rows[vae_type] = {"ms_per_frame": round(statistics.median(samples), 2)}
    for row in rows.values():
        row["ratio_to_wan"] = round(row["ms_per_frame"] / rows["wan"]["ms_per_frame"], 3)
    return rows


# Main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="576x320", help="WxH of the chunk-split and switch runs")
    parser.add_argument("--chunks", type=int, default=8, help="timed chunks after the first")
    parser.add_argument("--long-size", default="96x64", help="WxH of the 300-chunk memory run (small: it is about bounds)")
    parser.add_argument("--long-chunks", type=int, default=300)
    parser.add_argument("--switches", type=int, default=4)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--skip", nargs="*", default=[], choices=["split", "long", "switch", "flops", "vae"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    temp = None
    models_dir = args.models_dir
    if models_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="scope-bench-")
        models_dir = Path(temp.name)
    started = time.perf_counter()
    write_synthetic(models_dir, PIPELINE_ARTIFACTS["longlive"])
    width, height = parse_size(args.size)
    report: dict[str, Any] = {
        "machine": machine(),
        "synthetic_write_s": round(time.perf_counter() - started, 2),
        "size": f"{width}x{height}",
    }
    print(json.dumps(report["machine"]), flush=True)
    pipeline = load(models_dir, width, height)
    report["config"] = {k: getattr(pipeline.components.generator.config, k) for k in ("dim", "ffn_dim", "num_heads", "num_layers")}

    if "split" not in args.skip:
        report["chunk_split"] = chunk_split(pipeline, args.chunks)
        print("chunk split:", json.dumps(report["chunk_split"]), flush=True)
    if "switch" not in args.skip:
        report["prompt_switch_C9"] = prompt_switch(pipeline, args.switches)
        print("prompt switch (C9):", json.dumps(report["prompt_switch_C9"]), flush=True)
    if "flops" not in args.skip:
        sizes = [(width // 2, height // 2), (width, height)]
        report["flop_conformance_C7"] = flop_conformance(pipeline, sizes, [6, 12], repeats=3)
        for row in report["flop_conformance_C7"]["rows"]:
            print("flops (C7):", json.dumps(row), flush=True)
    if "vae" not in args.skip:
        report["vae_C12"] = vae_variants(models_dir, width, height, repeats=3)
        print("vae (C12):", json.dumps(report["vae_C12"]), flush=True)
    if "long" not in args.skip:
        lw, lh = parse_size(args.long_size)
        report["long_run_C8"] = long_run(load(models_dir, lw, lh), args.long_chunks)
        print("long run (C8):", json.dumps(report["long_run_C8"]), flush=True)

    write_json(args.json, report)
    if temp is not None:
        temp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
