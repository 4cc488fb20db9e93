"""Build or refresh the image index the bot searches.

    python index_builder.py                         # COCO2014 train+val from COCO_ROOT
    python index_builder.py --download --split val2014   # fetch what is missing, then index
    python index_builder.py --split val2014 --limit 10000
    python index_builder.py --folder ~/Pictures     # your own photos
    python index_builder.py --urls list.tsv         # a caption + URL list (Conceptual Captions)
    CHROMA_HOST=10.0.0.5 python index_builder.py --shard 0/4   # 1 of 4 builders, one server
    python index_builder.py --check --download --split val2014  # only check, in seconds

Before it downloads or loads anything, it checks in seconds what can fail (CLIP_MODEL, the
store, the source, COCO_BASE_URL and the disk: core.indexing.preflight); `--check` does only
that. Safe to stop at any moment (Ctrl-C, kill, power loss) and to rerun: it continues where it
stopped and, later, refreshes (adds new pictures, re-embeds changed ones, removes gone ones).
A refresh that would remove more than 10% of a source's entries (an empty or unmounted
folder?) changes nothing unless --prune confirms it. One builder at a time per embedded
store: a second one stops at once, or waits with --wait. On a Chroma server, builders of
different shards (--shard I/N) run at once, each indexing and refreshing only its shard.
Exit codes: 0 done, 1 runtime error (another builder running included), 2 bad arguments or
settings or a removal that needs --prune, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core.cli import fail, setup_logging
from core.config import Settings, load_settings
from core.errors import DownloadError, SearchBotError
from core.indexing import BuildOptions, BuildSummary, run
from core.indexing.build import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_WORKERS,
    REBUILD_WITH_SHARD,
    source_name,
)
from core.indexing.preflight import BuildSource, build_needed, check_build
from core.redaction import RedactSecrets, install, secret_values
from core.sources.coco import COCO_PICTURES, COCO_SPLITS, CocoReader
from core.sources.coco_download import CocoFile, ensure_coco
from core.sources.folders import FolderReader
from core.sources.scan import Reader
from core.sources.shards import EVERYTHING, Shard
from core.sources.units import format_duration, format_seconds, format_size, plural
from core.sources.url_downloads import DownloadOptions, DownloadSummary, download_url_list
from core.sources.url_fetch import FetchRules
from core.sources.url_lists import UrlListReader

if TYPE_CHECKING:  # torch and transformers load only when a model is used
    from core.models.encoder import DualEncoder

log = logging.getLogger("index_builder")

DOWNLOAD_BYTES_PER_S = 10e6
"""The download speed the estimate before a COCO download assumes (10 MB/s)."""


def batch_size(text: str) -> int | str:
    """`auto` or a positive whole number."""
    return "auto" if text.strip().lower() == "auto" else positive(text)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def shard(text: str) -> Shard:
    """`I/N`: shard I (from 0) of N."""
    try:
        return Shard.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python index_builder.py",
        description="Embed pictures with CLIP into the Chroma collection the bot searches. "
        "Settings (CLIP_MODEL, CHROMA_PATH or CHROMA_HOST/PORT, COLLECTION, DEVICE, DTYPE) "
        "come from the environment and .env; the flags below override them for this run.",
        epilog="Resumable and incremental: rerun the same command after an interruption or "
        "when files changed; only what is new or changed is embedded. Before anything long "
        "starts, what can fail is checked in seconds (CLIP_MODEL, the store, the source, "
        "COCO_BASE_URL, the disk). Exit codes: 0 done, 1 runtime error, 2 bad arguments or "
        "settings, 130 interrupted.",
    )
    what = parser.add_argument_group("what to index")
    _add_source_flags(what)
    _add_fetch_flags(what)
    _add_subset_flags(what)
    _add_build_flags(parser.add_argument_group("how to build"))
    _add_output_flags(parser.add_argument_group("what it says"))
    return parser


def _add_source_flags(parser: argparse._ArgumentGroup) -> None:
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
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--folder",
        type=Path,
        metavar="DIR",
        help="index every picture under DIR (recursively) instead of COCO",
    )
    source.add_argument(
        "--urls",
        type=Path,
        metavar="LIST",
        help="index the pictures of a caption + URL list instead of COCO: Conceptual "
        "Captions' TSV (caption<TAB>url, no header), a CSV with caption and url columns, or "
        "JSONL with caption and url keys; they are downloaded and checked into "
        "DATA_DIR/<list name>/ first (a rerun fetches only what is missing)",
    )


def _add_fetch_flags(parser: argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--download",
        action="store_true",
        help="fetch what the chosen COCO2014 split(s) need and is missing under COCO_ROOT "
        "(from COCO_BASE_URL; resumable, verified), then index",
    )
    parser.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="with --urls: also fetch from private, loopback and link-local addresses "
        "(refused by default, since a URL list is untrusted; for a mirror on your network)",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --urls: try again the URLs that failed for good in an earlier run (HTTP "
        "404/410, not a picture, too large); other failures are always retried",
    )


def _add_subset_flags(parser: argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--limit",
        type=positive,
        metavar="N",
        help="index only the first N pictures (by id; with --urls the first N valid ones in "
        "list order, and only those are downloaded), e.g. a 10k subset to try things out; "
        "with --shard, the first N of the shard",
    )
    parser.add_argument(
        "--shard",
        type=shard,
        default=EVERYTHING,
        metavar="I/N",
        help="index only shard I (counted from 0) of N: the pictures whose id hashes to I "
        "modulo N, the same on every host and run. N builders with 0/N .. N-1/N on N hosts "
        "fill one Chroma server (CHROMA_HOST) together, at the same time; each one adds, "
        "re-embeds and removes only its own shard's entries (and with --urls downloads only "
        "its shard's pictures). Works with COCO, --folder and --urls; not with --rebuild",
    )


def _add_build_flags(parser: argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--batch-size",
        type=batch_size,
        default="auto",
        metavar="N|auto",
        help="pictures per model call; auto (default) measures batches 16, 32, 64 and 128 "
        "on first use (a few seconds) and caches the fastest in CHROMA_PATH/"
        f"hardware-tuning.json; N skips that (e.g. {DEFAULT_BATCH_SIZE}; 256+ on a GPU)",
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
        "--if-needed",
        action="store_true",
        help="build only when the collection is empty or the last build of this source did "
        "not finish (interrupted: this finishes it); else say what the index holds and exit "
        "0 (`make run` uses it: an index built from other pictures is left as it is)",
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
        help="torch.compile the image tower first: often faster after about 30 s of "
        "compiling (measured per CPU in docs/benchmarks.md), for big builds (needs a C++ "
        "compiler; falls back if it fails)",
    )
    parser.add_argument(
        "--collection", metavar="NAME", help="collection name (default: COLLECTION)"
    )


def _add_output_flags(parser: argparse._ArgumentGroup) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only check, in seconds, what the build needs (CLIP_MODEL, the store, the source, "
        "with --download COCO_BASE_URL and the disk space), say what was found, and exit: 0 "
        "when everything is in place (every build does this first anyway)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log every step with its time, level and logger (DEBUG), and where the time per "
        "picture went (decode, model, store...)",
    )


def describe(summary: BuildSummary) -> str:
    """The human summary printed at the end of a run: what it did, what the index holds, and
    the pictures that could not be indexed (each once: the first few, then the report)."""
    lines = [f"{summary.source} → collection {summary.collection!r}"]
    if summary.up_to_date and not summary.interrupted:
        unchanged = plural(summary.unchanged, "picture")
        lines.append(f"index is up to date: {unchanged} unchanged, nothing to do")
    else:
        lines.append(_counts(summary))
    if summary.beyond_limit:
        lines.append(f"{plural(summary.beyond_limit, 'picture')} left out by --limit")
    if summary.captions_indexed or summary.captions_removed:
        lines.append(
            f"captions: indexed {summary.captions_indexed:,} · removed {summary.captions_removed:,}"
        )
    rate = f" ({summary.images_per_s:.1f} images/s)" if summary.indexed else ""
    lines.append(
        f"{plural(summary.total, 'picture')} in the index · "
        f"{format_seconds(summary.elapsed_s)}{rate}"
    )
    for path, reason in summary.bad[:5]:
        lines.append(f"  bad: {path}: {reason}")
    if len(summary.bad) > 5:
        lines.append(f"  ... and {len(summary.bad) - 5:,} more")
    if summary.report:
        lines.append(f"bad and missing pictures are listed in {summary.report}")
    if summary.interrupted:
        lines.append(interruption(summary))
    return "\n".join(lines)


def _counts(summary: BuildSummary) -> str:
    """ "indexed 24 pictures · 10 unchanged · 1 bad": what the run did, zeros left out."""
    parts = [f"indexed {plural(summary.indexed, 'picture')}"] if summary.indexed else []
    if summary.unchanged:
        parts.append(f"{summary.unchanged:,} unchanged")
    if summary.removed:
        parts.append(_removed(summary.removed))
    if summary.bad:
        parts.append(f"{len(summary.bad):,} bad")
    if summary.missing:
        parts.append(f"{len(summary.missing):,} missing on disk")
    return " · ".join(parts or ["indexed 0 pictures"])


def _removed(count: int) -> str:
    """ "removed 3 entries whose files are gone", in the summary and after an interruption."""
    files = "file is" if count == 1 else "files are"
    return f"removed {plural(count, 'entry', 'entries')} whose {files} gone"


def interruption(summary: BuildSummary) -> str:
    """What an interrupted run did, exactly, and how to go on."""
    where = f"interrupted while {summary.stage or 'starting'}"
    if not summary.changed:
        return f"{where}: nothing was changed in the index"
    done = []
    if summary.dropped:
        names = ", ".join(repr(name) for name in summary.dropped)
        done.append(f"dropped collection{'s' if len(summary.dropped) > 1 else ''} {names}")
    if summary.removed:
        done.append(_removed(summary.removed))
    if summary.captions_removed:
        done.append(f"removed {plural(summary.captions_removed, 'caption')}")
    if summary.indexed:
        done.append(f"stored {plural(summary.indexed, 'picture')}")
    if summary.captions_indexed:
        done.append(f"stored {plural(summary.captions_indexed, 'caption')}")
    unfinished_drop = summary.stage.startswith("dropping")
    advice = (
        "rerun with --rebuild to finish the rebuild" if unfinished_drop else "rerun to continue"
    )
    if summary.indexed or summary.captions_indexed:
        advice = f"everything embedded so far is stored; {advice}"
    return f"{where}: {', '.join(done)}; {advice}"


OMP_WAIT_POLICY = "PASSIVE"
"""torch's OpenMP threads wait for work asleep, not spinning (unless OMP_WAIT_POLICY is set).
Spinning threads take the cores the decode and writer threads need, and when anything else
runs on the machine a spinning model thread waits on a descheduled one (docs/benchmarks.md
measures both)."""


def main(argv: list[str] | None = None) -> int:
    """Check, fetch, build; print the summary. Returns the exit code (see the module's)."""
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)  # before torch is imported
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.download and (args.folder or args.urls):
        parser.error("--download fetches COCO2014: it does not go with --folder or --urls")
    if args.rebuild and not args.shard.whole:
        parser.error(REBUILD_WITH_SHARD)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO, detailed=args.verbose)
    if not args.shard.whole:
        log.info(
            "shard %s: this builder takes only the pictures whose id falls in shard %d of %d",
            args.shard,
            args.shard.index,
            args.shard.count,
        )
    redact = RedactSecrets(())  # no secret is known before the settings are read
    try:
        settings = load_settings(coco_root=args.coco_root, collection=args.collection)
        redact = install(secret_values(settings))
        if args.if_needed and not needed(settings, args):
            return 0
        checked = check_build(settings, build_source(args), wait=args.wait)
        if args.check:
            print("\n".join([*checked.lines, "everything the build needs is in place"]))
            return 0
        reader = prepare_source(settings, args, checked.download)
        encoder, batch = tuned_encoder(settings, args.batch_size)
        summary = run(settings, reader, build_options(args, batch), encoder=encoder)
    except SearchBotError as err:
        return fail(err, redact)
    except KeyboardInterrupt:
        print("interrupted before indexing began; nothing was changed", file=sys.stderr)
        return 130
    print(describe(summary))
    return 130 if summary.interrupted else 0


