"""VACE's cost per chunk: ``longlive`` with a reference image and a control video against
``longlive`` without VACE, measured in the same run.

    python bench/vace.py [--size 576x320] [--chunks 8] [--json out.json]
    python bench/vace.py --device cuda [--size 832x480] [--warmup 8] [--timed 20] [--json out.json]

Four lines run side by side, one chunk of each in turn (so a change in the machine's load touches
every line alike): ``none`` (loaded without VACE), ``loaded`` (``vace_enabled`` but no VACE
input: what having the module loaded costs), ``control`` (a control video with every chunk) and
``ref_control`` (a reference image and the control video with every chunk: the cost of a chunk
that carries a reference; a session sends one once, so its later chunks cost what ``control``
costs). Figures: the median wall, DiT and VAE milliseconds per chunk and the VACE encoding's
(timed around the stream's context building), each ÷ ``none``'s; the first chunk apart; the DiT
ratio the FLOP model predicts for VACE's hint blocks; and each line's frames' distance from
``none``'s (0 for ``loaded``: it ran no VACE).

Without ``--device``: synthetic weights (written where missing into ``--models-dir``, default a
temp dir) loaded through ``scope.load_pipeline`` as the server loads them. With ``--device cuda``
(or ``cpu`` with ``--layers`` for a try): ``bench/real_size.py``'s random Wan2.1-1.3B generator
and Wan VAE of real width, with random VACE blocks of the real module's shape attached, and a
fixed ``prompt_embeds``. It never fails on time; figures are findings. See bench/README.md.
"""

from __future__ import annotations

import argparse
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

import numpy as np
import torch

from bench.longlive import (
    PROMPTS,
    TEXT_TOKENS,
    forward_flops,
    load,
    machine,
    parse_size,
    side_by_side_arguments,
)
from bench.report import write_json

#: The lines: (VACE loaded, control video with every chunk, reference image with every chunk).
LINES: dict[str, tuple[bool, bool, bool]] = {
    "none": (False, False, False),
    "loaded": (True, False, False),
    "control": (True, True, False),
    "ref_control": (True, True, True),
}
BASELINE = "none"
#: Control frames a chunk encodes: 13 for a stream's first chunk, 12 for each other.
FIRST_CONTROL_FRAMES, CONTROL_FRAMES = 13, 12


# Inputs ----------------------------------------------------------------------------------------


def control_video(frames: int, width: int, height: int, start: int = 0) -> np.ndarray:
    """``frames`` uint8 RGB frames: a light square sliding across a dark ground (from frame ``start``)."""
    side = max(height // 3, 1)
    video = np.full((frames, height, width, 3), 30, dtype=np.uint8)
    top = (height - side) // 2
    for i in range(frames):
        left = (3 * (start + i)) % max(width - side, 1)
        video[i, top : top + side, left : left + side] = (235, 235, 200)
    return video


def write_reference(path: Path) -> str:
    """A 4:3 picture (another shape than the frame, so it is fitted), saved as PNG."""
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (96, 72), (225, 215, 190))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, 48, 95, 71), fill=(140, 90, 50))
    draw.ellipse((34, 20, 62, 48), fill=(210, 30, 30))
    picture.save(path)
    return str(path)


class Feeder:
    """What each line sends with each chunk: its VACE inputs, the control video playing on."""

    def __init__(self, line: str, width: int, height: int, reference: str):
        _, self.control, self.refs = LINES[line]
        self.width, self.height, self.reference = width, height, reference
        self.sent = 0

    def inputs(self, first: bool) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.control:
            count = FIRST_CONTROL_FRAMES if first else CONTROL_FRAMES
            params["vace_input_frames"] = control_video(count, self.width, self.height, self.sent)
            self.sent += count
        if self.refs:
            params["vace_ref_images"] = [self.reference]
        return params


# The run ---------------------------------------------------------------------------------------


def encoding_timer(stream) -> list[float]:
    """Time each chunk's VACE context building (reference and control encoding) on ``stream``;
    returns the list the milliseconds are appended to (stays empty without VACE)."""
    spent: list[float] = []
    conditioner = getattr(stream, "vace", None)
    if conditioner is None:
        return spent
    build = conditioner.context

    def timed_context(*args: Any, **kwargs: Any):
        started = time.perf_counter()
        context = build(*args, **kwargs)
        if context is not None:  # None: the chunk carried no VACE input, nothing was encoded
            if context.latents.is_cuda:
                torch.cuda.synchronize(context.latents.device)
            spent.append((time.perf_counter() - started) * 1000)
        return context

    conditioner.context = timed_context
    return spent


