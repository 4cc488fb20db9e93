"""send_album against the fake Telegram server, in process: one photo, albums, stale file_ids."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from telegram import Bot

from bot.file_ids import FileIdCache
from bot.sending import AlbumTarget, chat_action, file_keys, send_album
from core.search.sendable_files import SendableFiles
from core.search.service import Hit
from tests.bot_harness import jpeg
from tests.fake_telegram import FakeTelegram


def make_hit(path: Path, i: int) -> Hit:
    """A hit as search returns it: with the file's size and mtime when indexed."""
    stat = path.stat()
    return Hit(str(i), str(path), 0.9 - i / 100, (f"caption {i}",), stat.st_size, stat.st_mtime_ns)


def make_hits(tmp_path: Path, n: int) -> list[Hit]:
    hits = []
    for i in range(n):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(jpeg("red", "circle", seed=i))
        hits.append(make_hit(path, i))
    return hits


def guard(hits: list[Hit]) -> SendableFiles:
    roots = tuple({str(Path(hit.path).parent) for hit in hits})
    return SendableFiles(lambda: roots)


def keys(hits: list[Hit]) -> list[str]:
    """The file_id cache keys of `hits`' files as they are now."""
    return list(file_keys(hits, guard(hits)).values())


def send(
    tg: FakeTelegram,
    hits: list[Hit],
    cache: FileIdCache,
    chat_id: int,
    files: SendableFiles | None = None,
    **how: Any,
) -> list[Hit]:
    """`send_album` of `hits` to `chat_id` (through `files`, else a guard with their folders as
    roots); `how`: the rest of the `AlbumTarget`. Returns the hits sent."""

    async def main() -> list[Hit]:
        async with Bot(tg.token, base_url=tg.base_url, base_file_url=tg.base_file_url) as bot:
            target = AlbumTarget(bot, chat_id, **how)
            return await send_album(target, hits, cache, files or guard(hits))

    return asyncio.run(main())


def test_one_hit_is_a_single_photo(tmp_path: Path) -> None:
    cache = FileIdCache(tmp_path / "ids.sqlite3", bot_id=1)
    [hit] = make_hits(tmp_path, 1)
    with FakeTelegram() as tg:
        assert send(tg, [hit], cache, 1) == [hit]
        [sent] = tg.sent_to(1)
        assert sent.kind == "photo" and sent.caption == "#1 · 0.90 · caption 0"
        [key] = keys([hit])
        assert cache.get_many([key]) == {key: sent.photo_file_ids[0]}


def test_no_hits_sends_nothing(tmp_path: Path) -> None:
    with FakeTelegram() as tg:
        assert send(tg, [], FileIdCache(tmp_path / "ids.sqlite3", bot_id=1), 1) == []
        assert tg.sent_to(1) == []


def test_ranks_reply_and_quiet_come_from_the_target(tmp_path: Path) -> None:
    hits = make_hits(tmp_path, 2)
    with FakeTelegram() as tg:
        cache = FileIdCache(tmp_path / "ids.sqlite3", bot_id=1)
        send(tg, hits, cache, -100, first_rank=6, reply_to=42, quiet=True)
        [album] = tg.sent_to(-100)
        assert album.captions == ["#6 · 0.90 · caption 0", "#7 · 0.89 · caption 1"]
        [call] = tg.calls("sendMediaGroup")
        assert call.params["reply_parameters"]["message_id"] == 42
        assert call.params["disable_notification"] is True


def test_unreadable_files_are_left_out_and_ranks_stay_contiguous(tmp_path: Path) -> None:
    hits = make_hits(tmp_path, 4)
    Path(hits[1].path).write_bytes(b"broken")
    Path(hits[2].path).unlink()
    with FakeTelegram() as tg:
        sent = send(tg, hits, FileIdCache(tmp_path / "ids.sqlite3", bot_id=1), 1)
        assert sent == [hits[0], hits[3]]
        [album] = tg.sent_to(1)
        assert album.captions == ["#1 · 0.90 · caption 0", "#2 · 0.87 · caption 3"]


