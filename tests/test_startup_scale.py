"""Start-up does not grow with the collection: the bot's services and `python -m core status`
count the records, but never read them all (at a million records a scan takes minutes and
gigabytes; bench/scale.py measures start-up at 100k and 1M)."""

from __future__ import annotations

import asyncio

import pytest
from chromadb.api.models.Collection import Collection

from bot.services import Services
from core.store import VectorStore
from tests.conftest import ShapeIndex


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
    from core.records import ImageRecord
    from core.store import Database

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