def needed(settings: Settings, args: argparse.Namespace) -> bool:
    """`--if-needed`: whether to build; says why, or why not."""
    source = source_name(unread_source(settings, args), args.shard)
    why = build_needed(settings, source)
    if why is None:
        log.info(
            "collection %r holds pictures and no unfinished build of %s: nothing to build "
            "(`make index` brings it up to date)",
            settings.collection,
            source,
        )
        return False
    log.info("%s", why)
    return True


def unread_source(settings: Settings, args: argparse.Namespace) -> Reader:
    """The reader of the chosen source, made but not read: for its name."""
    if args.folder is not None:
        return FolderReader(args.folder)
    if args.urls is not None:
        return UrlListReader(args.urls, settings.data_dir)
    return CocoReader(settings.coco_root, COCO_SPLITS if args.split == "all" else (args.split,))


def build_source(args: argparse.Namespace) -> BuildSource:
    """What the flags ask to index, as the checks before the build see it."""
    return BuildSource(
        folder=args.folder,
        urls=args.urls,
        splits=COCO_SPLITS if args.split == "all" else (args.split,),
        download=args.download,
        limit=args.limit,
        shard=args.shard,
    )


def build_options(args: argparse.Namespace, batch_size: int) -> BuildOptions:
    """The build's options from the flags, with the batch size `--batch-size` came to."""
    return BuildOptions(
        limit=args.limit,
        batch_size=batch_size,
        workers=args.workers,
        rebuild=args.rebuild,
        with_captions=args.with_captions,
        prune=args.prune,
        wait=args.wait,
        progress=not args.no_progress,
        compile_model=args.compile,
        shard=args.shard,
    )