def test_mixed_cached_and_new_and_stale_file_ids(tmp_path: Path) -> None:
    hits = make_hits(tmp_path, 3)
    cache = FileIdCache(tmp_path / "ids.sqlite3", bot_id=1)
    with FakeTelegram() as tg:
        send(tg, hits[:2], cache, 1)
        send(tg, hits, cache, 1)  # two by file_id, one uploaded
        album = tg.sent_to(1)[-1]
        assert album.by_file_id == [True, True, False]
        versions = keys(hits)
        assert set(cache.get_many(versions)) == set(versions)
        cache.put_many({versions[0]: "STALE-ID-FROM-ANOTHER-BOT"})
        send(tg, hits, cache, 2)  # Telegram refuses the stale id: all uploaded afresh
        album = tg.sent_to(2)[-1]
        assert album.kind == "media_group" and album.by_file_id == [False] * 3
        assert cache.get_many([versions[0]])[versions[0]] != "STALE-ID-FROM-ANOTHER-BOT"


def test_a_changed_picture_is_uploaded_fresh_not_by_its_old_file_id(tmp_path: Path) -> None:
    hits = make_hits(tmp_path, 2)
    cache = FileIdCache(tmp_path / "ids.sqlite3", bot_id=1)
    with FakeTelegram() as tg:
        send(tg, hits, cache, 1)
        old = tg.sent_to(1)[-1]
        changed = Path(hits[0].path)
        changed.write_bytes(jpeg("blue", "square", (90, 60), seed=7))  # re-embedded as new
        os.utime(changed, ns=(hits[0].mtime_ns + 10**9, hits[0].mtime_ns + 10**9))
        send(tg, [make_hit(changed, 0), hits[1]], cache, 1)
        new = tg.sent_to(1)[-1]
        assert new.by_file_id == [False, True]
        assert tg.file_bytes(new.photo_file_ids[0]) == changed.read_bytes()
        assert new.photo_file_ids[0] != old.photo_file_ids[0]


def test_a_record_pointed_at_another_file_is_not_sent_by_the_old_file_id(
    tmp_path: Path,
) -> None:
    """The cache key names the very file, not what the record says of it (id, size, mtime
    are the store's, so whoever writes it can make them match a cached picture)."""
    hits = make_hits(tmp_path, 2)
    other = tmp_path / "other.jpg"
    other.write_bytes(jpeg("blue", "square", seed=9))
    cache = FileIdCache(tmp_path / "ids.sqlite3", bot_id=1)
    with FakeTelegram() as tg:
        send(tg, hits, cache, 1)
        swapped = replace(hits[0], path=str(other))  # same id, size and mtime in the record
        send(tg, [swapped, hits[1]], cache, 1)
        album = tg.sent_to(1)[-1]
        assert album.by_file_id == [False, True]
        assert tg.file_bytes(album.photo_file_ids[0]) == other.read_bytes()


def test_records_outside_the_roots_are_never_sent(tmp_path: Path) -> None:
    indexed, elsewhere = tmp_path / "indexed", tmp_path / "elsewhere"
    indexed.mkdir()
    elsewhere.mkdir()
    good = indexed / "good.jpg"
    good.write_bytes(jpeg("red", "circle"))
    secret = elsewhere / "secret.jpg"
    secret.write_bytes(jpeg("green", "square"))
    hits = [make_hit(secret, 0), make_hit(good, 1)]
    with FakeTelegram() as tg:
        files = SendableFiles(lambda: (str(indexed),))
        send(tg, hits, FileIdCache(tmp_path / "ids.sqlite3", bot_id=1), 3, files)
        [sent] = tg.sent_to(3)
        assert sent.kind == "photo"
        assert tg.file_bytes(sent.photo_file_ids[0]) == good.read_bytes()


def test_chat_action_repeats_while_working(tmp_path: Path, monkeypatch) -> None:
    """Repeated while the work goes on (however slowly the machine runs), none after."""
    monkeypatch.setattr("bot.sending.CHAT_ACTION_EVERY_S", 0.05)
    with FakeTelegram() as tg:

        async def main() -> tuple[int, int]:
            async with Bot(tg.token, base_url=tg.base_url) as bot:
                async with chat_action(bot, 5):  # the "work": until the action was repeated
                    await asyncio.to_thread(tg.wait_for, "sendChatAction", 60, count=3)
                at_end = len(tg.calls("sendChatAction"))
                await bot.get_me()  # the bot is still working, it sends nothing more
                for _ in range(10):
                    await asyncio.sleep(0.05)  # ten intervals: ten repeats if it went on
                return at_end, len(tg.calls("sendChatAction"))

        at_end, after = asyncio.run(main())
        assert at_end >= 3  # repeated while working
        assert after <= at_end + 1  # stopped (one may have been on its way when it ended)
        actions = tg.calls("sendChatAction")
        assert {c.params["action"] for c in actions} == {"upload_photo"}
        assert {c.params["chat_id"] for c in actions} == {5}
