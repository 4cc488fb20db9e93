"""End to end: what the bot says, read as a user reads it (issue 23, items 9-12), with
`python -m bot` as a real process and the fake Telegram Bot API: /help in a user's words
with the index's own categories, /stats without the operator's details, errors without
Markdown, a picture that cannot be used and why, /ask without a model and with an empty
answer. The last test reads every text sent in these scenarios."""

from __future__ import annotations

import itertools
import json
import shutil
import time
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.bot_harness import RunningBot, build_index, jpeg, png_bytes, running_bot
from tests.conftest import TINY_BLIP2
from tests.fake_telegram import FakeTelegram, Sent

ADMIN = 3999
GROUP = -1003333333333
_users = itertools.count(3000)
CATEGORIES = {"cat": [0, 3, 6, 9], "dog": [1, 4]}
"""Positions of the pictures holding each category: an index of 2 kinds of objects."""
UNAVAILABLE = "Questions about photos are unavailable right now"


def new_user() -> int:
    """A fresh user (and private chat) per scenario."""
    return next(_users)


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBot]:
    """A bot over an index with categories whose BLIP-2 cannot load (its weights are
    missing): questions are unavailable."""
    root = tmp_path_factory.mktemp("texts")
    broken_blip2 = root / "blip2-without-weights"
    shutil.copytree(TINY_BLIP2, broken_blip2)
    (broken_blip2 / "model.safetensors").unlink()
    settings, images = build_index(
        root,
        {"train2014": 16, "val2014": 8},
        categories=CATEGORIES,
        admin_user_ids=frozenset({ADMIN}),
        rate_limit_per_minute=0,
        vqa_model=str(broken_blip2),
    )
    with FakeTelegram(hide_button_messages=True) as tg, running_bot(settings, images, tg) as bot:
        yield bot
        tg.assert_no_errors()
    assert bot.proc.returncode == 0, bot.log()[-3000:]


@pytest.fixture(scope="module")
def mute_bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBot]:
    """A bot over an index without categories whose BLIP-2 says nothing: its one-token
    caption ("a") is a special token, dropped when decoded, as a real model's empty answer."""
    root = tmp_path_factory.mktemp("mute")
    mute_blip2 = root / "mute-blip2"
    shutil.copytree(TINY_BLIP2, mute_blip2)
    tokenizer = json.loads((mute_blip2 / "tokenizer.json").read_text())
    a = tokenizer["model"]["vocab"]["a"]
    tokenizer["added_tokens"].append(
        {"id": a, "content": "a", "single_word": False, "lstrip": False, "rstrip": False}
        | {"normalized": False, "special": True}
    )
    (mute_blip2 / "tokenizer.json").write_text(json.dumps(tokenizer))
    settings, images = build_index(
        root,
        {"train2014": 8, "val2014": 4},
        rate_limit_per_minute=0,
        vqa_model=str(mute_blip2),
        vqa_max_new_tokens=1,
    )
    with FakeTelegram(hide_button_messages=True) as tg, running_bot(settings, images, tg) as bot:
        yield bot
        tg.assert_no_errors()
    assert bot.proc.returncode == 0, bot.log()[-3000:]


def send(bot: RunningBot, text: str, user: int, n: int = 1) -> list[Sent]:
    """Send `text` in `user`'s private chat; the `n` things the bot sends back."""
    since = len(bot.tg.sent_to(user))
    bot.tg.inject_text(text, user_id=user)
    return bot.tg.wait_sent(user, n, timeout=60, since=since)


def sent_texts(tg: FakeTelegram) -> list[str]:
    """Every text and caption the bot sent through `tg`, as Telegram shows it (after its
    HTML is parsed; edits included), and every button answer."""
    texts = []
    for call in tg.calls(ok=True):
        if call.method == "answerCallbackQuery":
            texts.append(call.params.get("text") or "")
            continue
        results = call.result if isinstance(call.result, list) else [call.result]
        for message in results:
            if isinstance(message, dict):
                texts += [message[key] for key in ("text", "caption") if message.get(key)]
    return [text for text in texts if text]


def assert_texts_read_well(tg: FakeTelegram) -> None:
    """No Markdown backtick in what the bot sent (it sends HTML: a backtick would show as it
    is), and every text starts with a capital letter (or an emoji, a symbol, a number)."""
    texts = sent_texts(tg)
    assert texts, "nothing was sent"
    with_backticks = [text for text in texts if "`" in text]
    assert not with_backticks, with_backticks
    lower_case = [text for text in texts if text.lstrip()[:1].islower()]
    assert not lower_case, lower_case


# --- /help and /stats (item 12) ---------------------------------------------------------------


def test_help_speaks_a_users_language_with_the_indexs_own_categories(bot: RunningBot) -> None:
    [help_] = send(bot, "/help", new_user())
    text = help_.text
    assert "cat + snow — both" in text
    assert "a dog on a beach -people — fewer people" in text
    assert "This index knows 2 kinds of objects: #cat, #dog" in text
    assert "COCO" not in text and "80" not in text and "weighs" not in text
    assert "a reply to a photo" in text  # what a reply means is told (item 8)


def test_help_without_categories_has_no_hashtag_line(mute_bot: RunningBot) -> None:
    [help_] = send(mute_bot, "/help", new_user())
    assert "#" not in help_.text and "kinds of objects" not in help_.text
    assert "cat + snow — both" in help_.text


