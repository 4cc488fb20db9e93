"""Downloading URL lists to validated files on disk, what a rerun fetches again, and the
failure report, against a local HTTP server only."""

from __future__ import annotations

import csv
import gzip
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from filelock import FileLock

from core.errors import DownloadError
from core.sources import url_fetch, url_network
from core.sources.url_downloads import (
    DownloadOptions,
    DownloadSummary,
    download_url_list,
    spreadsheet_safe,
)
from core.sources.url_fetch import FetchRules
from core.sources.url_lists import UrlListReader, url_hash
from tests.conftest import ROOT
from tests.url_list_files import picture, write_tsv
from tests.url_server import Route, UrlServer

HTML = b"<!doctype html><html><body>Sorry, this image is gone.</body></html>"
LOCAL = DownloadOptions(FetchRules(allow_private=True), progress=False)
"""A list on the local test server: private addresses allowed, no progress bar."""


def failed_tsv(summary: DownloadSummary) -> dict[str, str]:
    with open(summary.failed_path, encoding="utf-8", newline="") as f:
        return {row[0]: row[1] for row in csv.reader(f, delimiter="\t")}


@pytest.fixture
def server() -> Iterator[UrlServer]:
    with UrlServer() as server:
        yield server


# Downloading


def test_mixed_list_keeps_the_pictures_and_records_each_failure(
    tmp_path: Path, server: UrlServer
) -> None:
    jpeg, png = picture("red", "circle"), picture("blue", "square", "PNG")
    good = {
        server.add("/red.jpg", Route(jpeg, headers={"Content-Type": "image/jpeg"})): jpeg,
        server.add("/blue", Route(png, headers={"Content-Type": "text/plain"})): png,
    }
    moved = server.add("/moved", Route(status=302, headers={"Location": "/red.jpg?again"}))
    server.add("/red.jpg?again", Route(jpeg))
    bad = {
        server.base + "/gone.jpg": "HTTP 404",
        server.add("/slow.jpg", Route(jpeg, delay_s=5)): "read timeout",
        server.add("/page.jpg", Route(HTML, headers={"Content-Type": "image/jpeg"})): (
            "not an image"
        ),
        server.add("/huge.jpg", Route(stream_bytes=50 * 1024 * 1024)): "too large",
        server.add("/loop", Route(status=302, headers={"Location": "/loop"})): (
            "too many redirects"
        ),
        server.add("/noai.jpg", Route(jpeg, headers={"X-Robots-Tag": "noai"})): ("robots: noai"),
        server.add(
            "/zipped.jpg", Route(gzip.compress(jpeg), headers={"Content-Encoding": "gzip"})
        ): ("unsupported encoding"),
        "ftp://127.0.0.1/picture.jpg": "unsupported scheme",
        server.add("/to-ftp", Route(status=301, headers={"Location": "ftp://x/y.jpg"})): (
            "unsupported scheme"
        ),
    }
    urls = [*good, moved, *bad]
    listing = write_tsv(
        tmp_path / "Mixed List!.tsv", [(f"caption {n}", u) for n, u in enumerate(urls)]
    )

    rules = FetchRules(read_timeout_s=0.5, allow_private=True)
    summary = download_url_list(listing, tmp_path / "data", replace(LOCAL, rules=rules))

    folder = tmp_path / "data" / "Mixed_List"
    assert summary.folder == folder and summary.failed_path == folder / "Mixed_List-failed.tsv"
    assert (summary.downloaded, summary.already_there, summary.failed_count) == (3, 0, len(bad))
    assert failed_tsv(summary) == bad
    assert summary.failed["unsupported scheme"] == 2 and summary.failed["HTTP 404"] == 1
    for url, data in good.items():
        extension = ".jpg" if data is jpeg else ".png"
        assert (folder / (url_hash(url) + extension)).read_bytes() == data
    assert (folder / (url_hash(moved) + ".jpg")).read_bytes() == jpeg
    pictures = sorted(p.name for p in folder.iterdir() if p.suffix in (".jpg", ".png"))
    assert len(pictures) == 3
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]
    # The endless body was cut off near the limit, not read to its end.
    assert server.sent["/huge.jpg"] < 40 * 1024 * 1024
    assert server.requests["/loop"] == url_fetch.DEFAULT_MAX_REDIRECTS + 1
    manifest = [json.loads(line) for line in (folder / "Mixed_List-manifest.jsonl").open()]
    assert {m["url"]: m["caption"] for m in manifest} == {
        urls[0]: "caption 0",
        urls[1]: "caption 1",
        moved: "caption 2",
    }


