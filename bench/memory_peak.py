"""Peak anonymous memory while a generator checkpoint loads, against the loader's bound.

    python -m bench.memory_peak --config config.json --file gen.safetensors [--load streamed|naive]

prints one JSON line: the peak of ``RssAnon`` during the load minus its value just before, the
bound, and the sampler's figures. ``RssAnon`` and not RSS: the pages of a memory-mapped
checkpoint count in RSS as they are read, but the kernel drops them whenever it likes; what a
load really costs is its anonymous memory (the model, and every copy made on the way).

``streamed`` is the product's loader (``load_generator``, tensor by tensor from the mapped file,
q/k/v fused); ``naive`` reads the whole file into memory and builds the model from that state
dict, the load the streamed one replaces. Run each in a fresh process (:func:`measure_in_subprocess`),
so nothing an earlier load left behind counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from scope.models.synthetic.generator import generator_shapes, write_wan_config
from scope.pipelines.wan.config import WAN_1_3B_CONFIG, WanConfig
from scope.streaming.memory_budget import proc_bytes

#: Wan2.1-1.3B's width with 10 layers: a 0.98 GB bf16 file, 1.96 GB in float32.
MEMORY_CONFIG = dataclasses.replace(WAN_1_3B_CONFIG, num_layers=10)
#: The bound's slack over "model + largest tensor": the RoPE table, allocator rounding and the
#: interpreter's own growth (measured at 3-5 MiB from 0.5 to 2 GB files: bench/README.md).
MARGIN_FIXED = 32 * 2**20

_SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


# Writing a large checkpoint cheaply -------------------------------------------------------------


def write_checkpoint(path: Path, config: WanConfig, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Krea's layout (flat safetensors, ``model.``-prefixed original Wan keys) at ``config``'s size.

    Values are one small block of random numbers repeated: the loader's memory does not depend
    on them, and a billion ``randn`` draws would cost seconds. Written in pieces, so writing
    takes a few MB of memory whatever the file's size.
    """
    shapes = {f"model.{key}": shape for key, shape in generator_shapes(config).items()}
    item = torch.finfo(dtype).bits // 8
    header: dict[str, Any] = {}
    offset = 0
    for key, shape in shapes.items():
        size = math.prod(shape) * item
        header[key] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    pattern = (torch.randn(1 << 22, generator=torch.Generator().manual_seed(0)) * 0.02).to(dtype)
    pattern_bytes = pattern.view(torch.uint8).numpy().tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.write(len(encoded).to_bytes(8, "little"))
        out.write(encoded)
        left = offset
        while left:
            piece = pattern_bytes[: min(left, len(pattern_bytes))]
            out.write(piece)
            left -= len(piece)
    return path


# The bound ------------------------------------------------------------------------------------


def bound(config: WanConfig, file_dtype: torch.dtype, dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """Model in ``dtype`` + its largest tensor (in the file's dtype or in ``dtype``, the larger)
    + the margin."""
    numels = [math.prod(shape) for shape in generator_shapes(config).values()]
    item = torch.finfo(dtype).bits // 8
    model = sum(numels) * item
    largest = max(numels) * max(item, torch.finfo(file_dtype).bits // 8)
    margin = MARGIN_FIXED
    return {"parameters": sum(numels), "model_bytes": model, "largest_tensor_bytes": largest,
            "margin_bytes": margin, "bound_bytes": model + largest + margin}


# Sampling RssAnon -----------------------------------------------------------------------------


def rss_anon() -> int:
    """This process's anonymous resident memory, in bytes."""
    return proc_bytes("/proc/self/status", "RssAnon")


class PeakSampler:
    """A thread that reads ``RssAnon`` every ``interval`` seconds and keeps the largest value.

    The interpreter's switch interval is shortened meanwhile so the thread gets its turn while
    the main thread runs Python; torch's copies release the interpreter lock, so they are sampled
    as they run.
    """

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon())
            self.samples += 1
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(self.interval / 2)
        self.peak = rss_anon()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())
        sys.setswitchinterval(self._switch)


# The loads ------------------------------------------------------------------------------------


