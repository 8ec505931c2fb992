"""Passthrough streaming benchmark: the Scope server against a bare aiortc echo peer, in one run.

    python bench/passthrough.py [--seconds 20] [--fps 30] [--size 512x512] [--json out.json]

Measures, on this machine and in this run (see bench/README.md for each figure and its anchor):

* C2  glass-to-glass latency of an echoed test pattern (p50/p95/p99), ours against bare;
* C3  delivered FPS against the target, and server CPU per delivered frame;
* C11 session start (offer sent to first echoed frame received), ours against bare;
* ``/health`` latency while the server is idle, loading pipelines, starting sessions, and
  streaming two sessions.

It prints figures and ratios and never fails on time: the exit status is 0 unless something is
broken (the server does not start, no frame ever comes back).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
import httpx
import numpy as np
import psutil
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc import __version__ as aiortc_version
from aiortc.mediastreams import MediaStreamError

from bench.report import write_json
from scope.pipelines.passthrough import CHUNK_FRAMES as PASSTHROUGH_CHUNK  # 4, upstream's design
from scope.streaming.pattern import BITS, BLOCK, PatternTrack, pattern_frame, read_index

HERE = Path(__file__).resolve().parent

# Anchors and targets from the performance notes (§3.1, §3.2, §5.1).
BARE_SINGLE_HOP_P50_MS_30FPS = 39.5  # aiortc to aiortc, one hop, VP8 512x512 at 30 FPS
BARE_SINGLE_HOP_OVERHEAD_MS = 6.0  # encode + packetise + SRTP + decode, beyond the one-frame hold
C2_RATIO_TARGET = 1.5
C2_ADDED_MS_TARGET = 15.0
C3_FPS_RATIO_TARGET = 0.98
C3_CPU_RATIO_TARGET = 1.5
C11_RATIO_TARGET = 1.3
VP8_ENCODE_MS_512 = (3.9, 6.3)  # smooth / noise content, one EPYC core

# Bounds: every wait in this script has one.
SERVER_START_TIMEOUT_S = 60.0
FIRST_FRAME_TIMEOUT_S = 20.0
LOAD_TIMEOUT_S = 60.0
GRACE_S = 1.5  # keep receiving after a window so in-flight frames are not counted as lost


# Child processes -----------------------------------------------------------------------------

_children: list[subprocess.Popen] = []


def spawn(argv: list[str], env: dict[str, str] | None = None, log: Path | None = None,
          stdout=None) -> subprocess.Popen:
    """Start a child in its own session (a terminal's Ctrl-C reaches only us; we stop it)."""
    out = stdout if stdout is not None else (open(log, "wb") if log else subprocess.DEVNULL)
    try:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT if log else None,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    finally:
        if log and stdout is None:
            out.close()  # the child has its own copy
    _children.append(proc)
    return proc


def stop_children(timeout: float = 10.0) -> None:
    for proc in _children:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in _children:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)
    _children.clear()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_healthy(server: subprocess.Popen, base_url: str, log: Path, started: float) -> None:
    """Wait until the server answers ``/health``: Broken, with its log's tail, if it exits first
    or takes more than SERVER_START_TIMEOUT_S from ``started``."""
    async with httpx.AsyncClient(base_url=base_url, timeout=2.0) as http:
        while True:
            if server.poll() is not None:
                raise Broken(f"the server exited ({server.returncode}):\n{log_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/health")).status_code == 200:
                    return
            if time.monotonic() - started > SERVER_START_TIMEOUT_S:
                raise Broken(f"the server did not answer /health in {SERVER_START_TIMEOUT_S:.0f} s:\n{log_tail(log)}")
            await asyncio.sleep(0.1)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Broken(Exception):
    """Something the benchmark needs does not work (exit status 1)."""


def run_servers(run: Callable[[], Awaitable[dict[str, Any]]], stopping: str) -> tuple[int, dict[str, Any] | None]:
    """Run a benchmark that starts servers: ``(exit status, report)``; the children always stop.

    ``stopping`` names what an interrupt stops, for the message.
    """
    try:
        return 0, asyncio.run(run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"\ninterrupted; stopping {stopping}", file=sys.stderr)
        return 130, None
    except Broken as exc:
        print(f"\nBROKEN: {exc}", file=sys.stderr)
        return 1, None
    finally:
        stop_children()


# Statistics ----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "mean": float(np.mean(values)),
        "max": float(np.max(values)),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


# CPU -----------------------------------------------------------------------------------------


def cpu_snapshot(pid: int) -> dict[str, float] | None:
    """CPU seconds of a process: all threads, and its main (event-loop) thread alone."""
    try:
        proc = psutil.Process(pid)
        times = proc.cpu_times()
        main = next((t for t in proc.threads() if t.id == pid), None)
    except psutil.Error:
        return None
    return {
        "total": times.user + times.system,
        "main": (main.user_time + main.system_time) if main else float("nan"),
    }


