"""A picture site with every fault a URL list meets, on loopback addresses only: bench/urls.py's
server.

Many hosts (127.0.1.1, 127.0.1.2, ...: one listening socket bound to each address, never to
0.0.0.0), an added latency before every answer (asyncio: a waiting request costs no
throughput), keep-alive as real servers do, the pictures of a folder, and a fault for each
path kind in `FAULTS`. A URL is `http://<address>:<port>/<kind>/<n>`; `ok` serves picture n
(modulo the pool). Run as its own process, so that serving shares no interpreter with the
client measured:

    python -m bench.url_site POOL_DIR --hosts 50 --latency-ms 50 --stall-s 12

It prints one JSON line, {address: port}, once every listener is bound, and serves until its
standard input closes (or `--max-s` passes: it always stops by itself).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import socket
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
FIRST_HOST = ipaddress.ip_address("127.0.1.1")
FAULTS = (
    "http404",
    "http500",
    "reset",
    "stall",
    "drip",
    "truncated",
    "html",
    "corrupt",
    "loop",
    "wrongtype",
    "oversize",
)
"""What a failing URL does: HTTP 404 and 500; a connection reset; headers then silence; a
picture dripped slower than the deadline; a body cut short of its Content-Length; an HTML page;
a JPEG cut at 60% (a consistent Content-Length); a redirect to itself; text labelled
image/jpeg; a body larger than the fetch limit (declared, and sent while the client reads)."""
OVERSIZE_BYTES = 21 * 1024 * 1024
"""Over the builder's 20 MB limit per picture."""
HTML = b"<!doctype html><html><body>This picture has moved.</body></html>"
MAX_HEAD = 16 * 1024
CHUNK = 64 * 1024


def hosts(count: int) -> list[str]:
    """`count` loopback addresses from 127.0.1.1 on."""
    addresses = [str(FIRST_HOST + n) for n in range(count)]
    for address in addresses:
        check_loopback(address)
    return addresses


def check_loopback(address: str) -> str:
    """`address` when it lies in 127.0.0.0/8; else ValueError (nothing else is ever bound)."""
    if ipaddress.ip_address(address) not in LOOPBACK:
        raise ValueError(f"{address} is not a loopback address")
    return address


@dataclass(frozen=True)
class SiteOptions:
    latency_s: float = 0.05
    stall_s: float = 12.0
    """How long a stalled or dripping answer lasts (longer than the clients' deadline)."""


class Site:
    """Answers requests on every listener: the route by the path's kind, after the latency."""

    def __init__(self, pool: list[bytes], options: SiteOptions) -> None:
        self.pool, self.options = pool, options
        self.listeners: list[asyncio.Server] = []

    async def listen(self, addresses: list[str]) -> dict[str, int]:
        """One listener per address (each on a free port); {address: port}."""
        ports = {}
        for address in addresses:
            server = await asyncio.start_server(
                self._connection, check_loopback(address), 0, limit=MAX_HEAD, backlog=512
            )
            self.listeners.append(server)
            ports[address] = server.sockets[0].getsockname()[1]
        return ports

    def close(self) -> None:
        for server in self.listeners:
            server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path, keep_alive = _request(head)
                await asyncio.sleep(self.options.latency_s)
                if not await self._answer(writer, path, keep_alive):
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except asyncio.CancelledError:  # the site is closing: the connection ends with it
            pass
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, path: str, keep_alive: bool) -> bool:
        """Answer `path`; whether the connection may carry another request."""
        _, kind, number = [*path.split("/"), "", ""][:3]
        picture = self.pool[int(number) % len(self.pool)] if number.isdigit() else b""
        if kind == "ok" and picture:
            return await _send(writer, 200, picture, keep_alive)
        if kind in ("http404", "http500"):
            return await _send(writer, int(kind[4:]), b"no", keep_alive, "text/plain")
        if kind == "html":
            return await _send(writer, 200, HTML, keep_alive, "text/html")
        if kind == "wrongtype":
            return await _send(writer, 200, HTML * 40, keep_alive)
        if kind == "corrupt" and picture:
            return await _send(writer, 200, picture[: len(picture) * 6 // 10], keep_alive)
        if kind == "loop":
            writer.write(_head(302, 0, keep_alive, location=path))
            await writer.drain()
            return keep_alive
        if kind == "reset":
            _reset(writer)
            return False
        if kind in ("stall", "drip", "truncated", "oversize") and picture:
            await self._fault(writer, kind, picture)
            return False
        return await _send(writer, 404, b"no", keep_alive, "text/plain")

    async def _fault(self, writer: asyncio.StreamWriter, kind: str, picture: bytes) -> None:
        """The answers that end the connection: a stall, a drip, a cut body, an oversize one."""
        size = OVERSIZE_BYTES if kind == "oversize" else len(picture)
        writer.write(_head(200, size, False))
        if kind == "stall":
            await writer.drain()
            await asyncio.sleep(self.options.stall_s)
        elif kind == "drip":
            pieces = [picture[i : i + 1024] for i in range(0, len(picture), 1024)]
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(self.options.stall_s / len(pieces))
        elif kind == "truncated":
            writer.write(picture[: len(picture) // 2])
            await writer.drain()
        else:
            await _oversize(writer, picture)


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    keep_alive: bool,
    content_type: str = "image/jpeg",
) -> bool:
    writer.write(_head(status, len(body), keep_alive, content_type) + body)
    await writer.drain()
    return keep_alive


async def _oversize(writer: asyncio.StreamWriter, picture: bytes) -> None:
    """OVERSIZE_BYTES: the picture's start, then zeros, for as long as the client reads."""
    writer.write(picture[:CHUNK])
    zeros = bytes(CHUNK)
    for _ in range(OVERSIZE_BYTES // CHUNK - 1):
        writer.write(zeros)
        await writer.drain()
    writer.write(zeros[: OVERSIZE_BYTES % CHUNK])
    await writer.drain()


def _request(head: bytes) -> tuple[str, bool]:
    """The path of a request head, and whether it asks to keep the connection."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "GET":
        raise ConnectionError("not a GET request")
    fields = (line.partition(":") for line in lines[1:])
    headers = {name.strip().lower(): value.strip().lower() for name, _, value in fields}
    keep_alive = parts[2] == "HTTP/1.1" and headers.get("connection") != "close"
    return parts[1], keep_alive


def _head(
    status: int,
    length: int,
    keep_alive: bool,
    content_type: str = "image/jpeg",
    location: str | None = None,
) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {length}", f"Content-Type: {content_type}"]
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    if location:
        lines.append(f"Location: {location}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashing server does."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _serve(args: argparse.Namespace) -> None:
    pool = [path.read_bytes() for path in sorted(Path(args.pool).glob("*.jpg"))]
    site = Site(pool, SiteOptions(args.latency_ms / 1000, args.stall_s))
    ports = await site.listen(hosts(args.hosts))
    print(json.dumps(ports), flush=True)
    loop, closed = asyncio.get_running_loop(), asyncio.Event()

    def wait_for_stdin() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(closed.set)

    threading.Thread(target=wait_for_stdin, daemon=True).start()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closed.wait(), args.max_s)
    site.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.url_site", description=__doc__)
    parser.add_argument("pool", help="a folder of .jpg pictures to serve")
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--stall-s", type=float, default=12.0)
    parser.add_argument("--max-s", type=float, default=1800.0, help="stop after this long")
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
