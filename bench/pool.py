"""The pipeline pool: memory estimates against what is held; /health while a pipeline loads.

Memory estimates against what loads and streams hold, and ``/health`` while a second pipeline
loads beside a streaming session.

    python bench/pool.py [--size 96x64] [--lines ...] [--skip memory health] [--json out.json]
    python bench/pool.py --device cuda [--sizes 576x320 832x480] [--layers N] [--json out.json]

Without ``--device``:

* **memory**: every registered pipeline with weights (and load variants), on synthetic
  weights written into a temp models dir (or ``--models-dir``): ``Pipeline.memory_estimate``
  against what the pool measures, as estimate ÷ measured. Weights: ``pipeline.memory_held()``
  after ``cls.load``; the prompt-embedding cache apart; stream: ``held_bytes(stream,
  exclude=pipeline)`` once its caches and bank are full, split by the attribute that holds them.
* **health**: ``daydream-scope`` on 127.0.0.1 with one aiortc session streaming ``passthrough``;
  ``krea-realtime-video`` (a Krea-layout generator of ``--load-layers`` layers of Wan2.1-1.3B's
  width, so the load takes seconds) then loads into the pool. ``GET /health`` is timed from its
  own process before and during the load; the session's frames are counted in both phases.

With ``--device cuda`` (or ``cpu``): the stream part at real width on random weights (Wan2.1-1.3B,
Krea's 14B, a Wan VAE of width ``--vae-base``): the estimate, from a ``config.json`` of the same
shape, against the tensors each stream holds after its caches fill, and on CUDA the allocator's
growth over the same chunks. It never fails on time; figures are findings. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import numpy as np
import torch

from bench.longlive import PROMPTS, machine, parse_size
from bench.memory_peak import write_checkpoint
from bench.passthrough import (
    HERE,
    Broken,
    ScopeSignaller,
    StreamClient,
    cpu_snapshot,
    free_port,
    load,
    log_tail,
    machine_busy,
    run_servers,
    spawn,
    summary,
    wait_healthy,
)
from bench.real_size import WAN_VAE_BASE, random_components, steady_chunk
from bench.report import write_json
from scope.models.artifacts import (
    KREA_GENERATOR,
    PIPELINE_ARTIFACTS,
    WAN_14B_CONFIG,
    local_path,
)
from scope.models.synthetic.generator import write_wan_config
from scope.models.synthetic.lora import write_synthetic_lora
from scope.models.synthetic.writer import clear_marker, write_synthetic
from scope.pipelines.base import LoadContext
from scope.pipelines.registry import get_pipeline_class, pipeline_ids
from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG, WAN_1_3B_CONFIG
from scope.streaming.memory_budget import held_bytes, tensor_storages
from scope.streaming.pattern import BITS, BLOCK

#: Variants beside each pipeline's defaults: the estimate has a branch for each.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "longlive+fp8": ("longlive", {"quantization": "fp8_e4m3fn"}),
    "longlive+vace": ("longlive", {"vace_enabled": True}),
    # A LoRA kept apart (counted) and one merged into the weights (not counted).
    "longlive+loras": ("longlive", {"loras": [{"path": "kept.safetensors", "merge_mode": "runtime_peft"},
                                              {"path": "merged.safetensors", "merge_mode": "permanent_merge"}]}),
}
#: Rank of the variants' LoRAs: large enough for the kept one to show in the weights.
LORA_RANK = 32
KREA = "krea-realtime-video"
MIB = 2**20
LOAD_TIMEOUT_S = 120.0


def memory_lines() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every registered pipeline that reads weights, then the variants."""
    lines = {pipeline_id: (pipeline_id, {}) for pipeline_id in pipeline_ids() if pipeline_id in PIPELINE_ARTIFACTS}
    return {**lines, **VARIANTS}


# What an object holds -------------------------------------------------------------------------


def attributes(value: Any) -> list[tuple[str, Any]]:
    """``value``'s own attributes, from its ``__dict__`` and its classes' ``__slots__`` (a
    module's parameter, buffer and submodule tables left out: they are walked as tensors)."""
    if isinstance(value, (torch.Tensor, dict, list, tuple, set, frozenset, str, bytes, type)):
        return []
    names = dict(getattr(value, "__dict__", None) or {}) if isinstance(getattr(value, "__dict__", None), dict) else {}
    for cls in type(value).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if name not in names and hasattr(value, name):
                names[name] = getattr(value, name)
    if isinstance(value, torch.nn.Module):
        for table in ("_parameters", "_buffers", "_modules"):
            names.pop(table, None)
    return list(names.items())


