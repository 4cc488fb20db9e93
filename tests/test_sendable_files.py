"""SendableFiles and HostRoots: only regular, bounded files under the folders the host names
are read, opened race-free, and a refused record is logged once."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import pytest

from core.search.sendable_files import (
    ROOTS_TTL_S,
    HostRoots,
    RefusedFile,
    SendableFiles,
    record_roots,
    roots_file,
)
from tests.bot_harness import jpeg
from tests.conftest import make_settings


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "ok.jpg").write_bytes(jpeg("red", "circle"))
    (outside / "secret.jpg").write_bytes(jpeg("blue", "square"))
    return root, outside


def guard(*roots: Path, max_bytes: int = 1024 * 1024) -> SendableFiles:
    return SendableFiles(lambda: tuple(str(r) for r in roots), max_bytes=max_bytes)


def test_a_file_under_a_root_is_read_with_what_it_is(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    files = guard(root)
    read = files.read("1", str(root / "ok.jpg"))
    assert read.data == (root / "ok.jpg").read_bytes()
    info = (root / "ok.jpg").stat()
    assert read.identity.path == str(root / "ok.jpg")
    assert (read.identity.inode, read.identity.size) == (info.st_ino, info.st_size)
    assert files.identity("1", str(root / "ok.jpg")) == read.identity


@pytest.mark.parametrize(
    "kind", ["outside", "symlink-out", "symlink-in", "sibling-prefix", "dotdot", "relative"]
)
def test_paths_leaving_the_roots_or_through_links_are_refused(
    layout: tuple[Path, Path], kind: str
) -> None:
    root, outside = layout
    if kind == "outside":
        path = str(outside / "secret.jpg")
    elif kind == "symlink-out":
        path = str(root / "innocent.jpg")
        os.symlink(outside / "secret.jpg", path)
    elif kind == "symlink-in":  # links are never followed, even to a file under the root
        path = str(root / "alias.jpg")
        os.symlink(root / "ok.jpg", path)
    elif kind == "sibling-prefix":  # /x/root-evil is not under /x/root
        evil = root.parent / (root.name + "-evil")
        evil.mkdir()
        path = str(evil / "a.jpg")
        Path(path).write_bytes(jpeg("red", "circle"))
    elif kind == "dotdot":
        path = str(root / ".." / "outside" / "secret.jpg")
    else:
        path = "ok.jpg"
    files = guard(root)
    assert files.refusal(path) is not None
    with pytest.raises(RefusedFile):
        files.read("9", path)


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


def _try_read(files: SendableFiles, path: Path, result: list[object]) -> None:
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


def test_no_roots_refuses_everything(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    assert not guard().allowed("1", str(root / "ok.jpg"))


def test_a_refused_record_is_logged_once(
    layout: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    root, outside = layout
    files = guard(root)
    with caplog.at_level(logging.WARNING, logger="core.search.sendable_files"):
        for _ in range(5):
            assert not files.allowed("42", str(outside / "secret.jpg"))
    lines = [r.getMessage() for r in caplog.records if "never sent" in r.getMessage()]
    assert len(lines) == 1 and "42" in lines[0]


# --- the roots come from the host ---------------------------------------------------------


def test_the_roots_are_the_settings_and_the_builders_file(tmp_path: Path) -> None:
    real = tmp_path / "real-photos"
    real.mkdir()
    (tmp_path / "photos").symlink_to(real)  # a setting may name a folder through a link
    settings = make_settings(
        tmp_path,
        coco_root=tmp_path / "coco",
        data_dir=tmp_path / "data",
        picture_roots=(tmp_path / "photos",),
    )
    record_roots(settings, [str(tmp_path / "built")])
    assert set(HostRoots(settings)()) == {
        str(tmp_path / "coco" / "train2014"),
        str(tmp_path / "coco" / "val2014"),
        str(tmp_path / "data"),
        str(real),
        str(tmp_path / "built"),
    }
    assert roots_file(settings).stat().st_mode & 0o777 == 0o600


def test_the_roots_file_is_reread_after_its_ttl(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    now = [0.0]
    roots = HostRoots(settings, clock=lambda: now[0])
    assert str(tmp_path / "later") not in roots()
    record_roots(settings, [str(tmp_path / "later")])  # a builder indexed another folder
    now[0] += ROOTS_TTL_S + 1
    assert str(tmp_path / "later") in roots()


@pytest.mark.parametrize("problem", ["writable by others", "malformed", "a link"])
def test_a_roots_file_others_may_have_written_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, problem: str
) -> None:
    settings = make_settings(tmp_path)
    record_roots(settings, ["/"])
    path = roots_file(settings)
    if problem == "writable by others":
        path.chmod(0o666)
    elif problem == "malformed":
        path.write_text('{"roots": "/"}')
    else:
        elsewhere = tmp_path / "elsewhere.json"
        elsewhere.write_text(json.dumps({"roots": ["/"]}))
        path.unlink()
        path.symlink_to(elsewhere)
    now = [0.0]
    roots = HostRoots(settings, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="core.search.sendable_files"):
        for _ in range(3):
            assert "/" not in roots()
            now[0] += ROOTS_TTL_S + 1
    assert len([r for r in caplog.records if "roots file" in r.getMessage()]) == 1


def test_a_root_replaced_by_a_link_after_the_build_is_refused(
    tmp_path: Path, layout: tuple[Path, Path]
) -> None:
    root, outside = layout
    settings = make_settings(tmp_path)
    record_roots(settings, [str(root)])
    files = SendableFiles(HostRoots(settings))
    assert files.allowed("1", str(root / "ok.jpg"))
    (outside / "ok.jpg").write_bytes(jpeg("blue", "square", seed=3))
    root.rename(root.with_name("moved-away"))
    root.symlink_to(outside)  # the recorded root now leads elsewhere
    assert files.refusal(str(root / "ok.jpg")) == "a symbolic link lies on its path"
    with pytest.raises(RefusedFile):
        files.read("1", str(root / "ok.jpg"))


def test_a_folder_swapped_for_a_link_in_a_loop_never_leaks(
    tmp_path: Path, layout: tuple[Path, Path]
) -> None:
    """Between the check and the open, a folder on the path turns into a link out of the
    root and back, as fast as it can: every read is the indexed picture or refused."""
    root, outside = layout
    inside, aside, link = root / "sub", root / "sub-real", root / "sub-link"
    inside.mkdir()
    (inside / "pic.jpg").write_bytes(jpeg("red", "circle", seed=4))
    (outside / "pic.jpg").write_bytes(jpeg("green", "square", seed=5))
    link.symlink_to(outside)
    indexed, secret = (inside / "pic.jpg").read_bytes(), (outside / "pic.jpg").read_bytes()
    files = guard(root)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.rename(inside, aside)
            os.rename(link, inside)  # sub is now a link to the outside folder
            os.rename(inside, link)
            os.rename(aside, inside)

    swapper = threading.Thread(target=swap)
    swapper.start()
    outcomes = {"indexed": 0, "refused": 0}
    try:
        for _ in range(3000):
            try:
                data = files.read("p", str(inside / "pic.jpg")).data
            except RefusedFile:
                outcomes["refused"] += 1
                continue
            assert data != secret, "a file outside the root was read"
            assert data == indexed
            outcomes["indexed"] += 1
    finally:
        stop.set()
        swapper.join()
    assert outcomes["indexed"] and outcomes["refused"]  # both states were met
