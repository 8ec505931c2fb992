"""Workers: what a second CPU worker adds, and what a Ray worker costs per frame.

    python bench/workers.py [--size 256x192] [--seconds 15] [--warmup 5] [--skip scaling ray] [--models-dir DIR] [--json out.json]

Every server is a real ``daydream-scope`` on 127.0.0.1 running ``longlive`` on synthetic weights
(real torch compute at ``--size``), one torch thread per worker; sessions are the Python
client's aiortc peers in text mode.

* **scaling**: two sessions at once on one CPU worker (they take turns on its thread) and on two
  (``--workers cpu,cpu`` with one session per worker, so the second session loads the pipeline
  on the second worker). Figure: the frames the two sessions received per second together,
  over a window after warm-up; the scaling ratio is two workers ÷ one.
* **ray**: one session on a local CPU worker and one on a Ray worker (an actor of a one-node
  cluster on loopback). Figure: per-frame time, the median of the sessions' ``chunk_ms`` over
  the window ÷ the frames a chunk makes; the difference in ms and the ratio, Ray ÷ local, and
  the bytes per frame that cross Ray (H×W×3 out; no input in text mode).

It never fails on time; figures are findings. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.longlive import PROMPTS, machine, parse_size
from bench.passthrough import Broken, cpu_snapshot, machine_busy, run_servers
from bench.passthrough import ratio as passthrough_ratio
from bench.report import write_json
from scope.client import ScopeClient
from scope.streaming.host_addresses import allowed_host_addresses, restrict_host_addresses
from tests._subprocess_server import ScopeServer, start_scope_server

#: ``longlive``'s frames per chunk after its first (3 latent frames, 4 video frames each).
FRAMES_PER_CHUNK = 12
#: How often the sessions' stats are read during a window (the server sends them every 0.5 s).
STATS_POLL_S = 0.2
FIRST_FRAME_TIMEOUT_S = 180.0
LOAD_TIMEOUT_S = 300.0
#: A Ray server's actors import torch before the server answers.
RAY_READY_TIMEOUT_S = 240.0
LOCAL_THREADS = "--ScopeApp.worker_threads=1"

CASES: dict[str, tuple[str, ...]] = {
    "one_worker": ("--workers", "cpu", LOCAL_THREADS),
    "two_workers": ("--workers", "cpu,cpu", LOCAL_THREADS, "--ScopeApp.max_sessions_per_worker=1"),
}


# One server, some sessions --------------------------------------------------------------------


async def measure_sessions(server: ScopeServer, width: int, height: int, sessions: int, args: argparse.Namespace) -> dict[str, Any]:
    """Load ``longlive`` at ``width``x``height``, stream ``sessions`` sessions at once, and
    measure a window of ``args.seconds`` that opens ``args.warmup`` s after every session's
    first frame: frames received and the chunks' times, per session."""
    with ScopeClient(server.url, token=server.token) as client:
        params = {"width": width, "height": height}
        await asyncio.to_thread(client.ensure_pipeline, "longlive", params, synthetic=True, timeout=LOAD_TIMEOUT_S)
        async with AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(client.stream(PROMPTS[index % len(PROMPTS)])) for index in range(sessions)]
            try:
                await asyncio.gather(*(stream.read(1, timeout=FIRST_FRAME_TIMEOUT_S) for stream in streams))
            except TimeoutError:
                raise Broken(f"no frame within {FIRST_FRAME_TIMEOUT_S:g} s") from None
            await asyncio.sleep(args.warmup)
            placed = {info.id: info.worker for info in await asyncio.to_thread(client.sessions)}
            rows, cores = await window(streams, args.seconds, server.process.pid)
        for stream, row in zip(streams, rows):
            row["worker"] = placed.get(stream.session_id)
        status = await asyncio.to_thread(client.request, "GET", "api/v1/pipeline/status")
    workers = [{"id": w["id"], "kind": w["kind"], "device": w["device"]} for w in status.json().get("workers", [])]
    return {**summarise(rows, workers), "cores": cores}


async def window(streams: list, seconds: float, server_pid: int) -> tuple[list[dict[str, Any]], dict[str, float | None]]:
    """Frames each session receives in ``seconds`` and the ``chunk_ms`` of each chunk made
    meanwhile (as the stats messages report them); the cores used meanwhile (see :func:`cores_used`)."""
    counts = [stream.frames_received for stream in streams]
    first_chunk = [getattr(stream.stats(), "chunk", 0) for stream in streams]
    chunk_ms: list[dict[int, float]] = [{} for _ in streams]
    before, started = cpu_marks(server_pid), time.monotonic()
    while time.monotonic() - started < seconds:
        await asyncio.sleep(STATS_POLL_S)
        for stream, seen, after in zip(streams, chunk_ms, first_chunk):
            stats = stream.stats()
            if stats is not None and stats.chunk > after:
                seen[stats.chunk] = stats.chunk_ms
    elapsed = time.monotonic() - started
    cores = cores_used(before, cpu_marks(server_pid), elapsed)
    if not all(stream.live for stream in streams):
        raise Broken("a session ended during the window")
    return [
        {
            "frames": stream.frames_received - count,
            "seconds": round(elapsed, 3),
            "chunks_seen": len(seen),
            "chunk_ms": [seen[key] for key in sorted(seen)],
        }
        for stream, count, seen in zip(streams, counts, chunk_ms)
    ], cores