def test_rerun_fetches_nothing_and_retry_failed_tries_again(
    tmp_path: Path, server: UrlServer
) -> None:
    jpeg = picture("green", "triangle")
    rows = [
        ("a green triangle", server.add("/g.jpg", Route(jpeg))),
        ("gone", server.base + "/gone.jpg"),
        ("a page", server.add("/p.jpg", Route(HTML))),
    ]
    listing = write_tsv(tmp_path / "list.tsv", rows)
    first = download_url_list(listing, tmp_path, LOCAL)
    assert (first.downloaded, first.failed_count) == (1, 2)
    requests = server.total_requests

    again = download_url_list(listing, tmp_path, LOCAL)
    assert server.total_requests == requests
    assert (again.downloaded, again.already_there, again.skipped_failed) == (0, 1, 2)
    assert again.failed_count == 0 and set(failed_tsv(again)) == {rows[1][1], rows[2][1]}

    server.add("/gone.jpg", Route(picture("red", "square", "PNG")))
    retried = download_url_list(listing, tmp_path, replace(LOCAL, retry_failed=True))
    assert server.total_requests == requests + 2
    assert (retried.downloaded, retried.already_there, retried.failed_count) == (1, 1, 1)
    assert failed_tsv(retried) == {rows[2][1]: "not an image"}


def test_a_lost_manifest_line_is_rewritten_without_fetching(
    tmp_path: Path, server: UrlServer
) -> None:
    listing = write_tsv(
        tmp_path / "list.tsv",
        [("a red circle", server.add("/r.jpg", Route(picture("red", "circle"))))],
    )
    download_url_list(listing, tmp_path, LOCAL)
    (tmp_path / "list" / "list-manifest.jsonl").unlink()
    (tmp_path / "list" / ".abc.part").write_bytes(b"half a file")
    again = download_url_list(listing, tmp_path, LOCAL)
    assert again.already_there == 1 and server.total_requests == 1
    assert len(UrlListReader(listing, tmp_path).scan().records) == 1
    assert not (tmp_path / "list" / ".abc.part").exists()


def test_limit_takes_the_first_valid_pictures_in_list_order(
    tmp_path: Path, server: UrlServer
) -> None:
    jpeg = picture("yellow", "circle")
    paths = ["/bad0", "/ok1.jpg", "/ok2.jpg", "/bad3", "/ok4.jpg", "/ok5.jpg", "/ok6.jpg"]
    for path in paths:
        server.add(path, Route(jpeg) if "ok" in path else Route(status=500))
    listing = write_tsv(tmp_path / "list.tsv", [(p, server.base + p) for p in paths])
    summary = download_url_list(
        listing, tmp_path, replace(LOCAL, limit=3, concurrency=8, progress=True)
    )
    assert summary.valid == 3 and summary.failed["HTTP 500"] == 2
    assert set(server.requests) == set(paths[:5])
    records = UrlListReader(listing, tmp_path).scan().records
    assert [r.captions[0] for r in records] == ["/ok1.jpg", "/ok2.jpg", "/ok4.jpg"]


def test_one_download_per_list_folder_at_a_time(tmp_path: Path) -> None:
    listing = write_tsv(tmp_path / "list.tsv", [("a", "http://127.0.0.1:9/a.jpg")])
    (tmp_path / "data" / "list").mkdir(parents=True)
    with (
        FileLock(str(tmp_path / "data" / "list" / ".download.lock")),
        pytest.raises(DownloadError, match="another download"),
    ):
        download_url_list(listing, tmp_path / "data", LOCAL)


# Network safety


def test_loopback_is_refused_without_allow_private(tmp_path: Path, server: UrlServer) -> None:
    url = server.add("/r.jpg", Route(picture("red", "circle")))
    listing = write_tsv(
        tmp_path / "list.tsv", [("a red circle", url), ("v6", "http://[::1]/x.jpg")]
    )
    summary = download_url_list(listing, tmp_path, DownloadOptions(progress=False))
    assert summary.failed == {"private address": 2} and summary.downloaded == 0
    assert server.connections == 0
    assert failed_tsv(summary) == {url: "private address", "http://[::1]/x.jpg": "private address"}


