"""Fetching one picture of a URL list: what is checked on every hop, and why.

For core.sources.url_downloads (which runs many fetches over a list) and the tests. A URL
list is untrusted: any URL may point anywhere, any server may lie or stall. Knows nothing of
Telegram.

- Addresses: each connection resolves its host once (`FetchRules.resolver`) and, unless
  `allow_private`, refuses when any address is private, loopback, link-local, multicast,
  reserved or unspecified (core.sources.url_network); then it connects to an address it
  checked, never to a second lookup's answer (DNS rebinding). The Host header, the TLS
  server name and the certificate check keep the host name. Every redirect hop goes
  through the same connector.
- Time: one deadline per fetch (`deadline_s`, URL_FETCH_TIMEOUT_S) bounds the DNS lookup,
  connect, TLS, request, headers and body of every hop together, so a server dripping bytes
  holds a worker no longer than that.
- Content: http/https only, no compressed bodies, a size limit while streaming, the
  `X-Robots-Tag` refusals, and the body must be an allowed image by its magic bytes and by
  a real decode (never by its Content-Type).
- Memory: decodes share a pixel budget (`decode_budget_pixels`), each charged its size from
  the image header before any pixel is decoded, so parallel huge pictures wait for each
  other.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpcore
import httpx
from PIL import Image

from core.errors import BadImage
from core.images import allowed_formats, decode_image
from core.sources.units import format_size
from core.sources.url_hosts import Hosts
from core.sources.url_network import (
    LookupFailed,
    PinnedBackend,
    PrivateAddress,
    Resolver,
    deadline_scope,
    resolve_host,
)

DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_DEADLINE_S = 60.0
"""All of one fetch (URL_FETCH_TIMEOUT_S): past it, the fetch is a "timeout" failure."""
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_REDIRECTS = 5
KEEPALIVE_S = 30.0
"""An idle connection older than this is not reused."""
DECODE_MEMORY_BUDGET = 512 * 1024 * 1024
"""Bytes all parallel decodes may hold at once, as the bot's (a full-size buffer: 4 per pixel)."""
ROBOTS_REFUSALS = frozenset({"none", "noai", "noimageai", "noindex", "noimageindex"})
"""`X-Robots-Tag` directives that mean "do not collect this for AI" (as img2dataset reads them;
`none` is noindex + nofollow)."""
ROBOTS_TOKEN = "clip-image-search-bot"
USER_AGENT = f"{ROBOTS_TOKEN}/0.1 (URL list download)"
PERMANENT_FAILURES = frozenset({"HTTP 404", "HTTP 410", "not an image", "too large"})
"""Failures remembered across runs; the rest (policy refusals, timeouts, 5xx, 429, ...) are
tried again by the next run."""
_ROBOTS_VALUE_DIRECTIVES = frozenset(
    {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
)
"""Directives written `name: value`, which are not user agents."""
_ROBOTS_USER_AGENT = re.compile(r"\s*([A-Za-z0-9_-]+)\s*:(.*)", re.DOTALL)
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, ".jpg"),
    (b"\x89PNG\r\n\x1a\n", 0, ".png"),
    (b"GIF87a", 0, ".gif"),
    (b"GIF89a", 0, ".gif"),
    (b"WEBP", 8, ".webp"),
    (b"BM", 0, ".bmp"),
    (b"II*\x00", 0, ".tif"),
    (b"MM\x00*", 0, ".tif"),
    (b"ftypheic", 4, ".heic"),
    (b"ftypheix", 4, ".heic"),
    (b"ftypmif1", 4, ".heic"),
)
"""(signature, offset, extension) of the formats core.images decodes."""
PICTURE_EXTENSIONS = frozenset(ext for _, _, ext in _MAGIC)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NETWORK_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
)


@dataclass(frozen=True)
class FetchRules:
    """What a fetch may do: the validation, time, memory and network-safety rules."""

    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    deadline_s: float = DEFAULT_DEADLINE_S
    """One fetch in all, redirects included (URL_FETCH_TIMEOUT_S)."""
    max_bytes: int = DEFAULT_MAX_BYTES
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    allow_private: bool = False
    decode_budget_pixels: int = DECODE_MEMORY_BUDGET // 4
    """Pixels all parallel decodes may hold at once."""
    resolver: Resolver = resolve_host
    """host, port → addresses; the one lookup each connection makes (tests inject their own)."""


