"""The README is a door and docs/ the manual behind it: the README stays short, every
relative link in them leads to a file (and a heading) that exists, and the README's install
and test steps are the ones `.ci/run` and the Makefile run."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 300

LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(path: Path) -> list[str]:
    """The page's lines outside fenced code blocks, with inline code removed."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(INLINE_CODE.sub("", line))
    return lines


def links(path: Path) -> list[str]:
    return [target for line in prose_lines(path) for target in LINK.findall(line)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in ("L", "N", "M"))
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor on the page, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


def is_relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)


def test_the_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"


def test_there_are_docs_pages() -> None:
    names = {path.name for path in DOCS}
    assert {"configuration.md", "data.md", "architecture.md", "security.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading(page: Path) -> None:
    broken = []
    for target in links(page):
        if not is_relative(target):
            continue
        file_part, _, anchor = target.partition("#")
        where = (page.parent / file_part).resolve() if file_part else page
        if not where.exists():
            broken.append(f"{target}: no such file")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(f"{target}: no heading #{anchor} in {where.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_readme_links_to_every_page_and_every_page_back() -> None:
    from_readme = {(ROOT / t.partition("#")[0]).resolve() for t in links(README) if is_relative(t)}
    for page in DOCS:
        assert page.resolve() in from_readme, f"README.md does not link to {page.name}"
        back = {t.partition("#")[0] for t in links(page)}
        assert "../README.md" in back, f"{page.name} does not link back to the README"


def test_ci_runs_the_readmes_install_steps_then_its_test_command() -> None:
    """`.ci/run` is the README's by-hand install, line by line, then its test command."""
    ci = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    readme = README.read_text(encoding="utf-8")
    block = re.search(r"```bash\n(python3 -m venv .*?)```", readme, re.DOTALL)
    assert block is not None, "the README's by-hand install block is missing"
    steps = [re.sub(r"\s+#.*$", "", line).strip() for line in block[1].splitlines()]
    venv, activate = steps[0].split(" && ")
    expected = [venv, activate, *steps[1:-1], *steps[-1].split(" && ")]
    assert ci == expected


def test_the_readme_pins_the_torch_the_makefile_installs() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    pin = re.search(r"^TORCH := (\S+)$", makefile, re.MULTILINE)
    assert pin is not None
    assert f"pip install {pin[1]} --extra-index-url https://download.pytorch.org/whl/cpu" in (
        README.read_text(encoding="utf-8")
    )
    assert "make run" in README.read_text(encoding="utf-8")
    assert re.search(r"^test: ", makefile, re.MULTILINE)
