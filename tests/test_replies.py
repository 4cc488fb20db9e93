from __future__ import annotations

from bot import replies
from core.errors import (
    BadImage,
    EmptyQuery,
    IndexEmpty,
    ModelMismatch,
    SearchBotError,
    StoreUnavailable,
)
from core.search.service import Hit


def hit(caption: str = "a dog on a beach", score: float = 0.31234) -> Hit:
    return Hit("1", "/x.jpg", score, (caption, "other") if caption else ())


def test_hit_caption_has_rank_score_and_first_caption() -> None:
    assert replies.hit_caption(1, hit()) == "#1 · 0.31 · a dog on a beach"
    assert replies.hit_caption(10, hit("", 0.999)) == "#10 · 1.00"


def test_hit_caption_is_html_safe_and_within_telegram_limit() -> None:
    assert replies.hit_caption(2, hit("cats <3 & dogs")) == "#2 · 0.31 · cats &lt;3 &amp; dogs"
    long = replies.hit_caption(1, hit("word " * 1000))
    assert len(long) == replies.CAPTION_LIMIT and long.endswith("…")


def test_clip() -> None:
    assert replies.clip("short", 10) == "short"
    assert replies.clip("a" * 20, 10) == "a" * 9 + "…"


CLIP = replies.ModelNote("openai/clip-vit-base-patch32", "clip", multilingual=False)
SIGLIP2 = replies.ModelNote("google/siglip2-base-patch16-224", "siglip2", multilingual=True)


def test_help_mentions_ask_only_when_enabled() -> None:
    assert "/ask" in replies.help_text(ask_enabled=True, model=CLIP)
    assert "/ask" not in replies.help_text(ask_enabled=False, model=CLIP)
    assert replies.start_text(ask_enabled=False, model=CLIP).startswith("Hello!")


def test_help_and_stats_say_which_model_runs_and_which_languages_work() -> None:
    clip_help = replies.help_text(ask_enabled=True, model=CLIP)
    assert "openai/clip-vit-base-patch32 (CLIP)" in clip_help and "English" in clip_help
    siglip_help = replies.help_text(ask_enabled=True, model=SIGLIP2)
    assert "(SigLIP 2)" in siglip_help and "any language" in siglip_help
    stats = replies.stats_text(images=1, model=SIGLIP2, device="cpu", dtype="float32")
    assert "google/siglip2-base-patch16-224 (SigLIP 2; queries: any)" in stats


def test_error_replies_are_for_users_not_operators() -> None:
    assert "few words" in replies.error_reply(EmptyQuery("x"))
    assert "couldn't read" in replies.error_reply(BadImage("x"))
    assert "index is empty" in replies.error_reply(IndexEmpty("x"))
    for err in (StoreUnavailable("x"), ModelMismatch("x")):
        assert "unavailable" in replies.error_reply(err)
    assert replies.error_reply(SearchBotError("x")) == replies.GENERIC_ERROR


def test_rate_limited_rounds_up_to_whole_seconds() -> None:
    assert "Try again in 1 s" in replies.rate_limited(0.2)
    assert "Try again in 42 s" in replies.rate_limited(41.6)


def test_stats_text_escapes() -> None:
    model = replies.ModelNote("a<b", "clip", multilingual=False)
    text = replies.stats_text(images=123287, model=model, device="cpu", dtype="bfloat16", store="s")
    assert "Pictures indexed: 123,287" in text and "a&lt;b" in text


def test_stats_text_shows_the_store_only_when_given() -> None:
    public = replies.stats_text(images=3, model=CLIP, device="cpu", dtype="float32")
    assert "Store" not in public and "Pictures indexed: 3" in public
    assert "Store: s" in replies.stats_text(
        images=3, model=CLIP, device="cpu", dtype="float32", store="s"
    )


def test_public_model_name_hides_local_paths() -> None:
    assert (
        replies.public_model_name("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"
    )
    assert replies.public_model_name("/srv/models/my_clip") == "my_clip"
    assert replies.public_model_name("./models/my_clip/") == "my_clip"
    assert replies.public_model_name("C:\\models\\my_clip") == "my_clip"