FIGURES = ("dit_ms", "vae_ms", "encode_ms", "chunk_ms")


def interleave(
    streams: dict[str, Any], feeders: dict[str, Feeder], first: dict[str, Any], warmup: int, chunks: int
) -> dict[str, dict[str, Any]]:
    """``first`` (and each line's inputs) opens each stream, ``warmup`` untimed chunks follow, then
    ``chunks`` timed ones, one chunk of each line in turn; medians per line, the first chunk apart,
    and each line's timed frames' mean distance from the baseline's."""
    timers = {line: encoding_timer(stream) for line, stream in streams.items()}
    opened = {}
    for line, stream in streams.items():
        opened[line] = timed(stream, timers[line], {**first, **feeders[line].inputs(first=True)})[0]
    for _ in range(warmup):
        for line, stream in streams.items():
            stream.generate(**feeders[line].inputs(first=False))
    rows: dict[str, list[dict[str, Any]]] = {line: [] for line in streams}
    frames: dict[str, list[np.ndarray]] = {line: [] for line in streams}
    for _ in range(chunks):
        for line, stream in streams.items():
            row, chunk_frames = timed(stream, timers[line], feeders[line].inputs(first=False))
            rows[line].append(row)
            frames[line].append(chunk_frames)
    base = np.concatenate(frames[BASELINE]).astype(np.float32)
    return {
        line: {
            **{key: round(statistics.median(r[key] for r in timed_rows), 2) for key in FIGURES},
            "chunks": len(timed_rows),
            "first_chunk": opened[line],
            "distance_from_none": round(float(np.abs(np.concatenate(frames[line]) - base).mean()), 3),
            "vace_inputs": sorted(feeders[line].inputs(first=False)),
        }
        for line, timed_rows in rows.items()
    }


