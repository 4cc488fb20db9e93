"""Any folder of pictures, recursively, as `ImageRecord`s without captions: the id is derived
from the folder's real path and the picture's path relative to it, so two folders never
share an id (and never a COCO id, which is a plain number)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from core.errors import DatasetError
from core.sources.scan import IMAGE_EXTENSIONS, Scan
from core.store.records import ImageRecord

FOLDER_SPLIT_PREFIX = "folder:"


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
