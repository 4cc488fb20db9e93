"""`python -m core search ...`: the bot's search from a terminal, for operators and debugging.

Exit codes: 0 found, 1 a runtime error (bad image, model or store unavailable),
2 a usage error (empty query, bad setting) or an empty index.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict

from core.config import load_settings
from core.errors import SearchBotError
from core.search import Hit, SearchService, clean_query


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
        "(--image). Prints rank, score, path and first caption, one hit per line.",
    )
    search.add_argument("query", nargs="?", help='what to look for, e.g. "a dog on a beach"')
    search.add_argument("--image", metavar="FILE", help="search by this picture instead of a text")
    search.add_argument("--k", type=int, metavar="N", help="how many hits (default: TOP_K)")
    search.add_argument(
        "--json", action="store_true", help="print a JSON list of {id, path, score, captions}"
    )
    return parser


def _print_hits(hits: list[Hit], as_json: bool) -> None:
    if as_json:
        print(json.dumps([asdict(hit) for hit in hits], indent=2, ensure_ascii=False))
        return
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>2}  {hit.score:.3f}  {hit.path}  {hit.caption}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if (args.query is None) == (args.image is None):
        parser.error("give either a query text or --image FILE")
    if args.k is not None and args.k < 1:
        parser.error("--k must be at least 1")
    try:
        settings = load_settings()
        k = args.k or settings.top_k
        if args.query is not None:
            clean_query(args.query)  # an empty query is refused before loading any model
        service = SearchService.open(settings)
        if args.image is not None:
            hits = service.by_image_file(args.image, k)
        else:
            hits = service.by_text(args.query, k)
    except SearchBotError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    _print_hits(hits, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