def parts(obj: Any, shared: set[tuple[str, int]] | frozenset = frozenset()) -> dict[str, int]:
    """Bytes ``obj`` holds beyond ``shared``, by the attribute holding them (plain objects split
    one level further, e.g. ``cache.layers`` / ``cache.cross``); a storage counts once, under
    the first attribute that reaches it."""
    taken = set(shared)
    out: dict[str, int] = {}
    for name, value in attributes(obj):
        inner = attributes(value)
        expand = bool(inner) and not isinstance(value, torch.nn.Module)
        for sub, item in (inner if expand else [("", value)]):
            own = {key: size for key, size in tensor_storages(item).items() if key not in taken}
            taken.update(own)
            if own:
                out[f"{name}.{sub}" if sub else name] = sum(own.values())
    return out


# Memory on synthetic weights ------------------------------------------------------------------


def input_video(stream, cls, width: int, height: int) -> np.ndarray | None:
    """Random input frames for a pipeline whose default mode is video (else None)."""
    if cls.info.default_mode != "video":
        return None
    gen = torch.Generator().manual_seed(0)
    shape = (stream.frames_needed({}), height, width, 3)
    return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).numpy()


def fill(stream, cls, width: int, height: int, **first: Any) -> int:
    """Run chunks until the stream's window (and any bank) is full; returns the chunks run."""
    video = input_video(stream, cls, width, height)
    stream.generate(video=video, **first)
    chunks = 1 + steady_chunk(stream)
    for _ in range(chunks - 1):
        stream.generate(video=video)
    return chunks


def measure_line(line: str, pipeline_id: str, extra: dict[str, Any], context: LoadContext, width: int, height: int) -> dict[str, Any]:
    """One pipeline: the estimate, the weights after load, a filled stream's own tensors."""
    cls = get_pipeline_class(pipeline_id)
    params = cls.load_params_model.model_validate({"height": height, "width": width, **extra})
    estimate = cls.memory_estimate(params, context)
    started = time.perf_counter()
    pipeline = cls.load(params, context)
    load_s = time.perf_counter() - started
    weights = pipeline.memory_held()  # what the pool records
    at_load = held_bytes(pipeline)
    weight_parts = parts(pipeline)
    stream = pipeline.open_stream()
    chunks = fill(stream, cls, width, height, prompts=PROMPTS[0])
    stream_bytes = held_bytes(stream, exclude=pipeline)  # what a session reports to the pool
    stream_parts = parts(stream, set(tensor_storages(pipeline)))
    kv = sum(size for name, size in stream_parts.items() if name.split(".")[0] in ("cache", "memory"))
    held_after, weights_after = held_bytes(pipeline), pipeline.memory_held()
    row = {
        "pipeline_id": pipeline_id,
        "load_params": extra,
        "load_s": round(load_s, 2),
        "weights": {
            "estimate_bytes": estimate.weights_bytes,
            "measured_bytes": weights,
            "ratio": _ratio(estimate.weights_bytes, weights),
            "parts_bytes": weight_parts,
            "after_streaming_bytes": weights_after,
        },
        "stream": {
            "estimate_bytes": estimate.stream_bytes,
            "measured_bytes": stream_bytes,
            "ratio": _ratio(estimate.stream_bytes, stream_bytes),
            "kv_bytes": kv,
            "ratio_to_kv": _ratio(estimate.stream_bytes, kv),
            "parts_bytes": stream_parts,
            "chunks": chunks,
        },
        # The prompt-embedding cache its streams share: the estimate counts it apart at its full
        # size; what the pipeline held beyond its weights after the load and after streaming.
        "cache": {
            "estimate_bytes": estimate.cache_bytes,
            "after_load_bytes": at_load - weights,
            "after_streaming_bytes": held_after - weights_after,
        },
    }
    del stream
    pipeline.unload()
    gc.collect()
    return row


