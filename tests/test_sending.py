"""send_hits against the fake Telegram server, in process: one photo, albums, stale file_ids."""

from __future__ import annotations

import asyncio
from pathlib import Path

from telegram import Bot, Message

from bot.file_ids import FileIdCache
from bot.replies import NO_RESULTS
from bot.sending import chat_action, send_hits
from core.search import Hit
from tests.bot_harness import jpeg
from tests.fake_telegram import FakeTelegram


def make_hits(tmp_path: Path, n: int) -> list[Hit]:
    hits = []
    for i in range(n):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(jpeg("red", "circle", seed=i))
        hits.append(Hit(str(i), str(path), 0.9 - i / 100, (f"caption {i}",)))
    return hits


def send(tg: FakeTelegram, hits: list[Hit], cache: FileIdCache, user: int) -> None:
    async def main() -> None:
        async with Bot(tg.token, base_url=tg.base_url, base_file_url=tg.base_file_url) as bot:
            message = Message.de_json(tg.inject_text("query", user_id=user), bot)
            await send_hits(message, hits, cache)

    asyncio.run(main())


def test_one_hit_is_a_single_photo(tmp_path: Path) -> None:
    cache = FileIdCache(tmp_path / "ids.sqlite3", bot_id=1)
    with FakeTelegram() as tg:
        send(tg, make_hits(tmp_path, 1), cache, user=1)
        [sent] = tg.sent_to(1)
        assert sent.kind == "photo" and sent.caption == "#1 · 0.90 · caption 0"
        assert cache.get_many(["0"]) == {"0": sent.photo_file_ids[0]}


def test_no_hits_is_a_message(tmp_path: Path) -> None:
    with FakeTelegram() as tg:
        send(tg, [], FileIdCache(tmp_path / "ids.sqlite3", bot_id=1), user=1)
        [sent] = tg.sent_to(1)
        assert sent.text == NO_RESULTS


def test_unreadable_files_are_left_out_and_ranks_stay_contiguous(tmp_path: Path) -> None:
    hits = make_hits(tmp_path, 4)
    Path(hits[1].path).write_bytes(b"broken")
    Path(hits[2].path).unlink()
    with FakeTelegram() as tg:
        send(tg, hits, FileIdCache(tmp_path / "ids.sqlite3", bot_id=1), user=1)
        [album] = tg.sent_to(1)
        assert album.captions == ["#1 · 0.90 · caption 0", "#2 · 0.87 · caption 3"]


def test_mixed_cached_and_new_and_stale_file_ids(tmp_path: Path) -> None:
    hits = make_hits(tmp_path, 3)
    cache = FileIdCache(tmp_path / "ids.sqlite3", bot_id=1)
    with FakeTelegram() as tg:
        send(tg, hits[:2], cache, user=1)
        send(tg, hits, cache, user=1)  # two by file_id, one uploaded
        album = tg.sent_to(1)[-1]
        assert album.by_file_id == [True, True, False]
        assert set(cache.get_many(["0", "1", "2"])) == {"0", "1", "2"}
        cache.put_many({"0": "STALE-ID-FROM-ANOTHER-BOT"})
        send(tg, hits, cache, user=2)  # Telegram refuses the stale id: all uploaded afresh
        album = tg.sent_to(2)[-1]
        assert album.kind == "media_group" and album.by_file_id == [False] * 3
        assert cache.get_many(["0"])["0"] != "STALE-ID-FROM-ANOTHER-BOT"


def test_chat_action_repeats_while_working(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("bot.sending.CHAT_ACTION_EVERY_S", 0.2)
    with FakeTelegram() as tg:

        async def main() -> None:
            async with Bot(tg.token, base_url=tg.base_url) as bot:
                async with chat_action(bot, 5):
                    await asyncio.sleep(0.7)
                await asyncio.sleep(0.3)

        asyncio.run(main())
        actions = tg.calls("sendChatAction")
        assert 3 <= len(actions) <= 5  # repeated while working, stopped after
        assert {c.params["action"] for c in actions} == {"upload_photo"}
