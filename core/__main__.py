"""`python -m core ...`: the bot's search from a terminal, for operators and debugging.

    python -m core search "a dog on a beach -people" [--k N] [--json]
    python -m core search --where dog,frisbee "in a park"
    python -m core search --image photo.jpg ["at night"]
    python -m core search --like 123456
    python -m core status
    python -m core eval [--karpathy dataset_coco.json | --split val2014 --limit 1000] [--json]

Exit codes: 0 done, 1 a runtime error (bad image, model or store unavailable),
2 a usage error (empty query, bad setting), an empty index, or (status) an index whose last
build did not finish.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from core.cli import fail, setup_logging
from core.config import Settings, load_settings
from core.errors import BadImage, EmptyQuery, SearchBotError
from core.redaction import RedactSecrets, install, secret_values
from core.sources.coco import COCO_SPLITS
from core.sources.units import plural
from core.store.collection_info import CollectionInfo, describe, quick_info

if TYPE_CHECKING:
    from core.search.service import Hit

# The search and evaluation modules (and chromadb, numpy) are imported by the commands that
# use them: `status` of an embedded index needs none of them.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core",
        description="Search the image index from a terminal (settings come from the "
        "environment and .env, as for the bot).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO level)")
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser(
        "search",
        help="find the pictures that best match a text or a picture",
        description="Find the pictures that best match a text (positional) or a picture "
        "(--image). Prints rank, score, path and first caption, one hit per line; the score "
        "is the cosine as the bot shows it (0.00 to 1.00, higher is closer; MIN_SCORE compares "
        "the same cosine). --like leaves that picture itself out, as the bot's Similar does.",
    )
    search.add_argument(
        "query",
        nargs="?",
        help='what to look for, e.g. "a dog on a beach -people", "cat + snow", "#dog in a park" '
        "(+ combines terms, -word pushes away at half weight, #name filters by COCO category); "
        "with --image or --like, words that change the picture",
    )
    search.add_argument("--image", metavar="FILE", help="search by this picture (and the words)")
    search.add_argument(
        "--like", metavar="ID", help="search like this indexed picture (itself left out)"
    )
    search.add_argument(
        "--where",
        metavar="CATS",
        default="",
        help="comma-separated COCO categories every hit must hold, e.g. dog,frisbee "
        "(the same as #dog #frisbee)",
    )
    search.add_argument("--k", type=int, metavar="N", help="how many hits (default: TOP_K)")
    search.add_argument(
        "--json", action="store_true", help="print a JSON list of {id, path, score, captions}"
    )
    commands.add_parser(
        "status",
        help="say how many pictures the index holds (exit code 2 when it is empty or its "
        "last build did not finish)",
        description="Print the collection's size, model and store without loading a model, "
        "and each source whose last build did not finish (interrupted: 'incomplete: 10 of "
        "40,504'). Exit code 0 when it holds pictures and every build finished, 2 when it is "
        "missing, empty or incomplete (scripts use this to build, or finish building, the "
        "index only when needed; `make run` leaves that to `index_builder.py --if-needed`).",
    )
    _add_drop_parser(commands)
    _add_eval_parser(commands)
    return parser


def _add_drop_parser(commands: argparse._SubParsersAction) -> None:
    drop = commands.add_parser(
        "drop-libraries",
        help="remove every chat's library (after a change of CLIP_MODEL, say)",
        description="Remove the collection <COLLECTION>-library, which holds every chat's "
        "library (their vectors and Telegram references; the pictures stay in Telegram). "
        "Needed when CLIP_MODEL changed: the bot refuses libraries made with another model. "
        "Chats then build their libraries afresh from what is posted.",
    )
    drop.add_argument(
        "--yes", action="store_true", help="really remove them (without it: say what would go)"
    )


def _add_eval_parser(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="measure retrieval quality: recall@1/5/10 on a COCO split",
        description="Recall@K the way papers report it: text->image (a caption finds its "
        "picture among all the split's pictures) and image->text (a picture finds any of its "
        "captions), in percent, computed exactly over the CLIP_MODEL vectors; with the first "
        "5 captions of each picture, as the papers. When COLLECTION holds exactly these "
        "pictures made by CLIP_MODEL, its stored vectors are reused and text->image is also "
        "measured through the index (HNSW), and fused with COLLECTION_captions when that "
        "exists (each query's own caption left out). The model's published numbers are shown "
        "beside them; they are comparable only with --karpathy's whole test split. "
        "Exit code 2 for a bad input (missing or malformed file, --limit below 1).",
    )
    evaluate.add_argument(
        "--coco-root",
        metavar="DIR",
        type=Path,
        help="the COCO2014 folder (annotations/, train2014/, val2014/); default: COCO_ROOT",
    )
    which = evaluate.add_mutually_exclusive_group()
    which.add_argument(
        "--split",
        choices=COCO_SPLITS,
        help="evaluate on this COCO split's pictures and captions (default: val2014; its "
        "40,504 pictures make recall lower than on a 5k set: use --limit or --karpathy)",
    )
    which.add_argument(
        "--karpathy",
        metavar="FILE",
        type=Path,
        help="Karpathy's split file (dataset_coco.json): evaluate on its 'test' split, the "
        "standard 5,000 val2014 pictures and the captions the file gives them",
    )
    evaluate.add_argument(
        "--limit",
        metavar="N",
        type=int,
        help="only the first N pictures by id (quick runs; not comparable with the papers)",
    )
    evaluate.add_argument(
        "--no-index",
        action="store_true",
        help="encode every picture and skip the rows through the Chroma index (exact only)",
    )
    evaluate.add_argument(
        "--json",
        action="store_true",
        help='print JSON: {"model", "images", "captions", "text_to_image": {"R@1", "R@5", '
        '"R@10"}, "image_to_text": {...}, ...} with recalls in percent',
    )


def _evaluate(settings: Settings, args: argparse.Namespace) -> None:
    from core.evaluation import Evaluator, format_report, select_coco, select_karpathy

    root = args.coco_root or settings.coco_root
    if args.karpathy is not None:
        selection = select_karpathy(args.karpathy, root, args.limit)
    else:
        selection = select_coco(root, args.split or "val2014", args.limit)
    report = Evaluator(settings, use_index=not args.no_index).run(selection)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        print(format_report(report))


def _status(settings: Settings) -> int:
    """Size and model of the collection, read without chromadb when it can be (an embedded
    store's SQLite file, a server's HTTP API: no index loaded, so it stays quick however
    large the collection); through Chroma otherwise, which names any problem."""
    info, where = quick_info(settings, settings.collection), describe(settings)
    if info is None:
        from core.store.database import Database  # here: it imports chromadb

        info = Database(settings).info(settings.collection)
    if info is None or info.count == 0:
        print(f"collection {settings.collection!r} in {where}: empty")
        return 2
    print(
        f"collection {info.name!r} in {where}: {plural(info.count, 'picture')}, "
        f"model {info.model} ({info.dim}-d)"
    )
    if info.effort is not None:
        print(info.effort.describe())
    for line in _incomplete(info):
        print(line)
    print(_libraries(settings))
    return 2 if info.incomplete else 0


def _libraries(settings: Settings) -> str:
    """ "chat libraries: 3 chats, 120 pictures" (`<COLLECTION>-library`), or that there are
    none; only when there are some does it read them through Chroma, to count the chats."""
    from core.library.records import library_collection

    name = library_collection(settings)
    info = quick_info(settings, name)
    switch = "" if settings.library_enabled else " (LIBRARY_ENABLED is off)"
    if info is None and settings.library_enabled:
        from core.store.database import Database  # here: it imports chromadb

        info = Database(settings).info(name)
    if info is None or info.count == 0:
        return f"chat libraries: none{switch}"
    from core.library.store import Library

    try:
        library = Library.open(settings, model=settings.clip_model, dim=info.dim or 0)
        totals = library.totals()
    except SearchBotError as err:  # made with another model, an unreachable store
        return f"chat libraries: unavailable ({err})"
    return (
        f"chat libraries: {plural(totals.chats, 'chat')}, "
        f"{plural(totals.pictures, 'picture')}{switch}"
    )


def _drop_libraries(settings: Settings, *, really: bool) -> int:
    from core.library.records import library_collection
    from core.store.database import Database  # here: it imports chromadb

    name = library_collection(settings)
    database = Database(settings)
    info = database.info(name)
    if info is None:
        print(f"no chat libraries in {describe(settings)}")
        return 0
    what = f"collection {name!r} ({plural(info.count, 'picture')}, model {info.model})"
    if not really:
        print(f"would remove {what}: add --yes to remove it")
        return 2
    database.drop(name)
    print(f"removed {what}")
    return 0


def _incomplete(info: CollectionInfo) -> list[str]:
    """A line per source whose last build did not finish: "incomplete: 10 of 40,504 pictures
    of COCO2014 val2014 in data/coco (...)", and what to do about it."""
    lines = [
        f"incomplete: {build.done(info.count):,} of {build.target:,} pictures of {build.source} "
        "(its last build stopped before the end)"
        for build in info.incomplete
    ]
    if lines:
        lines.append(
            "rerun the same index_builder.py command (or `make run`) to finish: it embeds only "
            "what is missing"
        )
    return lines


