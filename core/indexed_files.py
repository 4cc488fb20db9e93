"""Which files may leave the host: only the indexed pictures, whatever the store says.

The store's records are untrusted (anyone who can write to the collection can put any path
in a record), so before a picture is read back to be sent, `IndexedFiles` checks that
- its real path (symlinks resolved) lies under a root the index was built from (the roots
  the index builder recorded in the collection's metadata),
- it is a regular file (not a FIFO, a device such as /dev/zero, or a directory),
- its size is at most `max_bytes`,
and only then opens it, without blocking, re-checks the opened file and reads at most
`max_bytes`. Whether the bytes are a picture is the decoder's job (`core.images`). Used by
the search service (hits that fail are dropped) and by the bot when it reads a file to send.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from core.errors import BadImage

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 50 * 1024 * 1024
"""The largest picture file read back from the index: Telegram's limit for a file a bot sends
(photos over 10 MB are re-encoded smaller before upload)."""
ROOTS_TTL_S = 30.0
"""How long the roots read from the store are trusted before being read again (a builder may
add a folder while the bot runs)."""
REPORTED_MAX = 10_000
"""Refused paths remembered so each is logged once; the oldest are forgotten beyond this."""


class RefusedFile(BadImage):
    """A record's file that must not be read or sent (outside the roots, not a regular file,
    too big)."""


class IndexedFiles:
    """Guards reads of indexed pictures. Thread-safe."""

    def __init__(
        self,
        roots: Callable[[], tuple[str, ...]],
        *,
        max_bytes: int = MAX_FILE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_roots = roots
        self.max_bytes = max_bytes
        self._clock = clock
        self._roots: tuple[str, ...] = ()
        self._roots_at = float("-inf")
        self._lock = threading.Lock()
        self._reported: OrderedDict[str, None] = OrderedDict()

    def roots(self) -> tuple[str, ...]:
        """The recorded roots (real paths), re-read from the store every `ROOTS_TTL_S`."""
        with self._lock:
            if self._clock() - self._roots_at < ROOTS_TTL_S:
                return self._roots
        roots = tuple(os.path.realpath(root) for root in self._read_roots())
        with self._lock:
            self._roots, self._roots_at = roots, self._clock()
        if not roots:
            log.error(
                "the collection records no image folders, so no picture may be sent: run "
                "index_builder.py once (a refresh is enough) to record them"
            )
        return roots

    def refusal(self, path: str) -> str | None:
        """Why the file at `path` must not be read, or None when it may be (no byte read)."""
        real = os.path.realpath(path)
        if not any(_is_under(real, root) for root in self.roots()):
            return "it lies outside the folders the index was built from"
        try:
            info = os.stat(real)
        except OSError as err:
            return f"it cannot be read ({err.strerror or err})"
        return _refusal_of(info, self.max_bytes)

    def allowed(self, record_id: str, path: str) -> bool:
        """`refusal(path)` is None; a refused record is logged once."""
        reason = self.refusal(path)
        if reason is not None:
            self._report(record_id, path, reason)
        return reason is None

    def read(self, record_id: str, path: str) -> bytes:
        """The bytes of the indexed file at `path`, after every check.

        Raises `RefusedFile` (logged once per record) when a check fails, `BadImage` when
        the file cannot be read.
        """
        reason = self.refusal(path)
        if reason is None:
            real = os.path.realpath(path)
            try:
                return _read_regular(real, self.max_bytes)
            except RefusedFile as err:
                reason = str(err)
            except OSError as err:
                raise BadImage(f"{os.path.basename(path)!r} cannot be read: {err}") from None
        self._report(record_id, path, reason)
        raise RefusedFile(f"index entry {record_id} refused: {reason}")

    def _report(self, record_id: str, path: str, reason: str) -> None:
        key = f"{record_id}\0{path}"
        with self._lock:
            if key in self._reported:
                return
            self._reported[key] = None
            if len(self._reported) > REPORTED_MAX:
                self._reported.popitem(last=False)
        log.warning("index entry %s (%s) is never sent: %s", record_id, path, reason)


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _refusal_of(info: os.stat_result, max_bytes: int) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file"
    if info.st_size > max_bytes:
        return f"it is too big ({info.st_size:,} bytes; the limit is {max_bytes:,})"
    return None


def _read_regular(path: str, max_bytes: int) -> bytes:
    """Open without blocking (a FIFO swapped in after the check must not hang us), re-check
    the opened file, read at most `max_bytes`."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        reason = _refusal_of(os.fstat(fd), max_bytes)
        if reason is not None:
            raise RefusedFile(reason)
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RefusedFile(f"it grew past the limit of {max_bytes:,} bytes")
    return data