def memory_section(models_dir: Path, temp: Path, width: int, height: int, lines: list[str]) -> dict[str, Any]:
    all_lines = memory_lines()
    context = LoadContext(models_dir, temp / "lora", temp / "assets")
    rows = {}
    for line in lines:
        pipeline_id, extra = all_lines[line]
        write_synthetic(models_dir, PIPELINE_ARTIFACTS[pipeline_id])
        for seed, lora in enumerate(extra.get("loras", ())):
            write_synthetic_lora(context.lora_dir / lora["path"], "peft", SYNTHETIC_WAN_CONFIG, seed, rank=LORA_RANK)
        rows[line] = measure_line(line, pipeline_id, extra, context, width, height)
        print(f"memory {line}:", json.dumps({k: rows[line][k]["ratio"] for k in ("weights", "stream")}), flush=True)
    skipped = [pipeline_id for pipeline_id in pipeline_ids() if pipeline_id not in PIPELINE_ARTIFACTS]
    return {"size": f"{width}x{height}", "dtype": _compute_dtype(), "lines": rows, "without_weights": skipped}


def _compute_dtype() -> str:
    from scope.pipelines.wan.device import compute_device

    device, dtype = compute_device()
    return f"{str(dtype).removeprefix('torch.')} on {device.type}"


def _ratio(estimate: int, measured: int) -> float | None:
    return round(estimate / measured, 3) if measured else None


# Stream caches at real width ------------------------------------------------------------------


def real_width_section(args: argparse.Namespace) -> dict[str, Any]:
    """Each line's stream estimate (from a config.json of the components' shape) against the
    tensors its stream holds once full, on random weights of real width."""
    from bench.krea import krea_components

    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    out: dict[str, Any] = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "sizes": {}}
    built: dict[bool, Any] = {}
    with tempfile.TemporaryDirectory(prefix="scope-bench-pool-") as temp:
        models_dir = Path(temp) / "models"
        context = LoadContext(models_dir, Path(temp) / "lora", Path(temp) / "assets")
        for size in args.sizes:
            width, height = parse_size(size)
            rows = {}
            for line in args.real_lines:
                pipeline_id, extra = memory_lines()[line]
                cls = get_pipeline_class(pipeline_id)
                krea = pipeline_id == KREA
                if krea not in built:
                    built.clear()  # one model at a time: Krea's 14B and the 1.3B do not share
                    gc.collect()
                    maker = krea_components if krea else random_components
                    built[krea] = maker(device, dtype, layers=args.layers, vae_base=args.vae_base)
                components = built[krea]
                write_wan_config(local_path(models_dir, *cls.config_file), components.generator.config)
                rows[line] = real_width_line(cls, extra, components, context, width, height)
                print(f"stream {size} {line}:", json.dumps({k: v for k, v in rows[line].items() if k != "parts_bytes"}), flush=True)
            out["sizes"][size] = rows
        config = next(iter(built.values())).generator.config if built else None
        out["layers"] = config.num_layers if config else None
    return out


def real_width_line(cls, extra: dict[str, Any], components, context: LoadContext, width: int, height: int) -> dict[str, Any]:
    params = cls.load_params_model.model_validate({"height": height, "width": width, **extra})
    estimate = cls.memory_estimate(params, context).stream_bytes
    config = components.generator.config
    embeds = torch.randn(1, config.text_len, config.text_dim, generator=torch.Generator().manual_seed(0)).mul_(0.1)
    cuda = components.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(components.device)
    pipeline = cls(params, components, synthetic=False)
    stream = pipeline.open_stream()
    chunks = fill(stream, cls, width, height, prompt_embeds=embeds.to(components.device, components.dtype))
    measured = held_bytes(stream, exclude=pipeline)  # what a session reports to the pool
    stream_parts = parts(stream, set(tensor_storages(pipeline)))
    kv = sum(size for name, size in stream_parts.items() if name.split(".")[0] in ("cache", "memory"))
    row = {
        "estimate_bytes": estimate, "measured_bytes": measured, "ratio": _ratio(estimate, measured),
        "kv_bytes": kv, "ratio_to_kv": _ratio(estimate, kv), "chunks": chunks, "parts_bytes": stream_parts,
    }
    if cuda:
        torch.cuda.synchronize()
        row["allocated_growth_bytes"] = torch.cuda.memory_allocated(components.device) - before
    del stream
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


