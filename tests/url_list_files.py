"""Pictures and list files for the URL-list tests (test_url_lists.py, test_url_downloads.py)."""

from __future__ import annotations

import io
import random
from pathlib import Path

from tests.fixtures.shapes import draw


def picture(color: str, shape: str, fmt: str = "JPEG", seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    draw(color, shape, rng=random.Random(seed)).save(buffer, fmt)
    return buffer.getvalue()


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{c}\t{u}\n" for c, u in rows), encoding="utf-8")
    return path
