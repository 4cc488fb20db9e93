"""The bot's search path in one call, for the tests: `prepare` a query, then `page` it."""

from __future__ import annotations

from core.search.service import Query, SearchPage, SearchService


def search(
    service: SearchService,
    query: str | bytes | Query,
    k: int = 5,
    offset: int = 0,
    *,
    nearest_anyway: bool = False,
) -> SearchPage:
    """Results `offset + 1` … `offset + k` of `query` (a text, a picture's bytes, or a
    `Query`), found as the bot finds them: `SearchService.prepare`, then `page`."""
    if isinstance(query, str):
        query = Query(text=query)
    elif isinstance(query, bytes):
        query = Query(picture=query)
    return service.page(service.prepare(query), k, offset, nearest_anyway=nearest_anyway)
