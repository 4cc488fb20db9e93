"""Reporting: a benchmark's one typed result, rendered twice. Each benchmark's `measure`
returns a `Result`; its JSON goes to bench/results/<section>.json (and the headline numbers
to summary.json), its Markdown to bench/results/<section>.md, both written by run_all.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from bench.common import RESULTS


class Result(Protocol):
    """What a benchmark measured, able to render itself."""

    def to_json(self) -> dict:
        """The numbers, for machines (and the summary: its non-dict values)."""
        ...

    def to_markdown(self) -> str:
        """Tables and notes, for people."""
        ...


def table(title: str, header: list[str], rows: list[list[object]]) -> str:
    """A small Markdown table under a `###` title (with a blank line before it)."""
    lines = [f"\n### {title}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def document(*blocks: str) -> str:
    """Markdown blocks (tables, paragraphs), each ended by a newline."""
    return "".join(f"{block}\n" for block in blocks)


def write_json(name: str, data: dict) -> Path:
    """bench/results/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
