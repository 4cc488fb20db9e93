"""URL lists: parsing the list formats, and the reader over downloaded files → an index
(the files come from a local HTTP server only)."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import DatasetError
from core.indexing import BuildOptions, run
from core.search.service import SearchService
from core.sources.url_downloads import DownloadOptions, download_url_list
from core.sources.url_fetch import FetchRules
from core.sources.url_lists import (
    MAX_LINE_BYTES,
    UrlList,
    UrlListReader,
    parse_url_list,
    url_image_id,
)
from tests.conftest import make_settings
from tests.fixtures.shapes import LABELS, caption
from tests.searching import search
from tests.url_list_files import picture, write_tsv
from tests.url_server import Route, UrlServer

LOCAL = DownloadOptions(FetchRules(allow_private=True), progress=False)


@pytest.fixture
def server() -> Iterator[UrlServer]:
    with UrlServer() as server:
        yield server


# Parsing


def test_tsv_rows_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "cc.tsv"
    path.write_text(
        "a red circle\thttp://example.test/1.jpg\n"
        "\n"
        "no url here\n"
        "\thttp://example.test/no-caption.jpg\n"
        "a  blue\tsquare\thttp://example.test/3.jpg\n"
        "  a green   triangle \t http://example.test/4.jpg \r\n",
        encoding="utf-8",
    )
    entries, url_list = parse_url_list(path)
    assert [(e.caption, e.url, e.line) for e in entries] == [
        ("a red circle", "http://example.test/1.jpg", 1),
        ("a green triangle", "http://example.test/4.jpg", 6),
    ]
    assert url_list.bad_count == 3
    assert [b.line for b in url_list.bad_rows] == [3, 4, 5]
    assert "no caption" in url_list.bad_rows[1].reason


def test_csv_with_header_and_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        'id,URL,Caption,license\n1,http://example.test/1.jpg,"a red, round circle",cc\n'
        "2,,a blue square,cc\n3,http://example.test/3.jpg\n"
        '4,http://example.test/4.jpg,"a ""quoted"" triangle",cc\n',
        encoding="utf-8",
    )
    entries, url_list = parse_url_list(path)
    assert [(e.caption, e.url, e.line) for e in entries] == [
        ("a red, round circle", "http://example.test/1.jpg", 2),
        ('a "quoted" triangle', "http://example.test/4.jpg", 5),
    ]
    assert url_list.bad_count == 2 and [b.line for b in url_list.bad_rows] == [3, 4]


def test_csv_without_the_columns_is_a_dataset_error(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("text,link\na,b\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"list\.csv.*'caption' and 'url'"):
        parse_url_list(path)


def test_jsonl_rows_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "list.jsonl"
    path.write_text(
        json.dumps({"caption": "a red circle", "url": "http://example.test/1.jpg", "x": 1})
        + "\n{not json\n[1, 2]\n"
        + json.dumps({"caption": "no url"})
        + "\n"
        + json.dumps({"caption": "a ünïcode square", "url": "http://example.test/5.jpg"})
        + "\n",
        encoding="utf-8",
    )
    entries, url_list = parse_url_list(path)
    assert [(e.caption, e.line) for e in entries] == [("a red circle", 1), ("a ünïcode square", 5)]
    assert url_list.bad_count == 3 and [b.line for b in url_list.bad_rows] == [2, 3, 4]


@pytest.mark.parametrize(
    ("suffix", "row"),
    [
        (".tsv", "{caption}\thttp://example.test/{n}.jpg"),
        (".csv", "{caption},http://example.test/{n}.jpg"),
        (".jsonl", '{{"caption": "{caption}", "url": "http://example.test/{n}.jpg"}}'),
    ],
)
def test_a_line_longer_than_64_kb_is_a_bad_row(tmp_path: Path, suffix: str, row: str) -> None:
    long_caption = "a very long caption " * (MAX_LINE_BYTES // 20 + 1)
    lines = [row.format(caption=c, n=n) for n, c in enumerate(["one", long_caption, "three"])]
    header = ["caption,url"] if suffix == ".csv" else []
    path = tmp_path / f"list{suffix}"
    path.write_text("\n".join([*header, *lines]) + "\n", encoding="utf-8")
    entries, url_list = parse_url_list(path)
    assert [e.caption for e in entries] == ["one", "three"]
    assert url_list.bad_count == 1
    assert url_list.bad_rows[0].line == 2 + len(header)
    assert "longer than 64 KB" in url_list.bad_rows[0].reason


def test_a_huge_line_is_never_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "list.tsv"
    with open(path, "w", encoding="utf-8") as f:
        f.write("one\thttp://example.test/1.jpg\n")
        f.write("x" * (16 * 1024 * 1024) + "\thttp://example.test/2.jpg\n")
        f.write("three\thttp://example.test/3.jpg\n")
    url_list = UrlList.open(path)
    tracemalloc.start()
    try:
        captions = [entry.caption for entry in url_list.entries()]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert captions == ["one", "three"] and url_list.bad_count == 1
    assert peak < 1024 * 1024  # the 16 MB line was read in 64 KB pieces


def test_missing_or_unknown_list_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nowhere\.tsv not found"):
        download_url_list(tmp_path / "nowhere.tsv", tmp_path / "data")
    (tmp_path / "list.xml").write_text("<urls/>")
    with pytest.raises(DatasetError, match=r"list\.xml: unknown format"):
        parse_url_list(tmp_path / "list.xml")


# Reader and index


def test_reader_scans_the_manifest(tmp_path: Path, server: UrlServer) -> None:
    rows = [
        (caption("red", "circle"), server.add("/a.jpg", Route(picture("red", "circle")))),
        (caption("blue", "square"), server.add("/b.png", Route(picture("blue", "square", "PNG")))),
    ]
    listing = write_tsv(tmp_path / "list.tsv", rows)
    with pytest.raises(DatasetError, match="download the list first"):
        UrlListReader(listing, tmp_path / "data").scan()
    download_url_list(listing, tmp_path / "data", LOCAL)
    reader = UrlListReader(listing, tmp_path / "data")
    folder = str((tmp_path / "data" / "list").resolve())
    assert reader.roots == (folder,)
    assert reader.description == f"URL list list in {folder}"
    scan = reader.scan()
    assert [(r.id, r.captions, r.url, r.split) for r in scan.records] == [
        (url_image_id(u), (c,), u, "urls:" + folder) for c, u in rows
    ]
    for record in scan.records:
        stat = Path(record.path).stat()
        assert (record.file_size, record.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
        assert record.id.startswith("u") and len(record.id) == 17
    assert reader.owns("urls:" + folder) and not reader.owns("val2014")
    assert not reader.owns("folder:" + folder)
    Path(scan.records[0].path).unlink()
    again = reader.scan()
    assert len(again.records) == 1 and again.missing == [scan.records[0].path]


def test_downloaded_list_is_indexed_and_searchable(tmp_path: Path, server: UrlServer) -> None:
    rows, labels = [], {}
    for n, (color, shape) in enumerate([*LABELS, *LABELS, ("red", "circle")]):
        fmt = "PNG" if n % 2 else "JPEG"
        url = server.add(f"/{n}", Route(picture(color, shape, fmt, seed=n)))
        rows.append((caption(color, shape), url))
        labels[url_image_id(url)] = (color, shape)
    listing = write_tsv(tmp_path / "shapes.tsv", rows)
    settings = make_settings(tmp_path, data_dir=tmp_path / "data")
    summary = download_url_list(listing, settings.data_dir, LOCAL)
    assert summary.downloaded == len(rows) == 25

    indexed = run(settings, UrlListReader(listing, settings.data_dir), BuildOptions(progress=False))
    assert indexed.indexed == 25 and indexed.bad == []

    service = SearchService.open(settings)
    hits = search(service, "a red circle", 3).hits
    assert [labels[h.id] for h in hits] == [("red", "circle")] * 3
    store = service.store
    record = store.get([hits[0].id])[0]
    assert record.url in {u for _, u in rows} and url_image_id(record.url) == record.id
    assert service.files.allowed(record.id, record.path)  # DATA_DIR is served
