"""End to end: `python -m bot` as a real process, talking to the fake Telegram Bot API."""

from __future__ import annotations

import io
import itertools
import re
import time
from collections.abc import Iterator

import pytest
from PIL import Image

from bot.replies import FILE_TOO_BIG, GENERIC_ERROR
from tests.bot_harness import RunningBot, build_index, jpeg, png_bytes, running_bot
from tests.fake_telegram import FakeTelegram, Sent
from tests.fixtures.shapes import LABELS, caption

ALLOWED = range(1000, 1200)
ADMIN = 1199
STRANGER = 666
GROUP = -1001234567890
RATE_LIMIT = 6
_users = itertools.count(1000)


def new_user() -> int:
    """A fresh user (and private chat) per scenario: rate limits and chats stay apart."""
    return next(_users)


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBot]:
    settings, images = build_index(
        tmp_path_factory.mktemp("bot"),
        {"train2014": 48, "val2014": 24},
        allowed_user_ids=frozenset(ALLOWED),
        admin_user_ids=frozenset({ADMIN}),
        rate_limit_per_minute=RATE_LIMIT,
    )
    with (
        FakeTelegram(hide_button_messages=True) as tg,
        running_bot(settings, images, tg) as running,
    ):
        yield running
        tg.assert_no_errors()
    assert running.proc.returncode == 0, running.log()[-3000:]


def ask(bot: RunningBot, text: str, user: int, n: int = 1, timeout: float = 60) -> list:
    since = len(bot.tg.sent_to(user))
    bot.tg.inject_text(text, user_id=user)
    return bot.tg.wait_sent(user, n, timeout=timeout, since=since)


def test_commands_are_registered(bot: RunningBot) -> None:
    commands = {c["command"] for c in bot.tg.my_commands()}
    assert commands == {"help", "stats", "ask"}


def test_text_gives_an_album_of_matching_photos(bot: RunningBot) -> None:
    user = new_user()
    [album] = ask(bot, "a red circle", user)
    assert album.kind == "media_group" and len(album.messages) == 5
    assert bot.album_labels(album).count(("red", "circle")) >= 4
    for rank, text in enumerate(album.captions, 1):
        match = re.fullmatch(rf"#{rank} · (\d\.\d\d) · (.+)", text)
        assert match, text
    scores = [float(re.search(r"· (\d\.\d\d) ·", c).group(1)) for c in album.captions]
    assert scores == sorted(scores, reverse=True)
    assert album.captions[0].endswith("a red circle")
    action = bot.tg.wait_for(lambda c: c.method == "sendChatAction" and c.params["chat_id"] == user)
    assert action.params["action"] == "upload_photo"


@pytest.mark.parametrize(("color", "shape"), LABELS[::4])
def test_other_descriptions(bot: RunningBot, color: str, shape: str) -> None:
    [album] = ask(bot, f"a photo of a {color} {shape}", new_user())
    assert bot.album_labels(album).count((color, shape)) >= 4


def test_the_second_identical_query_reuses_file_ids(bot: RunningBot) -> None:
    user = new_user()
    [first] = ask(bot, "a blue square", user)
    [second] = ask(bot, "a blue square", user)
    assert second.by_file_id == [True] * 5
    assert second.call.files == {}  # nothing uploaded the second time
    assert second.photo_file_ids == first.photo_file_ids
    assert bot.album_labels(second) == bot.album_labels(first)


def test_a_photo_finds_similar_photos(bot: RunningBot) -> None:
    user = new_user()
    bot.tg.inject_photo(jpeg("green", "square", (200, 150)), user_id=user)
    [album] = bot.tg.wait_sent(user, timeout=60)
    assert album.kind == "media_group"
    assert bot.album_labels(album).count(("green", "square")) >= 4


def test_an_image_sent_as_a_file_finds_similar_photos(bot: RunningBot) -> None:
    user = new_user()
    picture = Image.open(io.BytesIO(jpeg("yellow", "triangle")))
    bot.tg.inject_document(png_bytes(picture), "scan.png", "image/png", user_id=user)
    [album] = bot.tg.wait_sent(user, timeout=60)
    assert bot.album_labels(album).count(("yellow", "triangle")) >= 4


