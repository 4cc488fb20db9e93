from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from core.errors import DatasetError
from core.sources.coco import CocoReader
from core.sources.folders import FolderReader, folder_image_id
from tests.mini_coco import CAPTION_TEMPLATES, make_mini_coco


def test_coco_reader_reads_the_real_layout(tmp_path: Path) -> None:
    made = make_mini_coco(tmp_path, {"train2014": 6, "val2014": 4})
    scan = CocoReader(tmp_path).scan()
    assert scan.missing == []
    assert [r.id for r in scan.records] == sorted((str(m.id) for m in made), key=int)
    by_id = {r.id: r for r in scan.records}
    for image in made:
        record = by_id[str(image.id)]
        assert record.path == str(image.path.resolve())
        assert record.split == image.split
        assert (record.width, record.height) == (96, 72)
        assert len(record.captions) == len(CAPTION_TEMPLATES)
        assert record.captions[0] == f"a {image.color} {image.shape}"  # in annotation-id order
        assert record.file_size == image.path.stat().st_size
        assert record.mtime_ns == image.path.stat().st_mtime_ns


def test_one_split_only(tmp_path: Path) -> None:
    make_mini_coco(tmp_path, {"train2014": 3, "val2014": 2})
    reader = CocoReader(tmp_path, ["val2014"])
    assert {r.split for r in reader.scan().records} == {"val2014"}
    assert reader.owns("val2014") and not reader.owns("train2014")


def test_missing_images_are_counted_not_fatal(tmp_path: Path) -> None:
    made = make_mini_coco(tmp_path, {"val2014": 5})
    made[1].path.unlink()
    made[3].path.unlink()
    scan = CocoReader(tmp_path, ["val2014"]).scan()
    assert len(scan.records) == 3
    assert sorted(scan.missing) == sorted(str(made[i].path.resolve()) for i in (1, 3))


def test_missing_annotation_file_names_it(tmp_path: Path) -> None:
    make_mini_coco(tmp_path, {"val2014": 2})
    with pytest.raises(DatasetError, match=r"captions_train2014\.json not found.*annotations_"):
        CocoReader(tmp_path).scan()


def test_missing_image_folder_is_an_error(tmp_path: Path) -> None:
    made = make_mini_coco(tmp_path, {"val2014": 2})
    for image in made:
        image.path.unlink()
    (tmp_path / "val2014").rmdir()
    with pytest.raises(DatasetError, match=r"image folder .*val2014 not found"):
        CocoReader(tmp_path, ["val2014"]).scan()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"images": [{"id": 1, "file_name": "a.jpg"}', "not valid JSON .*line 1"),
        ("[1, 2, 3]", "no 'images' list"),
        ('{"annotations": []}', "no 'images' list"),
        ('{"images": [{"file_name": "a.jpg"}], "annotations": []}', r"images\[0\] lacks"),
        ('{"images": [], "annotations": [{"caption": "x"}]}', r"annotations\[0\] lacks"),
        ('{"images": [], "annotations": {"a": 1}}', "'annotations' is not a list"),
        ('{"images": [{"id": 1, "file_name": "../x.jpg"}]}', "file_name '../x.jpg'"),
    ],
)
def test_malformed_annotation_file_is_explained(tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2014").mkdir()
    path = tmp_path / "annotations" / "captions_val2014.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=problem) as caught:
        CocoReader(tmp_path, ["val2014"]).scan()
    assert "captions_val2014.json" in str(caught.value)


def test_captions_are_cleaned_and_optional(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2014").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val2014" / "x.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "val2014" / "y.jpg")
    document = {
        "images": [{"id": 2, "file_name": "x.jpg"}, {"id": 3, "file_name": "y.jpg"}],
        "annotations": [
            {"id": 9, "image_id": 2, "caption": "  A dog\non a   beach.\n"},
            {"id": 8, "image_id": 2, "caption": "   "},
        ],
    }
    (tmp_path / "annotations" / "captions_val2014.json").write_text(json.dumps(document))
    records = CocoReader(tmp_path, ["val2014"]).scan().records
    assert [r.captions for r in records] == [("A dog on a beach.",), ()]


def test_unknown_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown COCO split"):
        CocoReader(tmp_path, ["test2015"])


def test_folder_reader(tmp_path: Path) -> None:
    (tmp_path / "trip" / "day1").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for name in ["trip/a.JPG", "trip/day1/b.png", "c.webp", ".hidden/d.jpg", "trip/.e.jpg"]:
        Image.new("RGB", (8, 8)).save(tmp_path / name, format="PNG")
    (tmp_path / "notes.txt").write_text("not a picture")
    reader = FolderReader(tmp_path)
    records = reader.scan().records
    relative = sorted(Path(r.path).relative_to(tmp_path).as_posix() for r in records)
    assert relative == ["c.webp", "trip/a.JPG", "trip/day1/b.png"]
    assert all(r.split == reader.split and reader.owns(r.split) for r in records)
    assert not reader.owns("val2014")
    ids = {Path(r.path).relative_to(tmp_path).as_posix(): r.id for r in records}
    assert ids["trip/a.JPG"] == folder_image_id(str(tmp_path.resolve()), "trip/a.JPG")
    assert len(set(ids.values())) == 3


def test_folder_ids_are_stable_and_unique_across_folders(tmp_path: Path) -> None:
    for folder in ("one", "two"):
        (tmp_path / folder / "sub").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "sub" / "a.png")
    one = FolderReader(tmp_path / "one").scan().records[0].id
    two = FolderReader(tmp_path / "two").scan().records[0].id
    assert one != two  # the same relative name in two folders is two pictures
    assert one == FolderReader(tmp_path / "one").scan().records[0].id
    assert re.fullmatch(r"f[0-9a-f]{16}", one) and re.fullmatch(r"f[0-9a-f]{16}", two)


def test_readers_name_their_real_image_folders(tmp_path: Path) -> None:
    make_mini_coco(tmp_path / "coco", {"train2014": 1, "val2014": 1})
    (tmp_path / "coco" / "val2014").rename(tmp_path / "elsewhere")
    (tmp_path / "coco" / "val2014").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "link").symlink_to(tmp_path / "coco")
    real = tmp_path.resolve()
    assert CocoReader(tmp_path / "link").roots == (
        str(real / "coco" / "train2014"),
        str(real / "elsewhere"),
    )
    assert CocoReader(tmp_path / "link", ["val2014"]).roots == (str(real / "elsewhere"),)
    assert FolderReader(tmp_path / "link" / "val2014").roots == (str(real / "elsewhere"),)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        FolderReader(tmp_path / "nope").scan()


def test_a_deeply_nested_annotation_file_is_a_dataset_error_naming_it(tmp_path: Path) -> None:
    make_mini_coco(tmp_path, {"val2014": 2})
    captions = tmp_path / "annotations" / "captions_val2014.json"
    captions.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        CocoReader(tmp_path, ["val2014"]).scan()
    assert str(caught.value).startswith(f"annotation file {captions} is nested too deeply")
    assert "\n" not in str(caught.value)
