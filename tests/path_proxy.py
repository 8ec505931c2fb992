"""A path-prefix reverse proxy, as JupyterHub puts in front of a single-user server.

It forwards one path prefix (``/user/alice/``) to the server behind it, paths unchanged (that
server runs with the prefix as its base URL), over HTTP and WebSockets only: whatever reaches a
page through it took TCP through the proxy, so media that needs UDP does not. HTTP bodies stream
both ways; every method and header goes through (cookies, ``Host`` and ``Origin`` as the browser
sent them, as JupyterHub's proxy keeps them); a WebSocket is opened upstream first, so a refused
handshake is refused with the same status, and then messages, text and binary, are piped both
ways until either side closes. It runs on its own thread and event loop, on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Iterator

from tornado import httputil, queues, web, websocket
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from tests._subprocess_server import free_port

#: Headers of one hop, never forwarded (RFC 9110, 7.6.1).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})
#: Headers a WebSocket handshake forwards upstream (the client makes its own key and version).
WEBSOCKET_HEADERS = ("Cookie", "Origin", "Authorization", "User-Agent", "Host", "X-XSRFToken")
#: Long enough for a live stream's response (``output.ts``) to run for a whole test.
STREAM_TIMEOUT_S = 3600.0


def _forwarded(headers: httputil.HTTPHeaders) -> httputil.HTTPHeaders:
    out = httputil.HTTPHeaders()
    for name, value in headers.get_all():
        if name.lower() not in HOP_BY_HOP:
            out.add(name, value)
    return out


@web.stream_request_body
class ProxyHandler(websocket.WebSocketHandler):
    """One request below the prefix: plain HTTP forwarded as it streams, or a WebSocket piped."""

    def initialize(self, proxy: PathProxy) -> None:
        self.proxy = proxy
        self.upstream_socket: websocket.WebSocketClientConnection | None = None
        self.body: queues.Queue | None = None
        self.forwarding: asyncio.Future | None = None
        self.status_line_seen = False
        self.upstream_headers = httputil.HTTPHeaders()

    def is_websocket(self) -> bool:
        return self.request.headers.get("Upgrade", "").lower() == "websocket"

    # Plain HTTP ---------------------------------------------------------------------------

    def prepare(self) -> None:
        if not self.request.path.startswith(self.proxy.prefix):
            raise web.HTTPError(404)
        if self.is_websocket():
            return
        self.body = queues.Queue()
        self.forwarding = asyncio.ensure_future(self.forward())

    def data_received(self, chunk: bytes) -> None:
        if self.body is not None:
            self.body.put_nowait(chunk)

    async def respond(self) -> None:
        """The request's body is in: wait for the upstream's answer to have been passed on."""
        self.body.put_nowait(None)
        await self.forwarding

    post = put = patch = delete = head = options = respond

    def compute_etag(self) -> None:
        return None  # the upstream's own validators pass through untouched

    async def forward(self) -> None:
        headers = _forwarded(self.request.headers)
        has_body = int(self.request.headers.get("Content-Length", "0") or 0) > 0 or (
            "chunked" in self.request.headers.get("Transfer-Encoding", "").lower()
        )

        async def produce(write) -> None:
            while (chunk := await self.body.get()) is not None:
                await write(chunk)

        request = HTTPRequest(
            self.proxy.upstream + self.request.uri,
            method=self.request.method,
            headers=headers,
            body_producer=produce if has_body else None,
            follow_redirects=False,
            decompress_response=False,
            allow_nonstandard_methods=True,
            header_callback=self.upstream_header_line,
            streaming_callback=self.upstream_chunk,
            connect_timeout=10,
            request_timeout=STREAM_TIMEOUT_S,
        )
        response = await self.proxy.client.fetch(request, raise_error=False)
        if not self.status_line_seen:
            self.set_status(502)
            self.finish(f"proxy: the server behind did not answer ({response.error})")
            return
        if not self._finished:
            self.finish()

    def upstream_header_line(self, line: str) -> None:
        if line.startswith("HTTP/"):
            start = httputil.parse_response_start_line(line.strip())
            self.status_line_seen = start.code >= 200  # an informational answer is followed by the real one
            self.upstream_headers = httputil.HTTPHeaders()
            if self.status_line_seen:
                self.set_status(start.code, start.reason)
            return
        if line.strip():
            self.upstream_headers.parse_line(line)
            return
        if not self.status_line_seen:
            return
        for name in ("Content-Type", "Server", "Date"):
            self.clear_header(name)
        for name, value in self.upstream_headers.get_all():
            if name.lower() not in HOP_BY_HOP:
                self.add_header(name, value)

    def upstream_chunk(self, chunk: bytes) -> None:
        if self.request.connection.stream.closed():
            return
        self.write(chunk)
        self.flush()

    # WebSockets ----------------------------------------------------------------------------

    async def get(self, *args) -> None:
        if not self.is_websocket():
            return await self.respond()
        url = "ws" + self.proxy.upstream[len("http"):] + self.request.uri
        headers = {name: self.request.headers[name] for name in WEBSOCKET_HEADERS if name in self.request.headers}
        offered = self.request.headers.get("Sec-WebSocket-Protocol", "")
        subprotocols = [p.strip() for p in offered.split(",") if p.strip()] or None
        try:
            self.upstream_socket = await websocket.websocket_connect(
                HTTPRequest(url, headers=headers, connect_timeout=10, request_timeout=30),
                subprotocols=subprotocols,
                max_message_size=64 * 1024 * 1024,
            )
        except HTTPClientError as error:
            # Refused upstream (403, 404, 409): the browser is refused the same way.
            self.set_status(error.code)
            self.finish(error.response.body if error.response is not None else b"")
            return
        except OSError as error:
            self.set_status(502)
            self.finish(f"proxy: {error}")
            return
        self.proxy.websockets.append(self.request.path)
        await super().get(*args)

    def check_origin(self, origin: str) -> bool:
        return True  # the server behind checks the browser's Origin itself

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return self.upstream_socket.selected_subprotocol

    def get_compression_options(self) -> None:
        return None

    def open(self, *args) -> None:
        asyncio.ensure_future(self.pipe_upstream())

    async def pipe_upstream(self) -> None:
        upstream = self.upstream_socket
        while True:
            message = await upstream.read_message()
            if message is None:
                self.close(upstream.close_code, upstream.close_reason)
                return
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                upstream.close()
                return

    async def on_message(self, message: str | bytes) -> None:
        try:
            await self.upstream_socket.write_message(message, binary=isinstance(message, bytes))
        except websocket.WebSocketClosedError:
            self.close()

    def on_close(self) -> None:
        if self.upstream_socket is not None:
            self.upstream_socket.close(self.close_code, self.close_reason)


class PathProxy:
    """Forwards ``prefix`` on ``http://127.0.0.1:<port>`` to ``upstream`` (an origin, no path)."""

    def __init__(self, upstream: str, prefix: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.prefix = prefix
        self.port = free_port()
        #: Paths of the WebSockets it has piped, in order.
        self.websockets: list[str] = []
        self.client: AsyncHTTPClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The prefix as a browser reaches it, ending with '/'."""
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            self.client = AsyncHTTPClient(force_instance=True, max_clients=64)
            app = web.Application([(r"/.*", ProxyHandler, {"proxy": self})], websocket_max_message_size=64 * 1024 * 1024)
            server = app.listen(self.port, address="127.0.0.1", xheaders=False)
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.stop()
                self.client.close()
                loop.close()

        self._thread = threading.Thread(target=serve, name="path-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start")

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


@contextlib.contextmanager
def running_path_proxy(upstream: str, prefix: str) -> Iterator[PathProxy]:
    """A started :class:`PathProxy`, stopped on exit."""
    proxy = PathProxy(upstream, prefix)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
