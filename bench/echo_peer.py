"""The bare reference peer: an aiortc answerer that sends each received video frame straight back.

Run as its own process (``python bench/echo_peer.py``), as the Scope server is, so the two paths
compare fairly: the peer's codec work and event loop do not share a process with the client.

Signalling is one JSON line each way over a loopback TCP connection: the client writes
``{"sdp": ..., "type": "offer"}``, the peer answers with the same shape. The session lasts as
long as that connection; closing it closes the peer connection. On start-up the peer prints
``READY <port>`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys

from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription


class EchoTrack(MediaStreamTrack):
    """Relays the decoded frames of ``source`` unchanged (no conversion, no queue of our own)."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack):
        super().__init__()
        self.source = source

    async def recv(self):
        return await self.source.recv()


async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Host candidates only, like the Scope server's default (no STUN round trip on answer).
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

    @pc.on("track")
    def _on_track(track: MediaStreamTrack) -> None:
        if track.kind == "video":
            pc.addTrack(EchoTrack(track))

    try:
        line = await reader.readline()
        if not line:
            return
        offer = json.loads(line)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type=offer["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
        await reader.read()  # until the client hangs up
    except (ConnectionError, ValueError, KeyError) as exc:
        print(f"echo peer: session failed: {exc!r}", file=sys.stderr, flush=True)
    finally:
        with contextlib.suppress(Exception):
            await pc.close()
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve_one, "127.0.0.1", port)
    actual = server.sockets[0].getsockname()[1]
    print(f"READY {actual}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    asyncio.run(main(parser.parse_args().port))