def timed(stream, encodings: list[float], params: dict[str, Any]) -> tuple[dict[str, float], np.ndarray]:
    """One chunk's figures and its frames. ``dit_ms`` and ``vae_ms`` are the chunk's own; the
    stream counts the VACE encoding in its VAE time only: ``dit_ms`` is the re-cache, the
    denoising and the clean pass."""
    before = len(encodings)
    started = time.perf_counter()
    chunk = stream.generate(**params)
    wall = (time.perf_counter() - started) * 1000
    encode = sum(encodings[before:])
    row = {
        "dit_ms": chunk.info["dit_ms"], "vae_ms": chunk.info["vae_ms"], "encode_ms": encode,
        "chunk_ms": wall,
    }
    return {key: round(value, 2) for key, value in row.items()}, chunk.frames


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each line's median DiT, VAE and wall ms divided by ``none``'s (``none`` encodes nothing)."""
    base = rows[BASELINE]
    return {
        line: {key: round(row[key] / base[key], 3) for key in ("dit_ms", "vae_ms", "chunk_ms")}
        for line, row in rows.items()
    }


def predicted_dit_ratio(components, width: int, height: int) -> float:
    """The FLOP model's DiT ratio of a chunk with a VACE context to one without (steady state).

    Without VACE a chunk is 4 denoising forwards and the clean pass, each over the chunk's tokens
    with the full window as keys. With VACE each denoising forward also runs the hint blocks (one
    per second layer) over the context's tokens (the chunk's frames), attending to themselves
    (padded to 128 keys, as the reference does), plus ``before_proj`` once and ``after_proj`` per
    block, and each hint block projects the text to its keys and values again (it has no cross
    cache)."""
    from bench.real_size import plan
    from scope.pipelines.registry import get_pipeline_class
    from scope.pipelines.wan.vace import REFERENCE_PADDING

    config = components.generator.config
    d = config.dim
    settings = get_pipeline_class("longlive").settings
    row = plan(components, "longlive", width, height)
    block = settings.frames_per_block * row["tokens_per_frame"]
    steps = len(get_pipeline_class("longlive").default_steps)
    base = (steps + 1) * forward_flops(config, block, row["attended_tokens"])
    hint_layers = len(range(0, config.num_layers, 2))
    keys = -(-block // REFERENCE_PADDING) * REFERENCE_PADDING
    hints = forward_flops(dataclasses.replace(config, num_layers=hint_layers), block, keys)
    hints += (hint_layers + 1) * 2 * d * d * block  # before_proj and the after_projs
    hints += hint_layers * 2 * (2 * d * d) * TEXT_TOKENS  # the text's k and v (d x d each)
    return round((base + steps * hints) / base, 3)


# Synthetic weights, through the loader ----------------------------------------------------------


def synthetic_run(args: argparse.Namespace, folder: Path, reference: str) -> dict[str, Any]:
    width, height = parse_size(args.size)
    models_dir = args.models_dir or folder / "models"
    plain = load(models_dir, width, height, synthetic=True, seed=42)
    vace = load(models_dir, width, height, synthetic=True, seed=42, vace_enabled=True)
    streams = {line: (vace if LINES[line][0] else plain).open_stream() for line in LINES}
    feeders = {line: Feeder(line, width, height, reference) for line in LINES}
    rows = interleave(streams, feeders, {"prompts": PROMPTS[0]}, args.warmup, args.chunks)
    predicted = predicted_dit_ratio(vace.components, width, height)
    for pipeline in (plain, vace):
        pipeline.unload()
    gc.collect()
    return {"weights": "synthetic", "size": f"{width}x{height}", "dit_predicted": predicted, "lines": rows}


# Real size on random weights ---------------------------------------------------------------------


def attach_random_vace(components, seed: int = 1) -> int:
    """Random VACE blocks of the real module's shape on the generator (as a module file loads
    them); returns their parameter count."""
    from scope.models.synthetic.generator import vace_state_dict
    from scope.pipelines.wan.loading import load_strict
    from scope.pipelines.wan.vace import VaceLayers

    generator = components.generator
    with torch.device("meta"):
        layers = VaceLayers(generator.config)
    load_strict(layers, vace_state_dict(generator.config, seed, dtype=components.dtype), "random weights")
    generator.vace = layers.to(device=components.device, dtype=components.dtype).eval().requires_grad_(False)
    return sum(p.numel() for p in generator.vace.parameters())


def real_size_run(args: argparse.Namespace, reference: str) -> dict[str, Any]:
    from bench.real_size import random_components, steady_chunk
    from scope.pipelines.registry import get_pipeline_class

    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    width, height = parse_size(args.size)
    started = time.perf_counter()
    components = random_components(device, dtype, layers=args.layers, vae_base=args.vae_base)
    vace_parameters = attach_random_vace(components)
    built = round(time.perf_counter() - started, 1)
    config = components.generator.config
    cls = get_pipeline_class("longlive")
    streams = {}
    for line, (enabled, _, _) in LINES.items():
        params = cls.load_params_model.model_validate({"height": height, "width": width, "seed": 42, "vace_enabled": enabled})
        streams[line] = cls(params, components, synthetic=False).open_stream()
    feeders = {line: Feeder(line, width, height, reference) for line in LINES}
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, config.text_len, config.text_dim, generator=gen).mul_(0.1).to(device, dtype)
    warmup = max(args.warmup, steady_chunk(streams[BASELINE]) - 1)
    rows = interleave(streams, feeders, {"prompt_embeds": embeds}, warmup, args.timed)
    return {
        "weights": "random, real size", "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "layers": config.num_layers, "dim": config.dim, "vace_blocks": len(components.generator.vace.vace_blocks),
        "vace_parameters": vace_parameters, "vae_base": args.vae_base, "size": f"{width}x{height}",
        "build_s": built, "warmup_chunks": warmup, "dit_predicted": predicted_dit_ratio(components, width, height),
        "lines": rows,
    }


# Main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default=None, help="WxH (default 576x320; 832x480 with --device)")
    parser.add_argument("--json", type=Path, default=None)
    side_by_side_arguments(parser)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    args.size = args.size or ("832x480" if args.device else "576x320")
    args.warmup = args.warmup if args.warmup is not None else (8 if args.device else 0)

    report: dict[str, Any] = {"machine": machine()}
    print(json.dumps(report["machine"]), flush=True)
    with tempfile.TemporaryDirectory(prefix="scope-bench-vace-") as temp:
        reference = write_reference(Path(temp) / "reference.png")
        report.update(real_size_run(args, reference) if args.device else synthetic_run(args, Path(temp), reference))
    report["vs_none"] = ratios(report["lines"])
    for line, row in report["lines"].items():
        vs = report["vs_none"][line]
        print(f"{line:>11}: chunk {row['chunk_ms']:9.2f} ms (x{vs['chunk_ms']:.3f}), DiT "
              f"{row['dit_ms']:9.2f} ms (x{vs['dit_ms']:.3f}), VACE encoding "
              f"{row['encode_ms']:8.2f} ms, VAE {row['vae_ms']:9.2f} ms (x{vs['vae_ms']:.3f}); median of "
              f"{row['chunks']} chunks; frames {row['distance_from_none']:.2f} from none", flush=True)
    print(f"DiT ratio predicted for a chunk with VACE (FLOP model): x{report['dit_predicted']:.3f}", flush=True)
    print("vs none:", json.dumps(report["vs_none"]), flush=True)
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
