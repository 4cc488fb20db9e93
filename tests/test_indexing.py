from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import index_builder
from core.config import Settings
from core.errors import DatasetError, ModelMismatch, StoreBusy, UnsafeRemoval
from core.images import load_image
from core.indexing import BuildOptions, BuildSummary, run
from core.indexing.build import builder_lock, report_path
from core.indexing.plan import MAX_UNCONFIRMED_REMOVAL
from core.indexing.writer import WRITE_BATCHES
from core.models.encoder import DualEncoder
from core.search.sendable_files import HostRoots, SendableFiles, roots_file
from core.search.service import SearchService
from core.sources.coco import CocoReader
from core.sources.folders import FolderReader
from core.sources.shards import Shard, shard_of
from core.store.database import Database, VectorStore
from core.store.records import CaptionRecord, ImageRecord
from tests.chroma_run import ChromaServer
from tests.conftest import ROOT, make_settings, subprocess_env
from tests.fixtures.shapes import caption, draw
from tests.mini_coco import CAPTION_TEMPLATES, FIRST_ID, coco_file_name, make_mini_coco
from tests.searching import search
from tests.test_encoder import counting_compile


@pytest.fixture(scope="module")
def encoder() -> DualEncoder:
    """One fixture CLIP for the in-process runs (fp32: the vectors are compared exactly)."""
    encoder = DualEncoder(
        str(ROOT / "tests" / "fixtures" / "tiny_clip"), device="cpu", dtype="float32"
    )
    encoder.load()
    return encoder


def index(settings: Settings, encoder: DualEncoder, **kwargs) -> BuildSummary:
    """A run without progress bars; `kwargs`: `reader` (default COCO's `splits`, default
    both) and the `BuildOptions`."""
    reader = kwargs.pop("reader", None) or CocoReader(
        settings.coco_root, kwargs.pop("splits", ("train2014", "val2014"))
    )
    return run(settings, reader, BuildOptions(progress=False, **kwargs), encoder=encoder)


def images_store(settings: Settings, encoder: DualEncoder) -> VectorStore[ImageRecord]:
    return Database(settings).open(
        settings.collection, ImageRecord, model=settings.clip_model, dim=encoder.dim
    )


def searcher(
    settings: Settings, encoder: DualEncoder, store: VectorStore[ImageRecord] | None = None
) -> SearchService:
    """A search over the collection (or `store`) that sends what this host serves."""
    store = store or images_store(settings, encoder)
    return SearchService(encoder, store, files=SendableFiles(HostRoots(settings)))


def recorded_roots(settings: Settings) -> set[str]:
    """The folders the builder recorded in this host's roots file."""
    return set(json.loads(roots_file(settings).read_text())["roots"])


def coco_settings(tmp_path: Path, **overrides) -> Settings:
    return make_settings(tmp_path, coco_root=tmp_path / "coco", **overrides)


def coco_server_settings(tmp_path: Path, server: ChromaServer, collection: str) -> Settings:
    """`coco_settings` for a collection on the test's Chroma server."""
    return coco_settings(
        tmp_path, chroma_host=server.host, chroma_port=server.port, collection=collection
    )


def test_full_build_stores_every_picture_with_its_record(
    tmp_path: Path, encoder: DualEncoder
) -> None:
    settings = coco_settings(tmp_path)
    made = make_mini_coco(settings.coco_root, {"train2014": 24, "val2014": 12})
    summary = index(settings, encoder, batch_size=8, workers=2)
    assert (summary.indexed, summary.unchanged, summary.removed, summary.total) == (36, 0, 0, 36)
    assert summary.bad == [] and summary.missing == [] and summary.report is None
    assert summary.images_per_s > 0
    records = {r.id: r for r in images_store(settings, encoder)}
    assert set(records) == {str(m.id) for m in made}
    for image in made:
        record = records[str(image.id)]
        assert record.path == str(image.path.resolve())
        assert record.split == image.split
        assert (record.width, record.height) == (96, 72)
        assert record.captions[0] == caption(image.color, image.shape)
        assert len(record.captions) == len(CAPTION_TEMPLATES)
        assert (record.file_size, record.mtime_ns) == (
            image.path.stat().st_size,
            image.path.stat().st_mtime_ns,
        )


def test_built_index_is_searchable(tmp_path: Path, encoder: DualEncoder) -> None:
    settings = coco_settings(tmp_path)
    made = make_mini_coco(settings.coco_root, {"val2014": 36})
    index(settings, encoder, splits=("val2014",))
    labels = {str(m.id): (m.color, m.shape) for m in made}
    hits = search(searcher(settings, encoder), "a blue triangle", 3).hits
    assert [labels[h.id] for h in hits] == [("blue", "triangle")] * 3
    # The stored vectors are the encoder's, for the draft-decoded picture.
    image = made[0]
    stored = search(searcher(settings, encoder), image.path.read_bytes(), 1).hits[0]
    assert stored.id == str(image.id) and stored.score > 0.98


