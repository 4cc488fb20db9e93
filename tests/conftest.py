"""Shared test fixtures. Tests never reach a hub or any address but 127.0.0.1."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["ANONYMIZED_TELEMETRY"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.config import Settings, settings_env
from tests.chroma_run import ChromaServer, running_chroma

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TINY_CLIP = FIXTURES / "tiny_clip"
TINY_SIGLIP = FIXTURES / "tiny_siglip"
TINY_BLIP2 = FIXTURES / "tiny_blip2"

SETTING_VARS = [name.upper() for name in Settings.model_fields]


@pytest.fixture(autouse=True)
def _clean_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's own settings."""
    for name in SETTING_VARS:
        monkeypatch.delenv(name, raising=False)


def in_hf_cache(model: str) -> bool:
    """Whether a Hugging Face model is in the local cache (tests of real models need it)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model, "config.json"), str)


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a test: the fixture models, a store in `tmp_path`, no `.env`.

    DUPLICATE_COSINE is 0.9999 (only copies of one picture are near-duplicates): the fixture
    CLIP's 32-d space puts distinct pictures of one colour and shape at cosine ~0.99, where
    the real CLIP's default of 0.95 would fold each class into one hit."""
    values: dict[str, object] = {
        "duplicate_cosine": 0.9999,
        "clip_model": str(TINY_CLIP),
        "vqa_model": str(TINY_BLIP2),
        "chroma_path": tmp_path / "chroma",
        "collection": "test_images",
        "device": "cpu",
        "dtype": "float32",
        "encoder_runtime": "torch",  # ENCODER_RUNTIME=auto exports and measures: its own tests
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def subprocess_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment for running an entry point as a subprocess with `settings`."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_VARS}
    env.update(settings_env(settings))
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path):
    """`python -m core ...` in this process (fast), with `settings` in the environment."""
    from core.__main__ import main as cli_main

    def run(settings: Settings, *args: str) -> CliResult:
        monkeypatch.chdir(tmp_path)
        for name, value in settings_env(settings).items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = cli_main(list(args))
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """A real Chroma server (`chroma run`) on 127.0.0.1, stopped after the session."""
    path = tmp_path_factory.mktemp("chroma-server")
    with running_chroma(path / "data", path / "server.log") as server:
        yield server


@dataclass(frozen=True)
class ShapeIndex:
    """A 60-picture synthetic index built with a fixture model (5 of each colour × shape)."""

    settings: Settings
    images: list  # list[tests.mini_coco.MiniImage]


@pytest.fixture(scope="session")
def shape_index(tmp_path_factory: pytest.TempPathFactory) -> ShapeIndex:
    """The shapes indexed with the tiny CLIP."""
    return build_shape_index(tmp_path_factory.mktemp("shape-index"), TINY_CLIP, "shapes")


@pytest.fixture(scope="session")
def siglip_shape_index(tmp_path_factory: pytest.TempPathFactory) -> ShapeIndex:
    """The same shapes indexed with the tiny SigLIP."""
    root = tmp_path_factory.mktemp("siglip-shape-index")
    return build_shape_index(root, TINY_SIGLIP, "shapes_siglip")


def build_shape_index(root: Path, model: Path, collection: str) -> ShapeIndex:
    from core.images import load_image
    from core.models.encoder import DualEncoder
    from core.store.database import Database
    from core.store.records import ImageRecord
    from tests.mini_coco import make_mini_coco

    images = make_mini_coco(root / "coco", {"train2014": 40, "val2014": 20}, seed=11)
    settings = make_settings(
        root, clip_model=str(model), collection=collection, coco_root=root / "coco"
    )
    encoder = DualEncoder(settings.clip_model, device="cpu", dtype="float32")
    vectors = encoder.embed_images([load_image(image.path) for image in images])
    records = [
        ImageRecord(
            id=str(image.id),
            path=str(image.path),
            split=image.split,
            captions=(f"a {image.color} {image.shape}", "another caption"),
        )
        for image in images
    ]
    store = Database(settings).open(
        settings.collection, ImageRecord, model=settings.clip_model, dim=encoder.dim, create=True
    )
    store.upsert(records, vectors)
    return ShapeIndex(settings, images)
