"""COCO2014 from the internet (or a mirror) into the layout `CocoReader` reads.

Used by the index builder's `--download` flag: `plan_coco` tells, before anything is fetched,
which zips the chosen splits still need and how big they are (HEAD requests); `ensure_coco`
fetches, verifies and unpacks them. Nothing here knows about Telegram. The server and the zips
are untrusted; the digests (`core.sources.checksums`) are the trust anchor.

- Files: `{COCO_BASE_URL}/zips/<split>.zip` and
  `{COCO_BASE_URL}/annotations/annotations_trainval2014.zip` (by default the bucket's HTTPS
  path-style address), so a mirror with the same paths works (redirects are followed, a
  bounded number of times).
- Sized: the official zips' sizes are pinned; a server that announces another size is refused
  before a byte is fetched (a mirror with other zips needs `COCO_CHECKSUMS`, and then its own
  announced size is the bound). A body is never written past that size.
- Resumable: bytes go to `<COCO_ROOT>/.coco-download/<zip>.part`; a later attempt or a later
  run continues with an HTTP Range request, or starts again from zero where the server
  ignores ranges. A complete file is never fetched again.
- Digest-checked: the whole zip on disk (resumed or not) must have its pinned MD5 (or the
  COCO_CHECKSUMS digest) before anything is unpacked; one that does not is deleted, said so
  in one line (expected and actual digest) and fetched again, a bounded number of times.
- Bounded unpacking: before a byte is written, the zip's directory is checked: names (no
  absolute paths, no `..`, no duplicates, no file/folder clashes), the number of entries,
  each entry's size and their total (`UnpackLimits`: an image zip unpacks to about its own
  size, the annotations to at most 8x). Each member is read no further than its declared
  size and its CRC is checked, into `.coco-download/extract-<zip>/`; only then are its
  folders moved into COCO_ROOT. A zip that passes its digest but fails here is refused at
  once (fetching it again gives the same bytes), never half-unpacked.
- Done: after a verified extraction the zip is deleted and `.coco-download/<zip>.done`
  written, so a rerun fetches nothing. A non-empty image folder without that marker is the
  user's own unzip: trusted, and said so in the log.
- Disk space is checked before the first byte; network errors and 5xx answers are retried
  with exponential backoff, `RetryPolicy.attempts` times per file in all; a 4xx answer fails
  at once. Failures are one-line `DownloadError`s that name the URL and the cause, or the
  setting when the server cannot be reached at all ("COCO_BASE_URL https://... cannot be
  reached: ..."); a bad COCO_CHECKSUMS file is a `ConfigError`.
- One progress bar for the whole download (every zip), in decimal units (kB, MB, GB), as
  every size this module says.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TypeVar

import httpx
from filelock import FileLock
from filelock import Timeout as LockTimeout
from tqdm import tqdm

from core.config import Settings
from core.errors import DatasetError, DownloadError
from core.json_files import MAX_JSON_BYTES
from core.sources.checksums import Digest, expected_digests, file_digest
from core.sources.coco import COCO_SPLITS
from core.sources.units import format_size, plural

log = logging.getLogger(__name__)

WORK_DIR = ".coco-download"
"""Folder inside COCO_ROOT for partial downloads, staging folders and completion markers."""
ANNOTATIONS_ZIP = "annotations_trainval2014.zip"
USER_AGENT = "clip-image-search-bot (COCO2014 download)"
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
MAX_REDIRECTS = 5
MAX_FETCHES = 3
"""How many times a zip is downloaded when it fails its digest, before giving up."""
COPY_CHUNK = 1 << 20
BAR_FORMAT = (
    "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}B/{total_fmt}B [{elapsed}<{remaining}, {rate_fmt}]"
)
"""The download bar: sizes with their unit (33.1kB/6.6GB), as tqdm leaves it off them."""
ENCRYPTED = 0x1
"""The zip entry flag bit of an encrypted member (COCO's are not; zipfile cannot read one)."""
UNPACK_SLACK = 1 << 20
"""Bytes a zip may unpack beyond `UnpackLimits.ratio` x its size (a tiny mirror zip's text)."""
_T = TypeVar("_T")


@dataclass(frozen=True)
class UnpackLimits:
    """What one zip may unpack, checked against its directory before a byte is written."""

    typical: float
    """Unpacked size / zip size, for the disk space estimate before the zip is there."""
    ratio: float
    """The members taken may declare at most `ratio` x the zip's size (+ `UNPACK_SLACK`)."""
    entries: int
    """At most this many entries in the whole zip."""
    entry_size: int
    """At most this many bytes in one member."""


IMAGE_LIMITS = UnpackLimits(typical=1.05, ratio=1.1, entries=200_000, entry_size=64 << 20)
"""JPEGs do not compress: an image zip unpacks to about its own size (train2014.zip: 82,783
photos of at most a few MB, one entry each, plus its folder)."""
ANNOTATION_LIMITS = UnpackLimits(typical=4.0, ratio=8.0, entries=100, entry_size=MAX_JSON_BYTES)
"""The annotation JSON compresses about 3.5x (252.9 MB of zip, about 0.85 GB in six JSON
files): 8x leaves room for a mirror that compresses harder, while a zip bomb (100-1000x) is
refused; no member may be larger than a JSON file `read_json` reads."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often a request is tried (network errors and 5xx) and how long to wait between
    tries: `first_delay`, doubled each time, at most `max_delay` seconds. `attempts` counts
    every try for one file, whether or not it made progress: a download that keeps breaking
    off fails after `attempts` tries, and a rerun continues from the bytes on disk."""

    attempts: int = 5
    first_delay: float = 1.0
    max_delay: float = 60.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, failures: int) -> float:
        return min(self.first_delay * 2 ** (failures - 1), self.max_delay)


