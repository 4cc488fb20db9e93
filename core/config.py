"""Every knob of the project, read from the environment and `.env`.

Entry points build `Settings` once (through `load_settings`) and pass it down; nothing
reads the environment at import time. The variable names are a contract: they are the
upper-case field names (`CLIP_MODEL`, `CHROMA_PATH`, ...).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.errors import ConfigError

log = logging.getLogger(__name__)

_COLLECTION_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")
_WEBHOOK_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
"""What Telegram accepts as a webhook secret_token."""
_BOT_TOKEN = re.compile(r"[0-9]+:[A-Za-z0-9_-]+")
"""The shape of every token @BotFather gives: the bot's id, ':', then url-safe characters."""
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")
"""Visible ASCII, no whitespace or control character: safe in an HTTP header."""

# The checks that turn a value given as text into a setting, or say what is wrong with it;
# the types after them carry them, so that `Settings` reads as the list of settings.


def _blank_is_none(value: Any) -> Any:
    """An empty or blank value means the setting is unset (`CHROMA_HOST=` in .env)."""
    return None if isinstance(value, str) and not value.strip() else value


def _comma_separated_ids(value: Any) -> Any:
    if isinstance(value, str):
        parts = [part.strip() for part in value.replace(";", ",").split(",")]
        if not all(part.lstrip("-").isdigit() for part in parts if part):
            raise ValueError("must be numeric Telegram user ids separated by commas")
        return frozenset(int(part) for part in parts if part)
    return value


