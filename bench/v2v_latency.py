"""Video-to-video through the server: latency, delivered FPS and dropped input of
``streamdiffusionv2`` beside ``passthrough``, in one run.

    python bench/v2v_latency.py [--seconds 20] [--warmup 3] [--warmup-frames 45] [--fps 30] [--size 512] [--chunks 6] [--json out.json]
    python bench/v2v_latency.py --device cuda [--sizes 512x512] [--warmup-chunks 8] [--timed 20] [--json out.json]

Without ``--device``: starts ``daydream-scope --synthetic`` on 127.0.0.1 (synthetic weights are
written into ``--models-dir``, default a temp dir). For ``passthrough`` and then the pipeline under
test (``--pipeline``), an aiortc peer (the Python client's ``ScopePeer``) sends a moving test
pattern paced at ``--fps`` and receives the output; after a warm-up (``--warmup`` seconds and
``--warmup-frames`` frames), ``--seconds`` are measured: the server's input-to-output latency (its ``stats`` messages), the frames per second the
peer receives, the input frames received, used and dropped, and the server's chunk time. Then,
with the server stopped, the per-chunk split (text / DiT / VAE) of the pipeline under test in this
process on the same pattern frames. Every figure is also given against ``passthrough``.

With ``--device cuda`` (or ``cpu``, or ``meta`` for the plan alone): ``streamdiffusionv2`` at its
real size on random weights (``bench/real_size.py``), beside the paper's figure.

It never fails on time; figures are findings. See bench/README.md for the definitions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
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

from bench.longlive import PROMPTS, machine, parse_size, split_figures, timed_chunk
from bench.passthrough import (
    Broken, fmt, free_port, load, log_tail, ratio, run_servers, server_command, spawn, stop_children, wait_healthy,
    wait_no_sessions,
)
from bench.report import write_json
from scope.client.peer import ReceivedFrame, ScopePeer
from scope.pipelines.passthrough import CHUNK_FRAMES as PASSTHROUGH_CHUNK
from scope.streaming.pattern import PatternTrack, pattern_frame
from scope.streaming.tracks import LATENCY_WINDOW

BASELINE = "passthrough"
V2V_LINE = "streamdiffusionv2"
#: The ``stats`` counters whose growth over the window is reported.
COUNTERS = ("input_frames_received", "input_frames_used", "input_frames_dropped", "chunk")

# Bounds: every wait has one.
SERVER_START_TIMEOUT_S = 60.0
LOAD_TIMEOUT_S = 300.0
FIRST_FRAME_TIMEOUT_S = 120.0
WARMUP_LIMIT_S = 180.0
#: Frames received before the window opens: the stats' latency covers the last 30 frames sent,
#: so after these it holds none of a first chunk's (up to 13 frames, text encoding included).
WARMUP_FRAMES = LATENCY_WINDOW + 15
#: Stats come twice a second: wait for the first one after the window, which closes the counters.
GRACE_S = 0.6

# Anchors (performance notes §1.1, §2.4, §4, §5.2 G3).
ANCHOR_FPS = "G3: >= 20 FPS on one H100 at 512x512; standalone 17-22 FPS on an RTX 4080 (scope #559)"
ANCHOR_LATENCY = "G3: <= 2 chunks + 50 ms added; Scope #559 had 10-13 s (a backlog)"
ANCHOR_BOUND = "FLOP bound on one H100: 125-157 FPS (DiT + encode + decode, 512x512, 2 steps, window 6)"


# The server ------------------------------------------------------------------------------------


async def start_server(tmp: Path, models_dir: Path, command: str | None) -> tuple[str, float]:
    """``daydream-scope --synthetic`` on a free loopback port, its own temp dirs; (base URL, seconds)."""
    env = dict(os.environ)
    for name in ("logs", "assets", "lora", "runtime"):
        (tmp / name).mkdir(exist_ok=True)
    env.update({
        "DAYDREAM_SCOPE_MODELS_DIR": str(models_dir),
        "DAYDREAM_SCOPE_LOGS_DIR": str(tmp / "logs"),
        "DAYDREAM_SCOPE_ASSETS_DIR": str(tmp / "assets"),
        "DAYDREAM_SCOPE_LORA_DIR": str(tmp / "lora"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "PIPELINE": "",
    })
    env.pop("HF_TOKEN", None)  # no TURN lookups: host candidates only
    port = free_port()
    log = tmp / "server.log"
    started = time.monotonic()
    server = spawn([*server_command(command), "--port", str(port), "-N", "--host", "127.0.0.1", "--synthetic"],
                   env=env, log=log)
    base_url = f"http://127.0.0.1:{port}"
    await wait_healthy(server, base_url, log, started)
    return base_url, time.monotonic() - started


# One streaming session -------------------------------------------------------------------------


def initial_parameters(pipeline_id: str) -> dict[str, Any]:
    params: dict[str, Any] = {"input_mode": "video"}
    if pipeline_id != BASELINE:
        params["prompts"] = [{"text": PROMPTS[0], "weight": 1.0}]
    return params


async def stream_run(http: httpx.AsyncClient, pipeline_id: str, args: argparse.Namespace) -> dict[str, Any]:
    """Load ``pipeline_id``, stream the pattern through it, and measure a steady-state window."""
    load_s = await load(http, {"height": args.height, "width": args.width}, pipeline_id, 0.05, LOAD_TIMEOUT_S)
    arrivals: list[float] = []
    stats: list[tuple[float, dict[str, Any]]] = []
    first = asyncio.Event()

    def on_frame(frame: ReceivedFrame) -> None:
        arrivals.append(frame.at)
        first.set()

    def on_message(raw: str | bytes) -> None:
        with contextlib.suppress(ValueError):
            message = json.loads(raw)
            if isinstance(message, dict) and message.get("type") == "stats":
                stats.append((time.monotonic(), message))

    peer = ScopePeer(PatternTrack(fps=args.fps, width=args.width, height=args.height), on_frame=on_frame)
    peer.channel.on("message", on_message)
    session_id = None
    try:
        body = await peer.create_offer()
        body["initialParameters"] = initial_parameters(pipeline_id)
        offered = time.monotonic()
        reply = await http.post("/api/v1/webrtc/offer", json=body)
        if reply.status_code != 200:
            raise Broken(f"the offer for {pipeline_id} answered {reply.status_code}: {reply.text[:300]}")
        answer = reply.json()
        session_id = answer["sessionId"]
        await peer.accept_answer(answer["sdp"], answer["type"])
        try:
            await asyncio.wait_for(first.wait(), FIRST_FRAME_TIMEOUT_S)
        except TimeoutError:
            raise Broken(f"{pipeline_id}: no frame came back within {FIRST_FRAME_TIMEOUT_S:.0f} s") from None
        warm = await warmed_up(arrivals, args.warmup_frames, arrivals[0] + args.warmup)
        start = max(arrivals[0] + args.warmup, arrivals[args.warmup_frames - 1] if warm else time.monotonic())
        end = start + args.seconds
        await asyncio.sleep(max(0.0, end - time.monotonic()) + GRACE_S)
    finally:
        await peer.close()
        if session_id is not None:
            with contextlib.suppress(httpx.HTTPError):
                await http.delete(f"/api/v1/webrtc/sessions/{session_id}")
            await wait_no_sessions(http)
    result = window_figures(arrivals, stats, start, end)
    result["warmup_s"] = round(start - arrivals[0], 2)
    result["warmup_frames_reached"] = warm
    result["stats_timeline"] = [
        [round(t - start, 2), m.get("latency_ms"), m.get("latency_p95_ms"), m.get("chunk"), m.get("fps")] for t, m in stats
    ]
    result["load_s"] = round(load_s, 2)
    result["first_frame_s"] = round(arrivals[0] - offered, 2)
    return result


async def warmed_up(arrivals: list[float], frames: int, not_before: float) -> bool:
    """Wait until ``frames`` frames have arrived and ``not_before`` has passed (False: the limit came first)."""
    deadline = time.monotonic() + WARMUP_LIMIT_S
    while len(arrivals) < frames or time.monotonic() < not_before:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def window_figures(arrivals: list[float], stats: list[tuple[float, dict]], start: float, end: float) -> dict[str, Any]:
    """The figures of the window ``[start, end)``.

    ``latency_ms`` and ``latency_p95_ms`` of every ``stats`` message inside the window each
    cover the last 30 frames sent; the window's p50 is their median, its p95 the median of the
    p95s (``latency_p95_max_ms``: the largest). The counters grow from the last message before
    the window to the first one after it.
    """
    seconds = end - start
    inside = [m for t, m in stats if start <= t < end]
    before = [(t, m) for t, m in stats if t < start][-1:] or [(t, m) for t, m in stats if start <= t < end][:1]
    after = [(t, m) for t, m in stats if t >= end][:1] or [(t, m) for t, m in stats if start <= t < end][-1:]
    p50s = [m["latency_ms"] for m in inside if m.get("latency_ms") is not None]
    p95s = [m["latency_p95_ms"] for m in inside if m.get("latency_p95_ms") is not None]
    frames = sum(1 for t in arrivals if start <= t < end)
    result: dict[str, Any] = {
        "seconds": round(seconds, 2),
        "frames_received": frames,
        "delivered_fps": round(frames / seconds, 2),
        "latency_p50_ms": median(p50s),
        "latency_p95_ms": median(p95s),
        "latency_p95_max_ms": round(max(p95s), 1) if p95s else None,
        "server_chunk_ms": median([m["chunk_ms"] for m in inside if m.get("chunk_ms")]),
        "stats_messages": len(inside),
    }
    if before and after and after[0][0] > before[0][0]:
        (t0, m0), (t1, m1) = before[0], after[0]
        growth = {key: m1[key] - m0[key] for key in COUNTERS}
        span = t1 - t0
        result.update({f"{key}": growth[key] for key in COUNTERS if key != "chunk"})
        result["chunks"] = growth["chunk"]
        result["counters_seconds"] = round(span, 2)
        result["input_fps"] = round(growth["input_frames_received"] / span, 2)
        received = growth["input_frames_received"]
        result["input_dropped_fraction"] = round(growth["input_frames_dropped"] / received, 3) if received else None
    else:
        result.update({key: None for key in COUNTERS if key != "chunk"})
        result.update({"chunks": None, "counters_seconds": None, "input_fps": None, "input_dropped_fraction": None})
    if result["latency_p50_ms"] is not None and result["server_chunk_ms"] is not None:
        # What the latency holds beyond computing the chunk: waiting for input, queueing for playback.
        result["latency_beyond_chunk_ms"] = round(result["latency_p50_ms"] - result["server_chunk_ms"], 1)
    return result


def versus(rows: dict[str, dict[str, Any]], line: str) -> dict[str, Any]:
    """The line's figures against passthrough's from the same run (ratios and added ms)."""
    ours, base = rows[line], rows[BASELINE]

    def r(key: str) -> float | None:
        value = ratio(ours.get(key), base.get(key))
        return round(value, 3) if value is not None else None

    def added(key: str, digits: int = 1) -> float | None:
        if ours.get(key) is None or base.get(key) is None:
            return None
        return round(ours[key] - base[key], digits)

    return {
        "latency_p50_ratio": r("latency_p50_ms"), "latency_p50_added_ms": added("latency_p50_ms"),
        "latency_p95_ratio": r("latency_p95_ms"), "latency_p95_added_ms": added("latency_p95_ms"),
        "delivered_fps_ratio": r("delivered_fps"),
        "dropped_fraction_added": added("input_dropped_fraction", 3),
    }


# The per-chunk split in this process -----------------------------------------------------------


def chunk_split(models_dir: Path, pipeline_id: str, width: int, height: int, chunks: int) -> dict[str, Any]:
    """Text / DiT / VAE ms of ``chunks`` chunks after the first, fed consecutive pattern frames."""
    import scope

    pipeline = scope.load_pipeline(pipeline_id, models_dir=models_dir, synthetic=True, height=height, width=width)
    try:
        stream = pipeline.open_stream()
        needed = stream.frames_needed({})
        sent = 0

        def video() -> np.ndarray:
            nonlocal sent
            frames = np.stack([pattern_frame(sent + k, width, height) for k in range(needed)])
            sent += needed
            return frames

        first = timed_chunk(stream, video=video(), prompts=PROMPTS[0])
        rows = [timed_chunk(stream, video=video()) for _ in range(chunks)]
    finally:
        pipeline.unload()
    return {"input_frames_per_chunk": needed, **split_figures(first, rows)}


# Real size on random weights ------------------------------------------------------------------


def real_size(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """``bench/causal_pipelines.py``'s real-size section for ``streamdiffusionv2`` alone, then the anchors."""
    from bench.causal_pipelines import real_size_sections
    from bench.real_size import PAPER_FPS, paper_note

    options = argparse.Namespace(device=args.device, layers=args.layers, vae_base=args.vae_base, sizes=args.sizes,
                                 lines=[V2V_LINE], warmup=args.warmup_chunks, timed=args.timed)
    real_size_sections(options, report)
    report["paper"] = {"fps": PAPER_FPS[V2V_LINE], "setup": paper_note(V2V_LINE, args.sizes[0])}
    ours = "the plan only" if args.device == "meta" else f"one {args.device} device"
    print(f"reference: {report['paper']['setup']}; ours: {ours}", flush=True)
    print(f"reference: {ANCHOR_FPS}; {ANCHOR_BOUND}", flush=True)


