"""Recording and rendering: a render against live generation of the same timeline, and what
recording costs a streaming session.

    python bench/recording.py [--size 576x320] [--chunks 10] [--stream-size 512x512] [--seconds 10] [--json out.json]
    python bench/recording.py --device cuda [--size 832x480] [--layers N] [--vae-base 96] --skip stream [--json out.json]

* **render**: ``longlive`` (synthetic weights in a temp models dir; with ``--device``, the real
  Wan2.1-1.3B shape on random weights, as ``real_size.py``) runs one timeline of ``--chunks``
  chunks with a prompt switch and a transition three ways: (a) the pipeline itself,
  ``stream.generate`` with the same updates at the same chunks; (b) ``render_chunks`` over the
  timeline, hashing included; (c) ``scope.render(..., output=mp4)``, encoding included. Chunks and
  frames per second of each, render ÷ pipeline, and the recorder's own cost per frame (H.264 and
  the chunk hash) on the same frames. Every hash of (b) and (c) must equal (a)'s: a render that
  differs is broken (exit status 1).
* **stream**: ``daydream-scope`` on 127.0.0.1 (temp directories) streams one aiortc session per
  phase for ``--seconds``, recording off and on (``POST /api/v1/recordings/{id}/start``) in
  alternating order over ``--repeats``; the session's stats (``chunk_ms``, ``fps``), the frames
  received and the server's CPU per frame, on ÷ off; and the recorder's work measured directly
  on the frames it recorded (H.264, FFV1 input in video mode, hash), per frame.

It never fails on time; figures are findings. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
import numpy as np
import torch

from bench.longlive import PROMPTS, machine, parse_size
from bench.passthrough import Broken, cpu_snapshot, run_servers
from bench.real_size import WAN_VAE_BASE, random_components
from bench.report import write_json
from scope.models.artifacts import PIPELINE_ARTIFACTS
from scope.models.synthetic.writer import write_synthetic
from scope.recording.media import LosslessInputWriter, VideoWriter
from scope.recording.provenance import run_environment
from scope.recording.render import render_chunks
from scope.recording.timeline import FORMAT, chunk_hash, parse_timeline
from scope.streaming.pattern import BITS, BLOCK, PatternTrack

#: The third prompt, the transition's target.
TARGET_PROMPT = "a neon city at night, rain on the street"
SEED = 42
#: Seconds a phase's session streams before its window opens (connection, first chunks).
PHASE_WARMUP_S = 2.0
#: How often the session's stats are read during a window.
STATS_POLL_S = 0.2
FIRST_FRAME_TIMEOUT_S = 120.0


# The timeline ---------------------------------------------------------------------------------


def schedule(chunks: int) -> dict[int, dict[str, Any]]:
    """The updates by chunk: a prompt at chunk 0, a switch a quarter in, a transition at half
    way over up to 4 chunks (ending before the last chunk when there is room)."""
    switch = max(1, chunks // 4)
    transition = max(switch + 1, chunks // 2)
    steps = max(1, min(4, chunks - transition - 1))
    return {
        0: {"prompts": [{"text": PROMPTS[0], "weight": 1.0}]},
        switch: {"prompts": [{"text": PROMPTS[1], "weight": 1.0}]},
        transition: {"transition": {"target_prompts": [{"text": TARGET_PROMPT, "weight": 1.0}], "num_steps": steps}},
    }


def timeline_document(load_params: dict[str, Any], chunks: int, hashes: list[tuple[int, str]]) -> dict[str, Any]:
    """The timeline of :func:`schedule`, with the pipeline's chunks (frames, hash) to check a render against."""
    updates = schedule(chunks)
    return {
        "format": FORMAT,
        "pipeline_id": "longlive",
        "load_params": load_params,
        "initial_parameters": updates[0],
        **run_environment(),
        "events": [{"chunk": chunk, "parameters": update} for chunk, update in sorted(updates.items()) if chunk > 0],
        "chunks": [{"chunk": index, "frames": frames, "sha256": digest} for index, (frames, digest) in enumerate(hashes)],
    }


