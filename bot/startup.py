"""What `python -m bot` checks and sets up before it loads any model: the token (getMe, with a
short visible backoff while Telegram is unreachable), the webhook secret and a SIGTERM that
stops start-up cleanly (logs that never show a secret: `core.redaction`)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
import threading
from types import FrameType

from telegram import Bot, User
from telegram.error import InvalidToken, NetworkError
from telegram.request import HTTPXRequest

from core.config import Settings

log = logging.getLogger("bot")

ATTEMPTS = 4
"""getMe attempts while Telegram is unreachable: waits of 1, 2 and 4 s between them."""
FIRST_DELAY_S = 1.0
TOKEN_REFUSED = "Telegram refused TELEGRAM_BOT_TOKEN: check it with @BotFather"


class TelegramUnreachable(Exception):
    """Telegram (TELEGRAM_BASE_URL) did not answer getMe after every attempt."""


def webhook_secret(settings: Settings) -> str:
    """The configured WEBHOOK_SECRET, else a fresh random one (43 characters of
    `A-Za-z0-9_-`), so that the webhook never accepts requests without it."""
    if settings.webhook_secret is not None:
        return settings.webhook_secret.get_secret_value()
    return secrets.token_urlsafe(32)


async def check_token(settings: Settings) -> User:
    """The bot's own user (getMe). Raises `InvalidToken` at once when Telegram refuses the
    token, `TelegramUnreachable` after `ATTEMPTS` tries that got no answer."""
    assert settings.telegram_bot_token is not None
    delay = FIRST_DELAY_S
    for attempt in range(1, ATTEMPTS + 1):
        bot = Bot(
            settings.telegram_bot_token.get_secret_value(),
            base_url=settings.telegram_base_url,
            base_file_url=settings.telegram_base_file_url,
            request=HTTPXRequest(connect_timeout=10, read_timeout=10),
        )
        try:
            async with bot:
                return bot.bot
        except InvalidToken:
            raise
        except NetworkError as err:
            if attempt == ATTEMPTS:
                raise TelegramUnreachable(
                    f"cannot reach Telegram at {settings.telegram_base_url} ({err}) after "
                    f"{ATTEMPTS} attempts: check the network or TELEGRAM_BASE_URL"
                ) from None
            log.warning(
                "cannot reach Telegram at %s (%s): retry in %.0f s (attempt %d of %d)",
                settings.telegram_base_url,
                err,
                delay,
                attempt,
                ATTEMPTS,
            )
        await asyncio.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


STOP_GRACE_S = 5.0
"""After a SIGTERM during start-up, the process ends within this long even if a library
swallowed the interrupt (or left a thread that would hold up the interpreter's exit)."""


def stop_on_sigterm() -> None:
    """SIGTERM stops start-up like Ctrl-C (KeyboardInterrupt), which `main` turns into a clean
    exit; once the bot runs, python-telegram-bot handles both signals itself."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        watchdog = threading.Timer(STOP_GRACE_S, _leave)  # in case it is swallowed elsewhere
        watchdog.daemon = True
        watchdog.start()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    previous = sys.unraisablehook

    def unraisable(info: object) -> None:
        # The interrupt landed in a finalizer (e.g. an event loop's __del__), which swallows
        # it: stop here, as the interrupt meant.
        if isinstance(getattr(info, "exc_value", None), KeyboardInterrupt):
            _leave()
        previous(info)  # type: ignore[arg-type]

    sys.unraisablehook = unraisable


def _leave() -> None:
    log.info("stopped")
    logging.shutdown()
    os._exit(0)
