"""URL lists (Conceptual Captions and the like): what a list is and what lies on disk for it.

For core.sources.url_downloads (which fetches a list's pictures into the layout defined here),
index_builder.py (`UrlListReader`, to index a downloaded list) and the tests. Knows nothing
of the network or of Telegram.

- Lists: Conceptual Captions' own TSV (`caption<TAB>url`, no header), CSV with a header
  holding `caption` and `url` columns, or JSON lines with `caption` and `url` keys. Bad rows
  are counted, logged with their line numbers and skipped; a line longer than
  `MAX_LINE_BYTES` is a bad row, read in pieces and never held whole (a list is untrusted).
- Identities: `url_hash` names the file of a URL, `url_image_id` its index record.
- Files (`Folder`): `<data dir>/<list name>/<hash of the URL>.<ext>`; a manifest
  (`<list name>-manifest.jsonl`: url, caption, file, line) says what each file is,
  `<list name>-failed.tsv` (url, reason) what failed (a report for people), and
  `<list name>-state.sqlite3` what each URL came to (core.sources.url_state).
- `UrlListReader`: the downloaded pictures, read from the manifest (never the network).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from core.errors import DatasetError
from core.sources.scan import Scan
from core.store.records import ImageRecord

log = logging.getLogger(__name__)

REPORTED_BAD_ROWS = 5
"""Bad rows logged one by one; the rest are only counted."""
URL_SPLIT_PREFIX = "urls:"
LIST_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
LIST_FORMATS[".json"] = "jsonl"  # JSON lines, one object per line, under a .json name
MAX_LINE_BYTES = 64 * 1024
"""A longer line of a list is a bad row."""
TOO_LONG = f"line longer than {MAX_LINE_BYTES // 1024} KB"


@dataclass(frozen=True)
class UrlEntry:
    """One row of a URL list."""

    caption: str
    url: str
    line: int
    """Line number in the list file (1-based), for reports and list order."""


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str


@dataclass
class UrlList:
    """A URL list file, read lazily (a 3-million-row list is never held in memory)."""

    path: Path
    format: str
    bad_count: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)
    """The first `REPORTED_BAD_ROWS` bad rows; `bad_count` counts them all."""

    @classmethod
    def open(cls, path: Path) -> UrlList:
        """Raises `DatasetError` when the file is missing or its extension unknown."""
        path = Path(path).expanduser()
        kind = LIST_FORMATS.get(path.suffix.lower())
        if kind is None:
            raise DatasetError(
                f"URL list {path}: unknown format {path.suffix!r}, "
                f"use one of {', '.join(sorted(LIST_FORMATS))}"
            )
        if not path.is_file():
            raise DatasetError(f"URL list {path} not found")
        return cls(path, kind)

    @property
    def name(self) -> str:
        return list_name(self.path)

    def entries(self) -> Iterator[UrlEntry]:
        """The good rows in file order; bad ones are counted, logged and skipped."""
        try:
            with open(self.path, "rb") as f:
                rows = {"tsv": _tsv_rows, "csv": _csv_rows, "jsonl": _jsonl_rows}[self.format]
                for line, row in rows(_lines(f), self.path):
                    if isinstance(row, str):
                        self._bad(line, row)
                    elif (problem := _row_problem(row)) is not None:
                        self._bad(line, problem)
                    else:
                        yield UrlEntry(" ".join(row[0].split()), row[1].strip(), line)
        except OSError as err:
            raise DatasetError(f"URL list {self.path} cannot be read: {err}") from None
        if self.bad_count:
            log.warning("%s: %d bad rows skipped", self.path.name, self.bad_count)

    def _bad(self, line: int, reason: str) -> None:
        self.bad_count += 1
        if len(self.bad_rows) < REPORTED_BAD_ROWS:
            self.bad_rows.append(BadRow(line, reason))
            log.warning("%s line %d: %s (skipped)", self.path.name, line, reason)


def parse_url_list(path: Path) -> tuple[list[UrlEntry], UrlList]:
    """All good rows of a (small) list, and the list with its bad-row counts."""
    url_list = UrlList.open(path)
    return list(url_list.entries()), url_list


def list_name(path: Path) -> str:
    """The list file's stem, made safe as a folder name: "Train_GCC-training"."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem).strip("._")
    return name or "urls"


def url_hash(url: str) -> str:
    """32 hex digits naming the file of `url` (its first 16 make the record id)."""
    return hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def url_image_id(url: str) -> str:
    """ "u" + 16 hex digits: never a COCO id (digits) nor a folder id ("f...")."""
    return "u" + url_hash(url)[:16]


@dataclass(frozen=True)
class Folder:
    """Where a list's pictures and bookkeeping files lie."""

    path: Path
    name: str

    @classmethod
    def of(cls, list_path: Path, data_dir: Path) -> Folder:
        name = list_name(list_path)
        return cls(Path(data_dir).expanduser() / name, name)

    @property
    def manifest(self) -> Path:
        return self.path / f"{self.name}-manifest.jsonl"

    @property
    def failed(self) -> Path:
        return self.path / f"{self.name}-failed.tsv"

    @property
    def state(self) -> Path:
        return self.path / f"{self.name}-state.sqlite3"


