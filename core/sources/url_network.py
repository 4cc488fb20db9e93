"""Connections for URL-list fetches: to the address that was checked, within one deadline.

For core.sources.url_fetch, which hands `PinnedBackend` to its httpcore connection pool. A URL list
is untrusted, so its host names are too:

- `PinnedBackend.connect_tcp` resolves a host once, checks every address it gets
  (`is_public_address`, unless private addresses are allowed) and connects to one of those
  same addresses. Connecting by name would resolve again, and a name that answers a public
  address first and a private one next (DNS rebinding) would have the request written to a
  private service. TLS still names the host: httpcore sends it as the server name and checks
  the certificate against it.
- Every socket operation of a fetch (the lookup, connect, TLS, each read and write) waits at
  most until the deadline `deadline_scope` sets for the calling thread, so the fetch as a
  whole ends on time however slowly a server drips bytes (as curl's --max-time). A lookup
  cannot be interrupted: one past the deadline is left to finish in its own daemon thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore

Resolver = Callable[[str, int], Sequence[str]]
"""host, port → its addresses; raises OSError when the name does not resolve."""

_DEADLINE: ContextVar[float] = ContextVar("url_fetch_deadline")
"""time.monotonic() by which the calling thread's fetch must be over."""


def is_public_address(address: str) -> bool:
    """Whether an IP address may be contacted by default: not private, loopback, link-local,
    multicast, reserved, unspecified or shared, also when wrapped in IPv6 (IPv4-mapped,
    6to4, Teredo, NAT64)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_public_address(str(embedded))
    return ip.is_global and not (
        ip.is_multicast
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_unspecified
    )


def resolve_host(host: str, port: int) -> list[str]:
    """Every address the system resolver gives `host` (an IP literal resolves to itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@contextmanager
def deadline_scope(deadline: float) -> Iterator[None]:
    """Every socket operation of the calling thread inside the block ends by `deadline`
    (time.monotonic())."""
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


class PrivateAddress(Exception):
    """A host resolved to an address that is not public, and private ones are not allowed."""


class LookupFailed(Exception):
    """A host name did not resolve."""


class PinnedBackend(httpcore.NetworkBackend):
    """httpcore's connector: one lookup per connection, every address checked, the
    connection made to a checked address."""

    def __init__(self, resolver: Resolver, allow_private: bool) -> None:
        self.resolver, self.allow_private = resolver, allow_private
        self.plain = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = _lookup(self.resolver, host, port, _left(timeout, httpcore.ConnectTimeout))
        refused = [a for a in addresses if not is_public_address(a)]
        if refused and not self.allow_private:
            raise PrivateAddress(f"{host} is {refused[0]}")
        for address in addresses[:-1]:  # the next address when one refuses
            with contextlib.suppress(httpcore.ConnectError):
                return self._connect(address, port, timeout, local_address, socket_options)
        return self._connect(addresses[-1], port, timeout, local_address, socket_options)

    def _connect(
        self,
        address: str,
        port: int,
        timeout: float | None,
        local_address: str | None,
        socket_options: Iterable[Any] | None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        stream = self.plain.connect_tcp(address, port, left, local_address, socket_options)
        return _DeadlineStream(stream)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation waits at most until the current fetch's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self.stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.stream.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.stream.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self.stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self.stream.get_extra_info(info)


def _left(timeout: float | None, expired: type[Exception]) -> float:
    """`timeout` cut to what is left before the fetch's deadline; raises `expired` when
    nothing is."""
    left = _DEADLINE.get() - time.monotonic()
    if left <= 0:
        raise expired("the fetch's deadline has passed")
    return left if timeout is None else min(timeout, left)


def _lookup(resolver: Resolver, host: str, port: int, timeout: float) -> list[str]:
    """The resolver's addresses for `host` within `timeout` (in a daemon thread: a lookup
    cannot be interrupted); raises `LookupFailed` or httpcore's ConnectTimeout."""
    answer: list[Sequence[str] | BaseException] = []

    def lookup() -> None:
        try:
            answer.append(resolver(host, port))
        except Exception as err:  # handed to the fetch's thread
            answer.append(err)

    thread = threading.Thread(target=lookup, name="url-lookup", daemon=True)
    thread.start()
    thread.join(timeout)
    if not answer:
        raise httpcore.ConnectTimeout(f"looking up {host} took over {timeout:.1f} s")
    if isinstance(answer[0], BaseException):
        raise LookupFailed(f"{host}: {answer[0]}")
    if not answer[0]:
        raise LookupFailed(f"{host}: no address")
    return list(answer[0])


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, 6to4, Teredo or NAT64 IPv6 address."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in ipaddress.IPv6Network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None
