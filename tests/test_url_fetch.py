"""One fetch's rules: `X-Robots-Tag` read directive by directive, and decodes sharing one
pixel budget (local HTTP server only)."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest

from core.images import DecodedImage
from core.sources import url_fetch
from core.sources.url_downloads import DownloadOptions, download_url_list
from core.sources.url_fetch import FetchFailure, FetchRules, PixelBudget, robots_refusal
from tests.url_list_files import picture, write_tsv
from tests.url_server import Route, UrlServer


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        (["noai"], "noai"),
        (["NoImageAI"], "noimageai"),
        (["none"], "none"),
        (["noindex, nofollow"], "noindex"),
        (["nofollow,noimageindex"], "noimageindex"),
        (["all", "NOINDEX"], "noindex"),
        (["clip-image-search-bot: noimageindex"], "noimageindex"),
        (["CLIP-Image-Search-Bot: NoAI"], "noai"),
        (["otherbot: noindex"], None),
        (["otherbot: noindex, noai"], None),
        (["otherbot: noindex", "nofollow"], None),
        (["otherbot: noindex", "noai"], "noai"),
        (["otherbot: noindex, clip-image-search-bot: noai"], "noai"),
        (["clip-image-search-bot: nofollow, otherbot: noai"], None),
        (["noindex, otherbot: nofollow"], "noindex"),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], None),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST, noindex"], "noindex"),
        (["unavailable_after: Friday, 25-Jun-2010 15:00:00 GMT, noai"], "noai"),
        (["otherbot: unavailable_after: 25 Jun 2010 15:00:00 PST, noai"], None),
        (["max-image-preview: large, noimageai"], "noimageai"),
        (["nosnippet", "max-snippet: 20"], None),
        (["noaiindex, noindexing, ai"], None),
        ([""], None),
        ([], None),
    ],
)
def test_robots_tag_directives(values: list[str], refusal: str | None) -> None:
    assert robots_refusal(values) == refusal


def test_only_permanent_failures_say_so() -> None:
    permanent = ["HTTP 404", "HTTP 410", "not an image", "too large"]
    others = ["HTTP 429", "HTTP 500", "HTTP 403", "timeout", "private address", "robots: noai"]
    assert all(FetchFailure(reason).permanent for reason in permanent)
    assert not any(FetchFailure(reason).permanent for reason in others)


# One pixel budget for all decodes


def test_a_charge_waits_until_the_budget_has_room() -> None:
    budget = PixelBudget(100)
    first = budget.charge(60)
    first.__enter__()
    second_in = threading.Event()

    def second() -> None:
        with budget.charge(60):
            second_in.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not second_in.wait(0.2) and budget.used == 60
    first.__exit__(None, None, None)
    assert second_in.wait(5)
    thread.join()
    assert budget.used == 0
    with budget.charge(10**9):  # larger than the budget: waits to have it all
        assert budget.used == 100


def test_parallel_decodes_stay_within_the_pixel_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    active, peak, lock = [0], [0], threading.Lock()
    real_decode = url_fetch.decode_image
    all_in = threading.Barrier(2, timeout=0.5)  # two decodes at once, if they may be

    def watched(path: str, **kwargs: object) -> DecodedImage:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        with contextlib.suppress(threading.BrokenBarrierError):
            all_in.wait()
        try:
            return real_decode(path, **kwargs)  # type: ignore[arg-type]
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(url_fetch, "decode_image", watched)
    with UrlServer() as server:
        rows = [
            (str(n), server.add(f"/{n}.png", Route(picture("red", "circle", "PNG", seed=n))))
            for n in range(4)
        ]
        listing = write_tsv(tmp_path / "list.tsv", rows)
        # Each picture is 64×64 = 4,096 pixels: the budget holds one at a time.
        rules = FetchRules(allow_private=True, decode_budget_pixels=6000)
        options = DownloadOptions(rules, concurrency=4, per_host=4, progress=False)
        summary = download_url_list(listing, tmp_path, options)
    assert summary.downloaded == 4 and peak[0] == 1
