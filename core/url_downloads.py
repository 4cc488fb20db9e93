"""Downloading a URL list: caption + image URL pairs → validated picture files on disk.

For index_builder.py (`--urls LIST`, `--allow-private-urls`, `--retry-failed`) and the
tests. What a list is, how its files are named and where they lie is core.url_lists'; this
module only fetches. Knows nothing of Telegram.

- Files: written atomically into the list's `Folder`, each one appended to its manifest and
  each failure recorded in its failed.tsv. A rerun fetches only what is neither there nor
  failed before (`retry_failed` retries the failures). With a `shard` (core.shards) only
  the URLs whose record id falls in it are fetched.
- Validation: http/https only, connect/read timeouts and a deadline, a size limit enforced
  while streaming, bounded redirects followed by hand so every hop is checked,
  `X-Robots-Tag: noai` (and noimageai, noindex, noimageindex) respected, and the body must
  be an image by its magic bytes and by a real decode (never by its Content-Type).
- Network safety: a URL list is untrusted. Hosts resolving to private, loopback, link-local,
  multicast, reserved or unspecified addresses are refused, before connecting (all the
  addresses DNS gives) and after (the peer the connection really used), on every hop,
  unless `allow_private` (local mirrors, tests).
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import httpx
from filelock import FileLock, Timeout
from tqdm import tqdm

from core.errors import BadImage, DownloadError
from core.images import decode_image
from core.shards import EVERYTHING, Shard
from core.url_lists import Folder, UrlEntry, UrlList, read_manifest, url_hash, url_image_id

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 16
DEFAULT_PER_HOST = 4
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_DEADLINE_S = 300.0
"""A download taking longer than this in all (a server dripping bytes) is a timeout."""
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_REDIRECTS = 5
ROBOTS_REFUSALS = frozenset({"noai", "noimageai", "noindex", "noimageindex"})
"""`X-Robots-Tag` values that mean "do not collect this for AI" (as img2dataset reads them)."""
ROBOTS_TOKEN = "clip-image-search-bot"
USER_AGENT = f"{ROBOTS_TOKEN}/0.1 (URL list download)"
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
_EXTENSIONS = frozenset(ext for _, _, ext in _MAGIC)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


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


def robots_refusal(values: Iterable[str]) -> str | None:
    """The directive of `X-Robots-Tag` header values that forbids using the picture, or None.

    Read as img2dataset reads it: "noai, noindex" or "<bot>: noai" counts when the bot is
    every bot (no token) or this one (`ROBOTS_TOKEN`); "googlebot: noindex" does not."""
    for value in values:
        token, _, directives = value.rpartition(":")
        if token.strip() and token.strip().lower() != ROBOTS_TOKEN:
            continue
        for directive in directives.lower().split(","):
            if directive.strip() in ROBOTS_REFUSALS:
                return directive.strip()
    return None


@dataclass
class DownloadSummary:
    """What a download run did."""

    folder: Path
    failed_path: Path
    downloaded: int = 0
    already_there: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    """Failures of this run, by reason ("HTTP 404", "not an image", "private address", ...)."""
    skipped_failed: int = 0
    """URLs that failed in an earlier run, not retried (see `retry_failed`)."""
    duplicates: int = 0
    other_shards: int = 0
    """URLs of the list left to the builders of other shards (`shard`)."""
    bad_rows: int = 0
    elapsed_s: float = 0.0

    @property
    def valid(self) -> int:
        """Pictures of the list on disk now (new and already there)."""
        return self.downloaded + self.already_there

    @property
    def failed_count(self) -> int:
        return sum(self.failed.values())


@dataclass(frozen=True)
class FetchRules:
    """What a download may do: the validation and network-safety rules."""

    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    deadline_s: float = DEFAULT_DEADLINE_S
    max_bytes: int = DEFAULT_MAX_BYTES
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    allow_private: bool = False


def download_url_list(
    list_path: Path,
    data_dir: Path,
    *,
    limit: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    per_host: int = DEFAULT_PER_HOST,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
    allow_private: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    shard: Shard = EVERYTHING,
) -> DownloadSummary:
    """Download the pictures of a URL list into `<data_dir>/<list name>/`, resumably.

    `shard`: only the URLs whose record id falls in it. `limit`: stop once the first
    `limit` valid pictures of the list (in list order, of the shard) are on disk. A URL that
    fails is recorded in the failed.tsv with its reason and not fetched again unless
    `retry_failed`. Raises `DatasetError` for a missing or unreadable list, `DownloadError`
    when the folder cannot be written or another run holds it. One bad URL is never fatal.
    """
    started = time.perf_counter()
    url_list = UrlList.open(list_path)
    folder = Folder.of(url_list.path, data_dir)
    rules = FetchRules(
        connect_timeout_s,
        read_timeout_s,
        DEFAULT_DEADLINE_S,
        max_bytes,
        max_redirects,
        allow_private,
    )
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(folder.path / ".download.lock"), timeout=0)
        lock.acquire()
    except Timeout:
        raise DownloadError(f"another download of {folder.path} is running") from None
    except OSError as err:
        raise DownloadError(f"cannot write to {folder.path}: {err}") from None
    try:
        run = _Run(url_list, folder, rules, concurrency, per_host, retry_failed, shard)
        run.go(limit, progress)
    finally:
        lock.release()
    summary = run.summary
    summary.bad_rows = url_list.bad_count
    summary.elapsed_s = time.perf_counter() - started
    log.info(
        "%s: %d downloaded, %d already there, %d failed %s, %d failed before (not retried)",
        folder.path,
        summary.downloaded,
        summary.already_there,
        summary.failed_count,
        dict(summary.failed),
        summary.skipped_failed,
    )
    return summary


class _Failure(Exception):
    """One URL failed: `reason` is the short category counted and recorded."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class _Run:
    """One download run over a list: what is on disk, what failed, what to fetch."""

    def __init__(
        self,
        url_list: UrlList,
        folder: Folder,
        rules: FetchRules,
        concurrency: int,
        per_host: int,
        retry_failed: bool,
        shard: Shard,
    ) -> None:
        self.url_list, self.folder, self.rules, self.shard = url_list, folder, rules, shard
        self.concurrency = max(1, concurrency)
        self.retry_failed = retry_failed
        self.summary = DownloadSummary(folder.path, folder.failed)
        _remove_leftovers(folder.path)
        self.files = _existing_files(folder.path)
        self.in_manifest = (
            set(read_manifest(folder.manifest)) if folder.manifest.exists() else set()
        )
        self.failed_before = _read_failed(folder.failed)
        self.failed_now: dict[str, str] = {}
        self.succeeded: set[str] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.hosts = _HostSlots(max(1, per_host))

    def go(self, limit: int | None, progress: bool) -> None:
        """Fetch in list order with at most `concurrency` downloads in flight and, under a
        `limit`, never more in flight than valid pictures still wanted."""
        seen: set[str] = set()
        in_flight: dict[Future[str], UrlEntry] = {}
        entries = self.url_list.entries()
        bar = tqdm(  # counts valid pictures; the failures are in the postfix
            total=limit, unit="img", desc=f"downloading {self.folder.name}", disable=not progress
        )
        client = _client(self.rules, self.concurrency)
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="url-download")
        try:
            for entry in entries:
                while in_flight and (
                    len(in_flight) >= self.concurrency
                    or (limit is not None and self.summary.valid + len(in_flight) >= limit)
                ):
                    self._collect(in_flight, bar)
                if limit is not None and self.summary.valid >= limit:
                    break
                if self._skip(entry, seen, bar):
                    continue
                in_flight[pool.submit(self._fetch, client, entry)] = entry
            while in_flight:
                self._collect(in_flight, bar)
        except BaseException:
            self.stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            entries.close()
            client.close()
            bar.close()
            self._write_failed()

    def _skip(self, entry: UrlEntry, seen: set[str], bar: tqdm) -> bool:
        """True for a URL that needs no fetch: another shard's, a duplicate, one on disk, one
        failed before."""
        if not self.shard.holds(url_image_id(entry.url)):
            self.summary.other_shards += 1
            return True
        key = url_hash(entry.url)
        if key in seen:
            self.summary.duplicates += 1
            return True
        seen.add(key)
        if key in self.files:
            self.summary.already_there += 1
            if entry.url not in self.in_manifest:
                self._record(entry, self.files[key])
            self._tick(bar, 1)
            return True
        if entry.url in self.failed_before and not self.retry_failed:
            self.summary.skipped_failed += 1
            return True
        return False

    def _fetch(self, client: httpx.Client, entry: UrlEntry) -> str:
        """Download one URL to its file; the file name, or raises `_Failure`."""
        name = _Fetcher(client, self.rules, self.hosts, self.stop).save(
            entry.url, self.folder.path, url_hash(entry.url)
        )
        self._record(entry, name)
        return name

    def _collect(self, in_flight: dict[Future[str], UrlEntry], bar: tqdm) -> None:
        done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
        for future in done:
            entry = in_flight.pop(future)
            try:
                future.result()
            except _Failure as failure:
                self.summary.failed[failure.reason] += 1
                self.failed_now[entry.url] = failure.reason
                log.debug("%s (line %d): %s", entry.url, entry.line, failure)
                self._tick(bar, 0)
            else:
                self.summary.downloaded += 1
                self.succeeded.add(entry.url)
                self._tick(bar, 1)

    def _tick(self, bar: tqdm, valid: int) -> None:
        bar.set_postfix(ok=self.summary.valid, failed=self.summary.failed_count, refresh=False)
        bar.update(valid)

    def _record(self, entry: UrlEntry, file: str) -> None:
        """Append the picture to the manifest (a killed run keeps every line written)."""
        line = {"url": entry.url, "caption": entry.caption, "file": file, "line": entry.line}
        with self.lock, open(self.folder.manifest, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            self.in_manifest.add(entry.url)

    def _write_failed(self) -> None:
        """Rewrite failed.tsv (atomically): earlier failures not retried, and this run's."""
        failed = {u: r for u, r in self.failed_before.items() if u not in self.succeeded}
        failed.update(self.failed_now)
        if not failed and not self.folder.failed.exists():
            return
        _atomic_write(self.folder.failed, _tsv_text(failed.items()))


class _Fetcher:
    """Fetches one URL by the rules: each hop checked, the body streamed to a temp file."""

    def __init__(
        self, client: httpx.Client, rules: FetchRules, hosts: _HostSlots, stop: threading.Event
    ) -> None:
        self.client, self.rules, self.hosts, self.stop = client, rules, hosts, stop

    def save(self, url: str, folder: Path, stem: str) -> str:
        """The name of the validated file written for `url` in `folder`; raises `_Failure`."""
        deadline = time.monotonic() + self.rules.deadline_s
        for _hop in range(self.rules.max_redirects + 1):
            target = _checked_url(url, self.rules.allow_private)
            with self.hosts.slot(target.host), _network_errors():
                request = self.client.build_request("GET", target)
                response = self.client.send(request, stream=True)
                try:
                    if not self.rules.allow_private:
                        _check_peer(response)
                    if response.status_code in _REDIRECTS:
                        url = _redirect_target(response)
                        continue
                    _check_response(response, self.rules.max_bytes)
                    return self._stream(response, folder, stem, deadline)
                finally:
                    response.close()
        raise _Failure("too many redirects", f"more than {self.rules.max_redirects}")

    def _stream(self, response: httpx.Response, folder: Path, stem: str, deadline: float) -> str:
        """Stream the body to a temp file, validate it, then rename it into place."""
        fd, temp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part", dir=folder)
        try:
            size, extension = 0, ""
            with os.fdopen(fd, "wb") as out:
                for chunk in response.iter_raw():
                    if self.stop.is_set():
                        raise _Failure("interrupted")
                    if not extension:
                        extension = _sniff(chunk)
                    size += len(chunk)
                    if size > self.rules.max_bytes:
                        raise _Failure("too large", f"more than {self.rules.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise _Failure("timeout", f"over {self.rules.deadline_s:.0f} s in all")
                    out.write(chunk)
            if not extension:
                raise _Failure("not an image", "empty body")
            try:
                decode_image(temp, min_side=224)
            except BadImage as err:
                raise _Failure("not an image", str(err)) from None
            name = stem + extension
            os.replace(temp, folder / name)
            return name
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


class _HostSlots:
    """At most `per_host` downloads at a time from one host."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self.lock = threading.Lock()
        self.slots: dict[str, threading.BoundedSemaphore] = {}

    def slot(self, host: str) -> threading.BoundedSemaphore:
        with self.lock:
            if host not in self.slots:
                self.slots[host] = threading.BoundedSemaphore(self.per_host)
            return self.slots[host]


@contextmanager
def _network_errors() -> Iterator[None]:
    """httpx errors → `_Failure` with a short reason."""
    try:
        yield
    except httpx.HTTPError as err:
        reasons = (
            (httpx.ConnectTimeout, "connect timeout"),
            (httpx.ReadTimeout, "read timeout"),
            (httpx.TimeoutException, "timeout"),
            (httpx.ConnectError, "connection failed"),
        )
        reason = next((r for cls, r in reasons if isinstance(err, cls)), "network error")
        raise _Failure(reason, str(err) or type(err).__name__) from None


def _client(rules: FetchRules, concurrency: int) -> httpx.Client:
    """No environment proxies (the peer check must see the real server), no automatic
    redirects (each hop is checked), no compressed bodies (the size limit counts what is
    written)."""
    timeout = httpx.Timeout(
        connect=rules.connect_timeout_s,
        read=rules.read_timeout_s,
        write=rules.read_timeout_s,
        pool=rules.connect_timeout_s + rules.read_timeout_s,
    )
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.Client(
        timeout=timeout,
        limits=limits,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"},
    )


def _checked_url(url: str, allow_private: bool) -> httpx.URL:
    """`url` parsed, with an http(s) scheme and (unless `allow_private`) a host whose every
    address is public; raises `_Failure`."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as err:
        raise _Failure("bad URL", str(err)) from None
    if parsed.scheme not in ("http", "https"):
        raise _Failure("unsupported scheme", parsed.scheme or "none")
    if not parsed.host:
        raise _Failure("bad URL", "no host")
    if not allow_private:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = _resolve(parsed.host, port)
        refused = [a for a in addresses if not is_public_address(a)]
        if refused:
            raise _Failure("private address", f"{parsed.host} is {refused[0]}")
    return parsed


def _resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (an IP literal resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        raise _Failure("DNS lookup failed", f"{host}: {err}") from None
    return sorted({str(info[4][0]) for info in infos})


def _check_peer(response: httpx.Response) -> None:
    """Refuse, before the body is read, when the connection went to a private address (a
    name that resolved to a public address at the check and to a private one at connect)."""
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    if not peer:
        raise _Failure("private address", "the server's address is unknown")
    if not is_public_address(str(peer[0])):
        raise _Failure("private address", f"connected to {peer[0]}")


def _redirect_target(response: httpx.Response) -> str:
    location = response.headers.get("Location")
    if not location:
        raise _Failure("bad redirect", f"HTTP {response.status_code} without Location")
    return urljoin(str(response.url), location.strip())


def _check_response(response: httpx.Response, max_bytes: int) -> None:
    """Status, robots and a declared size, before any of the body is read."""
    if response.status_code != 200:
        raise _Failure(f"HTTP {response.status_code}")
    refusal = robots_refusal(response.headers.get_list("X-Robots-Tag"))
    if refusal:
        raise _Failure(f"robots: {refusal}")
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # A compressed body could inflate a thousandfold within one chunk: not taken.
        raise _Failure("unsupported encoding", encoding)
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _Failure("too large", f"Content-Length {declared}")


def _sniff(head: bytes) -> str:
    """The file extension of an allowed image format by its magic bytes; else `_Failure`."""
    for signature, offset, extension in _MAGIC:
        if head[offset : offset + len(signature)] == signature:
            return extension
    if head[:4] == b"RIFF" and len(head) < 12:
        raise _Failure("not an image", "first chunk too short to tell")
    raise _Failure("not an image", f"starts with {head[:16]!r}")


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


def _read_failed(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            return {row[0]: row[1] for row in csv.reader(f, delimiter="\t") if len(row) >= 2}
    except (OSError, csv.Error) as err:
        raise DownloadError(f"cannot read {path}: {err}") from None


def _tsv_text(rows: Iterable[tuple[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerows(rows)
    return buffer.getvalue()


def _atomic_write(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _existing_files(folder: Path) -> dict[str, str]:
    """URL hash → file name of the pictures already in `folder`."""
    return {
        entry.name.rsplit(".", 1)[0]: entry.name
        for entry in os.scandir(folder)
        if not entry.name.startswith(".")
        and os.path.splitext(entry.name)[1] in _EXTENSIONS
        and entry.is_file()
    }


def _remove_leftovers(folder: Path) -> None:
    """Temp files of a killed run (this run holds the folder's lock)."""
    for entry in os.scandir(folder):
        if entry.name.startswith(".") and entry.name.endswith(".part"):
            Path(entry.path).unlink(missing_ok=True)
