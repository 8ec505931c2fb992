"""Pinned ``longlive`` output: the scenarios, recording them, and comparing with the stored data.

``tests/data/longlive_regression.npz`` holds the output of :data:`SCENARIOS` on the synthetic
weights (the writer's default seed) at 64x96, computed on the CPU in float32. The test replays
the scenarios and compares; ``python -m tests.longlive_regression --write`` records them again.
docs/pipelines.md says when a new recording is legitimate.

Each chunk keeps its last frame: it is decoded last, through the causal VAE's caches, from
latents that attended to each other, so a change anywhere in the chunk shows in it. The
synthetic frames are noise-like and barely compress, so keeping whole chunks would cost
megabytes. The chunk's frame count and its ``info`` flags are kept too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

DATA = Path(__file__).parent / "data" / "longlive_regression.npz"
HEIGHT, WIDTH, SEED = 64, 96, 7

#: Each scenario is one stream; each entry is one ``generate`` call. ``"video": (count, phase)``
#: feeds :func:`input_clip` frames (video mode); everything else goes to ``generate`` as is.
SCENARIOS: dict[str, list[dict[str, Any]]] = {
    # 6 chunks are 18 latent frames: from the 5th chunk on the 12-frame window evicts (the 3-frame
    # sink stays); then a prompt switch re-caches a full window with the sink kept.
    "text_eviction": [
        {"prompts": "a red fox running through deep snow"},
        {}, {}, {}, {}, {},
        {"prompts": "a red fox asleep by a campfire"},
        {},
    ],
    # An early switch (6 cached frames re-cached) to a weighted blend of two prompts.
    "prompt_switch": [
        {"prompts": "a quiet forest at dawn"},
        {},
        {"prompts": [{"text": "a busy city street at night", "weight": 3.0}, {"text": "heavy rain", "weight": 1.0}]},
        {},
    ],
    # A three-chunk slerp transition (re-cache on each), then a chunk settled on the target.
    "transition": [
        {"prompts": "a desert under a full moon"},
        {"transition": {"target_prompts": "an ocean in a storm", "num_steps": 3,
                        "temporal_interpolation_method": "slerp"}},
        {}, {}, {},
    ],
    # Video mode: the mode defaults (noise 0.7 through the motion controller), then a fixed
    # noise scale on 8 frames that are resampled to the 12 a chunk needs.
    "video": [
        {"video": (13, 0), "prompts": "an oil painting of a harbour"},
        {"video": (12, 13)},
        {"video": (8, 25), "noise_scale": 0.5, "noise_controller": False},
    ],
}

#: Per-chunk facts stored beside the frames (``noise_scale`` is NaN in text mode).
INFO_FIELDS = ("frame_count", "current_start_frame", "init_cache", "recached", "transition_active", "noise_scale")

# Tolerances per chunk's last frame, set from measurements on these scenarios.
#
# Numerical noise (largest figure over all chunks): 1 vs 2 threads, MKL limited to AVX2
# (MKL_ENABLE_INSTRUCTIONS, DNNL_MAX_CPU_ISA), MKL_CBWR=COMPATIBLE, and torch's non-vector
# kernels (ATEN_CPU_CAPABILITY=default) for the stream: max 1 level, mean abs diff <= 0.0004,
# no value off by more than one level. Separate processes and freshly written weights: identical.
# Weights written with the non-vector kernels (their normals differ in the last bits, as on a
# CPU without AVX2): max 1, mean <= 0.027, no value off by more than one level.
#
# Real changes (range over the chunks they change): timestep shift 5.0 -> 4.5: mean 0.11-0.14,
# max 1-5, 0-0.09% of values off by more than one level (5.5: mean 0.15-0.20); no re-cache on
# a prompt switch: mean 0.76-1.46, max 11-21, 14-33%; sink 3 -> 2: mean 1.02-1.80; window
# 12 -> 9: mean 1.13-2.61; one block's FFN zeroed: mean 1.54-2.60, max 21-49; input video
# ignored: mean 3.95-4.55; fp8 generator: mean 2.57-3.91; one block skipped: mean 25-40;
# another prompt: mean 16-35; another seed: mean 37-52.
MAX_MEAN_DIFF = 0.08
MAX_FRACTION_OFF = 0.0002  # of values off by more than one level: about 4 per 64x96 frame
MAX_DIFF = 4
#: Video mode's motion-controlled noise scale (measured noise: none).
NOISE_SCALE_ATOL = 1e-5


def input_clip(count: int, phase: int) -> np.ndarray:
    """A deterministic moving input: drifting colour ramps and a white square moving right.

    Integer arithmetic only, so it is the same on every machine; the motion is moderate, so
    the noise controller works inside its range rather than at a clamp.
    """
    t = np.arange(phase, phase + count).reshape(-1, 1, 1)
    y = np.arange(HEIGHT).reshape(1, -1, 1)
    x = np.arange(WIDTH).reshape(1, 1, -1)
    channels = (_ramp(4 * x + 2 * y + 5 * t), _ramp(6 * y - 3 * x + 4 * t + 300), _ramp(x * y // 8 + 3 * t))
    clip = np.stack(np.broadcast_arrays(*channels), axis=-1).astype(np.uint8)
    for frame, left in zip(clip, 2 * t.ravel()):
        frame[24:40, left : left + 16] = 250
    return clip


def _ramp(value: np.ndarray) -> np.ndarray:
    """A triangle wave over 0..255: a ramp that turns back instead of wrapping."""
    return 255 - np.abs(value % 510 - 255)


@contextmanager
def cpu_float32() -> Iterator[None]:
    """Load on the CPU in float32 even where CUDA exists: the data is CPU float32 output."""
    from scope.pipelines.wan import components

    with mock.patch.object(components, "compute_device", lambda: (torch.device("cpu"), torch.float32)):
        yield


def load(models_dir: Path, **load_params: Any):
    """``longlive`` at the recorded size and seed, on the CPU in float32."""
    import scope

    with cpu_float32():
        params = {"height": HEIGHT, "width": WIDTH, "seed": SEED, **load_params}
        return scope.load_pipeline("longlive", models_dir=models_dir, **params)


def run_scenario(pipeline, steps: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    stream = pipeline.open_stream()
    frames, info = [], {name: [] for name in INFO_FIELDS}
    for step in steps:
        params = dict(step)
        clip = params.pop("video", None)
        chunk = stream.generate(None if clip is None else input_clip(*clip), **params)
        frames.append(chunk.frames[-1])
        info["frame_count"].append(chunk.frames.shape[0])
        info["transition_active"].append(chunk.transition_active)
        for name in ("current_start_frame", "init_cache", "recached"):
            info[name].append(chunk.info[name])
        scale = chunk.info["noise_scale"]
        info["noise_scale"].append(np.nan if scale is None else scale)
    out = {"frames": np.stack(frames)}
    out.update({name: np.asarray(values) for name, values in info.items()})
    return out


def record(pipeline, scenarios: dict[str, list[dict[str, Any]]] = SCENARIOS) -> dict[str, np.ndarray]:
    """Every scenario's arrays, flat as ``"<scenario>/<field>"`` (the npz layout)."""
    return {
        f"{name}/{field}": value
        for name, steps in scenarios.items()
        for field, value in run_scenario(pipeline, steps).items()
    }


