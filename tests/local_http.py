"""The HTTP servers tests start (a COCO mirror, a URL-list host, an auth proxy) share this:
a threading server on a loopback address (127.0.0.1 unless told), on a free port unless told,
serving in the background while the `with` block runs, counting the connections it accepts."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Self


class _CountingServer(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0
    """Connections accepted (a client that connects but sends nothing counts too)."""

    def verify_request(self, request: object, client_address: object) -> bool:
        self.connections += 1  # one accepting thread
        return True


class LocalHttpServer:
    """`with Server(...) as server:` serves `handler` on `host` (a loopback address); handlers
    reach the owning object as `self.server.owner`."""

    def __init__(
        self, handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1", port: int = 0
    ) -> None:
        assert host.startswith("127."), "tests talk to loopback addresses only"
        self.httpd = _CountingServer((host, port), handler)
        self.httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.httpd.server_address[0]}:{self.port}"

    @property
    def connections(self) -> int:
        return self.httpd.connections

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)
