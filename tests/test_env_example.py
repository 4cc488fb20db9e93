"""`.env.example` documents every setting, each with a comment, and loads as it is; the
configuration page (docs/configuration.md) lists every setting too."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from core.config import Settings, load_settings
from tests.conftest import ROOT


def test_every_setting_is_documented_once_with_a_comment() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    names = [m.group(1) for line in lines if (m := re.match(r"^([A-Z_]+)=", line))]
    assert sorted(names) == sorted(name.upper() for name in Settings.model_fields)
    for n, line in enumerate(lines):
        if re.match(r"^[A-Z_]+=", line):
            assert lines[n - 1].startswith("# "), f"{line} has no comment line above it"


def test_the_example_loads_and_matches_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    monkeypatch.chdir(tmp_path)
    from_example = load_settings()
    assert from_example == Settings(_env_file=None)


def test_the_configuration_page_lists_every_setting() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"| `{name.upper()}` |" in page, name.upper()


def test_the_readmes_short_table_names_only_real_settings() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| `([A-Z_]+)` \|", readme, re.MULTILINE)
    assert listed, "the README's table of the settings people change is missing"
    assert len(listed) <= 12
    known = {name.upper() for name in Settings.model_fields}
    assert set(listed) <= known, sorted(set(listed) - known)
