"""Reading an embedded Chroma's SQLite file directly: the same size and model Chroma
reports, and None (ask Chroma) whenever the file cannot be trusted. These tests fail if a
Chroma upgrade changes the file's layout: status and the bot's start-up would then count
through Chroma, loading the whole index."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np

from core.chroma_files import FILE, CollectionInfo, embedded_count, embedded_info
from core.records import ImageRecord
from core.store import Database
from tests.conftest import make_settings


def test_size_and_model_follow_upserts_replacements_and_deletes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    db = Database(settings)
    store = db.open("counted", ImageRecord, model="the-model", dim=4, create=True)
    other = db.open("other", ImageRecord, model="other-model", dim=4, create=True)
    other.upsert([ImageRecord(id="9", path="/x/9.jpg")], np.ones((1, 4), dtype=np.float32))
    records = [ImageRecord(id=str(n), path=f"/x/{n}.jpg") for n in range(5)]
    vectors = np.eye(5, 4, dtype=np.float32) + 0.1
    store.upsert(records, vectors)
    store.upsert(records[:2], vectors[:2])  # replaced, not added
    store.delete(["3", "4"])
    info = embedded_info(settings.chroma_path, "counted")
    assert info == CollectionInfo("counted", 3, "the-model", 4)
    assert info.count == store.count() == store.count_at_rest()
    assert db.info("counted") == info
    assert embedded_info(settings.chroma_path, "other") == CollectionInfo(
        "other", 1, "other-model", 4
    )


def test_a_missing_collection_or_file_is_left_to_chroma(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    Database(settings).open("here", ImageRecord, model="m", dim=4, create=True)
    assert embedded_info(settings.chroma_path, "elsewhere") is None
    assert embedded_info(tmp_path / "nowhere", "here") is None
    (tmp_path / "not-chroma").mkdir()
    (tmp_path / "not-chroma" / FILE).write_bytes(b"not a database")
    assert embedded_info(tmp_path / "not-chroma", "here") is None


def test_nothing_is_trusted_while_the_log_is_ahead(tmp_path: Path) -> None:
    """A write logged but not yet applied: None, so the caller counts through Chroma."""
    settings = make_settings(tmp_path)
    store = Database(settings).open("ahead", ImageRecord, model="m", dim=4, create=True)
    store.upsert([ImageRecord(id="1", path="/x/1.jpg")], np.ones((1, 4), dtype=np.float32))
    collection_id = store._collection.id
    path = settings.chroma_path
    assert embedded_count(path, collection_id) == 1
    with closing(sqlite3.connect(path / FILE)) as db, db:
        db.execute(
            "INSERT INTO embeddings_queue (seq_id, operation, topic, id) "
            "SELECT MAX(seq_id) + 1, 0, topic, 'pending' FROM embeddings_queue"
        )
    assert embedded_count(path, collection_id) is None
    assert embedded_info(path, "ahead") is None
    assert embedded_count(tmp_path / "nowhere", collection_id) is None
