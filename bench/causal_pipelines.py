"""LongLive, Reward Forcing and MemFlow side by side: where a chunk's time goes, whether it stays
bounded, and (at real size) how fast each runs.

    python bench/causal_pipelines.py [--size 576x320] [--chunks 8] [--long-size 96x64] [--long-chunks 300] [--json out.json]
    python bench/causal_pipelines.py --device cuda [--sizes 576x320 832x480] [--warmup 8] [--timed 20] [--json out.json]

Without ``--device``: synthetic weights, written where missing into ``--models-dir`` (default: a
temp dir) and loaded through the server's loader, for each line (``longlive``, ``reward-forcing``, ``memflow``,
and ``memflow-no-bank``, ``memflow`` with ``memory_bank: false``: the bank's own cost):

* the per-chunk split into text encoding, DiT and VAE, and the frames per second (12 per chunk),
  the lines taking turns chunk by chunk;
* a long run (300 chunks at a small size): per-chunk time and memory (stream tensors, process
  RSS) at chunk 30 and at the end.

With ``--device cuda`` (or ``cpu``, or ``meta`` for the plan alone): Wan2.1-1.3B's real shape on
random weights (bf16 on CUDA) and a Wan VAE of real width, no text encoder (a fixed
``prompt_embeds``): each line's cache plan and its frames per second at each size, beside the
papers' figures. Every figure is also given as a ratio to ``longlive`` in the same run. It never
fails on time; figures are findings. See bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.longlive import PROMPTS, load, long_run, machine, parse_size, split_figures, timed_chunk
from bench.real_size import CAUSAL_LINES, LINES, PAPER_FPS, parameter_count, paper_note, plan, random_components, time_line
from bench.report import write_json

BASELINE = "longlive"


def ratios(rows: dict[str, dict[str, Any]], keys: list[str]) -> dict[str, dict[str, float]]:
    """Each line's ``keys`` divided by the baseline line's, from the same run."""
    base = rows[BASELINE]
    return {
        line: {key: round(row[key] / base[key], 3) for key in keys if base.get(key)}
        for line, row in rows.items()
    }


# Synthetic weights: split and long run ---------------------------------------------------------


def interleaved_split(pipelines: dict[str, Any], chunks: int) -> dict[str, dict[str, Any]]:
    """``bench/longlive.py``'s chunk split for every line, one chunk of each line in turn, so a
    change in the machine's load touches every line alike and the ratios stay fair."""
    streams = {line: pipeline.open_stream() for line, pipeline in pipelines.items()}
    first = {line: timed_chunk(stream, prompts=PROMPTS[0]) for line, stream in streams.items()}
    rows: dict[str, list[dict[str, Any]]] = {line: [] for line in streams}
    for _ in range(chunks):
        for line, stream in streams.items():
            rows[line].append(timed_chunk(stream))
    return {line: split_figures(first[line], rows[line]) for line in streams}


def synthetic_sections(args: argparse.Namespace, report: dict[str, Any]) -> None:
    temp = None
    models_dir = args.models_dir
    if models_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="scope-bench-")
        models_dir = Path(temp.name)

    def load_line(line: str, width: int, height: int):
        pipeline_id, params = LINES[line]
        return load(models_dir, width, height, pipeline_id=pipeline_id, synthetic=True, **params)

    if "split" not in args.skip:
        width, height = parse_size(args.size)
        pipelines = {line: load_line(line, width, height) for line in args.lines}
        split = interleaved_split(pipelines, args.chunks)
        for pipeline in pipelines.values():
            release(pipeline)
        for line, row in split.items():
            print(f"chunk split {line}:", json.dumps(row), flush=True)
        report["chunk_split"] = {"size": f"{width}x{height}", "lines": split}
        if BASELINE in split:
            report["chunk_split"]["vs_longlive"] = ratios(split, ["text_ms", "dit_ms", "vae_ms", "wall_ms", "fps"])
            print("chunk split vs longlive:", json.dumps(report["chunk_split"]["vs_longlive"]), flush=True)
    if "long" not in args.skip:
        width, height = parse_size(args.long_size)
        long = {}
        for line in args.lines:
            pipeline = load_line(line, width, height)
            long[line] = long_run(pipeline, args.long_chunks)
            print(f"long run {line}:", json.dumps(long[line]), flush=True)
            release(pipeline)
        report["long_run"] = {"size": f"{width}x{height}", "lines": long}
        if BASELINE in long:
            end = args.long_chunks
            keys = [f"chunk_ms_at_{end}", f"tensor_mb_at_{end}", f"rss_mb_at_{end}", "time_ratio", "tensor_ratio"]
            report["long_run"]["vs_longlive"] = ratios(long, keys)
            print("long run vs longlive:", json.dumps(report["long_run"]["vs_longlive"]), flush=True)
    if temp is not None:
        temp.cleanup()


