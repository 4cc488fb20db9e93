"""`index_builder.py --download` and `--urls` end to end (in process), against HTTP servers on
127.0.0.1: what it says before starting, what it fetches, and that a rerun fetches nothing."""

from __future__ import annotations

import io
import logging
import random
from pathlib import Path

import pytest

from core.search.service import SearchService
from core.sources.shards import Shard
from core.sources.units import format_size
from core.sources.url_lists import url_image_id
from core.store.database import Database
from core.store.records import ImageRecord
from index_builder import main
from tests.coco_server import CocoServer, build_coco_zips
from tests.conftest import make_settings
from tests.fixtures.shapes import LABELS, caption, draw
from tests.mini_coco import make_mini_coco
from tests.searching import search
from tests.url_server import Route, UrlServer


def set_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **settings: object) -> None:
    """The settings of a test run, as the builder reads them: from the environment."""
    base = make_settings(tmp_path, collection="cli_sources", **settings)
    from core.config import settings_env

    monkeypatch.chdir(tmp_path)
    for name, value in settings_env(base).items():
        monkeypatch.setenv(name, value)


def stored(tmp_path: Path) -> int:
    info = Database(make_settings(tmp_path)).info("cli_sources")
    return info.count if info else 0


def test_download_says_what_it_fetches_then_indexes_and_a_rerun_fetches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    make_mini_coco(tmp_path / "source", {"val2014": 12}, seed=3)
    with CocoServer(build_coco_zips(tmp_path / "source")) as server:
        set_env(
            monkeypatch,
            tmp_path,
            coco_root=tmp_path / "coco",
            coco_base_url=server.url,
            coco_checksums=server.write_checksums(tmp_path / "SHA256SUMS"),
        )
        with caplog.at_level(logging.INFO):
            code = main(["--download", "--split", "val2014", "--limit", "5", "--no-progress"])
        assert code == 0
        said = caplog.text
        size = format_size(sum(len(body) for body in server.files.values()))
        assert f"COCO2014 val2014: {size} to download from COCO_BASE_URL {server.url} " in said
        assert "(2 files, under a minute at 10 MB/s)" in said
        assert "COCO has no partial download" in said and "--limit 5" in said
        # issue 23: the estimate counts what will be embedded (5, not 40,504), in words
        assert "5 pictures to embed: under a minute on a 2-core CPU" in said, said
        assert " 0 min" not in said and "40,504" not in said
        assert stored(tmp_path) == 5
        fetched = len(server.gets())
        assert main(["--download", "--split", "val2014", "--no-progress"]) == 0
        assert len(server.gets()) == fetched  # nothing fetched again
        assert stored(tmp_path) == 12


def test_download_goes_with_coco_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, tmp_path)
    with pytest.raises(SystemExit) as usage:
        main(["--download", "--folder", str(tmp_path)])
    assert usage.value.code == 2
    with pytest.raises(SystemExit):
        main(["--folder", str(tmp_path), "--urls", "list.tsv"])


def picture(color: str, shape: str, seed: int) -> bytes:
    buffer = io.BytesIO()
    draw(color, shape, rng=random.Random(seed)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_urls_downloads_checks_and_indexes_a_list(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    with UrlServer() as server:
        rows = [
            f"{caption(color, shape)}\t{server.add(f'/{n}.jpg', Route(picture(color, shape, n)))}"
            for n, (color, shape) in enumerate(LABELS * 2)
        ]
        rows.append(f"a missing picture\t{server.add('/gone.jpg', Route(status=404))}")
        listing = tmp_path / "shapes.tsv"
        listing.write_text("\n".join(rows) + "\n")
        set_env(monkeypatch, tmp_path, data_dir=tmp_path / "data")

        refused = main(["--urls", str(listing), "--no-progress"])
        assert refused == 1 and stored(tmp_path) == 0  # 127.0.0.1 is a private address
        error = capsys.readouterr().err
        assert error.startswith("error: no picture of the list could be fetched")
        assert "25 failed (25 private address)" in error and "shapes-failed.tsv" in error
        assert server.total_requests == 0

        caplog.clear()
        with caplog.at_level(logging.INFO, logger="index_builder"):
            code = main(
                ["--urls", str(listing), "--allow-private-urls", "--retry-failed", "--no-progress"]
            )
        assert code == 0
        assert "24 new" in caplog.text and "1 failed (1 HTTP 404)" in caplog.text
        assert "shapes-failed.tsv" in caplog.text
        assert stored(tmp_path) == 24
        service = SearchService.open(make_settings(tmp_path, collection="cli_sources"))
        hits = search(service, "a blue square", 2).hits
        assert [h.caption for h in hits] == ["a blue square"] * 2

        requests = server.total_requests
        assert main(["--urls", str(listing), "--allow-private-urls", "--no-progress"]) == 0
        assert server.total_requests == requests  # nothing new, failures not retried


def test_urls_with_a_shard_download_and_index_only_that_shards_pictures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with UrlServer() as server:
        urls = [
            server.add(f"/{n}.jpg", Route(picture(color, shape, n)))
            for n, (color, shape) in enumerate(LABELS * 2)
        ]
        listing = tmp_path / "shapes.tsv"
        listing.write_text(
            "".join(f"{caption(*LABELS[n % 12])}\t{url}\n" for n, url in enumerate(urls))
        )
        set_env(monkeypatch, tmp_path, data_dir=tmp_path / "data")
        first = [url for url in urls if Shard(0, 2).holds(url_image_id(url))]
        assert 0 < len(first) < len(urls)
        argv = ["--urls", str(listing), "--allow-private-urls", "--no-progress", "--shard"]

        with caplog.at_level(logging.INFO, logger="index_builder"):
            assert main([*argv, "0/2"]) == 0
        assert server.total_requests == len(first)  # the other shard's pictures: not fetched
        assert f"{len(urls) - len(first)} left to the other shards' builders" in caplog.text
        assert stored(tmp_path) == len(first)

        assert main([*argv, "1/2"]) == 0
        assert server.total_requests == len(urls)
        assert stored(tmp_path) == len(urls)
        db = Database(make_settings(tmp_path))
        info = db.info("cli_sources")
        store = db.open("cli_sources", ImageRecord, model=info.model, dim=info.dim)
        assert sorted(r.url for r in store) == sorted(urls)
        assert main([*argv, "0/2"]) == 0  # a rerun: nothing fetched, nothing removed
        assert server.total_requests == len(urls) and stored(tmp_path) == len(urls)
