"""A synthetic mini COCO2014: the real folder names, file names and annotation JSON layout,
with pictures of coloured shapes (tests/fixtures/shapes.py) and captions that describe them."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.shapes import LABELS, caption, draw

CAPTION_TEMPLATES = (
    "{}",
    "a picture of {}",
    "{} on a grey background",
    "there is {} in the middle",
    "a photo showing {}",
)
FIRST_ID = {"train2014": 100_000, "val2014": 500_000}


@dataclass(frozen=True)
class MiniImage:
    id: int
    split: str
    path: Path
    color: str
    shape: str


def coco_file_name(split: str, image_id: int) -> str:
    return f"COCO_{split}_{image_id:012d}.jpg"


def make_mini_coco(
    root: Path,
    per_split: dict[str, int] | None = None,
    *,
    seed: int = 0,
    size: tuple[int, int] = (96, 72),
    categories: dict[str, list[int]] | None = None,
) -> list[MiniImage]:
    """Write a mini COCO2014 under `root` and return what it holds.

    Labels cycle through the 12 colour × shape combinations, so every combination has
    the same number of pictures (5 each for 60 pictures). With `categories` (category name
    → positions of the pictures, counted over all splits, that hold one), each split also
    gets an `instances_<split>.json`; without it there is none.
    """
    per_split = per_split or {"train2014": 40, "val2014": 20}
    rng = random.Random(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    made: list[MiniImage] = []
    n = 0
    for split, count in per_split.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            color, shape = LABELS[n % len(LABELS)]
            n += 1
            image_id = FIRST_ID[split] + i * 7  # sparse ids, like the real ones
            name = coco_file_name(split, image_id)
            picture = draw(color, shape, width=size[0], height=size[1], rng=rng)
            picture.save(folder / name, quality=90)
            images.append(
                {
                    "license": 1,
                    "file_name": name,
                    "coco_url": f"http://images.cocodataset.org/{split}/{name}",
                    "height": size[1],
                    "width": size[0],
                    "date_captured": "2013-11-14 16:28:13",
                    "flickr_url": "http://farm.example/none.jpg",
                    "id": image_id,
                }
            )
            for template in CAPTION_TEMPLATES:
                annotations.append(
                    {
                        "image_id": image_id,
                        "id": len(annotations) + 1 + FIRST_ID[split] * 10,
                        "caption": template.format(caption(color, shape)),
                    }
                )
            made.append(MiniImage(image_id, split, folder / name, color, shape))
        rng.shuffle(annotations)  # the real file does not group captions by image
        document = {
            "info": {"description": "mini COCO 2014 for tests", "year": 2014},
            "images": images,
            "licenses": [{"id": 1, "name": "test", "url": ""}],
            "annotations": annotations,
        }
        (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(document))
    for split in per_split if categories is not None else ():
        _write_instances(root, split, made, categories)
    return made


def _write_instances(
    root: Path, split: str, made: list[MiniImage], categories: dict[str, list[int]]
) -> None:
    """`instances_<split>.json` in COCO's layout: categories, and one object annotation per
    (picture, category) for the pictures of `split`."""
    ids = {name: 100 + n for n, name in enumerate(sorted(categories))}
    annotations = [
        {"id": len(made) * 1000 + n, "image_id": made[i].id, "category_id": ids[name], "bbox": []}
        for n, (name, positions) in enumerate(sorted(categories.items()))
        for i in positions
        if made[i].split == split
    ]
    document = {
        "info": {"description": "mini COCO 2014 instances for tests"},
        "categories": [{"id": i, "name": name, "supercategory": "x"} for name, i in ids.items()],
        "annotations": annotations,
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))
