"""bench/transports.py at its smallest: WebRTC and the WebSocket (H.264 and JPEG) in headless
Chromium against a real server, then the WebSocket through a throttled link.

The figures are not under test, only that every one is measured and sane: positive, finite,
each run on the transport and encoding it names, the page's byte count in line with the
server's, and the throttled link doing what a slow link does: the proxy holds the bytes to its
rate and the server drops the frames the JPEG stream cannot fit into it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest

from bench import transports

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

#: Slow enough that 128x128 JPEG at 30 FPS (about 2.5 kB a frame) does not fit: frames must drop.
THROTTLE_KBPS = 300
UNTHROTTLED = ("webrtc", "websocket-h264", "websocket-jpeg")
THROTTLED = ("throttled-h264", "throttled-jpeg")


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run of the benchmark: (its JSON report, what it printed)."""
    out = tmp_path_factory.mktemp("bench-transports") / "transports.json"
    printed = io.StringIO()
    argv = ["--seconds", "2", "--warmup", "0.5", "--size", "128x128", "--throttle-kbps", str(THROTTLE_KBPS),
            "--json", str(out)]
    with contextlib.redirect_stdout(printed):
        status = transports.main(argv)
    assert status == 0, printed.getvalue()[-3000:]
    return json.loads(out.read_text()), printed.getvalue()


def check_page_figures(name: str, row: dict) -> None:
    assert positive(row["delivered_fps"]) and row["frames_delivered"] > 0, (name, row)
    assert math.isclose(row["delivered_fps"] * row["seconds"], row["frames_delivered"], rel_tol=1e-6), name
    assert row["presented_fps"] >= row["delivered_fps"] and positive(row["source_fps"]), name
    latency = row["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["max"], (name, latency)
    assert row["latency_p50_ms"] == latency["p50"] and row["latency_p95_ms"] == latency["p95"], name
    assert row["unreadable"] == 0 and row["out_of_order"] == 0, (name, row)
    assert positive(row["bytes_per_s"]) and positive(row["bytes_per_s_sent"]) and positive(row["bytes_per_frame"]), name
    assert positive(row["server_cpu_ms_per_frame"]) and positive(row["server_cores"]), (name, row["server_cpu"])
    assert positive(row["browser_cpu_ms_per_frame"]), name
    stop = row["stop"]
    # The page's own stop may stall in a busy browser (the bench then deletes the session itself);
    # the server must answer either way.
    assert (not stop["timed_out"] and stop["seconds"] >= 0) or stop["bench_delete"] in (204, 404), (name, stop)
    server = row["server"]
    assert server["frames_sent"] > 0 and server["link_frames_dropped"] >= 0, (name, server)
    assert isinstance(server["link_frames_dropped"], int), (name, server)


def test_every_transport_is_measured_on_what_it_names(run):
    report, printed = run
    assert report["offered"]["encodings"] == ["h264", "jpeg"], "this machine's PyAV has libx264"
    assert set(report["runs"]) == set(UNTHROTTLED)
    for name in UNTHROTTLED:
        check_page_figures(name, report["runs"][name])
    webrtc = report["runs"]["webrtc"]
    assert webrtc["server"]["transport"] == "webrtc" and webrtc["codec"].startswith("video/")
    assert webrtc["server"]["bytes_per_s"] is None and webrtc["server"]["link_frames_dropped"] == 0
    for encoding in ("h264", "jpeg"):
        row = report["runs"][f"websocket-{encoding}"]
        assert row["server"]["transport"] == "websocket" and row["codec"] == encoding, row
        # What the page counted on its socket is what the server says it sent, within the
        # difference of their windows (the server's figure covers its last few seconds).
        assert 0.5 < row["bytes_per_s"] / row["server"]["bytes_per_s"] < 2, row
    # H.264 carries a frame in fewer bytes than a JPEG of the same picture.
    assert report["runs"]["websocket-h264"]["bytes_per_frame"] < report["runs"]["websocket-jpeg"]["bytes_per_frame"]
    assert set(report["ratios"]) == {"websocket-h264 / webrtc", "websocket-jpeg / webrtc", "websocket-h264 / websocket-jpeg"}
    for label, values in report["ratios"].items():
        assert set(values) == set(transports.RATIO_FIGURES), label
        assert all(positive(value) for value in values.values()), (label, values)
    assert "== Ratios" in printed and "websocket-jpeg / webrtc" in printed


def test_the_throttled_link_holds_its_rate_and_the_server_drops_frames(run):
    report, printed = run
    assert set(report["throttled"]) == set(THROTTLED)
    rate = THROTTLE_KBPS * 1000 / 8
    for name in THROTTLED:
        row = report["throttled"][name]
        check_page_figures(name, row)
        assert row["server"]["transport"] == "websocket", row
        # Every byte the page received came through the proxy, within its rate (and what was in
        # flight at the window's edges).
        assert row["bytes_per_s"] < 1.5 * rate, row
        assert row["proxy_bytes_forwarded"] > 0
    jpeg = report["throttled"]["throttled-jpeg"]
    assert jpeg["server"]["link_frames_dropped"] > 0, jpeg["server"]
    assert "cannot go through a TCP proxy" in printed


def test_skip_leaves_runs_out_and_too_small_a_canvas_is_refused(capsys):
    with pytest.raises(SystemExit):
        transports.parse_args(["--size", "64x64"])
    assert "stamp blocks" in capsys.readouterr().err
    args = transports.parse_args(["--skip", "webrtc", "throttled-h264"])
    assert args.skip == ["webrtc", "throttled-h264"] and (args.width, args.height) == (512, 512)
