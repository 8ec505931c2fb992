"""krea-realtime-video: where a chunk's time goes beside LongLive, what its load costs in host
memory, and (at real size) how fast the 14B runs.

    python bench/krea.py [--size 576x320] [--chunks 8] [--memory-layers 10] [--json out.json]
    python bench/krea.py --device cuda [--sizes 576x320 832x480] [--quantizations none fp8] [--warmup 3] [--timed 10] [--json out.json]

Without ``--device``: synthetic weights, written where missing into ``--models-dir`` (default: a
temp dir) and loaded through the server's loader:

* the per-chunk split into text encoding, DiT and VAE of ``krea-realtime-video`` and
  ``longlive``, one chunk of each in turn, and each figure of Krea's ÷ LongLive's;
* the generator loader's peak anonymous memory while loading a Krea-layout file of about 1 GB
  to float32, against its bound (bench/memory_peak.py), beside the naive load it replaces.

With ``--device cuda`` (or ``cpu``, or ``meta`` for the plan alone): Wan2.1-14B's real shape
(``WAN_14B_CONFIG``) on random weights, q/k/v fused, in bf16 and then stored in fp8, a Wan VAE of
real width, no text encoder (a fixed ``prompt_embeds``): the cache plan and the frames per
second of a Krea stream at each size, beside the reference's figures. It never fails on time;
figures are findings. See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.causal_pipelines import interleaved_split, ratios, release
from bench.longlive import forward_flops, load, machine, parse_size
from bench.memory_peak import MEMORY_CONFIG, measure_in_subprocess, mib, write_memory_files
from bench.real_size import WAN_VAE_BASE, recorded_keys
from bench.report import write_json
from scope.models.synthetic.generator import generator_shapes
from scope.models.synthetic.vae import wan_vae_state_dict
from scope.pipelines.krea_realtime_video import KreaRealtimeVideoPipeline
from scope.pipelines.wan.autoencoders import load_strict as load_vae_strict
from scope.pipelines.wan.causal_stream import VAE_TEMPORAL
from scope.pipelines.wan.components import WanComponents
from scope.pipelines.wan.config import WAN_14B_CONFIG, WanConfig
from scope.pipelines.wan.loading import Fp8Linear, load_strict, quantize_fp8
from scope.pipelines.wan.transformer import CausalWanTransformer
from scope.pipelines.wan.vae import WanVAE, WanVAENet, WanVAEWidths

KREA = "krea-realtime-video"
BASELINE = "longlive"
#: The reference's figures: Krea 14B inside Scope on one H100 (later-scope notes, "Published
#: speeds", citing daydreamlive/scope PR #55), FPS as (low, high) by our WxH.
REFERENCE_FPS = {"576x320": (8.6, 8.6), "832x480": (3.6, 4.3)}
REFERENCE = "reference: Krea 14B inside Scope, one H100, 320x576 / 480x832: 8.6 / 3.6-4.3 FPS (daydreamlive/scope PR #55)"
QUANTIZATIONS = {"none": None, "fp8": "fp8_e4m3fn"}


# Synthetic weights: split and loader memory ----------------------------------------------------


def synthetic_sections(args: argparse.Namespace, report: dict[str, Any]) -> None:
    if "split" not in args.skip:
        with tempfile.TemporaryDirectory(prefix="scope-bench-") as temp:
            models_dir = args.models_dir or Path(temp)
            width, height = parse_size(args.size)
            pipelines = {line: load(models_dir, width, height, pipeline_id=line, synthetic=True) for line in (KREA, BASELINE)}
            split = interleaved_split(pipelines, args.chunks)
            for pipeline in pipelines.values():
                release(pipeline)
        for line, row in split.items():
            print(f"chunk split {line}:", json.dumps(row), flush=True)
        vs = ratios(split, ["text_ms", "dit_ms", "vae_ms", "wall_ms", "fps"])[KREA]
        report["chunk_split"] = {"size": f"{width}x{height}", "lines": split, "krea_vs_longlive": vs}
        print("chunk split krea ÷ longlive:", json.dumps(vs), flush=True)
    if "memory" not in args.skip:
        report["loader_memory"] = loader_memory(args.memory_layers, args.loads)


def loader_memory(layers: int, loads: list[str]) -> dict[str, Any]:
    """Peak RssAnon of each load of a bf16 Krea-layout file (``layers`` of Wan2.1-1.3B's width)."""
    config = dataclasses.replace(MEMORY_CONFIG, num_layers=layers)
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="scope-bench-memory-") as temp:
        config_path, file = write_memory_files(Path(temp), config)
        for name in loads:
            result = measure_in_subprocess(config_path, file, name)
            row = {key.removesuffix("_bytes") + "_mib": mib(value) for key, value in result.items() if key.endswith("_bytes")}
            row.update(load_s=result["load_s"], samples=result["samples"], parameters=result["parameters"],
                       within_bound=result["peak_bytes"] <= result["bound_bytes"],
                       peak_over_model_mib=mib(result["peak_bytes"] - result["model_bytes"]),
                       peak_vs_bound=round(result["peak_bytes"] / result["bound_bytes"], 3))
            rows[name] = row
            print(f"loader memory {name} ({layers} layers):", json.dumps(row), flush=True)
    return {"layers": layers, "dim": config.dim, "loads": rows}