def machine_busy() -> float:
    """Busy core-seconds of the whole machine since boot (all processes)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def others_load(busy0: float, busy1: float, seconds: float, *deltas: dict | None) -> float | None:
    """Cores used by processes other than the ones measured, on average over a window."""
    ours = 0.0
    for delta in deltas:
        if not delta or delta.get("total_s") is None:
            return None
        ours += delta["total_s"]
    return max(0.0, (busy1 - busy0 - ours) / seconds) if seconds > 0 else None


def cpu_delta(before: dict | None, after: dict | None, frames: int) -> dict[str, Any]:
    if not before or not after or frames <= 0:
        return {"total_s": None, "main_s": None, "ms_per_frame": None, "main_ms_per_frame": None,
                "other_ms_per_frame": None}
    total = after["total"] - before["total"]
    main = after["main"] - before["main"]
    return {
        "total_s": total,
        "main_s": main,
        "ms_per_frame": 1000.0 * total / frames,
        "main_ms_per_frame": 1000.0 * main / frames,
        "other_ms_per_frame": 1000.0 * (total - main) / frames,
    }


# Signalling ----------------------------------------------------------------------------------


class ScopeSignaller:
    """Offers through ``POST /api/v1/webrtc/offer``; closes with ``DELETE .../sessions/{id}``."""

    name = "ours"

    def __init__(self, http: httpx.AsyncClient):
        self.http = http
        self.session_id: str | None = None

    async def offer(self, sdp: str) -> str:
        reply = await self.http.post("/api/v1/webrtc/offer", json={"sdp": sdp, "type": "offer"})
        if reply.status_code != 200:
            raise Broken(f"offer answered {reply.status_code}: {reply.text[:300]}")
        body = reply.json()
        self.session_id = body["sessionId"]
        return body["sdp"]

    async def close(self) -> None:
        if self.session_id:
            with contextlib.suppress(httpx.HTTPError):
                await self.http.delete(f"/api/v1/webrtc/sessions/{self.session_id}")
            self.session_id = None


class EchoSignaller:
    """One JSON line each way with ``echo_peer.py``; the session ends when the socket closes."""

    name = "bare"

    def __init__(self, port: int):
        self.port = port
        self.writer: asyncio.StreamWriter | None = None

    async def offer(self, sdp: str) -> str:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(json.dumps({"sdp": sdp, "type": "offer"}).encode() + b"\n")
        await self.writer.drain()
        line = await asyncio.wait_for(reader.readline(), 30)
        if not line:
            raise Broken("the echo peer closed the signalling connection")
        return json.loads(line)["sdp"]

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
            self.writer = None


# The client ----------------------------------------------------------------------------------


def frame_index(frame: av.VideoFrame) -> int:
    """The stamped index, read from the luma plane (no colour conversion on the client)."""
    if frame.format.name in ("yuv420p", "yuvj420p", "nv12"):
        plane = frame.planes[0]
        luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:BLOCK, : plane.width]
    else:
        luma = frame.to_ndarray(format="gray")[:BLOCK]
    return read_index(luma)


@dataclass
class StreamClient:
    """Sends :class:`PatternTrack`, receives the echo, records (arrival time, index) per frame."""

    signaller: Any
    fps: float
    width: int
    height: int
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    t_offer: float | None = None
    t_answer: float | None = None
    t_connected: float | None = None
    t_first: float | None = None

    def __post_init__(self) -> None:
        self.source = PatternTrack(fps=self.fps, width=self.width, height=self.height)
        self.pc: RTCPeerConnection | None = None
        self._first = asyncio.Event()
        self._reader: asyncio.Task | None = None

    async def start(self) -> None:
        # Host candidates only, as on the server side: no STUN round trip in gathering.
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTrack(self.source)

        @pc.on("track")
        def _on_track(track) -> None:
            if track.kind == "video" and self._reader is None:
                self._reader = asyncio.ensure_future(self._read(track))

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            if pc.connectionState == "connected" and self.t_connected is None:
                self.t_connected = time.monotonic()

        await pc.setLocalDescription(await pc.createOffer())
        self.t_offer = time.monotonic()
        answer = await self.signaller.offer(pc.localDescription.sdp)
        self.t_answer = time.monotonic()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def _read(self, track) -> None:
        sent = self.source.sent_at
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            index = frame_index(frame)
            self.arrivals.append((now, index))
            if self.t_first is None and index in sent:
                self.t_first = now
                self._first.set()

    async def wait_first(self, timeout: float = FIRST_FRAME_TIMEOUT_S) -> None:
        try:
            await asyncio.wait_for(self._first.wait(), timeout)
        except TimeoutError:
            raise Broken(f"{self.signaller.name}: no echoed frame within {timeout:.0f} s") from None

    def start_figures(self) -> dict[str, float | None]:
        def ms(t):
            return None if t is None or self.t_offer is None else 1000.0 * (t - self.t_offer)
        return {"answer_ms": ms(self.t_answer), "connected_ms": ms(self.t_connected), "first_frame_ms": ms(self.t_first)}

    async def close(self) -> None:
        await self.signaller.close()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def analyse(client: StreamClient, start: float, end: float) -> dict[str, Any]:
    """Figures for the frames received in ``[start, end)`` (arrivals after ``end`` only settle losses)."""
    fps = client.fps
    sent = client.source.sent_at
    first_arrival: dict[int, float] = {}
    window: list[tuple[float, int]] = []
    unreadable = duplicates = out_of_order = 0
    newest = -1
    for t, index in client.arrivals:
        inside = start <= t < end
        if index not in sent:
            unreadable += inside
            continue
        if inside:
            window.append((t, index))
        if index in first_arrival:
            duplicates += inside
            continue
        first_arrival[index] = t
        if inside and index < newest:
            out_of_order += 1
        newest = max(newest, index)
    seconds = end - start
    fresh = [(t, i) for t, i in window if first_arrival.get(i) == t]
    latencies = [1000.0 * (t - sent[i]) for t, i in fresh]
    sent_in_window = [i for i, t in sent.items() if start <= t < end]
    lost = [i for i in sent_in_window if i not in first_arrival]
    times = [t for t, _ in window]
    gaps = np.diff(times) * 1000.0 if len(times) > 2 else np.array([])
    interval_ms = 1000.0 / fps
    quarters = []
    for q in range(4):
        a, b = start + q * seconds / 4, start + (q + 1) * seconds / 4
        quarters.append(pct([1000.0 * (t - sent[i]) for t, i in fresh if a <= t < b], 50))
    return {
        "seconds": seconds,
        "delivered_fps": len(fresh) / seconds,
        "received_fps": len(window) / seconds,
        "frames_delivered": len(fresh),
        "frames_sent": len(sent_in_window),
        "frames_lost": len(lost),
        "lost_fraction": (len(lost) / len(sent_in_window)) if sent_in_window else None,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "unreadable": unreadable,
        "latency_ms": summary(latencies),
        "latency_p50_by_quarter_ms": quarters,
        "arrival_gap_ms": {
            "mean": float(gaps.mean()) if gaps.size else None,
            "jitter": float(gaps.std() / gaps.mean()) if gaps.size and gaps.mean() > 0 else None,
            "stalls": int((gaps > 1.5 * interval_ms).sum()) if gaps.size else 0,
        },
        "latencies": [round(v, 2) for v in latencies],
    }


# Scenarios -----------------------------------------------------------------------------------


@dataclass
class Setup:
    http: httpx.AsyncClient
    base_url: str
    server: subprocess.Popen
    peer: subprocess.Popen
    peer_port: int
    args: argparse.Namespace

    @property
    def width(self) -> int:
        return self.args.width

    @property
    def height(self) -> int:
        return self.args.height

    def signaller(self, side: str):
        return ScopeSignaller(self.http) if side == "ours" else EchoSignaller(self.peer_port)

    def pid(self, side: str) -> int:
        return self.server.pid if side == "ours" else self.peer.pid


async def load(
    http: httpx.AsyncClient,
    load_params: dict | None,
    pipeline_id: str = "passthrough",
    poll_s: float = 0.01,
    timeout_s: float = LOAD_TIMEOUT_S,
) -> float:
    """Load ``pipeline_id`` over REST and wait until it is loaded; returns the seconds it took."""
    body: dict[str, Any] = {"pipeline_id": pipeline_id}
    if load_params is not None:
        body["load_params"] = load_params
    t0 = time.monotonic()
    reply = await http.post("/api/v1/pipeline/load", json=body)
    if reply.status_code != 200:
        raise Broken(f"loading {pipeline_id} answered {reply.status_code}: {reply.text[:300]}")
    while time.monotonic() - t0 < timeout_s:
        status = (await http.get("/api/v1/pipeline/status")).json()
        if status["status"] == "loaded" and status.get("pipeline_id") in (None, pipeline_id):
            return time.monotonic() - t0
        if status["status"] == "error":
            raise Broken(f"loading {pipeline_id} failed: {status.get('error')}")
        await asyncio.sleep(poll_s)
    raise Broken(f"{pipeline_id} did not load in {timeout_s:.0f} s")


async def wait_no_sessions(http: httpx.AsyncClient, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if not (await http.get("/api/v1/webrtc/sessions")).json()["sessions"]:
                return
        await asyncio.sleep(0.05)


async def session_start(setup: Setup, side: str) -> dict[str, Any]:
    client = StreamClient(setup.signaller(side), setup.args.fps, setup.width, setup.height)
    try:
        await client.start()
        await client.wait_first()
        return client.start_figures()
    finally:
        await client.close()
        if side == "ours":
            await wait_no_sessions(setup.http)


async def start_trials(setup: Setup, count: int) -> dict[str, Any]:
    """C11: alternate bare and ours so slow drift on the machine hits both alike."""
    results: dict[str, list[dict]] = {"bare": [], "ours": []}
    for _ in range(count):
        for side in ("bare", "ours"):
            results[side].append(await session_start(setup, side))
            await asyncio.sleep(0.2)
    out = {}
    for side, runs in results.items():
        out[side] = {key: summary([r[key] for r in runs if r[key] is not None]) for key in runs[0]}
    return out


async def stream_run(setup: Setup, side: str, warmup: float, seconds: float) -> dict[str, Any]:
    """C2/C3: one session at the target rate; figures over a steady-state window."""
    client = StreamClient(setup.signaller(side), setup.args.fps, setup.width, setup.height)
    pid = setup.pid(side)
    try:
        await client.start()
        await client.wait_first()
        start = client.t_first + warmup
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        cpu0, client0, busy0 = cpu_snapshot(pid), cpu_snapshot(os.getpid()), machine_busy()
        end = start + seconds
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        cpu1, client1, busy1 = cpu_snapshot(pid), cpu_snapshot(os.getpid()), machine_busy()
        await asyncio.sleep(GRACE_S)
    finally:
        await client.close()
        if side == "ours":
            await wait_no_sessions(setup.http)
    figures = analyse(client, start, end)
    figures["start"] = client.start_figures()
    figures["cpu"] = cpu_delta(cpu0, cpu1, figures["frames_delivered"])
    figures["client_cpu"] = cpu_delta(client0, client1, figures["frames_delivered"])
    figures["other_processes_cores"] = others_load(busy0, busy1, end - start, figures["cpu"], figures["client_cpu"])
    return figures


async def run_probe(setup: Setup, count: int, interval: float, max_seconds: float) -> dict[str, Any]:
    """/health latencies from the probe process, with the server's and the machine's CPU meanwhile."""
    cpu0, busy0, t0 = cpu_snapshot(setup.server.pid), machine_busy(), time.monotonic()
    result = await _probe(setup, count, interval, max_seconds)
    cpu1, busy1, seconds = cpu_snapshot(setup.server.pid), machine_busy(), time.monotonic() - t0
    if cpu0 and cpu1:
        result["server_cores"] = (cpu1["total"] - cpu0["total"]) / seconds
        result["server_loop_cores"] = (cpu1["main"] - cpu0["main"]) / seconds
    result["machine_busy_cores"] = (busy1 - busy0) / seconds
    return result


async def _probe(setup: Setup, count: int, interval: float, max_seconds: float) -> dict[str, Any]:
    argv = [sys.executable, str(HERE / "health_probe.py"), setup.base_url + "/health",
            "--count", str(count), "--interval", str(interval), "--max-seconds", str(max_seconds)]
    proc = spawn(argv, stdout=subprocess.PIPE)
    loop = asyncio.get_running_loop()
    try:
        out, _ = await loop.run_in_executor(None, proc.communicate, None, max_seconds + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"error": "health probe timed out", **summary([])}
    try:
        data = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "health probe printed nothing", **summary([])}
    result = summary(data["latencies_ms"])
    result["failures"] = len(data["failures"])
    result["probe_seconds"] = data["seconds"]
    return result


async def while_probing(setup: Setup, work, count: int, interval: float, max_seconds: float):
    """Run ``work(stop)`` until the probe finishes; returns (probe figures, work result)."""
    stop = asyncio.Event()
    task = asyncio.ensure_future(work(stop))
    await asyncio.sleep(0.3)  # let the work get going before the first probe request
    try:
        probe = await run_probe(setup, count, interval, max_seconds)
    finally:
        stop.set()
    try:
        result = await asyncio.wait_for(task, 60)
    except TimeoutError:
        result = {"error": "work did not stop in 60 s"}
    return probe, result


async def load_loop(setup: Setup, stop: asyncio.Event, max_loads: int = 200) -> dict[str, Any]:
    durations: list[float] = []
    height = 256
    errors = []
    while not stop.is_set() and len(durations) < max_loads:
        try:
            durations.append(1000.0 * await load(setup.http, {"height": height}))
        except (Broken, httpx.HTTPError) as exc:
            errors.append(str(exc)[:200])
            await asyncio.sleep(0.1)
        height = 512 if height == 256 else 256
    return {"loads": len(durations), "load_ms": summary(durations), "first_load_ms": durations[0] if durations else None,
            "errors": errors[:3]}


async def start_loop(setup: Setup, stop: asyncio.Event, max_starts: int = 50) -> dict[str, Any]:
    figures: list[dict] = []
    errors = []
    while not stop.is_set() and len(figures) + len(errors) < max_starts:
        try:
            figures.append(await session_start(setup, "ours"))
        except (Broken, httpx.HTTPError) as exc:
            errors.append(str(exc)[:200])
    return {"starts": len(figures), "first_frame_ms": summary([f["first_frame_ms"] for f in figures]),
            "answer_ms": summary([f["answer_ms"] for f in figures]), "errors": errors[:3]}


async def two_sessions(setup: Setup, count: int, interval: float, max_seconds: float, warmup: float):
    clients = [StreamClient(ScopeSignaller(setup.http), setup.args.fps, setup.width, setup.height) for _ in range(2)]
    try:
        for client in clients:
            await client.start()
        for client in clients:
            await client.wait_first()
        await asyncio.sleep(warmup)
        cpu0 = cpu_snapshot(setup.server.pid)
        start = time.monotonic()
        probe = await run_probe(setup, count, interval, max_seconds)
        end = time.monotonic()
        cpu1 = cpu_snapshot(setup.server.pid)
        await asyncio.sleep(GRACE_S)
    finally:
        for client in clients:
            await client.close()
        await wait_no_sessions(setup.http)
    sessions = [analyse(c, start, end) for c in clients]
    frames = sum(s["frames_delivered"] for s in sessions)
    for s in sessions:
        s.pop("latencies")
    return probe, {"sessions": sessions, "cpu": cpu_delta(cpu0, cpu1, frames)}


# Micro-measurements (in this process, before the servers start) ------------------------------


def microbench(width: int, height: int, fps: float, frames: int = 90) -> dict[str, Any]:
    """The bare VP8 encode (C1/C3 anchor) and the per-frame conversions our server adds."""
    from aiortc.codecs import get_encoder
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    encoder = get_encoder(codec)
    rgb = [pattern_frame(i, width, height) for i in range(frames)]
    yuv = []
    for i, array in enumerate(rgb):
        frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = int(i * 90000 / fps), fractions.Fraction(1, 90000)
        yuv.append(frame)
    cpu, wall = [], []
    for frame in yuv:
        c0, w0 = time.thread_time(), time.perf_counter()
        encoder.encode(frame, False)
        cpu.append(1000.0 * (time.thread_time() - c0))
        wall.append(1000.0 * (time.perf_counter() - w0))
    steady = slice(10, None)  # skip the first keyframe and the encoder's start-up

    def timed(fn, repeat: int = 60) -> float:
        """Median thread CPU ms (not wall time: other processes on the machine do not inflate it)."""
        samples = []
        for i in range(repeat):
            t0 = time.thread_time()
            fn(i % len(rgb))
            samples.append(1000.0 * (time.thread_time() - t0))
        return float(np.median(samples))

    return {
        "vp8_encode_cpu_ms": float(np.mean(cpu[steady])),
        "vp8_encode_wall_ms": float(np.mean(wall[steady])),
        "to_ndarray_rgb24_ms": timed(lambda i: yuv[i].to_ndarray(format="rgb24")),
        "from_ndarray_rgb24_ms": timed(lambda i: av.VideoFrame.from_ndarray(rgb[i], format="rgb24")),
        "rgb24_to_yuv420p_ms": timed(lambda i: av.VideoFrame.from_ndarray(rgb[i], format="rgb24").reformat(format="yuv420p"))
        - timed(lambda i: av.VideoFrame.from_ndarray(rgb[i], format="rgb24")),
        "stack_4_frames_ms": timed(lambda i: np.stack([rgb[(i + k) % len(rgb)] for k in range(PASSTHROUGH_CHUNK)])),
        "pattern_frame_ms": timed(lambda i: pattern_frame(i, width, height)),
    }


# Servers -------------------------------------------------------------------------------------


def server_command(override: str | None = None) -> list[str]:
    if override:
        return shlex.split(override)
    exe = shutil.which("daydream-scope")
    if exe:
        return [exe]
    return [sys.executable, "-c", "from scope.cli import main; main()"]


async def start_servers(tmp: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str, subprocess.Popen, int, float]:
    env = dict(os.environ)
    for name in ("models", "logs", "assets", "lora", "runtime"):
        (tmp / name).mkdir(exist_ok=True)
    env.update({
        "DAYDREAM_SCOPE_MODELS_DIR": str(tmp / "models"),
        "DAYDREAM_SCOPE_LOGS_DIR": str(tmp / "logs"),
        "DAYDREAM_SCOPE_ASSETS_DIR": str(tmp / "assets"),
        "DAYDREAM_SCOPE_LORA_DIR": str(tmp / "lora"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "PIPELINE": "",
    })
    env.pop("HF_TOKEN", None)  # no TURN lookups: host candidates only
    port = free_port()
    server_log = tmp / "server.log"
    t0 = time.monotonic()
    server = spawn([*server_command(args.server_command), "--port", str(port), "-N", "--host", "127.0.0.1"], env=env, log=server_log)
    peer = spawn([sys.executable, str(HERE / "echo_peer.py")], stdout=subprocess.PIPE)
    loop = asyncio.get_running_loop()
    try:
        line = await asyncio.wait_for(loop.run_in_executor(None, peer.stdout.readline), 30)
    except TimeoutError:
        raise Broken("the echo peer did not start in 30 s") from None
    if not line.startswith(b"READY "):
        raise Broken(f"the echo peer did not start: {line!r}")
    peer_port = int(line.split()[1])
    base_url = f"http://127.0.0.1:{port}"
    await wait_healthy(server, base_url, server_log, t0)
    return server, base_url, peer, peer_port, time.monotonic() - t0


# Report --------------------------------------------------------------------------------------


def derived(report: dict[str, Any]) -> dict[str, Any]:
    fps = report["config"]["fps"]
    interval = 1000.0 / fps
    ours, bare = report["stream"]["ours"], report["stream"]["bare"]
    o50, b50 = ours["latency_ms"]["p50"], bare["latency_ms"]["p50"]
    chunk_ms = (PASSTHROUGH_CHUNK - 1) * interval
    d: dict[str, Any] = {"frame_interval_ms": interval, "chunk_buffering_ms": chunk_ms}
    if o50 is not None and b50 is not None:
        d["c2_ratio"] = ratio(o50 - interval, b50 - interval)
        d["c2_ratio_two_hop"] = ratio(o50 - 2 * interval, b50 - 2 * interval)
        d["c2_added_ms"] = o50 - b50
        d["c2_added_beyond_chunking_ms"] = o50 - b50 - chunk_ms
        d["c2_ratio_beyond_chunking"] = ratio(o50 - chunk_ms - interval, b50 - interval)
    d["c3_fps_ratio_ours"] = ours["delivered_fps"] / fps
    d["c3_fps_ratio_bare"] = bare["delivered_fps"] / fps
    micro = report["micro"]
    d["c3_cpu_ratio_vs_encode"] = ratio(ours["cpu"]["ms_per_frame"], micro["vp8_encode_cpu_ms"])
    d["c3_cpu_ratio_vs_bare_echo"] = ratio(ours["cpu"]["ms_per_frame"], bare["cpu"]["ms_per_frame"])
    starts = report.get("starts")
    if starts:
        d["c11_ratio"] = ratio(starts["ours"]["first_frame_ms"]["p50"], starts["bare"]["first_frame_ms"]["p50"])
        d["c11_added_ms"] = (starts["ours"]["first_frame_ms"]["p50"] or 0) - (starts["bare"]["first_frame_ms"]["p50"] or 0)
    return d


def print_report(report: dict[str, Any]) -> None:
    cfg = report["config"]
    fps = cfg["fps"]
    interval = 1000.0 / fps
    ours, bare = report["stream"]["ours"], report["stream"]["bare"]
    d = report["derived"]
    micro = report["micro"]
    w = 34

    def row(label: str, a: str, b: str, anchor: str = "") -> None:
        print(f"  {label:<{w}} {a:>14} {b:>14}   {anchor}")

    print()
    print(f"== Streaming, one session: {cfg['width']}x{cfg['height']} at {fps:g} FPS, VP8, "
          f"{cfg['seconds']:g} s steady state after {cfg['warmup']:g} s warm-up ==")
    row("", "ours (server)", "bare echo", "anchor / target")
    row("delivered FPS (distinct frames)", fmt(ours["delivered_fps"], 2), fmt(bare["delivered_fps"], 2), f"target {fps:g}")
    row("received FPS (incl. repeats)", fmt(ours["received_fps"], 2), fmt(bare["received_fps"], 2))
    row("frames sent / lost", f"{ours['frames_sent']} / {ours['frames_lost']}", f"{bare['frames_sent']} / {bare['frames_lost']}")
    row("repeats / out of order / unreadable", f"{ours['duplicates']}/{ours['out_of_order']}/{ours['unreadable']}",
        f"{bare['duplicates']}/{bare['out_of_order']}/{bare['unreadable']}")
    two_hop = 2 * BARE_SINGLE_HOP_P50_MS_30FPS if fps == 30 else 2 * (interval + BARE_SINGLE_HOP_OVERHEAD_MS)
    for key, anchor in (("p50", f"bare 2 hops ≈ {two_hop:.0f} ms (2 x {BARE_SINGLE_HOP_P50_MS_30FPS} at 30 FPS)"), ("p95", ""), ("p99", ""), ("max", "")):
        row(f"latency {key} (ms)", fmt(ours["latency_ms"][key]), fmt(bare["latency_ms"][key]), anchor)
    q_o = " ".join(fmt(v, 0) for v in ours["latency_p50_by_quarter_ms"])
    q_b = " ".join(fmt(v, 0) for v in bare["latency_p50_by_quarter_ms"])
    row("latency p50 by quarter (ms)", q_o, q_b, "flat = no queue building up")
    row("arrival gap mean (ms) / jitter", f"{fmt(ours['arrival_gap_ms']['mean'])} / {fmt(ours['arrival_gap_ms']['jitter'], 2)}",
        f"{fmt(bare['arrival_gap_ms']['mean'])} / {fmt(bare['arrival_gap_ms']['jitter'], 2)}", f"{interval:.1f} ms / ≤ 0.05")
    row("stalls (gap > 1.5 interval)", fmt(ours["arrival_gap_ms"]["stalls"]), fmt(bare["arrival_gap_ms"]["stalls"]), "0")
    row("peer CPU ms / delivered frame", fmt(ours["cpu"]["ms_per_frame"], 2), fmt(bare["cpu"]["ms_per_frame"], 2),
        f"VP8 encode alone: {fmt(micro['vp8_encode_cpu_ms'], 2)} here, {VP8_ENCODE_MS_512[0]}-{VP8_ENCODE_MS_512[1]} in notes")
    row("  of which event-loop thread", fmt(ours["cpu"]["main_ms_per_frame"], 2), fmt(bare["cpu"]["main_ms_per_frame"], 2))
    row("  of which other threads", fmt(ours["cpu"].get("other_ms_per_frame"), 2), fmt(bare["cpu"].get("other_ms_per_frame"), 2))
    row("peer CPU, % of one core", fmt(100 * ours["cpu"]["total_s"] / ours["seconds"] if ours["cpu"]["total_s"] is not None else None, 0),
        fmt(100 * bare["cpu"]["total_s"] / bare["seconds"] if bare["cpu"]["total_s"] is not None else None, 0))
    row("client CPU ms / frame (this process)", fmt(ours["client_cpu"]["ms_per_frame"], 2), fmt(bare["client_cpu"]["ms_per_frame"], 2))
    row("other processes on the machine (cores)", fmt(ours["other_processes_cores"], 2), fmt(bare["other_processes_cores"], 2),
        "noise: near 0 on a quiet machine")

    starts = report.get("starts")
    if starts:
        print()
        print(f"== Session start (C11): offer sent to first echoed frame, {cfg['starts']} trials each, alternating ==")
        row("", "ours (server)", "bare echo")
        for key in ("answer_ms", "connected_ms", "first_frame_ms"):
            o, b = starts["ours"][key], starts["bare"][key]
            row(f"{key.replace('_ms', '')} p50 (max) ms", f"{fmt(o['p50'], 0)} ({fmt(o['max'], 0)})", f"{fmt(b['p50'], 0)} ({fmt(b['max'], 0)})")
        row("first frame in steady-state run (ms)", fmt(ours["start"]["first_frame_ms"], 0), fmt(bare["start"]["first_frame_ms"], 0))

    print()
    print("== Ratios (performance notes §5.1) ==")

    def ratio_line(label: str, value: str, target: str) -> None:
        print(f"  {label:<58} {value:>10}   {target}")

    ratio_line("C2 (ours p50 - interval) / (bare p50 - interval)", fmt(d.get("c2_ratio"), 2), f"target ≤ {C2_RATIO_TARGET}")
    ratio_line("C2 added latency, ours p50 - bare p50 (ms)", fmt(d.get("c2_added_ms")), f"target ≤ +{C2_ADDED_MS_TARGET:g} ms")
    ratio_line(f"   of which chunking by design ({PASSTHROUGH_CHUNK - 1} x {interval:.1f} ms)", fmt(d["chunk_buffering_ms"]), "")
    ratio_line("   beyond chunking (ms)", fmt(d.get("c2_added_beyond_chunking_ms")), f"target ≤ +{C2_ADDED_MS_TARGET:g} ms")
    ratio_line("C2 two-hop form: (p50 - 2 x interval) ratio", fmt(d.get("c2_ratio_two_hop"), 2), "(both paths hold one frame per hop)")
    ratio_line("C2 with chunking removed from ours", fmt(d.get("c2_ratio_beyond_chunking"), 2), f"target ≤ {C2_RATIO_TARGET}")
    ratio_line(f"C3 delivered FPS / {fps:g} (ours)", fmt(d["c3_fps_ratio_ours"], 3), f"target ≥ {C3_FPS_RATIO_TARGET}")
    ratio_line(f"C3 delivered FPS / {fps:g} (bare)", fmt(d["c3_fps_ratio_bare"], 3), "reference")
    ratio_line("C3 server CPU per frame / bare VP8 encode per frame", fmt(d.get("c3_cpu_ratio_vs_encode"), 2),
               f"target ≤ {C3_CPU_RATIO_TARGET} (an echo also decodes)")
    ratio_line("C3 server CPU per frame / bare echo peer CPU per frame", fmt(d.get("c3_cpu_ratio_vs_bare_echo"), 2), "same work, same codec")
    if "c11_ratio" in d:
        ratio_line("C11 start ratio (first frame p50, ours / bare)", fmt(d.get("c11_ratio"), 2), f"target ≤ {C11_RATIO_TARGET}")
        ratio_line("C11 start, ours - bare (ms)", fmt(d.get("c11_added_ms"), 0), "")

    print()
    print(f"== Per-frame costs in this process, {cfg['width']}x{cfg['height']} (median thread-CPU ms) ==")
    print(f"  VP8 encode of prebuilt yuv420p frames (mean): {fmt(micro['vp8_encode_cpu_ms'], 2)} CPU, {fmt(micro['vp8_encode_wall_ms'], 2)} wall"
          f"   (notes §3.1: {VP8_ENCODE_MS_512[0]}-{VP8_ENCODE_MS_512[1]} ms on harder content)")
    print(f"  decoded frame -> rgb24 ndarray (server input, on the event loop): {fmt(micro['to_ndarray_rgb24_ms'], 2)}")
    print(f"  np.stack of one {PASSTHROUGH_CHUNK}-frame chunk (on the event loop): {fmt(micro['stack_4_frames_ms'], 2)}")
    print(f"  rgb24 ndarray -> VideoFrame (server output, on the event loop): {fmt(micro['from_ndarray_rgb24_ms'], 2)}")
    print(f"  rgb24 -> yuv420p before encoding (encoder thread): {fmt(micro['rgb24_to_yuv420p_ms'], 2)}")
    print(f"  test pattern generation (client, both paths): {fmt(micro['pattern_frame_ms'], 2)}")

    health = report.get("health")
    if health:
        print()
        print("== /health latency (ms), one request every "
              f"{cfg['health_interval'] * 1000:.0f} ms from its own process ==")
        print(f"  {'condition':<40} {'n':>4} {'p50':>6} {'p95':>6} {'p99':>6} {'max':>6} {'server':>7} {'loop':>5} {'busy':>5}")
        for name, entry in health.items():
            probe = entry["probe"]
            print(f"  {name:<40} {probe['n']:>4} {fmt(probe['p50'], 2):>6} {fmt(probe['p95'], 2):>6} "
                  f"{fmt(probe['p99'], 2):>6} {fmt(probe['max'], 1):>6} {fmt(probe.get('server_cores'), 2):>7} "
                  f"{fmt(probe.get('server_loop_cores'), 2):>5} {fmt(probe.get('machine_busy_cores'), 2):>5}")
            if entry.get("note"):
                print(f"  {'':<40} {entry['note']}")
        print("  (server: cores the server used; loop: its event-loop thread; busy: the whole machine, "
              f"{report['environment']['cpus']} cores)")


def print_header(report: dict[str, Any]) -> None:
    env = report["environment"]
    print(f"Scope passthrough benchmark  ({env['python']}, aiortc {env['aiortc']}, PyAV {env['av']}, "
          f"{env['cpus']} CPUs, {env['machine']})")


# Main ----------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "config": {"seconds": args.seconds, "warmup": args.warmup, "fps": args.fps, "width": args.width,
                   "height": args.height, "starts": args.starts, "health_requests": args.health_requests,
                   "health_interval": args.health_interval},
        "environment": {"python": platform.python_version(), "aiortc": aiortc_version, "av": av.__version__,
                        "cpus": os.cpu_count(), "machine": platform.machine()},
    }
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            loop.add_signal_handler(sig, task.cancel)  # wakes the loop at once; cleanup runs below
    print_header(report)
    print("measuring per-frame costs in this process ...", flush=True)
    report["micro"] = microbench(args.width, args.height, args.fps)
    tmp = Path(tempfile.mkdtemp(prefix="scope-bench-"))
    try:
        print("starting the server and the bare echo peer ...", flush=True)
        server, base_url, peer, peer_port, started_s = await start_servers(tmp, args)
        report["server_start_s"] = started_s
        async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as http:
            setup = Setup(http, base_url, server, peer, peer_port, args)
            report["first_load_ms"] = 1000.0 * await load(http, None)
            if args.starts > 0:
                print(f"session starts ({args.starts} each) ...", flush=True)
                report["starts"] = await start_trials(setup, args.starts)
            runs: dict[str, list[dict]] = {"bare": [], "ours": []}
            for r in range(args.repeats):
                for side in (("bare", "ours") if r % 2 == 0 else ("ours", "bare")):
                    print(f"streaming: {side} ({args.warmup:g} s warm-up + {args.seconds:g} s) ...", flush=True)
                    runs[side].append(await stream_run(setup, side, args.warmup, args.seconds))
            report["stream"] = {side: median_run(rs) for side, rs in runs.items()}
            if args.repeats > 1:
                report["stream_repeats"] = {side: [rr["latency_ms"]["p50"] for rr in rs] for side, rs in runs.items()}
            if args.health_requests > 0:
                report["health"] = await health_conditions(setup, args)
    except Broken:
        print(f"server log (last lines):\n{log_tail(tmp / 'server.log', 20)}", file=sys.stderr)
        raise
    finally:
        stop_children()
        if not args.keep_temp:
            shutil.rmtree(tmp, ignore_errors=True)
    report["derived"] = derived(report)
    return report


def median_run(runs: list[dict]) -> dict:
    """The run with the median latency p50 (one run: itself)."""
    ordered = sorted(runs, key=lambda r: r["latency_ms"]["p50"] or 0.0)
    return ordered[len(ordered) // 2]


async def health_conditions(setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    n, gap = args.health_requests, args.health_interval
    limit = max(5.0, n * gap * 3)
    out: dict[str, Any] = {}
    print("/health: idle ...", flush=True)
    out["idle (passthrough loaded)"] = {"probe": await run_probe(setup, n, gap, limit)}

    print("/health: during pipeline loads ...", flush=True)
    probe, loads = await while_probing(setup, lambda stop: load_loop(setup, stop), n, gap, limit)
    out["passthrough loads, 256/512 alternating"] = {
        "probe": probe, "work": loads,
        "note": f"{loads.get('loads')} loads, p50 {fmt(loads.get('load_ms', {}).get('p50'), 0)} ms, "
                f"first {fmt(loads.get('first_load_ms'), 0)} ms",
    }
    await load(setup.http, None)

    print("/health: during session starts ...", flush=True)
    probe, starts = await while_probing(setup, lambda stop: start_loop(setup, stop), n, gap, limit)
    out["session starts, one after another"] = {
        "probe": probe, "work": starts,
        "note": f"{starts.get('starts')} starts, first frame p50 {fmt(starts.get('first_frame_ms', {}).get('p50'), 0)} ms",
    }

    print("/health: during two streaming sessions ...", flush=True)
    probe, two = await two_sessions(setup, n, gap, limit, warmup=2.0)
    s = two["sessions"]
    out["two passthrough sessions streaming"] = {
        "probe": probe, "work": two,
        "note": "delivered FPS " + " / ".join(fmt(x["delivered_fps"], 1) for x in s)
                + ", latency p50 " + " / ".join(fmt(x["latency_ms"]["p50"], 0) for x in s) + " ms"
                + f", server {fmt(two['cpu']['ms_per_frame'], 1)} CPU ms/frame",
    }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="steady-state window per streaming run (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after the first frame left out (default 3)")
    parser.add_argument("--fps", type=float, default=30.0, help="rate of the test pattern (default 30)")
    parser.add_argument("--size", default="512x512", help="WIDTHxHEIGHT of the test pattern (default 512x512)")
    parser.add_argument("--repeats", type=int, default=1, help="streaming runs per side, alternating order (default 1)")
    parser.add_argument("--starts", type=int, default=5, help="session-start trials per side (default 5; 0 skips)")
    parser.add_argument("--health-requests", type=int, default=200, help="/health requests per condition (default 200; 0 skips)")
    parser.add_argument("--health-interval", type=float, default=0.02, help="seconds between /health requests (default 0.02)")
    parser.add_argument("--server-command", help="command that starts the server instead of daydream-scope "
                        "(it gets --port N -N --host 127.0.0.1 appended), e.g. to measure a variant")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temp dirs (server log) for inspection")
    args = parser.parse_args(argv)
    try:
        args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error("--size must look like 512x512")
    if args.width < BITS * BLOCK or args.height < BLOCK:
        parser.error(f"--size: the index stamp needs at least {BITS * BLOCK}x{BLOCK} pixels")
    args.repeats = max(1, args.repeats)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    status, report = run_servers(lambda: run(args), "the server and the echo peer")
    if report is None:
        return status
    print_report(report)
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
