"""The fake Telegram Bot API, driven by PTB's real client (telegram.Bot over httpx)."""

from __future__ import annotations

import asyncio
import datetime as dtm
import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import telegram
from PIL import Image
from telegram import InputMediaPhoto
from telegram.error import BadRequest, Conflict, InvalidToken, NetworkError, RetryAfter, TimedOut
from telegram.ext import ApplicationBuilder, CommandHandler, ContextTypes, MessageHandler, filters

from tests.fake_telegram import FakeTelegram, parse_formatted, small_jpeg

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    with FakeTelegram() as fake:
        yield fake
        assert fake.errors == [], fake.errors


def make_bot(tg: FakeTelegram, token: str | None = None) -> telegram.Bot:
    return telegram.Bot(token or tg.token, base_url=tg.base_url, base_file_url=tg.base_file_url)


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (400, 300)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_get_me(tg: FakeTelegram) -> None:
    async def main() -> telegram.User:
        async with make_bot(tg) as bot:
            return await bot.get_me()

    me = asyncio.run(main())
    assert me.is_bot and me.id == 123456 and me.username == "test_image_bot"
    assert [c.method for c in tg.calls()] == ["getMe", "getMe"]  # initialize() calls it too


def test_wrong_token_is_unauthorized(tg: FakeTelegram) -> None:
    async def main() -> None:
        async with make_bot(tg, "999:WRONG") as bot:
            await bot.get_me()

    with pytest.raises(InvalidToken):
        asyncio.run(main())


def test_long_poll_returns_an_injected_text_and_offset_confirms(tg: FakeTelegram) -> None:
    async def main() -> tuple[list[telegram.Update], float, list[telegram.Update]]:
        async with make_bot(tg) as bot:
            asyncio.get_running_loop().call_later(0.3, tg.inject_text, "a red circle")
            start = time.monotonic()
            updates = await bot.get_updates(timeout=60)
            waited = time.monotonic() - start
            after = await bot.get_updates(offset=updates[-1].update_id + 1, timeout=0)
            return list(updates), waited, list(after)

    updates, waited, after = asyncio.run(main())
    assert len(updates) == 1 and updates[0].message.text == "a red circle"
    msg = updates[0].message
    assert msg.chat.type == "private" and msg.chat.id == msg.from_user.id == 1000
    assert waited < 60  # answered when the message came, not at the poll's timeout
    assert after == [] and tg.pending_updates() == []


def test_long_poll_blocks_until_the_timeout_when_idle(tg: FakeTelegram) -> None:
    async def main() -> tuple[list[telegram.Update], float]:
        async with make_bot(tg) as bot:
            start = time.monotonic()
            updates = await bot.get_updates(timeout=1)
            return list(updates), time.monotonic() - start

    updates, waited = asyncio.run(main())
    assert updates == [] and waited >= 0.9


def test_unconfirmed_updates_are_delivered_again(tg: FakeTelegram) -> None:
    first = tg.inject_text("one")
    tg.inject_text("two")

    async def main() -> tuple[list[int], list[int], list[int]]:
        async with make_bot(tg) as bot:
            a = [u.update_id for u in await bot.get_updates(timeout=0)]
            b = [u.update_id for u in await bot.get_updates(timeout=0, limit=1)]
            c = [u.update_id for u in await bot.get_updates(offset=a[0] + 1, timeout=0)]
            return a, b, c

    a, b, c = asyncio.run(main())
    assert len(a) == 2 and b == a[:1] and c == a[1:]
    assert first["message_id"] + 1 == tg.pending_updates()[0]["message"]["message_id"]


def test_two_pollers_conflict_like_two_bot_instances(tg: FakeTelegram) -> None:
    async def main() -> tuple[BaseException | None, list[telegram.Update]]:
        async with make_bot(tg) as first, make_bot(tg) as second:
            polls = tg.polls
            held = asyncio.create_task(first.get_updates(timeout=60))
            await asyncio.to_thread(tg.wait_polls, polls + 1)  # the first poll is held
            newer = asyncio.create_task(second.get_updates(timeout=60))
            await asyncio.to_thread(tg.wait_polls, polls + 2)  # the newer one took over
            tg.inject_text("for the newer poller")
            updates = list(await newer)
            return (await asyncio.gather(held, return_exceptions=True))[0], updates

    held_result, updates = asyncio.run(main())
    assert isinstance(held_result, Conflict) and "only one bot instance" in str(held_result)
    assert updates[0].message.text == "for the newer poller"


