"""Downloading URL lists to validated files on disk, against a local HTTP server only."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from core import url_downloads
from core.errors import DownloadError
from core.url_downloads import (
    DownloadSummary,
    download_url_list,
    is_public_address,
    robots_refusal,
)
from core.url_lists import UrlListReader, url_hash
from tests.url_list_files import picture, write_tsv
from tests.url_server import Route, UrlServer

HTML = b"<!doctype html><html><body>Sorry, this image is gone.</body></html>"


def failed_tsv(summary: DownloadSummary) -> dict[str, str]:
    with open(summary.failed_path, encoding="utf-8", newline="") as f:
        return {row[0]: row[1] for row in csv.reader(f, delimiter="\t")}


@pytest.fixture
def server() -> Iterator[UrlServer]:
    with UrlServer() as server:
        yield server


# Addresses


@pytest.mark.parametrize(
    "address",
    ["10.0.0.1", "169.254.169.254", "::1", "::ffff:127.0.0.1", "224.0.0.1", "127.0.0.1",
     "192.168.1.1", "100.64.0.1", "0.0.0.0", "::", "fe80::1%eth0", "fc00::1", "ff02::1",
     "2002:a00:1::", "64:ff9b::a00:1", "240.0.0.1", "not an address"],
)  # fmt: skip
def test_private_and_special_addresses_are_refused(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "::ffff:93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public_address(address)


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        (["noai"], "noai"),
        (["noindex, nofollow"], "noindex"),
        (["all", "NoImageAI"], "noimageai"),
        (["clip-image-search-bot: noimageindex"], "noimageindex"),
        (["googlebot: noindex"], None),
        (["nofollow", "unavailable_after: 25 Jun 2010 15:00:00 PST"], None),
        ([], None),
    ],
)
def test_robots_tag_directives(values: list[str], refusal: str | None) -> None:
    assert robots_refusal(values) == refusal


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

    summary = download_url_list(
        listing, tmp_path / "data", read_timeout_s=0.5, allow_private=True, progress=False
    )

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
    assert server.requests["/loop"] == url_downloads.DEFAULT_MAX_REDIRECTS + 1
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
    first = download_url_list(listing, tmp_path, allow_private=True, progress=False)
    assert (first.downloaded, first.failed_count) == (1, 2)
    requests = server.total_requests

    again = download_url_list(listing, tmp_path, allow_private=True, progress=False)
    assert server.total_requests == requests
    assert (again.downloaded, again.already_there, again.skipped_failed) == (0, 1, 2)
    assert again.failed_count == 0 and set(failed_tsv(again)) == {rows[1][1], rows[2][1]}

    server.add("/gone.jpg", Route(picture("red", "square", "PNG")))
    retried = download_url_list(
        listing, tmp_path, allow_private=True, retry_failed=True, progress=False
    )
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
    download_url_list(listing, tmp_path, allow_private=True, progress=False)
    (tmp_path / "list" / "list-manifest.jsonl").unlink()
    (tmp_path / "list" / ".abc.part").write_bytes(b"half a file")
    again = download_url_list(listing, tmp_path, allow_private=True, progress=False)
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
        listing, tmp_path, limit=3, concurrency=8, allow_private=True, progress=True
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
        download_url_list(listing, tmp_path / "data", allow_private=True, progress=False)


# Network safety


def test_loopback_is_refused_without_allow_private(tmp_path: Path, server: UrlServer) -> None:
    url = server.add("/r.jpg", Route(picture("red", "circle")))
    listing = write_tsv(
        tmp_path / "list.tsv", [("a red circle", url), ("v6", "http://[::1]/x.jpg")]
    )
    summary = download_url_list(listing, tmp_path, progress=False)
    assert summary.failed == {"private address": 2} and summary.downloaded == 0
    assert server.total_requests == 0
    assert failed_tsv(summary) == {url: "private address", "http://[::1]/x.jpg": "private address"}


def test_every_redirect_hop_is_checked(
    tmp_path: Path, server: UrlServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Treat the test server as public: its redirect to a private address must be refused
    # before anything connects there.
    monkeypatch.setattr(url_downloads, "is_public_address", lambda address: address == "127.0.0.1")
    url = server.add("/hop", Route(status=302, headers={"Location": "http://10.0.0.1/meta"}))
    listing = write_tsv(tmp_path / "list.tsv", [("hop", url)])
    summary = download_url_list(listing, tmp_path, connect_timeout_s=0.2, progress=False)
    assert summary.failed == {"private address": 1} and server.requests["/hop"] == 1


def test_the_connected_peer_is_checked_too(
    tmp_path: Path, server: UrlServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS rebinding: the name resolved to a public address at the check, the connection went
    # to a private one. The peer check refuses before the body is read.
    monkeypatch.setattr(url_downloads, "_resolve", lambda host, port: ["93.184.216.34"])
    url = server.add("/r.jpg", Route(picture("red", "circle")))
    listing = write_tsv(tmp_path / "list.tsv", [("rebound", url)])
    summary = download_url_list(listing, tmp_path, progress=False)
    assert summary.failed == {"private address": 1} and summary.downloaded == 0
    assert server.requests["/r.jpg"] == 1
    assert not [p for p in (tmp_path / "list").iterdir() if p.suffix == ".jpg"]