class FetchFailure(Exception):
    """One URL failed: `reason` is the short category counted and recorded."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason

    @property
    def permanent(self) -> bool:
        """Whether the next run should not try again (see `PERMANENT_FAILURES`)."""
        return self.reason in PERMANENT_FAILURES


def robots_refusal(values: Iterable[str]) -> str | None:
    """The `X-Robots-Tag` directive that forbids this bot to use the picture, or None.

    Each header value is read directive by directive (comma-separated, any case). A directive
    `<agent>: <directive>` scopes it and the ones after it in that value to that user agent:
    only every agent (none named) and `ROBOTS_TOKEN` count. `unavailable_after: <date>` and the
    other `name: value` directives are directives, not agents."""
    for value in values:
        agent = None
        for piece in value.split(","):
            directive = piece.strip().lower()
            named = _ROBOTS_USER_AGENT.fullmatch(piece)
            if named and named[1].lower() not in _ROBOTS_VALUE_DIRECTIVES:
                agent, directive = named[1].lower(), named[2].strip().lower()
            if agent in (None, ROBOTS_TOKEN) and directive in ROBOTS_REFUSALS:
                return directive
    return None


class Fetcher:
    """Fetches URLs by the rules, from many threads at once: each hop in one of its host's
    slots, on that host's connections (core.sources.url_hosts), through the pinned connector;
    the body streamed to a temp file, decoded within the shared pixel budget."""

    def __init__(
        self, rules: FetchRules, concurrency: int, per_host: int, stop: threading.Event
    ) -> None:
        self.rules, self.stop = rules, stop
        self.budget = PixelBudget(rules.decode_budget_pixels)
        ssl_context = httpx.create_ssl_context()
        backend = PinnedBackend(rules.resolver, rules.allow_private)

        def make_pool(size: int) -> httpcore.ConnectionPool:
            # httpcore's pool itself: the one public place to plug in the connector, with no
            # environment proxies (the connection goes where the check allowed) and no
            # automatic redirects (each hop is checked).
            return httpcore.ConnectionPool(
                ssl_context=ssl_context,
                max_connections=size,
                max_keepalive_connections=size,
                keepalive_expiry=KEEPALIVE_S,
                network_backend=backend,
            )

        self.hosts = Hosts(per_host, concurrency, make_pool)

    def close(self) -> None:
        self.hosts.close()

    def save(self, url: str, folder: Path, stem: str) -> str:
        """The name of the validated file written for `url` in `folder` (`stem` + the
        format's extension); raises `FetchFailure`."""
        with self._final_response(url) as response:
            temp, extension = self._write_body(response, folder, stem)
        try:
            self._decode(temp)
            name = stem + extension
            os.replace(temp, folder / name)
            return name
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    @contextmanager
    def _final_response(self, url: str) -> Iterator[httpcore.Response]:
        """Follow the redirects of `url` to a response whose body may be read, inside its
        host's slot and the fetch's deadline (which starts with the first hop's connection)."""
        deadline: float | None = None
        for _hop in range(self.rules.max_redirects + 1):
            target = _checked_url(url)
            with self.hosts.slot(target.host) as pool:
                deadline = deadline or time.monotonic() + self.rules.deadline_s
                with (
                    deadline_scope(deadline),
                    _network_errors(deadline, self.rules.deadline_s),
                    pool.stream("GET", _core_url(target), **self._request(target)) as response,
                ):
                    if response.status in _REDIRECTS:
                        url = _redirect_target(url, response)
                        continue
                    _check_response(response, self.rules.max_bytes)
                    yield response
                    return
        raise FetchFailure("too many redirects", f"more than {self.rules.max_redirects}")

    def _request(self, target: httpx.URL) -> dict[str, object]:
        """Headers (compressed bodies refused: the size limit counts what is written) and
        per-operation timeouts (the deadline cuts them shorter)."""
        connect, read = self.rules.connect_timeout_s, self.rules.read_timeout_s
        headers = [
            (b"Host", target.netloc),
            (b"User-Agent", USER_AGENT.encode()),
            (b"Accept", b"image/*"),
            (b"Accept-Encoding", b"identity"),
        ]
        timeout = {"connect": connect, "read": read, "write": read, "pool": self.rules.deadline_s}
        return {"headers": headers, "extensions": {"timeout": timeout}}

    def _write_body(self, response: httpcore.Response, folder: Path, stem: str) -> tuple[str, str]:
        """Stream the body to a temp file in `folder` within the size limit; the file and the
        extension its first bytes show."""
        fd, temp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part", dir=folder)
        try:
            size, extension = 0, ""
            with os.fdopen(fd, "wb") as out:
                for chunk in response.iter_stream():
                    if self.stop.is_set():
                        raise FetchFailure("interrupted")
                    extension = extension or _sniff(chunk)
                    size += len(chunk)
                    if size > self.rules.max_bytes:
                        most = format_size(self.rules.max_bytes)
                        raise FetchFailure("too large", f"more than {most}")
                    out.write(chunk)
            if not extension:
                raise FetchFailure("not an image", "empty body")
            return temp, extension
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def _decode(self, path: str) -> None:
        """A real decode, within the pixel budget; `FetchFailure` when it is not a picture."""
        try:
            with self.budget.charge(_header_pixels(path)):
                decode_image(path, min_side=224)
        except BadImage as err:
            raise FetchFailure("not an image", str(err)) from None


class PixelBudget:
    """At most `total` pixels decoded at once across threads; a picture larger than the whole
    budget waits until it has it alone."""

    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self.used = 0
        self.changed = threading.Condition()

    @contextmanager
    def charge(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.total)
        with self.changed:
            self.changed.wait_for(lambda: self.used + pixels <= self.total)
            self.used += pixels
        try:
            yield
        finally:
            with self.changed:
                self.used -= pixels
                self.changed.notify_all()


@contextmanager
def _network_errors(deadline: float, deadline_s: float) -> Iterator[None]:
    """Connection refusals and httpcore errors → `FetchFailure` with a short reason
    ("timeout" once the deadline passed)."""
    try:
        yield
    except PrivateAddress as err:
        raise FetchFailure("private address", str(err)) from None
    except LookupFailed as err:
        raise FetchFailure("DNS lookup failed", str(err)) from None
    except _NETWORK_ERRORS as err:
        if time.monotonic() >= deadline:
            raise FetchFailure("timeout", f"over {deadline_s:g} s in all") from None
        reasons = (
            (httpcore.ConnectTimeout, "connect timeout"),
            (httpcore.ReadTimeout, "read timeout"),
            (httpcore.TimeoutException, "timeout"),
            (httpcore.ConnectError, "connection failed"),
        )
        reason = next((r for cls, r in reasons if isinstance(err, cls)), "network error")
        raise FetchFailure(reason, str(err) or type(err).__name__) from None


def _checked_url(url: str) -> httpx.URL:
    """`url` parsed, with an http(s) scheme and a host; raises `FetchFailure`. (Its addresses
    are checked when a connection is made.)"""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as err:
        raise FetchFailure("bad URL", str(err)) from None
    if parsed.scheme not in ("http", "https"):
        raise FetchFailure("unsupported scheme", parsed.scheme or "none")
    if not parsed.host:
        raise FetchFailure("bad URL", "no host")
    return parsed


def _core_url(url: httpx.URL) -> httpcore.URL:
    return httpcore.URL(
        scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
    )


def _headers(response: httpcore.Response, name: str) -> list[str]:
    """Every value of header `name`, one per header line."""
    key = name.lower().encode()
    return [v.decode("latin-1") for k, v in response.headers if k.lower() == key]


def _redirect_target(url: str, response: httpcore.Response) -> str:
    location = _headers(response, "Location")
    if not location:
        raise FetchFailure("bad redirect", f"HTTP {response.status} without Location")
    return urljoin(url, location[0].strip())


def _check_response(response: httpcore.Response, max_bytes: int) -> None:
    """Status, robots and a declared size, before any of the body is read."""
    if response.status != 200:
        raise FetchFailure(f"HTTP {response.status}")
    refusal = robots_refusal(_headers(response, "X-Robots-Tag"))
    if refusal:
        raise FetchFailure(f"robots: {refusal}")
    encoding = ",".join(_headers(response, "Content-Encoding")).strip().lower()
    if encoding not in ("", "identity"):
        # A compressed body could inflate a thousandfold within one chunk: not taken.
        raise FetchFailure("unsupported encoding", encoding)
    declared = "".join(_headers(response, "Content-Length")[:1]).strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchFailure("too large", f"Content-Length {format_size(int(declared))}")


def _sniff(head: bytes) -> str:
    """The file extension of an allowed image format by its magic bytes; else `FetchFailure`."""
    for signature, offset, extension in _MAGIC:
        if head[offset : offset + len(signature)] == signature:
            return extension
    if head[:4] == b"RIFF" and len(head) < 12:
        raise FetchFailure("not an image", "first chunk too short to tell")
    raise FetchFailure("not an image", f"starts with {head[:16]!r}")


def _header_pixels(path: str) -> int:
    """Width × height from the image header (no pixel decoded); 0 when the header cannot be
    read (the decode then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=allowed_formats()) as im:
                return im.width * im.height
    except Exception:  # anything the decoder will report as not an image
        return 0