def test_stats_keeps_the_operators_details_for_admins(bot: RunningBot) -> None:
    [stats] = send(bot, "/stats", new_user())
    assert stats.text.startswith("Pictures indexed: 24")
    assert "Model: tiny_clip (CLIP" in stats.text
    for detail in ("Device", "cpu", "float32", "Tuned", "batch", "Store", "Chroma"):
        assert detail not in stats.text, detail
    [admin] = send(bot, "/stats", ADMIN)
    assert "Device: cpu (float32)" in admin.text
    assert f"Store: embedded Chroma in {bot.settings.chroma_path}" in admin.text
    assert f"Model: {bot.settings.clip_model} (CLIP" in admin.text


# --- errors in a user's terms (items 9, 10) -------------------------------------------------


def test_an_error_with_code_in_it_shows_no_markdown(bot: RunningBot) -> None:
    [reply] = send(bot, "-red", new_user())
    assert reply.text.startswith("Only minus terms")
    assert "a beach -people" in reply.text and "`" not in reply.text
    code = [e for e in reply.messages[0].get("entities", []) if e["type"] == "code"]
    assert code, reply.messages[0]


def test_an_unknown_hashtag_is_answered_with_a_capital(bot: RunningBot) -> None:
    [reply] = send(bot, "#dgo in a park", new_user())
    assert reply.text == "No category #dgo: did you mean #dog?"


def truncated_jpeg() -> bytes:
    """The first half of a JPEG: its header reads, its pixels stop short."""
    data = jpeg("red", "circle", (300, 200))
    return data[: len(data) // 2]


def huge_png() -> bytes:
    """8,000×6,000 pixels (48 megapixels, over the 40 the bot takes) in a few kB."""
    return png_bytes(Image.new("1", (8000, 6000)))


@pytest.mark.parametrize(
    ("inject", "expected"),
    [
        (
            lambda tg, u: tg.inject_document(huge_png(), "huge.png", "image/png", user_id=u),
            "That picture is 8,000×6,000 pixels (48 megapixels), over my limit of 40 megapixels.",
        ),
        (
            lambda tg, u: tg.inject_document(
                b"just some words, no pixels", "photo.png", "image/png", user_id=u
            ),
            "That file is not a picture I can read.",
        ),
        (
            lambda tg, u: tg.inject_photo(truncated_jpeg(), user_id=u),
            "That picture is damaged (cut off or corrupt), so I can't read it.",
        ),
    ],
    ids=["too-many-pixels", "not-a-picture", "damaged"],
)
def test_a_picture_that_cannot_be_used_says_why(bot: RunningBot, inject, expected: str) -> None:
    user = new_user()
    inject(bot.tg, user)
    [reply] = bot.tg.wait_sent(user, timeout=60)
    assert reply.kind == "message" and reply.text.startswith(expected), reply.text


# --- /ask without an answer, and without a model (item 11) ------------------------------------


def wait_text(bot: RunningBot, user: int, index: int, contains: str, timeout: float = 60) -> str:
    """The text of the `index`-th thing sent to `user` once it contains `contains` (a message
    may be edited into its final words)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent = bot.tg.sent_to(user)
        if len(sent) > index and contains in (sent[index].text or ""):
            return sent[index].text or ""
        time.sleep(0.05)
    raise AssertionError(f"no {contains!r} for {user}: {[s.text for s in bot.tg.sent_to(user)]}")


def test_ask_without_a_model_says_so_once(bot: RunningBot) -> None:
    user = new_user()
    photo = bot.tg.inject_photo(jpeg("green", "square", (160, 120)), user_id=user)
    bot.tg.wait_sent(user, timeout=60)  # a photo alone is a search
    bot.tg.inject_text("/ask what color is the shape?", user_id=user, reply_to=photo)
    first = wait_text(bot, user, 1, UNAVAILABLE)  # the loading notice, edited: one message
    assert "Loading" not in first and "try again in 10 minutes" in first
    assert "BLIP-2 model unavailable" in bot.log()
    file_id = photo["photo"][-1]["file_id"]
    downloads = len([c for c in bot.tg.calls("getFile") if c.params.get("file_id") == file_id])
    for question in ("/ask what shape is it?", "what color is the shape?"):
        since = len(bot.tg.sent_to(user))
        bot.tg.inject_text(question, user_id=user, reply_to=photo)
        [again] = bot.tg.wait_sent(user, timeout=60, since=since)
        assert again.text.startswith(UNAVAILABLE) and "try again in 10 minutes" in again.text
        bot.tg.wait_updates_consumed()
        time.sleep(0.5)  # nothing follows it
        assert len(bot.tg.sent_to(user)) == since + 1, [s.text for s in bot.tg.sent_to(user)]
    assert "not tried again for" in bot.log()
    now = len([c for c in bot.tg.calls("getFile") if c.params.get("file_id") == file_id])
    assert now == downloads  # nothing downloaded for a question that cannot be answered


def test_ask_alone_with_an_empty_answer_does_not_say_i_dont_know(mute_bot: RunningBot) -> None:
    user = new_user()
    photo = mute_bot.tg.inject_photo(jpeg("yellow", "circle"), user_id=user)
    mute_bot.tg.wait_sent(user, timeout=60)
    mute_bot.tg.inject_text("/ask", user_id=user, reply_to=photo)
    answer = wait_text(mute_bot, user, 2, "picture", timeout=120)  # after the loading notice
    assert answer == "I can't describe this picture."


def test_every_text_reads_well(bot: RunningBot, mute_bot: RunningBot) -> None:
    for running in (bot, mute_bot):
        assert_texts_read_well(running.tg)