def test_start_help_and_stats(bot: RunningBot) -> None:
    user = new_user()
    [start] = ask(bot, "/start", user)
    assert start.text.startswith("Hello! I find pictures. Send me:") and "/help" in start.text
    [help_] = ask(bot, "/help", user)
    assert "similar photos" in help_.text and "/ask what is the man holding?" in help_.text
    assert "#" not in help_.text  # an index without categories: no hashtag line
    [stats] = ask(bot, "/stats", user)
    assert "Pictures indexed: 72" in stats.text
    assert "Store:" not in stats.text and "Chroma" not in stats.text  # not an admin
    assert "Device" not in stats.text and "cpu" not in stats.text
    assert "Model: tiny_clip (CLIP" in stats.text  # a local model by its name, not its path
    [admin_stats] = ask(bot, "/stats", ADMIN)
    assert "Pictures indexed: 72" in admin_stats.text
    assert "Device: cpu (float32)" in admin_stats.text
    assert f"Model: {bot.settings.clip_model} (CLIP" in admin_stats.text
    assert f"Store: embedded Chroma in {bot.settings.chroma_path}" in admin_stats.text


@pytest.mark.parametrize(
    ("inject", "expected"),
    [
        (lambda tg, u: tg.inject_text("   ", user_id=u), "Send me a few words"),
        (lambda tg, u: tg.inject_sticker(user_id=u), "only search with words or pictures"),
        (
            lambda tg, u: tg.inject_message(
                user_id=u, voice={"file_id": "v1", "file_unique_id": "v", "duration": 2}
            ),
            "only search",
        ),
        (
            lambda tg, u: tg.inject_message(
                user_id=u,
                video={
                    "file_id": "x1",
                    "file_unique_id": "x",
                    "width": 1,
                    "height": 1,
                    "duration": 2,
                },
            ),
            "only search",
        ),
        (
            lambda tg, u: tg.inject_message(
                user_id=u, location={"latitude": 1.0, "longitude": 2.0}
            ),
            "only search",
        ),
        (
            lambda tg, u: tg.inject_message(
                user_id=u,
                poll={
                    "id": "p",
                    "question": "?",
                    "options": [
                        {"text": "a", "voter_count": 0, "persistent_id": "0"},
                        {"text": "b", "voter_count": 0, "persistent_id": "1"},
                    ],
                    "total_voter_count": 0,
                    "is_closed": False,
                    "is_anonymous": True,
                    "type": "regular",
                    "allows_multiple_answers": False,
                    "allows_revoting": False,
                    "members_only": False,
                },
            ),
            "only search",
        ),
        (
            lambda tg, u: tg.inject_photo(b"\xff\xd8\xff\xe0 definitely not a jpeg", user_id=u),
            "That picture is damaged (cut off or corrupt), so I can't read it.",
        ),
        (
            lambda tg, u: tg.inject_document(
                b"%PDF-1.4 hello", "notes.pdf", "application/pdf", user_id=u
            ),
            "not a picture",
        ),
        (
            lambda tg, u: tg.inject_document(
                jpeg("red", "square"), "huge.jpg", "image/jpeg", file_size=25 * 2**20, user_id=u
            ),
            FILE_TOO_BIG,
        ),
        (
            lambda tg, u: tg.inject_text("/frobnicate", user_id=u),
            "I don't know /frobnicate: /help shows what I can do.",
        ),
    ],
    ids=[
        "blank",
        "sticker",
        "voice",
        "video",
        "location",
        "poll",
        "corrupt-photo",
        "pdf",
        "file-too-big",
        "unknown-command",
    ],
)
def test_bad_input_gets_a_clear_answer(bot: RunningBot, inject, expected: str) -> None:
    user = new_user()
    inject(bot.tg, user)
    [reply] = bot.tg.wait_sent(user, timeout=60)
    assert reply.kind == "message"
    assert expected.split("<")[0] in reply.text
    [album] = ask(bot, "a green circle", user)  # and the bot carries on
    assert album.kind == "media_group"


def test_very_long_text_is_searched_by_its_beginning(bot: RunningBot) -> None:
    [album] = ask(bot, "a yellow square " + "and more words " * 500, new_user())
    assert bot.album_labels(album).count(("yellow", "square")) >= 4


