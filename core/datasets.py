"""Readers: where the pictures to index are, as `ImageRecord`s.

- `CocoReader`: COCO2014 as distributed, `<root>/annotations/captions_<split>.json` and
  `<root>/<split>/COCO_<split>_<12-digit id>.jpg`. The id of a record is the COCO image id.
- `FolderReader`: any folder of pictures, recursively; the id is derived from the folder's
  real path and the picture's path relative to it, so two folders never share an id.

Every reader names its `roots`: the real paths (symlinks followed) of the folders its
pictures lie in. The builder records them in the collection, and the bot sends only files
under one of them.

A reader scans metadata only (JSON and file stats, never pixels). Files listed but missing
on disk are collected in `missing`, not fatal; a missing or malformed annotation file is a
`DatasetError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from core.errors import DatasetError
from core.json_files import read_json
from core.records import ImageRecord

log = logging.getLogger(__name__)

COCO_SPLITS = ("train2014", "val2014")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
FOLDER_SPLIT_PREFIX = "folder:"


@dataclass
class Scan:
    """What a reader found: records of files that exist, and records listed but missing."""

    records: list[ImageRecord] = field(default_factory=list)
    absent: list[ImageRecord] = field(default_factory=list)
    """Records whose file is missing on disk."""

    @property
    def missing(self) -> list[str]:
        """The paths of the records whose file is missing on disk."""
        return [record.path for record in self.absent]

    def add(self, record: ImageRecord) -> None:
        """Add `record` with its file's size and mtime, or to `absent` when there is none."""
        try:
            stat = os.stat(record.path)
        except OSError:
            self.absent.append(record)
            return
        self.records.append(replace(record, file_size=stat.st_size, mtime_ns=stat.st_mtime_ns))

    def only(self, keep: Callable[[str], bool]) -> Scan:
        """The records (present and absent) whose id `keep` accepts, in the same order."""
        return Scan([r for r in self.records if keep(r.id)], [r for r in self.absent if keep(r.id)])


class Reader(Protocol):
    """A source of pictures. `owns` tells which stored records belong to this source, so a
    refresh removes only its own vanished entries, never another split's or folder's."""

    description: str

    @property
    def roots(self) -> tuple[str, ...]:
        """Real paths of the folders the pictures lie in (what the bot may send from)."""
        ...

    def scan(self) -> Scan: ...

    def owns(self, split: str) -> bool: ...


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
    log.info("%s: %d images, %d captions", path.name, len(entries), len(annotations))
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
    log.info("%s: %d categories over %d images", path.name, len(names), len(objects))
    return {image_id: tuple(sorted(found)) for image_id, found in objects.items()}


class FolderReader:
    """Every picture under a folder (recursively, by extension), without captions."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.split = FOLDER_SPLIT_PREFIX + str(self.root)
        self.description = f"folder {self.root}"

    @property
    def roots(self) -> tuple[str, ...]:
        return (str(self.root),)

    def owns(self, split: str) -> bool:
        return split == self.split

    def scan(self) -> Scan:
        if not self.root.is_dir():
            raise DatasetError(f"folder {self.root} not found")
        scan = Scan()
        for directory, subdirs, files in os.walk(self.root):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                path = Path(directory) / name
                relative = path.relative_to(self.root).as_posix()
                record = ImageRecord(
                    id=folder_image_id(str(self.root), relative), path=str(path), split=self.split
                )
                scan.add(record)
        return scan


def folder_image_id(root: str, relative_path: str) -> str:
    """A stable id for a picture of a folder: "f" + 16 hex digits of the hash of the folder's
    real path and the picture's path relative to it. Unique across folders (a/x.jpg of one
    folder is not a/x.jpg of another); COCO ids are plain numbers, so the two never collide."""
    key = f"{root}\0{relative_path}".encode("utf-8", "surrogateescape")
    return "f" + hashlib.sha1(key).hexdigest()[:16]