# The render section ---------------------------------------------------------------------------


def build_pipeline(args: argparse.Namespace, models_dir: Path, width: int, height: int):
    """``longlive`` on synthetic weights, or with ``--device`` the real shape on random weights
    (and the synthetic text encoder, whose embeddings have the real shape)."""
    import scope

    write_synthetic(models_dir, PIPELINE_ARTIFACTS["longlive"])
    load_params = {"height": height, "width": width, "seed": SEED}
    if args.device is None:
        return scope.load_pipeline("longlive", models_dir=models_dir, **load_params), load_params
    from scope.models.artifacts import UMT5_ENCODER, WAN_1_3B, local_path
    from scope.pipelines.registry import get_pipeline_class
    from scope.pipelines.wan.components import TEXT_ENCODER_FILE, TOKENIZER_DIR, WanComponents
    from scope.pipelines.wan.device import compute_device
    from scope.pipelines.wan.text_encoder import TextEncoder

    device, dtype = compute_device()
    built = random_components(device, dtype, layers=args.layers, vae_base=args.vae_base, seed=SEED)
    text_encoder = TextEncoder.load(local_path(models_dir, UMT5_ENCODER, TEXT_ENCODER_FILE),
                                    local_path(models_dir, WAN_1_3B, TOKENIZER_DIR), device=device, dtype=dtype)
    components = WanComponents(built.generator, built.vae, text_encoder, device, dtype)
    cls = get_pipeline_class("longlive")
    params = cls.load_params_model.model_validate(load_params)
    return cls(params, components, synthetic=False), load_params


def run_pipeline(pipeline, chunks: int) -> tuple[float, list[np.ndarray]]:
    """(a): the stream itself, the timeline's updates given to ``generate`` at their chunks."""
    updates = schedule(chunks)
    stream = pipeline.open_stream()
    made = []
    started = time.perf_counter()
    try:
        for index in range(chunks):
            made.append(stream.generate(**updates.get(index, {})).frames)
    finally:
        seconds = time.perf_counter() - started
        stream.close()
    return seconds, made


def run_render_chunks(pipeline, document: dict[str, Any]) -> tuple[float, list[str], list[int]]:
    """(b): ``render_chunks`` over the timeline: seconds, hashes, chunks that differ from the recorded."""
    timeline = parse_timeline(document)[0]
    started = time.perf_counter()
    rendered = list(render_chunks(timeline, pipeline))
    seconds = time.perf_counter() - started
    return seconds, [chunk.sha256 for chunk in rendered], [chunk.index for chunk in rendered if not chunk.matches]


def run_render_file(pipeline, document: dict[str, Any], output: Path, models_dir: Path) -> dict[str, Any]:
    """(c): ``scope.render`` into an MP4 with its provenance: the call's seconds and the render's own."""
    import scope

    started = time.perf_counter()
    result = scope.render(document, output, pipeline=pipeline, models_dir=models_dir)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "loop_seconds": result.seconds, "hashes": [result.hashes[i] for i in sorted(result.hashes)],
            "mismatched": [chunk for chunk, _, _ in result.mismatches], "reproduced": result.reproduced, "notes": result.notes,
            "bytes": output.stat().st_size}


def rates(seconds: float, chunks: int, frames: int) -> dict[str, float]:
    return {"seconds": round(seconds, 3), "chunks_per_s": round(chunks / seconds, 3), "fps": round(frames / seconds, 3),
            "ms_per_frame": round(1000 * seconds / frames, 3)}


