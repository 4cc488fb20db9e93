"""core.sources.coco_download against a real HTTP server on 127.0.0.1 (tests/coco_server.py) that
serves a mini COCO zipped in the official layout, with faults."""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from core.config import Settings
from core.errors import ConfigError, DatasetError, DownloadError
from core.sources import checksums, coco_download
from core.sources.checksums import OFFICIAL, Digest
from core.sources.coco import CocoReader
from core.sources.coco_download import (
    WORK_DIR,
    CocoFile,
    RetryPolicy,
    coco_files,
    disk_space_needed,
    ensure_coco,
    format_size,
    plan_coco,
)
from tests.chroma_run import free_port
from tests.coco_server import (
    ANNOTATIONS_ZIP,
    TRAIN_ZIP,
    VAL_ZIP,
    CocoServer,
    build_coco_zips,
    corrupt_member,
    declare_size,
    mark_encrypted,
    zip_of,
)
from tests.conftest import make_settings
from tests.mini_coco import make_mini_coco

PER_SPLIT = {"train2014": 6, "val2014": 12}
DIGEST = Digest("md5", "0" * 32)


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


def settings_for(tmp_path: Path, server: CocoServer, base_url: str | None = None) -> Settings:
    """Settings that fetch from `server` (or `base_url`), with a COCO_CHECKSUMS file of the
    zips it serves (they are not the official ones)."""
    return make_settings(
        tmp_path,
        coco_root=tmp_path / "coco",
        coco_base_url=base_url or server.url,
        coco_checksums=server.write_checksums(tmp_path / "SHA256SUMS"),
    )


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
    settings = settings_for(tmp_path, server)
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
    settings = settings_for(tmp_path, server)
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
    settings = settings_for(tmp_path, server)
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
    settings = settings_for(tmp_path, server, server.url + "/mirror/")
    result = fetch(settings, retry, splits=("train2014", "val2014"))
    assert len(result.extracted) == 3
    scan = CocoReader(settings.coco_root, ["train2014", "val2014"]).scan()
    assert len(scan.records) == sum(PER_SPLIT.values())
    assert any(r.status == 302 for r in server.requests)


def test_unknown_split_is_refused(tmp_path: Path, server: CocoServer) -> None:
    with pytest.raises(DatasetError, match="test2014"):
        ensure_coco(settings_for(tmp_path, server), ["test2014"], progress=False)


def test_one_progress_bar_names_the_file_in_decimal_units(
    tmp_path: Path,
    server: CocoServer,
    retry: RetryPolicy,
    capsys: pytest.CaptureFixture,
    coco_zips: dict[str, bytes],
) -> None:
    """Issue 23: one bar for the whole download (not one per zip), sizes in kB/MB/GB as
    every other size the build says."""
    ensure_coco(settings_for(tmp_path, server), ["val2014"], progress=True, retry=retry)
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # a bar ends its line once, when it closes
    final = err.rsplit("\r", 1)[-1]
    assert final.startswith("downloading val2014.zip: 100%"), final
    total = len(coco_zips[VAL_ZIP]) + len(coco_zips[ANNOTATIONS_ZIP])
    assert 10_000 < total < 1_000_000  # so the bar says kB: 1,000 bytes to the kB, not 1,024
    assert f" {total / 1000:.3g}kB/{total / 1000:.3g}kB " in final, (final, total)


# --- resuming ----------------------------------------------------------------------------


def test_a_dropped_connection_resumes_with_a_range_request(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, coco_zips: dict[str, bytes]
) -> None:
    half = len(coco_zips[VAL_ZIP]) // 2
    server.fault(VAL_ZIP, drop_after=half)
    result = fetch(settings_for(tmp_path, server), retry)
    assert [(r.range, r.status) for r in server.gets(VAL_ZIP)] == [
        (None, 200),
        (f"bytes={half}-", 206),
    ]
    assert result.bytes_downloaded == len(coco_zips[VAL_ZIP]) + len(coco_zips[ANNOTATIONS_ZIP])
    assert_val_in_place(settings_for(tmp_path, server))


