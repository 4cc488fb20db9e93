"""Downloading a URL list: caption + image URL pairs → validated picture files on disk.

For index_builder.py (`--urls LIST`, `--allow-private-urls`, `--retry-failed`) and the
tests. What a list is, how its files are named and where they lie is core.sources.url_lists'; what
one fetch checks is core.sources.url_fetch's; this module runs the fetches over a list and keeps the
books. Knows nothing of Telegram.

- Files: written atomically into the list's `Folder`, each one appended to its manifest. A
  rerun fetches only what is neither there nor failed for good before: a permanent failure
  (HTTP 404/410, not a picture, too large) is remembered until `retry_failed`; a refusal by
  policy (a private address, robots) or a transient one (timeout, 5xx, 429, connection
  error) is tried again by the next run, so one with `allow_private` fetches what one
  without it refused. With a `shard` (core.sources.shards) only the URLs whose record id falls in it
  are fetched.
- Memory: what each URL came to lives on disk (core.sources.url_state), the list is read row by
  row, at most `concurrency` fetches are in flight: a 3.3-million-row list runs in bounded
  memory.
- Reports: the failed.tsv (url, reason) is rewritten at the end of each run, safe to open in
  a spreadsheet: a cell that would start a formula is prefixed with `'` (OWASP's CSV
  injection rule) and control characters are shown as backslash escapes.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from queue import SimpleQueue
from typing import TextIO

from filelock import FileLock, Timeout
from tqdm import tqdm

from core.errors import DownloadError
from core.sources.shards import EVERYTHING, Shard
from core.sources.url_fetch import PICTURE_EXTENSIONS, Fetcher, FetchFailure, FetchRules
from core.sources.url_lists import Folder, UrlEntry, UrlList, url_hash, url_image_id
from core.sources.url_state import UrlState

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 128
"""Fetches in flight: most of a fetch is waiting on the network, and a stalled server holds a
worker until the deadline (bench/urls.py: 16 ran a list with 2% stalls at a third of
img2dataset's rate; 128 runs it faster than img2dataset)."""
DEFAULT_PER_HOST = 4
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A spreadsheet cell starting so is read as a formula (OWASP, CSV injection)."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


@dataclass(frozen=True)
class DownloadOptions:
    """What a download run fetches and how."""

    rules: FetchRules = field(default_factory=FetchRules)
    limit: int | None = None
    """Stop once the first `limit` valid pictures of the list (in list order, of the shard)
    are on disk."""
    concurrency: int = DEFAULT_CONCURRENCY
    per_host: int = DEFAULT_PER_HOST
    retry_failed: bool = False
    """Try again the URLs that failed for good in an earlier run."""
    progress: bool = True
    shard: Shard = EVERYTHING


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
    """URLs that failed for good in an earlier run, not retried (see `retry_failed`)."""
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


def download_url_list(
    list_path: Path, data_dir: Path, options: DownloadOptions | None = None
) -> DownloadSummary:
    """Download the pictures of a URL list into `<data_dir>/<list name>/`, resumably.

    Each failure is recorded in the failed.tsv with its reason. Raises `DatasetError` for a
    missing or unreadable list, `DownloadError` when the folder cannot be written or another
    run holds it. One bad URL is never fatal.
    """
    options = options or DownloadOptions()
    started = time.perf_counter()
    url_list = UrlList.open(list_path)
    folder = Folder.of(url_list.path, data_dir)
    with _folder_lock(folder), _Run(url_list, folder, options) as run:
        run.go()
    summary = run.summary
    summary.bad_rows = url_list.bad_count
    summary.elapsed_s = time.perf_counter() - started
    log.debug(  # index_builder.py says it for people
        "%s: %d downloaded, %d already there, %d failed %s, %d failed before (not retried)",
        folder.path,
        summary.downloaded,
        summary.already_there,
        summary.failed_count,
        dict(summary.failed),
        summary.skipped_failed,
    )
    return summary


def spreadsheet_safe(text: str) -> str:
    """`text` as a cell a spreadsheet shows as text: control characters as backslash escapes
    (`\\n`, `\\t`, `\\x1b`), and a `'` before a start that would make it a formula."""
    escaped = _CONTROL.sub(lambda m: _ESCAPES.get(m[0], f"\\x{ord(m[0]):02x}"), text)
    return "'" + escaped if text.startswith(_FORMULA_STARTS) else escaped


@contextmanager
def _folder_lock(folder: Folder) -> Iterator[None]:
    """One download of a folder at a time."""
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(folder.path / ".download.lock"), timeout=0)
        lock.acquire()
    except Timeout:
        raise DownloadError(f"another download of {folder.path} is running") from None
    except OSError as err:
        raise DownloadError(f"cannot write to {folder.path}: {err}") from None
    try:
        yield
    finally:
        lock.release()