@dataclass(frozen=True)
class CocoFile:
    """A zip that the chosen splits need, as planned before fetching it."""

    name: str
    """File name: "val2014.zip" or "annotations_trainval2014.zip"."""
    url: str
    folder: str
    """The top-level folder it provides: "val2014" or "annotations"."""
    reason: str
    """Why it is needed: "val2014/ is missing", ..."""
    size: int
    """Bytes it must have: pinned (the official zips), else what the server announced."""
    digest: Digest
    """The digest it must have before it is unpacked."""
    have: int = 0
    """Bytes of it already on disk (an interrupted or complete download)."""

    @property
    def to_fetch(self) -> int:
        """Bytes still to download."""
        return max(self.size - self.have, 0)

    @property
    def unpacked_estimate(self) -> int:
        """About how many bytes its contents take once unpacked."""
        return int(self.size * unpack_limits(self.folder).typical)


@dataclass(frozen=True)
class CocoDownload:
    """What `ensure_coco` did."""

    root: Path
    downloaded: tuple[str, ...] = ()
    """Zips (some of) whose bytes were fetched in this run."""
    extracted: tuple[str, ...] = ()
    """Zips unpacked into `root` in this run."""
    skipped: tuple[str, ...] = ()
    """Zips the splits need whose contents were already in place."""
    bytes_downloaded: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.downloaded or self.extracted)


def coco_files(splits: Sequence[str]) -> list[tuple[str, str, str]]:
    """(zip name, path under COCO_BASE_URL, folder it holds) of every zip `splits` need."""
    files = [(ANNOTATIONS_ZIP, f"annotations/{ANNOTATIONS_ZIP}", "annotations")]
    return files + [(f"{split}.zip", f"zips/{split}.zip", split) for split in splits]


def unpack_limits(folder: str) -> UnpackLimits:
    """The limits of the zip that holds `folder`."""
    return ANNOTATION_LIMITS if folder == "annotations" else IMAGE_LIMITS


def plan_coco(
    settings: Settings,
    splits: Sequence[str],
    client: httpx.Client | None = None,
    *,
    retry: RetryPolicy | None = None,
) -> list[CocoFile]:
    """The zips `splits` still need under `settings.coco_root`, with their URLs, sizes and
    digests (one HEAD request each; nothing is downloaded). Empty when all is in place.

    Raises `DatasetError` for an unknown split, `ConfigError` for a bad COCO_CHECKSUMS file,
    and `DownloadError` when a size cannot be asked for (404, or the server is unreachable
    after the retries) or is not the pinned one."""
    root, splits = _root(settings), _valid_splits(splits)
    wanted = _wanted(root, splits)
    if not wanted:
        return []
    digests = expected_digests(settings.coco_checksums, [path for _, path, _, _ in wanted])
    base_url, work = settings.coco_base_url.rstrip("/"), root / WORK_DIR
    with _http(client) as http:
        plan = []
        for name, path, folder, reason in wanted:
            url, digest = f"{base_url}/{path}", digests[path]
            complete, part = work / name, work / f"{name}.part"
            if complete.is_file():
                have = complete.stat().st_size
                size = have if digest.size is None else digest.size
            else:
                have = part.stat().st_size if part.is_file() else 0
                announced = _probe_size(http, url, retry or RetryPolicy(), base_url)
                size = _expected_size(url, announced, digest)
            plan.append(CocoFile(name, url, folder, reason, size, digest, have))
    return plan