def test_other_injected_kinds_parse_in_ptb(tg: FakeTelegram) -> None:
    async def send() -> telegram.Message:
        async with make_bot(tg) as bot:
            return await bot.send_message(-100, "in a group")

    bot_msg = asyncio.run(send())
    tg.inject_sticker("🔥")
    tg.inject_message(location={"latitude": 52.5, "longitude": 13.4})
    tg.inject_document(b"%PDF-1.4", "paper.pdf", "application/pdf", caption="read this")
    tg.inject_text("hi all", user_id=7, chat_id=-100, username="alice")
    tg.inject_callback_query("page:2", tg.sent_to(-100)[0].messages[0])

    async def receive() -> list[telegram.Update]:
        async with make_bot(tg) as bot:
            return list(await bot.get_updates(timeout=0))

    sticker, location, document, group, callback = asyncio.run(receive())
    assert sticker.message.sticker.emoji == "🔥" and sticker.message.sticker.width == 512
    assert location.message.location.latitude == 52.5
    assert document.message.document.file_name == "paper.pdf"
    assert document.message.caption == "read this"
    assert group.message.chat.type == "group" and group.message.from_user.username == "alice"
    assert group.message.message_id == bot_msg.message_id + 1
    assert callback.callback_query.data == "page:2"
    assert callback.callback_query.message.message_id == bot_msg.message_id


def test_send_photo_bytes_then_by_file_id(tg: FakeTelegram) -> None:
    data = jpeg((200, 30, 30))

    async def main() -> tuple[telegram.Message, telegram.Message]:
        async with make_bot(tg) as bot:
            first = await bot.send_photo(1000, data, caption="rank 1 · 0.91")
            again = await bot.send_photo(1000, first.photo[-1].file_id, caption="again")
            return first, again

    first, again = asyncio.run(main())
    assert first.photo[-1].width == 400 and first.photo[-1].height == 300
    assert [p.width for p in first.photo] == sorted(p.width for p in first.photo)
    assert len({p.file_id for p in first.photo}) == len(first.photo) >= 2
    assert first.caption == "rank 1 · 0.91" and first.message_id == 1
    assert again.photo[-1].file_id == first.photo[-1].file_id and again.message_id == 2
    calls = tg.calls("sendPhoto")
    assert calls[0].files["photo"] == data and calls[0].params["chat_id"] == 1000
    assert calls[1].files == {} and calls[1].params["photo"] == first.photo[-1].file_id
    sent = tg.sent_to(1000)
    assert [s.kind for s in sent] == ["photo", "photo"]
    assert [s.by_file_id for s in sent] == [[False], [True]]
    assert tg.file_bytes(first.photo[-1].file_id) == data


def test_unknown_file_id_and_bad_image_are_rejected(tg: FakeTelegram) -> None:
    async def main(photo: Any) -> None:
        async with make_bot(tg) as bot:
            await bot.send_photo(1000, photo)

    with pytest.raises(BadRequest, match=r"(?i)wrong file identifier"):
        asyncio.run(main("AgACAgIAAxkBAAnope"))
    with pytest.raises(BadRequest, match=r"(?i)image_process_failed"):
        asyncio.run(main(b"not an image at all"))
    assert [c.status for c in tg.calls("sendPhoto")] == [400, 400]