def release(pipeline) -> None:
    pipeline.unload()
    gc.collect()


# Real size on random weights -------------------------------------------------------------------


def real_size_sections(args: argparse.Namespace, report: dict[str, Any]) -> None:
    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16  # meta: the plan of a CUDA run
    started = time.perf_counter()
    components = random_components(device, dtype, layers=args.layers, vae_base=args.vae_base)
    config = components.generator.config
    report["model"] = {
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "layers": config.num_layers,
        "dim": config.dim, "parameters": parameter_count(components), "vae_base": args.vae_base,
        "build_s": round(time.perf_counter() - started, 1),
    }
    print("model:", json.dumps(report["model"]), flush=True)
    report["sizes"] = {}
    for size in args.sizes:
        width, height = parse_size(size)
        plans = {line: plan(components, line, width, height) for line in args.lines}
        entry: dict[str, Any] = {"plan": plans}
        for line, row in plans.items():
            print(f"plan {size} {line}:", json.dumps(row), flush=True)
        if device.type != "meta":
            timed = {}
            for line in args.lines:
                timed[line] = time_line(components, line, width, height, warmup=args.warmup, chunks=args.timed)
                note = paper_note(line, size)
                if note:
                    timed[line]["paper_fps"] = PAPER_FPS[LINES[line][0]]
                    timed[line]["fps_vs_paper"] = round(timed[line]["fps"] / timed[line]["paper_fps"], 3)
                print(f"fps {size} {line}:", json.dumps(timed[line]), note, flush=True)
            entry["timed"] = timed
            if BASELINE in timed:
                entry["vs_longlive"] = ratios(timed, ["fps", "dit_ms", "vae_ms"])
                print(f"fps {size} vs longlive:", json.dumps(entry["vs_longlive"]), flush=True)
        report["sizes"][size] = entry


# Main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", nargs="*", default=CAUSAL_LINES, choices=list(LINES), help="which lines to run")
    parser.add_argument("--json", type=Path, default=None)
    synthetic = parser.add_argument_group("synthetic weights (no --device)")
    synthetic.add_argument("--size", default="576x320", help="WxH of the chunk split")
    synthetic.add_argument("--chunks", type=int, default=8, help="timed chunks after the first")
    synthetic.add_argument("--long-size", default="96x64", help="WxH of the long run (small: it is about bounds)")
    synthetic.add_argument("--long-chunks", type=int, default=300)
    synthetic.add_argument("--models-dir", type=Path, default=None)
    synthetic.add_argument("--skip", nargs="*", default=[], choices=["split", "long"])
    real = parser.add_argument_group("real size on random weights")
    real.add_argument("--device", choices=["cuda", "cpu", "meta"], default=None, help="run at real size on this device")
    real.add_argument("--sizes", nargs="*", default=["576x320", "832x480"])
    real.add_argument("--warmup", type=int, default=8, help="untimed chunks after the first (at least until the window and bank are full)")
    real.add_argument("--timed", type=int, default=20, help="timed chunks per line and size")
    real.add_argument("--layers", type=int, default=None, help="fewer transformer layers than the real 30 (a CPU try)")
    real.add_argument("--vae-base", type=int, default=96, help="Wan VAE base width (real: 96)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if BASELINE not in args.lines:
        print(f"note: without {BASELINE} there are no ratios", flush=True)

    report: dict[str, Any] = {"machine": machine(), "lines": args.lines}
    print(json.dumps(report["machine"]), flush=True)
    if args.device is None:
        synthetic_sections(args, report)
    else:
        real_size_sections(args, report)
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