def test_a_hit_whose_file_is_gone_is_skipped(bot: RunningBot) -> None:
    victim = next(i for i in bot.images if (i.color, i.shape) == ("blue", "triangle"))
    data = victim.path.read_bytes()
    victim.path.unlink()
    try:
        [album] = ask(bot, "a blue triangle", new_user())
        assert len(album.messages) == 5
        uploaded = [bot.tg.file_bytes(fid) for fid in album.photo_file_ids]
        assert data not in uploaded
        assert bot.album_labels(album).count(("blue", "triangle")) >= 4
    finally:
        victim.path.write_bytes(data)
    assert f"index entry {victim.id} " in bot.log() and "No such file" in bot.log()


def test_a_stranger_is_refused_politely(bot: RunningBot) -> None:
    [reply] = ask(bot, "a red circle", STRANGER)
    assert reply.kind == "message" and "private" in reply.text and str(STRANGER) in reply.text
    assert all(s.kind == "message" for s in bot.tg.sent_to(STRANGER))
    assert not [c for c in bot.tg.calls("sendChatAction") if c.params["chat_id"] == STRANGER]


def test_a_refusal_that_cannot_be_sent_still_refuses(bot: RunningBot) -> None:
    stranger = STRANGER + 1
    bot.tg.fail("sendMessage", 400, chat_id=stranger)
    bot.tg.inject_text("a red circle", user_id=stranger)
    failed = bot.tg.wait_for(
        lambda c: c.method == "sendMessage" and c.params["chat_id"] == stranger, timeout=60
    )
    assert failed.status == 400
    assert ask(bot, "a red circle", new_user())[0].kind == "media_group"  # the bot carries on
    assert bot.tg.sent_to(stranger) == []
    to_stranger = [c for c in bot.tg.calls() if c.params.get("chat_id") == stranger]
    assert [c.method for c in to_stranger] == ["sendMessage"]  # no album, no "uploading…"


def test_a_flooding_stranger_gets_one_refusal(bot: RunningBot) -> None:
    stranger = STRANGER + 2
    for n in range(20):
        bot.tg.inject_text(f"a red circle {n}", user_id=stranger)
    bot.tg.wait_updates_consumed(timeout=60)
    assert ask(bot, "a red circle", new_user())[0].kind == "media_group"
    [refusal] = bot.tg.sent_to(stranger)
    assert "private" in refusal.text


def test_an_update_without_a_user_is_dropped(bot: RunningBot) -> None:
    chat = 1_700_000
    bot.tg.inject_update(
        {
            "message": {
                "message_id": 1,
                "date": int(time.time()),
                "chat": {"id": chat, "type": "private", "first_name": "Nobody"},
                "text": "a red circle",
            }
        }
    )
    bot.tg.wait_updates_consumed(timeout=60)
    assert ask(bot, "a red circle", new_user())[0].kind == "media_group"
    assert not [c for c in bot.tg.calls() if c.params.get("chat_id") == chat]
    assert bot.proc.poll() is None


def test_in_a_group_only_what_is_meant_for_the_bot_is_answered(bot: RunningBot) -> None:
    user, tg = new_user(), bot.tg
    tg.inject_text("a red circle", user_id=user, chat_id=GROUP)  # chat among people
    tg.inject_message(user_id=user, chat_id=GROUP, new_chat_members=[tg.user(5555)])
    tg.inject_text("/start@OtherBot", user_id=user, chat_id=GROUP)
    tg.inject_photo(jpeg("red", "square"), "/ask@OtherBot what is it?", user_id=user, chat_id=GROUP)
    tg.inject_text("/help@test_image_bot", user_id=user, chat_id=GROUP)
    [help_] = tg.wait_sent(GROUP, timeout=60)
    assert "similar photos" in help_.text
    mention = {"type": "mention", "offset": 0, "length": len("@test_image_bot")}
    tg.inject_text("@test_image_bot a red circle", user_id=user, chat_id=GROUP, entities=[mention])
    [album] = tg.wait_sent(GROUP, timeout=60, since=1)
    assert album.kind == "media_group"
    assert bot.album_labels(album).count(("red", "circle")) >= 4
    tg.inject_text("a blue square", user_id=user, chat_id=GROUP, reply_to=album.messages[0])
    tg.inject_text("/stats@test_image_bot", user_id=user, chat_id=GROUP)  # chatter: no album
    [stats] = tg.wait_sent(GROUP, timeout=60, since=2)
    assert stats.text.startswith("Pictures indexed")
    assert [s.kind for s in tg.sent_to(GROUP)] == ["message", "media_group", "message"]


