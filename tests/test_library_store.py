"""core.library: the chats' libraries in one collection, every call scoped to one chat, with
records checked when read back (the store is untrusted) and the limits applied."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from core.errors import ModelMismatch
from core.library.records import LibraryRecord, is_library_id, library_id
from core.library.store import DAY_S, Library, LibraryLimits
from tests.conftest import make_settings

DIM = 8
A, B = -1001, 2002


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def record(chat: int, n: int, *, date: int | None = None) -> LibraryRecord:
    unique = f"AQAD{n:04d}"
    return LibraryRecord(
        id=library_id(chat, unique),
        chat_id=chat,
        message_id=n,
        sender_id=7,
        date=int(time.time()) if date is None else date,
        file_id=f"AgAC{n:04d}",
        file_unique_id=unique,
        caption=f"picture {n}",
    )


def open_library(tmp_path: Path, **limits: object) -> Library:
    settings = make_settings(tmp_path, **limits)
    return Library.open(settings, model="tiny", dim=DIM)


def test_ids_name_one_picture_of_one_chat() -> None:
    assert library_id(-100123, "AQADxyz_-") == "-100123:AQADxyz_-"
    assert is_library_id("-100123:AQADxyz_-") and is_library_id("5:AQAD")
    assert not is_library_id("391895") and not is_library_id("a3f9:AQAD")
    for bad in ("", "has space", "x" * 65, "../../etc", "a:b"):
        with pytest.raises(ValueError):
            library_id(1, bad)


@pytest.mark.parametrize(
    "metadata",
    [
        {"chat_id": B},  # the id says chat A
        {"chat_id": "-1001"},  # not an int
        {"chat_id": True},
        {"file_id": ""},
        {"file_id": 5},
        {"file_unique_id": "AQAD9999"},  # not the one in the id
    ],
)
def test_a_malformed_record_belongs_to_no_chat(metadata: dict) -> None:
    good = record(A, 1)
    assert LibraryRecord.from_metadata(good.id, good.to_metadata()) == good
    broken = LibraryRecord.from_metadata(good.id, {**good.to_metadata(), **metadata})
    assert broken.chat_id == 0


def test_a_chat_finds_only_its_own_pictures(tmp_path: Path) -> None:
    library = open_library(tmp_path)
    for n in range(4):
        assert library.add(record(A, n), vector(n)).stored
    library.add(record(B, 10), vector(0))  # B's copy of A's first picture's vector
    library.add(record(B, 11), vector(1))
    found = library.search(A, vector(0), 10)
    assert found[0].record.id == record(A, 0).id
    assert {m.record.chat_id for m in found} == {A} and len(found) == 4
    assert [m.record.chat_id for m in library.search(B, vector(0), 10)] == [B, B]
    assert library.search(3003, vector(0), 10) == []
    assert library.count(A) == 4 and library.count(B) == 2
    assert library.vector(B, record(A, 0).id) is None  # not B's
    assert library.vector(A, record(A, 0).id) is not None
    assert library.forget(B, [record(A, 0).id]) == 0 and library.count(A) == 4
    totals = library.totals()
    assert (totals.chats, totals.pictures) == (2, 6)


def test_a_forged_record_in_the_store_is_never_returned(tmp_path: Path) -> None:
    library = open_library(tmp_path)
    library.add(record(A, 0), vector(0))
    forged = record(B, 5)
    # Written straight into the store: chat A's id in its metadata, chat B's in its id.
    library.store.upsert([forged], vector(0)[None, :])
    library.store._collection.update(ids=[forged.id], metadatas=[{"chat_id": A}])
    assert [m.record.id for m in library.search(A, vector(0), 10)] == [record(A, 0).id]
    assert library.count(A) == 1 and library.clear(A) == 1
    assert library.store.count() == 1  # the forged one is no chat's: left alone


def test_duplicates_are_kept_once_and_the_oldest_go_first(tmp_path: Path) -> None:
    library = open_library(tmp_path, library_max_per_chat=3)
    now = int(time.time())
    assert library.add(record(A, 0, date=now - 50), vector(0)).stored
    assert not library.add(record(A, 0, date=now), vector(9)).stored
    for n in range(1, 4):
        added = library.add(record(A, n, date=now - 40 + n), vector(n))
    assert added.removed_oldest == 1
    assert library.get(A, "AQAD0000") is None and library.count(A) == 3
    assert library.clear(A) == 3 and library.count(A) == 0


def test_pictures_past_the_retention_are_neither_found_nor_kept(tmp_path: Path) -> None:
    library = open_library(tmp_path, library_retention_days=2)
    library.add(record(A, 0, date=int(time.time()) - 3 * DAY_S), vector(0))
    library.add(record(A, 1), vector(1))
    assert [m.record.id for m in library.search(A, vector(0), 10)] == [record(A, 1).id]
    assert library.count(A) == 1 and library.get(A, "AQAD0000") is None
    assert library.expire() == 1 and library.store.count() == 1
    assert LibraryLimits().retention_days is None


def test_a_library_of_another_model_is_refused(tmp_path: Path) -> None:
    open_library(tmp_path).add(record(A, 0), vector(0))
    with pytest.raises(ModelMismatch):
        Library.open(make_settings(tmp_path), model="another", dim=DIM)


def test_status_counts_the_chats_and_their_pictures(tmp_path: Path, run_cli) -> None:
    from core.store.database import Database
    from core.store.records import ImageRecord

    settings = make_settings(tmp_path, library_enabled=True)
    index = Database(settings).open(
        settings.collection, ImageRecord, model=settings.clip_model, dim=DIM, create=True
    )
    index.upsert([ImageRecord(id="1", path="/x/1.jpg")], vector(0)[None, :])
    assert "chat libraries: none" in run_cli(settings, "status").stdout
    library = Library.open(settings, model=settings.clip_model, dim=DIM)
    for chat, n in ((A, 0), (A, 1), (B, 2)):
        library.add(record(chat, n), vector(n))
    shown = run_cli(settings, "status")
    assert shown.returncode == 0
    assert "chat libraries: 2 chats, 3 pictures\n" in shown.stdout
    off = run_cli(make_settings(tmp_path, library_enabled=False), "status").stdout
    assert "chat libraries: 2 chats, 3 pictures (LIBRARY_ENABLED is off)" in off


def test_libraries_of_another_model_are_refused_until_dropped(tmp_path: Path, run_cli) -> None:
    settings = make_settings(tmp_path, library_enabled=True)
    Library.open(settings, model="an older model", dim=DIM).add(record(A, 0), vector(0))
    dry = run_cli(settings, "drop-libraries")
    assert dry.returncode == 2 and "would remove collection" in dry.stdout
    assert "1 picture, model an older model" in dry.stdout
    with pytest.raises(ModelMismatch):
        Library.open(settings, model=settings.clip_model, dim=DIM)
    done = run_cli(settings, "drop-libraries", "--yes")
    assert done.returncode == 0 and "removed collection" in done.stdout
    assert "no chat libraries" in run_cli(settings, "drop-libraries").stdout
    assert Library.open(settings, model=settings.clip_model, dim=DIM).count(A) == 0
