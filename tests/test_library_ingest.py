"""bot.library_ingest: one bounded queue, one worker; a bad picture fails alone, a full queue
refuses rather than grows, and what is already kept is not downloaded again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot.library_ingest import Ingest, Posted
from core.errors import BadImage, ImageProblem
from core.library.records import LibraryRecord, library_id
from core.library.store import Added


def posted(n: int) -> Posted:
    unique = f"AQAD{n:04d}"
    record = LibraryRecord(library_id(-1, unique), -1, n, 7, 0, f"file{n}", unique)
    return Posted(record, f"small{n}")


class FakeLibrary:
    def __init__(self, kept: set[str] = frozenset()) -> None:
        self.kept = set(kept)
        self.added: list[int] = []

    async def has(self, chat_id: int, unique: str) -> bool:
        return unique in self.kept

    async def add(self, record: LibraryRecord, data: bytes) -> Added:
        if data == b"bad":
            raise BadImage("not a picture", reason=ImageProblem.NOT_A_PICTURE)
        self.added.append(record.message_id)
        return Added(stored=True)


class FakeFile:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def download_as_bytearray(self) -> bytearray:
        return bytearray(self.data)


class FakeBot:
    def __init__(self) -> None:
        self.downloads: list[str] = []

    async def get_file(self, file_id: str) -> FakeFile:
        self.downloads.append(file_id)
        return FakeFile(b"bad" if file_id == "small1" else b"jpeg")


def test_one_bad_picture_fails_alone_and_kept_ones_are_not_fetched() -> None:
    async def scenario() -> tuple[Any, ...]:
        library, bot = FakeLibrary(kept={"AQAD0002"}), FakeBot()
        ingest = Ingest(library)  # type: ignore[arg-type]
        ingest.start(bot)  # type: ignore[arg-type]
        assert ingest.offer(posted(0)) and ingest.offer(posted(1))
        again = await ingest.save(posted(2))
        with pytest.raises(BadImage):
            await ingest.save(posted(1))
        third = await ingest.save(posted(3))
        await ingest.close()
        return library.added, bot.downloads, again, third

    added, downloads, again, third = asyncio.run(scenario())
    assert added == [0, 3] and not again.stored and third.stored
    assert downloads == ["small0", "small1", "small1", "small3"]  # never small2


def test_a_full_queue_refuses() -> None:
    async def scenario() -> list[bool]:
        ingest = Ingest(FakeLibrary(), max_pending=2)  # type: ignore[arg-type]
        offered = [ingest.offer(posted(n)) for n in range(3)]  # no worker: nothing drains
        await ingest.close()
        return offered

    assert asyncio.run(scenario()) == [True, True, False]