def ensure_coco(
    settings: Settings,
    splits: Sequence[str],
    *,
    progress: bool = True,
    client: httpx.Client | None = None,
    retry: RetryPolicy | None = None,
    max_fetches: int = MAX_FETCHES,
) -> CocoDownload:
    """Fetch and unpack what `splits` need and is missing under `settings.coco_root`, so
    that `CocoReader(settings.coco_root, splits).scan()` finds the pictures.

    Raises `DownloadError` (not enough disk space, a size other than the pinned one, a 4xx
    answer, a server still failing after the retries, a zip still failing its digest after
    `max_fetches` downloads, a zip with unsafe member names or over its `UnpackLimits`,
    another download running into the same folder), `ConfigError` for a bad COCO_CHECKSUMS
    file and `DatasetError` for an unknown split. What was fetched so far stays on disk and a
    rerun continues from it.

    `client`: an httpx client to use as it is configured (a proxy, tests); by default one with
    `TIMEOUT`, at most `MAX_REDIRECTS` redirects and `USER_AGENT`. `retry`: how network errors
    and 5xx answers are retried (default `RetryPolicy()`: 5 attempts, 1, 2, 4, 8 s apart)."""
    root, splits = _root(settings), _valid_splits(splits)
    retry = retry or RetryPolicy()
    names = [name for name, _, _ in coco_files(splits)]
    with _http(client) as http:
        plan = plan_coco(settings, splits, http, retry=retry)
        skipped = tuple(name for name in names if name not in {f.name for f in plan})
        if not plan:
            log.info("COCO2014 %s: everything is in place in %s", "+".join(splits), root)
            return CocoDownload(root, skipped=skipped)
        check_disk_space(root, plan)
        work = root / WORK_DIR
        work.mkdir(parents=True, exist_ok=True)
        tally = _Tally()
        base_url = settings.coco_base_url.rstrip("/")
        with _locked(work):
            how = _Fetching(http, retry, _Progress(plan, progress), max_fetches, base_url)
            try:
                for item in plan:
                    log.debug(
                        "COCO2014: %s (%s): %s", item.name, format_size(item.size), item.reason
                    )
                    _fetch_and_extract(how, item, root, tally)
            finally:
                how.progress.close()
    return CocoDownload(root, tuple(tally.downloaded), tuple(tally.extracted), skipped, tally.bytes)


def disk_space_needed(plan: Sequence[CocoFile]) -> int:
    """Bytes `ensure_coco` needs free for `plan`: everything unpacked, plus the largest zip
    still to download (each zip is deleted once unpacked)."""
    unpacked = sum(item.unpacked_estimate for item in plan)
    return unpacked + max((item.to_fetch for item in plan), default=0)


def check_disk_space(root: Path, plan: Sequence[CocoFile]) -> None:
    """Raise `DownloadError` when the disk holding `root` has too little room for `plan`."""
    _check_space(root, disk_space_needed(plan))


class _Progress:
    """The download's one progress bar: the bytes of every zip of the plan on disk, summed
    (decimal units, as `format_size`), whichever zip is being fetched."""

    def __init__(self, plan: Sequence[CocoFile], enabled: bool) -> None:
        self.have = {item.name: min(item.have, item.size) for item in plan}
        self.bar = tqdm(
            total=sum(item.size for item in plan),
            initial=sum(self.have.values()),
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            desc=f"downloading {plan[0].name}" if plan else "downloading",
            bar_format=BAR_FORMAT,
            disable=not enabled,
        )

    def restart(self, name: str, on_disk: int) -> None:
        """Zip `name` is fetched (again) from byte `on_disk`."""
        self.have[name] = on_disk
        self.bar.set_description_str(f"downloading {name}", refresh=False)
        self.bar.n = sum(self.have.values())
        self.bar.refresh()

    def add(self, name: str, received: int) -> None:
        self.have[name] += received
        self.bar.update(received)

    def close(self) -> None:
        self.bar.close()