def cpu_marks(server_pid: int) -> tuple[float, float | None, float]:
    """CPU seconds so far: this process (the client's decoding), the server's, the machine's."""
    own = psutil.Process().cpu_times()
    server = cpu_snapshot(server_pid)
    return own.user + own.system, server["total"] if server else None, machine_busy()


def cores_used(a: tuple, b: tuple, seconds: float) -> dict[str, float | None]:
    """Cores used over a window: the server process (with its local workers), this process,
    and everything else (a Ray worker's actor, other work on the machine)."""
    client, server, machine = ((end - start) / seconds if start is not None and end is not None else None
                               for start, end in zip(a, b))
    others = max(0.0, machine - client - server) if server is not None else None
    return {key: None if value is None else round(value, 2)
            for key, value in {"server": server, "client": client, "others": others, "machine": machine}.items()}


def summarise(rows: list[dict[str, Any]], workers: list[dict[str, Any]]) -> dict[str, Any]:
    """Per session: delivered FPS, median chunk ms and ms per frame; together: the FPS summed."""
    sessions = []
    for row in rows:
        times = row.pop("chunk_ms")
        median = statistics.median(times) if times else None
        sessions.append({
            **row,
            "fps": round(row["frames"] / row["seconds"], 2),
            "chunk_ms_p50": None if median is None else round(median, 1),
            "frame_ms": None if median is None else round(median / FRAMES_PER_CHUNK, 2),
        })
    return {
        "workers": workers,
        "sessions": sessions,
        "delivered_fps": round(sum(row["frames"] / row["seconds"] for row in rows), 2),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """:func:`bench.passthrough.ratio`, to three decimals."""
    value = passthrough_ratio(a, b)
    return None if value is None else round(value, 3)


# Sections -------------------------------------------------------------------------------------


async def measure_all(args: argparse.Namespace, temp: Path) -> dict[str, Any]:
    """Both sections; the one-worker server also gives the Ray section its local session."""
    width, height = parse_size(args.size)
    scaling, ray = "scaling" not in args.skip, "ray" not in args.skip
    if not (scaling or ray):
        return {}
    figures: dict[str, Any] = {}
    models = (f"--ScopeApp.models_dir={args.models_dir}",) if args.models_dir else ()
    print(f"\none CPU worker ({' '.join(CASES['one_worker'])}) ...", flush=True)
    with started_server(temp / "one_worker", *CASES["one_worker"], "--synthetic", *models) as server:
        if ray:
            figures["local"] = await measure_sessions(server, width, height, 1, args)
            print_case("one session (local)", figures["local"])
        if scaling:
            figures["one_worker"] = await measure_sessions(server, width, height, 2, args)
            print_case("two sessions", figures["one_worker"])
    if scaling:
        print(f"\ntwo CPU workers ({' '.join(CASES['two_workers'])}) ...", flush=True)
        with started_server(temp / "two_workers", *CASES["two_workers"], "--synthetic", *models) as server:
            figures["two_workers"] = await measure_sessions(server, width, height, 2, args)
        print_case("two sessions", figures["two_workers"])
    if ray:
        from tests.ray_cluster import RAY_ENV, TEST_RESOURCE, LocalRayCluster

        print("\na one-node Ray cluster on loopback, one worker actor ...", flush=True)
        with LocalRayCluster(workers=1) as cluster:
            ray_args = ("--ray-address", cluster.address, f"--ScopeApp.ray_resource={TEST_RESOURCE}",
                        "--ScopeApp.ray_workers=1", LOCAL_THREADS, "--synthetic", *models)
            with started_server(temp / "ray", *ray_args, env=RAY_ENV, ready_timeout=RAY_READY_TIMEOUT_S) as server:
                figures["ray"] = await measure_sessions(server, width, height, 1, args)
        print_case("one session (Ray)", figures["ray"])
    sections = {}
    if scaling:
        sections["scaling"] = scaling_section(args.size, figures["one_worker"], figures["two_workers"])
    if ray:
        sections["ray"] = ray_section(args.size, width, height, figures["local"], figures["ray"])
    return sections


def scaling_section(size: str, one: dict[str, Any], two: dict[str, Any]) -> dict[str, Any]:
    """Two sessions on one CPU worker against two sessions on two: delivered FPS, two ÷ one."""
    return {"size": size, "sessions": 2, "torch_threads_per_worker": 1, "one_worker": one, "two_workers": two,
            "scaling": ratio(two["delivered_fps"], one["delivered_fps"])}


def ray_section(size: str, width: int, height: int, local: dict[str, Any], ray: dict[str, Any]) -> dict[str, Any]:
    """One session on a local CPU worker against one on a Ray worker: ms per frame, the
    difference and Ray ÷ local; the bytes per frame that cross Ray."""
    local_ms, ray_ms = local["sessions"][0]["frame_ms"], ray["sessions"][0]["frame_ms"]
    output = width * height * 3
    return {
        "size": size, "sessions": 1, "torch_threads_per_worker": 1, "local": local, "ray": ray,
        "frame_ms": {"local": local_ms, "ray": ray_ms},
        "added_ms_per_frame": round(ray_ms - local_ms, 2) if local_ms and ray_ms else None,
        "ratio": ratio(ray_ms, local_ms),
        "bytes_per_frame": {"output": output, "input": 0, "total": output},  # text mode: nothing goes in
        "bytes_per_chunk": output * FRAMES_PER_CHUNK,
    }


@contextmanager
def started_server(root: Path, *server_args: str, **kwargs: Any) -> Iterator[ScopeServer]:
    """``daydream-scope`` on 127.0.0.1, stopped on the way out; a start that fails is a broken
    run (with the server's output)."""
    try:
        server = start_scope_server(root, *server_args, **kwargs)
    except AssertionError as exc:
        raise Broken(f"the server did not start: {str(exc)[-2000:]}") from None
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def loopback_ice() -> Iterator[None]:
    """This process's peers gather loopback candidates only, as the servers' do: media stays on
    127.0.0.1 (aiortc otherwise leaves loopback out)."""
    before = allowed_host_addresses()
    restrict_host_addresses(["127.0.0.1"])
    try:
        yield
    finally:
        restrict_host_addresses(before)


# Printing -------------------------------------------------------------------------------------


def print_case(name: str, case: dict[str, Any]) -> None:
    for index, row in enumerate(case["sessions"]):
        print(f"  {name}, session {index} on {row['worker']}: {row['frames']} frames in {row['seconds']:.1f} s = "
              f"{row['fps']:.2f} FPS; chunk p50 {row['chunk_ms_p50']} ms ({row['chunks_seen']} chunks), "
              f"{row['frame_ms']} ms per frame")
    cores = case["cores"]
    print(f"  {name}: {case['delivered_fps']:.2f} FPS delivered in all; cores used: server {cores['server']}, "
          f"client {cores['client']}, others {cores['others']} (of {os.cpu_count()})", flush=True)


def print_report(report: dict[str, Any]) -> None:
    if "scaling" in report:
        s = report["scaling"]
        print(f"\n== Two sessions at {s['size']}, one torch thread per worker ==")
        print(f"  one CPU worker   {s['one_worker']['delivered_fps']:>7.2f} FPS")
        print(f"  two CPU workers  {s['two_workers']['delivered_fps']:>7.2f} FPS")
        print(f"  scaling (two ÷ one) {s['scaling']}")
    if "ray" in report:
        r = report["ray"]
        b = r["bytes_per_frame"]
        print(f"\n== Per frame, one session at {r['size']}: a Ray worker against a local one ==")
        print(f"  local {r['frame_ms']['local']} ms, Ray {r['frame_ms']['ray']} ms per frame: "
              f"+{r['added_ms_per_frame']} ms, ratio {r['ratio']}")
        print(f"  across Ray per frame: {b['output']} bytes out ({b['output'] / 1000:.1f} KB), {b['input']} in (text mode); "
              f"per {FRAMES_PER_CHUNK}-frame chunk {r['bytes_per_chunk'] / 1e6:.2f} MB")


# Main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256x192", help="WxH of longlive's frames")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measured window")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after the first frames left out")
    parser.add_argument("--skip", nargs="*", default=[], choices=["scaling", "ray"])
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="where the servers find longlive's weights (default: a temp dir each, synthetic ones written there)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    parse_size(args.size)
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be positive and --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {"machine": machine(), "config": {"size": args.size, "seconds": args.seconds, "warmup": args.warmup}}
    if "ray" not in args.skip and importlib.util.find_spec("ray") is None:
        print("ray is not installed (pip install \"daydream-scope[ray]\"): the ray section is left out", file=sys.stderr)
        args.skip.append("ray")

    async def run() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="scope-bench-workers-") as temp, loopback_ice():
            return await measure_all(args, Path(temp))

    status, sections = run_servers(run, "the servers")
    if sections is None:
        return status
    report.update(sections)
    print_report(report)
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