# /health while a pipeline loads beside a streaming session ------------------------------------


def write_models(models_dir: Path, load_layers: int) -> None:
    """Synthetic weights for the warm-up load, and Krea's files with a generator of
    ``load_layers`` layers of Wan2.1-1.3B's width (bf16, Krea's layout) in place of the tiny one."""
    for pipeline_id in ("longlive", KREA):
        write_synthetic(models_dir, PIPELINE_ARTIFACTS[pipeline_id])
    config = dataclasses.replace(WAN_1_3B_CONFIG, num_layers=load_layers)
    config_path = local_path(models_dir, WAN_14B_CONFIG, WAN_14B_CONFIG.files[0])
    generator = local_path(models_dir, KREA_GENERATOR, KREA_GENERATOR.files[0])
    write_wan_config(config_path, config)
    write_checkpoint(generator, config)
    for path in (config_path, generator):
        clear_marker(path)


async def start_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ)
    for name in ("models", "logs", "assets", "lora", "runtime"):
        (tmp / name).mkdir(exist_ok=True)
    env.update({
        "DAYDREAM_SCOPE_MODELS_DIR": str(tmp / "models"), "DAYDREAM_SCOPE_LOGS_DIR": str(tmp / "logs"),
        "DAYDREAM_SCOPE_ASSETS_DIR": str(tmp / "assets"), "DAYDREAM_SCOPE_LORA_DIR": str(tmp / "lora"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "PIPELINE": "",
    })
    env.pop("HF_TOKEN", None)  # no TURN lookups: host candidates only
    port = free_port()
    log = tmp / "server.log"
    started = time.monotonic()
    server = spawn(["daydream-scope", "--port", str(port), "-N", "--host", "127.0.0.1"], env=env, log=log)
    base_url = f"http://127.0.0.1:{port}"
    await wait_healthy(server, base_url, log, started)
    return server, base_url


async def unload(http: httpx.AsyncClient, pipeline_id: str) -> None:
    status = (await http.get("/api/v1/pipeline/status")).json()
    for entry in status.get("pipelines", []):
        if entry["pipeline_id"] == pipeline_id:
            body = {"pipeline_id": pipeline_id, "load_params": entry["load_params"]}
            reply = await http.post("/api/v1/pipeline/unload", json=body)
            if reply.status_code != 200:
                raise Broken(f"unloading {pipeline_id} answered {reply.status_code}: {reply.text[:300]}")


def frames_between(client: StreamClient, start: float, end: float) -> dict[str, Any]:
    """Frames the session received in ``[start, end)``: count, rate and the longest gap."""
    times = [t for t, _ in client.arrivals if start <= t < end]
    edges = [start, *times, end]
    seconds = end - start
    return {
        "frames": len(times),
        "fps": round(len(times) / seconds, 2) if seconds > 0 else None,
        "longest_gap_ms": round(1000.0 * float(max(np.diff(edges))), 1),
    }


def latency_phase(latencies: list[float], sent_at: list[float], start: float, end: float) -> dict[str, Any]:
    return summary([lat for lat, t in zip(latencies, sent_at) if start <= t <= end])


async def health_section(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="scope-bench-pool-"))
    width, height = parse_size(args.stream_size)
    load_params = dict(zip(("width", "height"), parse_size(args.load_size)))
    try:
        started = time.perf_counter()
        write_models(tmp / "models", args.load_layers)
        written_s = time.perf_counter() - started
        server, base_url = await start_server(tmp)
        async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as http:
            # The first causal load of a process imports and sets up what every later one reuses.
            warm_s = await load(http, load_params, "longlive", timeout_s=LOAD_TIMEOUT_S)
            await unload(http, "longlive")
            await load(http, None)  # passthrough, current: the session's pipeline
            client = StreamClient(ScopeSignaller(http), args.fps, width, height)
            try:
                await client.start()
                await client.wait_first()
                run = await probe_during_load(http, base_url, server.pid, load_params, args)
            finally:
                await client.close()
    except Broken:
        print(f"server log (last lines):\n{log_tail(tmp / 'server.log', 20)}", file=sys.stderr)
        raise
    finally:
        if not args.keep_temp:
            shutil.rmtree(tmp, ignore_errors=True)
    latencies, sent_at = run["latencies_ms"], run["sent_at"]
    first, load_start, load_end, tail_end = (run[key] for key in ("baseline_start", "load_start", "load_end", "tail_end"))
    baseline = latency_phase(latencies, sent_at, first, load_start)
    during = latency_phase(latencies, sent_at, load_start, load_end)
    session_during = frames_between(client, load_start, load_end)
    return {
        "config": {"stream_size": args.stream_size, "fps": args.fps, "load_size": args.load_size,
                   "load_layers": args.load_layers, "health_interval": args.health_interval},
        "files_written_s": round(written_s, 2),
        "warm_up_load_s": round(warm_s, 2),
        "load_s": round(load_end - load_start, 2),
        "health_ms": {"baseline": baseline, "during_load": during,
                      "after_load": latency_phase(latencies, sent_at, load_end, tail_end)},
        "p99_ratio": _quotient(during["p99"], baseline["p99"]),
        "p50_ratio": _quotient(during["p50"], baseline["p50"]),
        "probe_failures": run["failures"],
        "cores": run["cores"],
        "session": {
            "baseline": frames_between(client, first, load_start),
            "during_load": session_during,
            "after_load": frames_between(client, load_end, tail_end),
            # Frames kept coming: no pause as long as half the load (a session frozen behind the
            # load would pause for all of it).
            "kept_streaming": session_during["frames"] > 0 and session_during["longest_gap_ms"] < 500 * (load_end - load_start),
            "listed_after_load": run["sessions"],
        },
        "pool": run["pool"],
    }