def recorder_cost(chunks: list[np.ndarray], inputs: list[np.ndarray] | None, fps: float, folder: Path) -> dict[str, Any]:
    """What a :class:`SessionRecorder` does per chunk, timed on ``chunks``: H.264 of the frames,
    FFV1 of the input consumed (video mode), the chunk's hash; ms per generated frame."""
    height, width = chunks[0].shape[1:3]
    spent = {"video_ms": 0.0, "input_ms": 0.0, "hash_ms": 0.0}
    frames = sum(len(chunk) for chunk in chunks)
    video = VideoWriter(folder / "recorder-cost.mp4", width, height, fps)
    lossless = None
    if inputs:
        lossless = LosslessInputWriter(folder / "recorder-cost.mkv", inputs[0].shape[2], inputs[0].shape[1], fps)
    for index, chunk in enumerate(chunks):
        started = time.perf_counter()
        video.write(chunk)
        spent["video_ms"] += time.perf_counter() - started
        if lossless is not None and index < len(inputs) and len(inputs[index]):
            started = time.perf_counter()
            lossless.write(inputs[index])
            spent["input_ms"] += time.perf_counter() - started
        started = time.perf_counter()
        chunk_hash(chunk)
        spent["hash_ms"] += time.perf_counter() - started
    started = time.perf_counter()
    video.close()
    if lossless is not None:
        lossless.close()
    spent["video_ms"] += time.perf_counter() - started  # the flush: frames the encoder held back
    per_frame = {name: round(1000 * seconds / frames, 3) for name, seconds in spent.items()}
    return {"frames": frames, "size": f"{width}x{height}", **per_frame, "ms_per_frame": round(sum(per_frame.values()), 3)}


def render_section(args: argparse.Namespace) -> dict[str, Any]:
    width, height = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="scope-bench-recording-") as temp:
        folder = Path(temp)
        models_dir = args.models_dir or folder / "models"
        started = time.perf_counter()
        pipeline, load_params = build_pipeline(args, models_dir, width, height)
        load_s = time.perf_counter() - started
        # Untimed: the first run encodes the prompts (cached after) and warms everything up;
        # its hashes are the reference every later run is checked against.
        _, reference = run_pipeline(pipeline, args.chunks)
        reference_hashes = [chunk_hash(chunk) for chunk in reference]
        frames = sum(len(chunk) for chunk in reference)
        document = timeline_document(load_params, args.chunks, [(len(c), h) for c, h in zip(reference, reference_hashes)])
        runs: dict[str, list[float]] = {"pipeline": [], "render_chunks": [], "render_file": [], "render_file_loop": []}
        equal = {"pipeline": True, "render_chunks": True, "render_file": True}
        mismatched: dict[str, list[int]] = {"pipeline": [], "render_chunks": [], "render_file": []}
        notes: list[str] = []
        mp4_bytes = 0
        for repeat in range(args.render_repeats):
            seconds, made = run_pipeline(pipeline, args.chunks)
            runs["pipeline"].append(seconds)
            differ = [i for i, chunk in enumerate(made) if chunk_hash(chunk) != reference_hashes[i]]
            mismatched["pipeline"] += differ
            seconds, hashes, differ = run_render_chunks(pipeline, document)
            runs["render_chunks"].append(seconds)
            mismatched["render_chunks"] += differ
            equal["render_chunks"] &= hashes == reference_hashes
            written = run_render_file(pipeline, document, folder / f"render-{repeat}.mp4", models_dir)
            runs["render_file"].append(written["seconds"])
            runs["render_file_loop"].append(written["loop_seconds"])
            mismatched["render_file"] += written["mismatched"]
            equal["render_file"] &= written["hashes"] == reference_hashes and written["reproduced"]
            notes, mp4_bytes = written["notes"], written["bytes"]
            print(f"render repeat {repeat + 1}: pipeline {runs['pipeline'][-1]:.2f} s, render_chunks "
                  f"{runs['render_chunks'][-1]:.2f} s, scope.render {runs['render_file'][-1]:.2f} s", flush=True)
        equal["pipeline"] = not mismatched["pipeline"]
        recorder = recorder_cost(reference, None, 16.0, folder)
        pipeline.unload()
    timings = {name: rates(statistics.median(values), args.chunks, frames) for name, values in runs.items()}
    pipeline_fps = timings["pipeline"]["fps"]
    updates = schedule(args.chunks)
    return {
        "size": f"{width}x{height}",
        "weights": "synthetic" if args.device is None else f"random, real shape ({args.layers or 30} layers, VAE base {args.vae_base})",
        "environment": run_environment(),
        "load_s": round(load_s, 2),
        "chunks": args.chunks,
        "frames": frames,
        "repeats": args.render_repeats,
        "updates": {str(chunk): sorted(update) for chunk, update in updates.items()},
        "timings": timings,
        "ratios": {
            "render_chunks_to_pipeline": round(timings["render_chunks"]["fps"] / pipeline_fps, 3),
            "render_file_to_pipeline": round(timings["render_file"]["fps"] / pipeline_fps, 3),
            "render_file_loop_to_pipeline": round(timings["render_file_loop"]["fps"] / pipeline_fps, 3),
        },
        "hashes_equal": equal,
        "mismatched_chunks": mismatched,
        "render_notes": notes,
        "mp4_bytes": mp4_bytes,
        "recorder": {**recorder, "fraction_of_pipeline": round(recorder["ms_per_frame"] / timings["pipeline"]["ms_per_frame"], 4)},
    }


