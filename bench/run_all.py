"""Run every benchmark and write bench/results/summary.json (and one JSON per section).

    python bench/run_all.py            # everything (over an hour on a small machine)
    python bench/run_all.py --quick    # a smaller smoke run (a few minutes)
    python bench/run_all.py --only index latency

Benchmarks measure; tests never assert times. Every comparison is measured side by side
in one run, because these machines are noisy. Each section's `measure(quick, workdir)`
returns a typed result; its JSON and Markdown are two renderings of it (`bench.report`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench import (
    bot_load,
    fidelity,
    index_throughput,
    library_burst,
    memory,
    model_families,
    query_latency,
    scale,
    soak,
    urls,
    vqa_latency,
)
from bench.common import CACHE, RESULTS, machine
from bench.report import Result, write_json

SECTIONS = {
    "index": index_throughput,
    "latency": query_latency,
    "load": bot_load,
    "memory": memory,
    "fidelity": fidelity,
    "vqa": vqa_latency,
    "models": model_families,
    "soak": soak,
    "scale": scale,
    "urls": urls,
    "library": library_burst,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    workdir = CACHE / "run"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    summary_path = RESULTS / "summary.json"
    summary: dict = {"sections": {}}
    if args.only and summary_path.exists():  # keep the other sections' last numbers
        summary = _sectioned(json.loads(summary_path.read_text()))
    stamp = {
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "quick": args.quick,
    }
    print(f"# Benchmarks on {stamp['machine']}, {stamp['date']}", flush=True)
    for name, module in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        # Each section carries its own machine and date: a partial rerun (--only) never
        # relabels the sections it did not run.
        summary["sections"][name] = run_section(name, module, stamp, workdir / name)
        write_json("summary", summary)  # after every section: a later failure loses nothing
        (RESULTS / "summary.md").write_text(
            "\n".join(
                (RESULTS / f"{section}.md").read_text()
                for section in SECTIONS
                if (RESULTS / f"{section}.md").exists()
            )
        )
    print(f"\nwrote {summary_path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/run_all.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes: a smoke run in minutes"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(SECTIONS),
        metavar="SECTION",
        help=f"run only these sections: {', '.join(SECTIONS)}",
    )
    return parser


def run_section(name: str, module: ModuleType, stamp: dict, workdir: Path) -> dict:
    """Measure section `name`, then render its result: bench/results/<name>.md (and the
    console) and <name>.json. Returns its entry of the summary: the stamp and the
    result's headline numbers (its values that are not dicts)."""
    started = time.perf_counter()
    print(f"\n## {name}", flush=True)
    result: Result = module.measure(stamp["quick"], workdir)
    markdown = result.to_markdown()
    print(markdown, end="", flush=True)
    quick = " (--quick)" if stamp["quick"] else ""
    (RESULTS / f"{name}.md").write_text(
        f"Measured on {stamp['machine']}, {stamp['date']}{quick}.\n{markdown}\n"
    )
    data = {**result.to_json(), "section_s": round(time.perf_counter() - started, 1)}
    write_json(name, {**stamp, **data})
    return {**stamp, **{k: v for k, v in data.items() if not isinstance(v, dict)}}


def _sectioned(old: dict) -> dict:
    """summary.json as {"sections": {name: {machine, date, quick, numbers...}}}; a file in
    the older flat layout (one machine and date for everything) is dropped, since which
    section was measured where cannot be told from it."""
    sections = old.get("sections")
    return {"sections": sections if isinstance(sections, dict) else {}}


if __name__ == "__main__":
    sys.exit(main())