def test_compiled_build_stores_the_same_vectors(
    tmp_path: Path, encoder: DualEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = coco_settings(tmp_path)
    made = make_mini_coco(settings.coco_root, {"val2014": 10})
    compiled = DualEncoder(
        str(ROOT / "tests" / "fixtures" / "tiny_clip"), device="cpu", dtype="float32"
    )
    batches = counting_compile(monkeypatch)
    summary = index(settings, compiled, splits=("val2014",), compile_model=True, batch_size=4)
    assert summary.indexed == 10
    assert sum(batches) >= 12 and set(batches) == {4}  # 10 pictures (+ warm-up) ran compiled
    hit = search(searcher(settings, encoder), made[0].path.read_bytes(), 1).hits[0]
    assert hit.id == str(made[0].id) and hit.score > 0.98


def test_the_writer_gathers_batches_into_larger_upserts(
    tmp_path: Path, encoder: DualEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"train2014": 30, "val2014": 10})
    sizes: list[int] = []
    upsert = VectorStore.upsert

    def spied(self, records, vectors) -> None:
        if self.name == settings.collection:
            sizes.append(len(records))
        upsert(self, records, vectors)

    monkeypatch.setattr(VectorStore, "upsert", spied)
    summary = index(settings, encoder, batch_size=2)
    assert sizes == [2 * WRITE_BATCHES] * (40 // (2 * WRITE_BATCHES)) + [40 % (2 * WRITE_BATCHES)]
    assert summary.indexed == images_store(settings, encoder).count() == 40


def test_rerun_with_nothing_changed_is_quick_and_says_so(
    tmp_path: Path, encoder: DualEncoder
) -> None:
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"train2014": 12, "val2014": 6})
    index(settings, encoder)
    again = index(settings, encoder)
    assert again.up_to_date and (again.indexed, again.unchanged, again.total) == (0, 18, 18)


def test_limit_builds_a_subset_and_grows_it(tmp_path: Path, encoder: DualEncoder) -> None:
    settings = coco_settings(tmp_path)
    made = make_mini_coco(settings.coco_root, {"train2014": 20, "val2014": 10})
    first = index(settings, encoder, limit=8)
    assert (first.indexed, first.beyond_limit, first.total) == (8, 22, 8)
    expected = sorted(m.id for m in made)[:8]
    assert sorted(int(r.id) for r in images_store(settings, encoder)) == expected
    second = index(settings, encoder, limit=20)
    assert (second.indexed, second.unchanged, second.total) == (12, 8, 20)
    smaller = index(settings, encoder, limit=5)  # a smaller limit never deletes what is there
    assert (smaller.indexed, smaller.removed, smaller.total) == (0, 0, 20)


def test_incremental_refresh_adds_removes_and_reembeds(
    tmp_path: Path, encoder: DualEncoder
) -> None:
    settings = coco_settings(tmp_path)
    made = make_mini_coco(settings.coco_root, {"train2014": 14, "val2014": 6})
    index(settings, encoder)
    store = images_store(settings, encoder)

    gone = [made[0], made[13]]  # 2 of 20: a removal of up to 10% needs no --prune
    for image in gone:
        image.path.unlink()
    changed = made[5]
    draw("yellow", "square", width=96, height=72).save(changed.path, quality=90)
    os.utime(changed.path, ns=(time.time_ns(), time.time_ns() + 10**9))
    annotations = settings.coco_root / "annotations" / "captions_val2014.json"
    document = json.loads(annotations.read_text())
    new_ids = [900_001, 900_002]
    for image_id in new_ids:
        name = coco_file_name("val2014", image_id)
        draw("green", "circle", width=96, height=72).save(settings.coco_root / "val2014" / name)
        document["images"].append({"id": image_id, "file_name": name, "width": 96, "height": 72})
        document["annotations"].append(
            {"id": image_id, "image_id": image_id, "caption": "a green circle"}
        )
    annotations.write_text(json.dumps(document))

    summary = index(settings, encoder)
    assert (summary.indexed, summary.removed, summary.unchanged) == (3, 2, 17)
    assert sorted(summary.missing) == sorted(str(g.path.resolve()) for g in gone)
    ids = {r.id for r in store}
    assert ids == {str(m.id) for m in made if m not in gone} | {str(i) for i in new_ids}
    hit = search(searcher(settings, encoder, store), changed.path.read_bytes(), 1).hits[0]
    assert hit.id == str(changed.id) and hit.score > 0.98  # re-embedded from the new picture
    assert report_path(settings).read_text().count("missing on disk") == 2


def test_refreshing_one_split_leaves_the_other_alone(tmp_path: Path, encoder: DualEncoder) -> None:
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"train2014": 6, "val2014": 4})
    index(settings, encoder)
    summary = index(settings, encoder, splits=("val2014",))
    assert (summary.removed, summary.total) == (0, 10)