# The stream section ---------------------------------------------------------------------------


async def stream_section(args: argparse.Namespace) -> dict[str, Any]:
    from bench.pool import start_server
    from scope.client import ScopeClient

    width, height = parse_size(args.stream_size)
    tmp = Path(tempfile.mkdtemp(prefix="scope-bench-recording-"))
    try:
        server, base_url = await start_server(tmp)
        with ScopeClient(base_url) as client:
            if args.stream_pipeline == "longlive":
                load_params = {"height": height, "width": width, "seed": SEED}
                await asyncio.to_thread(client.ensure_pipeline, "longlive", load_params, synthetic=True, timeout=300)
            else:
                await asyncio.to_thread(client.ensure_pipeline, "passthrough", timeout=120)
            phases: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
            order = []
            for repeat in range(args.repeats):
                for record in ((False, True) if repeat % 2 == 0 else (True, False)):
                    figures = await phase(client, server.pid, args, width, height, record)
                    phases["on" if record else "off"].append(figures)
                    order.append("on" if record else "off")
                    print(f"stream {'on ' if record else 'off'}: " + json.dumps(
                        {k: figures[k] for k in ("chunk_ms", "stats_fps", "received_fps", "server_cpu_ms_per_frame")}), flush=True)
            last = phases["on"][-1]
            recorded = recorded_frames(tmp / "recordings" / last["session_id"], args.stream_pipeline == "passthrough")
    except Broken:
        from bench.passthrough import log_tail

        print(f"server log (last lines):\n{log_tail(tmp / 'server.log', 20)}", file=sys.stderr)
        raise
    finally:
        if not args.keep_temp:
            shutil.rmtree(tmp, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="scope-bench-recording-") as temp:
        recorder = recorder_cost(recorded["chunks"], recorded["inputs"], recorded["fps"], Path(temp))
    off, on = (summarise(phases[key]) for key in ("off", "on"))
    frames_per_chunk = recorded["frames_per_chunk"]
    generation_ms_per_frame = off["chunk_ms"] / frames_per_chunk if off["chunk_ms"] else None
    return {
        "config": {"pipeline": args.stream_pipeline, "mode": "video" if args.stream_pipeline == "passthrough" else "text",
                   "size": f"{width}x{height}", "fps": args.fps, "seconds": args.seconds, "repeats": args.repeats, "order": order},
        "off": off,
        "on": on,
        "ratios": {key: _quotient(on[key], off[key]) for key in ("chunk_ms", "stats_fps", "received_fps", "server_cpu_ms_per_frame")},
        "added_server_cpu_ms_per_frame": _difference(on["server_cpu_ms_per_frame"], off["server_cpu_ms_per_frame"]),
        "recorded": {key: phases["on"][-1][key] for key in ("recorded_chunks", "recorded_frames", "recording_bytes")},
        "recorder": {
            **recorder,
            "frames_per_chunk": frames_per_chunk,
            "generation_ms_per_frame": None if generation_ms_per_frame is None else round(generation_ms_per_frame, 3),
            "fraction_of_generation": _quotient(recorder["ms_per_frame"], generation_ms_per_frame, 4),
            # The share of one core the recording's thread needs at the delivered frame rate.
            "fraction_of_frame_interval": _quotient(recorder["ms_per_frame"], 1000 / off["received_fps"] if off["received_fps"] else None, 4),
        },
    }


