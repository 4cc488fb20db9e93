"""Start-up does not grow with the collection: the bot's services and `python -m core status`
count the records, but never read them all (at a million records a scan takes minutes and
gigabytes; bench/scale.py measures start-up at 100k and 1M), and status does not even load
an embedded collection's index."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from chromadb.api.models.Collection import Collection

from bot.services import Services
from core.records import ImageRecord
from core.store import Database, VectorStore, _embedded_count
from tests.conftest import ShapeIndex, make_settings


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every read of records that is not by id (a scan), as it happens."""
    seen: list[str] = []
    real_get, real_peek = Collection.get, Collection.peek

    def get(self: Collection, ids=None, *args, **kwargs):
        if ids is None:
            seen.append(f"Collection.get(limit={kwargs.get('limit')})")
        return real_get(self, ids, *args, **kwargs)

    def peek(self: Collection, *args, **kwargs):
        seen.append("Collection.peek")
        return real_peek(self, *args, **kwargs)

    def every_record(self: VectorStore):
        seen.append("iter(VectorStore)")
        yield from ()

    monkeypatch.setattr(Collection, "get", get)
    monkeypatch.setattr(Collection, "peek", peek)
    monkeypatch.setattr(VectorStore, "__iter__", every_record)
    return seen


def test_the_check_itself_sees_a_scan(shape_index: ShapeIndex, scans: list[str]) -> None:
    settings = shape_index.settings
    store = Database(settings).open(
        settings.collection, ImageRecord, model=settings.clip_model, dim=32
    )
    list(store)
    store._collection.get(limit=10)
    assert scans == ["iter(VectorStore)", "Collection.get(limit=10)"]


def test_bot_services_start_without_reading_every_record(
    shape_index: ShapeIndex, scans: list[str]
) -> None:
    services = Services.start(shape_index.settings)
    try:
        assert asyncio.run(services.stats()).images == 60  # opened and counted
    finally:
        services.close()
    assert scans == []


def test_status_counts_without_reading_every_record(
    shape_index: ShapeIndex, scans: list[str], run_cli
) -> None:
    result = run_cli(shape_index.settings, "status")
    assert result.returncode == 0, result.stderr
    assert "60 pictures" in result.stdout
    assert scans == []


def test_status_of_an_embedded_index_does_not_load_it(
    shape_index: ShapeIndex, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedded Chroma loads a collection's whole index on its first read (count included):
    status reads the count from Chroma's SQLite file instead. Fails if a Chroma upgrade
    changes that file's layout (status would then count through Chroma, and be slow)."""
    counted: list[str] = []
    real_count = Collection.count

    def count(self: Collection, *args, **kwargs) -> int:
        counted.append(self.name)
        return real_count(self, *args, **kwargs)

    monkeypatch.setattr(Collection, "count", count)
    result = run_cli(shape_index.settings, "status")
    assert result.returncode == 0, result.stderr
    assert "60 pictures" in result.stdout
    assert counted == []


def test_the_embedded_count_follows_upserts_replacements_and_deletes(tmp_path: Path) -> None:
    db = Database(make_settings(tmp_path))
    store = db.open("counted", ImageRecord, model="m", dim=4, create=True)
    records = [ImageRecord(id=str(n), path=f"/x/{n}.jpg") for n in range(5)]
    vectors = np.eye(5, 4, dtype=np.float32) + 0.1
    store.upsert(records, vectors)
    store.upsert(records[:2], vectors[:2])  # replaced, not added
    store.delete(["3", "4"])
    info = db.info("counted")
    assert info is not None and info.count == 3 == store.count()


def test_the_embedded_count_is_not_trusted_while_the_log_is_ahead(tmp_path: Path) -> None:
    """A write logged but not yet applied (or a file of another layout): None, so the caller
    counts through Chroma."""
    settings = make_settings(tmp_path)
    store = Database(settings).open("ahead", ImageRecord, model="m", dim=4, create=True)
    store.upsert([ImageRecord(id="1", path="/x/1.jpg")], np.ones((1, 4), dtype=np.float32))
    collection_id = store._collection.id
    path = settings.chroma_path
    assert _embedded_count(path, collection_id) == 1
    with closing(sqlite3.connect(path / "chroma.sqlite3")) as db, db:
        db.execute(
            "INSERT INTO embeddings_queue (seq_id, operation, topic, id) "
            "SELECT MAX(seq_id) + 1, 0, topic, 'pending' FROM embeddings_queue"
        )
    assert _embedded_count(path, collection_id) is None
    assert _embedded_count(tmp_path / "nowhere", collection_id) is None
