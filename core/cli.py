"""What every entry point (`python -m bot`, `python -m core`, `index_builder.py`) says the same
way: an error is one line, `error: ...`, on stderr, whatever failed (a bad setting, a
refused token, a missing model); and the command-line tools log for people.

Who uses it: bot/__main__.py, core/__main__.py and index_builder.py. core's other modules
never print (they raise domain errors); only these entry points do, through here.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.errors import SearchBotError
    from core.redaction import RedactSecrets

QUIET_LOGGERS = ("httpx", "httpcore")
"""Libraries that log one INFO line per HTTP request: only their warnings are shown."""
DETAILED_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def report_error(message: str, redact: RedactSecrets | None = None) -> None:
    """Print `error: <message>` on one line to stderr (line breaks folded into spaces), with
    every secret `redact` knows replaced."""
    text = " ".join(message.split())
    print(f"error: {redact.redact(text) if redact else text}", file=sys.stderr, flush=True)


def fail(err: SearchBotError, redact: RedactSecrets | None = None) -> int:
    """Report a domain error the one-line way; its exit code."""
    report_error(str(err), redact)
    return err.exit_code


class PeopleFormatter(logging.Formatter):
    """Log lines for a person at a terminal: an INFO line is just its message, a warning
    starts with `warning: ` and an error with `error: ` (as `report_error` writes them);
    no timestamps or logger names, which `--verbose` brings back."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.ERROR:
            return f"error: {text}"
        if record.levelno >= logging.WARNING:
            return f"warning: {text}"
        return text


class _BelowTheBars:
    """stderr for log lines, written through tqdm so that a line logged while a progress bar
    runs goes above the bar instead of breaking it in two."""

    def write(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr, end="")

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(level: int, *, detailed: bool = False) -> None:
    """Log to stderr from `level` up, for people (`PeopleFormatter`), or with time, level and
    logger name when `detailed`; HTTP libraries show only their warnings, whatever the level.
    A line logged while a progress bar runs is written above it.

    Like `logging.basicConfig`, it adds no handler and leaves the level alone when the root
    logger has handlers already (a test runner's, or an earlier call)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(_BelowTheBars())
        formatter = logging.Formatter(DETAILED_FORMAT) if detailed else PeopleFormatter()
        handler.setFormatter(formatter)
        root.addHandler(handler)
        root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
