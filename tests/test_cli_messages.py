"""What the entry points say, the same way (issue 23): an error is one line, `error: ...`,
whichever entry point and whatever failed (a missing or refused token, a missing model or
folder, an unreachable store), and a misspelled setting is warned about by each of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import PeopleFormatter, fail, report_error
from core.errors import ConfigError
from core.redaction import RedactSecrets
from tests.chroma_run import free_port
from tests.conftest import ROOT, make_settings, subprocess_env
from tests.fake_telegram import FakeTelegram


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


BOT_CHECK = ["-m", "bot", "--check"]
STATUS = ["-m", "core", "status"]
BUILDER_CHECK = [str(ROOT / "index_builder.py"), "--check", "--folder", "pictures"]


@pytest.mark.parametrize(
    "entry", [BOT_CHECK, STATUS, BUILDER_CHECK], ids=["bot", "core", "builder"]
)
def test_every_entry_point_warns_about_a_misspelled_setting_once(
    tmp_path: Path, entry: list[str]
) -> None:
    (tmp_path / "pictures").mkdir()
    (tmp_path / ".env").write_text("TOPK=3\n")
    with FakeTelegram(hide_button_messages=True) as tg:
        result = run(entry, subprocess_env(make_settings(tmp_path), **tg.env()), tmp_path)
    assert result.returncode in (0, 2), result.stderr  # status: 2, an empty index
    warnings = [line for line in result.stderr.splitlines() if "TOPK" in line]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].endswith("TOPK in .env is not a setting: did you mean TOP_K?")


def error_cases(tmp_path: Path, tg: FakeTelegram) -> dict[str, tuple[list[str], dict[str, str]]]:
    settings = make_settings(tmp_path)
    env = subprocess_env(settings, **tg.env())
    closed = make_settings(tmp_path, chroma_host="127.0.0.1", chroma_port=free_port())
    return {
        "bot-no-token": (["-m", "bot"], {k: v for k, v in env.items() if "TOKEN" not in k}),
        "bot-refused-token": (BOT_CHECK, env | {"TELEGRAM_BOT_TOKEN": "1:AAnotIt"}),
        "core-unreachable-store": (STATUS, subprocess_env(closed)),
        "builder-no-folder": (BUILDER_CHECK, env),
        "builder-no-model": (BUILDER_CHECK, env | {"CLIP_MODEL": str(tmp_path / "no-model")}),
    }


EXPECTED = {
    "bot-no-token": "error: TELEGRAM_BOT_TOKEN is not set: get a token from @BotFather",
    "bot-refused-token": "error: Telegram refused TELEGRAM_BOT_TOKEN: check it with @BotFather",
    "core-unreachable-store": "error: the vector store (Chroma server http://127.0.0.1:",
    "builder-no-folder": "error: folder pictures not found",
    "builder-no-model": "error: CLIP_MODEL points to {tmp}/no-model, which does not exist",
}


@pytest.mark.parametrize("case", EXPECTED)
def test_every_entry_point_says_an_error_in_one_line(tmp_path: Path, case: str) -> None:
    """The bot logged a refused token as a timestamped ERROR line, and a missing one as
    `error: ...`; the builder and `python -m core` printed `error: ...`: now all say
    `error: ...`, once, last."""
    with FakeTelegram(hide_button_messages=True) as tg:
        args, env = error_cases(tmp_path, tg)[case]
        if case == "builder-no-model":
            (tmp_path / "pictures").mkdir()
        result = run(args, env, tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [lines[-1]], result.stderr
    assert errors[0].startswith(EXPECTED[case].format(tmp=tmp_path)), errors[0]
    assert not [line for line in lines if " ERROR " in line], result.stderr
    assert "Traceback" not in result.stderr


def test_an_error_is_one_line_without_its_secrets(capsys: pytest.CaptureFixture) -> None:
    redact = RedactSecrets(["s3cret"])
    assert fail(ConfigError("bad setting X:\n  the s3cret\tleaked"), redact) == 2
    report_error("two\nlines")
    assert (
        capsys.readouterr().err == "error: bad setting X: the <secret> leaked\nerror: two lines\n"
    )


def test_log_lines_for_people_say_what_kind_of_line_they_are() -> None:
    import logging

    def line(level: int) -> str:
        record = logging.LogRecord("core.x", level, __file__, 1, "it %s", ("happened",), None)
        return PeopleFormatter().format(record)

    assert [line(logging.INFO), line(logging.WARNING), line(logging.ERROR)] == [
        "it happened",
        "warning: it happened",
        "error: it happened",
    ]