def test_a_user_over_the_rate_limit_is_told_when_to_retry(bot: RunningBot) -> None:
    user = new_user()
    for _ in range(RATE_LIMIT):
        ask(bot, "a red square", user)
    [reply] = ask(bot, "a red square", user)
    assert reply.kind == "message"
    match = re.search(r"Try again in (\d+) s", reply.text)
    assert match and 1 <= int(match.group(1)) <= 60
    other = new_user()
    assert ask(bot, "a red square", other)[0].kind == "media_group"  # others are not affected


def test_429_is_waited_out_and_retried(bot: RunningBot) -> None:
    user = new_user()
    bot.tg.fail("sendMediaGroup", 429, retry_after=1, chat_id=user)
    [album] = ask(bot, "a green triangle", user)
    assert album.kind == "media_group"
    assert bot.album_labels(album).count(("green", "triangle")) >= 4
    attempts = [c for c in bot.tg.calls("sendMediaGroup") if c.params["chat_id"] == user]
    assert [c.status for c in attempts] == [429, 200]  # the same album, sent again after it
    assert attempts[1].params["media"] == attempts[0].params["media"]


def test_a_502_outage_is_survived_with_no_message_lost(bot: RunningBot) -> None:
    users = [new_user() for _ in range(3)]
    bot.tg.outage(3.0, status=502, methods=["sendMediaGroup", "sendMessage", "sendChatAction"])
    for user in users:
        bot.tg.inject_text("a blue circle", user_id=user)
    for user in users:
        [album] = bot.tg.wait_sent(user, timeout=90)
        assert album.kind == "media_group"
        assert bot.album_labels(album).count(("blue", "circle")) >= 4
    failed = [c for c in bot.tg.calls("sendMediaGroup") if c.status == 502]
    assert failed, "the outage was not hit"
    assert "Application started" in bot.log() and bot.proc.poll() is None


def test_an_unexpected_error_is_logged_and_the_user_told(bot: RunningBot) -> None:
    # Known by file_id whatever ran before (another user's same search): so the first 400
    # is taken for a stale file_id and retried by upload; the second one is the error.
    ask(bot, "a yellow circle quokka", new_user())
    user = new_user()
    unexpected = "Bad Request: something unexpected"
    bot.tg.fail("sendMediaGroup", 400, description=unexpected, times=2, chat_id=user)
    [reply] = ask(bot, "a yellow circle quokka", user)
    assert reply.text == GENERIC_ERROR
    attempts = [c for c in bot.tg.calls("sendMediaGroup") if c.params["chat_id"] == user]
    assert [c.status for c in attempts] == [400, 400]
    assert attempts[0].files == {} and attempts[1].files  # by file_id, then uploaded
    log = bot.log()
    assert "error while handling update" in log and "something unexpected" in log.lower()
    assert f"chat {user} user {user} message" in log  # the ids, for the operator
    assert "quokka" not in log and f"User{user}" not in log  # not the user's words or name
    assert ask(bot, "a yellow circle", user)[0].kind == "media_group"


def test_many_users_at_once_all_get_the_right_album(bot: RunningBot) -> None:
    users = [new_user() for _ in range(20)]
    wanted = {}
    for round_ in range(3):
        for n, user in enumerate(users):
            color, shape = LABELS[(n + round_) % len(LABELS)]
            wanted.setdefault(user, []).append((color, shape))
            bot.tg.inject_text(caption(color, shape), user_id=user)
    for user in users:
        albums = bot.tg.wait_sent(user, 3, timeout=180)
        assert [a.kind for a in albums] == ["media_group"] * 3
        for album in albums:
            top = album.captions[0].split(" · ")[-1]
            assert top in [caption(*w) for w in wanted[user]]
        got = sorted(album.captions[0].split(" · ")[-1] for album in albums)
        assert got == sorted(caption(*w) for w in wanted[user])