def load_streamed(config_path: Path, file: Path) -> torch.nn.Module:
    from scope.pipelines.wan.loading import load_generator

    return load_generator(config_path, file, device="cpu", dtype=torch.float32, fuse_qkv=True)


def load_naive(config_path: Path, file: Path) -> torch.nn.Module:
    """File -> bytes -> state dict -> float32 state dict -> model: what the streamed load replaces."""
    import safetensors.torch

    from scope.pipelines.wan.loading import load_strict
    from scope.pipelines.wan.transformer import CausalWanTransformer

    config = WanConfig.from_json(config_path)
    with open(file, "rb") as handle:
        state = safetensors.torch.load(handle.read())
    state = {key.removeprefix("model."): value.to(torch.float32) for key, value in state.items()}
    with torch.device("meta"):
        model = CausalWanTransformer(config)
    load_strict(model, state, file)
    del state
    model.fuse_projections()
    model.rebuild_buffers("cpu")
    return model


LOADS = {"streamed": load_streamed, "naive": load_naive}


def measure(config_path: Path, file: Path, load: str = "streamed") -> dict[str, Any]:
    """Run one load in this process, sampling ``RssAnon``; call it in a fresh process."""
    import safetensors  # noqa: F401  (imported before the baseline, as the load's own modules)

    import scope.pipelines.wan.loading  # noqa: F401
    import scope.pipelines.wan.transformer  # noqa: F401

    config = WanConfig.from_json(config_path)
    _warm_up(Path(file).parent)
    gc.collect()
    baseline = rss_anon()
    started = time.perf_counter()
    with PeakSampler() as sampler:
        model = LOADS[load](config_path, file)
    seconds = time.perf_counter() - started
    held = rss_anon() - baseline
    loaded = sum(p.numel() for p in model.parameters())
    expected = bound(config, file_dtype=_file_dtype(file))
    return {
        "load": load,
        "file_bytes": file.stat().st_size,
        "peak_bytes": sampler.peak - baseline,
        "held_bytes": held,
        "load_s": round(seconds, 2),
        "samples": sampler.samples,
        "parameters_loaded": loaded,
        "fused_qkv": all(block.self_attn.qkv is not None for block in model.blocks),
        **expected,
    }


def _warm_up(directory: Path) -> None:
    """Load a tiny checkpoint once and drop it: the first load in a process imports torch's
    compiler stack (building a module on ``meta`` does) and sets up kernels, about 70 MiB that
    any load pays once and that has nothing to do with the file's size."""
    from scope.pipelines.wan.config import SYNTHETIC_WAN_14B_CONFIG

    with tempfile.TemporaryDirectory(dir=directory) as temp:
        config_path, file = write_memory_files(Path(temp), SYNTHETIC_WAN_14B_CONFIG)
        model = load_streamed(config_path, file)
        del model
    gc.collect()
    _release_free_heap()


def _release_free_heap() -> None:
    """Give the heap's free pages back (glibc), so a baseline does not hold memory the load
    would then reuse without it showing."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline may read a little high
        pass


def _file_dtype(file: Path) -> torch.dtype:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        names = {handle.get_slice(key).get_dtype() for key in handle.keys()}
    by_name = {name: dtype for dtype, name in _SAFETENSORS_DTYPES.items()}
    if len(names) != 1 or next(iter(names)) not in by_name:
        raise ValueError(f"{file}: expected one of {sorted(by_name)} throughout, found {sorted(names)}")
    return by_name[names.pop()]


def measure_in_subprocess(config_path: Path, file: Path, load: str = "streamed", timeout: float = 300) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter (the ``bench`` package this one imported)."""
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "bench.memory_peak", "--config", str(config_path), "--file", str(file), "--load", load]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{load} load failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_memory_files(directory: Path, config: WanConfig = MEMORY_CONFIG) -> tuple[Path, Path]:
    """``config.json`` and a bf16 Krea-layout checkpoint of ``config`` in ``directory``."""
    directory = Path(directory)
    return write_wan_config(directory / "config.json", config), write_checkpoint(directory / "generator.safetensors", config)


def mib(value: int) -> float:
    return round(value / 2**20, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--load", choices=list(LOADS), default="streamed")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.config, args.file, args.load)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
