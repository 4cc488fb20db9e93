from __future__ import annotations

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
from core.datasets import CocoReader, FolderReader
from core.errors import DatasetError, ModelMismatch
from core.images import load_image
from core.indexing import IndexSummary, report_path, run
from core.models.clip import ClipEncoder
from core.records import CaptionRecord, ImageRecord
from core.search import SearchService
from core.store import Database, VectorStore
from tests.conftest import ROOT, ChromaServer, make_settings, subprocess_env
from tests.fixtures.shapes import caption, draw
from tests.mini_coco import CAPTION_TEMPLATES, coco_file_name, make_mini_coco


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    """One fixture CLIP for the in-process runs (fp32: the vectors are compared exactly)."""
    encoder = ClipEncoder(
        str(ROOT / "tests" / "fixtures" / "tiny_clip"), device="cpu", dtype="float32"
    )
    encoder.load()
    return encoder


def index(settings: Settings, encoder: ClipEncoder, **kwargs) -> IndexSummary:
    reader = kwargs.pop("reader", None) or CocoReader(
        settings.coco_root, kwargs.pop("splits", ("train2014", "val2014"))
    )
    return run(settings, reader, encoder=encoder, progress=False, **kwargs)


def images_store(settings: Settings, encoder: ClipEncoder) -> VectorStore[ImageRecord]:
    return Database(settings).open(
        settings.collection, ImageRecord, model=settings.clip_model, dim=encoder.dim
    )


def coco_settings(tmp_path: Path, **overrides) -> Settings:
    return make_settings(tmp_path, coco_root=tmp_path / "coco", **overrides)


def test_full_build_stores_every_picture_with_its_record(
    tmp_path: Path, encoder: ClipEncoder
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


def test_built_index_is_searchable(tmp_path: Path, encoder: ClipEncoder) -> None:
    settings = coco_settings(tmp_path)
    made = make_mini_coco(settings.coco_root, {"val2014": 36})
    index(settings, encoder, splits=("val2014",))
    labels = {str(m.id): (m.color, m.shape) for m in made}
    hits = SearchService(encoder, images_store(settings, encoder)).by_text("a blue triangle", 3)
    assert [labels[h.id] for h in hits] == [("blue", "triangle")] * 3
    # The stored vectors are the encoder's, for the draft-decoded picture.
    image = made[0]
    stored = SearchService(encoder, images_store(settings, encoder)).by_image(
        load_image(image.path), 1
    )[0]
    assert stored.id == str(image.id) and stored.score > 0.98


def test_compiled_build_stores_the_same_vectors(tmp_path: Path, encoder: ClipEncoder) -> None:
    settings = coco_settings(tmp_path)
    made = make_mini_coco(settings.coco_root, {"val2014": 10})
    compiled = ClipEncoder(
        str(ROOT / "tests" / "fixtures" / "tiny_clip"), device="cpu", dtype="float32"
    )
    summary = index(settings, compiled, splits=("val2014",), compile_model=True, batch_size=4)
    assert summary.indexed == 10
    hit = SearchService(encoder, images_store(settings, encoder)).by_image(
        load_image(made[0].path), 1
    )[0]
    assert hit.id == str(made[0].id) and hit.score > 0.98


def test_rerun_with_nothing_changed_is_quick_and_says_so(
    tmp_path: Path, encoder: ClipEncoder
) -> None:
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"train2014": 12, "val2014": 6})
    index(settings, encoder)
    again = index(settings, encoder)
    assert again.up_to_date and (again.indexed, again.unchanged, again.total) == (0, 18, 18)


def test_limit_builds_a_subset_and_grows_it(tmp_path: Path, encoder: ClipEncoder) -> None:
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
    tmp_path: Path, encoder: ClipEncoder
) -> None:
    settings = coco_settings(tmp_path)
    made = make_mini_coco(settings.coco_root, {"train2014": 12, "val2014": 6})
    index(settings, encoder)
    store = images_store(settings, encoder)

    gone = [made[0], made[13]]
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
    assert (summary.indexed, summary.removed, summary.unchanged) == (3, 2, 15)
    assert sorted(summary.missing) == sorted(str(g.path.resolve()) for g in gone)
    ids = {r.id for r in store}
    assert ids == {str(m.id) for m in made if m not in gone} | {str(i) for i in new_ids}
    hit = SearchService(encoder, store).by_image(load_image(changed.path), 1)[0]
    assert hit.id == str(changed.id) and hit.score > 0.98  # re-embedded from the new picture
    assert report_path(settings).read_text().count("missing on disk") == 2


def test_refreshing_one_split_leaves_the_other_alone(tmp_path: Path, encoder: ClipEncoder) -> None:
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


def test_bad_files_are_reported_and_skipped(tmp_path: Path, encoder: ClipEncoder) -> None:
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


