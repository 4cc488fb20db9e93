"""`python -m bot`: load the models, check the index, then answer Telegram.

Long polling by default; webhook mode when WEBHOOK_URL is set (for several replicas behind
a load balancer). Every setting comes from the environment or .env (see .env.example).
"""

from __future__ import annotations

import argparse
import logging
import sys
from urllib.parse import urlsplit

from telegram import Update
from telegram.error import InvalidToken, NetworkError

from core.config import Settings, load_settings
from core.errors import SearchBotError

log = logging.getLogger("bot")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One line per Telegram request is noise at INFO; keep their warnings.
    for noisy in ("httpx", "httpcore", "chromadb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(settings: Settings) -> None:
    # Imported here, after the settings are checked: torch and transformers take seconds to
    # import, and a missing token should be reported at once.
    from bot.app import build_application
    from bot.services import Services

    services = Services.start(settings)
    app = build_application(settings, services)
    if settings.webhook_url:
        path = urlsplit(settings.webhook_url).path.lstrip("/")
        log.info("webhook mode: listening on %s:%s", settings.webhook_listen, settings.webhook_port)
        app.run_webhook(
            listen=settings.webhook_listen,
            port=settings.webhook_port,
            url_path=path,
            webhook_url=settings.webhook_url,
            secret_token=(
                settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
            ),
            allowed_updates=[Update.MESSAGE],
            bootstrap_retries=-1,
        )
    else:
        log.info("long polling %s", settings.telegram_base_url)
        app.run_polling(allowed_updates=[Update.MESSAGE], bootstrap_retries=-1)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m bot",
        description="Run the Telegram image search bot. It takes no flags: every setting "
        "(TELEGRAM_BOT_TOKEN, CLIP_MODEL, COLLECTION, WEBHOOK_URL, ...) comes from the "
        "environment or .env; see .env.example and the README.",
    ).parse_args(argv)
    try:
        settings = load_settings()
    except SearchBotError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    configure_logging("INFO")
    if settings.telegram_bot_token is None:
        print(
            "error: TELEGRAM_BOT_TOKEN is not set: get a token from @BotFather and put it in "
            ".env (see .env.example)",
            file=sys.stderr,
        )
        return 2
    try:
        run(settings)
    except SearchBotError as err:
        log.error("cannot start: %s", err)
        return err.exit_code
    except InvalidToken:
        log.error("Telegram refused TELEGRAM_BOT_TOKEN: check it with @BotFather")
        return 2
    except NetworkError as err:
        log.error("cannot reach Telegram at %s: %s", settings.telegram_base_url, err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
