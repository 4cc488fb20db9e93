"""Starting the bot: settings errors, an empty index, webhook mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from core.datasets import CocoReader
from core.indexing import run
from tests.bot_harness import running_bot
from tests.conftest import ChromaServer, free_port, make_settings, subprocess_env
from tests.fake_telegram import FakeTelegram
from tests.mini_coco import make_mini_coco


def start_and_wait(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bot"], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
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


def test_a_missing_model_is_one_clear_line(tmp_path: Path) -> None:
    env = subprocess_env(
        make_settings(tmp_path, clip_model=str(tmp_path)), TELEGRAM_BOT_TOKEN="1:x"
    )
    result = start_and_wait(env, tmp_path)
    assert result.returncode == 1
    assert "cannot start: CLIP model unavailable" in result.stderr
    assert "Traceback" not in result.stderr


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
    with FakeTelegram() as tg, running_bot(settings, [], tg) as bot:
        assert "search is not available yet: index is empty" in bot.log()
        hook = tg.wait_for("setWebhook")
        assert hook.params["url"] == settings.webhook_url
        assert hook.params["secret_token"] == "s3cret-token"
        assert not tg.calls("getUpdates")  # no polling in webhook mode

        tg.inject_text("a red circle", user_id=7)
        [reply] = tg.wait_sent(7, timeout=60)
        assert "index is empty" in reply.text

        make_mini_coco(settings.coco_root, {"val2014": 24})
        run(settings, CocoReader(settings.coco_root, ["val2014"]), progress=False)
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
