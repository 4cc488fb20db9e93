"""IndexedFiles: only regular, bounded files under the indexed roots are read, and a refused
record is logged once."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from core.indexed_files import IndexedFiles, RefusedFile
from tests.bot_harness import jpeg


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "ok.jpg").write_bytes(jpeg("red", "circle"))
    (outside / "secret.jpg").write_bytes(jpeg("blue", "square"))
    return root, outside


def guard(*roots: Path, max_bytes: int = 1024 * 1024) -> IndexedFiles:
    return IndexedFiles(lambda: tuple(str(r) for r in roots), max_bytes=max_bytes)


def test_a_file_under_a_root_is_read(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    files = guard(root)
    assert files.read("1", str(root / "ok.jpg")) == (root / "ok.jpg").read_bytes()
    assert files.allowed("1", str(root / "ok.jpg"))


def test_a_root_given_through_a_symlink_still_matches(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    link = root.parent / "link-to-root"
    link.symlink_to(root)
    assert guard(link).allowed("1", str(root / "ok.jpg"))


@pytest.mark.parametrize("kind", ["outside", "symlink-out", "sibling-prefix", "dotdot"])
def test_paths_leaving_the_roots_are_refused(layout: tuple[Path, Path], kind: str) -> None:
    root, outside = layout
    if kind == "outside":
        path = outside / "secret.jpg"
    elif kind == "symlink-out":
        path = root / "innocent.jpg"
        path.symlink_to(outside / "secret.jpg")
    elif kind == "sibling-prefix":  # /x/root-evil is not under /x/root
        evil = root.parent / (root.name + "-evil")
        evil.mkdir()
        path = evil / "a.jpg"
        path.write_bytes(jpeg("red", "circle"))
    else:
        path = root / ".." / "outside" / "secret.jpg"
    files = guard(root)
    assert "outside the folders" in (files.refusal(str(path)) or "")
    with pytest.raises(RefusedFile):
        files.read("9", str(path))


def test_devices_fifos_and_directories_are_refused_without_reading(
    layout: tuple[Path, Path],
) -> None:
    root, _ = layout
    fifo = root / "pipe.jpg"
    os.mkfifo(fifo)
    (root / "dir.jpg").mkdir()
    files = guard(root, Path("/dev"))
    for path in (fifo, root / "dir.jpg", Path("/dev/zero")):
        assert files.refusal(str(path)) == "it is not a regular file"
        result: list[object] = []
        reader = threading.Thread(target=_try_read, args=(files, path, result))
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), f"reading {path} blocked"
        assert isinstance(result[0], RefusedFile)


def _try_read(files: IndexedFiles, path: Path, result: list[object]) -> None:
    try:
        result.append(files.read("x", str(path)))
    except RefusedFile as err:
        result.append(err)


def test_a_huge_file_is_refused_before_any_byte_is_read(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    huge = root / "huge.jpg"
    with open(huge, "wb") as handle:
        handle.truncate(1536 * 1024 * 1024)  # 1.5 GB, sparse: costs no disk
    files = guard(root, max_bytes=50 * 1024 * 1024)
    assert "too big" in (files.refusal(str(huge)) or "")
    with pytest.raises(RefusedFile, match="too big"):
        files.read("7", str(huge))


def test_no_recorded_roots_refuses_everything(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    assert not guard().allowed("1", str(root / "ok.jpg"))


def test_a_refused_record_is_logged_once(
    layout: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    root, outside = layout
    files = guard(root)
    with caplog.at_level(logging.WARNING, logger="core.indexed_files"):
        for _ in range(5):
            assert not files.allowed("42", str(outside / "secret.jpg"))
    lines = [r.getMessage() for r in caplog.records if "never sent" in r.getMessage()]
    assert len(lines) == 1 and "42" in lines[0]


def test_roots_are_reread_after_their_ttl(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    now = [0.0]
    recorded = [str(root)]
    files = IndexedFiles(lambda: tuple(recorded), clock=lambda: now[0])
    assert not files.allowed("s", str(outside / "secret.jpg"))
    recorded.append(str(outside))  # a builder indexed a second folder
    now[0] += 60
    assert files.allowed("s", str(outside / "secret.jpg"))