def write_bad_and_odd_files(folder: Path) -> dict[str, str]:
    """Bad files (name → expected reason) and odd but valid ones (name → "")."""
    photo = io.BytesIO()
    draw("red", "circle", width=200, height=150).save(photo, "JPEG", quality=90)
    data = photo.getvalue()
    files = {
        "truncated.jpg": (data[: len(data) // 2], "corrupt or truncated"),
        "empty.jpg": (b"", "is empty"),
        "text.jpg": (b"this is a text file, not a picture\n", "not an image"),
    }
    for name, (content, _) in files.items():
        (folder / name).write_bytes(content)
    bomb = Image.new("1", (8000, 8000))
    bomb.save(folder / "bomb.png")  # 64 M pixels in a few kB
    draw("blue", "square", width=96, height=72).convert("CMYK").save(folder / "cmyk.jpg")
    draw("green", "triangle", width=96, height=72).convert("L").save(folder / "grey.jpg")
    rgba = draw("yellow", "circle", width=96, height=72).convert("RGBA")
    rgba.putalpha(200)
    rgba.save(folder / "rgba.png")
    return {
        **{name: reason for name, (_, reason) in files.items()},
        "bomb.png": "too large",
        "cmyk.jpg": "",
        "grey.jpg": "",
        "rgba.png": "",
    }


def test_bad_files_are_reported_and_skipped(tmp_path: Path, encoder: DualEncoder) -> None:
    settings = make_settings(tmp_path, max_image_pixels=40_000_000)
    folder = tmp_path / "photos"
    folder.mkdir()
    expected = write_bad_and_odd_files(folder)
    summary = index(settings, encoder, reader=FolderReader(folder), batch_size=2)
    bad = {Path(path).name: reason for path, reason in summary.bad}
    assert set(bad) == {name for name, reason in expected.items() if reason}
    for name, reason in bad.items():
        assert expected[name] in reason, (name, reason)
    assert summary.indexed == 3  # CMYK, greyscale and RGBA are fine pictures
    stored = {Path(r.path).name: r for r in images_store(settings, encoder)}
    assert set(stored) == {"cmyk.jpg", "grey.jpg", "rgba.png"}
    assert (stored["grey.jpg"].width, stored["grey.jpg"].height) == (96, 72)
    report = summary.report.read_text().splitlines()
    assert report[0] == "path\treason" and len(report) == 1 + len(bad)
    assert summary.report == report_path(settings) and summary.report.parent == settings.chroma_path


def test_folder_reader_build_and_refresh(tmp_path: Path, encoder: DualEncoder) -> None:
    settings = make_settings(tmp_path)
    folder = tmp_path / "photos"
    (folder / "holiday").mkdir(parents=True)
    draw("red", "square", width=80, height=80).save(folder / "holiday" / "a.jpg")
    draw("blue", "circle", width=80, height=80).save(folder / "b.png")
    first = index(settings, encoder, reader=FolderReader(folder))
    assert (first.indexed, first.total) == (2, 2)
    (folder / "b.png").unlink()
    draw("green", "triangle", width=80, height=80).save(folder / "c.webp")
    second = index(settings, encoder, reader=FolderReader(folder), prune=True)  # 1 of 2: confirm
    assert (second.indexed, second.removed, second.total) == (1, 1, 2)
    hit = search(searcher(settings, encoder), "a green triangle", 1).hits[0]
    assert hit.path.endswith("c.webp") and hit.captions == ()


def test_captions_collection(tmp_path: Path, encoder: DualEncoder) -> None:
    settings = coco_settings(tmp_path)
    made = make_mini_coco(settings.coco_root, {"val2014": 12})
    summary = index(settings, encoder, with_captions=True, splits=("val2014",))
    assert summary.captions_indexed == 12 * len(CAPTION_TEMPLATES)
    captions = Database(settings).open(
        f"{settings.collection}_captions", CaptionRecord, model=settings.clip_model, dim=encoder.dim
    )
    assert captions.count() == 12 * len(CAPTION_TEMPLATES)
    image = made[3]
    record = captions.get([f"{image.id}:0"])[0]
    assert record == CaptionRecord(
        f"{image.id}:0", str(image.id), caption(image.color, image.shape), "val2014"
    )
    top = captions.query(encoder.embed_texts([caption(image.color, image.shape)]), 1)[0][0]
    assert top.record.caption == caption(image.color, image.shape) and top.score > 0.99
    again = index(settings, encoder, with_captions=True, splits=("val2014",))
    assert again.up_to_date and again.captions_indexed == 0
    image.path.unlink()
    third = index(settings, encoder, with_captions=True, splits=("val2014",))
    # A picture gone from disk takes its captions with it: they would point nowhere.
    assert (third.removed, third.captions_removed) == (1, len(CAPTION_TEMPLATES))


def test_rebuild_starts_from_scratch(tmp_path: Path, encoder: DualEncoder) -> None:
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"val2014": 6})
    index(settings, encoder, splits=("val2014",))
    summary = index(settings, encoder, rebuild=True, splits=("val2014",))
    assert (summary.indexed, summary.unchanged, summary.total) == (6, 0, 6)


def test_another_model_is_refused_unless_rebuilding(tmp_path: Path, encoder: DualEncoder) -> None:
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"val2014": 4})
    index(settings, encoder, splits=("val2014",))
    renamed = tmp_path / "renamed_clip"
    renamed.symlink_to(ROOT / "tests" / "fixtures" / "tiny_clip")
    other = coco_settings(tmp_path, clip_model=str(renamed))
    other_encoder = DualEncoder(str(renamed), device="cpu", dtype="float32")
    with pytest.raises(ModelMismatch, match="--rebuild"):
        run(
            other,
            CocoReader(other.coco_root, ["val2014"]),
            BuildOptions(progress=False),
            encoder=other_encoder,
        )
    summary = run(
        other,
        CocoReader(other.coco_root, ["val2014"]),
        BuildOptions(progress=False, rebuild=True),
        encoder=other_encoder,
    )
    assert summary.indexed == 4


