"""Starting the bot: settings errors, a refused token, an unreachable Telegram, a missing
model, signals during start-up, an empty index, webhook mode and its secret."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bot.startup import TOKEN_REFUSED, webhook_secret
from core.indexing import BuildOptions, run
from core.sources.coco import CocoReader
from tests.bot_harness import running_bot
from tests.chroma_run import ChromaServer, free_port
from tests.conftest import make_settings, subprocess_env
from tests.fake_telegram import FakeTelegram
from tests.mini_coco import make_mini_coco


def start_and_wait(
    env: dict[str, str], cwd: Path, timeout: float = 120, *args: str
) -> subprocess.CompletedProcess:
    """Run `python -m bot` to its end (these start-ups are expected to stop by themselves)."""
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_missing_token_is_one_clear_line(tmp_path: Path) -> None:
    env = subprocess_env(make_settings(tmp_path))
    env.pop("TELEGRAM_BOT_TOKEN", None)
    result = start_and_wait(env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: TELEGRAM_BOT_TOKEN is not set: get a token from @BotFather and put it in "
        ".env (see .env.example)"
    ]


def test_a_bad_setting_is_one_clear_line(tmp_path: Path) -> None:
    env = subprocess_env(
        make_settings(tmp_path), TELEGRAM_BOT_TOKEN="1:x", RATE_LIMIT_PER_MINUTE="lots"
    )
    result = start_and_wait(env, tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: bad setting RATE_LIMIT_PER_MINUTE='lots'")


def assert_one_clean_error(result: subprocess.CompletedProcess, *secrets: str) -> str:
    """The one error line of a failed start; no traceback, no repeated line, no secret."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(set(line.split(" ", 2)[-1] for line in lines)), output
    for secret in secrets:
        assert secret not in output, output
    [error] = [line for line in lines if line.startswith("error: ")]  # the entry point's own
    assert not [line for line in lines if " ERROR bot: " in line], output  # said once
    return error


def missing_model_env(tmp_path: Path, tg: FakeTelegram, clip_model: str) -> dict[str, str]:
    return subprocess_env(make_settings(tmp_path, clip_model=clip_model), **tg.env())


@pytest.mark.parametrize(
    ("clip_model", "expected"),
    [
        ("{tmp}/no-such-dir", "CLIP_MODEL points to {tmp}/no-such-dir, which does not exist"),
        ("./no-such-dir", "CLIP_MODEL points to ./no-such-dir, which does not exist"),
        ("{tmp}", "CLIP_MODEL points to {tmp}, which has no config.json"),
    ],
    ids=["absolute", "relative", "empty-dir"],
)
def test_a_missing_local_model_is_one_line_about_the_path(
    tmp_path: Path, clip_model: str, expected: str
) -> None:
    with FakeTelegram(hide_button_messages=True) as tg:
        env = missing_model_env(tmp_path, tg, clip_model.format(tmp=tmp_path))
        result = start_and_wait(env, tmp_path)
    assert result.returncode == 1
    error = assert_one_clean_error(result)
    assert "cannot start: CLIP model unavailable" in error
    assert expected.format(tmp=tmp_path) in error
    assert "hf download" not in error


def test_an_unknown_hub_model_offline_is_one_line_with_download_advice(tmp_path: Path) -> None:
    with FakeTelegram(hide_button_messages=True) as tg:
        env = missing_model_env(tmp_path, tg, "nobody/no-such-clip")
        env["HF_HUB_OFFLINE"] = "1"
        result = start_and_wait(env, tmp_path)
    assert result.returncode == 1
    error = assert_one_clean_error(result)
    assert "not in the local Hugging Face cache" in error
    assert "`hf download nobody/no-such-clip`" in error


def test_an_unreachable_hub_is_one_line_without_retries(tmp_path: Path) -> None:
    """No network (the hub's address refuses connections): one line, not minutes of the
    hub client's retries, each printed twice."""
    with FakeTelegram(hide_button_messages=True) as tg:
        env = missing_model_env(tmp_path, tg, "nobody/no-such-clip")
        for offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            env.pop(offline, None)
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
        result = start_and_wait(env, tmp_path, timeout=60)  # the hub alone retried ~30 s
    assert result.returncode == 1
    error = assert_one_clean_error(result)
    assert "cannot reach the Hugging Face hub" in error and "hf download" in error
    assert "Retrying" not in result.stderr


