"""A COCO2014 download mirror for tests: the official zips of a mini COCO, served over HTTP on
127.0.0.1, with faults that real mirrors have.

Standard library only. Paths are those of images.cocodataset.org (`/zips/val2014.zip`,
`/annotations/annotations_trainval2014.zip`); anything under `/mirror/...` answers with a
302 redirect to the same path without the prefix, as mirrors do::

    files = build_coco_zips(make_mini_coco_somewhere)
    with CocoServer(files) as server:
        server.fault("/zips/val2014.zip", drop_after=1000)   # the next GET breaks off
        ... Settings(coco_base_url=server.url) ...
        assert server.gets("/zips/val2014.zip")[1].range == "bytes=1000-"

Faults are queued per path and each is used up by one GET: an error status, a connection
closed after some bytes (the full Content-Length announced), another body (a corrupt copy),
a wrong Content-Length or none at all. `lengths` makes a path lie about its size for good
(HEAD and GET), and `ranges=False` makes a server that ignores Range headers (answers 200 with
everything).

The zips are not the official ones, so a client checks them against a COCO_CHECKSUMS file:
`server.write_checksums(path)` writes one for the files it serves (`sha256sum` lines).
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import time
import warnings
import zipfile
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.local_http import LocalHttpServer

VAL_ZIP = "/zips/val2014.zip"
TRAIN_ZIP = "/zips/train2014.zip"
ANNOTATIONS_ZIP = "/annotations/annotations_trainval2014.zip"


def build_coco_zips(source: Path) -> dict[str, bytes]:
    """The official zips of the COCO tree under `source` (as tests/mini_coco.py writes it),
    keyed by URL path: each holds one top-level folder, as the real ones do."""
    zips = {ANNOTATIONS_ZIP: zip_folder(source, "annotations", zipfile.ZIP_DEFLATED)}
    for path, folder in ((TRAIN_ZIP, "train2014"), (VAL_ZIP, "val2014")):
        if (source / folder).is_dir():
            zips[path] = zip_folder(source, folder, zipfile.ZIP_STORED)
    return zips


def zip_folder(source: Path, folder: str, compression: int) -> bytes:
    """`source/folder` as a zip whose members are named `folder/...`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        archive.write(source / folder, f"{folder}/")
        for path in sorted((source / folder).rglob("*")):
            archive.write(path, path.relative_to(source).as_posix())
    return buffer.getvalue()


def zip_of(
    entries: dict[str, bytes] | Iterable[tuple[str, bytes]],
    compression: int = zipfile.ZIP_STORED,
) -> bytes:
    """A zip holding exactly `entries` (names are not checked: unsafe and duplicate ones are
    allowed; a name ending in "/" is a folder)."""
    pairs = entries.items() if isinstance(entries, dict) else entries
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name"
        for name, data in pairs:
            archive.writestr(name, data)
    return buffer.getvalue()


def declare_size(data: bytes, member: str, size: int) -> bytes:
    """`data` (a zip without zip64 records) whose headers of `member` claim it unpacks to
    `size` bytes (< 4 GiB), whatever it really holds."""
    return _patch_headers(data, member, (22, 24), size.to_bytes(4, "little"))


def mark_encrypted(data: bytes, member: str) -> bytes:
    """`data` (a zip) whose headers of `member` (a stored one) say it is encrypted."""
    return _patch_headers(data, member, (6, 8), (1).to_bytes(2, "little"))


