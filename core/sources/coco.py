"""COCO2014 as distributed, as `ImageRecord`s: `<root>/annotations/captions_<split>.json`
and `<root>/<split>/COCO_<split>_<12-digit id>.jpg`. The id of a record is the COCO image
id; its captions and categories come from the annotation files. A missing or malformed
annotation file is a `DatasetError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from core.errors import DatasetError
from core.json_files import read_json
from core.sources.scan import Scan
from core.sources.units import plural
from core.store.records import ImageRecord

log = logging.getLogger(__name__)

COCO_SPLITS = ("train2014", "val2014")
COCO_PICTURES = {"train2014": 82_783, "val2014": 40_504}
"""How many pictures each split's official zip holds."""


class CocoReader:
    """COCO2014 captions and images, for one or both splits."""

    def __init__(self, root: Path, splits: Iterable[str] = COCO_SPLITS) -> None:
        self.root = Path(root).expanduser().resolve()
        self.splits = tuple(splits)
        unknown = set(self.splits) - set(COCO_SPLITS)
        if unknown:
            raise DatasetError(f"unknown COCO split(s) {sorted(unknown)}: use {COCO_SPLITS}")
        self.description = f"COCO2014 {'+'.join(self.splits)} in {self.root}"

    @property
    def roots(self) -> tuple[str, ...]:
        """`<root>/<split>` of each split, resolved: not the whole root, not annotations/."""
        return tuple(str((self.root / split).resolve()) for split in self.splits)

    def owns(self, split: str) -> bool:
        return split in self.splits

    def scan(self) -> Scan:
        scan = Scan()
        for split in self.splits:
            images = self.root / split
            entries = _read_coco_annotations(self.root / "annotations" / f"captions_{split}.json")
            categories = read_coco_categories(self.root / "annotations" / f"instances_{split}.json")
            if entries and not images.is_dir():
                raise DatasetError(
                    f"image folder {images} not found: unzip {split}.zip into {self.root}"
                )
            for image_id, file_name, width, height, captions in entries:
                record = ImageRecord(
                    id=str(image_id),
                    path=str(images / file_name),
                    split=split,
                    width=width,
                    height=height,
                    captions=captions,
                    categories=categories.get(image_id, ()),
                )
                scan.add(record)
        scan.records.sort(key=lambda r: int(r.id))
        return scan


def _read_coco_annotations(
    path: Path,
) -> list[tuple[int, str, int, int, tuple[str, ...]]]:
    """(image id, file name, width, height, captions) per image of a COCO captions file."""
    if not path.is_file():
        raise DatasetError(
            f"annotation file {path} not found: download annotations_trainval2014.zip "
            f"and unzip it into {path.parent.parent} (see README, 'Get COCO2014')"
        )
    data = read_json(
        path, "annotation file", DatasetError, hint="; it may be truncated, download it again"
    )
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"annotation file {path} has no 'images' list: is it a COCO file?")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise DatasetError(f"annotation file {path}: 'annotations' is not a list")

    captions: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for n, annotation in enumerate(annotations):
        try:
            image_id, text = int(annotation["image_id"]), str(annotation["caption"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                f"annotation file {path}: annotations[{n}] lacks a valid image_id or caption"
            ) from None
        text = " ".join(text.split())
        if text:
            captions[image_id].append((int(annotation.get("id", n)), text))

    entries = []
    for n, image in enumerate(data["images"]):
        try:
            image_id, file_name = int(image["id"]), str(image["file_name"])
            width, height = int(image.get("width", 0)), int(image.get("height", 0))
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                f"annotation file {path}: images[{n}] lacks a valid id or file_name"
            ) from None
        if Path(file_name).name != file_name:
            raise DatasetError(f"annotation file {path}: images[{n}] file_name {file_name!r}")
        ordered = tuple(text for _, text in sorted(captions.get(image_id, [])))
        entries.append((image_id, file_name, width, height, ordered))
    log.debug(
        "%s: %s, %s",
        path.name,
        plural(len(entries), "picture"),
        plural(len(annotations), "caption"),
    )
    return entries


def read_coco_categories(path: Path) -> dict[int, tuple[str, ...]]:
    """The category names of each image's objects, from a COCO instances file
    (`instances_<split>.json`: `categories` [{id, name}], `annotations` [{image_id,
    category_id}]), sorted per image. A missing file gives no categories (logged);
    a malformed one is a `DatasetError`."""
    if not path.is_file():
        log.info("%s not found: its pictures get no categories (#hashtags need it)", path)
        return {}
    data = read_json(path, "instances file", DatasetError)
    try:
        names = {int(c["id"]): " ".join(str(c["name"]).split()) for c in data["categories"]}
        objects: dict[int, set[str]] = defaultdict(set)
        for annotation in data["annotations"]:
            name = names.get(int(annotation["category_id"]))
            if name:
                objects[int(annotation["image_id"])].add(name)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise DatasetError(
            f"instances file {path} is not a COCO instances file (categories with id and "
            f"name, annotations with image_id and category_id): {err!r}"
        ) from None
    log.debug(
        "%s: %s over %s",
        path.name,
        plural(len(names), "category", "categories"),
        plural(len(objects), "picture"),
    )
    return {image_id: tuple(sorted(found)) for image_id, found in objects.items()}
