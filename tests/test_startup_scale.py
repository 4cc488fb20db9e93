"""Start-up does not grow with the collection: the bot's services and `python -m core status`
count the records, but never read them all (at a million records a scan takes minutes and
gigabytes; bench/scale.py measures start-up at 100k and 1M), and status does not even load
an embedded collection's index: the bot loads it once it is running."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from chromadb.api.models.Collection import Collection

from bot.services import Services
from core.store.database import Database, VectorStore
from core.store.records import ImageRecord
from tests.bot_harness import running_bot
from tests.conftest import ShapeIndex
from tests.fake_telegram import FakeTelegram


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


def test_bot_services_start_without_loading_the_index_then_warm_it_up(
    shape_index: ShapeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedded Chroma loads a collection's whole index on its first read (count included:
    seconds and gigabytes at a million records, holding the GIL). Start-up counts from
    Chroma's SQLite file; the index is loaded by `warm_up`, off the event loop."""
    readers: list[str] = []
    real_count = Collection.count

    def count(self: Collection, *args, **kwargs) -> int:
        readers.append(threading.current_thread().name)
        return real_count(self, *args, **kwargs)

    monkeypatch.setattr(Collection, "count", count)
    services = Services.start(shape_index.settings)
    try:
        assert readers == []
        asyncio.run(services.warm_up())
        assert len(readers) == 1 and readers[0] != threading.main_thread().name
        assert asyncio.run(services.stats()).images == 60
    finally:
        services.close()


def test_the_bot_loads_the_index_once_it_is_running(shape_index: ShapeIndex) -> None:
    """Loading the index comes after start-up, not before the bot takes messages."""
    settings = shape_index.settings.model_copy(update={"vqa_enabled": False})
    with FakeTelegram(hide_button_messages=True) as tg, running_bot(settings, [], tg) as bot:
        deadline = time.monotonic() + 60
        while "index loaded in" not in bot.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = bot.log()
        assert log.index("Application started") < log.index("index loaded in")
        tg.inject_text("a red circle", user_id=7)
        [album] = tg.wait_sent(7, timeout=60)
        assert album.kind == "media_group"


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
