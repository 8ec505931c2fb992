"""The WebSocket transport against WebRTC in headless Chromium: the same stream, one run, ratios.

    python bench/transports.py [--seconds 15] [--warmup 3] [--fps 30] [--size 512x512] [--throttle-kbps 1500] [--json out.json]

Starts ``daydream-scope`` on 127.0.0.1 and loads ``passthrough`` (video mode: the output is the
input). A page in Debian's Chromium draws a canvas at ``--fps`` with the frame index stamped in
its pixels and streams it through the server's own browser modules (``stream.js`` over WebRTC,
``ws-stream.js`` over the WebSocket with each output encoding the server offers); the
``<video>`` it plays is read back on every presented frame. For each: latency p50/p95, delivered
FPS, bytes per second, server CPU per frame and the server's own session stats. Then the
WebSocket once more per encoding through a rate-limited TCP proxy (a slow link): delivered FPS,
latency and the frames the server dropped for it. See bench/README.md for each figure.

It prints figures and ratios and never fails on time: the exit status is 0 unless something is
broken (the server or the browser does not start, no frame ever comes back).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psutil
from playwright.async_api import async_playwright

from bench.longlive import machine, parse_size
from bench.passthrough import (
    Broken, cpu_delta, cpu_snapshot, fmt, free_port, load, log_tail, machine_busy, ratio, run_servers, server_command,
    spawn, stop_children, summary, wait_healthy, wait_no_sessions,
)
from bench.report import write_json
from bench.throttle_proxy import ThrottleProxy
from tests.chromium import CHROMIUM, CHROMIUM_ARGS  # the flags every browser test runs with

PAGE = Path(__file__).resolve().parent / "transports_page.html"

#: The runs, in the order they stream: (name, transport, encoding, through the throttled link).
RUNS = (
    ("webrtc", "webrtc", None, False),
    ("websocket-h264", "websocket", "h264", False),
    ("websocket-jpeg", "websocket", "jpeg", False),
    ("throttled-h264", "websocket", "h264", True),
    ("throttled-jpeg", "websocket", "jpeg", True),
)
NAMES = tuple(name for name, *_ in RUNS)
#: Each WebSocket run against WebRTC, and the two encodings against each other.
COMPARISONS = (("websocket-h264", "webrtc"), ("websocket-jpeg", "webrtc"), ("websocket-h264", "websocket-jpeg"))
RATIO_FIGURES = ("latency_p50_ms", "latency_p95_ms", "delivered_fps", "bytes_per_s", "server_cpu_ms_per_frame")

#: The stamp: this many bits, each a square block along the top edge, no larger than this.
MIN_BITS = 12
MAX_BLOCK = 32
MIN_BLOCK = 8

#: What the page shows of a stream that brought no frame back.
PAGE_STATE = """() => window.bench ? {socket: window.socketBytes, ...bench.collect(), drawnAt: undefined, shown: undefined}
  : {loaded: false}"""

# Bounds: every wait has one.
FIRST_FRAME_TIMEOUT_S = 30.0
STATS_POLL_S = 0.5
#: After a window, frames still in flight are read before the page stops, so none counts as lost.
GRACE_S = 1.0
#: How long the page's own stop (its DELETE, then closing) may take before the bench ends the
#: session itself: a page stuck in a busy browser must not hold the runs after it.
STOP_TIMEOUT_S = 15.0


# The server and the page -----------------------------------------------------------------------


async def start_server(tmp: Path) -> tuple[Any, str, float]:
    """``daydream-scope`` on a free loopback port with its own temp dirs; WebRTC stays on loopback."""
    env = dict(os.environ)
    for name in ("models", "logs", "assets", "lora", "runtime"):
        (tmp / name).mkdir(exist_ok=True)
    env.update({
        "DAYDREAM_SCOPE_MODELS_DIR": str(tmp / "models"),
        "DAYDREAM_SCOPE_LOGS_DIR": str(tmp / "logs"),
        "DAYDREAM_SCOPE_ASSETS_DIR": str(tmp / "assets"),
        "DAYDREAM_SCOPE_LORA_DIR": str(tmp / "lora"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "DAYDREAM_SCOPE_ICE_HOST_ADDRESSES": "127.0.0.1",
        "DAYDREAM_SCOPE_STUN_FALLBACK": "stun:127.0.0.1:3478",  # nothing answers: no wait on the internet
        "PIPELINE": "",
    })
    env.pop("HF_TOKEN", None)  # no TURN lookups: host candidates only
    port = free_port()
    log = tmp / "server.log"
    started = time.monotonic()
    server = spawn([*server_command(), "--port", str(port), "-N", "--host", "127.0.0.1"], env=env, log=log)
    base_url = f"http://127.0.0.1:{port}"
    await wait_healthy(server, base_url, log, started)
    return server, base_url, time.monotonic() - started


class PageServer:
    """Serves the benchmark page from its own loopback origin (the open API admits loopback pages)."""

    def __init__(self) -> None:
        body = PAGE.read_bytes()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (the standard library's name)
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> PageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def stamp_layout(width: int, seconds: float, fps: float) -> tuple[int, int]:
    """(bits, block): enough bits that the index does not wrap within a run, blocks that fit the width."""
    frames = (seconds + 2 * FIRST_FRAME_TIMEOUT_S) * fps
    bits = max(MIN_BITS, math.ceil(math.log2(frames)))
    block = min(MAX_BLOCK, width // bits)
    if block < MIN_BLOCK:
        raise ValueError(f"a {width}-pixel-wide canvas cannot hold {bits} stamp blocks of {MIN_BLOCK} pixels")
    return bits, block


# CPU of the browser ----------------------------------------------------------------------------


def browser_cpu() -> dict[int, float]:
    """CPU seconds of every Chromium process started below this one, by pid."""
    out = {}
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "chrom" in proc.name().lower():
                times = proc.cpu_times()
                out[proc.pid] = times.user + times.system
    return out


def browser_cpu_seconds(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the browser used between two readings (processes alive at the end; new ones from 0)."""
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


