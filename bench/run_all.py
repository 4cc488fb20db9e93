"""Run every benchmark and write bench/results/summary.json (and one JSON per section).

    python bench/run_all.py            # everything (about 80 minutes on 2 cores)
    python bench/run_all.py --quick    # a smaller smoke run (a few minutes)
    python bench/run_all.py --only index latency

Benchmarks measure; tests never assert times. Every comparison is measured side by side
in one run, because these machines are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench import (
    bot_load,
    fidelity,
    index_throughput,
    memory,
    model_families,
    query_latency,
    scale,
    soak,
    vqa_latency,
)
from bench.common import CACHE, RESULTS, machine, write_json

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
}


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    workdir = CACHE / "run"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    summary_path = RESULTS / "summary.json"
    summary: dict = {"sections": {}}
    if args.only and summary_path.exists():  # keep the other sections' last numbers
        import json

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
        started = time.perf_counter()
        print(f"\n## {name}", flush=True)
        tables = io.StringIO()
        with contextlib.redirect_stdout(Tee(sys.stdout, tables)):
            result = module.run(args.quick, workdir / name)
        (RESULTS / f"{name}.md").write_text(
            f"Measured on {stamp['machine']}, {stamp['date']}"
            f"{' (--quick)' if args.quick else ''}.\n{tables.getvalue()}\n"
        )
        result["section_s"] = round(time.perf_counter() - started, 1)
        write_json(name, {**stamp, **result})
        # Each section carries its own machine and date: a partial rerun (--only) never
        # relabels the sections it did not run.
        summary["sections"][name] = {
            **stamp,
            **{k: v for k, v in result.items() if not isinstance(v, dict)},
        }
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


def _sectioned(old: dict) -> dict:
    """summary.json as {"sections": {name: {machine, date, quick, numbers...}}}; a file in
    the older flat layout (one machine and date for everything) is dropped, since which
    section was measured where cannot be told from it."""
    sections = old.get("sections")
    return {"sections": sections if isinstance(sections, dict) else {}}


class Tee(io.TextIOBase):
    """Writes to several streams (the console and the collected tables)."""

    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


if __name__ == "__main__":
    sys.exit(main())