def _search(settings: Settings, args: argparse.Namespace) -> list[Hit]:
    from core.search.query import parse_query
    from core.search.service import Query, SearchService, empty_query_message

    k = args.k or settings.top_k
    picture = None
    if args.image is not None:
        try:
            with open(args.image, "rb") as handle:
                picture = handle.read(settings.max_image_pixels * 4 + 1)
        except OSError as err:
            raise BadImage(f"cannot read {args.image}: {err.strerror or err}") from None
    categories = tuple(c.strip() for c in args.where.split(",") if c.strip())
    text = args.query or ""
    parsed = parse_query(text)
    words = parsed.positives or parsed.symbols or parsed.hashtags  # symbols: the model decides
    if not (words or categories or picture or args.like):
        # refused before loading any model
        raise EmptyQuery(empty_query_message(parsed))
    query = Query(text=text, picture=picture, like_id=args.like, categories=categories)
    service = SearchService.open(settings)
    page = service.page(service.prepare(query), k)  # the bot's path: prepare, then page
    if page.reading:
        print(f"read as: {page.reading}", file=sys.stderr)
    if page.below_min_score and not page.hits:
        print(f"{page.below_min_score} hits below MIN_SCORE", file=sys.stderr)
    if page.found is not None:
        print(f"found: {page.found:,} in all", file=sys.stderr)
    return page.hits