# Real size on random weights -------------------------------------------------------------------


def random_generator(config: WanConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> CausalWanTransformer:
    """The generator of ``config`` with random weights drawn on ``device`` (14B in seconds on a
    GPU): weights N(0, 1/fan_in), biases and modulation N(0, 0.02²), norm gains 1, so
    activations stay finite through the layers; speed does not depend on the values."""
    gen = None if device.type == "meta" else torch.Generator(device=device).manual_seed(seed)
    state = {}
    for key, shape in generator_shapes(config).items():
        value = torch.empty(shape, device=device, dtype=dtype)
        if device.type != "meta":
            if "norm" in key and key.endswith(".weight"):
                value.fill_(1.0)
            elif key.endswith((".bias", "modulation")):
                value.normal_(0.0, 0.02, generator=gen)
            else:
                value.normal_(0.0, 1.0 / math.sqrt(math.prod(shape[1:])), generator=gen)
        state[key] = value
    with torch.device("meta"):
        model = CausalWanTransformer(config)
    load_strict(model, state, "random weights")
    model.rebuild_buffers(device)
    return model.eval().requires_grad_(False)


def krea_components(
    device: torch.device | str, dtype: torch.dtype, *, layers: int | None = None, vae_base: int = WAN_VAE_BASE
) -> WanComponents:
    """Wan2.1-14B (``layers`` can cut its depth), random, q/k/v fused as Krea's load fuses them,
    and a random Wan VAE of ``vae_base`` width, on ``device``."""
    device = torch.device(device)
    config = WAN_14B_CONFIG if layers is None else dataclasses.replace(WAN_14B_CONFIG, num_layers=layers)
    generator = random_generator(config, device, dtype)
    generator.fuse_projections()
    vae_state = wan_vae_state_dict(vae_base, 0, device="meta" if device.type == "meta" else "cpu")
    net = load_vae_strict(lambda: WanVAENet(WanVAEWidths.from_base(vae_base)), vae_state, "random weights", device=device, dtype=dtype)
    return WanComponents(generator, WanVAE(net).to(device=device, dtype=dtype), None, device, dtype)


def open_stream(components: WanComponents, width: int, height: int, seed: int = 42):
    """A Krea stream over ``components``, opened by the pipeline class (its settings, no warm-up)."""
    cls = KreaRealtimeVideoPipeline
    params = cls.load_params_model.model_validate({"height": height, "width": width, "seed": seed})
    return cls(params, components, synthetic=False).open_stream()


def model_figures(components: WanComponents) -> dict[str, Any]:
    generator = components.generator
    blocks = generator.blocks
    return {
        "layers": generator.config.num_layers,
        "dim": generator.config.dim,
        "parameters": sum(p.numel() for p in generator.parameters()),
        "weights_gb": round(sum(p.numel() * p.element_size() for p in generator.parameters()) / 1e9, 2),
        "fused_qkv": sorted({tuple(block.self_attn.qkv.weight.shape) for block in blocks}),
        "fp8_linears": sum(isinstance(m, Fp8Linear) for m in generator.modules()),
    }


def plan(components: WanComponents, width: int, height: int) -> dict[str, Any]:
    """A stream's window per layer, its KV bytes, and the DiT work per output frame: the
    denoising forwards over a full window and the recompute forward over the context frames."""
    stream = open_stream(components, width, height)
    config, settings = components.generator.config, stream.settings
    fsl = stream.frame_seq_len
    window = stream.cache.layers[0].k.shape[1]
    per_token = 2 * config.num_heads * config.head_dim * torch.finfo(components.dtype).bits // 8  # k and v
    block = settings.frames_per_block * fsl
    context = settings.recompute_context_frames * fsl
    flops = len(stream.default_steps) * forward_flops(config, block, window) + forward_flops(config, context, context)
    return {
        "tokens_per_frame": fsl,
        "window_frames": window // fsl,
        "window_tokens_per_layer": window,
        "kv_gb": round(window * per_token * config.num_layers / 1e9, 3),
        "dit_tflop_per_frame": round(flops / 1e12 / (settings.frames_per_block * VAE_TEMPORAL), 3),
    }


def time_stream(components: WanComponents, width: int, height: int, *, warmup: int, chunks: int) -> dict[str, Any]:
    """Frames per second of a Krea stream after the first chunk and ``warmup`` untimed ones (from
    the third chunk on, every chunk recomputes its window from a re-encoded frame), with the
    self-attention key lengths the timed chunks saw (the biased window is padded to 128 keys)."""
    config = components.generator.config
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, config.text_len, config.text_dim, generator=gen).mul_(0.1)
    stream = open_stream(components, width, height)
    stream.generate(prompt_embeds=embeds.to(components.device, components.dtype))
    for _ in range(warmup):
        stream.generate()
    rows = []
    with recorded_keys() as lengths:
        for _ in range(chunks):
            started = time.perf_counter()
            chunk = stream.generate()
            rows.append({"wall_ms": (time.perf_counter() - started) * 1000, "frames": len(chunk.frames), **chunk.info})
    wall = sum(r["wall_ms"] for r in rows) / 1000
    return {
        "fps": round(sum(r["frames"] for r in rows) / wall, 2),
        "chunk_ms": round(statistics.median(r["wall_ms"] for r in rows), 1),
        "dit_ms": round(statistics.median(r["dit_ms"] for r in rows), 1),
        "vae_ms": round(statistics.median(r["vae_ms"] for r in rows), 1),
        "frames_per_chunk": rows[0]["frames"],
        "warmup_chunks": warmup,
        "self_attention_keys": sorted({n for n in lengths if n != config.text_len}),
    }


