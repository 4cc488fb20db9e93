"""`python -m bot`: load the models, check the index, then answer Telegram.

Long polling by default; webhook mode when WEBHOOK_URL is set (for several replicas behind
a load balancer). Every setting comes from the environment or .env (see .env.example).
Whatever stops start-up (a bad setting, a missing or refused token, a model that cannot be
loaded) is one line on stderr, `error: ...`, as from the other entry points (core.cli).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Iterable
from urllib.parse import urlsplit

from telegram.error import BadRequest, InvalidToken, NetworkError, TelegramError

from bot.startup import (
    TOKEN_REFUSED,
    TelegramUnreachable,
    check_token,
    stop_on_sigterm,
    webhook_secret,
)
from core.cli import DETAILED_FORMAT, fail, report_error
from core.config import Settings, load_settings
from core.errors import SearchBotError
from core.redaction import RedactSecrets, install, secret_values

log = logging.getLogger("bot")


class _NoTracebacks(logging.Filter):
    """python-telegram-bot's retry loop logs a traceback when it gives up; the error then
    reaches `main`, which says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.exc_info


def configure_logging(level: str, secrets: Iterable[str | None] = ()) -> RedactSecrets:
    """Log to stderr at `level` (LOG_LEVEL), also when logging was set up before the settings
    were read; `secrets` never appear in any line, nor in an uncaught exception's traceback.
    Returns the filter, for the lines `main` prints itself."""
    logging.basicConfig(level=level.upper(), format=DETAILED_FORMAT)
    logging.getLogger().setLevel(level.upper())
    redact = install(secrets)
    # One line per Telegram request is noise, even at DEBUG; keep their warnings.
    for noisy in ("httpx", "httpcore", "chromadb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if level.upper() != "DEBUG":
        # The logger of PTB's network retry loop only (its records, not its children's).
        logging.getLogger("telegram.ext").addFilter(_NoTracebacks())
    return redact


def run(settings: Settings, secret: str | None, *, check_only: bool = False) -> None:
    """Check the token, load the models, then answer Telegram until stopped (with
    `check_only`, stop after the token check)."""
    me = asyncio.run(check_token(settings))
    log.info("Telegram accepted the token of @%s", me.username)
    if check_only:
        return
    # Imported here, after the token is checked: torch and transformers take seconds to
    # import, and a bad token should be reported at once.
    from bot.app import ALLOWED_UPDATES, build_application
    from bot.services import Services

    services = Services.start(settings)
    app = build_application(settings, services)
    # No bootstrap retries: the rate limiter already retries network errors with a backoff,
    # and a refusal (a bad WEBHOOK_URL) must end start-up, not loop.
    if settings.webhook_url:
        path = urlsplit(settings.webhook_url).path.lstrip("/")
        log.info("webhook mode: listening on %s:%s", settings.webhook_listen, settings.webhook_port)
        if settings.webhook_secret is None:
            log.info("no WEBHOOK_SECRET set: a random one is registered for this run")
        try:
            app.run_webhook(
                listen=settings.webhook_listen,
                port=settings.webhook_port,
                url_path=path,
                webhook_url=settings.webhook_url,
                secret_token=secret,
                allowed_updates=ALLOWED_UPDATES,
                bootstrap_retries=0,
            )
        except BadRequest as err:
            raise WebhookRefused(
                f"Telegram refused WEBHOOK_URL={settings.webhook_url}: {err}"
            ) from None
    else:
        log.info("long polling %s", settings.telegram_base_url)
        app.run_polling(allowed_updates=ALLOWED_UPDATES, bootstrap_retries=0)


class WebhookRefused(SearchBotError):
    """setWebhook was refused (a URL Telegram cannot use)."""

    exit_code = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="Run the Telegram image search bot. Every setting (TELEGRAM_BOT_TOKEN, "
        "CLIP_MODEL, COLLECTION, WEBHOOK_URL, ...) comes from the environment or .env; see "
        ".env.example and the README.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only check the settings and the token with Telegram (getMe), then exit: 0 when "
        "both are good (`make run` does this before any download or index build)",
    )
    args = parser.parse_args(argv)
    # Before the settings are read, so that a misspelled one is warned about in the log.
    logging.basicConfig(level=logging.INFO, format=DETAILED_FORMAT)
    try:
        settings = load_settings()
    except SearchBotError as err:
        return fail(err)
    if settings.telegram_bot_token is None:
        report_error(
            "TELEGRAM_BOT_TOKEN is not set: get a token from @BotFather and put it in .env "
            "(see .env.example)"
        )
        return 2
    secret = webhook_secret(settings) if settings.webhook_url else None
    redact = configure_logging(settings.log_level, [*secret_values(settings), secret])
    stop_on_sigterm()
    return start(settings, secret, redact, check_only=args.check)


def start(
    settings: Settings, secret: str | None, redact: RedactSecrets, *, check_only: bool = False
) -> int:
    """`run`, with every way start-up can fail turned into one `error: ...` line (with the
    secrets `redact` knows left out) and an exit code."""
    try:
        run(settings, secret, check_only=check_only)
    except KeyboardInterrupt:
        log.info("stopped")
        # An interrupt during start-up may land inside a half-done `import torch`, whose
        # threads can then hang the interpreter's shutdown; nothing is open yet that needs
        # closing (Telegram is not polled, the file_id cache not opened): leave at once.
        logging.shutdown()
        os._exit(0)
    except SearchBotError as err:
        report_error(f"cannot start: {err}", redact)
        return err.exit_code
    except InvalidToken:
        report_error(TOKEN_REFUSED)
        return 2
    except TelegramUnreachable as err:
        report_error(str(err), redact)
        return 1
    except NetworkError as err:
        report_error(f"cannot reach Telegram at {settings.telegram_base_url}: {err}", redact)
        return 1
    except TelegramError as err:
        report_error(f"Telegram refused a start-up call: {err}", redact)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
