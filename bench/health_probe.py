"""Times ``GET /health`` from its own process, so the caller's event loop cannot skew the figures.

``python bench/health_probe.py URL --count 200 --interval 0.02 --max-seconds 15`` sends up to
``count`` requests over one keep-alive connection, one every ``interval`` seconds (a request
that takes longer delays the next; none overlap), stops after ``max-seconds`` whatever the
count, or at an interrupt (SIGINT), and prints one JSON object: the latencies in ms, when each
was sent (``time.monotonic()``, the same clock in every process of the machine, so a caller can
split the run into phases of its own) and the failures.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import httpx


def probe(url: str, count: int, interval: float, max_seconds: float, timeout: float) -> dict:
    latencies: list[float] = []
    sent_at: list[float] = []
    failures: list[str] = []
    started = time.monotonic()
    with httpx.Client(timeout=timeout) as client:
        try:
            for i in range(count):
                due = started + i * interval
                now = time.monotonic()
                if now - started > max_seconds:
                    break
                if due > now:
                    time.sleep(due - now)
                sent = time.monotonic()
                t0 = time.perf_counter()
                try:
                    reply = client.get(url)
                    ok = reply.status_code == 200
                except httpx.HTTPError as exc:
                    ok, reply = False, exc
                elapsed = (time.perf_counter() - t0) * 1000.0
                if ok:
                    latencies.append(elapsed)
                    sent_at.append(sent)
                else:
                    failures.append(repr(reply)[:200])
        except KeyboardInterrupt:  # the caller's phase is over: report what was measured
            pass
    return {"latencies_ms": latencies, "sent_at": sent_at, "failures": failures, "seconds": time.monotonic() - started}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--max-seconds", type=float, default=15.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    # A process started in the background inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: the interrupt that ends a run must work however the probe was started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    json.dump(probe(args.url, args.count, args.interval, args.max_seconds, args.timeout), sys.stdout)
    sys.stdout.write("\n")