# Report ---------------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    cfg = report["config"]
    line = cfg["pipeline"]
    rows, vs = report["stream"], report["vs_passthrough"]
    base, ours = rows[BASELINE], rows[line]
    print()
    print(f"== V2V through the server: {cfg['width']}x{cfg['height']} pattern paced at {cfg['fps']:g} FPS, "
          f"{cfg['seconds']:g} s after a warm-up of {cfg['warmup']:g} s and {cfg['warmup_frames']} frames, synthetic weights ==")

    def row(label: str, a: Any, b: Any, c: Any = "", anchor: str = "") -> None:
        print(f"  {label:<38} {a!s:>12} {b!s:>18} {c!s:>10}   {anchor}")

    row("", BASELINE, line, "vs base")
    interval = 1000.0 / cfg["fps"]
    row("latency p50 (ms, server stats)", fmt(base["latency_p50_ms"]), fmt(ours["latency_p50_ms"]),
        f"x{fmt(vs['latency_p50_ratio'], 2)}", f"passthrough by design ~{(PASSTHROUGH_CHUNK - 1) * interval:.0f} ms; {ANCHOR_LATENCY}")
    row("latency p95 (ms, median of stats)", fmt(base["latency_p95_ms"]), fmt(ours["latency_p95_ms"]),
        f"x{fmt(vs['latency_p95_ratio'], 2)}")
    row("latency p95, largest (ms)", fmt(base["latency_p95_max_ms"]), fmt(ours["latency_p95_max_ms"]))
    row("delivered FPS (at the peer)", fmt(base["delivered_fps"], 2), fmt(ours["delivered_fps"], 2),
        f"x{fmt(vs['delivered_fps_ratio'], 3)}", f"source {cfg['fps']:g}; {ANCHOR_FPS}")
    counts = "{} / {} / {}"
    row("input received / used / dropped", counts.format(base["input_frames_received"], base["input_frames_used"],
        base["input_frames_dropped"]), counts.format(ours["input_frames_received"], ours["input_frames_used"],
        ours["input_frames_dropped"]))
    row("input dropped fraction", fmt(base["input_dropped_fraction"], 3), fmt(ours["input_dropped_fraction"], 3),
        f"+{fmt(vs['dropped_fraction_added'], 3)}", "passed over so each chunk takes the newest frame")
    row("chunks (server)", fmt(base["chunks"]), fmt(ours["chunks"]))
    row("chunk ms (server stats, median)", fmt(base["server_chunk_ms"]), fmt(ours["server_chunk_ms"]))
    row("latency p50 beyond the chunk (ms)", fmt(base.get("latency_beyond_chunk_ms")), fmt(ours.get("latency_beyond_chunk_ms")),
        "", "waiting for input + queued for playback")
    row("load s / first frame s / warm-up s", f"{base['load_s']} / {base['first_frame_s']} / {base['warmup_s']}",
        f"{ours['load_s']} / {ours['first_frame_s']} / {ours['warmup_s']}")
    for name, data in ((BASELINE, base), (line, ours)):
        if not data["warmup_frames_reached"]:
            print(f"  note: {name} sent fewer than {cfg['warmup_frames']} frames in {WARMUP_LIMIT_S:.0f} s: its latency "
                  "figures include the first chunk's frames")
    split = report.get("chunk_split")
    if split:
        print()
        print(f"== Per-chunk split, {line} in this process (same size, pattern frames, server stopped) ==")
        print(f"  text {split['text_ms']} ms, DiT {split['dit_ms']} ms, VAE {split['vae_ms']} ms, wall {split['wall_ms']} ms "
              f"({split['wall_spread_ms']}), {split['frames_per_chunk']} frames from {split['input_frames_per_chunk']} "
              f"input frames: {split['fps']} FPS")
        first = split["first_chunk"]
        print(f"  first chunk: text {first['text_ms']} ms, DiT {first['dit_ms']} ms, VAE {first['vae_ms']} ms, "
              f"wall {first['wall_ms']} ms, {first['frames']} frames")
        if ours["server_chunk_ms"]:
            print(f"  server chunk ms / in-process wall ms: {fmt(report['server_vs_in_process'], 2)}")