async def probe_during_load(
    http: httpx.AsyncClient, base_url: str, server_pid: int, load_params: dict[str, int], args: argparse.Namespace
) -> dict[str, Any]:
    """Time ``/health`` from its own process for ``--baseline`` seconds, then while Krea loads,
    then for ``--tail`` seconds; returns the probe's figures, the phases' bounds and the cores
    the server and the whole machine used in each phase."""
    argv = [sys.executable, str(HERE / "health_probe.py"), base_url + "/health", "--count", "1000000",
            "--interval", str(args.health_interval), "--max-seconds", str(args.baseline + LOAD_TIMEOUT_S + 30)]
    probe = spawn(argv, stdout=subprocess.PIPE)
    marks = []

    def mark() -> float:
        marks.append((time.monotonic(), cpu_snapshot(server_pid), machine_busy()))
        return marks[-1][0]

    try:
        await asyncio.sleep(0.5)  # the probe's own start-up
        mark()
        await asyncio.sleep(args.baseline)
        load_start = mark()
        await load(http, load_params, KREA, poll_s=0.05, timeout_s=LOAD_TIMEOUT_S)
        load_end = mark()
        await asyncio.sleep(args.tail)
        tail_end = mark()
    finally:
        probe.send_signal(signal.SIGINT)
    out, _ = await asyncio.get_running_loop().run_in_executor(None, probe.communicate, None, 30)
    try:
        data = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise Broken("the /health probe printed nothing") from None
    status = (await http.get("/api/v1/pipeline/status")).json()
    sessions = (await http.get("/api/v1/webrtc/sessions")).json()["sessions"]
    return {
        "latencies_ms": data["latencies_ms"], "sent_at": data["sent_at"], "failures": len(data["failures"]),
        "baseline_start": marks[0][0], "load_start": load_start, "load_end": load_end, "tail_end": tail_end,
        "cores": {phase: _cores(a, b) for phase, a, b in zip(("baseline", "during_load", "after_load"), marks, marks[1:])},
        "sessions": [{"pipeline_id": s.get("pipeline_id"), "state": s.get("stats", {}).get("state")} for s in sessions],
        "pool": {e["pipeline_id"]: {"status": e["status"], "sessions": len(e["sessions"]), "current": e.get("current"),
                                    "memory": e["memory"]} for e in status.get("pipelines", [])},
    }


def _cores(a: tuple, b: tuple) -> dict[str, float | None]:
    """Cores the server (all threads, and its event-loop thread) and the machine used between two marks."""
    seconds = b[0] - a[0]
    server = {"server": None, "server_loop": None}
    if a[1] and b[1] and seconds > 0:
        server = {"server": round((b[1]["total"] - a[1]["total"]) / seconds, 2),
                  "server_loop": round((b[1]["main"] - a[1]["main"]) / seconds, 2)}
    return {**server, "machine": round((b[2] - a[2]) / seconds, 2) if seconds > 0 else None}


