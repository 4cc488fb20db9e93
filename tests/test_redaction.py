"""No secret setting's value in any output: the redacting filter, and every entry point run
as a subprocess with a bad secret, or with a Chroma server (or proxy) that repeats the token
in its refusal."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from core.redaction import REDACTED, RedactSecrets, secret_values
from tests.bot_harness import running_bot
from tests.chroma_run import free_port
from tests.conftest import ROOT, make_settings, subprocess_env
from tests.fake_telegram import FakeTelegram
from tests.local_http import LocalHttpServer

SECRET = "S3CRET-abc123"
TOKEN = f"123456:{SECRET}"


def run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """stdout and stderr of `python <args>`, which must end by itself."""
    result = subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    return result.stdout + result.stderr


def test_every_form_of_a_secret_is_replaced() -> None:
    redact = RedactSecrets([f"{SECRET}\n", None, ""])
    args = (f"{SECRET}\n", SECRET)
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "header %r, url %s", args, None)
    try:
        raise ValueError(f"Illegal header value b'Bearer {SECRET}\\n' (quoted: S3CRET-abc123%0A)")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert redact.filter(record)
    assert record.getMessage() == f"header '{REDACTED}', url {REDACTED}"
    assert SECRET not in record.exc_text and f"Bearer {REDACTED}" in record.exc_text
    assert "abc" not in redact.redact(f"{SECRET}%0A")


def test_the_secret_settings_are_the_token_the_webhook_secret_and_chromas(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path, telegram_bot_token=TOKEN, webhook_secret="hook", chroma_auth_token="chroma"
    )
    assert sorted(secret_values(settings)) == sorted([TOKEN, "hook", "chroma"])
    assert secret_values(make_settings(tmp_path)) == []


def test_an_uncaught_error_is_redacted(tmp_path: Path) -> None:
    """A traceback no handler caught still passes the filter (Python's own hook would print
    it as it is)."""
    code = (
        "import logging; from core.redaction import install; logging.basicConfig(); "
        f"install([{SECRET!r}]); raise ValueError('Illegal header value: Bearer {SECRET}')"
    )
    output = run(["-c", code], subprocess_env(make_settings(tmp_path)), tmp_path)
    assert "Traceback" in output and f"Bearer {REDACTED}" in output
    assert SECRET not in output


class EchoingProxy(LocalHttpServer):
    """A Chroma server (or the proxy in front of it) that refuses every request, repeating the
    Authorization header it got in its answer, as some error pages do."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                given = self.headers.get("Authorization", "")
                body = f'{{"error":"Unauthorized","message":"bad credentials: {given}"}}'
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

        super().__init__(Handler)


@pytest.fixture
def echoing_proxy() -> Iterator[EchoingProxy]:
    with EchoingProxy() as proxy:
        yield proxy


BAD_SECRETS = [
    ("TELEGRAM_BOT_TOKEN", f"{TOKEN}\n"),
    ("TELEGRAM_BOT_TOKEN", f" {TOKEN}"),
    ("WEBHOOK_SECRET", f"{SECRET}!"),
    ("CHROMA_AUTH_TOKEN", f"{SECRET}\n"),
]
BAD_SECRET_IDS = ["token-line-break", "token-space", "webhook-bang", "chroma-line-break"]
ENTRY_POINTS = {
    "bot": ["-m", "bot", "--check"],
    "core": ["-m", "core", "status"],
    "index_builder": [str(ROOT / "index_builder.py"), "--folder", "pictures", "--no-progress"],
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(("name", "value"), BAD_SECRETS, ids=BAD_SECRET_IDS)
def test_a_bad_secret_is_refused_at_start_without_showing_it(
    tmp_path: Path, echoing_proxy: EchoingProxy, entry: str, name: str, value: str
) -> None:
    """Before the check, a line break in CHROMA_AUTH_TOKEN ended `status` and the index
    builder in a traceback that showed it (httpx's "Illegal header value"), and a bad
    WEBHOOK_SECRET was printed in full."""
    (tmp_path / "pictures").mkdir()
    settings = make_settings(tmp_path, chroma_host="127.0.0.1", chroma_port=echoing_proxy.port)
    closed = f"http://127.0.0.1:{free_port()}"
    env = subprocess_env(
        settings,
        **{
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_BASE_URL": f"{closed}/bot",
            "TELEGRAM_BASE_FILE_URL": f"{closed}/file/bot",
            name: value,
        },
    )
    output = run(ENTRY_POINTS[entry], env, tmp_path)
    assert SECRET not in output and "abc123" not in output, output
    assert f"error: bad setting {name}: " in output, output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("entry", ["core", "index_builder"])
def test_a_chroma_refusal_that_repeats_the_token_is_redacted(
    tmp_path: Path, echoing_proxy: EchoingProxy, entry: str
) -> None:
    (tmp_path / "pictures").mkdir()
    settings = make_settings(
        tmp_path, chroma_host="127.0.0.1", chroma_port=echoing_proxy.port, chroma_auth_token=SECRET
    )
    output = run(ENTRY_POINTS[entry], subprocess_env(settings), tmp_path)
    assert "check CHROMA_AUTH_TOKEN" in output, output
    assert f"Bearer {REDACTED}" in output and SECRET not in output, output
    assert "plain HTTP" not in output  # 127.0.0.1: the token does not leave the machine


def test_the_bot_redacts_chromas_token_too(tmp_path: Path, echoing_proxy: EchoingProxy) -> None:
    with FakeTelegram(hide_button_messages=True) as tg:
        settings = make_settings(
            tmp_path,
            chroma_host="127.0.0.1",
            chroma_port=echoing_proxy.port,
            chroma_auth_token=SECRET,
            vqa_enabled=False,
        )
        with running_bot(settings, [], tg) as bot:
            output = bot.log()
    assert "search is not available yet" in output, output
    assert f"Bearer {REDACTED}" in output and SECRET not in output, output