# Main ----------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "machine": machine(),
        "config": {"pipeline": args.pipeline, "width": args.width, "height": args.height, "fps": args.fps,
                   "seconds": args.seconds, "warmup": args.warmup, "warmup_frames": args.warmup_frames,
                   "chunks": args.chunks},
    }
    print(json.dumps(report["machine"]), flush=True)
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            loop.add_signal_handler(sig, task.cancel)  # wakes the loop at once; cleanup runs below
    tmp = Path(tempfile.mkdtemp(prefix="scope-bench-"))
    models_dir = args.models_dir or tmp / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    try:
        print("starting the server ...", flush=True)
        base_url, report["server_start_s"] = await start_server(tmp, models_dir, args.server_command)
        report["stream"] = {}
        async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as http:
            for pipeline_id in (BASELINE, args.pipeline):
                print(f"streaming: {pipeline_id} (warm-up {args.warmup:g} s and {args.warmup_frames} frames, then {args.seconds:g} s) ...",
                      flush=True)
                report["stream"][pipeline_id] = await stream_run(http, pipeline_id, args)
                brief = {k: v for k, v in report["stream"][pipeline_id].items() if k != "stats_timeline"}
                print(f"{pipeline_id}:", json.dumps(brief), flush=True)
    except Broken:
        print(f"server log (last lines):\n{log_tail(tmp / 'server.log', 20)}", file=sys.stderr)
        raise
    finally:
        stop_children()
    try:
        report["vs_passthrough"] = versus(report["stream"], args.pipeline)
        if args.chunks > 0:
            print(f"chunk split: {args.pipeline} in this process ...", flush=True)
            split = chunk_split(models_dir, args.pipeline, args.width, args.height, args.chunks)
            report["chunk_split"] = split
            report["server_vs_in_process"] = ratio(report["stream"][args.pipeline]["server_chunk_ms"], split["wall_ms"])
    finally:
        if not args.keep_temp:
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    stream = parser.add_argument_group("through the server (no --device)")
    stream.add_argument("--pipeline", default=V2V_LINE, help="the pipeline measured beside passthrough")
    stream.add_argument("--seconds", type=float, default=20.0, help="measured window per pipeline (default 20)")
    stream.add_argument("--warmup", type=float, default=3.0, help="seconds after the first frame left out (default 3)")
    stream.add_argument("--warmup-frames", type=int, default=WARMUP_FRAMES,
                        help=f"frames received before the window opens, at least (default {WARMUP_FRAMES})")
    stream.add_argument("--fps", type=float, default=30.0, help="rate of the source (default 30)")
    stream.add_argument("--size", default="512", help="source and pipeline size: 512 or WIDTHxHEIGHT (default 512)")
    stream.add_argument("--chunks", type=int, default=6, help="chunks of the in-process split after the first (0 skips)")
    stream.add_argument("--models-dir", type=Path, default=None, help="where synthetic weights are written (default: a temp dir)")
    stream.add_argument("--server-command", help="command that starts the server instead of daydream-scope")
    stream.add_argument("--keep-temp", action="store_true", help="keep the temp dirs (server log) for inspection")
    real = parser.add_argument_group("real size on random weights")
    real.add_argument("--device", choices=["cuda", "cpu", "meta"], default=None, help="run at real size on this device")
    real.add_argument("--sizes", nargs="*", default=["512x512"])
    real.add_argument("--warmup-chunks", type=int, default=8, help="untimed chunks after the first (at least until the window is full)")
    real.add_argument("--timed", type=int, default=20, help="timed chunks per size")
    real.add_argument("--layers", type=int, default=None, help="fewer transformer layers than the real 30 (a CPU try)")
    real.add_argument("--vae-base", type=int, default=96, help="Wan VAE base width (real: 96)")
    args = parser.parse_args(argv)
    try:
        args.width, args.height = parse_size(args.size) if "x" in args.size.lower() else (int(args.size),) * 2
    except ValueError:
        parser.error("--size must look like 512 or 512x512")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if args.warmup_frames < 1:
        parser.error("--warmup-frames must be at least 1")
    if args.pipeline == BASELINE:
        parser.error(f"--pipeline: {BASELINE} is the baseline, pick another")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device is not None:
        report: dict[str, Any] = {"machine": machine()}
        print(json.dumps(report["machine"]), flush=True)
        real_size(args, report)
    else:
        status, report = run_servers(lambda: run(args), "the server")
        if report is None:
            return status
        print_report(report)
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
