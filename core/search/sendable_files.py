"""Which files may leave the host: pictures under the folders the host names, whatever the
store says.

The store is untrusted (anyone who can write to the collection can put any path in a
record, and any folder in its metadata), so the folders pictures may be sent from come from
the host alone (`host_roots`): its settings (COCO_ROOT's split folders, DATA_DIR,
PICTURE_ROOTS) and the roots file the index builder writes beside the bot's own state
(`<CHROMA_PATH>/<COLLECTION>-picture-roots.json`, refused unless this user owns it and only
they may write it, as OpenSSH treats authorized_keys). A record's path is then opened
race-free: walked from "/" one component at a time with O_NOFOLLOW (a symbolic link anywhere
on the way is refused, even a root replaced by one after the build), and the opened file is
checked with fstat (a regular file, at most `max_bytes`), so what is checked is what is
read. Whether the bytes are a picture is the decoder's job (`core.images`): every path out
of the bot decodes them before sending. Used by the search service (hits that fail are
dropped) and by the bot when it reads a file to send.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from core.config import Settings
from core.errors import BadImage
from core.sources.coco import COCO_SPLITS

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 50 * 1024 * 1024
"""The largest picture file read back from the index: Telegram's limit for a file a bot sends
(photos over 10 MB are re-encoded smaller before upload)."""
ROOTS_TTL_S = 30.0
"""How long the builder's roots file is trusted before being read again (a builder may add a
folder while the bot runs)."""
REPORTED_MAX = 10_000
"""Refused paths remembered so each is logged once; the oldest are forgotten beyond this."""
ROOTS_FILE_MAX_BYTES = 1024 * 1024
_LINKED = (errno.ELOOP, errno.ENOTDIR, errno.EMLINK)
"""What opening with O_NOFOLLOW says when a component is a symbolic link."""


class RefusedFile(BadImage):
    """A record's file that must not be read or sent (outside the roots, not a regular file,
    too big, a link on its way)."""


@dataclass(frozen=True)
class FileIdentity:
    """The file a record's path led to when it was opened: its path (no link on the way, so
    its real path), device, inode, size and modification time."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int

    @property
    def key(self) -> str:
        """Names this very file: a swapped, replaced or changed file gets another key."""
        return f"{self.path}\0{self.device}:{self.inode}:{self.size}:{self.mtime_ns}"


@dataclass(frozen=True)
class ReadFile:
    data: bytes
    identity: FileIdentity


def roots_file(settings: Settings) -> Path:
    """Where the index builder records the folders it indexed, for the bot on this host."""
    return settings.chroma_path / f"{settings.collection}-picture-roots.json"


def record_roots(settings: Settings, roots: Iterable[str]) -> None:
    """Add `roots` (real paths) to this host's roots file: written atomically, readable and
    writable by this user only."""
    path = roots_file(settings)
    merged = sorted(set(_read_roots_file(path)) | {os.path.realpath(r) for r in roots})
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(fd, 0o600)
        json.dump({"roots": merged}, handle, indent=1)
    os.replace(partial, path)


class HostRoots:
    """The folders this host's settings let the bot send pictures from, with those in the
    builder's roots file: the settings' resolved once, the file's re-read every
    `ROOTS_TTL_S`. Never anything the store says. Thread-safe; call it for the roots."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic):
        configured = [settings.coco_root / split for split in COCO_SPLITS]
        configured += [settings.data_dir, *settings.picture_roots]
        self._fixed = tuple(dict.fromkeys(os.path.realpath(p.expanduser()) for p in configured))
        self._file = roots_file(settings)
        self._clock = clock
        self._lock = threading.Lock()
        self._recorded: tuple[str, ...] = ()
        self._read_at = float("-inf")
        self._problem: str | None = None

    def __call__(self) -> tuple[str, ...]:
        with self._lock:
            if self._clock() - self._read_at >= ROOTS_TTL_S:
                self._recorded, self._read_at = self._read_file(), self._clock()
            return tuple(dict.fromkeys((*self._fixed, *self._recorded)))

    def _read_file(self) -> tuple[str, ...]:
        """The roots in the builder's file; none when it is missing, or when it is not this
        user's, others may write it or it is malformed (logged once)."""
        try:
            roots, problem = _roots_in(self._file), None
        except FileNotFoundError:
            roots, problem = (), None
        except (OSError, ValueError) as err:
            roots, problem = (), getattr(err, "strerror", None) or str(err)
        if problem and problem != self._problem:
            log.error("the roots file %s is ignored: %s", self._file, problem)
        self._problem = problem
        return roots