def test_every_redirect_hop_is_checked(
    tmp_path: Path, server: UrlServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Treat the test server as public: its redirect to a private address must be refused
    # before anything connects there.
    monkeypatch.setattr(url_network, "is_public_address", lambda address: address == "127.0.0.1")
    url = server.add("/hop", Route(status=302, headers={"Location": "http://10.0.0.1/meta"}))
    listing = write_tsv(tmp_path / "list.tsv", [("hop", url)])
    rules = FetchRules(connect_timeout_s=0.2)
    summary = download_url_list(listing, tmp_path, DownloadOptions(rules, progress=False))
    assert summary.failed == {"private address": 1} and server.requests["/hop"] == 1


# What a rerun fetches again


def test_a_refusal_by_policy_is_fetched_by_a_rerun_that_allows_it(
    tmp_path: Path, server: UrlServer
) -> None:
    url = server.add("/r.jpg", Route(picture("red", "circle")))
    listing = write_tsv(tmp_path / "list.tsv", [("a red circle", url)])
    refused = download_url_list(listing, tmp_path, DownloadOptions(progress=False))
    assert refused.failed == {"private address": 1} and server.connections == 0
    assert failed_tsv(refused) == {url: "private address"}

    allowed = download_url_list(listing, tmp_path, LOCAL)  # no retry_failed
    assert (allowed.downloaded, allowed.skipped_failed, allowed.failed_count) == (1, 0, 0)
    assert server.requests["/r.jpg"] == 1 and failed_tsv(allowed) == {}


def test_only_permanent_failures_are_remembered(tmp_path: Path, server: UrlServer) -> None:
    jpeg = picture("blue", "circle")
    transient = {
        "/busy.jpg": Route(status=503),
        "/later.jpg": Route(status=429, headers={"Retry-After": "1"}),
        "/noai.jpg": Route(jpeg, headers={"X-Robots-Tag": "noai"}),
    }
    permanent = {
        "/gone.jpg": Route(status=404),
        "/removed.jpg": Route(status=410),
        "/page.jpg": Route(HTML),
        "/huge.jpg": Route(stream_bytes=2 * 1024 * 1024),
    }
    for path, route in {**transient, **permanent}.items():
        server.add(path, route)
    listing = write_tsv(tmp_path / "list.tsv", [(p, server.base + p) for p in server.routes])
    rules = FetchRules(allow_private=True, max_bytes=1024 * 1024)
    first = download_url_list(listing, tmp_path, DownloadOptions(rules, progress=False))
    assert first.failed_count == 7 and first.downloaded == 0

    for path in server.routes:
        server.add(path, Route(jpeg))
    second = download_url_list(listing, tmp_path, DownloadOptions(rules, progress=False))
    assert second.downloaded == len(transient) and second.skipped_failed == len(permanent)
    assert set(server.requests) == set(server.routes)
    assert all(server.requests[p] == 2 for p in transient)
    assert all(server.requests[p] == 1 for p in permanent)
    assert set(failed_tsv(second)) == {server.base + p for p in permanent}


def test_the_state_is_on_disk_and_a_fresh_process_skips_what_is_done(
    tmp_path: Path, server: UrlServer
) -> None:
    rows = [
        ("a red circle", server.add("/r.jpg", Route(picture("red", "circle")))),
        ("gone", server.base + "/gone.jpg"),
        ("busy", server.add("/busy.jpg", Route(status=500))),
    ]
    listing = write_tsv(tmp_path / "list.tsv", [*rows, rows[0]])
    first = download_url_list(listing, tmp_path, LOCAL)
    assert (first.downloaded, first.failed_count, first.duplicates) == (1, 2, 1)

    with sqlite3.connect(tmp_path / "list" / "list-state.sqlite3") as db:
        state = db.execute("SELECT url, file, failure, permanent FROM urls ORDER BY line")
        assert list(state) == [
            (rows[0][1], url_hash(rows[0][1]) + ".jpg", None, 0),
            (rows[1][1], None, "HTTP 404", 1),
            (rows[2][1], None, "HTTP 500", 0),
        ]
    again = (
        "from core.sources.url_downloads import DownloadOptions, download_url_list\n"
        "from core.sources.url_fetch import FetchRules\n"
        f"s = download_url_list({str(listing)!r}, {str(tmp_path)!r}, "
        "DownloadOptions(FetchRules(allow_private=True), progress=False))\n"
        "print(s.already_there, s.skipped_failed, s.failed_count, s.duplicates)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", again], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.split() == ["1", "1", "1", "1"]
    assert server.requests == {"/r.jpg": 1, "/gone.jpg": 1, "/busy.jpg": 2}


# The failure report


@pytest.mark.parametrize(
    ("cell", "safe"),
    [
        ("http://example.test/a.jpg", "http://example.test/a.jpg"),
        ("=1+2", "'=1+2"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
        ("\t=1", "'\\t=1"),
        ("\r=1", "'\\r=1"),
        ("a\nb\tc\rd", "a\\nb\\tc\\rd"),
        (
            "bell\x07 esc\x1b[31m nul\x00 del\x7f c1\x85",
            "bell\\x07 esc\\x1b[31m nul\\x00 del\\x7f c1\\x85",
        ),
        ("a=1", "a=1"),
        ("ünïcode – fine", "ünïcode – fine"),
    ],
)
def test_spreadsheet_safe_cells(cell: str, safe: str) -> None:
    assert spreadsheet_safe(cell) == safe


def test_the_failure_report_is_safe_to_open_in_a_spreadsheet(
    tmp_path: Path, server: UrlServer
) -> None:
    escape = server.base + "/\x1b[31mred\x07.jpg"
    rows = [("a", "=1+2"), ("b", "+SUM(1)"), ("c", "-1"), ("d", "@A1"), ("e", escape)]
    listing = write_tsv(tmp_path / "list.tsv", rows)
    summary = download_url_list(listing, tmp_path, LOCAL)
    assert summary.failed_count == 5
    text = summary.failed_path.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) == 5 and text.count("\n") == 5
    assert [line.split("\t")[0] for line in lines] == [
        "'=1+2",
        "'+SUM(1)",
        "'-1",
        "'@A1",
        server.base + "/\\x1b[31mred\\x07.jpg",
    ]
    assert not any(c < " " for c in text.replace("\t", "").replace("\n", ""))
    assert failed_tsv(summary)[server.base + "/\\x1b[31mred\\x07.jpg"] == "bad URL"
