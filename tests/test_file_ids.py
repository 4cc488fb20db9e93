from __future__ import annotations

from pathlib import Path

from bot.file_ids import FileIdCache


def test_round_trip_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "index" / "file-ids.sqlite3"
    cache = FileIdCache(path, bot_id=1)
    assert cache.get_many(["a", "b"]) == {}
    cache.put_many({"a": "FILE_A", "b": "FILE_B"})
    cache.put_many({"b": "FILE_B2"})
    assert cache.get_many(["a", "b", "c"]) == {"a": "FILE_A", "b": "FILE_B2"}
    cache.close()
    reopened = FileIdCache(path, bot_id=1)
    assert reopened.get_many(["a"]) == {"a": "FILE_A"}
    reopened.forget(["a"])
    assert reopened.get_many(["a", "b"]) == {"b": "FILE_B2"}


def test_file_ids_belong_to_one_bot(tmp_path: Path) -> None:
    path = tmp_path / "file-ids.sqlite3"
    FileIdCache(path, bot_id=1).put_many({"a": "FOR_BOT_1"})
    assert FileIdCache(path, bot_id=2).get_many(["a"]) == {}


def test_many_ids_at_once(tmp_path: Path) -> None:
    cache = FileIdCache(tmp_path / "f.sqlite3", bot_id=1)
    cache.put_many({str(i): f"F{i}" for i in range(500)})
    assert len(cache.get_many([str(i) for i in range(500)])) == 500
    assert cache.get_many([]) == {}
