"""What `index_builder.py` says, read as a person reads it (issue 23): a count agrees with its
noun, each bad file is reported once, the timing breakdown only with `--verbose`, and
`--help` explains the flags that change what it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, make_settings, subprocess_env
from tests.fixtures.shapes import draw


def build(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    folder = tmp_path / "photos"
    if not folder.exists():
        folder.mkdir()
        draw("red", "circle").save(folder / "good.jpg")
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a picture after all")
    return subprocess.run(
        [sys.executable, str(ROOT / "index_builder.py"), "--folder", str(folder), *flags],
        env=subprocess_env(make_settings(tmp_path)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_one_good_and_one_bad_picture_read_right(tmp_path: Path) -> None:
    result = build(tmp_path, "--no-progress", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    assert "1 pictures" not in said and "1 picture to embed" not in said  # two to embed
    assert "2 pictures to embed: under a minute on a 2-core CPU" in said
    assert "\nindexed 1 picture · 1 bad\n" in result.stdout
    assert "\n1 picture in the index · " in result.stdout
    about_it = [line for line in said.splitlines() if "broken.jpg" in line]
    assert len(about_it) == 1, said  # in the summary, not also as a warning
    assert "  bad: " in result.stdout and "-bad-images.tsv" in result.stdout
    assert "per image:" not in said and "httpx" not in said


def test_verbose_adds_the_timing_breakdown_and_the_details(tmp_path: Path) -> None:
    result = build(tmp_path, "--no-progress", "--batch-size", "2", "-v")
    assert result.returncode == 0, result.stderr
    assert "per image: " in result.stderr and "decode_cpu" in result.stderr
    assert " DEBUG core.indexing.build: " in result.stderr  # time, level and logger


def test_help_explains_verbose_and_check(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "index_builder.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    text = " ".join(result.stdout.split())
    assert "-v, --verbose" in text and "where the time per picture went" in text
    assert "--check only check, in seconds, what the build needs" in text