def _patch_headers(data: bytes, member: str, at: tuple[int, int], value: bytes) -> bytes:
    """`value` written at offset `at[0]` of `member`'s local header and `at[1]` of its entry in
    the central directory."""
    patched = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        local = archive.getinfo(member).header_offset + at[0]
    patched[local : local + len(value)] = value
    eocd = data.rfind(b"PK\x05\x06")
    entry = int.from_bytes(data[eocd + 16 : eocd + 20], "little")
    while data[entry : entry + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = (
            int.from_bytes(data[entry + n : entry + n + 2], "little") for n in (28, 30, 32)
        )
        if data[entry + 46 : entry + 46 + name_len].decode() == member:
            patched[entry + at[1] : entry + at[1] + len(value)] = value
        entry += 46 + name_len + extra_len + comment_len
    return bytes(patched)


def corrupt_member(data: bytes) -> bytes:
    """`data` (a zip) with bytes flipped in the middle of its last file member's data: the
    zip still opens, but reading that member fails its CRC check."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = [i for i in archive.infolist() if not i.is_dir() and i.compress_size > 16][-1]
    header = info.header_offset
    name_len = int.from_bytes(data[header + 26 : header + 28], "little")
    extra_len = int.from_bytes(data[header + 28 : header + 30], "little")
    middle = header + 30 + name_len + extra_len + info.compress_size // 2
    flipped = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    return data[:middle] + flipped + data[middle + 8 :]


@dataclass(frozen=True)
class Fault:
    """What the next GET of a path does instead of answering normally."""

    status: int = 0
    """Answer with this status (503, 404, ...) and a short text body."""
    drop_after: int | None = None
    """Announce the whole answer, send this many body bytes, then close the connection."""
    body: bytes | None = None
    """Serve these bytes instead of the file (e.g. `corrupt_member(...)`)."""
    length: int | None = None
    """Announce this Content-Length (or size, in Content-Range) instead of the real one."""
    unannounced: bool = False
    """Send no Content-Length: the body ends when the connection closes."""


@dataclass(frozen=True)
class Seen:
    """A request the server received."""

    method: str
    path: str
    range: str | None
    user_agent: str | None
    status: int


class CocoServer(LocalHttpServer):
    """Serves `files` (URL path → bytes) on 127.0.0.1 in a background thread."""

    def __init__(
        self,
        files: dict[str, bytes],
        *,
        ranges: bool = True,
        lengths: dict[str, int] | None = None,
    ) -> None:
        self.files = dict(files)
        self.ranges = ranges
        self.lengths = dict(lengths or {})
        self.requests: list[Seen] = []
        self.on_get: Callable[[str], None] | None = None
        """Called with the path before each GET is answered (to look at the disk meanwhile)."""
        self._faults: dict[str, deque[Fault]] = defaultdict(deque)
        self._lock = threading.Lock()
        super().__init__(_Handler)

    def write_checksums(self, path: Path) -> Path:
        """A COCO_CHECKSUMS file at `path` of the files served (paths without the leading /)."""
        path.write_text(
            "".join(
                f"{hashlib.sha256(data).hexdigest()}  {name[1:]}\n"
                for name, data in self.files.items()
            )
        )
        return path

    def fault(self, path: str, times: int = 1, **what: object) -> None:
        """The next `times` GETs of `path` misbehave as `Fault(**what)` says."""
        with self._lock:
            self._faults[path].extend([Fault(**what)] * times)  # type: ignore[arg-type]

    def gets(self, path: str | None = None, *, at_least: int = 0) -> list[Seen]:
        """The GET requests received (of `path`, when given). A request is recorded once it
        is answered, so the client may see the answer first: `at_least` waits (up to 10 s)
        until that many are recorded."""
        deadline = time.monotonic() + 10
        while True:
            with self._lock:
                seen = [r for r in self.requests if r.method == "GET" and path in (None, r.path)]
            if len(seen) >= at_least or time.monotonic() > deadline:
                return seen
            time.sleep(0.01)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def _next_fault(self, path: str) -> Fault:
        with self._lock:
            queue = self._faults.get(path)
            return queue.popleft() if queue else Fault()

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, *, head: bool) -> None:
        owner: CocoServer = self.server.owner  # type: ignore[attr-defined]
        self.close_connection = True
        path = self.path.split("?", 1)[0]
        fault = Fault() if head else owner._next_fault(path)
        if not head and owner.on_get:
            owner.on_get(path)
        if path.startswith("/mirror/"):
            status = self._short(HTTPStatus.FOUND, {"Location": path[len("/mirror") :]})
        elif path not in owner.files:
            status = self._short(HTTPStatus.NOT_FOUND)
        elif fault.status:
            status = self._short(HTTPStatus(fault.status))
        else:
            status = self._file(owner, path, fault, head)
        owner._record(
            Seen(
                "HEAD" if head else "GET",
                path,
                self.headers.get("Range"),
                self.headers.get("User-Agent"),
                status,
            )
        )

    def _file(self, owner: CocoServer, path: str, fault: Fault, head: bool) -> int:
        body = fault.body if fault.body is not None else owner.files[path]
        size = fault.length or owner.lengths.get(path) or len(body)
        start, status = 0, 200
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if owner.ranges and wanted:
            start = int(wanted.group(1))
            if start >= size:
                return self._short(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                    {"Content-Range": f"bytes */{size}"},
                )
            status = 206
            self.send_response(status)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        if not fault.unannounced:
            self.send_header("Content-Length", str(size - start))
        self.send_header("Content-Type", "application/zip")
        self.send_header("Connection", "close")
        self.end_headers()
        if head:
            return status
        payload = body[start:] if fault.unannounced else body[start:size]
        if fault.drop_after is not None:
            payload = payload[: fault.drop_after]
        try:
            self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        return status

    def _short(self, status: HTTPStatus, headers: dict[str, str] | None = None) -> int:
        text = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status.value)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(text)
        return status.value