def test_send_media_group_of_uploaded_photos(tg: FakeTelegram) -> None:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    media = [
        InputMediaPhoto(jpeg(c), caption=f"<b>{i + 1}.</b> score 0.{9 - i}", parse_mode="HTML")
        for i, c in enumerate(colours)
    ]

    async def main() -> tuple[telegram.Message, ...]:
        async with make_bot(tg) as bot:
            return await bot.send_media_group(1000, media)

    messages = asyncio.run(main())
    assert len(messages) == 3
    assert all(m.photo and m.media_group_id == messages[0].media_group_id for m in messages)
    assert len({m.photo[-1].file_id for m in messages}) == 3
    assert [m.caption for m in messages] == ["1. score 0.9", "2. score 0.8", "3. score 0.7"]
    assert messages[0].caption_entities[0].type == "bold"
    call = tg.calls("sendMediaGroup")[0]
    refs = [item["media"] for item in call.params["media"]]
    assert all(r.startswith("attach://") for r in refs)
    assert sorted(call.files) == sorted(r[len("attach://") :] for r in refs)
    sent = tg.sent_to(1000)
    assert len(sent) == 1 and sent[0].kind == "media_group"
    assert sent[0].captions == [m.caption for m in messages]
    for m, c in zip(messages, colours, strict=True):
        with Image.open(io.BytesIO(tg.file_bytes(m.photo[-1].file_id))) as img:
            assert img.size == (400, 300)
            assert max(abs(a - b) for a, b in zip(img.getpixel((5, 5)), c, strict=True)) < 20