def test_build_against_a_chroma_server(
    tmp_path: Path, encoder: DualEncoder, chroma_server: ChromaServer
) -> None:
    settings = coco_server_settings(tmp_path, chroma_server, "built_on_server")
    make_mini_coco(settings.coco_root, {"train2014": 12, "val2014": 12})
    summary = index(settings, encoder, batch_size=5)
    assert (summary.indexed, summary.total) == (24, 24)
    assert index(settings, encoder).up_to_date
    hits = search(SearchService.open(settings, encoder), "a red circle", 2).hits
    assert all(h.caption == "a red circle" for h in hits)


# --- the CLI, as a real process -------------------------------------------------------------


def builder(settings: Settings, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "index_builder.py"), *args],
        env=subprocess_env(settings),
        cwd=settings.chroma_path.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def test_cli_build_progress_summary_and_search(tmp_path: Path) -> None:
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"train2014": 24, "val2014": 12})
    proc = builder(settings, "--batch-size", "8", "--with-captions")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "\nindexed 36 pictures\n" in out  # issue 23: a short summary, zeros left out
    assert "captions: indexed 180" in out
    assert re.search(r"embedding images: 100%.*36/36.*img/s", err)  # a bar with a rate
    assert re.search(r"<\d\d:\d\d", err)  # and an ETA
    search = subprocess.run(
        [sys.executable, "-m", "core", "search", "a blue triangle", "--k", "3"],
        env=subprocess_env(settings),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert search.returncode == 0, search.stderr
    assert [line.split(maxsplit=3)[3] for line in search.stdout.splitlines()] == [
        "a blue triangle"
    ] * 3


def test_cli_explains_a_broken_annotation_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"train2014": 2, "val2014": 2})
    path = settings.coco_root / "annotations" / "captions_train2014.json"
    path.write_text(path.read_text()[:-40])
    monkeypatch.setenv("CLIP_MODEL", settings.clip_model)
    monkeypatch.setenv("CHROMA_PATH", str(settings.chroma_path))
    code = index_builder.main(["--coco-root", str(settings.coco_root), "--no-progress"])
    assert code == 1
    assert "captions_train2014.json is not valid JSON" in capsys.readouterr().err


def test_cli_help_explains_every_flag(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        index_builder.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    flags = ["--coco-root", "--split", "--folder", "--limit", "--shard", "--batch-size"]
    for flag in [*flags, "--workers", "--rebuild", "--with-captions", "--compile", "--prune"]:
        assert flag in text
    assert "--wait" in text


def signal_mid_run(
    settings: Settings, sig: signal.Signals, total: int, after: int = 60
) -> subprocess.Popen:
    """Start a build of `total` pictures in batches of 4 and send it `sig` once `after` are
    embedded."""
    proc = builder(settings, "--batch-size", "4", "--workers", "1")
    progress = re.compile(rf"(\d+)/{total}")

    def watch() -> None:
        buffer = ""
        while (chunk := proc.stderr.read(1)) != "":
            buffer += chunk
            if chunk in "\r\n":
                done = [int(n) for n in progress.findall(buffer)]
                buffer = ""
                if done and done[-1] >= after:
                    proc.send_signal(sig)
                    return

    watcher = threading.Thread(target=watch)
    watcher.start()
    watcher.join(timeout=240)
    proc.wait(timeout=60)
    return proc


def test_killed_mid_run_then_rerun_completes_exactly_once(
    tmp_path: Path, encoder: DualEncoder
) -> None:
    settings = coco_settings(tmp_path)
    total = 400
    make_mini_coco(settings.coco_root, {"train2014": 300, "val2014": 100}, size=(64, 48))
    # Killed 168 pictures after the writer got its first gathering (8 batches of 4).
    proc = signal_mid_run(settings, signal.SIGKILL, total, after=200)
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"

    store = images_store(settings, encoder)
    stored_ids = [r.id for r in store]
    assert len(stored_ids) == len(set(stored_ids)) == store.count()
    assert 0 < len(stored_ids) < total

    summary = index(settings, encoder)
    assert summary.unchanged == len(stored_ids)  # nothing stored is embedded again
    assert summary.indexed == total - len(stored_ids)
    final_ids = [r.id for r in images_store(settings, encoder)]
    assert len(final_ids) == len(set(final_ids)) == total
    vectors_ok = search(searcher(settings, encoder), "a red circle", 5).hits
    assert len(vectors_ok) == 5 and np.isfinite([h.score for h in vectors_ok]).all()


def test_missing_annotations_in_process(tmp_path: Path, encoder: DualEncoder) -> None:
    settings = coco_settings(tmp_path)
    with pytest.raises(DatasetError, match=r"annotations_trainval2014\.zip"):
        index(settings, encoder)


def test_ctrl_c_stops_cleanly_and_reports_what_was_stored(
    tmp_path: Path, encoder: DualEncoder
) -> None:
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"train2014": 300, "val2014": 100}, size=(64, 48))
    proc = signal_mid_run(settings, signal.SIGINT, 400)
    assert proc.returncode == 130, "the build finished before it could be interrupted"
    out = proc.stdout.read()
    assert "interrupted while embedding images: stored " in out
    assert "everything embedded so far is stored; rerun to continue" in out
    indexed = int(re.search(r"indexed ([\d,]+)", out).group(1).replace(",", ""))
    assert 0 < indexed == images_store(settings, encoder).count()


