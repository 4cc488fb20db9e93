"""One index builder at a time on an embedded store: a lock file in CHROMA_PATH (Chroma's
embedded SQLite is per path), with the holder's pid beside it, so that a second builder can
say which one is running.

Who uses it: core.indexing.build holds it for a whole run; core.indexing.preflight checks
it before a download, so a second builder stops in seconds, not after the download.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from core.config import Settings
from core.errors import StoreBusy, StoreUnavailable

log = logging.getLogger(__name__)

LOCK_NAME = "index_builder.lock"
"""The lock file in CHROMA_PATH that keeps a second builder off an embedded store."""


@contextmanager
def builder_lock(settings: Settings, *, wait: bool = False) -> Iterator[None]:
    """Hold the builder lock of an embedded store (`LOCK_NAME` in CHROMA_PATH, one per
    path: Chroma's embedded sqlite is per path) while the block runs.

    Another holder raises `StoreBusy` at once, or with `wait` is waited for. A Chroma
    server (CHROMA_HOST) takes no lock: builders of different shards run on it at once
    (two of the same shard would only do the same work twice: upserts by stable ids).
    """
    if settings.chroma_host:
        yield
        return
    path = settings.chroma_path / LOCK_NAME
    pid_file = _pid_file(settings.chroma_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path)
        _acquire(lock, settings.chroma_path, pid_file, wait)
    except OSError as err:
        raise StoreUnavailable(f"cannot lock {path}: {err}") from err
    try:
        pid_file.write_text(f"{os.getpid()}\n", encoding="utf-8")
        yield
    finally:
        pid_file.unlink(missing_ok=True)
        lock.release()


def _acquire(lock: FileLock, where: Path, pid_file: Path, wait: bool) -> None:
    try:
        lock.acquire(timeout=0)
        return
    except Timeout:
        holder = _holder(pid_file)
    if not wait:
        raise _busy(where, holder)
    log.warning("another index_builder%s is running on %s; waiting for it to finish", holder, where)
    lock.acquire()
    log.info("the other index_builder finished; going on")


def _holder(pid_file: Path) -> str:
    """ " (pid N)" of the lock's holder when it wrote one, else ""."""
    try:
        pid = int(pid_file.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return ""
    return f" (pid {pid})"


def check_no_builder(chroma_path: Path) -> None:
    """Raise `StoreBusy` while another builder holds the lock of the store in `chroma_path`
    (a check only: the lock is not kept, and no file is made where there is none)."""
    path = chroma_path / LOCK_NAME
    if not path.exists():
        return
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise _busy(chroma_path, _holder(_pid_file(chroma_path))) from None
    except OSError as err:
        raise StoreUnavailable(f"cannot lock {path}: {err}") from err
    lock.release()


def _busy(where: Path, holder: str) -> StoreBusy:
    return StoreBusy(
        f"another index_builder{holder} is running on {where}; wait for it or rerun with --wait"
    )


def _pid_file(chroma_path: Path) -> Path:
    return chroma_path / f"{LOCK_NAME}.pid"