class SendableFiles:
    """Guards reads of indexed pictures. Thread-safe."""

    def __init__(
        self, roots: Callable[[], tuple[str, ...]], *, max_bytes: int = MAX_FILE_BYTES
    ) -> None:
        self._roots = roots
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._reported: OrderedDict[str, None] = OrderedDict()

    def roots(self) -> tuple[str, ...]:
        """The folders pictures may be sent from (absolute, normalised)."""
        return tuple(os.path.normpath(root) for root in self._roots() if os.path.isabs(root))

    def refusal(self, path: str) -> str | None:
        """Why the file at `path` must not be read, or None when it may be (no byte read)."""
        try:
            self._identity(path)
        except RefusedFile as err:
            return str(err)
        return None

    def identity(self, record_id: str, path: str) -> FileIdentity | None:
        """What the file at `path` is when every check passes (no byte read); None, logged
        once per record, when one fails."""
        try:
            return self._identity(path)
        except RefusedFile as err:
            self._report(record_id, path, str(err))
            return None

    def allowed(self, record_id: str, path: str) -> bool:
        """`identity(record_id, path)` is not None."""
        return self.identity(record_id, path) is not None

    def read(self, record_id: str, path: str) -> ReadFile:
        """The bytes of the indexed file at `path`, after every check, and what it is.

        Raises `RefusedFile` (logged once per record) when a check fails, `BadImage` when
        the file cannot be read.
        """
        try:
            fd, identity = self._open(path)
        except RefusedFile as err:
            self._report(record_id, path, str(err))
            raise RefusedFile(f"index entry {record_id} refused: {err}") from None
        with os.fdopen(fd, "rb") as handle:
            try:
                data = handle.read(self.max_bytes + 1)
            except OSError as err:
                raise BadImage(f"{os.path.basename(path)!r} cannot be read: {err}") from None
        if len(data) > self.max_bytes:
            self._report(record_id, path, "it grew past the limit")
            raise RefusedFile(f"index entry {record_id} refused: it grew past the limit")
        return ReadFile(data, identity)

    def _identity(self, path: str) -> FileIdentity:
        fd, identity = self._open(path)
        os.close(fd)
        return identity

    def _open(self, path: str) -> tuple[int, FileIdentity]:
        """Open `path` race-free below its root; raise `RefusedFile` saying why not."""
        root, parts = self._locate(path)
        try:
            fd = _open_below(root, parts)
        except OSError as err:
            if err.errno in _LINKED:
                raise RefusedFile("a symbolic link lies on its path") from None
            raise RefusedFile(f"it cannot be read ({err.strerror or err})") from None
        info = os.fstat(fd)
        reason = _refusal_of(info, self.max_bytes)
        if reason is not None:
            os.close(fd)
            raise RefusedFile(reason)
        return fd, FileIdentity(
            os.path.join(root, *parts), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns
        )

    def _locate(self, path: str) -> tuple[str, list[str]]:
        """The root `path` lies under and its components below it."""
        if not path or "\0" in path or not os.path.isabs(path):
            raise RefusedFile("it is not an absolute path")
        clean = os.path.normpath(path)
        for root in self.roots():
            if clean.startswith(root.rstrip(os.sep) + os.sep):
                parts = clean[len(root.rstrip(os.sep)) + 1 :].split(os.sep)
                if all(part not in ("", ".", "..") for part in parts):
                    return root, parts
        raise RefusedFile("it lies outside the folders this host serves pictures from")

    def _report(self, record_id: str, path: str, reason: str) -> None:
        key = f"{record_id}\0{path}"
        with self._lock:
            if key in self._reported:
                return
            self._reported[key] = None
            if len(self._reported) > REPORTED_MAX:
                self._reported.popitem(last=False)
        log.warning("index entry %s (%s) is never sent: %s", record_id, path, reason)


def _open_below(root: str, parts: list[str]) -> int:
    """Walk from "/" through `root` and `parts`, one component at a time, following no link;
    the last component is opened without blocking (a FIFO must not hang us)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    directory = os.open(os.sep, flags | os.O_DIRECTORY)
    try:
        for name in [*root.strip(os.sep).split(os.sep), *parts[:-1]]:
            if not name:
                continue
            inner = os.open(name, flags | os.O_DIRECTORY, dir_fd=directory)
            os.close(directory)
            directory = inner
        return os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=directory)
    finally:
        os.close(directory)


def _refusal_of(info: os.stat_result, max_bytes: int) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file"
    if info.st_size > max_bytes:
        return f"it is too big ({info.st_size:,} bytes; the limit is {max_bytes:,})"
    return None


def _read_roots_file(path: Path) -> tuple[str, ...]:
    """The roots recorded in `path` (none when it is missing or unusable)."""
    try:
        return _roots_in(path)
    except (OSError, ValueError):
        return ()


def _roots_in(path: Path) -> tuple[str, ...]:
    """The roots recorded in `path`; raises `ValueError` saying why the file is not to be
    trusted, `OSError` when it cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        problem = _roots_file_problem(os.fstat(fd))
        if problem:
            raise ValueError(problem)
        data = handle.read(ROOTS_FILE_MAX_BYTES + 1)
    if len(data) > ROOTS_FILE_MAX_BYTES:
        raise ValueError("it is too big")
    parsed = json.loads(data)
    roots = parsed.get("roots") if isinstance(parsed, dict) else None
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise ValueError("it is not a roots file")
    return tuple(roots)


def _roots_file_problem(info: os.stat_result) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file"
    if info.st_uid not in (0, os.geteuid()):
        return "another user owns it"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "others may write it (chmod go-w)"
    return None
