"""core.coco_download against a real HTTP server on 127.0.0.1 (tests/coco_server.py) that
serves a mini COCO zipped in the official layout, with faults."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.coco_download import (
    WORK_DIR,
    CocoFile,
    RetryPolicy,
    disk_space_needed,
    ensure_coco,
    format_size,
    plan_coco,
)
from core.config import Settings
from core.datasets import CocoReader
from core.errors import DatasetError, DownloadError
from tests.chroma_run import free_port
from tests.coco_server import (
    ANNOTATIONS_ZIP,
    TRAIN_ZIP,
    VAL_ZIP,
    CocoServer,
    build_coco_zips,
    corrupt_member,
    zip_of,
)
from tests.conftest import make_settings
from tests.mini_coco import make_mini_coco

PER_SPLIT = {"train2014": 6, "val2014": 12}


@pytest.fixture(scope="module")
def coco_zips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    source = tmp_path_factory.mktemp("mini-coco-source")
    make_mini_coco(source, PER_SPLIT, seed=3, size=(64, 48))
    return build_coco_zips(source)


@pytest.fixture
def server(coco_zips: dict[str, bytes]) -> Iterator[CocoServer]:
    with CocoServer(coco_zips) as running:
        yield running


class Sleeps(list):
    """A RetryPolicy.sleep that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def retry(sleeps: Sleeps) -> RetryPolicy:
    return RetryPolicy(attempts=3, first_delay=1.0, max_delay=3.0, sleep=sleeps)


def settings_for(tmp_path: Path, base_url: str) -> Settings:
    return make_settings(tmp_path, coco_root=tmp_path / "coco", coco_base_url=base_url)


def fetch(settings: Settings, retry: RetryPolicy, splits=("val2014",), **kw):
    return ensure_coco(settings, splits, progress=False, retry=retry, **kw)


def assert_val_in_place(settings: Settings) -> None:
    scan = CocoReader(settings.coco_root, ["val2014"]).scan()
    assert len(scan.records) == PER_SPLIT["val2014"]
    assert scan.missing == []
    assert all(record.captions for record in scan.records)
    work = settings.coco_root / WORK_DIR
    assert (work / "val2014.zip.done").is_file()
    assert not (work / "val2014.zip").exists()
    assert not (work / "val2014.zip.part").exists()
    assert not list(work.glob("extract-*"))


# --- the normal path -----------------------------------------------------------------


def test_downloads_unpacks_and_the_reader_finds_the_pictures(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, coco_zips: dict[str, bytes]
) -> None:
    settings = settings_for(tmp_path, server.url)
    result = fetch(settings, retry)
    assert result.downloaded == ("annotations_trainval2014.zip", "val2014.zip")
    assert result.extracted == result.downloaded
    assert result.bytes_downloaded == len(coco_zips[VAL_ZIP]) + len(coco_zips[ANNOTATIONS_ZIP])
    assert_val_in_place(settings)
    assert not (settings.coco_root / "train2014").exists()
    assert {r.path for r in server.gets()} == {VAL_ZIP, ANNOTATIONS_ZIP}
    assert all("clip-image-search-bot" in (r.user_agent or "") for r in server.requests)


def test_a_second_run_fetches_nothing(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy
) -> None:
    settings = settings_for(tmp_path, server.url)
    fetch(settings, retry)
    server.clear()
    again = fetch(settings, retry)
    assert server.requests == []
    assert not again.changed
    assert again.skipped == ("annotations_trainval2014.zip", "val2014.zip")
    assert plan_coco(settings, ["val2014"]) == []


def test_plan_names_urls_and_sizes_without_downloading(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, coco_zips: dict[str, bytes]
) -> None:
    settings = settings_for(tmp_path, server.url)
    plan = plan_coco(settings, ["train2014", "val2014"])
    assert [(f.name, f.url, f.size, f.have) for f in plan] == [
        (
            "annotations_trainval2014.zip",
            server.url + ANNOTATIONS_ZIP,
            len(coco_zips[ANNOTATIONS_ZIP]),
            0,
        ),
        ("train2014.zip", server.url + TRAIN_ZIP, len(coco_zips[TRAIN_ZIP]), 0),
        ("val2014.zip", server.url + VAL_ZIP, len(coco_zips[VAL_ZIP]), 0),
    ]
    assert "train2014/ is missing" in plan[1].reason
    assert server.gets() == []
    fetch(settings, retry)  # val2014 and the annotations are now in place
    assert [f.name for f in plan_coco(settings, ["train2014", "val2014"])] == ["train2014.zip"]


