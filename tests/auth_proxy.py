"""A reverse proxy for tests: checks a bearer token, then forwards to a Chroma server, the way
the README's Caddy/nginx setup guards a server beyond 127.0.0.1."""

from __future__ import annotations

import http.client
from http.server import BaseHTTPRequestHandler

from tests.local_http import LocalHttpServer

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


class AuthProxy(LocalHttpServer):
    """Serves on 127.0.0.1; forwards requests carrying `header: value` to `upstream_port`."""

    def __init__(self, upstream_port: int, header: str, value: str) -> None:
        self.requests = 0
        self.refused = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                proxy.requests += 1
                if self.headers.get(header) != value:
                    proxy.refused += 1
                    payload = b'{"error":"Unauthorized","message":"missing or bad token"}'
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for k, v in response.getheaders():
                    if k.lower() not in HOP_HEADERS:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        super().__init__(Handler)