def _quotient(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


# Report ---------------------------------------------------------------------------------------


def print_memory(section: dict[str, Any]) -> None:
    print(f"\n== Memory estimate ÷ measured, synthetic weights at {section['size']} ({section['dtype']}) ==")
    print(f"  {'line':<20} {'weights est':>11} {'measured':>9} {'ratio':>6}   {'cache est':>9} {'load':>6} {'used':>6}"
          f"   {'stream est':>10} {'measured':>9} {'ratio':>6} {'÷ KV':>6}")
    for line, row in section["lines"].items():
        w, c, s = row["weights"], row["cache"], row["stream"]
        print(f"  {line:<20} {_mib(w['estimate_bytes']):>11} {_mib(w['measured_bytes']):>9} {_fmt(w['ratio']):>6}   "
              f"{_mib(c['estimate_bytes']):>9} {_mib(c['after_load_bytes']):>6} {_mib(c['after_streaming_bytes']):>6}   "
              f"{_mib(s['estimate_bytes']):>10} {_mib(s['measured_bytes']):>9} {_fmt(s['ratio']):>6} {_fmt(s['ratio_to_kv']):>6}")
    print("  (MiB; cache: the prompt embeddings the streams share, estimated at full size, held after the load"
          " and after streaming one prompt; ÷ KV: the stream estimate against the attention caches and bank alone)")
    for line, row in section["lines"].items():
        stream_parts = ", ".join(f"{name} {_mib(size)}" for name, size in row["stream"]["parts_bytes"].items())
        weight_parts = ", ".join(f"{name} {_mib(size)}" for name, size in row["weights"]["parts_bytes"].items())
        print(f"  {line}: stream after {row['stream']['chunks']} chunks: {stream_parts}")
        print(f"  {'':<{len(line)}}  weights and cache after the load: {weight_parts}")
    if section["without_weights"]:
        print(f"  no weights, estimate 0: {', '.join(section['without_weights'])}")


def print_real_width(section: dict[str, Any]) -> None:
    print(f"\n== Stream estimate ÷ measured at real width ({section['layers']} layers, {section['dtype']} on {section['device']}) ==")
    for size, rows in section["sizes"].items():
        for line, row in rows.items():
            growth = row.get("allocated_growth_bytes")
            print(f"  {size} {line:<18} est {_mib(row['estimate_bytes']):>9}  measured {_mib(row['measured_bytes']):>9}  "
                  f"ratio {_fmt(row['ratio']):>6}  ÷ KV {_fmt(row['ratio_to_kv']):>6}"
                  + (f"  allocator growth {_mib(growth)}" if growth is not None else ""))
            print(f"    {', '.join(f'{name} {_mib(size)}' for name, size in row['parts_bytes'].items())}")


def print_health(section: dict[str, Any]) -> None:
    cfg = section["config"]
    print(f"\n== /health while {KREA} ({cfg['load_layers']} layers of 1.3B width) loads beside a passthrough session ==")
    print(f"  load {section['load_s']:.2f} s (warm-up load {section['warm_up_load_s']:.2f} s); "
          f"one request every {cfg['health_interval'] * 1000:.0f} ms")
    print(f"  {'phase':<12} {'n':>5} {'p50':>7} {'p99':>7} {'max':>7}   {'frames':>6} {'fps':>6} {'longest gap':>12}"
          f"   {'server':>6} {'loop':>5} {'busy':>5}")
    for phase in ("baseline", "during_load", "after_load"):
        h, f, c = section["health_ms"][phase], section["session"][phase], section["cores"][phase]
        print(f"  {phase:<12} {h['n']:>5} {_fmt(h['p50'], 2):>7} {_fmt(h['p99'], 2):>7} {_fmt(h['max'], 1):>7}   "
              f"{f['frames']:>6} {_fmt(f['fps'], 1):>6} {_fmt(f['longest_gap_ms'], 0):>9} ms   "
              f"{_fmt(c['server'], 2):>6} {_fmt(c['server_loop'], 2):>5} {_fmt(c['machine'], 2):>5}")
    print(f"  (ms; server: cores the server used, loop: its event-loop thread, busy: the whole machine, {os.cpu_count()} cores)")
    print(f"  p99 during ÷ baseline {_fmt(section['p99_ratio'], 2)}, p50 {_fmt(section['p50_ratio'], 2)}; "
          f"probe failures {section['probe_failures']}")
    print(f"  session kept streaming during the load: {section['session']['kept_streaming']}; "
          f"sessions after it: {section['session']['listed_after_load']}")
    memory = section["pool"].get(KREA, {}).get("memory", {})
    estimated, measured = memory.get("estimated_weights_bytes"), memory.get("measured_weights_bytes")
    if estimated and measured:
        print(f"  the pool's {KREA} weights (a real-width file): estimated {_mib(estimated)}, measured {_mib(measured)}"
              f" MiB, ratio {_fmt(_ratio(estimated, measured))}; its prompt cache at full size {_mib(memory['cache_bytes'])} MiB")


def _mib(size: int | None) -> str:
    return "n/a" if size is None else f"{size / MIB:.2f}"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


# Main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    lines = list(memory_lines())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep-temp", action="store_true", help="keep the server's temp dir (its log)")
    synthetic = parser.add_argument_group("synthetic weights (no --device)")
    synthetic.add_argument("--skip", nargs="*", default=[], choices=["memory", "health"])
    synthetic.add_argument("--size", default="96x64", help="WxH of the memory section's loads")
    synthetic.add_argument("--lines", nargs="*", default=lines, choices=lines, help="memory section: which pipelines")
    synthetic.add_argument("--models-dir", type=Path, default=None, help="synthetic weights, written where missing")
    synthetic.add_argument("--stream-size", default="256x256", help="WxH of the passthrough session")
    synthetic.add_argument("--fps", type=float, default=30.0)
    synthetic.add_argument("--load-layers", type=int, default=3, help="layers of 1.3B width in Krea's generator (3: 0.27 GB in bf16)")
    synthetic.add_argument("--load-size", default="96x64", help="WxH the pipeline loads at")
    synthetic.add_argument("--baseline", type=float, default=3.0, help="seconds of /health before the load")
    synthetic.add_argument("--tail", type=float, default=1.0, help="seconds of /health after the load")
    synthetic.add_argument("--health-interval", type=float, default=0.02)
    real = parser.add_argument_group("stream caches at real width on random weights")
    real.add_argument("--device", choices=["cuda", "cpu"], default=None)
    real.add_argument("--sizes", nargs="*", default=["576x320", "832x480"])
    ids = [line for line in lines if line in PIPELINE_ARTIFACTS]
    real.add_argument("--real-lines", nargs="*", default=ids, choices=ids, help="with --device: which pipelines")
    real.add_argument("--layers", type=int, default=None, help="fewer transformer layers than the real ones (a CPU try)")
    real.add_argument("--vae-base", type=int, default=WAN_VAE_BASE, help="Wan VAE base width (real: 96)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if args.device is not None:
        from scope.pipelines.wan.device import compute_device

        if compute_device()[0].type != args.device:
            parser.error(f"--device {args.device}: the estimate assumes {compute_device()[0].type}'s dtype on this machine")
    if args.load_layers < 1:
        parser.error("--load-layers must be at least 1")
    width, height = parse_size(args.stream_size)
    if width < BITS * BLOCK or height < BLOCK:
        parser.error(f"--stream-size: the frame index stamp needs at least {BITS * BLOCK}x{BLOCK} pixels")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {"machine": machine()}
    print(json.dumps(report["machine"]), flush=True)
    if args.device is not None:
        report["real_width"] = real_width_section(args)
        print_real_width(report["real_width"])
        write_json(args.json, report)
        return 0
    if "memory" not in args.skip:
        width, height = parse_size(args.size)
        with tempfile.TemporaryDirectory(prefix="scope-bench-pool-") as temp:
            models_dir = args.models_dir or Path(temp) / "models"
            report["memory"] = memory_section(models_dir, Path(temp), width, height, args.lines)
        print_memory(report["memory"])
    if "health" not in args.skip:
        print("\n/health: starting the server ...", flush=True)
        status, health = run_servers(lambda: health_section(args), "the server")
        if health is None:
            return status
        report["health"] = health
        print_health(health)
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