# --- what is needed -------------------------------------------------------------------


def _root(settings: Settings) -> Path:
    return Path(settings.coco_root).expanduser().resolve()


def _valid_splits(splits: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(splits))
    unknown = set(chosen) - set(COCO_SPLITS)
    if unknown or not chosen:
        raise DatasetError(f"unknown COCO split(s) {sorted(unknown)}: use {COCO_SPLITS}")
    return chosen


def _wanted(root: Path, splits: tuple[str, ...]) -> list[tuple[str, str, str, str]]:
    """(zip name, URL path, folder, reason) of each zip whose contents are not in place."""
    wanted = []
    for name, path, folder in coco_files(splits):
        if folder == "annotations":
            missing = [
                f"annotations/captions_{split}.json"
                for split in splits
                if not (root / "annotations" / f"captions_{split}.json").is_file()
            ]
            reason = f"{' and '.join(missing)} missing" if missing else None
        else:
            reason = _image_folder_reason(root, name, folder)
        if reason:
            wanted.append((name, path, folder, reason))
    return wanted


def _image_folder_reason(root: Path, name: str, folder: str) -> str | None:
    """Why `<root>/<folder>` must be (re)extracted from `name`, or None when it is in place."""
    images, work = root / folder, root / WORK_DIR
    if not images.is_dir() or not any(images.iterdir()):
        return f"{folder}/ is missing or empty"
    if (work / f"{name}.done").is_file():
        return None
    if (work / name).is_file():
        return f"{folder}/ was not completely extracted"
    log.info(
        "%s exists without a download marker: taken as your own unzip of %s, not checked",
        images,
        name,
    )
    return None


# --- fetching -----------------------------------------------------------------------------


class _Retryable(Exception):
    """A failure worth another try (5xx, a short body, a refused resume)."""


class _CorruptZip(Exception):
    """The zip fails its digest; fetching it again may help."""


class _RefusedZip(Exception):
    """The zip is not what COCO distributes (unsafe names, over its limits, broken after its
    digest passed); fetching it again won't help."""


@dataclass
class _Tally:
    downloaded: list[str] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)
    bytes: int = 0


@dataclass(frozen=True)
class _Fetching:
    """How the zips of one `ensure_coco` call are fetched."""

    http: httpx.Client
    retry: RetryPolicy
    progress: _Progress
    max_fetches: int
    base_url: str
    """COCO_BASE_URL, named when it cannot be reached."""


def _expected_size(url: str, announced: int | None, digest: Digest) -> int:
    """The size the download is bounded by: the pinned one, which the server must announce
    too; else the one the server announces (a COCO_CHECKSUMS mirror)."""
    if digest.size is None:
        if announced is None:
            raise DownloadError(f"{url}: the server does not say how big the file is: refused")
        return announced
    if announced is not None and announced != digest.size:
        raise DownloadError(
            f"{url}: the server announces {announced:,} bytes, the official zip has "
            f"{digest.size:,}: a mirror with other zips needs COCO_CHECKSUMS"
        )
    return digest.size


def _fetch_and_extract(how: _Fetching, item: CocoFile, root: Path, tally: _Tally) -> None:
    """Download `item` (unless a complete copy is on disk), check its digest, unpack it, delete
    the zip and write its marker; download it again when its digest is wrong, at most
    `how.max_fetches` times in all."""
    work = root / WORK_DIR
    zip_path = work / item.name
    cause = ""
    for fetch in range(1, how.max_fetches + 1):
        if not zip_path.is_file():
            transfer = _Transfer(how, item.url, work / f"{item.name}.part", item.size)
            try:
                transfer.run()
            finally:
                tally.bytes += transfer.received
                if transfer.received and item.name not in tally.downloaded:
                    tally.downloaded.append(item.name)
            transfer.part.replace(zip_path)
        try:
            _check_digest(zip_path, item.digest)
            members = _extract(zip_path, root, item.folder)
        except _CorruptZip as err:
            cause = str(err)
            again = "fetching it again" if fetch < how.max_fetches else "giving up"
            log.warning(
                "%s from %s fails its digest (%s): deleted, %s", item.name, item.url, cause, again
            )
            zip_path.unlink(missing_ok=True)
            how.progress.restart(item.name, 0)
            continue
        except _RefusedZip as err:
            zip_path.unlink(missing_ok=True)
            raise DownloadError(f"{item.url}: {err}") from None
        _write_marker(work / f"{item.name}.done", item, members)
        zip_path.unlink()
        tally.extracted.append(item.name)
        log.debug("%s: %s in %s", item.name, plural(members, "file"), root / item.folder)
        return
    raise DownloadError(f"{item.url}: corrupt zip ({cause}) after {how.max_fetches} downloads")