# --- roots, removal safety, one builder at a time, folder ids, captions, Ctrl-C ---------------


def test_build_records_the_real_image_folders(tmp_path: Path, encoder: DualEncoder) -> None:
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"train2014": 3, "val2014": 3})
    disk = tmp_path / "disk"
    disk.mkdir()
    (settings.coco_root / "val2014").rename(disk / "val2014")
    (settings.coco_root / "val2014").symlink_to(disk / "val2014")  # val2014 on another disk
    index(settings, encoder)
    expected = {str((settings.coco_root / "train2014").resolve()), str(disk.resolve() / "val2014")}
    assert recorded_roots(settings) == expected  # not annotations/

    photos = tmp_path / "photos"
    photos.mkdir()
    draw("red", "circle", width=64, height=64).save(photos / "a.jpg")
    link = tmp_path / "link"
    link.symlink_to(photos)
    index(settings, encoder, reader=FolderReader(link))
    assert recorded_roots(settings) == expected | {str(photos.resolve())}


def test_roots_are_recorded_before_the_first_picture(
    tmp_path: Path, encoder: DualEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path)
    folder = tmp_path / "photos"
    folder.mkdir()
    draw("red", "circle", width=64, height=64).save(folder / "a.jpg")

    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(VectorStore, "upsert", killed)
    summary = index(settings, encoder, reader=FolderReader(folder))
    assert summary.interrupted and summary.indexed == 0
    assert recorded_roots(settings) == {str(folder.resolve())}


def folder_of(folder: Path, n: int, *, color: str = "red") -> list[Path]:
    """`n` pictures in `folder` (p0.jpg, sub/p1.jpg, p2.jpg, ...)."""
    paths = []
    for i in range(n):
        path = folder / ("sub" if i % 2 else "") / f"p{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        draw(color, "circle" if i % 3 else "square", width=64, height=64).save(path)
        paths.append(path)
    return paths


def test_an_emptied_folder_never_wipes_the_index(tmp_path: Path, encoder: DualEncoder) -> None:
    settings = make_settings(tmp_path)
    folder = tmp_path / "mnt"
    paths = folder_of(folder, 4)
    index(settings, encoder, reader=FolderReader(folder))
    for path in paths:  # an unmounted mount point: the folder is there, empty
        path.unlink()
    with pytest.raises(UnsafeRemoval, match=r"holds no pictures.*mounted.*--prune"):
        index(settings, encoder, reader=FolderReader(folder), rebuild=True)
    draw("blue", "square", width=64, height=64).save(folder / "new.jpg")
    with pytest.raises(UnsafeRemoval) as refused:
        index(settings, encoder, reader=FolderReader(folder))
    message = str(refused.value)
    assert "4 of the 4 stored entries" in message and "mounted" in message
    assert "--prune" in message and "\n" not in message
    store = images_store(settings, encoder)
    assert store.count() == 4  # nothing removed, and the new picture not embedded either
    assert {Path(r.path).name for r in store} == {p.name for p in paths}

    pruned = index(settings, encoder, reader=FolderReader(folder), prune=True)
    assert (pruned.removed, pruned.indexed, pruned.total) == (4, 1, 1)


def test_an_emptied_coco_split_never_wipes_the_index(tmp_path: Path, encoder: DualEncoder) -> None:
    settings = coco_settings(tmp_path)
    made = make_mini_coco(settings.coco_root, {"train2014": 4, "val2014": 6})
    index(settings, encoder)
    for image in made:
        if image.split == "val2014":
            image.path.unlink()  # every file of the split "missing", the folder still there
    with pytest.raises(UnsafeRemoval, match=r"refusing to remove 6 of the 6 stored entries"):
        index(settings, encoder, splits=("val2014",))
    with pytest.raises(UnsafeRemoval, match=r"6 of the 10"):
        index(settings, encoder)
    assert images_store(settings, encoder).count() == 10
    summary = index(settings, encoder, prune=True)
    assert (summary.removed, summary.total) == (6, 4)


def test_cli_refuses_a_large_removal_with_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    settings = make_settings(tmp_path)
    folder = tmp_path / "photos"
    paths = folder_of(folder, 3)
    monkeypatch.setenv("CLIP_MODEL", settings.clip_model)
    monkeypatch.setenv("CHROMA_PATH", str(settings.chroma_path))
    argv = ["--folder", str(folder), "--no-progress"]
    assert index_builder.main(argv) == 0
    for path in paths:
        path.unlink()
    capsys.readouterr()
    assert index_builder.main(argv) == UnsafeRemoval.exit_code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: refusing to remove 3 of the 3 stored entries")
    assert "rerun with --prune" in err[-1]
    assert index_builder.main([*argv, "--prune"]) == 0
    assert "removed 3 entries whose files are gone" in capsys.readouterr().out