def download_options(settings: Settings, args: argparse.Namespace) -> DownloadOptions:
    """The `--urls` download's options from the flags and the settings."""
    rules = FetchRules(
        deadline_s=settings.url_fetch_timeout_s, allow_private=args.allow_private_urls
    )
    return DownloadOptions(
        rules,
        limit=args.limit,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
        shard=args.shard,
    )


def tuned_encoder(settings: Settings, batch: int | str) -> tuple[DualEncoder, int]:
    """The CLIP encoder, loaded; with DTYPE=auto or `--batch-size auto`, the choice is
    measured (or read from CHROMA_PATH/hardware-tuning.json) and logged first."""
    from core.models.encoder import DualEncoder

    encoder = DualEncoder.from_settings(settings, tune_batch=batch == "auto")
    encoder.load()  # logs "DTYPE auto → ..." and "--batch-size auto → ..."
    if batch == "auto":
        assert encoder.tuning is not None and encoder.tuning.batch_size is not None
        return encoder, encoder.tuning.batch_size
    return encoder, batch


def prepare_source(
    settings: Settings, args: argparse.Namespace, download: list[CocoFile]
) -> Reader:
    """The reader of the chosen source, after fetching what it needs (--urls, --download:
    `download` is what the checks found missing of COCO2014)."""
    if args.folder is not None:
        return FolderReader(args.folder)
    if args.urls is not None:
        fetched = download_url_list(args.urls, settings.data_dir, download_options(settings, args))
        if not fetched.valid:
            raise DownloadError(
                f"no picture of the list could be fetched: {describe_download(fetched)}"
            )
        log.info("%s", describe_download(fetched))
        return UrlListReader(args.urls, settings.data_dir)
    splits = COCO_SPLITS if args.split == "all" else (args.split,)
    if args.download:
        fetch_coco(settings, splits, download, limit=args.limit, progress=not args.no_progress)
    return CocoReader(settings.coco_root, splits)