def _check_digest(zip_path: Path, digest: Digest) -> None:
    """Raise `_CorruptZip` naming both digests unless the whole file has `digest`."""
    log.debug("%s: checking its %s digest", zip_path.name, digest.algorithm)
    actual = file_digest(zip_path, digest.algorithm)
    if actual != digest.hexdigest:
        raise _CorruptZip(f"{digest.algorithm} {actual}, expected {digest.hexdigest}")


class _Transfer:
    """One file of a known size into `part`, resumed with Range requests, retried, never
    written past that size, counted on the download's progress bar."""

    def __init__(self, how: _Fetching, url: str, part: Path, size: int) -> None:
        self.http, self.url, self.part, self.expected = how.http, url, part, size
        self.how, self.name = how, part.name.removesuffix(".part")
        self.received = 0

    def run(self) -> None:
        _retrying(self.url, self.how.retry, self._attempt, self.how.base_url)

    def _on_disk(self) -> int:
        return self.part.stat().st_size if self.part.is_file() else 0

    def _attempt(self) -> None:
        have = self._on_disk()
        if have == self.expected:
            return
        if have > self.expected:
            self.part.unlink()
            have = 0
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        with self.http.stream("GET", self.url, headers=headers, follow_redirects=True) as resp:
            if resp.status_code == 416:
                self.part.unlink(missing_ok=True)
                raise _Retryable(f"the server refused to resume at byte {have}")
            _raise_for_status(resp, self.url)
            start = self._start(resp, have)
            self.how.progress.restart(self.name, start)
            self._write(resp, start)
        got = self._on_disk()
        if got != self.expected:
            raise _Retryable(f"got {got} of {self.expected} bytes")

    def _start(self, resp: httpx.Response, have: int) -> int:
        """Where the body starts in the file, from the answer's headers. A size other than the
        expected one is said in the log; the body is cut at the expected size all the same."""
        if resp.status_code == 206:
            sent, total = _content_range(resp.headers.get("content-range", ""))
            if sent != have:
                self.part.unlink(missing_ok=True)
                raise _Retryable(f"asked to resume at byte {have}, the server sent {sent}")
            start = have
        else:
            if have:
                log.info("%s: the server does not resume downloads: from zero again", self.url)
            start, total = 0, _int(resp.headers.get("content-length"))
        if total is not None and total != self.expected:
            log.warning(
                "%s: the server now says %d bytes, %d expected: reading no more than that",
                self.url,
                total,
                self.expected,
            )
        return start

    def _write(self, resp: httpx.Response, start: int) -> None:
        """The raw body into the part from byte `start`, no further than the expected size."""
        left = self.expected - start
        with open(self.part, "ab" if start else "wb") as out:
            for chunk in resp.iter_raw():
                piece = chunk[:left]
                out.write(piece)
                self.received += len(piece)
                self.how.progress.add(self.name, len(piece))
                left -= len(piece)
                if not left:
                    break


def _probe_size(http: httpx.Client, url: str, retry: RetryPolicy, base_url: str) -> int | None:
    """The file's size from a HEAD request (or a one-byte Range GET where HEAD is refused)."""

    def ask() -> int | None:
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        resp = http.head(url, headers=headers, follow_redirects=True)
        if resp.status_code in (405, 501):
            headers["Range"] = "bytes=0-0"
            with http.stream("GET", url, headers=headers, follow_redirects=True) as resp:
                _raise_for_status(resp, url)
                if resp.status_code == 206:
                    return _content_range(resp.headers.get("content-range", ""))[1]
                return _int(resp.headers.get("content-length"))
        _raise_for_status(resp, url)
        return _int(resp.headers.get("content-length"))

    return _retrying(url, retry, ask, base_url)