def test_both_splits_through_a_redirecting_mirror(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy
) -> None:
    settings = settings_for(tmp_path, server.url + "/mirror/")
    result = fetch(settings, retry, splits=("train2014", "val2014"))
    assert len(result.extracted) == 3
    scan = CocoReader(settings.coco_root, ["train2014", "val2014"]).scan()
    assert len(scan.records) == sum(PER_SPLIT.values())
    assert any(r.status == 302 for r in server.requests)


def test_unknown_split_is_refused(tmp_path: Path, server: CocoServer) -> None:
    with pytest.raises(DatasetError, match="test2014"):
        ensure_coco(settings_for(tmp_path, server.url), ["test2014"], progress=False)


def test_progress_bar_names_the_file(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, capsys: pytest.CaptureFixture
) -> None:
    ensure_coco(settings_for(tmp_path, server.url), ["val2014"], progress=True, retry=retry)
    err = capsys.readouterr().err
    assert "val2014.zip" in err and "B/s" in err


# --- resuming ----------------------------------------------------------------------------


def test_a_dropped_connection_resumes_with_a_range_request(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, coco_zips: dict[str, bytes]
) -> None:
    half = len(coco_zips[VAL_ZIP]) // 2
    server.fault(VAL_ZIP, drop_after=half)
    result = fetch(settings_for(tmp_path, server.url), retry)
    assert [(r.range, r.status) for r in server.gets(VAL_ZIP)] == [
        (None, 200),
        (f"bytes={half}-", 206),
    ]
    assert result.bytes_downloaded == len(coco_zips[VAL_ZIP]) + len(coco_zips[ANNOTATIONS_ZIP])
    assert_val_in_place(settings_for(tmp_path, server.url))


def test_an_interrupted_run_is_resumed_by_the_next_one(
    tmp_path: Path, server: CocoServer, sleeps: Sleeps, coco_zips: dict[str, bytes]
) -> None:
    settings = settings_for(tmp_path, server.url)
    half = len(coco_zips[VAL_ZIP]) // 2
    server.fault(VAL_ZIP, drop_after=half)
    with pytest.raises(DownloadError, match=r"val2014\.zip"):
        fetch(settings, RetryPolicy(attempts=1, sleep=sleeps))
    part = settings.coco_root / WORK_DIR / "val2014.zip.part"
    assert part.stat().st_size == half
    assert not (settings.coco_root / "val2014").exists()
    assert plan_coco(settings, ["val2014"])[-1].have == half
    fetch(settings, RetryPolicy(attempts=1, sleep=sleeps))
    assert server.gets(VAL_ZIP)[-1].range == f"bytes={half}-"
    assert_val_in_place(settings)


def test_a_server_without_ranges_restarts_from_zero(
    tmp_path: Path, coco_zips: dict[str, bytes], retry: RetryPolicy
) -> None:
    with CocoServer(coco_zips, ranges=False) as server:
        half = len(coco_zips[VAL_ZIP]) // 2
        server.fault(VAL_ZIP, drop_after=half)
        fetch(settings_for(tmp_path, server.url), retry)
        assert [(r.range, r.status) for r in server.gets(VAL_ZIP)] == [
            (None, 200),
            (f"bytes={half}-", 200),
        ]
    assert_val_in_place(settings_for(tmp_path, server.url))


def test_a_complete_part_is_not_fetched_again(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, coco_zips: dict[str, bytes]
) -> None:
    settings = settings_for(tmp_path, server.url)
    work = settings.coco_root / WORK_DIR
    work.mkdir(parents=True)
    (work / "val2014.zip.part").write_bytes(coco_zips[VAL_ZIP])
    result = fetch(settings, retry)
    assert server.gets(VAL_ZIP) == []
    assert "val2014.zip" in result.extracted
    assert_val_in_place(settings)


def test_an_interrupted_extraction_is_finished_without_downloading(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, coco_zips: dict[str, bytes]
) -> None:
    settings = settings_for(tmp_path, server.url)
    fetch(settings, retry)
    work = settings.coco_root / WORK_DIR
    # as if the run stopped after moving the folder in, before writing the marker
    (work / "val2014.zip.done").unlink()
    (work / "val2014.zip").write_bytes(coco_zips[VAL_ZIP])
    victim = next((settings.coco_root / "val2014").iterdir())
    victim.unlink()
    server.clear()
    result = fetch(settings, retry)
    assert server.gets() == []
    assert result.extracted == ("val2014.zip",)
    assert_val_in_place(settings)


# --- verification ------------------------------------------------------------------------