def test_a_call_is_received_when_its_whole_body_has_arrived(tg: FakeTelegram) -> None:
    import socket

    body = b"chat_id=1000&text=" + b"x" * 2000
    head = (
        f"POST /bot{tg.token}/sendMessage HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    mark = tg.mark()
    with socket.create_connection(("127.0.0.1", tg.port)) as conn:
        conn.sendall(head + body[:1000])
        before_the_rest = time.monotonic()
        conn.sendall(body[1000:])
        conn.recv(65536)
    (call,) = tg.calls("sendMessage", since=mark)
    assert call.ok and call.time <= call.received
    assert call.received >= before_the_rest  # not before its last byte was sent
    assert tg.calls(since=tg.mark()) == []


def test_limits_are_enforced_like_telegram(tg: FakeTelegram) -> None:
    photo = jpeg((1, 2, 3), (50, 50))

    async def main(action: str) -> Any:
        async with make_bot(tg) as bot:
            if action == "long caption":
                return await bot.send_photo(1000, photo, caption="x" * 1025)
            if action == "long album caption":
                items = [InputMediaPhoto(photo, caption="y" * 1025), InputMediaPhoto(photo)]
                return await bot.send_media_group(1000, items)
            if action == "album of one":
                return await bot.send_media_group(1000, [InputMediaPhoto(photo)])
            if action == "album of eleven":
                return await bot.send_media_group(1000, [InputMediaPhoto(photo)] * 11)
            if action == "long text":
                return await bot.send_message(1000, "z" * 4097)
            if action == "markdown":
                return await bot.send_message(1000, "score 0.91", parse_mode="MarkdownV2")
            if action == "html":
                return await bot.send_message(1000, "a <3 b", parse_mode="HTML")
            if action == "br tag":
                return await bot.send_message(1000, "a<br>b", parse_mode="HTML")
            raise AssertionError(action)

    expected = {
        "long caption": "message caption is too long",
        "long album caption": "message caption is too long",
        "album of one": "2-10",
        "album of eleven": "too many messages",
        "long text": "message is too long",
        "markdown": "Character '.' is reserved",
        "html": "can't parse entities",
        "br tag": 'unsupported start tag "br"',
    }
    for action, message in expected.items():
        with pytest.raises(BadRequest, match="(?i)" + message):
            asyncio.run(main(action))
    assert tg.sent_to(1000) == []

    async def at_the_limits() -> None:
        async with make_bot(tg) as bot:
            await bot.send_photo(
                1000, photo, caption="<i>" + "x" * 1024 + "</i>", parse_mode="HTML"
            )
            await bot.send_message(1000, "z" * 4096)

    asyncio.run(at_the_limits())
    assert [s.kind for s in tg.sent_to(1000)] == ["photo", "message"]


def test_get_file_downloads_the_users_photo(tg: FakeTelegram) -> None:
    data = jpeg((10, 120, 240), (800, 600))
    msg = tg.inject_photo(data, caption="what is this?")
    assert len(msg["photo"]) == 3 and msg["photo"][-1]["width"] == 800

    async def main() -> tuple[bytearray, bytearray, str]:
        async with make_bot(tg) as bot:
            update = (await bot.get_updates(timeout=0))[0]
            largest = update.message.photo[-1]
            got = await (await bot.get_file(largest.file_id)).download_as_bytearray()
            small = await (
                await bot.get_file(update.message.photo[0].file_id)
            ).download_as_bytearray()
            return got, small, update.message.caption

    got, small, caption = asyncio.run(main())
    assert bytes(got) == data and caption == "what is this?"
    with Image.open(io.BytesIO(bytes(small))) as thumb:
        assert max(thumb.size) == 90


def test_get_file_refuses_files_over_20_mb(tg: FakeTelegram) -> None:
    msg = tg.inject_document(jpeg((1, 1, 1)), "big.jpg", "image/jpeg", file_size=25 * 2**20)
    assert msg["document"]["file_size"] == 25 * 2**20 and "thumbnail" in msg["document"]

    async def main() -> None:
        async with make_bot(tg) as bot:
            await bot.get_file(msg["document"]["file_id"])

    with pytest.raises(BadRequest, match=r"(?i)file is too big"):
        asyncio.run(main())


def test_a_reply_to_a_bot_photo_carries_it(tg: FakeTelegram) -> None:
    async def send() -> telegram.Message:
        async with make_bot(tg) as bot:
            return await bot.send_photo(1000, jpeg((255, 255, 0)), caption="rank 1")

    sent = asyncio.run(send())
    bot_msg = tg.sent_to(1000)[0].messages[0]
    reply = tg.inject_text("/ask what color is it?", reply_to=bot_msg)
    assert reply["message_id"] == sent.message_id + 1

    async def receive() -> telegram.Message:
        async with make_bot(tg) as bot:
            return (await bot.get_updates(timeout=0))[0].message

    msg = asyncio.run(receive())
    original = msg.reply_to_message
    assert original.message_id == sent.message_id and original.from_user.is_bot
    assert original.photo[-1].file_id == sent.photo[-1].file_id and original.caption == "rank 1"


def test_a_command_carries_its_bot_command_entity(tg: FakeTelegram) -> None:
    tg.inject_text("/ask what shape?")
    tg.inject_photo(small_jpeg(), caption="/ask colour?")

    async def main() -> tuple[list[telegram.Update], bool, bool]:
        async with make_bot(tg) as bot:
            updates = list(await bot.get_updates(timeout=0))
            handler = CommandHandler("ask", lambda u, c: None)
            return (
                updates,
                bool(handler.check_update(updates[0])),
                bool(filters.CaptionRegex(r"^/ask").check_update(updates[1])),
            )

    updates, command_matches, caption_matches = asyncio.run(main())
    text_msg, photo_msg = updates[0].message, updates[1].message
    assert text_msg.entities[0].type == "bot_command" and text_msg.entities[0].length == 4
    assert photo_msg.caption_entities[0].type == "bot_command"
    assert command_matches and caption_matches


def test_flood_control_429_then_success(tg: FakeTelegram) -> None:
    tg.fail("sendMessage", 429, retry_after=1)

    async def main() -> tuple[RetryAfter, telegram.Message]:
        async with make_bot(tg) as bot:
            try:
                await bot.send_message(1000, "first try")
            except RetryAfter as err:
                caught = err
            else:
                raise AssertionError("no RetryAfter")
            return caught, await bot.send_message(1000, "second try")

    err, msg = asyncio.run(main())
    assert err.retry_after in (1, dtm.timedelta(seconds=1))
    assert msg.text == "second try"
    assert [(c.status, c.params["text"]) for c in tg.calls("sendMessage")] == [
        (429, "first try"),
        (200, "second try"),
    ]
    assert tg.calls("sendMessage", ok=False)[0].error == "Too Many Requests: retry after 1"
    assert [s.text for s in tg.sent_to(1000)] == ["second try"]


def test_gateway_errors_disconnects_and_outages_are_network_errors(tg: FakeTelegram) -> None:
    tg.fail("sendMessage", 502)
    tg.fail("sendChatAction", "disconnect")
    tg.slow("deleteWebhook", 1.5)

    async def main() -> list[str]:
        seen = []
        async with make_bot(tg) as bot:
            tg.fail("getMe", 500, times=2)  # after initialize(), which calls getMe
            for call in (
                lambda: bot.send_message(1000, "hi"),
                lambda: bot.send_chat_action(1000, "upload_photo"),
                lambda: bot.get_me(),
                lambda: bot.get_me(),
                lambda: bot.delete_webhook(read_timeout=0.5),
            ):
                try:
                    await call()
                    seen.append("ok")
                except TimedOut:  # a subclass of NetworkError: check it first
                    seen.append("TimedOut")
                except NetworkError as err:
                    seen.append(f"NetworkError: {err}")
            tg.outage(1.0, 502, methods=["sendMessage"])
            for _ in range(2):
                try:
                    await bot.send_message(1000, "during outage")
                    seen.append("ok")
                except NetworkError:
                    seen.append("NetworkError")
            await asyncio.sleep(1.1)
            await bot.send_message(1000, "after outage")
            seen.append("ok")
        return seen

    seen = asyncio.run(main())
    assert seen[0].startswith("NetworkError: Bad Gateway (502). Parsing the server response")
    assert "Server disconnected" in seen[1]
    assert seen[2] == seen[3] == "NetworkError: Internal Server Error"
    assert seen[4] == "TimedOut"
    assert seen[5:] == ["NetworkError", "NetworkError", "ok"]
    statuses = [c.status for c in tg.calls("sendMessage")]
    assert statuses == [502, 502, 502, 200]


def test_set_my_commands_and_chat_action(tg: FakeTelegram) -> None:
    async def main() -> tuple[telegram.BotCommand, ...]:
        async with make_bot(tg) as bot:
            await bot.set_my_commands(
                [("start", "what this bot does"), ("ask", "reply to a photo: ask about it")]
            )
            await bot.send_chat_action(1000, "upload_photo")
            return await bot.get_my_commands()

    commands = asyncio.run(main())
    assert [c.command for c in commands] == ["start", "ask"]
    assert tg.calls("setMyCommands")[0].params["commands"][1]["command"] == "ask"
    assert tg.my_commands()[0] == {"command": "start", "description": "what this bot does"}
    assert tg.calls("sendChatAction")[0].params == {"chat_id": 1000, "action": "upload_photo"}


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBUserWarning")
def test_unknown_methods_are_answered_and_recorded(tg: FakeTelegram) -> None:
    async def main() -> Any:
        async with make_bot(tg) as bot:
            return await bot.do_api_request("setMyShortDescription", {"short_description": "hi"})

    assert asyncio.run(main()) is True
    assert tg.unknown_methods == ["setMyShortDescription"]
    with pytest.raises(AssertionError, match="unknown method setMyShortDescription"):
        tg.assert_no_errors()
    tg.assert_no_errors(allow_unknown=True)


def test_edit_and_documents(tg: FakeTelegram) -> None:
    async def main() -> tuple[telegram.Message, telegram.Message]:
        async with make_bot(tg) as bot:
            msg = await bot.send_message(1000, "Searching…")
            edited = await bot.edit_message_text("Found 3", chat_id=1000, message_id=msg.message_id)
            doc = await bot.send_document(1000, b"\x00\x01binary", filename="hits.json")
            return edited, doc

    edited, doc = asyncio.run(main())
    assert edited.text == "Found 3" and edited.edit_date is not None
    assert doc.document.file_name == "hits.json" and doc.document.mime_type == "application/json"
    assert [s.text for s in tg.sent_to(1000)][:1] == ["Found 3"]  # edits show in sent_to
    assert tg.file_bytes(doc.document.file_id) == b"\x00\x01binary"


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, Any], str | None]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(
            (json.loads(body), self.headers.get("X-Telegram-Bot-Api-Secret-Token"))
        )
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_delivery_and_get_updates_conflict(tg: FakeTelegram) -> None:
    _Hook.received = []
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{hook.server_address[1]}/hook"
    try:

        async def setup() -> None:
            async with make_bot(tg) as bot:
                await bot.set_webhook(url, secret_token="s3cret")
                with pytest.raises(Conflict, match="webhook is active"):
                    await bot.get_updates(timeout=0)

        asyncio.run(setup())
        sent = tg.inject_text("via webhook")
        tg.wait_updates_consumed(timeout=60)
        assert _Hook.received[0][0]["message"]["message_id"] == sent["message_id"]
        assert _Hook.received[0][1] == "s3cret"
        assert tg.webhook_deliveries[0][1] == 200
    finally:
        hook.shutdown()
        hook.server_close()