def test_a_second_builder_is_refused_while_one_runs(
    tmp_path: Path,
    encoder: DualEncoder,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    settings = coco_settings(tmp_path)
    made = make_mini_coco(settings.coco_root, {"val2014": 4})
    index(settings, encoder, splits=("val2014",))
    made[0].path.unlink()
    with builder_lock(settings):  # the other builder
        with pytest.raises(StoreBusy) as refused:
            index(settings, encoder, splits=("val2014",), prune=True)
        monkeypatch.setenv("CLIP_MODEL", settings.clip_model)
        monkeypatch.setenv("CHROMA_PATH", str(settings.chroma_path))
        argv = ["--coco-root", str(settings.coco_root), "--split", "val2014", "--prune"]
        assert index_builder.main(argv) == StoreBusy.exit_code != 0
    message = str(refused.value)
    assert message == (
        f"another index_builder (pid {os.getpid()}) is running on {settings.chroma_path}; "
        "wait for it or rerun with --wait"
    )
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert images_store(settings, encoder).count() == 4  # untouched
    assert index(settings, encoder, splits=("val2014",), prune=True).removed == 1  # free again


def test_wait_proceeds_once_the_other_builder_is_done(tmp_path: Path) -> None:
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"val2014": 4})
    with builder_lock(settings):
        proc = builder(settings, "--split", "val2014", "--no-progress", "--wait")
        seen = ""
        while "waiting" not in seen:
            line = proc.stderr.readline()
            assert line, f"the builder did not wait: {seen}"
            seen += line
        assert proc.poll() is None
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "indexed 4" in out


def test_a_chroma_server_takes_no_lock(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, chroma_host="127.0.0.1", chroma_port=9)
    with builder_lock(settings), builder_lock(settings):
        pass
    assert not settings.chroma_path.exists()


def test_same_names_in_two_folders_are_two_sets(tmp_path: Path, encoder: DualEncoder) -> None:
    settings = make_settings(tmp_path)
    one = folder_of(tmp_path / "one", 3, color="red")
    two = folder_of(tmp_path / "two", 3, color="blue")
    index(settings, encoder, reader=FolderReader(tmp_path / "one"))
    summary = index(settings, encoder, reader=FolderReader(tmp_path / "two"))
    assert (summary.indexed, summary.removed, summary.total) == (3, 0, 6)
    stored = {r.path: r.id for r in images_store(settings, encoder)}
    assert set(stored) == {str(p) for p in one + two}
    hits = search(searcher(settings, encoder), "a circle", 6).hits
    assert len({h.id for h in hits}) == 6


def test_an_index_with_old_folder_ids_asks_before_reembedding(
    tmp_path: Path, encoder: DualEncoder
) -> None:
    settings = make_settings(tmp_path)
    folder = tmp_path / "photos"
    paths = folder_of(folder, 3)
    reader = FolderReader(folder)
    store = Database(settings).open(
        settings.collection, ImageRecord, model=settings.clip_model, dim=encoder.dim, create=True
    )
    old = [  # what the previous version stored: ids from the relative path only
        ImageRecord(
            "f" + hashlib.sha1(p.relative_to(folder).as_posix().encode()).hexdigest()[:16],
            str(p),
            reader.split,
        )
        for p in paths
    ]
    store.upsert(old, encoder.embed_images([load_image(p) for p in paths]))
    with pytest.raises(UnsafeRemoval, match=r"3 of the 3 .* older version.*--prune"):
        index(settings, encoder, reader=reader)
    assert {r.id for r in store} == {r.id for r in old}
    summary = index(settings, encoder, reader=reader, prune=True)
    assert (summary.removed, summary.indexed, summary.total) == (3, 3, 3)


def test_removed_pictures_take_their_captions_along(tmp_path: Path, encoder: DualEncoder) -> None:
    settings = coco_settings(tmp_path)
    made = make_mini_coco(settings.coco_root, {"val2014": 12})
    index(settings, encoder, with_captions=True, splits=("val2014",))
    gone = made[4]
    gone.path.unlink()
    summary = index(settings, encoder, splits=("val2014",))  # without --with-captions
    assert (summary.removed, summary.captions_removed) == (1, len(CAPTION_TEMPLATES))
    captions = Database(settings).open(
        f"{settings.collection}_captions", CaptionRecord, model=settings.clip_model, dim=encoder.dim
    )
    assert captions.count() == 11 * len(CAPTION_TEMPLATES)
    assert all(c.image_id != str(gone.id) for c in captions)
    assert "captions: indexed 0 · removed 5" in index_builder.describe(summary)


def test_ctrl_c_during_the_rebuilds_drop_says_what_was_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"val2014": 4})
    monkeypatch.setenv("CLIP_MODEL", settings.clip_model)
    monkeypatch.setenv("CHROMA_PATH", str(settings.chroma_path))
    monkeypatch.setenv("COLLECTION", settings.collection)
    argv = ["--coco-root", str(settings.coco_root), "--split", "val2014", "--no-progress"]
    assert index_builder.main([*argv, "--with-captions"]) == 0
    drop = Database.drop

    def drop_then_ctrl_c(self: Database, name: str) -> bool:
        drop(self, name)
        raise KeyboardInterrupt  # lands after Chroma deleted it, before drop() returned

    monkeypatch.setattr(Database, "drop", drop_then_ctrl_c)
    capsys.readouterr()
    assert index_builder.main([*argv, "--rebuild"]) == 130
    out, err = capsys.readouterr()
    assert "nothing was changed" not in out + err
    assert (
        "interrupted while dropping collections (--rebuild): dropped collection 'test_images'; "
        "rerun with --rebuild to finish the rebuild"
    ) in out
    assert Database(settings).info(settings.collection) is None
    assert Database(settings).info(f"{settings.collection}_captions") is not None


