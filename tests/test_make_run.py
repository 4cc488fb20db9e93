"""`make run` from nothing, as a new user meets it: with only a token, it checks the token
first, downloads COCO val2014 (here from a mirror on 127.0.0.1), indexes it, and starts a
bot that answers. The Makefile's own virtual environment is skipped (`-o`), the test's
interpreter stands in for it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.coco_server import CocoServer, build_coco_zips
from tests.conftest import ROOT, make_settings, subprocess_env
from tests.fake_telegram import FakeTelegram
from tests.mini_coco import make_mini_coco

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make_run(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            ["make", "-o", ".venv/.installed", "run", f"PY={sys.executable}", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so the whole make → python tree can be stopped
        )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_make_run_from_nothing(tmp_path: Path) -> None:
    make_mini_coco(tmp_path / "mirror", {"val2014": 24}, seed=4)
    settings = make_settings(
        tmp_path, coco_root=tmp_path / "coco", collection="from_nothing", vqa_enabled=False
    )
    log = tmp_path / "make.log"
    with (
        CocoServer(build_coco_zips(tmp_path / "mirror")) as mirror,
        FakeTelegram(hide_button_messages=True) as tg,
    ):
        checksums = str(mirror.write_checksums(tmp_path / "SHA256SUMS"))
        env = subprocess_env(
            settings, **tg.env(), COCO_BASE_URL=mirror.url, COCO_CHECKSUMS=checksums
        )
        proc = make_run(env, log)
        try:
            deadline = time.monotonic() + 240
            while "Application started" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)
            tg.inject_text("a red circle", user_id=5)
            [album] = tg.wait_sent(5, timeout=60)
            assert album.kind == "media_group"
            assert all(c.endswith("a red circle") for c in album.captions[:2])
        finally:
            stop(proc)
    said = log.read_text()
    token_ok = said.index("Telegram accepted the token")
    assert token_ok < said.index("to download:") < said.index("indexed 24")
    assert "COCO2014 is in place" in said and "pictures to embed" in said


def test_make_run_with_a_wrong_token_stops_before_any_download(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, coco_root=tmp_path / "coco", collection="never")
    make_mini_coco(tmp_path / "mirror", {"val2014": 4}, seed=4)
    with (
        CocoServer(build_coco_zips(tmp_path / "mirror")) as mirror,
        FakeTelegram(hide_button_messages=True) as tg,
    ):
        env = subprocess_env(
            settings, **{**tg.env(), "TELEGRAM_BOT_TOKEN": "1:AAwrong"}, COCO_BASE_URL=mirror.url
        )
        proc = make_run(env, tmp_path / "make.log")
        try:
            assert proc.wait(120) != 0
        finally:
            stop(proc)
        assert mirror.gets() == []  # not a byte fetched
    said = (tmp_path / "make.log").read_text()
    assert "Telegram refused TELEGRAM_BOT_TOKEN: check it with @BotFather" in said
    assert "1:AAwrong" not in said


def test_make_run_reports_a_bad_setting_once(tmp_path: Path) -> None:
    env = subprocess_env(
        make_settings(tmp_path), TELEGRAM_BOT_TOKEN="1:AAx", RATE_LIMIT_PER_MINUTE="lots"
    )
    proc = make_run(env, tmp_path / "make.log")
    try:
        assert proc.wait(120) == 2
    finally:
        stop(proc)
    said = (tmp_path / "make.log").read_text()
    assert said.count("bad setting RATE_LIMIT_PER_MINUTE='lots'") == 1, said


def test_make_run_folder_lets_the_bot_serve_that_folder() -> None:
    """The bot's roots come from the host: `make run FOLDER=...` names the folder to it."""
    plan = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "run", "FOLDER=/srv/my photos", "PY=python"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert 'python index_builder.py --folder "/srv/my photos"' in plan
    assert plan[-1] == 'PICTURE_ROOTS="/srv/my photos" python -m bot'