def _retrying(url: str, retry: RetryPolicy, action: Callable[[], _T], base_url: str) -> _T:
    """`action()`, tried again after network errors and 5xx answers with exponential backoff,
    `retry.attempts` times in all (progress made by an attempt does not reset the count)."""
    failures = 0
    while True:
        try:
            return action()
        except (httpx.UnsupportedProtocol, httpx.TooManyRedirects, httpx.InvalidURL) as err:
            raise DownloadError(f"{url}: {_cause(err)}") from None
        except (httpx.TransportError, _Retryable) as err:
            failures += 1
            if failures >= retry.attempts:
                raise _gave_up(url, err, failures, base_url) from None
            delay = retry.delay(failures)
            log.warning("%s: %s; trying again in %.0f s", url, _cause(err), delay)
            retry.sleep(delay)


def _gave_up(url: str, err: Exception, attempts: int, base_url: str) -> DownloadError:
    """The error after the last attempt: when it could not even connect, it names the setting
    to check, COCO_BASE_URL (`base_url`); else the URL and what went wrong."""
    if isinstance(err, (httpx.ConnectError, httpx.ConnectTimeout)):
        return DownloadError(
            f"COCO_BASE_URL {base_url} cannot be reached: {_cause(err)} (after {attempts} "
            f"attempts at {url})"
        )
    return DownloadError(f"{url}: {_cause(err)} after {attempts} attempts")


def _raise_for_status(resp: httpx.Response, url: str) -> None:
    status = f"{resp.status_code} {resp.reason_phrase}".strip()
    if resp.status_code >= 500:
        raise _Retryable(status)
    if resp.status_code >= 400:
        raise DownloadError(f"{url}: {status}")
    if resp.status_code not in (200, 206):
        raise DownloadError(f"{url}: unexpected answer {status}")


# --- unpacking ----------------------------------------------------------------------------


def _extract(zip_path: Path, root: Path, folder: str) -> int:
    """Unpack `folder/` of the zip into a staging folder next to it, within its
    `UnpackLimits` (checked before a byte is written) and every member's CRC, then move it
    into `root`. Returns how many files it held."""
    staging = zip_path.parent / f"extract-{zip_path.name}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = _members(archive, folder)
            _check_sizes(archive, members, zip_path.stat().st_size, unpack_limits(folder))
            _check_space(root, sum(member.file_size for member in members))
            for member in members:
                _unpack(archive, member, staging)
        _merge(staging / folder, root / folder)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise _RefusedZip(f"broken zip: {_cause(err)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sum(1 for member in members if not member.is_dir())


def _members(archive: zipfile.ZipFile, folder: str) -> list[zipfile.ZipInfo]:
    """The members under `folder/`; unsafe, duplicate or clashing names refuse the whole zip."""
    chosen, others = [], set()
    for info in archive.infolist():
        name = info.filename
        parts = PurePosixPath(name).parts or ("",)
        if name.startswith("/") or "\\" in name or ".." in parts or ":" in parts[0]:
            raise _RefusedZip(f"unsafe member name {name!r} in the zip: refused")
        if info.flag_bits & ENCRYPTED:
            raise _RefusedZip(f"encrypted member {name!r} in the zip: refused")
        if parts[0] == folder:
            chosen.append(info)
        else:
            others.add(parts[0])
    _check_names(chosen)
    if not any(
        not info.is_dir() and len(PurePosixPath(info.filename).parts) > 1 for info in chosen
    ):
        raise _RefusedZip(
            f"the zip holds no {folder}/ folder (it holds {sorted(others)}): "
            "is COCO_BASE_URL a COCO mirror?"
        )
    if others:
        log.info("ignoring entries outside %s/ in the zip: %s", folder, sorted(others))
    return chosen


def _check_names(members: list[zipfile.ZipInfo]) -> None:
    """Refuse a name given twice, or given to a file and to a folder (`val2014` as a file
    and `val2014/x.jpg`): unpacked, one would overwrite or break the other."""
    seen: set[str] = set()
    files: set[str] = set()
    folders: set[str] = set()
    for info in members:
        path = PurePosixPath(info.filename)
        if path.as_posix() in seen:
            raise _RefusedZip(f"{path.as_posix()!r} is in the zip twice: refused")
        seen.add(path.as_posix())
        (folders if info.is_dir() else files).add(path.as_posix())
        folders.update(parent.as_posix() for parent in path.parents)
    clash = sorted(files & folders)
    if clash:
        raise _RefusedZip(f"{clash[0]!r} is both a file and a folder in the zip: refused")


def _check_sizes(
    archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], zip_size: int, limits: UnpackLimits
) -> None:
    """Refuse a zip whose directory declares more than `limits` allow, before any unpacking."""
    entries = len(archive.infolist())
    if entries > limits.entries:
        raise _RefusedZip(
            f"the zip holds {entries:,} entries, more than {limits.entries:,}: refused"
        )
    declared = sum(member.file_size for member in members)
    most = int(limits.ratio * zip_size) + UNPACK_SLACK
    if declared > most:
        raise _RefusedZip(
            f"the zip declares {format_size(declared)} unpacked, more than "
            f"{format_size(most)} for a {format_size(zip_size)} zip: refused"
        )
    big = next((m for m in members if m.file_size > limits.entry_size), None)
    if big is not None:
        raise _RefusedZip(
            f"{big.filename!r} declares {format_size(big.file_size)}, more than "
            f"{format_size(limits.entry_size)} for one entry: refused"
        )