def test_ctrl_c_while_compiling_says_what_was_removed(
    tmp_path: Path, encoder: DualEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = coco_settings(tmp_path)
    made = make_mini_coco(settings.coco_root, {"val2014": 12})
    index(settings, encoder, splits=("val2014",))
    made[0].path.unlink()
    os.utime(made[1].path, ns=(time.time_ns(), time.time_ns() + 10**9))  # to re-embed

    def ctrl_c(batch_size: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(encoder, "compile", ctrl_c)
    summary = index(settings, encoder, splits=("val2014",), compile_model=True)
    assert summary.interrupted and summary.stage == "compiling the image tower"
    assert (summary.removed, summary.indexed, summary.total) == (1, 0, 11)
    assert index_builder.interruption(summary) == (
        "interrupted while compiling the image tower: removed 1 entry whose file is gone; "
        "rerun to continue"
    )


def test_ctrl_c_before_anything_changed_says_so(
    tmp_path: Path, encoder: DualEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"val2014": 3})

    def ctrl_c(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("core.indexing.build.record_roots", ctrl_c)
    summary = index(settings, encoder, splits=("val2014",))
    assert summary.interrupted and not summary.changed
    assert index_builder.interruption(summary) == (
        "interrupted while recording the indexed folders: nothing was changed in the index"
    )


# --- shards: N builders, each indexing and refreshing only its own part -----------------------


def test_folder_shards_build_the_union_and_limit_counts_within_a_shard(
    tmp_path: Path, encoder: DualEncoder
) -> None:
    settings = make_settings(tmp_path)
    folder = tmp_path / "photos"
    folder_of(folder, 24)
    reader = FolderReader(folder)
    every = [r.id for r in reader.scan().records]
    shards = [Shard(n, 3) for n in range(3)]
    parts = [[id_ for id_ in every if shard.holds(id_)] for shard in shards]
    assert all(parts), "a shard of the 24 pictures is empty"

    first = index(settings, encoder, reader=reader, shard=shards[0], limit=1)
    assert (first.indexed, first.beyond_limit, first.total) == (1, len(parts[0]) - 1, 1)
    assert [r.id for r in images_store(settings, encoder)] == parts[0][:1]
    for shard, part in zip(shards, parts, strict=True):
        summary = index(settings, encoder, reader=reader, shard=shard)
        assert summary.source == f"folder {folder.resolve()}, shard {shard}"
        assert summary.removed == 0 and summary.indexed + summary.unchanged == len(part)
    ids = [r.id for r in images_store(settings, encoder)]
    assert len(ids) == len(set(ids)) == len(every) and set(ids) == set(every)
    for shard, part in zip(shards, parts, strict=True):
        again = index(settings, encoder, reader=reader, shard=shard)
        assert again.up_to_date and (again.unchanged, again.total) == (len(part), len(every))
    assert index(settings, encoder, reader=reader).up_to_date  # unsharded: the same index
    for shard in (Shard(0, 2), Shard(1, 2)):  # another N finds every entry stored
        assert index(settings, encoder, reader=reader, shard=shard).up_to_date


def test_a_shards_refresh_removes_only_its_own_vanished_entries(
    tmp_path: Path, encoder: DualEncoder
) -> None:
    settings = coco_settings(tmp_path)
    made = make_mini_coco(settings.coco_root, {"val2014": 40})
    one, two = Shard(0, 2), Shard(1, 2)
    mine = [m for m in made if one.holds(str(m.id))]
    theirs = [m for m in made if two.holds(str(m.id))]
    for shard in (one, two):
        index(settings, encoder, splits=("val2014",), shard=shard, with_captions=True)
    captions_name = f"{settings.collection}_captions"

    def captioned() -> set[str]:
        store = Database(settings).open(
            captions_name, CaptionRecord, model=settings.clip_model, dim=encoder.dim
        )
        return {c.image_id for c in store}

    gone = [mine[0], theirs[0]]  # a picture of each shard vanishes
    for image in gone:
        image.path.unlink()
    summary = index(settings, encoder, splits=("val2014",), shard=one)
    assert (summary.removed, summary.captions_removed) == (1, len(CAPTION_TEMPLATES))
    assert summary.missing == [str(mine[0].path.resolve())]  # not the other shard's
    assert report_path(settings, one).read_text().count("missing on disk") == 1
    stored = {r.id for r in images_store(settings, encoder)}
    assert str(mine[0].id) not in stored and str(theirs[0].id) in stored  # theirs: untouched
    assert str(theirs[0].id) in captioned()
    assert index(settings, encoder, splits=("val2014",), shard=two).removed == 1

    # The >10% guard counts within the shard: 3 of ~19 is too many for shard 0 alone,
    # even though it is under 10% of the whole index.
    vanishing = mine[1:4]
    assert MAX_UNCONFIRMED_REMOVAL * (len(mine) - 1) < 3
    assert MAX_UNCONFIRMED_REMOVAL * (len(made) - 2) >= 3
    for image in vanishing:
        image.path.unlink()
    with pytest.raises(UnsafeRemoval) as refused:
        index(settings, encoder, splits=("val2014",), shard=one)
    assert f"refusing to remove 3 of the {len(mine) - 1} stored entries" in str(refused.value)
    assert "shard 0/2" in str(refused.value)
    pruned = index(settings, encoder, splits=("val2014",), shard=one, prune=True)
    assert (pruned.removed, pruned.total) == (3, len(made) - 5)
    assert captioned() == {str(m.id) for m in made if m not in gone and m not in vanishing}


def coco_shard_categories(per_split: dict[str, int]) -> dict[str, list[int]]:
    """Categories of a mini COCO (make_mini_coco's `categories`) that tell the shards of 2
    apart: the pictures of shard 0 hold a "dog", those of shard 1 a "cat"."""
    ids = [FIRST_ID[split] + i * 7 for split, count in per_split.items() for i in range(count)]
    return {
        name: [n for n, id_ in enumerate(ids) if shard_of(str(id_), 2) == shard]
        for shard, name in enumerate(("dog", "cat"))
    }


def test_two_shard_builders_at_once_on_one_server_store_exactly_the_union(
    tmp_path: Path, encoder: DualEncoder, chroma_server: ChromaServer
) -> None:
    settings = coco_server_settings(tmp_path, chroma_server, "sharded_on_server")
    per_split = {"train2014": 24, "val2014": 16}
    made = make_mini_coco(
        settings.coco_root, per_split, size=(64, 48), categories=coco_shard_categories(per_split)
    )
    shards = [Shard(0, 2), Shard(1, 2)]
    parts = [{str(m.id) for m in made if shard.holds(str(m.id))} for shard in shards]
    args = ["--batch-size", "4", "--workers", "1", "--no-progress", "--with-captions"]

    def both_at_once() -> list[str]:
        procs = [builder(settings, *args, "--shard", str(shard)) for shard in shards]
        outs = []
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err
            outs.append(out)
        return outs

    outs = both_at_once()
    for shard, part, out in zip(shards, parts, outs, strict=True):
        source = f"COCO2014 train2014+val2014 in {settings.coco_root.resolve()}, shard {shard}"
        assert out.startswith(f"{source} → collection 'sharded_on_server'\n")
        assert f"\nindexed {len(part)} pictures\n" in out

    store = images_store(settings, encoder)
    ids = [r.id for r in store]
    assert len(ids) == len(set(ids)) == store.count() == len(made)  # no duplicates, none lost
    assert set(ids) == {str(m.id) for m in made}
    coco = settings.coco_root.resolve()
    assert recorded_roots(settings) == {str(coco / "train2014"), str(coco / "val2014")}
    assert set(store.categories()) == {"cat", "dog"}  # each shard recorded its own
    captions = Database(settings).open(
        "sharded_on_server_captions", CaptionRecord, model=settings.clip_model, dim=encoder.dim
    )
    caption_ids = [c.id for c in captions]
    assert len(caption_ids) == len(set(caption_ids)) == len(made) * len(CAPTION_TEMPLATES)

    for part, out in zip(parts, both_at_once(), strict=True):  # a rerun of each: a no-op
        assert f"index is up to date: {len(part)} pictures unchanged, nothing to do" in out
    assert store.count() == len(made)


# --- a build that did not finish is known, and finished by the next run (issue 23) -----------


def test_an_interrupted_build_is_recorded_incomplete_until_a_rerun_finishes_it(
    tmp_path: Path, encoder: DualEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"val2014": 12})
    source = f"COCO2014 val2014 in {settings.coco_root.resolve()}"
    upsert, calls = VectorStore.upsert, []

    def upsert_then_ctrl_c(store: VectorStore, records: list, vectors: np.ndarray) -> None:
        calls.append(len(records))
        if len(calls) > 1:  # Ctrl-C as the second write begins
            raise KeyboardInterrupt
        upsert(store, records, vectors)

    with monkeypatch.context() as patched:
        patched.setattr(VectorStore, "upsert", upsert_then_ctrl_c)
        stopped = index(settings, encoder, splits=("val2014",), batch_size=1)
    assert stopped.interrupted and stopped.indexed == WRITE_BATCHES == 8
    info = Database(settings).info(settings.collection)
    assert info is not None and info.count == 8
    [build] = info.incomplete
    assert (build.source, build.target, build.done(info.count)) == (source, 12, 8)

    finished = index(settings, encoder, splits=("val2014",), batch_size=4)
    assert (finished.indexed, finished.unchanged) == (4, 8)
    info = Database(settings).info(settings.collection)
    assert info is not None and info.incomplete == ()
    assert [(b.source, b.target, b.complete) for b in info.builds] == [(source, 12, True)]


def test_a_build_record_counts_only_its_own_source(tmp_path: Path, encoder: DualEncoder) -> None:
    """Two sources in one collection: each has its record, and how far an interrupted one got
    leaves the other source's pictures out."""
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"val2014": 5})
    folder = tmp_path / "photos"
    folder_of(folder, 3)
    index(settings, encoder, reader=FolderReader(folder))

    def ctrl_c(*args: object) -> None:
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr("core.indexing.build.record_roots", ctrl_c)
        assert index(settings, encoder, splits=("val2014",)).interrupted
    info = Database(settings).info(settings.collection)
    assert info is not None and info.count == 3
    [coco] = info.incomplete
    assert (coco.target, coco.others, coco.done(info.count)) == (5, 3, 0)
    assert [b.complete for b in info.builds] == [False, True]  # COCO..., folder...
