"""Running the real bot (`python -m bot`, a subprocess) against the fake Telegram server."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from core.config import Settings
from core.indexing import BuildOptions, run
from core.sources.coco import CocoReader
from tests.chroma_run import stop_process
from tests.conftest import make_settings, subprocess_env
from tests.fake_telegram import FakeTelegram, Sent
from tests.fixtures.shapes import draw
from tests.mini_coco import MiniImage, make_mini_coco

START_TIMEOUT_S = 120


@dataclass
class RunningBot:
    tg: FakeTelegram
    proc: subprocess.Popen
    settings: Settings
    log_path: Path
    images: list[MiniImage]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def label_of_upload(self, data: bytes) -> tuple[str, str]:
        """(colour, shape) of the indexed picture whose bytes were uploaded."""
        for image in self.images:
            if image.path.exists() and image.path.read_bytes() == data:
                return image.color, image.shape
        raise AssertionError("the uploaded photo is none of the indexed pictures")

    def album_labels(self, sent: Sent) -> list[tuple[str, str]]:
        """(colour, shape) of each photo of an album, from the bytes Telegram stored."""
        return [self.label_of_upload(self.tg.file_bytes(fid)) for fid in sent.photo_file_ids]


def build_index(
    root: Path,
    per_split: dict[str, int],
    categories: dict[str, list[int]] | None = None,
    **overrides: object,
) -> tuple[Settings, list]:
    """A mini COCO (with instances files when `categories` is given) indexed for a bot."""
    settings = make_settings(root, coco_root=root / "coco", collection="bot_images", **overrides)
    images = make_mini_coco(settings.coco_root, per_split, seed=5, categories=categories)
    run(settings, CocoReader(settings.coco_root, list(per_split)), BuildOptions(progress=False))
    return settings, images


@contextmanager
def running_bot(
    settings: Settings, images: list, tg: FakeTelegram, **env: str
) -> Iterator[RunningBot]:
    """Start `python -m bot` against `tg`; wait until it polls; stop it afterwards."""
    log_path = settings.chroma_path.parent / f"bot-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot"],
            env=subprocess_env(settings, **tg.env(), **env),
            cwd=settings.chroma_path.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    bot = RunningBot(tg, proc, settings, log_path, images)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Application started" not in bot.log():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the bot did not start:\n{bot.log()}")
            time.sleep(0.2)
        yield bot
    finally:
        stop_process(proc)


def jpeg(color: str, shape: str, size: tuple[int, int] = (120, 90), seed: int = 1) -> bytes:
    import random

    buffer = io.BytesIO()
    draw(color, shape, width=size[0], height=size[1], rng=random.Random(seed)).save(buffer, "JPEG")
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