def test_one_slow_reply_does_not_hold_up_others(bot: RunningBot) -> None:
    slow_user, fast_user = new_user(), new_user()
    release = bot.tg.hold("sendMediaGroup", chat_id=slow_user)  # answered when the test says
    bot.tg.inject_text("a red triangle", user_id=slow_user)
    release.wait_arrived()  # the slow album is on its way
    [album] = ask(bot, "a green square", fast_user)
    assert album.kind == "media_group"
    assert bot.tg.sent_to(slow_user) == []  # still being sent
    release.release()
    [slow_album] = bot.tg.wait_sent(slow_user, timeout=60)
    assert slow_album.kind == "media_group"
    assert bot.album_labels(slow_album).count(("red", "triangle")) >= 4


# --- /ask ------------------------------------------------------------------------------------


def reply_to(bot: RunningBot, user: int, target: dict, text: str, n: int = 1) -> list:
    since = len(bot.tg.sent_to(user))
    bot.tg.inject_text(text, user_id=user, reply_to=target)
    return bot.tg.wait_sent(user, n, timeout=90, since=since)


def answer_to(bot: RunningBot, user: int, target: dict, question: str) -> str:
    """Reply `question` to `target`; the answer's text (not the "loading the model" notice)."""
    since = len(bot.tg.sent_to(user))
    bot.tg.inject_text(question, user_id=user, reply_to=target)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for sent in bot.tg.sent_to(user)[since:]:
            if sent.text and "first answer takes a little longer" not in sent.text:
                return sent.text
        time.sleep(0.05)
    raise AssertionError(f"no answer to {question!r}: {bot.tg.sent_to(user)[since:]}")