@pytest.mark.parametrize("log_level", ["INFO", "DEBUG"])
def test_a_refused_token_is_one_line_that_never_shows_the_token(
    tmp_path: Path, log_level: str
) -> None:
    wrong = "999:AAWrongSecretPartOfTheToken"
    with FakeTelegram(
        hide_button_messages=True
    ) as tg:  # its token is another: it answers 401 Unauthorized
        env = subprocess_env(make_settings(tmp_path), **{**tg.env(), "TELEGRAM_BOT_TOKEN": wrong})
        env["LOG_LEVEL"] = log_level
        result = start_and_wait(env, tmp_path, timeout=60)
    assert result.returncode == 2
    error = assert_one_clean_error(result, wrong, "AAWrongSecretPartOfTheToken")
    assert error.endswith(TOKEN_REFUSED)
    assert "loading CLIP" not in result.stderr  # checked before any model loads


def test_check_only_checks_the_token_and_exits(tmp_path: Path) -> None:
    """`python -m bot --check` (what `make run` does before any download or build): the token
    is checked with getMe and nothing else starts, not even the models."""
    with FakeTelegram(hide_button_messages=True) as tg:
        env = subprocess_env(make_settings(tmp_path), **tg.env())
        good = start_and_wait(env, tmp_path, 60, "--check")
        refused = start_and_wait(env | {"TELEGRAM_BOT_TOKEN": "1:AAnotIt"}, tmp_path, 60, "--check")
        assert [c.method for c in tg.calls()] == ["getMe"]  # (a wrong token is not recorded)
    assert good.returncode == 0, good.stderr
    assert "Telegram accepted the token of @test_image_bot" in good.stderr
    assert "loading CLIP" not in good.stderr and "Application started" not in good.stderr
    assert refused.returncode == 2 and refused.stderr.strip().endswith(TOKEN_REFUSED)


def test_an_unreachable_telegram_is_retried_a_few_times_then_one_line(tmp_path: Path) -> None:
    closed = free_port()
    env = subprocess_env(
        make_settings(tmp_path),
        TELEGRAM_BOT_TOKEN="123:AAUnreachableTokenSecret",
        TELEGRAM_BASE_URL=f"http://127.0.0.1:{closed}/bot",
        TELEGRAM_BASE_FILE_URL=f"http://127.0.0.1:{closed}/file/bot",
    )
    result = start_and_wait(env, tmp_path)
    assert result.returncode == 1
    retries = re.findall(r"cannot reach Telegram at \S+ \(.*\): retry in (\d+) s", result.stderr)
    assert retries == ["1", "2", "4"], result.stderr
    assert "Traceback" not in result.stderr and "AAUnreachableTokenSecret" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot reach Telegram at ") and "after 4 attempts" in last
    assert f"127.0.0.1:{closed}" in last


def wait_for_line(log_path: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log_path.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.1)


@pytest.mark.parametrize("moment", ["loading-models", "connecting"])
def test_sigterm_during_start_up_exits_cleanly(tmp_path: Path, moment: str) -> None:
    """SIGTERM while the models load, or while python-telegram-bot connects (before
    post_init ever ran): a clean stop, exit 0, no traceback hiding anything."""
    with FakeTelegram(hide_button_messages=True) as tg:
        if moment == "connecting":
            tg.fail("getMe", 200)  # the token check: at once
            connecting = tg.hold("getMe")  # python-telegram-bot's own getMe: held
        log_path = tmp_path / "bot.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bot"],
                env=subprocess_env(make_settings(tmp_path), **tg.env()),
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            if moment == "loading-models":
                wait_for_line(log_path, "Telegram accepted the token", proc)
            else:
                wait_for_line(log_path, "long polling", proc)
                connecting.wait_arrived()  # inside the held getMe
            proc.terminate()
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = log_path.read_text()
    assert proc.returncode == 0, output
    assert "Traceback" not in output and "AttributeError" not in output, output
    assert "Application started" not in output


def test_the_webhook_secret_is_the_configured_one_or_random(tmp_path: Path) -> None:
    configured = make_settings(tmp_path, webhook_secret="my-Secret_1")
    assert webhook_secret(configured) == "my-Secret_1"
    unset = make_settings(tmp_path)
    first, second = webhook_secret(unset), webhook_secret(unset)
    assert first != second
    assert re.fullmatch(r"[A-Za-z0-9_-]{32,256}", first)


