"""A TCP proxy on 127.0.0.1 whose server-to-client direction is held to a fixed rate.

It stands for a slow link (a thin uplink, a tunnel, a busy proxy) in front of the server: the
client connects to the proxy, which forwards every byte both ways, the server's bytes through
one token bucket shared by every connection, the client's as they come. Bytes the bucket holds
back stay in the proxy's read loop, so TCP's own flow control pushes back on the server, as on a
real slow link. HTTP and WebSockets go through it; WebRTC's UDP cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

#: Bytes forwarded at a time: small enough that the bucket paces within a frame.
PIECE_BYTES = 4096


class TokenBucket:
    """``rate`` bytes per second, at most ``burst`` at once."""

    def __init__(self, rate: float, burst: float):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = time.monotonic()
        self.forwarded = 0

    async def take(self, count: int) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= count:
                self.tokens -= count
                self.forwarded += count
                return
            await asyncio.sleep((count - self.tokens) / self.rate)


class ThrottleProxy:
    """Forwards ``127.0.0.1:port`` to ``target``; the target's replies at ``kbps`` kilobits per second."""

    def __init__(self, target_port: int, kbps: float, burst_s: float = 0.02):
        self.target_port = target_port
        rate = kbps * 1000 / 8
        self.bucket = TokenBucket(rate, max(PIECE_BYTES, rate * burst_s))
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task] = set()

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def __aenter__(self) -> ThrottleProxy:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.server.wait_closed()

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            await self._forward(client_reader, client_writer)
        except asyncio.CancelledError:
            pass  # the proxy is closing: the connection ends with it, quietly
        finally:
            client_writer.close()
            self.tasks.discard(task)

    async def _forward(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            return
        upstream = asyncio.ensure_future(self._pipe(client_reader, server_writer, None))
        downstream = asyncio.ensure_future(self._pipe(server_reader, client_writer, self.bucket))
        try:
            await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in (upstream, downstream):
                pipe.cancel()
            await asyncio.gather(upstream, downstream, return_exceptions=True)
            server_writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bucket: TokenBucket | None) -> None:
        while True:
            data = await reader.read(PIECE_BYTES if bucket else 65536)
            if not data:
                return
            if bucket is not None:
                await bucket.take(len(data))
            writer.write(data)
            await writer.drain()