def test_folder_reader_build_and_refresh(tmp_path: Path, encoder: ClipEncoder) -> None:
    settings = make_settings(tmp_path)
    folder = tmp_path / "photos"
    (folder / "holiday").mkdir(parents=True)
    draw("red", "square", width=80, height=80).save(folder / "holiday" / "a.jpg")
    draw("blue", "circle", width=80, height=80).save(folder / "b.png")
    first = index(settings, encoder, reader=FolderReader(folder))
    assert (first.indexed, first.total) == (2, 2)
    (folder / "b.png").unlink()
    draw("green", "triangle", width=80, height=80).save(folder / "c.webp")
    second = index(settings, encoder, reader=FolderReader(folder))
    assert (second.indexed, second.removed, second.total) == (1, 1, 2)
    hit = SearchService(encoder, images_store(settings, encoder)).by_text("a green triangle", 1)[0]
    assert hit.path.endswith("c.webp") and hit.captions == ()


def test_captions_collection(tmp_path: Path, encoder: ClipEncoder) -> None:
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


def test_rebuild_starts_from_scratch(tmp_path: Path, encoder: ClipEncoder) -> None:
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"val2014": 6})
    index(settings, encoder, splits=("val2014",))
    summary = index(settings, encoder, rebuild=True, splits=("val2014",))
    assert (summary.indexed, summary.unchanged, summary.total) == (6, 0, 6)


def test_another_model_is_refused_unless_rebuilding(tmp_path: Path, encoder: ClipEncoder) -> None:
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"val2014": 4})
    index(settings, encoder, splits=("val2014",))
    renamed = tmp_path / "renamed_clip"
    renamed.symlink_to(ROOT / "tests" / "fixtures" / "tiny_clip")
    other = coco_settings(tmp_path, clip_model=str(renamed))
    other_encoder = ClipEncoder(str(renamed), device="cpu", dtype="float32")
    with pytest.raises(ModelMismatch, match="--rebuild"):
        run(other, CocoReader(other.coco_root, ["val2014"]), encoder=other_encoder, progress=False)
    summary = run(
        other,
        CocoReader(other.coco_root, ["val2014"]),
        encoder=other_encoder,
        progress=False,
        rebuild=True,
    )
    assert summary.indexed == 4


def test_build_against_a_chroma_server(
    tmp_path: Path, encoder: ClipEncoder, chroma_server: ChromaServer
) -> None:
    settings = coco_settings(
        tmp_path,
        chroma_host=chroma_server.host,
        chroma_port=chroma_server.port,
        collection="built_on_server",
    )
    make_mini_coco(settings.coco_root, {"train2014": 12, "val2014": 12})
    summary = index(settings, encoder, batch_size=5)
    assert (summary.indexed, summary.total) == (24, 24)
    assert index(settings, encoder).up_to_date
    hits = SearchService.open(settings, encoder).by_text("a red circle", 2)
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
    assert "indexed 36 · unchanged 0 · removed 0 · bad 0 · missing 0" in out
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
    flags = ["--coco-root", "--split", "--folder", "--limit", "--batch-size", "--workers"]
    for flag in [*flags, "--rebuild", "--with-captions", "--compile"]:
        assert flag in text


def signal_mid_run(settings: Settings, sig: signal.Signals, total: int) -> subprocess.Popen:
    """Start a build of `total` pictures and send it `sig` once 60 are embedded."""
    proc = builder(settings, "--batch-size", "4", "--workers", "1")
    progress = re.compile(rf"(\d+)/{total}")

    def watch() -> None:
        buffer = ""
        while (chunk := proc.stderr.read(1)) != "":
            buffer += chunk
            if chunk in "\r\n":
                done = [int(n) for n in progress.findall(buffer)]
                buffer = ""
                if done and done[-1] >= 60:
                    proc.send_signal(sig)
                    return

    watcher = threading.Thread(target=watch)
    watcher.start()
    watcher.join(timeout=240)
    proc.wait(timeout=60)
    return proc


def test_killed_mid_run_then_rerun_completes_exactly_once(
    tmp_path: Path, encoder: ClipEncoder
) -> None:
    settings = coco_settings(tmp_path)
    total = 400
    make_mini_coco(settings.coco_root, {"train2014": 300, "val2014": 100}, size=(64, 48))
    proc = signal_mid_run(settings, signal.SIGKILL, total)
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
    vectors_ok = SearchService(encoder, images_store(settings, encoder)).by_text("a red circle", 5)
    assert len(vectors_ok) == 5 and np.isfinite([h.score for h in vectors_ok]).all()


def test_missing_annotations_in_process(tmp_path: Path, encoder: ClipEncoder) -> None:
    settings = coco_settings(tmp_path)
    with pytest.raises(DatasetError, match=r"annotations_trainval2014\.zip"):
        index(settings, encoder)


def test_ctrl_c_stops_cleanly_and_reports_what_was_stored(
    tmp_path: Path, encoder: ClipEncoder
) -> None:
    settings = coco_settings(tmp_path)
    make_mini_coco(settings.coco_root, {"train2014": 300, "val2014": 100}, size=(64, 48))
    proc = signal_mid_run(settings, signal.SIGINT, 400)
    assert proc.returncode == 130, "the build finished before it could be interrupted"
    out = proc.stdout.read()
    assert "interrupted: everything embedded so far is stored; rerun to continue" in out
    indexed = int(re.search(r"indexed ([\d,]+)", out).group(1).replace(",", ""))
    assert 0 < indexed == images_store(settings, encoder).count()