def wait_answer(bot: RunningBot, user: int, timeout: float = 120) -> Sent:
    """The first message to `user` after their search album that is not the loading notice."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for sent in bot.tg.sent_to(user)[1:]:
            if sent.text and "first answer takes a little longer" not in sent.text:
                return sent
        time.sleep(0.05)
    raise AssertionError(f"no answer for {user}: {bot.tg.sent_to(user)}")


def test_ask_about_a_users_photo_first_answer_warns_it_is_slower(bot: RunningBot) -> None:
    user = new_user()
    photo = bot.tg.inject_photo(jpeg("green", "square", (160, 120)), user_id=user)
    [album] = bot.tg.wait_sent(user, timeout=60)  # a photo alone is a search
    assert album.kind == "media_group"
    notice, answer = reply_to(bot, user, photo, "/ask what color is the shape?", n=2)
    assert "first answer takes a little longer" in notice.text
    assert answer.text == "Green"
    assert answer.messages[0]["reply_to_message"]["text"] == "/ask what color is the shape?"
    typing = [c for c in bot.tg.calls("sendChatAction") if c.params["chat_id"] == user]
    assert "typing" in {c.params["action"] for c in typing}
    [again] = reply_to(bot, user, photo, "/ask what shape is it?")  # loaded: no notice now
    assert again.text == "Square"


def test_a_follow_up_question_needs_no_second_download(bot: RunningBot) -> None:
    user = new_user()
    photo = bot.tg.inject_photo(jpeg("blue", "circle", (160, 120)), user_id=user)
    bot.tg.wait_sent(user, timeout=60)
    file_id = photo["photo"][-1]["file_id"]

    def downloads() -> int:
        return len([c for c in bot.tg.calls("getFile") if c.params.get("file_id") == file_id])

    before = downloads()  # the search downloaded it once
    answers = [
        answer_to(bot, user, photo, question)
        for question in ("/ask what color is the shape?", "/ask what shape is it?")
    ]
    assert answers == ["Blue", "Circle"]
    assert downloads() == before + 1  # the first question downloaded it, the follow-up did not


def test_ask_about_a_photo_of_the_bots_album(bot: RunningBot) -> None:
    user = new_user()
    [album] = ask(bot, "a blue triangle", user)
    second = album.messages[1]
    colour, shape = bot.album_labels(album)[1]
    [answer] = reply_to(bot, user, second, "/ask what shape is it?")
    assert answer.text == shape.capitalize()
    [answer] = reply_to(bot, user, second, "/ask what color is the shape?")
    assert answer.text == colour.capitalize()


def test_ask_alone_describes_the_photo(bot: RunningBot) -> None:
    user = new_user()
    photo = bot.tg.inject_photo(jpeg("yellow", "circle"), user_id=user)
    bot.tg.wait_sent(user, timeout=60)
    [answer] = reply_to(bot, user, photo, "/ask")
    assert answer.text == "📷 A yellow circle"


def test_a_photo_captioned_with_ask(bot: RunningBot) -> None:
    user = new_user()
    bot.tg.inject_photo(jpeg("red", "triangle"), "/ask what color is the shape?", user_id=user)
    [answer] = bot.tg.wait_sent(user, timeout=60)
    assert answer.kind == "message" and answer.text == "Red"  # an answer, not a search
    bot.tg.inject_photo(jpeg("blue", "circle"), "/ask", user_id=user)
    [caption_answer] = bot.tg.wait_sent(user, timeout=60, since=1)
    assert caption_answer.text == "📷 A blue circle"


def test_ask_about_an_image_file(bot: RunningBot) -> None:
    user = new_user()
    picture = Image.open(io.BytesIO(jpeg("green", "triangle")))
    document = bot.tg.inject_document(png_bytes(picture), "shape.png", "image/png", user_id=user)
    bot.tg.wait_sent(user, timeout=60)
    [answer] = reply_to(bot, user, document, "/ask what shape is it?")
    assert answer.text == "Triangle"


def test_ask_bad_input(bot: RunningBot) -> None:
    user = new_user()
    [usage] = ask(bot, "/ask what is this?", user)
    assert "Reply to a photo with /ask" in usage.text
    text_message = bot.tg.inject_text("just words", user_id=user)
    bot.tg.wait_sent(user, 2, timeout=60)
    [no_photo] = reply_to(bot, user, text_message, "/ask what is this?")
    assert "has no photo" in no_photo.text
    photo = bot.tg.inject_photo(jpeg("red", "square"), "/ask what?", user_id=new_user())
    long_user = photo["from"]["id"]
    bot.tg.wait_sent(long_user, timeout=60)
    [too_long] = reply_to(bot, long_user, photo, "/ask " + "why " * 100)
    assert "too long (399 characters)" in too_long.text
    corrupt_user = new_user()
    corrupt = bot.tg.inject_photo(b"\xff\xd8\xff\xe0 not really a jpeg", user_id=corrupt_user)
    bot.tg.wait_sent(corrupt_user, timeout=60)
    [unreadable] = reply_to(bot, corrupt_user, corrupt, "/ask what color is the shape?")
    assert unreadable.text.startswith("That picture is damaged (cut off or corrupt)")


def test_searches_keep_flowing_while_questions_queue(bot: RunningBot) -> None:
    # 12-megapixel photos: decoding and resizing each keeps the one VQA thread busy for a
    # noticeable time, so 8 questions queue for a few seconds.
    askers = [new_user() for _ in range(8)]
    big = jpeg("blue", "square", (4000, 3000))
    photos = {}
    for user in askers:
        photos[user] = bot.tg.inject_photo(big, user_id=user)
    for user in askers:
        bot.tg.wait_sent(user, timeout=60)
    # The questions' downloads are held until the search is answered: the album cannot
    # race the queue, it must come while all 8 questions are still pending.
    file_ids = {size["file_id"] for user in askers for size in photos[user]["photo"]}
    held = bot.tg.hold("getFile", times=len(askers), where=lambda p: p.get("file_id") in file_ids)
    for user in askers:
        bot.tg.inject_text("/ask what shape is it?", user_id=user, reply_to=photos[user])
    held.wait_arrived()
    searcher = new_user()
    [album] = ask(bot, "a yellow square", searcher)
    assert album.kind == "media_group"
    assert all(len(bot.tg.sent_to(user)) == 1 for user in askers)  # no answer yet
    held.release()
    answers = [wait_answer(bot, user) for user in askers]
    assert all(a.text == "Square" for a in answers)