def post_update(url: str, update: dict, secret: str | None) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(update).encode(), headers={"Content-Type": "application/json"}
    )
    if secret is not None:
        request.add_header("X-Telegram-Bot-Api-Secret-Token", secret)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_webhook_without_a_configured_secret_refuses_forged_updates(tmp_path: Path) -> None:
    """No WEBHOOK_SECRET: a random secret is registered, so a forged update (posted straight
    to the webhook, claiming to be an allowed user) is refused and never handled, while
    Telegram's own deliveries work."""
    port = free_port()
    settings = make_settings(
        tmp_path,
        webhook_url=f"http://127.0.0.1:{port}/hook",
        webhook_listen="127.0.0.1",
        webhook_port=port,
        allowed_user_ids=frozenset({7, 8}),
        vqa_enabled=False,
    )
    with FakeTelegram(hide_button_messages=True) as tg, running_bot(settings, [], tg) as bot:
        secret = tg.wait_for("setWebhook").params.get("secret_token")
        assert secret and re.fullmatch(r"[A-Za-z0-9_-]{32,256}", secret)
        assert secret not in bot.log() and tg.token not in bot.log()
        forged = {
            "update_id": 1,
            "message": {
                "message_id": 1,
                "date": int(time.time()),
                "chat": {"id": 7, "type": "private", "first_name": "A"},
                "from": {"id": 7, "is_bot": False, "first_name": "A"},
                "text": "a red circle",
            },
        }
        assert post_update(settings.webhook_url, forged, None) == 403
        assert post_update(settings.webhook_url, forged, "wrong-secret") == 403
        tg.inject_text("a red circle", user_id=8)  # delivered by the fake, with the secret
        [reply] = tg.wait_sent(8, timeout=60)
        assert "index is empty" in reply.text
        assert tg.sent_to(7) == []


def test_a_webhook_url_telegram_refuses_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(
        tmp_path,
        webhook_url="https://bot.example.com/hook",  # the fake refuses it: 400 bad webhook
        webhook_listen="127.0.0.1",
        webhook_port=port,
        vqa_enabled=False,
    )
    with FakeTelegram(hide_button_messages=True) as tg:
        result = start_and_wait(subprocess_env(settings, **tg.env()), tmp_path)
        assert [c.status for c in tg.calls("setWebhook")] == [400]
    assert result.returncode == 2
    error = assert_one_clean_error(result, tg.token)
    assert "cannot start: Telegram refused WEBHOOK_URL=https://bot.example.com/hook" in error
    assert "bad webhook" in error.lower()


def test_webhook_mode_with_an_index_built_while_running(
    tmp_path: Path, chroma_server: ChromaServer
) -> None:
    """Starts on an empty index (a clear log line and reply), in webhook mode, with a Chroma
    server and /ask switched off; once the index is built beside it, the same bot answers
    with albums."""
    port = free_port()
    settings = make_settings(
        tmp_path,
        coco_root=tmp_path / "coco",
        collection="built_later",
        chroma_host=chroma_server.host,
        chroma_port=chroma_server.port,
        webhook_url=f"http://127.0.0.1:{port}/telegram-hook",
        webhook_listen="127.0.0.1",
        webhook_port=port,
        webhook_secret="s3cret-token",
        vqa_enabled=False,
    )
    with FakeTelegram(hide_button_messages=True) as tg, running_bot(settings, [], tg) as bot:
        assert "search is not available yet: index is empty" in bot.log()
        hook = tg.wait_for("setWebhook")
        assert hook.params["url"] == settings.webhook_url
        assert hook.params["secret_token"] == "s3cret-token"
        assert "s3cret-token" not in bot.log() and tg.token not in bot.log()
        assert not tg.calls("getUpdates")  # no polling in webhook mode

        tg.inject_text("a red circle", user_id=7)
        [reply] = tg.wait_sent(7, timeout=60)
        assert "index is empty" in reply.text

        make_mini_coco(settings.coco_root, {"val2014": 24})
        run(settings, CocoReader(settings.coco_root, ["val2014"]), BuildOptions(progress=False))
        tg.inject_text("a red circle", user_id=7)
        [album] = tg.wait_sent(7, timeout=60, since=1)
        assert album.kind == "media_group"
        assert all(c.endswith("a red circle") for c in album.captions[:2])
        assert "ask" not in {c["command"] for c in tg.my_commands()}
        tg.inject_text("/ask what is it?", user_id=7, reply_to=album.messages[0])
        [disabled] = tg.wait_sent(7, timeout=60, since=2)
        assert "switched off" in disabled.text
        tg.inject_text("/help", user_id=7)
        [help_] = tg.wait_sent(7, timeout=60, since=3)
        assert "/ask" not in help_.text
        tg.assert_no_errors()