def real_size_sections(args: argparse.Namespace, report: dict[str, Any]) -> None:
    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16  # meta: the plan of a CUDA run
    started = time.perf_counter()
    components = krea_components(device, dtype, layers=args.layers, vae_base=args.vae_base)
    report["build_s"] = round(time.perf_counter() - started, 1)
    report["reference"] = REFERENCE
    report["runs"] = {}
    for name in args.quantizations:
        if QUANTIZATIONS[name] == "fp8_e4m3fn":
            quantize_fp8(components.generator)  # after the fusion, as the loader does
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        model = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "quantization": QUANTIZATIONS[name],
                 "vae_base": args.vae_base, **model_figures(components)}
        print(f"model {name}:", json.dumps(model), flush=True)
        run: dict[str, Any] = {"model": model, "sizes": {}}
        for size in args.sizes:
            width, height = parse_size(size)
            entry: dict[str, Any] = {"plan": plan(components, width, height)}
            print(f"plan {name} {size}:", json.dumps(entry["plan"]), flush=True)
            if device.type != "meta":
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                timed = time_stream(components, width, height, warmup=args.warmup, chunks=args.timed)
                if device.type == "cuda":
                    timed["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
                low_high = REFERENCE_FPS.get(size)
                if low_high is not None:
                    timed["reference_fps"] = list(low_high)
                    timed["fps_vs_reference"] = [round(timed["fps"] / value, 3) for value in low_high]
                entry["timed"] = timed
                print(f"fps {name} {size}:", json.dumps(timed), flush=True)
            run["sizes"][size] = entry
        report["runs"][name] = run
    if device.type != "meta":
        print(REFERENCE, flush=True)


# Main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    synthetic = parser.add_argument_group("synthetic weights (no --device)")
    synthetic.add_argument("--size", default="576x320", help="WxH of the chunk split")
    synthetic.add_argument("--chunks", type=int, default=8, help="timed chunks per line after the first")
    synthetic.add_argument("--models-dir", type=Path, default=None)
    synthetic.add_argument("--memory-layers", type=int, default=MEMORY_CONFIG.num_layers,
                           help="layers of Wan2.1-1.3B's width in the loader's file (10: about 1 GB in bf16)")
    synthetic.add_argument("--loads", nargs="*", default=["streamed", "naive"], choices=["streamed", "naive"])
    synthetic.add_argument("--skip", nargs="*", default=[], choices=["split", "memory"])
    real = parser.add_argument_group("real size on random weights")
    real.add_argument("--device", choices=["cuda", "cpu", "meta"], default=None, help="run at real size on this device")
    real.add_argument("--sizes", nargs="*", default=["576x320", "832x480"])
    real.add_argument("--quantizations", nargs="*", default=["none", "fp8"], choices=list(QUANTIZATIONS),
                      help="in this order on one model: fp8 quantises the bf16 weights in place")
    real.add_argument("--warmup", type=int, default=3, help="untimed chunks after the first (3: the timed ones are steady)")
    real.add_argument("--timed", type=int, default=10, help="timed chunks per quantization and size")
    real.add_argument("--layers", type=int, default=None, help="fewer transformer layers than the real 40 (a CPU try)")
    real.add_argument("--vae-base", type=int, default=WAN_VAE_BASE, help="Wan VAE base width (real: 96)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if args.quantizations != sorted(args.quantizations, key=list(QUANTIZATIONS).index):
        parser.error("--quantizations: 'none' must come before 'fp8' (fp8 replaces the bf16 weights)")

    report: dict[str, Any] = {"machine": machine()}
    print(json.dumps(report["machine"]), flush=True)
    if args.device is None:
        synthetic_sections(args, report)
    else:
        real_size_sections(args, report)
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