def _unpack(archive: zipfile.ZipFile, member: zipfile.ZipInfo, staging: Path) -> None:
    """One member into `staging` (its name is checked: it stays inside), read no further
    than its declared size; a member that holds less is refused."""
    target = staging.joinpath(*PurePosixPath(member.filename).parts)
    if member.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with archive.open(member) as source, open(target, "xb") as out:
        if _copy(source, out, member.file_size) != member.file_size:
            raise _RefusedZip(f"{member.filename!r} holds less than the zip declares")


def _copy(source: BinaryIO, out: BinaryIO, most: int) -> int:
    """Copy at most `most` bytes of `source` into `out`; returns how many were copied."""
    copied = 0
    while copied < most:
        chunk = source.read(min(COPY_CHUNK, most - copied))
        if not chunk:
            break
        out.write(chunk)
        copied += len(chunk)
    return copied


def _merge(source: Path, target: Path) -> None:
    """Move `source` to `target`; where `target` exists, move in only what it lacks."""
    if not target.exists():
        source.rename(target)
        return
    if not target.is_dir():
        raise DownloadError(f"{target} exists and is not a folder: move it away")
    for entry in source.iterdir():
        inside = target / entry.name
        if entry.is_dir() and inside.is_dir():
            _merge(entry, inside)
        elif not inside.exists():
            entry.rename(inside)


def _write_marker(marker: Path, item: CocoFile, members: int) -> None:
    record = {"url": item.url, "size": item.size, "files": members, "at": time.time()}
    temporary = marker.with_name(marker.name + ".tmp")
    temporary.write_text(json.dumps(record))
    temporary.replace(marker)


# --- small helpers ----------------------------------------------------------------------


def _check_space(root: Path, need: int) -> None:
    where = root
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if need > free:
        raise DownloadError(
            f"not enough disk space in {root}: need {format_size(need)}, {format_size(free)} free"
        )


@contextmanager
def _http(client: httpx.Client | None) -> Iterator[httpx.Client]:
    """The caller's client, or one of ours (timeouts, bounded redirects, our User-Agent)."""
    if client is not None:
        yield client
        return
    with httpx.Client(
        timeout=TIMEOUT,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        headers={"User-Agent": USER_AGENT},
    ) as own:
        yield own


@contextmanager
def _locked(work: Path) -> Iterator[None]:
    lock = FileLock(str(work / ".lock"), timeout=0)
    try:
        lock.acquire()
    except LockTimeout:
        raise DownloadError(f"another download into {work.parent} is running") from None
    try:
        yield
    finally:
        lock.release()


def _content_range(value: str) -> tuple[int | None, int | None]:
    """ "bytes 100-199/1000" → (100, 1000); "bytes */1000" → (None, 1000)."""
    match = re.fullmatch(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value.strip())
    if not match:
        return None, None
    start, total = match.groups()
    return _int(start), _int(total)


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _cause(err: BaseException) -> str:
    return str(err) or type(err).__name__
