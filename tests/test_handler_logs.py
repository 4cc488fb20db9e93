"""What users write reaches the bot's logs only at DEBUG: a failed request is logged above it
by its ids and the error's kind, and with the error's message only when that is about the
host (its store, its models)."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace

import pytest
from telegram import Update

from bot import handlers
from core.errors import EmptyQuery, StoreUnavailable, UnknownCategory

WORDS = "zebraquokkaS3cret"
"""What a user wrote: must not appear above DEBUG."""


def text_update(text: str) -> Update:
    sender = {"id": 42, "is_bot": False, "first_name": "Alice"}
    message = {
        "message_id": 3,
        "date": int(time.time()),
        "chat": {"id": 42, "type": "private", "first_name": "Alice"},
        "from": sender,
        "text": text,
    }
    return Update.de_json({"update_id": 100, "message": message}, None)


def logged_above_debug(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG)


def test_an_error_quoting_the_user_is_logged_by_kind_and_ids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    err = UnknownCategory(f"no category #{WORDS}: did you mean #zebra?")
    with caplog.at_level(logging.DEBUG, logger="bot.handlers"):
        handlers.log_failure(text_update(f"#{WORDS} on grass"), err)
    above = logged_above_debug(caplog)
    assert "update 100 (message, text) chat 42 user 42 message 3 failed: UnknownCategory" in above
    assert WORDS not in above and "Alice" not in above
    assert WORDS in caplog.text  # for the operator who asks for DEBUG


def test_an_error_about_the_host_is_logged_with_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    err = StoreUnavailable("the vector store (Chroma server http://10.0.0.5:8000) is unreachable")
    with caplog.at_level(logging.INFO, logger="bot.handlers"):
        handlers.log_failure(text_update(WORDS), err)
    assert "failed: the vector store (Chroma server http://10.0.0.5:8000)" in caplog.text


@pytest.mark.parametrize(
    "err",
    [UnknownCategory(f"no category #{WORDS}"), EmptyQuery(f"only minus terms: -{WORDS}")],
    ids=["hashtag", "query"],
)
def test_the_error_handler_keeps_the_users_words_at_debug(
    caplog: pytest.LogCaptureFixture, err: Exception
) -> None:
    context = SimpleNamespace(error=err)
    with caplog.at_level(logging.DEBUG, logger="bot.handlers"):
        asyncio.run(handlers.on_error(object(), context))  # type: ignore[arg-type]
    assert type(err).__name__ in logged_above_debug(caplog)
    assert WORDS not in logged_above_debug(caplog)


def test_a_failed_inline_query_keeps_the_users_words_at_debug(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(query: object, data: object) -> None:
        raise UnknownCategory(f"no category #{WORDS}")

    answers = []

    async def answer(results: list, **kwargs: object) -> None:
        answers.append(results)

    monkeypatch.setattr(handlers.inline, "answer", refuse)
    update = SimpleNamespace(inline_query=SimpleNamespace(query=f"#{WORDS}", answer=answer))
    context = SimpleNamespace(bot_data=None)
    with caplog.at_level(logging.DEBUG, logger="bot.handlers"):
        asyncio.run(handlers.inline_query(update, context))  # type: ignore[arg-type]
    assert answers == [[]]  # answered, empty
    assert "UnknownCategory" in logged_above_debug(caplog)
    assert WORDS not in logged_above_debug(caplog)
