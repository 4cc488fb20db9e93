"""The buttons under albums and inline mode, in process: the real application (handlers,
searches, sending) against the fake Telegram server, with a small fake search service in
place of CLIP + Chroma (the end-to-end tests with the real core are in test_bot_buttons.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot import replies
from bot.app import ALLOWED_UPDATES, build_application
from bot.services import Results
from core.config import Settings
from core.search.sendable_files import SendableFiles
from core.search.service import Hit, PreparedQuery, SearchPage
from tests.bot_harness import jpeg
from tests.conftest import make_settings
from tests.fake_telegram import FakeTelegram, Sent

PICTURES = 14
TOP_K = 3
USER, STRANGER = 1000, 666
STORAGE = -1009876543210


class FakeServices:
    """What the handlers use of `bot.services.Services`, over `PICTURES` files: every query
    ranks them in file order, except "far" (nothing above MIN_SCORE) and a Similar search
    (that picture first)."""

    def __init__(self, settings: Settings, root: Path) -> None:
        self.settings = settings
        self.ask_enabled = False
        self.library = None  # LIBRARY_ENABLED=false
        self.files = SendableFiles(lambda: (str(root),))
        self.similar_calls: list[str] = []
        self.hits = []
        for i in range(PICTURES):
            path = root / f"{i:02d}.jpg"
            path.write_bytes(jpeg(["red", "blue"][i % 2], "circle", seed=i))
            stat = path.stat()
            hit = Hit(f"id{i}", str(path), 0.9 - i / 100, (f"picture {i}",), stat.st_size, 0)
            self.hits.append(replace(hit, mtime_ns=stat.st_mtime_ns))

    async def warm_up(self) -> None:
        pass  # nothing to load

    async def search_text(
        self, text: str, *, k: int | None = None, offset: int = 0, chat_id: int | None = None
    ) -> Results:
        prepared = PreparedQuery(vector=(1.0,), reading=text, min_score=0.2)
        return Results(prepared, await self.page(prepared, k=k, offset=offset))

    async def search_photo(self, data: bytes, caption: str = "", **scope: object) -> Results:
        return await self.search_text(caption or "your picture")

    async def similar(self, image_id: str, *, chat_id: int | None = None) -> Results:
        self.similar_calls.append(image_id)
        return await self.search_text(f"like {image_id}")

    async def page(
        self,
        prepared: PreparedQuery,
        *,
        k: int | None = None,
        offset: int = 0,
        nearest_anyway: bool = False,
        chat_id: int | None = None,
    ) -> SearchPage:
        k = k or self.settings.top_k
        ranked = list(self.hits)
        if prepared.reading.startswith("like "):
            liked = prepared.reading.removeprefix("like ")
            ranked.sort(key=lambda hit: hit.id != liked)
        hits = ranked[offset : offset + k]
        more = offset + k < len(ranked)
        if prepared.reading == "far" and not nearest_anyway:
            return SearchPage([], offset, False, prepared.reading, PICTURES, len(hits))
        found = None if more else len(ranked)  # known once the last page is reached
        return SearchPage(hits, offset, more, prepared.reading, PICTURES, found=found)

    async def original(self, image_id: str, path: str) -> bytes:
        return self.files.read(image_id, path).data

    def close(self) -> None:
        pass


@contextmanager
def running(settings: Settings, services: FakeServices) -> Iterator[None]:
    """The application, long polling the fake in a thread of its own, until the block ends."""
    started, stopping = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    async def serve() -> None:
        app = build_application(settings, services)  # type: ignore[arg-type]
        async with app:
            await app.post_init(app)
            await app.start()
            await app.updater.start_polling(allowed_updates=ALLOWED_UPDATES, timeout=1)
            started.set()
            while not stopping.is_set():
                await asyncio.sleep(0.05)
            await app.updater.stop()
            await app.stop()
        await app.post_shutdown(app)

    def main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as err:
            failure.append(err)
            started.set()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    started.wait(30)
    assert not failure, failure
    try:
        yield
    finally:
        stopping.set()
        thread.join(30)
    assert not failure, failure


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    with FakeTelegram() as fake:
        yield fake
        fake.assert_no_errors()


@pytest.fixture
def setup(tmp_path: Path, tg: FakeTelegram) -> tuple[Settings, FakeServices]:
    settings = make_settings(
        tmp_path,
        telegram_bot_token=tg.token,
        telegram_base_url=tg.base_url,
        telegram_base_file_url=tg.base_file_url,
        top_k=TOP_K,
        rate_limit_per_minute=0,
        allowed_user_ids=frozenset({USER}),
        inline_enabled=True,
        storage_chat_id=STORAGE,
    )
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    return settings, FakeServices(settings, pictures)


def search(tg: FakeTelegram, text: str) -> tuple[Sent, Sent]:
    since = len(tg.sent_to(USER))
    tg.inject_text(text, user_id=USER)
    album, buttons = tg.wait_sent(USER, 2, since=since)
    return album, buttons


def press(tg: FakeTelegram, message: Sent, label: str, user: int = USER, n: int = 2) -> list:
    """Press the button labelled `label` under `message`; the `n` things sent after it."""
    data = button_data(message)[label]
    return press_data(tg, message, data, user, n)


def press_data(tg: FakeTelegram, message: Sent, data: str, user: int = USER, n: int = 2) -> list:
    """Press, as a user would: again when told the previous press is still being finished
    (its page is out, but the bot may still be tidying up after it)."""
    since = len(tg.sent_to(USER))
    for _ in range(600):
        query = tg.inject_callback_query(data, message.messages[0], user_id=user)
        answer = tg.callback_answer(query["id"], timeout=60)
        if answer.params.get("text") != replies.BUTTON_BUSY:
            break
        time.sleep(0.05)
    return tg.wait_sent(USER, n, since=since, timeout=60) if n else []


def button_data(message: Sent | dict[str, Any]) -> dict[str, str]:
    msg = message.messages[0] if isinstance(message, Sent) else message
    rows = msg.get("reply_markup", {}).get("inline_keyboard", [])
    return {b["text"]: b["callback_data"] for row in rows for b in row}


def test_more_pages_until_the_end(tg: FakeTelegram, setup) -> None:
    with running(*setup):
        album, buttons = search(tg, "a red <circle>")
        assert album.captions == [
            "#1 · 0.90 · picture 0",
            "#2 · 0.89 · picture 1",
            "#3 · 0.88 · picture 2",
        ]
        assert buttons.text == "🔎 a red <circle> — 1–3"  # how many in all is not known yet
        assert list(button_data(buttons)) == [
            "Similar 1",
            "Similar 2",
            "Similar 3",
            "Full size",
            "More ▸",
        ]
        assert all(len(d.encode()) <= 64 for d in button_data(buttons).values())
        seen = 3
        while "More ▸" in button_data(buttons):
            previous = buttons
            album, buttons = press(tg, buttons, "More ▸")
            first = seen + 1
            seen += len(album.messages)
            assert album.captions[0].startswith(f"#{first} · ")
            assert buttons.text.startswith(f"🔎 a red <circle> — {first}–{seen}")
            assert f"Similar {first}" in button_data(buttons)
            assert "More ▸" not in button_data(tg.message(USER, previous.messages[0]["message_id"]))
        assert seen == PICTURES
        assert buttons.text == "🔎 a red <circle> — 13–14 of 14\nThat's all I found."
        token = button_data(buttons)["Full size"].split(":")[1]
        [again] = press_data(tg, buttons, f"m:{token}", n=1)  # a stale More
        assert again.text == "That's all I found for a red <circle>."


def test_similar_searches_like_that_result(tg: FakeTelegram, setup) -> None:
    settings, services = setup
    with running(settings, services):
        _, buttons = search(tg, "circles")
        album, after = press(tg, buttons, "Similar 2")
        assert services.similar_calls == ["id1"]
        assert album.captions[0].endswith("picture 1")
        assert after.text.startswith("🔎 like #2 of circles — 1–3")


def test_full_size_sends_the_original_files(tg: FakeTelegram, setup) -> None:
    settings, services = setup
    with running(settings, services):
        _, buttons = search(tg, "circles")
        _, page2 = press(tg, buttons, "More ▸")
        documents = press(tg, page2, "Full size", n=3)
        assert [d.kind for d in documents] == ["document"] * 3
        assert [d.caption for d in documents] == [
            "#4 · full size",
            "#5 · full size",
            "#6 · full size",
        ]
        for sent, hit in zip(documents, services.hits[3:6], strict=True):
            file_id = sent.messages[0]["document"]["file_id"]
            assert tg.file_bytes(file_id) == Path(hit.path).read_bytes()
            assert sent.messages[0]["document"]["file_name"] == Path(hit.path).name


def test_a_missing_original_is_skipped_with_a_note(tg: FakeTelegram, setup) -> None:
    settings, services = setup
    with running(settings, services):
        _, buttons = search(tg, "circles")
        Path(services.hits[1].path).unlink()
        sent = press(tg, buttons, "Full size", n=3)
        assert [s.kind for s in sent] == ["document", "document", "message"]
        assert "#2" in sent[2].text and "50 MB" in sent[2].text


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        ("m:AAAAAAAAAA", replies.BUTTON_EXPIRED),  # a well-formed token never given
        ("m:short", replies.BUTTON_BROKEN),
        ("s:{token}:0:9", replies.BUTTON_BROKEN),  # no 9th picture in that album
        ("s:{token}:7:1", replies.BUTTON_EXPIRED),  # no such album
        ("garbage\x00", replies.BUTTON_BROKEN),
    ],
)
def test_bad_presses_are_answered_and_do_nothing(
    tg: FakeTelegram, setup, data: str, answer: str
) -> None:
    with running(*setup):
        _, buttons = search(tg, "circles")
        token = button_data(buttons)["More ▸"].split(":")[1]
        before = len(tg.sent_to(USER))
        query = tg.inject_callback_query(
            data.format(token=token), buttons.messages[0], user_id=USER
        )
        assert tg.callback_answer(query["id"]).params.get("text") == answer
        tg.wait_updates_consumed()
        assert len(tg.sent_to(USER)) == before


def test_a_stranger_pressing_a_button_is_refused(tg: FakeTelegram, setup) -> None:
    with running(*setup):
        _, buttons = search(tg, "circles")
        before = len(tg.sent_to(USER))
        query = tg.inject_callback_query(
            button_data(buttons)["More ▸"], buttons.messages[0], user_id=STRANGER
        )
        answer = tg.callback_answer(query["id"])
        assert "private" in answer.params["text"] and answer.params.get("show_alert") is True
        assert len(tg.sent_to(USER)) == before and tg.sent_to(STRANGER) == []


def test_nothing_close_enough_offers_the_nearest_anyway(tg: FakeTelegram, setup) -> None:
    with running(*setup):
        tg.inject_text("far", user_id=USER)
        [note] = tg.wait_sent(USER)
        assert note.text.startswith("Nothing close enough for far")
        album, buttons = press(tg, note, "Show the nearest anyway")
        assert len(album.messages) == 3 and buttons.text == "🔎 far — 1–3"
        album, _ = press(tg, buttons, "More ▸")  # More keeps ignoring the threshold
        assert album.captions[0].startswith("#4 ·")


def test_buttons_survive_a_restart(tg: FakeTelegram, setup) -> None:
    settings, services = setup
    with running(settings, services):
        _, buttons = search(tg, "circles")
    with running(settings, services):
        album, after = press(tg, buttons, "More ▸")
        assert album.captions[0].startswith("#4 ·") and "— 4–6" in after.text


def test_inline_pages_and_uploads_each_picture_once(tg: FakeTelegram, setup) -> None:
    with running(*setup):
        query = tg.inject_inline_query("circles", user_id=USER)
        first = tg.inline_answer(query["id"]).params
        assert [r["id"] for r in first["results"]] == [str(i) for i in range(1, 11)]
        assert str(first["next_offset"]) == "10" and first["is_personal"] is True
        assert {r["type"] for r in first["results"]} == {"photo"}
        query = tg.inject_inline_query("circles", "10", user_id=USER)
        second = tg.inline_answer(query["id"]).params
        assert [r["id"] for r in second["results"]] == ["11", "12", "13", "14"]
        assert not second.get("next_offset")
        uploads = len(tg.sent_to(STORAGE))
        assert uploads == 2  # one album per page
        query = tg.inject_inline_query("circles", user_id=USER)
        again = tg.inline_answer(query["id"]).params
        assert again["results"] == first["results"]
        assert len(tg.sent_to(STORAGE)) == uploads  # nothing uploaded again
        query = tg.inject_inline_query("   ", user_id=USER)
        assert tg.inline_answer(query["id"]).params["results"] == []
        query = tg.inject_inline_query("circles", user_id=STRANGER)
        assert tg.inline_answer(query["id"]).params["results"] == []