async def phase(client, server_pid: int, args: argparse.Namespace, width: int, height: int, record: bool) -> dict[str, Any]:
    """One session: streams ``PHASE_WARMUP_S``, then a window of ``--seconds`` with the
    recording on or off; the session's stats, the frames received and the server's CPU in it."""
    if args.stream_pipeline == "passthrough":
        stream = client.stream(input=PatternTrack(fps=args.fps, width=width, height=height), pipeline="passthrough")
    else:
        stream = client.stream(prompts=PROMPTS[0], pipeline=("longlive", {"height": height, "width": width, "seed": SEED}))
    async with stream as s:
        try:
            await s.read(1, timeout=FIRST_FRAME_TIMEOUT_S)
        except TimeoutError as exc:
            raise Broken(f"no frame within {FIRST_FRAME_TIMEOUT_S:.0f} s: {exc}") from None
        await asyncio.sleep(PHASE_WARMUP_S)
        started_info = None
        if record:
            started_info = await asyncio.to_thread(client.start_server_recording, s.session_id)
        first = (await asyncio.to_thread(client.session, s.session_id)).stats
        t0, cpu0, frames0 = time.monotonic(), cpu_snapshot(server_pid), s.frames_received
        chunk_ms, stats_fps, last_chunk = [], [], first.chunk
        while time.monotonic() - t0 < args.seconds:
            await asyncio.sleep(STATS_POLL_S)
            stats = (await asyncio.to_thread(client.session, s.session_id)).stats
            stats_fps.append(stats.fps)
            if stats.chunk != last_chunk:  # a new chunk's time (the stats hold the latest one)
                chunk_ms.append(stats.chunk_ms)
                last_chunk = stats.chunk
        t1, cpu1, frames1 = time.monotonic(), cpu_snapshot(server_pid), s.frames_received
        stopped = await asyncio.to_thread(client.stop_server_recording, s.session_id) if record else None
    seconds, received = t1 - t0, frames1 - frames0
    if received <= 0:
        raise Broken(f"no frame arrived during a {seconds:.1f} s window")
    cpu_ms = 1000 * (cpu1["total"] - cpu0["total"]) if cpu0 and cpu1 else None
    return {
        "session_id": s.session_id,
        "recording": record,
        "seconds": round(seconds, 3),
        "chunks": last_chunk - first.chunk,
        "chunk_ms": round(statistics.median(chunk_ms), 3) if chunk_ms else None,
        "stats_fps": round(statistics.median(stats_fps), 2) if stats_fps else None,
        "received_frames": received,
        "received_fps": round(received / seconds, 2),
        "server_cpu_ms_per_frame": None if cpu_ms is None else round(cpu_ms / received, 3),
        "recorded_chunks": stopped["chunks"] if stopped else None,
        "recorded_frames": stopped["frames"] if stopped else None,
        "recording_bytes": stopped["bytes"] if stopped else None,
        "first_recorded_chunk": started_info["first_chunk"] if started_info else None,
    }


def recorded_frames(folder: Path, video_mode: bool) -> dict[str, Any]:
    """A recording's frames (decoded from its MP4) and, in video mode, its input, split into its
    chunks as its timeline lists them: what the recorder encoded, to encode again."""
    timeline = json.loads((folder / "timeline.json").read_text())
    frames = _decoded(folder / "recording.mp4")
    inputs = _decoded(folder / "input.mkv") if video_mode and (folder / "input.mkv").exists() else None
    chunks, input_chunks, at, input_at = [], [], 0, 0
    for record in timeline["chunks"]:
        chunks.append(frames[at : at + record["frames"]])
        at += record["frames"]
        if inputs is not None:
            input_chunks.append(inputs[input_at : input_at + record["input_frames"]])
            input_at += record["input_frames"]
    chunks = [chunk for chunk in chunks if len(chunk)]
    if not chunks:
        raise Broken(f"the recording in {folder.name} holds no frames")
    return {"chunks": chunks, "inputs": input_chunks or None, "fps": timeline["fps"],
            "frames_per_chunk": round(sum(len(c) for c in chunks) / len(chunks), 2)}