# One run ---------------------------------------------------------------------------------------


async def session_stats(http: httpx.AsyncClient) -> dict[str, Any] | None:
    """The ``stats`` of the one session streaming (``GET api/v1/webrtc/sessions``), or None."""
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        sessions = (await http.get("/api/v1/webrtc/sessions")).json()["sessions"]
        if sessions:
            return {"transport": sessions[0].get("transport"), **sessions[0]["stats"]}
    return None


async def edge(page, http: httpx.AsyncClient, server_pid: int) -> dict[str, Any]:
    """One edge of the measured window: the page's clock and counters, the server's stats and CPU."""
    server_cpu, browser, own, busy = cpu_snapshot(server_pid), browser_cpu(), cpu_snapshot(os.getpid()), machine_busy()
    marked = await page.evaluate("bench.mark()")
    return {"page": marked, "stats": await session_stats(http), "server_cpu": server_cpu, "browser_cpu": browser,
            "own_cpu": own, "busy": busy}


async def stop_page_stream(page, http: httpx.AsyncClient, session_id: str | None) -> dict[str, Any]:
    """Stop the page's stream as a client does (DELETE, then close), timed. A stop that does not
    return within :data:`STOP_TIMEOUT_S` is reported, and the session is deleted from here: if
    that answers, the server was fine and the browser was stuck; if not, the run is broken."""
    started = time.monotonic()
    try:
        await asyncio.wait_for(page.evaluate("bench.stop()"), STOP_TIMEOUT_S)
        return {"seconds": time.monotonic() - started, "timed_out": False, "bench_delete": None}
    except TimeoutError:
        pass
    try:
        reply = await http.delete(f"/api/v1/webrtc/sessions/{session_id}", timeout=STOP_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise Broken(f"the page's stop hung and the server did not answer a DELETE of its session either: {exc!r}") from None
    return {"seconds": None, "timed_out": True, "bench_delete": reply.status_code}


async def stream_run(ctx: dict[str, Any], transport: str, encoding: str | None, api_base: str) -> dict[str, Any]:
    """One session: the page streams, a warm-up, then a window of ``--seconds``; its figures."""
    args, http = ctx["args"], ctx["http"]
    query = {"src": ctx["base_url"] + "/", "base": api_base, "transport": transport, "encoding": encoding or "",
             "fps": args.fps, "width": args.width, "height": args.height, "bits": ctx["bits"], "block": ctx["block"]}
    context = await ctx["browser"].new_context()
    page = await context.new_page()
    logged: list[str] = []
    page.on("console", lambda message: logged.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: logged.append(f"pageerror: {error}"))
    polled: list[dict[str, Any]] = []
    try:
        await page.goto(ctx["page_url"] + "?" + urlencode(query))
        try:
            await page.wait_for_function("window.benchReady === true", timeout=30_000)
            session_id = await page.evaluate("bench.start()")
            await page.wait_for_function("bench.shownCount() > 0", timeout=FIRST_FRAME_TIMEOUT_S * 1000)
        except Exception as exc:  # the page's own words say more than Playwright's timeout
            seen = await page.evaluate(PAGE_STATE) if not page.is_closed() else None
            raise Broken(f"{transport} {encoding or ''}: no frame came back ({str(exc).splitlines()[0]}); "
                         f"the page: {json.dumps(seen)}\n" + "\n".join(logged[-15:])) from None
        await asyncio.sleep(args.warmup)
        start = await edge(page, http, ctx["server"].pid)
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(min(STATS_POLL_S, max(0.0, deadline - time.monotonic())))
            stats = await session_stats(http)
            if stats:
                polled.append(stats)
        end = await edge(page, http, ctx["server"].pid)
        await asyncio.sleep(GRACE_S)
        data = await page.evaluate("bench.collect()")
        stop = await stop_page_stream(page, http, session_id)
    finally:
        await context.close()
        await wait_no_sessions(http)
    figures = page_figures(data, start["page"]["t"], end["page"]["t"])
    figures["stop"] = stop
    seconds = figures["seconds"]
    figures["codec"] = end["page"]["codec"]
    figures["bytes_per_s"] = (end["page"]["received"] - start["page"]["received"]) / seconds
    figures["bytes_per_s_sent"] = (end["page"]["sent"] - start["page"]["sent"]) / seconds
    figures["bytes_per_frame"] = ratio(figures["bytes_per_s"] * seconds, figures["frames_delivered"])
    cpu = cpu_delta(start["server_cpu"], end["server_cpu"], figures["frames_delivered"])
    figures["server_cpu"] = cpu
    figures["server_cpu_ms_per_frame"] = cpu["ms_per_frame"]
    figures["server_cores"] = cpu["total_s"] / seconds if cpu["total_s"] is not None else None
    used = browser_cpu_seconds(start["browser_cpu"], end["browser_cpu"])
    figures["browser_cpu_ms_per_frame"] = 1000.0 * used / figures["frames_delivered"] if figures["frames_delivered"] else None
    figures["browser_cores"] = used / seconds
    own = end["own_cpu"]["total"] - start["own_cpu"]["total"] if start["own_cpu"] and end["own_cpu"] else 0.0
    measured = (cpu["total_s"] or 0.0) + used + own
    # Cores busy on the machine beyond the server, the browser and this process: noise in every figure.
    figures["other_processes_cores"] = max(0.0, (end["busy"] - start["busy"] - measured) / seconds)
    figures["server"] = server_figures(start["stats"], end["stats"], polled, seconds)
    figures["messages"] = [m for m in data["messages"] if m.get("type") not in ("client_info",)][:10]
    figures["states"] = data["states"]
    return figures


def page_figures(data: dict[str, Any], t0: float, t1: float) -> dict[str, Any]:
    """What the page saw in its window ``[t0, t1)`` (its clock, ms): latency, FPS, losses.

    A frame's latency is the moment the ``<video>`` presented it (``presentationTime``) minus the
    moment its index was drawn on the source canvas; each index counts once, when first shown.
    """
    drawn: list[float] = data["drawnAt"]
    seconds = (t1 - t0) / 1000.0
    first_shown: dict[int, float] = {}
    window_latencies: list[float] = []
    presented = unreadable = out_of_order = 0
    newest = -1
    for index, presented_at, _callback_at in data["shown"]:
        inside = t0 <= presented_at < t1
        if index >= len(drawn) or presented_at < drawn[index]:
            unreadable += inside  # a stamp read wrong: an index not drawn yet
            continue
        presented += inside
        if index in first_shown:
            continue
        first_shown[index] = presented_at
        if inside:
            window_latencies.append(presented_at - drawn[index])
            out_of_order += index < newest
        newest = max(newest, index)
    drawn_inside = [i for i, t in enumerate(drawn) if t0 <= t < t1]
    not_shown = [i for i in drawn_inside if i not in first_shown]
    quarters = []
    for q in range(4):
        a, b = t0 + q * (t1 - t0) / 4, t0 + (q + 1) * (t1 - t0) / 4
        lat = [first_shown[i] - drawn[i] for i in first_shown if a <= first_shown[i] < b]
        quarters.append(round(statistics.median(lat), 1) if lat else None)
    latency = summary(window_latencies)
    return {
        "seconds": seconds,
        "frames_delivered": len(window_latencies),
        "delivered_fps": len(window_latencies) / seconds,
        "presented_fps": presented / seconds,
        "source_fps": len(drawn_inside) / seconds,
        "source_frames_not_shown": len(not_shown),
        "not_shown_fraction": len(not_shown) / len(drawn_inside) if drawn_inside else None,
        "unreadable": unreadable,
        "out_of_order": out_of_order,
        "latency_ms": latency,
        "latency_p50_ms": latency["p50"],
        "latency_p95_ms": latency["p95"],
        "latency_p50_by_quarter_ms": quarters,
    }


def server_figures(before: dict | None, after: dict | None, polled: list[dict], seconds: float) -> dict[str, Any]:
    """The session's own stats: its counters' growth over the window, the rest as the last message said."""
    last = after or (polled[-1] if polled else None) or {}
    out: dict[str, Any] = {
        "transport": last.get("transport"),
        "latency_ms": last.get("latency_ms"),
        "latency_ms_median": statistics.median([s["latency_ms"] for s in polled if s.get("latency_ms") is not None])
        if any(s.get("latency_ms") is not None for s in polled) else None,
        "latency_p95_ms": last.get("latency_p95_ms"),
        "fps": last.get("fps"),
        "bytes_per_s": last.get("bytes_per_s"),
        "frames_sent_total": last.get("frames_sent"),
        "link_frames_dropped_total": last.get("link_frames_dropped"),
    }
    for key in ("frames_sent", "link_frames_dropped"):
        grown = (after[key] - before[key]) if before and after and key in before and key in after else None
        out[key] = grown
    out["frames_sent_per_s"] = out["frames_sent"] / seconds if out["frames_sent"] is not None else None
    return out


# The runs --------------------------------------------------------------------------------------


def comparisons(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each WebSocket run ÷ WebRTC, and H.264 ÷ JPEG, figure by figure."""
    out = {}
    for a, b in COMPARISONS:
        if a in runs and b in runs and "skipped" not in runs[a] and "skipped" not in runs[b]:
            out[f"{a} / {b}"] = {key: ratio(runs[a].get(key), runs[b].get(key)) for key in RATIO_FIGURES}
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    bits, block = stamp_layout(args.width, args.warmup + args.seconds, args.fps)
    report: dict[str, Any] = {
        "machine": machine(),
        "config": {"width": args.width, "height": args.height, "fps": args.fps, "seconds": args.seconds,
                   "warmup": args.warmup, "throttle_kbps": args.throttle_kbps, "skip": args.skip,
                   "stamp_bits": bits, "stamp_block": block},
        "runs": {},
        "throttled": {},
    }
    print(json.dumps(report["machine"]), flush=True)
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            loop.add_signal_handler(sig, task.cancel)  # wakes the loop at once; cleanup runs below
    tmp = Path(tempfile.mkdtemp(prefix="scope-bench-"))
    try:
        print("starting the server ...", flush=True)
        server, base_url, report["server_start_s"] = await start_server(tmp)
        async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as http, async_playwright() as playwright:
            report["load_s"] = await load(http, {"height": args.height, "width": args.width})
            offered = (await http.get("/api/v1/transports")).json()
            report["offered"] = offered
            if not CHROMIUM.is_file():
                raise Broken(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS))
            report["browser"] = browser.version
            try:
                with PageServer() as pages:
                    ctx = {"args": args, "http": http, "server": server, "base_url": base_url, "browser": browser,
                           "page_url": pages.url, "bits": bits, "block": block}
                    await all_runs(ctx, offered.get("encodings", []), report)
            finally:
                await browser.close()
    except Broken:
        print(f"server log (last lines):\n{log_tail(tmp / 'server.log', 20)}", file=sys.stderr)
        raise
    finally:
        stop_children()
        shutil.rmtree(tmp, ignore_errors=True)
    report["ratios"] = comparisons(report["runs"])
    return report


async def all_runs(ctx: dict[str, Any], encodings: list[str], report: dict[str, Any]) -> None:
    args = ctx["args"]
    for name, transport, encoding, throttled in RUNS:
        section = report["throttled" if throttled else "runs"]
        if name in args.skip:
            continue
        if encoding and encoding not in encodings:
            section[name] = {"skipped": f"the server does not offer {encoding} (it offers {', '.join(encodings)})"}
            print(f"{name}: skipped, {section[name]['skipped']}", flush=True)
            continue
        print(f"streaming: {name} (warm-up {args.warmup:g} s, then {args.seconds:g} s) ...", flush=True)
        if throttled:
            async with ThrottleProxy(int(ctx["base_url"].rsplit(":", 1)[1]), args.throttle_kbps) as proxy:
                figures = await stream_run(ctx, transport, encoding, f"http://127.0.0.1:{proxy.port}/")
                figures["proxy_bytes_forwarded"] = proxy.bucket.forwarded
        else:
            figures = await stream_run(ctx, transport, encoding, ctx["base_url"] + "/")
        section[name] = figures
        brief = {k: figures[k] for k in ("delivered_fps", "latency_p50_ms", "latency_p95_ms", "bytes_per_s",
                                         "server_cpu_ms_per_frame")}
        print(f"{name}: {json.dumps(brief)} server: {json.dumps(figures['server'])}", flush=True)
        if figures["stop"]["timed_out"]:
            print(f"{name}: the page's stop did not return within {STOP_TIMEOUT_S:g} s; the bench deleted the session "
                  f"(HTTP {figures['stop']['bench_delete']})", flush=True)


# Report ----------------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    cfg = report["config"]
    runs = {k: v for k, v in report["runs"].items() if "skipped" not in v}
    print()
    print(f"== Transports: {cfg['width']}x{cfg['height']} canvas at {cfg['fps']:g} FPS through passthrough, "
          f"{cfg['seconds']:g} s after {cfg['warmup']:g} s of warm-up, Chromium {report.get('browser', '?')} headless ==")
    table(runs)
    for name, run in report["runs"].items():
        if "skipped" in run:
            print(f"  {name}: skipped, {run['skipped']}")
    print()
    print("== Ratios (each figure, first ÷ second) ==")
    print(f"  {'':<34}" + "".join(f"{key.replace('_ms', '').replace('server_cpu', 'cpu'):>16}" for key in RATIO_FIGURES))
    for label, values in report["ratios"].items():
        print(f"  {label:<34}" + "".join(f"{fmt(values[key], 2):>16}" for key in RATIO_FIGURES))
    throttled = {k: v for k, v in report["throttled"].items() if "skipped" not in v}
    print()
    print(f"== Throttled link: the WebSocket through a TCP proxy holding the server's bytes to "
          f"{cfg['throttle_kbps']:g} kbit/s ({cfg['throttle_kbps'] * 125 / 1000:.1f} kB/s) ==")
    print("  WebRTC's media is UDP and cannot go through a TCP proxy: not measured here.")
    if throttled:
        table(throttled)
    for name, run in report["throttled"].items():
        if "skipped" in run:
            print(f"  {name}: skipped, {run['skipped']}")


def table(runs: dict[str, dict[str, Any]]) -> None:
    names = list(runs)

    def row(label: str, values: list[str], note: str = "") -> None:
        print(f"  {label:<40}" + "".join(f"{v:>18}" for v in values) + (f"   {note}" if note else ""))

    def figure(label: str, get, digits: int = 1, note: str = "") -> None:
        row(label, [fmt(get(runs[n]), digits) for n in names], note)

    row("", names)
    row("codec", [str(runs[n].get("codec")) for n in names])
    figure("latency p50 (ms)", lambda r: r["latency_ms"]["p50"], note="drawn on the canvas to presented by <video>")
    figure("latency p95 (ms)", lambda r: r["latency_ms"]["p95"])
    figure("latency max (ms)", lambda r: r["latency_ms"]["max"])
    row("latency p50 by quarter (ms)", [" ".join(fmt(v, 0) for v in runs[n]["latency_p50_by_quarter_ms"]) for n in names],
        "flat: no queue building up")
    figure("delivered FPS (distinct frames)", lambda r: r["delivered_fps"], 2, "source drawn at the --fps asked")
    figure("source FPS (drawn)", lambda r: r["source_fps"], 2)
    figure("presented FPS (repeats included)", lambda r: r["presented_fps"], 2)
    row("source frames not shown / unreadable", [f"{runs[n]['source_frames_not_shown']} / {runs[n]['unreadable']}" for n in names])
    figure("received kB/s (output)", lambda r: r["bytes_per_s"] / 1000, 1, "WebRTC: RTP incl. headers; WebSocket: messages")
    figure("received kB / delivered frame", lambda r: (r["bytes_per_frame"] or 0) / 1000, 2)
    figure("sent kB/s (input)", lambda r: r["bytes_per_s_sent"] / 1000, 1)
    figure("server CPU ms / delivered frame", lambda r: r["server_cpu_ms_per_frame"], 2)
    figure("server CPU (cores)", lambda r: r["server_cores"], 2)
    figure("browser CPU ms / delivered frame", lambda r: r["browser_cpu_ms_per_frame"], 2, "all Chromium processes")
    figure("server stats: latency_ms (median)", lambda r: r["server"]["latency_ms_median"], 1, "input arrival to output sent")
    figure("server stats: fps", lambda r: r["server"]["fps"], 1)
    figure("server stats: frames_sent in window", lambda r: r["server"]["frames_sent"], 0)
    figure("server stats: link_frames_dropped", lambda r: r["server"]["link_frames_dropped"], 0, "in the window")
    figure("server stats: bytes_per_s (kB/s)", lambda r: (r["server"]["bytes_per_s"] / 1000) if r["server"]["bytes_per_s"] is not None else None,
           1, "null for WebRTC")
    row("server stats: transport", [str(runs[n]["server"]["transport"]) for n in names])
    figure("other processes on the machine (cores)", lambda r: r["other_processes_cores"], 2, "noise: near 0 on a quiet machine")


# Main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window per run (default 15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after the first frame left out (default 3)")
    parser.add_argument("--fps", type=float, default=30.0, help="rate the source canvas is drawn at (default 30)")
    parser.add_argument("--size", default="512x512", help="source canvas and pipeline size, WIDTHxHEIGHT (default 512x512)")
    parser.add_argument("--throttle-kbps", type=float, default=1500.0,
                        help="the throttled link's rate, server to browser, kbit/s (default 1500)")
    parser.add_argument("--skip", nargs="*", default=[], choices=NAMES, help="runs left out")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    try:
        args.width, args.height = parse_size(args.size)
    except ValueError:
        parser.error("--size must look like 512x512")
    try:
        stamp_layout(args.width, args.warmup + args.seconds, args.fps)
    except ValueError as exc:
        parser.error(f"--size: {exc}")
    if args.seconds <= 0 or args.fps <= 0 or args.throttle_kbps <= 0:
        parser.error("--seconds, --fps and --throttle-kbps must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    status, report = run_servers(lambda: run(args), "the server and the browser")
    if report is None:
        return status
    print_report(report)
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
