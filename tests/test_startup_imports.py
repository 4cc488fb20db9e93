"""Commands that need no model start without importing torch or transformers (seconds each).

Each command runs as a real subprocess under `python -X importtime`, which names every module
it imports; the assertion is on what was imported, never on how long it took."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.store.database import Database
from core.store.records import ImageRecord
from tests.chroma_run import ChromaServer
from tests.conftest import ROOT, ShapeIndex, make_settings, subprocess_env
from tests.fake_telegram import FakeTelegram

HEAVY = ("torch", "transformers")
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", re.MULTILINE)


def imported(env: dict[str, str], cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess, set]:
    """Run `python -X importtime *args`; its result and the top-level names it imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    names = {name.split(".")[0] for name in IMPORTED.findall(result.stderr)}
    assert "argparse" in names, result.stderr[-2000:]  # importtime did report
    return result, names


def assert_light(result: subprocess.CompletedProcess, names: set, code: int = 0) -> None:
    assert result.returncode == code, result.stdout + result.stderr[-3000:]
    assert not names & set(HEAVY), sorted(names & set(HEAVY))


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "core", "--help"],
        ["-m", "core", "status", "--help"],
        ["-m", "core", "search", "--help"],
        ["-m", "core", "eval", "--help"],
        [str(ROOT / "index_builder.py"), "--help"],
        ["-m", "bot", "--help"],
    ],
    ids=lambda args: " ".join(Path(a).name for a in args),
)
def test_help_imports_no_model_library(tmp_path: Path, args: list[str]) -> None:
    result, names = imported(subprocess_env(make_settings(tmp_path)), tmp_path, *args)
    assert_light(result, names)
    assert "usage:" in result.stdout


def test_the_check_itself_sees_torch(tmp_path: Path) -> None:
    """The check is not blind: a command that loads a model is seen importing torch."""
    code = "import core.models.encoder"
    result, names = imported(subprocess_env(make_settings(tmp_path)), tmp_path, "-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"torch", "transformers"} <= names


def test_status_of_a_built_index_imports_no_model_library(shape_index: ShapeIndex) -> None:
    """`python -m core status` reads the store only; an embedded one straight from Chroma's
    SQLite file, without even importing chromadb (half a second)."""
    settings = shape_index.settings
    cwd = Path(settings.chroma_path).parent
    result, names = imported(subprocess_env(settings), cwd, "-m", "core", "status")
    assert_light(result, names)
    assert "chromadb" not in names and "numpy" not in names
    assert "60 pictures" in result.stdout


def test_status_of_a_missing_index_imports_no_model_library(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, collection="never_built")
    result, names = imported(subprocess_env(settings), tmp_path, "-m", "core", "status")
    assert_light(result, names, code=2)
    assert "empty" in result.stdout


def test_status_of_a_server_index_imports_no_chromadb(
    tmp_path: Path, chroma_server: ChromaServer
) -> None:
    """Against a server, status asks its HTTP API directly (two GETs)."""
    settings = make_settings(
        tmp_path, chroma_host="127.0.0.1", chroma_port=chroma_server.port, collection="on_server"
    )
    store = Database(settings).open(
        "on_server", ImageRecord, model=settings.clip_model, dim=32, create=True
    )
    store.upsert([ImageRecord(id="1", path="/x/1.jpg")], np.ones((1, 32), dtype=np.float32))
    result, names = imported(subprocess_env(settings), tmp_path, "-m", "core", "status")
    assert_light(result, names)
    assert "chromadb" not in names
    assert "on_server' in Chroma server http://127.0.0.1:" in result.stdout
    assert "1 picture," in result.stdout


def test_bot_check_imports_no_model_library(tmp_path: Path) -> None:
    with FakeTelegram(hide_button_messages=True) as tg:
        env = subprocess_env(make_settings(tmp_path), **tg.env())
        result, names = imported(env, tmp_path, "-m", "bot", "--check")
    assert_light(result, names)
    assert "Telegram accepted the token" in result.stderr


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_builder_lets_torchs_threads_sleep_unless_told_otherwise(
    tmp_path: Path, given: str | None, expected: str
) -> None:
    env = subprocess_env(make_settings(tmp_path))
    env.pop("OMP_WAIT_POLICY", None)
    if given:
        env["OMP_WAIT_POLICY"] = given
    script = (
        "import os, sys, index_builder\n"
        "try:\n    index_builder.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, os.environ['OMP_WAIT_POLICY'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # Set before torch (and its OpenMP runtime) is loaded, which is when it counts.
    assert result.stdout.splitlines()[-1] == f"False {expected}"