class UrlListReader:
    """The downloaded pictures of a URL list, with their captions and URLs (from the
    manifest; never the network)."""

    def __init__(self, list_path: Path, data_dir: Path) -> None:
        folder = Folder.of(Path(list_path), Path(data_dir))
        self.folder = Folder(folder.path.resolve(), folder.name)
        self.split = URL_SPLIT_PREFIX + str(self.folder.path)
        self.description = f"URL list {self.folder.name} in {self.folder.path}"

    @property
    def roots(self) -> tuple[str, ...]:
        return (str(self.folder.path),)

    def owns(self, split: str) -> bool:
        return split == self.split

    def scan(self) -> Scan:
        manifest = self.folder.manifest
        if not manifest.is_file():
            raise DatasetError(
                f"no manifest {manifest}: download the list first (index_builder.py --urls)"
            )
        scan = Scan()
        for entry in sorted(read_manifest(manifest).values(), key=lambda e: e.line):
            record = ImageRecord(
                id=url_image_id(entry.url),
                path=str(self.folder.path / entry.file),
                split=self.split,
                captions=(entry.caption,) if entry.caption else (),
                url=entry.url,
            )
            scan.add(record)
        return scan


@dataclass(frozen=True)
class ManifestEntry:
    url: str
    caption: str
    file: str
    line: int


def _row_problem(row: tuple[str, str]) -> str | None:
    caption, url = row
    if not url.strip():
        return "no url"
    if not caption.strip():
        return "no caption"
    try:
        (caption + url).encode("utf-8")
    except UnicodeEncodeError:
        return "not UTF-8"
    if any(c.isspace() for c in url.strip()):
        return "url contains whitespace"
    return None


RowOrReason = tuple[str, str] | str
Lines = Iterator[str | None]
"""A list's lines as text, None for one longer than `MAX_LINE_BYTES`."""


def _lines(f: BinaryIO) -> Lines:
    """The lines of `f` (undecodable bytes kept as surrogates), never more than
    `MAX_LINE_BYTES` of one in memory."""
    while piece := f.readline(MAX_LINE_BYTES + 1):
        if len(piece) <= MAX_LINE_BYTES or piece.endswith(b"\n"):
            yield piece.decode("utf-8", "surrogateescape")
            continue
        while piece and not piece.endswith(b"\n"):
            piece = f.readline(MAX_LINE_BYTES)
        yield None


class _CsvLines:
    """Lines for csv.reader: a too-long one becomes an empty line, and `too_long` says so."""

    def __init__(self, lines: Lines) -> None:
        self.lines = lines
        self.too_long = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        text = next(self.lines)
        if text is None:
            self.too_long = True
            return "\n"
        return text


def _tsv_rows(lines: Lines, path: Path) -> Iterator[tuple[int, RowOrReason]]:
    for line, text in enumerate(lines, 1):
        if text is None:
            yield line, TOO_LONG
            continue
        text = text.rstrip("\r\n")
        if not text.strip():
            continue
        fields = text.split("\t")
        if len(fields) != 2:
            yield line, f"{len(fields)} tab-separated fields, expected caption<TAB>url"
        else:
            yield line, (fields[0], fields[1])


def _csv_rows(lines: Lines, path: Path) -> Iterator[tuple[int, RowOrReason]]:
    """Rows after the header; a record that spans a too-long line is a bad row (a quoted
    field over several lines is bounded by csv's own field size limit)."""
    source = _CsvLines(lines)
    reader = csv.reader(source)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return
    except csv.Error as err:
        raise DatasetError(f"URL list {path}: bad CSV header ({err})") from None
    if "caption" not in header or "url" not in header:
        raise DatasetError(f"URL list {path}: the CSV header needs 'caption' and 'url' columns")
    caption_at, url_at = header.index("caption"), header.index("url")
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            source.too_long = False
            yield reader.line_num, f"bad CSV ({err})"
            continue
        if source.too_long:
            source.too_long = False
            yield reader.line_num, TOO_LONG
            continue
        if not any(x.strip() for x in fields):
            continue
        if len(fields) <= max(caption_at, url_at):
            yield reader.line_num, f"{len(fields)} columns, expected {len(header)}"
        else:
            yield reader.line_num, (fields[caption_at], fields[url_at])


def _jsonl_rows(lines: Lines, path: Path) -> Iterator[tuple[int, RowOrReason]]:
    for line, text in enumerate(lines, 1):
        if text is None:
            yield line, TOO_LONG
            continue
        if not text.strip():
            continue
        try:
            item = json.loads(text)
        except ValueError as err:
            yield line, f"not JSON ({err})"
            continue
        if not isinstance(item, dict):
            yield line, "not a JSON object"
        elif not isinstance(item.get("caption"), str) or not isinstance(item.get("url"), str):
            yield line, "needs string 'caption' and 'url'"
        else:
            yield line, (item["caption"], item["url"])


def read_manifest(path: Path) -> dict[str, ManifestEntry]:
    """url → entry; a torn or tampered line (a killed run) is skipped with a warning."""
    entries: dict[str, ManifestEntry] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, text in enumerate(f, 1):
                try:
                    item = json.loads(text)
                    entry = ManifestEntry(
                        str(item["url"]), str(item["caption"]), str(item["file"]), int(item["line"])
                    )
                except (ValueError, KeyError, TypeError):
                    log.warning("%s line %d: not a manifest entry (skipped)", path.name, n)
                    continue
                if Path(entry.file).name != entry.file or entry.file.startswith("."):
                    log.warning("%s line %d: bad file name (skipped)", path.name, n)
                    continue
                entries[entry.url] = entry
    except OSError as err:
        raise DatasetError(f"manifest {path} cannot be read: {err}") from None
    return entries