def test_a_real_application_polls_and_answers(tg: FakeTelegram) -> None:
    """PTB's Application + Updater against the fake, with a 429 on getUpdates mid-run."""

    async def echo(update: telegram.Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.message.reply_text(f"echo: {update.message.text}", do_quote=True)

    async def main() -> None:
        app = (
            ApplicationBuilder()
            .token(tg.token)
            .base_url(tg.base_url)
            .base_file_url(tg.base_file_url)
            .build()
        )
        app.add_handler(MessageHandler(filters.TEXT, echo))
        async with app:
            await app.start()
            await app.updater.start_polling(timeout=2)
            first = tg.inject_text("hello")
            await asyncio.to_thread(tg.wait_for, "sendMessage", 5)
            tg.fail("getUpdates", 429, retry_after=1)
            mark = tg.mark()
            await asyncio.to_thread(tg.wait_for, "getUpdates", 5, since=mark, ok=False)
            tg.inject_text("again")
            await asyncio.to_thread(tg.wait_for, "sendMessage", 10, count=2)
            await app.updater.stop()
            await app.stop()
        replies = tg.sent_to(1000)
        assert [r.text for r in replies] == ["echo: hello", "echo: again"]
        assert replies[0].messages[0]["reply_to_message"]["message_id"] == first["message_id"]

    asyncio.run(main())
    methods = [c.method for c in tg.calls()]
    assert methods[:2] == ["getMe", "deleteWebhook"]
    assert tg.pending_updates() == []
    assert 409 not in {c.status for c in tg.calls()}
    tg.assert_no_errors()


def test_markup_parsing() -> None:
    assert parse_formatted("<b>1.</b> a &lt;red&gt; circle", "HTML") == (
        "1. a <red> circle",
        [{"type": "bold", "offset": 0, "length": 2}],
    )
    plain, ents = parse_formatted(r"*1\.* a red circle \(0\.91\)", "MarkdownV2")
    assert plain == "1. a red circle (0.91)" and ents[0]["type"] == "bold"


def test_a_crash_inside_the_fake_is_a_500_and_recorded() -> None:
    with FakeTelegram() as fake:

        def boom(params: dict[str, Any], ctx: Any) -> Any:
            raise RuntimeError("bug in the fake")

        fake._methods["getMyCommands"] = boom

        async def main() -> list[str]:
            async with make_bot(fake) as bot:
                try:
                    await bot.get_my_commands()
                except NetworkError as err:
                    return [str(err), (await bot.get_me()).username]
                raise AssertionError("no error")

        assert asyncio.run(main()) == ["Internal Server Error", "test_image_bot"]
        assert len(fake.errors) == 1 and "bug in the fake" in fake.errors[0]
        with pytest.raises(AssertionError, match="bug in the fake"):
            fake.assert_no_errors()


def test_stop_releases_a_held_long_poll() -> None:
    fake = FakeTelegram().start()
    outcome: list[Any] = []

    async def poll() -> None:
        async with make_bot(fake) as bot:
            try:
                outcome.append(await bot.get_updates(timeout=300))
            except NetworkError as err:
                outcome.append(err)

    thread = threading.Thread(target=asyncio.run, args=(poll(),))
    thread.start()
    fake.wait_for("getMe", 60)
    time.sleep(0.3)  # (the poll need not be held yet: stop ends it either way)
    fake.stop()
    thread.join(120)
    assert not thread.is_alive()  # ended by the stop, long before the poll's 300 s
    # Held: the poll answers empty. Not held yet: its connection is closed. Either way it ends.
    assert len(outcome) == 1
    assert outcome[0] in ((), []) or isinstance(outcome[0], NetworkError)
