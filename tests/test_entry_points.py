"""The console scripts of pyproject.toml: each names a `main` that runs with no argument, and
`pip install` (CI installs the project before the tests) put each in the environment's bin/."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_the_bot_the_index_builder_and_the_cli_are_declared() -> None:
    assert set(SCRIPTS.values()) == {
        "bot.__main__:main",
        "index_builder:main",
        "core.__main__:main",
    }


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_target_is_a_main_that_needs_no_argument(name: str) -> None:
    """A console script calls `sys.exit(main())`: no required parameter, an exit code back."""
    module, _, attr = SCRIPTS[name].partition(":")
    main = getattr(importlib.import_module(module), attr)
    assert callable(main)
    parameters = inspect.signature(main).parameters.values()
    assert all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters
    ), f"{SCRIPTS[name]} needs an argument"
    assert inspect.signature(main).return_annotation in (int, "int")


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_script_is_installed_and_answers_help(name: str, tmp_path: Path) -> None:
    """Run from elsewhere than the checkout, as a user would after `pip install`."""
    script = Path(sys.executable).parent / name
    assert script.is_file(), f"{script} is missing: run `pip install -e .`"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(script), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")