def fetch_coco(
    settings: Settings,
    splits: tuple[str, ...],
    plan: list[CocoFile],
    *,
    limit: int | None,
    progress: bool,
) -> None:
    """Say what will be downloaded (how much, about how long), then fetch it. `plan`: the
    zips still missing (empty: all is in place)."""
    what = f"COCO2014 {'+'.join(splits)}"
    if not plan:
        log.info("%s is in place in %s: nothing to download", what, settings.coco_root)
        return
    for item in plan:
        log.debug("to download: %s (%s; %s)", item.url, format_size(item.to_fetch), item.reason)
    total = sum(item.to_fetch for item in plan)
    log.info(
        "%s: %s to download from COCO_BASE_URL %s (%s, %s at %s/s)",
        what,
        format_size(total),
        settings.coco_base_url,
        plural(len(plan), "file"),
        format_duration(total / DOWNLOAD_BYTES_PER_S),
        format_size(DOWNLOAD_BYTES_PER_S).replace(".0 ", " "),
    )
    if limit is not None and limit < sum(COCO_PICTURES[split] for split in splits):
        log.info(
            "--limit %s indexes only the first %s, but COCO has no partial download: the "
            "whole zip(s) are fetched",
            f"{limit:,}",
            plural(limit, "picture"),
        )
    done = ensure_coco(settings, splits, progress=progress)
    log.info(
        "%s is in place in %s (%s downloaded)",
        what,
        done.root,
        format_size(done.bytes_downloaded),
    )


def describe_download(fetched: DownloadSummary) -> str:
    """One line on what a URL-list download did, and where its failures are listed."""
    line = (
        f"URL list → {fetched.folder}: {plural(fetched.valid, 'picture')} "
        f"({fetched.downloaded:,} new, {fetched.already_there:,} already there)"
    )
    if fetched.failed_count:
        reasons = ", ".join(f"{n:,} {reason}" for reason, n in fetched.failed.most_common())
        line += f"; {fetched.failed_count:,} failed ({reasons})"
    if fetched.skipped_failed:
        line += f"; {fetched.skipped_failed:,} that failed before skipped (--retry-failed)"
    if fetched.other_shards:
        line += f"; {fetched.other_shards:,} left to the other shards' builders"
    if fetched.bad_rows:
        line += f"; {fetched.bad_rows:,} bad rows"
    if fetched.failed_count or fetched.skipped_failed:
        line += f"; failures are listed in {fetched.failed_path}"
    return line


if __name__ == "__main__":
    sys.exit(main())
