"""User LoRAs: what a chunk costs with adapters kept apart (``runtime_peft``) against merged
into the weights (``permanent_merge``), with one and with three adapters.

    python bench/loras.py [--size 576x320] [--chunks 8] [--rank 4] [--json out.json]
    python bench/loras.py --device cuda [--size 832x480] [--rank 32] [--warmup 8] [--timed 20] [--json out.json]

Five lines run side by side, one chunk of each in turn (so a change in the machine's load touches
every line alike): ``none`` (no user LoRA), ``merge_x1``, ``merge_x3``, ``runtime_x1`` and
``runtime_x3``. Every adapter has scale 1.0 (a runtime adapter at scale 0 is skipped, so it would
cost nothing). The figure is the median DiT milliseconds per chunk; each line's is also given as a
ratio to ``none`` from the same run.

Without ``--device``: synthetic weights (written where missing into ``--models-dir``, default a
temp dir) and synthetic LoRA files of ``--rank`` over every block linear, loaded through
``scope.load_pipeline`` as the server loads them. With ``--device cuda`` (or ``cpu`` with
``--layers`` for a try): ``bench/real_size.py``'s random Wan2.1-1.3B generator (bf16 on CUDA) and
real-size random LoRAs of ``--rank`` (32 or 64 are typical downloads) over all 10 linears of every
block, read by the product's LoRA reader; merging and the runtime adapters are the product's own.
It never fails on time; figures are findings. See bench/README.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.longlive import PROMPTS, load, machine, parse_size, side_by_side_arguments
from bench.report import write_json

#: The lines, as (merge mode, number of adapters); ``none`` is the baseline of every ratio.
LINES: dict[str, tuple[str | None, int]] = {
    "none": (None, 0),
    "merge_x1": ("permanent_merge", 1),
    "merge_x3": ("permanent_merge", 3),
    "runtime_x1": ("runtime_peft", 1),
    "runtime_x3": ("runtime_peft", 3),
}
BASELINE = "none"
#: The scale every adapter runs at.
SCALE = 1.0


def write_loras(directory: Path, config, count: int, rank: int) -> list[Path]:
    """``count`` synthetic PEFT LoRAs of ``rank`` over every block linear of ``config``."""
    from scope.models.synthetic.lora import write_synthetic_lora

    return [
        write_synthetic_lora(directory / f"adapter_{i}.safetensors", "peft", config, seed=100 + i, rank=rank).resolve()
        for i in range(count)
    ]


def interleave(streams: dict[str, Any], first: dict[str, Any], warmup: int, chunks: int) -> dict[str, dict[str, Any]]:
    """``first`` opens each stream, ``warmup`` untimed chunks follow, then ``chunks`` timed ones,
    one chunk of each line in turn; each line's median DiT and wall ms per chunk."""
    for stream in streams.values():
        stream.generate(**first)
    for _ in range(warmup):
        for stream in streams.values():
            stream.generate()
    rows: dict[str, list[tuple[float, float]]] = {line: [] for line in streams}
    for _ in range(chunks):
        for line, stream in streams.items():
            started = time.perf_counter()
            chunk = stream.generate()
            rows[line].append((chunk.info["dit_ms"], (time.perf_counter() - started) * 1000))
    return {
        line: {
            "dit_ms": round(statistics.median(r[0] for r in timed), 2),
            "chunk_ms": round(statistics.median(r[1] for r in timed), 2),
            "chunks": len(timed),
        }
        for line, timed in rows.items()
    }


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each line's median DiT ms divided by ``none``'s."""
    base = rows[BASELINE]["dit_ms"]
    return {line: round(row["dit_ms"] / base, 3) for line, row in rows.items()}


# Synthetic weights, through the loader ----------------------------------------------------------


def synthetic_run(args: argparse.Namespace) -> dict[str, Any]:
    from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG

    width, height = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="scope-bench-loras-") as temp:
        models_dir = args.models_dir or Path(temp) / "models"
        files = write_loras(Path(temp) / "loras", SYNTHETIC_WAN_CONFIG, 3, args.rank)
        pipelines = {}
        for line, (mode, count) in LINES.items():
            loras = [{"path": str(path), "scale": SCALE, "merge_mode": mode} for path in files[:count]]
            pipelines[line] = load(models_dir, width, height, synthetic=True, seed=42, loras=loras or None)
        streams = {line: pipeline.open_stream() for line, pipeline in pipelines.items()}
        rows = interleave(streams, {"prompts": PROMPTS[0]}, args.warmup, args.chunks)
        for line, pipeline in pipelines.items():
            rows[line]["adapters"] = [adapter["merge_mode"] for adapter in pipeline.loaded_lora_adapters]
        for pipeline in pipelines.values():
            pipeline.unload()
    gc.collect()
    return {"weights": "synthetic", "size": f"{width}x{height}", "rank": args.rank, "lines": rows}


# Real size on random weights ---------------------------------------------------------------------


def real_size_run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.real_size import random_components, steady_chunk
    from scope.pipelines.registry import get_pipeline_class
    from scope.pipelines.wan.components import UserLora
    from scope.pipelines.wan.lora import RuntimeLoras, merge_loras, read_lora

    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    width, height = parse_size(args.size)
    started = time.perf_counter()
    base = random_components(device, dtype, layers=args.layers, vae_base=args.vae_base)
    config = base.generator.config
    cls = get_pipeline_class("longlive")
    params = cls.load_params_model.model_validate({"height": height, "width": width, "seed": 42})
    with tempfile.TemporaryDirectory(prefix="scope-bench-loras-") as temp:
        files = write_loras(Path(temp), config, 3, args.rank)
        loras = [read_lora(path, base.generator) for path in files]
    built = round(time.perf_counter() - started, 1)
    streams, adapters = {}, {}
    for line, (mode, count) in LINES.items():
        # Each line its own copy of the generator: merges change weights, adapters hook linears.
        generator = base.generator if mode is None else copy.deepcopy(base.generator)
        runtime = None
        if mode == "permanent_merge":
            merge_loras(generator, [(lora, SCALE) for lora in loras[:count]])
            generator.to(dtype=dtype)
        elif mode == "runtime_peft":
            runtime = RuntimeLoras(generator, loras[:count], device, dtype)
        user = tuple(UserLora(lora.path, SCALE, mode) for lora in loras[:count]) if mode else ()
        components = dataclasses.replace(base, generator=generator, runtime_loras=runtime, user_loras=user)
        streams[line] = cls(params, components, synthetic=False).open_stream()
        adapters[line] = [lora.merge_mode for lora in user]
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, config.text_len, config.text_dim, generator=gen).mul_(0.1).to(device, dtype)
    warmup = max(args.warmup, steady_chunk(next(iter(streams.values()))) - 1)
    rows = interleave(streams, {"prompt_embeds": embeds}, warmup, args.timed)
    for line, modes in adapters.items():
        rows[line]["adapters"] = modes
    return {
        "weights": "random, real size", "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "layers": config.num_layers, "dim": config.dim, "size": f"{width}x{height}", "rank": args.rank,
        "adapter_linears": len(loras[0].deltas), "build_s": built, "warmup_chunks": warmup, "lines": rows,
    }


# Main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default=None, help="WxH (default 576x320; 832x480 with --device)")
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default 4 synthetic, 32 with --device)")
    parser.add_argument("--json", type=Path, default=None)
    side_by_side_arguments(parser)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    args.size = args.size or ("832x480" if args.device else "576x320")
    args.rank = args.rank or (32 if args.device else 4)
    args.warmup = args.warmup if args.warmup is not None else (8 if args.device else 0)

    report: dict[str, Any] = {"machine": machine()}
    print(json.dumps(report["machine"]), flush=True)
    report.update(real_size_run(args) if args.device else synthetic_run(args))
    report["dit_vs_none"] = ratios(report["lines"])
    for line, row in report["lines"].items():
        print(f"{line:>10}: DiT {row['dit_ms']:9.2f} ms/chunk (median of {row['chunks']}), "
              f"chunk {row['chunk_ms']:9.2f} ms, x{report['dit_vs_none'][line]:.3f} of none", flush=True)
    print("DiT vs none:", json.dumps(report["dit_vs_none"]), flush=True)
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
