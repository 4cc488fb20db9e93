"""Build or refresh the image index the bot searches.

    python index_builder.py                         # COCO2014 train+val from COCO_ROOT
    python index_builder.py --split val2014 --limit 10000
    python index_builder.py --folder ~/Pictures     # your own photos

Safe to stop at any moment (Ctrl-C, kill, power loss) and to rerun: it continues where it
stopped and, later, refreshes (adds new pictures, re-embeds changed ones, removes gone ones).
A refresh that would remove more than 10% of a source's entries (an empty or unmounted
folder?) changes nothing unless --prune confirms it. One builder at a time per embedded
store: a second one stops at once, or waits with --wait.
Exit codes: 0 done, 1 runtime error (another builder running included), 2 bad arguments or
settings or a removal that needs --prune, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from core.config import load_settings
from core.datasets import COCO_SPLITS, CocoReader, FolderReader, Reader
from core.errors import SearchBotError
from core.indexing import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, IndexSummary, run

log = logging.getLogger("index_builder")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python index_builder.py",
        description="Embed pictures with CLIP into the Chroma collection the bot searches. "
        "Settings (CLIP_MODEL, CHROMA_PATH or CHROMA_HOST/PORT, COLLECTION, DEVICE, DTYPE) "
        "come from the environment and .env; the flags below override them for this run.",
        epilog="Resumable and incremental: rerun the same command after an interruption or "
        "when files changed; only what is new or changed is embedded.",
    )
    parser.add_argument(
        "--coco-root",
        type=Path,
        metavar="DIR",
        help="COCO2014 root holding annotations/, train2014/ and val2014/ (default: COCO_ROOT)",
    )
    parser.add_argument(
        "--split",
        choices=[*COCO_SPLITS, "all"],
        default="all",
        help="which COCO2014 split(s) to index (default: all = train2014 + val2014)",
    )
    parser.add_argument(
        "--folder",
        type=Path,
        metavar="DIR",
        help="index every picture under DIR (recursively) instead of COCO",
    )
    parser.add_argument(
        "--limit",
        type=positive,
        metavar="N",
        help="index only the first N pictures (by id), e.g. a 10k subset to try things out",
    )
    parser.add_argument(
        "--batch-size",
        type=positive,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"pictures per model call (default {DEFAULT_BATCH_SIZE}; 256+ on a GPU)",
    )
    parser.add_argument(
        "--workers",
        type=positive,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"threads decoding and resizing pictures while the model runs "
        f"(default {DEFAULT_WORKERS}; more on a GPU machine)",
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="delete the collection (and its captions collection) and start from scratch, "
        "e.g. after changing CLIP_MODEL",
    )
    parser.add_argument(
        "--with-captions",
        action="store_true",
        help="also embed every COCO caption as text into the collection <COLLECTION>_captions",
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="confirm removing the entries whose files are gone when they are more than "
        "10%% of this source's entries (without it such a refresh stops and changes nothing: "
        "an empty or unmounted folder never wipes the index); also confirms --rebuild of a "
        "source that holds no pictures",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="if another index_builder is writing to the same embedded store (CHROMA_PATH), "
        "wait for it to finish instead of stopping at once (no lock for a Chroma server)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the image tower first: about 20%% faster after about 30 s of "
        "compiling, worth it for big builds (needs a C++ compiler; falls back if it fails)",
    )
    parser.add_argument(
        "--collection", metavar="NAME", help="collection name (default: COLLECTION)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step (DEBUG)")
    return parser


def describe(summary: IndexSummary) -> str:
    """The human summary printed at the end of a run."""
    lines = [f"{summary.source} → collection {summary.collection!r}"]
    if summary.up_to_date and not summary.interrupted:
        lines.append(
            f"index is up to date: {summary.unchanged:,} pictures unchanged, nothing to do"
        )
    else:
        lines.append(
            f"indexed {summary.indexed:,} · unchanged {summary.unchanged:,} · "
            f"removed {summary.removed:,} · bad {len(summary.bad):,} · "
            f"missing {len(summary.missing):,}"
        )
    if summary.beyond_limit:
        lines.append(f"{summary.beyond_limit:,} pictures left out by --limit")
    if summary.captions_indexed or summary.captions_removed:
        lines.append(
            f"captions: indexed {summary.captions_indexed:,} · removed {summary.captions_removed:,}"
        )
    rate = f" ({summary.images_per_s:.1f} images/s)" if summary.indexed else ""
    lines.append(
        f"{summary.total:,} pictures in the index · {summary.elapsed_s:.1f} s elapsed{rate}"
    )
    if summary.bad:
        for path, reason in summary.bad[:5]:
            lines.append(f"  bad: {path}: {reason}")
        if len(summary.bad) > 5:
            lines.append(f"  ... and {len(summary.bad) - 5} more")
    if summary.report:
        lines.append(f"bad and missing pictures are listed in {summary.report}")
    if summary.interrupted:
        lines.append(interruption(summary))
    return "\n".join(lines)


def interruption(summary: IndexSummary) -> str:
    """What an interrupted run did, exactly, and how to go on."""
    where = f"interrupted while {summary.stage or 'starting'}"
    if not summary.changed:
        return f"{where}: nothing was changed in the index"
    done = []
    if summary.dropped:
        names = ", ".join(repr(name) for name in summary.dropped)
        done.append(f"dropped collection{'s' if len(summary.dropped) > 1 else ''} {names}")
    for count, what in [
        (summary.removed, "removed {:,} entries whose files are gone"),
        (summary.captions_removed, "removed {:,} captions"),
        (summary.indexed, "stored {:,} pictures"),
        (summary.captions_indexed, "stored {:,} captions"),
    ]:
        if count:
            done.append(what.format(count))
    unfinished_drop = summary.stage.startswith("dropping")
    advice = (
        "rerun with --rebuild to finish the rebuild" if unfinished_drop else "rerun to continue"
    )
    if summary.indexed or summary.captions_indexed:
        advice = f"everything embedded so far is stored; {advice}"
    return f"{where}: {', '.join(done)}; {advice}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings(coco_root=args.coco_root, collection=args.collection)
        reader: Reader
        if args.folder is not None:
            reader = FolderReader(args.folder)
        else:
            splits = COCO_SPLITS if args.split == "all" else (args.split,)
            reader = CocoReader(settings.coco_root, splits)
        summary = run(
            settings,
            reader,
            limit=args.limit,
            batch_size=args.batch_size,
            workers=args.workers,
            rebuild=args.rebuild,
            with_captions=args.with_captions,
            prune=args.prune,
            wait=args.wait,
            progress=not args.no_progress,
            compile_model=args.compile,
        )
    except SearchBotError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted before indexing began; nothing was changed", file=sys.stderr)
        return 130
    print(describe(summary))
    return 130 if summary.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
