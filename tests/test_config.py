from __future__ import annotations

import logging
from pathlib import Path

import pytest

from core.config import Settings, load_settings, settings_env, unknown_settings
from core.errors import ConfigError


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.clip_model == "openai/clip-vit-base-patch32"
    assert settings.chroma_path == Path("data/chroma")
    assert settings.chroma_host is None
    assert settings.collection == "coco2014"
    assert settings.coco_root == Path("data/coco")
    assert (settings.device, settings.dtype, settings.top_k) == ("auto", "auto", 5)


def test_environment_and_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("TOP_K=7\nCOLLECTION=from_dotenv\n# a comment\n")
    monkeypatch.setenv("COLLECTION", "from_env")
    monkeypatch.setenv("CHROMA_HOST", "127.0.0.1")
    monkeypatch.setenv("CHROMA_PORT", "8123")
    settings = load_settings()
    assert settings.top_k == 7  # from .env
    assert settings.collection == "from_env"  # the environment wins over .env
    assert (settings.chroma_host, settings.chroma_port) == ("127.0.0.1", 8123)


def test_overrides_win_and_none_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOP_K", "3")
    assert load_settings(top_k=None).top_k == 3
    assert load_settings(top_k=9).top_k == 9


def test_blank_chroma_host_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHROMA_HOST", "  ")
    assert load_settings().chroma_host is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEVICE", "gpu"),
        ("DTYPE", "int8"),
        ("TOP_K", "0"),
        ("TOP_K", "11"),
        ("TOP_K", "many"),
        ("CHROMA_PORT", "http"),
        ("COLLECTION", "a"),
        ("COLLECTION", "bad name!"),
        ("CLIP_MODEL", " "),
        ("ADMIN_USER_IDS", "alice"),
        ("LOG_LEVEL", "CHATTY"),
        ("COLLECTION", "images\n"),
    ],
)
def test_bad_value_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert name in message
    assert "\n" not in message
    assert repr(value) in message


SECRET = "S3CRET-abc123"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEBHOOK_SECRET", f"has spaces {SECRET}"),
        ("WEBHOOK_SECRET", SECRET + "x" * 257),
        ("WEBHOOK_SECRET", f"{SECRET}\n"),
        ("TELEGRAM_BOT_TOKEN", f"123456:{SECRET}\n"),
        ("TELEGRAM_BOT_TOKEN", f" 123456:{SECRET}"),
        ("TELEGRAM_BOT_TOKEN", f"123456:{SECRET}\"'"),
        ("TELEGRAM_BOT_TOKEN", SECRET),
        ("CHROMA_AUTH_TOKEN", f"{SECRET}\n"),
        ("CHROMA_AUTH_TOKEN", f"Bearer {SECRET}"),
        ("CHROMA_AUTH_TOKEN", f"{SECRET}\u00e9"),
    ],
)
def test_a_bad_secret_is_named_but_never_shown(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    monkeypatch.setenv("TOP_K", "many")  # another bad value: shown, as ever
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"{name}: " in message and "TOP_K='many'" in message
    assert "S3CRET" not in message and "abc123" not in message and "\n" not in message


def test_a_bot_token_with_whitespace_is_refused_with_what_is_wrong(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", f"123456:{SECRET}\n")
    with pytest.raises(ConfigError, match="contains whitespace or characters a token never has"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TELEGRAM_BOT_TOKEN", "123456789:AAH-x_Yz0"),
        ("CHROMA_AUTH_TOKEN", "a.b~c/d+e=f:g!"),
        ("WEBHOOK_SECRET", "my-Secret_1"),
    ],
)
def test_good_secrets_are_kept_as_given(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    assert getattr(load_settings(), name.lower()).get_secret_value() == value


def test_admins_and_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_USER_IDS", "5, 7")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    settings = load_settings()
    assert settings.admin_user_ids == frozenset({5, 7})
    assert settings.log_level == "DEBUG"
    assert load_settings(admin_user_ids="").admin_user_ids == frozenset()


def test_settings_env_round_trips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    original = Settings(
        _env_file=None,
        allowed_user_ids="5,7",
        admin_user_ids="7",
        log_level="WARNING",
        telegram_bot_token="123:abc",
        micro_batch=False,
        chroma_path=tmp_path,
        vqa_timeout_s=2.5,
    )
    env = settings_env(original)
    assert env["ALLOWED_USER_IDS"] == "5,7" and env["TELEGRAM_BOT_TOKEN"] == "123:abc"
    assert "CHROMA_HOST" not in env  # unset stays unset
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None) == original


# --- a misspelled setting is reported (issue 23) ---------------------------------------------


def test_a_misspelled_name_in_dotenv_is_warned_about_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`TOPK=3` in .env was ignored silently: the search kept returning 5."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("TOPK=3\nclip_modle=x\nHF_TOKEN=hf_abc\nCOLLECTION=mine\n")
    with caplog.at_level(logging.WARNING, logger="core.config"):
        settings = load_settings()
    assert settings.top_k == 5 and settings.collection == "mine"
    assert [r.getMessage() for r in caplog.records] == [
        "TOPK in .env is not a setting: did you mean TOP_K?",
        "clip_modle in .env is not a setting: did you mean CLIP_MODEL?",
    ]


def test_a_misspelled_name_in_the_environment_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TELEGRAM_TOKEN", "1:abc")
    with caplog.at_level(logging.WARNING, logger="core.config"):
        load_settings()
    assert [r.getMessage() for r in caplog.records] == [
        "TELEGRAM_TOKEN in the environment is not a setting: did you mean TELEGRAM_BOT_TOKEN?"
    ]
    assert "1:abc" not in caplog.text  # the name only, never the value


OTHER_PROGRAMS = [
    "HOME", "PATH", "HF_HOME", "HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE", "OMP_NUM_THREADS", "OMP_WAIT_POLICY",
    "TOKENIZERS_PARALLELISM", "ANONYMIZED_TELEMETRY", "CHROMA_SERVER_HOST",
    "CHROMA_SERVER_HTTP_PORT", "PYTHONPATH", "VIRTUAL_ENV", "MAKEFLAGS", "TORCH_HOME",
]  # fmt: skip


def test_other_programs_variables_are_not_ours() -> None:
    """The environment holds every program's variables: only near misses of ours count."""
    environ = dict.fromkeys(OTHER_PROGRAMS, "x")
    assert unknown_settings(None, environ) == []


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("TOPK", "TOP_K"),
        ("top_n", "TOP_K"),
        ("CLIP_MODLE", "CLIP_MODEL"),
        ("CHROMA_TOKEN", "CHROMA_AUTH_TOKEN"),
        ("DEVICES", "DEVICE"),
        ("LOGLEVEL", "LOG_LEVEL"),
        ("ALLOWED_USERS", "ALLOWED_USER_IDS"),
    ],
)
def test_near_misses_in_the_environment(name: str, meant: str) -> None:
    [warning] = unknown_settings(None, {name: "1"})
    assert warning == f"{name} in the environment is not a setting: did you mean {meant}?"


def test_a_setting_in_any_case_is_no_misspelling(tmp_path: Path) -> None:
    (tmp_path / "settings.env").write_text("top_k=3\n")
    assert unknown_settings(tmp_path / "settings.env", {"Top_K": "3", "COLLECTION": "x"}) == []


def test_a_name_in_dotenv_and_the_environment_is_said_once(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TOPK=3\n")
    assert len(unknown_settings([tmp_path / ".env"], {"TOPK": "3"})) == 1