def _path_list(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(Path(part.strip()) for part in value.split(os.pathsep) if part.strip())
    return value


def _upper_case_level(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _valid_collection(value: str) -> str:
    if not _COLLECTION_NAME.fullmatch(value):
        raise ValueError(
            "must be 3-512 characters of letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def _header_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9-]+", value):
        raise ValueError("must be an HTTP header name (letters, digits and '-')")
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _secret_shaped(shape: re.Pattern[str], problem: str) -> AfterValidator:
    """A secret must match `shape` whole, else `problem` is the error. Secrets are checked
    before anything sends them: a stray line break or space (a copy and paste, quotes in
    .env) would otherwise fail later, in an HTTP library's error that repeats the value.
    They are never trimmed: a changed secret is not the one given."""

    def check(value: SecretStr | None) -> SecretStr | None:
        if value is not None and not shape.fullmatch(value.get_secret_value()):
            raise ValueError(problem)
        return value

    return AfterValidator(check)


_BLANK_IS_NONE = BeforeValidator(_blank_is_none)

Device = Literal["auto", "cpu", "cuda", "mps"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
EncoderRuntime = Literal["auto", "torch", "onnx", "onnx-int8"]
LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper_case_level)
]
ModelName = Annotated[str, AfterValidator(_non_empty)]
CollectionName = Annotated[str, AfterValidator(_valid_collection)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
UserIds = Annotated[frozenset[int], NoDecode, BeforeValidator(_comma_separated_ids)]
"""Comma-separated (or ';'-separated) Telegram user ids."""
Folders = Annotated[tuple[Path, ...], NoDecode, BeforeValidator(_path_list)]
"""Folders separated by ':' (`os.pathsep`)."""
BotToken = Annotated[
    SecretStr | None,
    _BLANK_IS_NONE,
    _secret_shaped(
        _BOT_TOKEN,
        "contains whitespace or characters a token never has: a token from @BotFather is "
        "digits, ':', then letters, digits, '_' or '-'",
    ),
]
WebhookSecret = Annotated[
    SecretStr | None,
    _BLANK_IS_NONE,
    _secret_shaped(_WEBHOOK_SECRET, "must be 1-256 characters of letters, digits, '_' or '-'"),
]
HeaderToken = Annotated[
    SecretStr | None,
    _BLANK_IS_NONE,
    _secret_shaped(
        _HEADER_TOKEN,
        "contains whitespace, control or non-ASCII characters: an HTTP header cannot carry it",
    ),
]


class Settings(BaseSettings):
    """Configuration of the search core, the index builder and the bot."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    clip_model: ModelName = Field(
        "openai/clip-vit-base-patch32", description="CLIP model: a Hugging Face id or a local dir"
    )
    chroma_path: Path = Field(Path("data/chroma"), description="embedded Chroma directory")
    chroma_host: Annotated[str | None, _BLANK_IS_NONE] = Field(
        None, description="Chroma server host; unset = embedded"
    )
    chroma_port: int = Field(8000, ge=1, le=65535, description="Chroma server port")
    chroma_ssl: bool = Field(False, description="talk to the Chroma server over HTTPS")
    chroma_auth_token: HeaderToken = Field(
        None, description="token sent to the Chroma server (or the proxy in front of it)"
    )
    chroma_auth_header: HeaderName = Field(
        "Authorization",
        description="header carrying CHROMA_AUTH_TOKEN; Authorization sends 'Bearer <token>'",
    )
    collection: CollectionName = Field("coco2014", description="Chroma collection name")
    recall_target: float = Field(
        0.97,
        gt=0,
        le=1,
        description="text recall@10 against exact search that index_builder.py tunes text "
        "searches' depth to reach, measured on the index's captions at the end of a build",
    )
    coco_root: Path = Field(Path("data/coco"), description="COCO2014 root directory")
    coco_base_url: str = Field(
        "https://s3.amazonaws.com/images.cocodataset.org",
        description="where COCO2014 is downloaded from (zips/..., annotations/...): a mirror",
    )
    coco_checksums: Annotated[Path | None, _BLANK_IS_NONE] = Field(
        None,
        description="sha256sum/md5sum lines for a mirror whose zips differ from the official "
        "ones (paths relative to COCO_BASE_URL); unset = the official digests",
    )
    data_dir: Path = Field(
        Path("data"), description="where pictures downloaded from URL lists go (a folder per list)"
    )
    picture_roots: Folders = Field(
        (),
        description="folders (separated by ':') the bot may send pictures from, besides "
        "COCO_ROOT's splits, DATA_DIR and the folders index_builder.py --folder recorded",
    )
    url_fetch_timeout_s: float = Field(
        60.0,
        gt=0,
        description="one deadline per URL-list picture: connect, headers, redirects and body",
    )
    device: Device = Field("auto", description="torch device: auto picks cuda when present")
    dtype: DType = Field(
        "auto", description="inference dtype: auto = measured once per machine, then cached"
    )
    encoder_runtime: EncoderRuntime = Field(
        "auto",
        description="what runs the query towers: auto = the fastest of torch, ONNX Runtime and "
        "its int8 weights that keeps the vectors (measured once per machine, then cached)",
    )
    top_k: int = Field(
        5, ge=1, le=10, description="results per search (a Telegram album holds 2-10)"
    )
    caption_fusion: float = Field(
        1.0,
        ge=0,
        description="weight of the captions' ranking fused into text searches (needs an index "
        "built --with-captions); 0 = off",
    )
    min_score: Annotated[float | None, _BLANK_IS_NONE] = Field(
        None,
        ge=-1,
        le=1,
        description="hits below this cosine are dropped (the user may still ask for the "
        "nearest); unset = keep all",
    )
    duplicate_cosine: float = Field(
        0.95,
        gt=0,
        le=1,
        description="a hit this similar (cosine) to a better-ranked one is a near-duplicate and "
        "is left out; 1 = only identical pictures",
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="images with more pixels are refused (decompression bombs)"
    )

    # Visual question answering (/ask)
    vqa_model: ModelName = Field(
        "Salesforce/blip2-opt-2.7b", description="BLIP-2 model: a Hugging Face id or a local dir"
    )
    vqa_enabled: bool = Field(True, description="answer /ask questions about photos")
    vqa_preload: bool = Field(
        False, description="load BLIP-2 at start-up instead of on the first /ask"
    )
    vqa_max_new_tokens: int = Field(30, ge=1, le=200, description="longest answer, in tokens")
    vqa_num_beams: int = Field(1, ge=1, le=10, description="beam search width (1 = greedy)")
    vqa_timeout_s: float = Field(
        60.0, gt=0, description="an answer stops after this many seconds of generation"
    )
    ask_queue_size: int = Field(
        8, ge=1, le=1000, description="questions waiting for BLIP-2 at most (one per user)"
    )

    # The Telegram bot
    telegram_bot_token: BotToken = Field(None, description="bot token from @BotFather")
    telegram_base_url: str = Field(
        "https://api.telegram.org/bot", description="Bot API base URL (a local Bot API server)"
    )
    telegram_base_file_url: str = Field(
        "https://api.telegram.org/file/bot", description="Bot API file download base URL"
    )
    allowed_user_ids: UserIds = Field(
        frozenset(), description="comma-separated Telegram user ids; empty = everyone"
    )
    admin_user_ids: UserIds = Field(
        frozenset(),
        description="comma-separated Telegram user ids who see operator details in /stats",
    )
    rate_limit_per_minute: int = Field(
        20, ge=0, description="requests per user per minute; 0 = unlimited"
    )
    micro_batch: bool = Field(
        True, description="batch concurrent text searches into one encoder call"
    )
    inline_enabled: bool = Field(
        False, description="answer inline queries (@bot words in any chat); enable /setinline too"
    )
    storage_chat_id: Annotated[int | None, _BLANK_IS_NONE] = Field(
        None,
        description="private channel (the bot an admin) where inline mode uploads pictures once",
    )
    library_enabled: bool = Field(
        False,
        description="let chats keep their own searchable library of posted photos (/library)",
    )
    library_max_per_chat: int = Field(
        10_000, ge=1, description="pictures one chat's library keeps at most; the oldest go first"
    )
    library_retention_days: Annotated[int | None, _BLANK_IS_NONE] = Field(
        None, ge=1, description="library pictures older than this are removed; unset = kept"
    )
    webhook_url: Annotated[str | None, _BLANK_IS_NONE] = Field(
        None, description="public HTTPS URL for webhook mode; unset = long polling"
    )
    webhook_listen: str = Field("0.0.0.0", description="webhook server address")
    webhook_port: int = Field(8443, ge=1, le=65535, description="webhook server port")
    webhook_secret: WebhookSecret = Field(
        None,
        description="secret Telegram sends with each webhook call; unset = a random one per start",
    )
    log_level: LogLevel = Field("INFO", description="DEBUG also logs whole updates (user text)")


def load_settings(**overrides: Any) -> Settings:
    """Build `Settings` from the environment, `.env` and `overrides` (command-line flags).

    A bad value raises `ConfigError` with one line naming the variable, instead of
    pydantic's multi-line traceback; it shows the value given, except a secret's. A name in
    `.env` or the environment that is no setting but looks like one (`TOPK`) is logged as a
    warning, one line per name (`unknown_settings`): else it would be ignored silently.
    """
    given = {k: v for k, v in overrides.items() if v is not None or k.startswith("_")}
    env_file = given.get("_env_file", Settings.model_config.get("env_file"))
    for warning in unknown_settings(env_file, os.environ):
        log.warning("%s", warning)
    try:
        return Settings(**given)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            name = "_".join(str(part) for part in error["loc"]).upper() or "settings"
            given_value = "" if _is_secret(error["loc"]) else f"={error.get('input')!r}"
            problems.append(f"{name}{given_value}: {error['msg']}")
        raise ConfigError("bad setting " + "; ".join(problems)) from None


ENV_FILE_CUTOFF = 0.6
"""How alike (difflib's ratio) an unknown name in `.env` must be to a setting's name to be
reported: a `.env` is written for this project, so most of its unknown names are typos."""
ENVIRONMENT_CUTOFF = 0.8
"""The same for the environment, which holds every other program's variables too: only a
near miss (`TOPK`, `TELEGRAM_TOKEN`, `CLIP_MODLE`) that also `_resembles` its match."""


def unknown_settings(
    env_file: object, environ: Mapping[str, str], known: tuple[str, ...] | None = None
) -> list[str]:
    """A warning for each name in `env_file` (a path, or a list of paths as pydantic-settings
    takes them; None: no file) or in `environ` that is not a setting's name but is close to
    one: "TOPK in .env is not a setting: did you mean TOP_K?". One per name, `.env` first.
    `known`: the settings' names (default: `Settings`'s)."""
    names = known or tuple(name.upper() for name in Settings.model_fields)
    warnings: dict[str, str] = {}
    for path in _env_files(env_file):
        for name in _dotenv_names(path):
            match = _close_match(name.upper(), names, ENV_FILE_CUTOFF)
            if match and name.upper() not in warnings:
                warnings[name.upper()] = f"{name} in {path} is not a setting: did you mean {match}?"
    for name in environ:
        upper = name.upper()
        match = _close_match(upper, names, ENVIRONMENT_CUTOFF)
        if match and upper not in warnings and _resembles(upper, match):
            warnings[upper] = f"{name} in the environment is not a setting: did you mean {match}?"
    return list(warnings.values())


def _env_files(env_file: object) -> list[Path]:
    """The `.env` files pydantic-settings reads for `env_file` that exist."""
    if isinstance(env_file, (str, os.PathLike)):
        files: list[object] = [env_file]
    else:
        files = list(env_file) if isinstance(env_file, (list, tuple)) else []
    return [Path(f) for f in files if isinstance(f, (str, os.PathLike)) and Path(f).is_file()]


def _dotenv_names(path: Path) -> list[str]:
    """The names a `.env` file sets (python-dotenv reads it as pydantic-settings does)."""
    from dotenv import dotenv_values

    try:
        return [name for name in dotenv_values(path, encoding="utf-8") if name]
    except (OSError, UnicodeDecodeError):
        return []  # pydantic-settings says what is wrong with the file


def _close_match(name: str, known: tuple[str, ...], cutoff: float) -> str | None:
    """The setting `name` most likely means, or None (it is one, or near none)."""
    if name in known:
        return None
    matches = difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
    return matches[0] if matches else None


def _resembles(name: str, setting: str) -> bool:
    """Whether an environment variable looks written for us, not for another program: it
    shares a word with the setting (TELEGRAM_TOKEN, TELEGRAM_BOT_TOKEN), or is the same
    letters but for an underscore or one more (TOPK, TOP_K; DEVICES, DEVICE)."""
    if set(name.split("_")) & set(setting.split("_")):
        return True
    squashed = difflib.SequenceMatcher(None, name.replace("_", ""), setting.replace("_", ""))
    return squashed.ratio() >= 0.9


def _is_secret(loc: tuple[int | str, ...]) -> bool:
    """Whether the setting at `loc` (a validation error's location) holds a secret (a
    `SecretStr`); an unknown location counts as one."""
    field = Settings.model_fields.get(str(loc[0])) if loc else None
    return field is None or SecretStr in (field.annotation, *get_args(field.annotation))


def settings_env(settings: Settings) -> dict[str, str]:
    """`settings` as environment variables, as an entry point started with them would read
    them back (for running `python -m bot` or `index_builder.py` as a subprocess)."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, (set, frozenset)):
            value = ",".join(str(v) for v in sorted(value))
        elif isinstance(value, tuple):
            value = os.pathsep.join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[name.upper()] = str(value)
    return env
