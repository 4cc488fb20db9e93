"""An HTTP server on 127.0.0.1 for the URL-list tests: serves pictures and the faults a real
URL list holds (404, slow servers, HTML posing as JPEG, endless bodies, redirect loops,
`X-Robots-Tag: noai`), and counts the requests and bytes it served."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.local_http import LocalHttpServer

STREAM_CHUNK = 64 * 1024
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"


@dataclass(frozen=True)
class Route:
    """What one path answers."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    """Wait this long before answering (a slow server)."""
    stream_bytes: int = 0
    """Instead of `body`: this many bytes (a JPEG header, then zeros), made while sending,
    with no Content-Length."""


class UrlServer(LocalHttpServer):
    """`with UrlServer() as server: url = server.add("/a.jpg", Route(data))`."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        """Body bytes written per path (the client may stop reading long before the end)."""
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests[self.path] += 1
                route = server.routes.get(self.path, Route(b"not found", status=404))
                if route.delay_s and server.closing.wait(route.delay_s):
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._answer(route)

            def _answer(self, route: Route) -> None:
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                if not route.stream_bytes:
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if route.stream_bytes:
                    self._stream(route.stream_bytes)
                else:
                    self.wfile.write(route.body)
                    server.sent[self.path] += len(route.body)

            def _stream(self, total: int) -> None:
                self.wfile.write(JPEG_HEAD)
                sent = len(JPEG_HEAD)
                zeros = bytes(STREAM_CHUNK)
                while sent < total and not server.closing.is_set():
                    chunk = zeros[: total - sent]
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    server.sent[self.path] = sent

        super().__init__(Handler)

    @property
    def base(self) -> str:
        return self.url

    def add(self, path: str, route: Route) -> str:
        """Serve `route` at `path`; its full URL."""
        self.routes[path] = route
        return self.base + path

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        super().__exit__(*exc)