def stored() -> dict[str, np.ndarray]:
    with np.load(DATA) as data:
        return {key: data[key] for key in data.files}


def frame_stats(expected: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    diff = np.abs(expected.astype(np.int16) - actual.astype(np.int16))
    return {"max": int(diff.max()), "mean": float(diff.mean()), "fraction_off": float((diff > 1).mean())}


def compare(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], scenario: str) -> list[str]:
    """What differs beyond numerical noise in one scenario (empty when it matches).

    Frames may differ by rounding: a float that lands on the other side of a uint8 step moves a
    value by one level, and the autoregressive stream can carry a small difference on.
    """
    problems = []
    for field in ("frame_count", "current_start_frame", "init_cache", "recached", "transition_active"):
        key = f"{scenario}/{field}"
        if not np.array_equal(expected[key], actual[key]):
            problems.append(f"{field}: expected {expected[key].tolist()}, got {actual[key].tolist()}")
    key = f"{scenario}/noise_scale"
    if not np.allclose(expected[key], actual[key], rtol=0, atol=NOISE_SCALE_ATOL, equal_nan=True):
        problems.append(f"noise_scale: expected {expected[key].tolist()}, got {actual[key].tolist()}")
    key = f"{scenario}/frames"
    if expected[key].shape != actual[key].shape:
        return [*problems, f"frames: expected shape {expected[key].shape}, got {actual[key].shape}"]
    for index, (want, got) in enumerate(zip(expected[key], actual[key])):
        stats = frame_stats(want, got)
        if stats["mean"] > MAX_MEAN_DIFF or stats["max"] > MAX_DIFF or stats["fraction_off"] > MAX_FRACTION_OFF:
            problems.append(
                f"chunk {index}: mean abs diff {stats['mean']:.4f} (limit {MAX_MEAN_DIFF}), max {stats['max']} "
                f"(limit {MAX_DIFF}), values off by more than one level {stats['fraction_off']:.4%} "
                f"(limit {MAX_FRACTION_OFF:.2%})"
            )
    return problems


def write_models(root: Path) -> Path:
    """The synthetic ``longlive`` weights the data is made on (as the test fixture writes them)."""
    from scope.models.artifacts import PIPELINE_ARTIFACTS
    from scope.models.synthetic.writer import write_synthetic

    write_synthetic(root, PIPELINE_ARTIFACTS["longlive"])
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"record the scenarios into {DATA.name}")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        actual = record(load(write_models(Path(tmp))))
    if args.write:
        DATA.parent.mkdir(exist_ok=True)
        np.savez_compressed(DATA, **actual)
        print(f"wrote {DATA} ({DATA.stat().st_size} bytes)")
        return 0
    expected = stored()
    failed = False
    for scenario in SCENARIOS:
        problems = compare(expected, actual, scenario)
        failed |= bool(problems)
        print(f"{scenario}: {'; '.join(problems) or 'matches'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