class _Run:
    """One download run over a list: what is on disk, what failed, what to fetch."""

    def __init__(self, url_list: UrlList, folder: Folder, options: DownloadOptions) -> None:
        self.url_list, self.folder, self.options = url_list, folder, options
        self.concurrency = max(1, options.concurrency)
        self.summary = DownloadSummary(folder.path, folder.failed)
        self.state = UrlState(folder.state)
        if not folder.manifest.exists():
            self.state.forget_files()
        self.state.list_files(_pictures_in(folder.path))
        self.stop = threading.Event()
        self.finished: SimpleQueue[Future[str]] = SimpleQueue()
        """Fetches done, in the order they ended (so collecting one is not a scan of all)."""
        self.manifest: TextIO | None = None

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.manifest is not None:
            self.manifest.close()
        self.state.close()

    def go(self) -> None:
        """Fetch in list order with at most `concurrency` downloads in flight and, under a
        `limit`, never more in flight than valid pictures still wanted."""
        limit = self.options.limit
        in_flight: dict[Future[str], UrlEntry] = {}
        entries = self.url_list.entries()
        bar = tqdm(  # counts valid pictures; the failures are in the postfix
            total=limit,
            unit="img",
            desc=f"downloading {self.folder.name}",
            disable=not self.options.progress,
        )
        fetcher = Fetcher(self.options.rules, self.concurrency, self.options.per_host, self.stop)
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
                if not self._skip(entry, bar):
                    future = pool.submit(self._fetch, fetcher, entry)
                    future.add_done_callback(self.finished.put)
                    in_flight[future] = entry
            while in_flight:
                self._collect(in_flight, bar)
        except BaseException:
            self.stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            entries.close()
            fetcher.close()
            bar.close()
            self._write_report()

    def _skip(self, entry: UrlEntry, bar: tqdm) -> bool:
        """True for a URL that needs no fetch: another shard's, a duplicate, one on disk, one
        that failed for good before."""
        if not self.options.shard.holds(url_image_id(entry.url)):
            self.summary.other_shards += 1
            return True
        key = url_hash(entry.url)
        before = self.state.meet(key, entry.url, entry.line)
        if before is not None and before.run == self.state.run:
            self.summary.duplicates += 1
            return True
        on_disk = self.state.file_on_disk(key)
        if on_disk is not None:
            self.summary.already_there += 1
            if before is None or before.file != on_disk:
                self._record(entry, on_disk)
            self._tick(bar, 1)
            return True
        if before is not None and before.permanent and not self.options.retry_failed:
            self.summary.skipped_failed += 1
            return True
        return False

    def _fetch(self, fetcher: Fetcher, entry: UrlEntry) -> str:
        """Download one URL to its file (in a worker thread); the file name, or raises
        `FetchFailure`."""
        return fetcher.save(entry.url, self.folder.path, url_hash(entry.url))

    def _collect(self, in_flight: dict[Future[str], UrlEntry], bar: tqdm) -> None:
        """Book the fetches that ended: at least one (waits for it), and any others done."""
        done = [self.finished.get()]
        while not self.finished.empty():
            done.append(self.finished.get())
        for future in done:
            entry = in_flight.pop(future)
            try:
                name = future.result()
            except FetchFailure as failure:
                self.summary.failed[failure.reason] += 1
                self.state.failed(url_hash(entry.url), failure.reason, failure.permanent)
                log.debug("%s (line %d): %s", entry.url, entry.line, failure)
                self._tick(bar, 0)
            else:
                self.summary.downloaded += 1
                self._record(entry, name)
                self._tick(bar, 1)

    def _tick(self, bar: tqdm, valid: int) -> None:
        if not bar.disable:
            bar.set_postfix(ok=self.summary.valid, failed=self.summary.failed_count, refresh=False)
            bar.update(valid)

    def _record(self, entry: UrlEntry, file: str) -> None:
        """Append the picture to the manifest (a killed run keeps every line written), then
        to the state."""
        line = {"url": entry.url, "caption": entry.caption, "file": file, "line": entry.line}
        if self.manifest is None:
            self.manifest = open(self.folder.manifest, "a", encoding="utf-8")  # noqa: SIM115
        self.manifest.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.manifest.flush()  # in the system's hands: a killed run keeps it
        self.state.done(url_hash(entry.url), file)

    def _write_report(self) -> None:
        """Rewrite failed.tsv (atomically, row by row): the failures remembered and this
        run's."""
        path = self.folder.failed
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
                rows = _write_tsv(f, self.state.failures())
            if rows or path.exists():
                os.replace(temp, path)
        finally:
            Path(temp).unlink(missing_ok=True)


def _write_tsv(f: TextIO, rows: Iterable[tuple[str, str]]) -> int:
    """Write spreadsheet-safe rows to the open file `f`; how many."""
    writer = csv.writer(f, delimiter="\t", lineterminator="\n")
    count = 0
    for row in rows:
        writer.writerow([spreadsheet_safe(cell) for cell in row])
        count += 1
    return count


def _pictures_in(folder: Path) -> Iterator[tuple[str, str]]:
    """(URL hash, file name) of the pictures in `folder`; removes the temp files of a killed
    run on the way (this run holds the folder's lock)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                if entry.name.endswith(".part"):
                    Path(entry.path).unlink(missing_ok=True)
            elif os.path.splitext(entry.name)[1] in PICTURE_EXTENSIONS and entry.is_file():
                yield entry.name.rsplit(".", 1)[0], entry.name
