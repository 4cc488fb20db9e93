"""Secrets never appear in output: one filter for every entry point (`python -m bot`,
`python -m core`, `index_builder.py`).

httpx and python-telegram-bot put the bot token in the URLs they log, and chromadb and httpx
repeat the Chroma token in the errors they raise about a header. `install` puts a filter on
the root logger's handlers that replaces every form of every secret (as given, stripped,
URL-quoted, escaped as a repr shows it) by a placeholder, in messages, their arguments and
tracebacks, and sends uncaught exceptions and warnings through logging, so that they pass
the same filter. What an entry point prints itself goes through `RedactSecrets.redact`.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable
from types import TracebackType
from urllib.parse import quote

from pydantic import SecretStr

from core.config import Settings

log = logging.getLogger(__name__)

REDACTED = "<secret>"


def secret_values(settings: Settings) -> list[str]:
    """The values of every secret setting that is set (TELEGRAM_BOT_TOKEN, WEBHOOK_SECRET,
    CHROMA_AUTH_TOKEN: the `SecretStr` fields)."""
    values = (getattr(settings, name) for name in type(settings).model_fields)
    return [value.get_secret_value() for value in values if isinstance(value, SecretStr)]


class RedactSecrets(logging.Filter):
    """Replaces every secret in a record, its arguments and its traceback by a placeholder."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        super().__init__()
        found = {form for secret in secrets if secret for form in _forms(secret) if form}
        self._secrets = sorted(found, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def _forms(secret: str) -> set[str]:
    """How `secret` may be written in a log line or an error: as it is, without surrounding
    whitespace, URL-quoted, and with its control characters escaped (as `repr` of a string or
    of bytes shows them: an invalid header value)."""
    forms = {secret, secret.strip()}
    forms |= {quote(form, safe="") for form in list(forms)}
    forms.add(secret.encode("unicode_escape").decode("ascii"))
    return forms


def install(secrets: Iterable[str | None]) -> RedactSecrets:
    """Redact `secrets` in every line the root logger's handlers write (call it once logging
    is set up), in uncaught exceptions (of the main thread and of others) and in warnings.
    Returns the filter, for what the caller prints itself."""
    redact = RedactSecrets(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    return redact


def _log_uncaught(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    """Python's own report of an uncaught exception, written through logging (redacted)."""
    if issubclass(kind, KeyboardInterrupt):  # Ctrl-C: no message that could hold a secret
        sys.__excepthook__(kind, error, traceback)
        return
    log.critical("uncaught error", exc_info=(kind, error, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:  # a thread that exits on purpose, as Python's own hook
        return
    assert args.exc_value is not None
    _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback)