def test_an_interrupted_run_is_resumed_by_the_next_one(
    tmp_path: Path, server: CocoServer, sleeps: Sleeps, coco_zips: dict[str, bytes]
) -> None:
    settings = settings_for(tmp_path, server)
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
        fetch(settings_for(tmp_path, server), retry)
        assert [(r.range, r.status) for r in server.gets(VAL_ZIP)] == [
            (None, 200),
            (f"bytes={half}-", 200),
        ]
    assert_val_in_place(settings_for(tmp_path, server))


def test_a_complete_part_is_not_fetched_again(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, coco_zips: dict[str, bytes]
) -> None:
    settings = settings_for(tmp_path, server)
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
    settings = settings_for(tmp_path, server)
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
    settings = settings_for(tmp_path, server)
    seen_on_disk = []
    server.on_get = lambda path: seen_on_disk.append((settings.coco_root / "val2014").exists())
    server.fault(VAL_ZIP, body=corrupt_member(coco_zips[VAL_ZIP]))
    with caplog.at_level(logging.WARNING, logger="core.sources.coco_download"):
        result = fetch(settings, retry)
    assert len(server.gets(VAL_ZIP)) == 2
    assert seen_on_disk == [False, False, False]  # annotations, corrupt val, good val
    assert "val2014.zip" in caplog.text and "fails its digest (sha256 " in caplog.text
    assert result.extracted == ("annotations_trainval2014.zip", "val2014.zip")
    assert_val_in_place(settings)


def test_a_zip_corrupt_every_time_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, coco_zips: dict[str, bytes]
) -> None:
    settings = settings_for(tmp_path, server)
    server.fault(VAL_ZIP, times=3, body=corrupt_member(coco_zips[VAL_ZIP]))
    digests = r"sha256 [0-9a-f]{64}, expected [0-9a-f]{64}"
    with pytest.raises(
        DownloadError, match=rf"val2014\.zip: corrupt zip \({digests}\) after 3 downloads"
    ):
        fetch(settings, retry)
    assert len(server.gets(VAL_ZIP, at_least=3)) == 3
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
        settings = settings_for(tmp_path, server)
        with pytest.raises(DownloadError, match=rf"{server.url}{VAL_ZIP}: corrupt zip"):
            fetch(settings, retry)
        assert len(server.gets(VAL_ZIP)) == 3
    assert not (settings.coco_root / "val2014").exists()


def test_a_long_content_length_once_is_resolved(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, coco_zips: dict[str, bytes]
) -> None:
    size = len(coco_zips[VAL_ZIP])
    server.fault(VAL_ZIP, length=size + 500)  # announces more than it sends, then closes
    fetch(settings_for(tmp_path, server), retry)
    # read up to the size announced when planning: complete, before the connection breaks
    assert [(r.range, r.status) for r in server.gets(VAL_ZIP)] == [(None, 200)]
    assert_val_in_place(settings_for(tmp_path, server))


def test_a_server_always_announcing_the_wrong_size_is_a_clear_error(
    tmp_path: Path, coco_zips: dict[str, bytes], retry: RetryPolicy
) -> None:
    lengths = {VAL_ZIP: len(coco_zips[VAL_ZIP]) + 500}
    with CocoServer(coco_zips, lengths=lengths) as server:
        settings = settings_for(tmp_path, server)
        with pytest.raises(DownloadError, match=rf"{server.url}{VAL_ZIP}: .* after 3 attempts"):
            fetch(settings, retry)
    assert not (settings.coco_root / "val2014").exists()


def test_unsafe_member_names_refuse_the_zip(
    tmp_path: Path, coco_zips: dict[str, bytes], retry: RetryPolicy
) -> None:
    evil = zip_of({"val2014/COCO_val2014_000000000001.jpg": b"x", "../evil.txt": b"x"})
    with CocoServer({**coco_zips, VAL_ZIP: evil}) as server:
        settings = settings_for(tmp_path, server)
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
        fetch(settings_for(tmp_path, server), retry)


# --- sizes and digests -------------------------------------------------------------------


def official(zips: dict[str, bytes], wrong: str = "") -> dict[str, Digest]:
    """A pinned table like `core.sources.checksums.OFFICIAL` for the test zips: their sizes
    and MD5s, but a wrong MD5 for the URL path `wrong`."""
    return {
        path[1:]: Digest(
            "md5", "0" * 32 if path == wrong else hashlib.md5(data).hexdigest(), size=len(data)
        )
        for path, data in zips.items()
    }