def _decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])])


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over a side's phases."""
    keys = ("chunk_ms", "stats_fps", "received_fps", "server_cpu_ms_per_frame")
    out: dict[str, Any] = {"phases": len(runs)}
    for key in keys:
        values = [run[key] for run in runs if run[key] is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    out["received_frames"] = sum(run["received_frames"] for run in runs)
    return out


def _quotient(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def _difference(a: float | None, b: float | None) -> float | None:
    return round(a - b, 3) if a is not None and b is not None else None


# Report ---------------------------------------------------------------------------------------


def print_render(section: dict[str, Any]) -> None:
    env = section["environment"]
    print(f"\n== Render against the pipeline: longlive {section['size']}, {section['weights']} weights, "
          f"{env['device']} {env['dtype']}, {env['torch_threads']} threads ==")
    print(f"  {section['chunks']} chunks, {section['frames']} frames; updates at chunks "
          + ", ".join(f"{chunk} ({'/'.join(keys)})" for chunk, keys in section["updates"].items())
          + f"; median of {section['repeats']}")
    labels = {"pipeline": "(a) pipeline: stream.generate", "render_chunks": "(b) render_chunks (hashing)",
              "render_file": "(c) scope.render -> mp4", "render_file_loop": "    its render loop (no provenance)"}
    print(f"  {'':<36} {'s':>8} {'chunks/s':>9} {'fps':>8} {'ms/frame':>9} {'÷ (a)':>7}")
    for name, label in labels.items():
        row = section["timings"][name]
        ratio = row["fps"] / section["timings"]["pipeline"]["fps"]
        print(f"  {label:<36} {row['seconds']:>8.2f} {row['chunks_per_s']:>9.3f} {row['fps']:>8.2f} {row['ms_per_frame']:>9.2f} {ratio:>7.3f}")
    equal = section["hashes_equal"]
    print(f"  hashes equal to the pipeline's: render_chunks {equal['render_chunks']}, scope.render {equal['render_file']}"
          f" (the pipeline against itself: {equal['pipeline']})")
    recorder = section["recorder"]
    print(f"  the recorder's own work on these frames: {recorder['ms_per_frame']:.2f} ms per frame (H.264 {recorder['video_ms']:.2f},"
          f" hash {recorder['hash_ms']:.2f}), {100 * recorder['fraction_of_pipeline']:.1f} % of the pipeline's time per frame")
    for note in section["render_notes"]:
        print(f"  note: {note}")


def print_stream(section: dict[str, Any]) -> None:
    cfg = section["config"]
    print(f"\n== Recording off against on: one {cfg['pipeline']} session ({cfg['mode']} mode) at {cfg['size']}"
          + (f", {cfg['fps']:g} fps source" if cfg["mode"] == "video" else "")
          + f", {cfg['seconds']:g} s per phase, {cfg['repeats']} of each ({' '.join(cfg['order'])}) ==")
    print(f"  {'':<6} {'chunk ms':>9} {'stats fps':>10} {'received fps':>13} {'server CPU ms/frame':>20}")
    for side in ("off", "on"):
        row = section[side]
        print(f"  {side:<6} {_fmt(row['chunk_ms']):>9} {_fmt(row['stats_fps']):>10} {_fmt(row['received_fps']):>13} "
              f"{_fmt(row['server_cpu_ms_per_frame']):>20}")
    r = section["ratios"]
    print(f"  {'on÷off':<6} {_fmt(r['chunk_ms']):>9} {_fmt(r['stats_fps']):>10} {_fmt(r['received_fps']):>13} "
          f"{_fmt(r['server_cpu_ms_per_frame']):>20}   (server CPU added: {_fmt(section['added_server_cpu_ms_per_frame'])} ms per frame)")
    rec, recorded = section["recorder"], section["recorded"]
    print(f"  last recording: {recorded['recorded_chunks']} chunks, {recorded['recorded_frames']} frames, "
          f"{recorded['recording_bytes']} bytes")
    print(f"  the recorder's work on those frames, in this process: {rec['ms_per_frame']:.3f} ms per frame (H.264 "
          f"{rec['video_ms']:.3f}, input FFV1 {rec['input_ms']:.3f}, hash {rec['hash_ms']:.3f}); generation "
          f"{_fmt(rec['generation_ms_per_frame'])} ms per frame ({rec['frames_per_chunk']:g} frames per chunk): "
          f"fraction {_fmt(rec['fraction_of_generation'])}; of the frame interval at the received rate: "
          f"{_fmt(rec['fraction_of_frame_interval'])}")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


# Main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--skip", nargs="*", default=[], choices=["render", "stream"])
    parser.add_argument("--keep-temp", action="store_true", help="keep the server's temp dir (its log, the recordings)")
    render = parser.add_argument_group("render against the pipeline")
    render.add_argument("--size", default=None, help="WxH (default 576x320; with --device 832x480)")
    render.add_argument("--chunks", type=int, default=10, help="chunks in the timeline (at least 3)")
    render.add_argument("--render-repeats", type=int, default=1, help="timed runs of (a), (b) and (c); medians reported")
    render.add_argument("--models-dir", type=Path, default=None, help="synthetic weights, written where missing")
    render.add_argument("--device", choices=["cuda", "cpu"], default=None, help="the real shape on random weights, on this device")
    render.add_argument("--layers", type=int, default=None, help="fewer transformer layers than the real 30 (a CPU try)")
    render.add_argument("--vae-base", type=int, default=WAN_VAE_BASE, help="Wan VAE base width (real: 96)")
    stream = parser.add_argument_group("recording off against on, streaming")
    stream.add_argument("--stream-pipeline", choices=["passthrough", "longlive"], default="passthrough",
                        help="passthrough: video mode, the pattern sent in; longlive: text mode, synthetic weights")
    stream.add_argument("--stream-size", default=None, help="WxH (default 512x512 passthrough, 160x96 longlive)")
    stream.add_argument("--fps", type=float, default=30.0, help="the pattern's rate (passthrough)")
    stream.add_argument("--seconds", type=float, default=10.0, help="each phase's window")
    stream.add_argument("--repeats", type=int, default=2, help="phases per side, alternating which goes first")
    args = parser.parse_args(argv)
    args.size = args.size or ("576x320" if args.device is None else "832x480")
    args.stream_size = args.stream_size or ("512x512" if args.stream_pipeline == "passthrough" else "160x96")
    if args.chunks < 3:
        parser.error("--chunks must be at least 3: a prompt switch and a transition after the first chunk")
    if args.render_repeats < 1 or args.repeats < 1 or args.seconds <= 0:
        parser.error("--render-repeats and --repeats must be at least 1, --seconds above 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if args.device is not None:
        from scope.pipelines.wan.device import compute_device

        if compute_device()[0].type != args.device:
            parser.error(f"--device {args.device}: the pipelines compute on {compute_device()[0].type} on this machine")
    width, height = parse_size(args.stream_size)
    if args.stream_pipeline == "passthrough" and (width < BITS * BLOCK or height < BLOCK):
        parser.error(f"--stream-size: the pattern's index stamp needs at least {BITS * BLOCK}x{BLOCK} pixels")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {"machine": machine()}
    print(json.dumps(report["machine"]), flush=True)
    status = 0
    if "render" not in args.skip:
        report["render"] = render_section(args)
        print_render(report["render"])
        if not all(report["render"]["hashes_equal"].values()):
            print(f"\nBROKEN: the chunks differ from the pipeline's: {report['render']['mismatched_chunks']}", file=sys.stderr)
            status = 1
    if "stream" not in args.skip:
        print("\nstream: starting the server ...", flush=True)
        stream_status, section = run_servers(lambda: stream_section(args), "the server")
        if section is None:
            write_json(args.json, report)
            return stream_status
        report["stream"] = section
        print_stream(section)
    write_json(args.json, report)
    return status


if __name__ == "__main__":
    sys.exit(main())