def _print_hits(hits: list[Hit], as_json: bool) -> None:
    """One line per hit: rank, score as the bot shows it, path, first caption; or, with
    --json, the hits with their exact cosines."""
    from core.search.service import shown_score

    if as_json:  # the terminal searches no chat's library
        rows = [{k: v for k, v in asdict(hit).items() if k != "library"} for hit in hits]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>2}  {shown_score(hit.score)}  {hit.path}  {hit.caption}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(logging.INFO if args.verbose else logging.WARNING)
    if args.command == "search":
        if args.query is None and not (args.image or args.like or args.where.strip()):
            parser.error("give a query text, --where CATS, --image FILE or --like ID")
        if args.image is not None and args.like is not None:
            parser.error("give --image FILE or --like ID, not both")
    if args.command == "search" and args.k is not None and args.k < 1:
        parser.error("--k must be at least 1")
    redact = RedactSecrets(())  # no secret is known before the settings are read
    try:
        settings = load_settings()
        redact = install(secret_values(settings))
        if args.command == "status":
            return _status(settings)
        if args.command == "drop-libraries":
            return _drop_libraries(settings, really=args.yes)
        if args.command == "eval":
            _evaluate(settings, args)
            return 0
        _print_hits(_search(settings, args), args.json)
    except SearchBotError as err:
        return fail(err, redact)
    return 0


if __name__ == "__main__":
    sys.exit(main())