def test_a_corrupt_zip_is_fetched_again_and_never_half_unpacked(
    tmp_path: Path,
    server: CocoServer,
    retry: RetryPolicy,
    coco_zips: dict[str, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_for(tmp_path, server.url)
    seen_on_disk = []
    server.on_get = lambda path: seen_on_disk.append((settings.coco_root / "val2014").exists())
    server.fault(VAL_ZIP, body=corrupt_member(coco_zips[VAL_ZIP]))
    with caplog.at_level(logging.WARNING, logger="core.coco_download"):
        result = fetch(settings, retry)
    assert len(server.gets(VAL_ZIP)) == 2
    assert seen_on_disk == [False, False, False]  # annotations, corrupt val, good val
    assert "val2014.zip" in caplog.text and "CRC" in caplog.text
    assert result.extracted == ("annotations_trainval2014.zip", "val2014.zip")
    assert_val_in_place(settings)


def test_a_zip_corrupt_every_time_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, coco_zips: dict[str, bytes]
) -> None:
    settings = settings_for(tmp_path, server.url)
    server.fault(VAL_ZIP, times=3, body=corrupt_member(coco_zips[VAL_ZIP]))
    with pytest.raises(DownloadError, match=r"val2014\.zip: corrupt zip .*CRC.* after 3 downloads"):
        fetch(settings, retry)
    assert len(server.gets(VAL_ZIP)) == 3
    assert not (settings.coco_root / "val2014").exists()
    work = settings.coco_root / WORK_DIR
    assert sorted(p.name for p in work.iterdir() if not p.name.startswith(".")) == [
        "annotations_trainval2014.zip.done"
    ]


def test_a_short_content_length_means_a_truncated_zip_and_a_clear_error(
    tmp_path: Path, coco_zips: dict[str, bytes], retry: RetryPolicy
) -> None:
    lengths = {VAL_ZIP: len(coco_zips[VAL_ZIP]) - 100}
    with CocoServer(coco_zips, lengths=lengths) as server:
        settings = settings_for(tmp_path, server.url)
        with pytest.raises(DownloadError, match=rf"{server.url}{VAL_ZIP}: corrupt zip"):
            fetch(settings, retry)
        assert len(server.gets(VAL_ZIP)) == 3
    assert not (settings.coco_root / "val2014").exists()


def test_a_long_content_length_once_is_resolved(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, coco_zips: dict[str, bytes]
) -> None:
    size = len(coco_zips[VAL_ZIP])
    server.fault(VAL_ZIP, length=size + 500)  # announces more than it sends, then closes
    fetch(settings_for(tmp_path, server.url), retry)
    assert [(r.range, r.status) for r in server.gets(VAL_ZIP)] == [
        (None, 200),
        (f"bytes={size}-", 416),  # the server's real size is what is on disk: complete
    ]
    assert_val_in_place(settings_for(tmp_path, server.url))


def test_a_server_always_announcing_the_wrong_size_is_a_clear_error(
    tmp_path: Path, coco_zips: dict[str, bytes], retry: RetryPolicy
) -> None:
    lengths = {VAL_ZIP: len(coco_zips[VAL_ZIP]) + 500}
    with CocoServer(coco_zips, lengths=lengths) as server:
        settings = settings_for(tmp_path, server.url)
        with pytest.raises(DownloadError, match=rf"{server.url}{VAL_ZIP}: .* after 3 attempts"):
            fetch(settings, retry)
    assert not (settings.coco_root / "val2014").exists()


def test_unsafe_member_names_refuse_the_zip(
    tmp_path: Path, coco_zips: dict[str, bytes], retry: RetryPolicy
) -> None:
    evil = zip_of({"val2014/COCO_val2014_000000000001.jpg": b"x", "../evil.txt": b"x"})
    with CocoServer({**coco_zips, VAL_ZIP: evil}) as server:
        settings = settings_for(tmp_path, server.url)
        with pytest.raises(DownloadError, match=r"unsafe member name '\.\./evil\.txt'"):
            fetch(settings, retry)
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (settings.coco_root / "val2014").exists()
    assert not (settings.coco_root / WORK_DIR / "val2014.zip").exists()


def test_a_zip_without_the_split_folder_is_refused(
    tmp_path: Path, coco_zips: dict[str, bytes], retry: RetryPolicy
) -> None:
    other = zip_of({"pictures/a.jpg": b"x"})
    with (
        CocoServer({**coco_zips, VAL_ZIP: other}) as server,
        pytest.raises(DownloadError, match="holds no val2014/ folder"),
    ):
        fetch(settings_for(tmp_path, server.url), retry)


# --- disk space --------------------------------------------------------------------------


def test_too_little_disk_space_is_refused_before_any_byte(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.disk_usage

    def tiny(path):
        return real(path)._replace(free=1000)

    monkeypatch.setattr(shutil, "disk_usage", tiny)
    settings = settings_for(tmp_path, server.url)
    with pytest.raises(DownloadError) as caught:
        fetch(settings, retry)
    assert str(caught.value).startswith(f"not enough disk space in {settings.coco_root}: need ")
    assert str(caught.value).endswith("1.0 kB free")
    assert server.gets() == []
    assert not (settings.coco_root / WORK_DIR).exists()


def test_disk_space_counts_everything_unpacked_and_the_largest_download() -> None:
    plan = [
        CocoFile("annotations_trainval2014.zip", "u", "annotations", "r", 241_000_000),
        CocoFile("val2014.zip", "u", "val2014", "r", 6_200_000_000, have=1_000_000_000),
    ]
    need = disk_space_needed(plan)
    assert need == 4 * 241_000_000 + int(1.05 * 6_200_000_000) + 5_200_000_000
    assert format_size(need) == "12.7 GB"
    assert format_size(241_000_000) == "241.0 MB"


# --- retries -----------------------------------------------------------------------------


def test_503_then_success(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, sleeps: Sleeps
) -> None:
    server.fault(VAL_ZIP, status=503)
    fetch(settings_for(tmp_path, server.url), retry)
    assert [r.status for r in server.gets(VAL_ZIP)] == [503, 200]
    assert sleeps == [1.0]
    assert_val_in_place(settings_for(tmp_path, server.url))


def test_503_every_time_names_the_url_and_the_attempts(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, sleeps: Sleeps
) -> None:
    server.fault(VAL_ZIP, times=3, status=503)
    with pytest.raises(DownloadError) as caught:
        fetch(settings_for(tmp_path, server.url), retry)
    assert str(caught.value) == (f"{server.url}{VAL_ZIP}: 503 Service Unavailable after 3 attempts")
    assert sleeps == [1.0, 2.0]  # exponential backoff, bounded attempts


def test_404_is_not_retried(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, sleeps: Sleeps
) -> None:
    server.fault(VAL_ZIP, status=404)
    with pytest.raises(DownloadError) as caught:
        fetch(settings_for(tmp_path, server.url), retry)
    assert str(caught.value) == f"{server.url}{VAL_ZIP}: 404 Not Found"
    assert len(server.gets(VAL_ZIP, at_least=1)) == 1 and sleeps == []


def test_a_wrong_base_url_fails_when_planning(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy
) -> None:
    with pytest.raises(DownloadError, match=rf"{server.url}/nowhere/annotations/.*: 404"):
        fetch(settings_for(tmp_path, server.url + "/nowhere"), retry)
    assert server.gets() == []


def test_an_unreachable_server_is_retried_then_named(
    tmp_path: Path, retry: RetryPolicy, sleeps: Sleeps
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DownloadError, match=rf"{url}/annotations/.* after 3 attempts"):
        fetch(settings_for(tmp_path, url), retry)
    assert sleeps == [1.0, 2.0]


# --- what is already there ---------------------------------------------------------------


def test_an_own_unzip_is_trusted(
    tmp_path: Path,
    server: CocoServer,
    retry: RetryPolicy,
    coco_zips: dict[str, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_for(tmp_path, server.url)
    make_mini_coco(settings.coco_root, {"val2014": 3})
    with caplog.at_level(logging.INFO, logger="core.coco_download"):
        result = fetch(settings, retry)
    assert server.requests == []
    assert result.skipped == ("annotations_trainval2014.zip", "val2014.zip")
    assert "own unzip" in caplog.text


def test_annotations_are_merged_into_an_existing_folder(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy
) -> None:
    settings = settings_for(tmp_path, server.url)
    mine = settings.coco_root / "annotations"
    mine.mkdir(parents=True)
    (mine / "my_notes.json").write_text("{}")
    (mine / "captions_train2014.json").write_text('{"images": []}')
    result = fetch(settings, retry)
    assert "annotations_trainval2014.zip" in result.extracted
    assert (mine / "my_notes.json").read_text() == "{}"
    assert (mine / "captions_train2014.json").read_text() == '{"images": []}'  # kept as it was
    assert_val_in_place(settings)


def test_a_second_download_into_the_same_folder_is_refused(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy
) -> None:
    from filelock import FileLock

    settings = settings_for(tmp_path, server.url)
    work = settings.coco_root / WORK_DIR
    work.mkdir(parents=True)
    with FileLock(str(work / ".lock")), pytest.raises(DownloadError, match="another download"):
        fetch(settings, retry)
    assert server.gets() == []


def test_a_corrupt_deflated_zip_is_fetched_again(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, coco_zips: dict[str, bytes]
) -> None:
    # the annotations zip is deflated: corruption shows as a zlib error or a bad CRC
    server.fault(ANNOTATIONS_ZIP, body=corrupt_member(coco_zips[ANNOTATIONS_ZIP]))
    fetch(settings_for(tmp_path, server.url), retry)
    assert len(server.gets(ANNOTATIONS_ZIP)) == 2
    assert_val_in_place(settings_for(tmp_path, server.url))
