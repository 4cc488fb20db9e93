"""Shared test fixtures. Tests never reach a hub or any address but 127.0.0.1."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["ANONYMIZED_TELEMETRY"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.config import Settings

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TINY_CLIP = FIXTURES / "tiny_clip"
TINY_BLIP2 = FIXTURES / "tiny_blip2"

SETTING_VARS = [name.upper() for name in Settings.model_fields]


@pytest.fixture(autouse=True)
def _clean_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's own settings."""
    for name in SETTING_VARS:
        monkeypatch.delenv(name, raising=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a test: the fixture CLIP, a store in `tmp_path`, no `.env`."""
    values: dict[str, object] = {
        "clip_model": str(TINY_CLIP),
        "chroma_path": tmp_path / "chroma",
        "collection": "test_images",
        "device": "cpu",
        "dtype": "float32",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def subprocess_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment for running an entry point as a subprocess with `settings`."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_VARS}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[name.upper()] = str(
                value.get_secret_value() if hasattr(value, "get_secret_value") else value
            )
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@dataclass(frozen=True)
class ChromaServer:
    host: str
    port: int
    path: Path


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """A real Chroma server (`chroma run`) on 127.0.0.1, stopped after the session."""
    path = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    chroma = Path(sys.executable).parent / "chroma"
    log = open(path / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(chroma),
            "run",
            "--path",
            str(path / "data"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    f"chroma server did not start: see {path / 'server.log'}"
                ) from None
            time.sleep(0.2)
    try:
        yield ChromaServer("127.0.0.1", port, path)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