def test_the_default_source_is_the_https_bucket_with_every_zip_pinned(tmp_path: Path) -> None:
    base_url = make_settings(tmp_path).coco_base_url
    assert base_url == "https://s3.amazonaws.com/images.cocodataset.org"
    assert set(OFFICIAL) == {path for _, path, _ in coco_files(["train2014", "val2014"])}


def test_without_checksums_a_server_announcing_another_size_is_refused_before_any_byte(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy
) -> None:
    settings = make_settings(tmp_path, coco_root=tmp_path / "coco", coco_base_url=server.url)
    with pytest.raises(DownloadError) as caught:
        fetch(settings, retry)
    size = len(server.files[ANNOTATIONS_ZIP])
    assert str(caught.value) == (
        f"{server.url}{ANNOTATIONS_ZIP}: the server announces {size:,} bytes, the official zip "
        "has 252,872,794: a mirror with other zips needs COCO_CHECKSUMS"
    )
    assert server.gets() == []


def test_pinned_sizes_and_md5s_are_checked_without_a_checksums_file(
    tmp_path: Path,
    server: CocoServer,
    retry: RetryPolicy,
    coco_zips: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(checksums, "OFFICIAL", official(coco_zips))
    settings = make_settings(tmp_path, coco_root=tmp_path / "coco", coco_base_url=server.url)
    assert fetch(settings, retry).extracted == ("annotations_trainval2014.zip", "val2014.zip")
    assert_val_in_place(settings)

    monkeypatch.setattr(checksums, "OFFICIAL", official(coco_zips, wrong=TRAIN_ZIP))
    actual = hashlib.md5(coco_zips[TRAIN_ZIP]).hexdigest()
    with pytest.raises(DownloadError) as caught:
        fetch(settings, retry, splits=("train2014",))
    assert str(caught.value) == (
        f"{server.url}{TRAIN_ZIP}: corrupt zip (md5 {actual}, expected {'0' * 32}) "
        "after 3 downloads"
    )
    assert not (settings.coco_root / "train2014").exists()


def test_a_mirror_serving_other_zips_fails_their_digests_and_nothing_is_unpacked(
    tmp_path: Path,
    coco_zips: dict[str, bytes],
    retry: RetryPolicy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make_mini_coco(tmp_path / "other", {"val2014": 12}, seed=9, size=(64, 48))
    other = build_coco_zips(tmp_path / "other")[VAL_ZIP]  # a valid zip, not the one listed
    with CocoServer(coco_zips) as good, CocoServer({**coco_zips, VAL_ZIP: other}) as mirror:
        sums = tmp_path / "MD5SUMS"
        sums.write_text(
            "".join(f"{hashlib.md5(d).hexdigest()} *{p[1:]}\n" for p, d in good.files.items())
        )
        settings = make_settings(
            tmp_path, coco_root=tmp_path / "coco", coco_base_url=mirror.url, coco_checksums=sums
        )
        with (
            caplog.at_level(logging.WARNING, logger="core.sources.coco_download"),
            pytest.raises(DownloadError) as caught,
        ):
            fetch(settings, retry)
    expected, actual = hashlib.md5(coco_zips[VAL_ZIP]).hexdigest(), hashlib.md5(other).hexdigest()
    assert str(caught.value) == (
        f"{mirror.url}{VAL_ZIP}: corrupt zip (md5 {actual}, expected {expected}) after 3 downloads"
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all(f"md5 {actual}, expected {expected}" in w for w in warnings)
    assert not (settings.coco_root / "val2014").exists()
    assert not list((settings.coco_root / WORK_DIR).glob("val2014.zip*"))


def test_a_bad_checksums_file_stops_before_any_request(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy
) -> None:
    sums = server.write_checksums(tmp_path / "SHA256SUMS")
    sums.write_text(
        "".join(line + "\n" for line in sums.read_text().splitlines() if "zips/val" not in line)
    )
    settings = make_settings(
        tmp_path, coco_root=tmp_path / "coco", coco_base_url=server.url, coco_checksums=sums
    )
    with pytest.raises(ConfigError) as caught:
        fetch(settings, retry)
    assert str(caught.value) == f"COCO_CHECKSUMS {sums} has no line for zips/val2014.zip"
    assert server.requests == []


def test_a_resumed_part_is_hashed_whole(
    tmp_path: Path,
    server: CocoServer,
    retry: RetryPolicy,
    coco_zips: dict[str, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_for(tmp_path, server)
    work = settings.coco_root / WORK_DIR
    work.mkdir(parents=True)
    half = bytearray(coco_zips[VAL_ZIP][: len(coco_zips[VAL_ZIP]) // 2])
    half[10:14] = b"\xff\xff\xff\xff"  # the first local header's time: no CRC covers it
    (work / "val2014.zip.part").write_bytes(half)
    with caplog.at_level(logging.WARNING, logger="core.sources.coco_download"):
        fetch(settings, retry)
    assert [(r.range, r.status) for r in server.gets(VAL_ZIP)] == [
        (f"bytes={len(half)}-", 206),
        (None, 200),  # the whole file failed its digest: fetched again from zero
    ]
    assert "val2014.zip" in caplog.text and "fails its digest" in caplog.text
    assert_val_in_place(settings)


def test_a_body_longer_than_expected_is_cut_at_the_expected_size(
    tmp_path: Path,
    server: CocoServer,
    retry: RetryPolicy,
    coco_zips: dict[str, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.fault(VAL_ZIP, body=coco_zips[VAL_ZIP] + bytes(4 << 20), unannounced=True)
    with caplog.at_level(logging.WARNING, logger="core.sources.coco_download"):
        result = fetch(settings_for(tmp_path, server), retry)
    assert [(r.range, r.status) for r in server.gets(VAL_ZIP)] == [(None, 200)]
    assert result.bytes_downloaded == len(coco_zips[VAL_ZIP]) + len(coco_zips[ANNOTATIONS_ZIP])
    assert caplog.text == ""
    assert_val_in_place(settings_for(tmp_path, server))


# --- unpacking limits ----------------------------------------------------------------------


def declaring_2_gb() -> bytes:
    """A 2 MB zip whose one photo declares 2 GB (a matching checksum makes no difference)."""
    photo = "val2014/COCO_val2014_000000000001.jpg"
    return declare_size(zip_of({photo: random.randbytes(2_000_000)}), photo, 2_000_000_000)


def of_zeros() -> bytes:
    """A zip bomb: 20 MB of zeros deflate to about 20 kB (declared honestly)."""
    return zip_of({"val2014/COCO_val2014_000000000001.jpg": bytes(20 << 20)}, zipfile.ZIP_DEFLATED)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (declaring_2_gb, r"the zip declares 2\.0 GB unpacked, more than 3\.2 MB for a 2\.0 MB zip"),
        (of_zeros, r"the zip declares 21\.0 MB unpacked, more than 1\.1 MB for a 20\.\d kB zip"),
    ],
)
def test_a_zip_declaring_far_more_than_its_size_stops_having_written_nothing(
    tmp_path: Path,
    coco_zips: dict[str, bytes],
    retry: RetryPolicy,
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[], bytes],
    message: str,
) -> None:
    with CocoServer({**coco_zips, VAL_ZIP: make()}) as server:
        settings = settings_for(tmp_path, server)
        opened = opened_members(monkeypatch)
        with pytest.raises(DownloadError, match=rf"^{server.url}{VAL_ZIP}: {message}: refused$"):
            fetch(settings, retry)
        assert len(server.gets(VAL_ZIP)) == 1  # it passed its digest: no point in fetching again
    assert [name for name in opened if name.startswith("val2014")] == []
    assert_nothing_of_val(settings)


def test_an_annotations_zip_may_unpack_to_8_times_its_size_not_more(
    tmp_path: Path, coco_zips: dict[str, bytes], retry: RetryPolicy
) -> None:
    padded = b'{"images": [], "annotations": []}' + b" " * (20 << 20)
    bomb = zip_of({"annotations/captions_val2014.json": padded}, zipfile.ZIP_DEFLATED)
    with CocoServer({**coco_zips, ANNOTATIONS_ZIP: bomb}) as server:
        settings = settings_for(tmp_path, server)
        with pytest.raises(DownloadError, match=r"declares 21\.0 MB unpacked, more than 1\.\d MB"):
            fetch(settings, retry)
    assert not (settings.coco_root / "annotations").exists()


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ({"entries": 5}, r"the zip holds 13 entries, more than 5: refused"),
        (
            {"entry_size": 100},
            r"'val2014/COCO_val2014_\d+\.jpg' declares .*, more than 100 bytes for one entry: "
            "refused",
        ),
    ],
)
def test_entry_counts_and_sizes_are_bounded(
    tmp_path: Path,
    server: CocoServer,
    retry: RetryPolicy,
    monkeypatch: pytest.MonkeyPatch,
    limit: dict[str, int],
    message: str,
) -> None:
    monkeypatch.setattr(coco_download, "IMAGE_LIMITS", replace(coco_download.IMAGE_LIMITS, **limit))
    settings = settings_for(tmp_path, server)
    opened = opened_members(monkeypatch)
    with pytest.raises(DownloadError, match=rf"^{server.url}{VAL_ZIP}: {message}"):
        fetch(settings, retry)
    assert [name for name in opened if name.startswith("val2014")] == []
    assert_nothing_of_val(settings)


PHOTO = "val2014/COCO_val2014_000000000001.jpg"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda _: zip_of([("val2014", b"x"), (PHOTO, b"x")]),
            "'val2014' is both a file and a folder in the zip: refused",
        ),
        (
            lambda _: zip_of([(PHOTO, b"x"), (PHOTO + "/inside.jpg", b"x")]),
            f"'{PHOTO}' is both a file and a folder in the zip: refused",
        ),
        (
            lambda _: zip_of([(PHOTO, b"x"), (PHOTO, b"y")]),
            f"'{PHOTO}' is in the zip twice: refused",
        ),
        (
            lambda _: declare_size(zip_of({PHOTO: b"abc"}), PHOTO, 10),
            f"'{PHOTO}' holds less than the zip declares",
        ),
        (
            lambda _: mark_encrypted(zip_of({PHOTO: b"x"}), PHOTO),
            f"encrypted member '{PHOTO}' in the zip: refused",
        ),
        (
            lambda zips: corrupt_member(zips[VAL_ZIP]),
            r"broken zip: Bad CRC-32 for file 'val2014/COCO_val2014_\d+\.jpg'",
        ),
    ],
    ids=["file-and-folder", "file-and-folder-inside", "twice", "short", "encrypted", "bad-crc"],
)
def test_a_zip_that_passes_its_digest_but_not_its_checks_is_refused_at_once(
    tmp_path: Path,
    coco_zips: dict[str, bytes],
    retry: RetryPolicy,
    make: Callable[[dict[str, bytes]], bytes],
    message: str,
) -> None:
    with CocoServer({**coco_zips, VAL_ZIP: make(coco_zips)}) as server:
        settings = settings_for(tmp_path, server)
        with pytest.raises(DownloadError, match=rf"^{server.url}{VAL_ZIP}: {message}$"):
            fetch(settings, retry)
        assert len(server.gets(VAL_ZIP)) == 1
    assert_nothing_of_val(settings)


def opened_members(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the zip members read from now on (every unpacking reads through this)."""
    opened: list[str] = []
    real = zipfile.ZipFile.open

    def spy(self, name, *args, **kwargs):
        opened.append(getattr(name, "filename", name))
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    return opened


def assert_nothing_of_val(settings: Settings) -> None:
    """No val2014 folder, and nothing of its zip left in the work folder."""
    assert not (settings.coco_root / "val2014").exists()
    work = settings.coco_root / WORK_DIR
    assert sorted(p.name for p in work.iterdir() if not p.name.startswith(".")) == [
        "annotations_trainval2014.zip.done"
    ]


# --- disk space --------------------------------------------------------------------------


def test_too_little_disk_space_is_refused_before_any_byte(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.disk_usage

    def tiny(path):
        return real(path)._replace(free=1000)

    monkeypatch.setattr(shutil, "disk_usage", tiny)
    settings = settings_for(tmp_path, server)
    with pytest.raises(DownloadError) as caught:
        fetch(settings, retry)
    assert str(caught.value).startswith(f"not enough disk space in {settings.coco_root}: need ")
    assert str(caught.value).endswith("1.0 kB free")
    assert server.gets() == []
    assert not (settings.coco_root / WORK_DIR).exists()


def test_disk_space_counts_everything_unpacked_and_the_largest_download() -> None:
    plan = [
        CocoFile("annotations_trainval2014.zip", "u", "annotations", "r", 241_000_000, DIGEST),
        CocoFile("val2014.zip", "u", "val2014", "r", 6_200_000_000, DIGEST, have=1_000_000_000),
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
    fetch(settings_for(tmp_path, server), retry)
    assert [r.status for r in server.gets(VAL_ZIP)] == [503, 200]
    assert sleeps == [1.0]
    assert_val_in_place(settings_for(tmp_path, server))


def test_503_every_time_names_the_url_and_the_attempts(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, sleeps: Sleeps
) -> None:
    server.fault(VAL_ZIP, times=3, status=503)
    with pytest.raises(DownloadError) as caught:
        fetch(settings_for(tmp_path, server), retry)
    assert str(caught.value) == (f"{server.url}{VAL_ZIP}: 503 Service Unavailable after 3 attempts")
    assert sleeps == [1.0, 2.0]  # exponential backoff, bounded attempts


def test_the_retry_count_is_a_total_even_when_every_attempt_makes_progress(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, sleeps: Sleeps
) -> None:
    server.fault(VAL_ZIP, times=3, drop_after=100)
    settings = settings_for(tmp_path, server)
    with pytest.raises(DownloadError) as caught:
        fetch(settings, retry)
    message = str(caught.value)
    assert message.startswith(f"{server.url}{VAL_ZIP}: ") and message.endswith(" after 3 attempts")
    assert "\n" not in message
    assert [r.range for r in server.gets(VAL_ZIP, at_least=3)] == [None, "bytes=100-", "bytes=200-"]
    assert sleeps == [1.0, 2.0]
    assert (settings.coco_root / WORK_DIR / "val2014.zip.part").stat().st_size == 300  # for a rerun


def test_404_is_not_retried(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy, sleeps: Sleeps
) -> None:
    server.fault(VAL_ZIP, status=404)
    with pytest.raises(DownloadError) as caught:
        fetch(settings_for(tmp_path, server), retry)
    assert str(caught.value) == f"{server.url}{VAL_ZIP}: 404 Not Found"
    assert len(server.gets(VAL_ZIP, at_least=1)) == 1 and sleeps == []


def test_a_wrong_base_url_fails_when_planning(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy
) -> None:
    with pytest.raises(DownloadError, match=rf"{server.url}/nowhere/annotations/.*: 404"):
        fetch(settings_for(tmp_path, server, server.url + "/nowhere"), retry)
    assert server.gets() == []


def test_an_unreachable_server_is_retried_then_named(
    tmp_path: Path, retry: RetryPolicy, sleeps: Sleeps
) -> None:
    """Issue 23: a server that cannot be reached at all names the setting to check."""
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DownloadError) as caught:
        fetch(make_settings(tmp_path, coco_root=tmp_path / "coco", coco_base_url=url), retry)
    message = str(caught.value)
    assert message.startswith(f"COCO_BASE_URL {url} cannot be reached: "), message
    assert message.endswith(f"(after 3 attempts at {url}{ANNOTATIONS_ZIP})")
    assert sleeps == [1.0, 2.0]


# --- what is already there ---------------------------------------------------------------


def test_an_own_unzip_is_trusted(
    tmp_path: Path,
    server: CocoServer,
    retry: RetryPolicy,
    coco_zips: dict[str, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_for(tmp_path, server)
    make_mini_coco(settings.coco_root, {"val2014": 3})
    with caplog.at_level(logging.INFO, logger="core.sources.coco_download"):
        result = fetch(settings, retry)
    assert server.requests == []
    assert result.skipped == ("annotations_trainval2014.zip", "val2014.zip")
    assert "own unzip" in caplog.text


def test_annotations_are_merged_into_an_existing_folder(
    tmp_path: Path, server: CocoServer, retry: RetryPolicy
) -> None:
    settings = settings_for(tmp_path, server)
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

    settings = settings_for(tmp_path, server)
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
    fetch(settings_for(tmp_path, server), retry)
    assert len(server.gets(ANNOTATIONS_ZIP)) == 2
    assert_val_in_place(settings_for(tmp_path, server))
