from __future__ import annotations

import pytest

from bot import replies
from core.errors import (
    BadImage,
    EmptyQuery,
    ImageProblem,
    IndexEmpty,
    ModelMismatch,
    NoCategories,
    SearchBotError,
    StoreUnavailable,
    UnknownCategory,
)
from core.search.service import Hit


def hit(caption: str = "a dog on a beach", score: float = 0.31234) -> Hit:
    return Hit("1", "/x.jpg", score, (caption, "other") if caption else ())


def test_hit_caption_has_rank_score_and_first_caption() -> None:
    assert replies.hit_caption(1, hit()) == "#1 · 0.31 · a dog on a beach"
    assert replies.hit_caption(10, hit("", 0.999)) == "#10 · 1.00"


def test_hit_caption_never_shows_a_negative_score() -> None:
    assert replies.hit_caption(3, hit(score=-0.001)) == "#3 · 0.00 · a dog on a beach"
    assert replies.hit_caption(4, hit(score=-0.52)) == "#4 · 0.00 · a dog on a beach"


@pytest.mark.parametrize(
    ("first", "last", "found", "shown"),
    [
        (1, 1, 1, "1 picture"),
        (1, 3, 3, "3 pictures"),
        (1, 5, 37, "1–5 of 37"),
        (6, 8, 8, "6–8 of 8"),
        (6, 6, 6, "6 of 6"),
        (6, 10, None, "6–10"),
        (1, 5, None, "1–5"),
        (1, 5, 1234, "1–5 of 1,234"),
    ],
)
def test_where_a_page_lies_is_what_is_known(
    first: int, last: int, found: int | None, shown: str
) -> None:
    assert replies.span(first, last, found) == shown


RED = replies.Heading("a <red> circle")


def test_the_message_under_an_album() -> None:
    assert (
        replies.results_text(RED, 1, 5, None, more=True) == "🔎 <b>a &lt;red&gt; circle</b> — 1–5"
    )
    assert replies.results_text(RED, 6, 8, 8, more=False) == (
        "🔎 <b>a &lt;red&gt; circle</b> — 6–8 of 8\nThat's all I found."
    )
    one = replies.results_text(replies.Heading("#bird"), 1, 1, 1, more=False)
    assert one == "🔎 <b>#bird</b> — 1 picture\nThat's all I found."
    assert replies.results_text(RED, 196, 200, 250, more=False).endswith(
        "at most: change the words to find other pictures."
    )
    deepest = replies.results_text(RED, 196, 200, None, more=False)
    assert deepest.endswith(
        "I show the first 200 results at most: change the words to find other pictures."
    )


def test_a_similar_search_is_named_after_the_search_it_came_from() -> None:
    like = replies.Heading("a <red> circle", (2,))
    assert like.html() == "like #2 of <b>a &lt;red&gt; circle</b>"
    deeper = replies.Heading("cats", (1, 4, 2))
    assert deeper.html() == "like #1 of like #4 of like #2 of <b>cats</b>"
    deepest = replies.Heading("cats", (1, 4, 2, 3))
    assert deepest.html() == "like #1 of like #4 of like #2 of … <b>cats</b>"
    assert (
        replies.all_found(like) == "That's all I found for like #2 of <b>a &lt;red&gt; circle</b>."
    )
    assert replies.Heading("").html() == "<b>your picture</b>"


def test_the_help_says_what_a_score_means_for_the_model_that_runs() -> None:
    clip = replies.scores_help(CLIP)
    assert "0 to 1, higher is closer" in clip and "about 0.3" in clip and "about 0.9" in clip
    assert "about 0.1–0.2" in replies.scores_help(SIGLIP2)
    other = replies.scores_help(replies.ModelNote("x", "other", multilingual=False))
    assert "higher is closer" in other and "about" not in other
    assert clip in replies.help_text(replies.HelpFacts(ask_enabled=False, model=CLIP))


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
    assert "/ask" in replies.help_text(replies.HelpFacts(ask_enabled=True, model=CLIP))
    assert "/ask" not in replies.help_text(replies.HelpFacts(ask_enabled=False, model=CLIP))
    assert replies.start_text(replies.HelpFacts(ask_enabled=False, model=CLIP)).startswith("Hello!")


def test_help_and_stats_say_which_model_runs_and_which_languages_work() -> None:
    clip_help = replies.help_text(replies.HelpFacts(ask_enabled=True, model=CLIP))
    assert "openai/clip-vit-base-patch32 (CLIP)" in clip_help and "English" in clip_help
    siglip_help = replies.help_text(replies.HelpFacts(ask_enabled=True, model=SIGLIP2))
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


# --- texts a user reads: help, commands, errors, pictures, answers (issue 23, items 6-12) -------


def test_help_lists_the_indexs_own_categories_and_says_how_many() -> None:
    facts = replies.HelpFacts(ask_enabled=True, model=CLIP, categories=("hot dog", "cat", "dog"))
    text = replies.help_text(facts)
    assert "<code>#dog in a park</code> — only photos with a dog in them" in text
    assert "This index knows 3 kinds of objects: #cat, #dog, #hot_dog" in text
    assert "COCO" not in text and "80" not in text
    many = tuple(f"thing{n:02d}" for n in range(80))
    listed = replies.help_text(replies.HelpFacts(ask_enabled=True, model=CLIP, categories=many))
    assert "80 kinds of objects: #thing00, #thing01" in listed and "#thing11 and 68 more" in listed
    one = replies.help_text(replies.HelpFacts(ask_enabled=True, model=CLIP, categories=("a<b",)))
    assert "1 kind of object: #a&lt;b" in one  # the store's names are not trusted
    assert "#" not in replies.help_text(replies.HelpFacts(ask_enabled=True, model=CLIP))


def test_help_in_a_group_names_the_bot_in_mentions_and_commands() -> None:
    facts = replies.HelpFacts(ask_enabled=True, model=CLIP, group_bot="pic_bot")
    text = replies.help_text(facts)
    assert text.startswith("I find pictures. In this group:")
    assert "<code>@pic_bot a red bus</code>" in text and "/ask@pic_bot" in text
    assert "/stats@pic_bot — what is indexed · /help@pic_bot — this message" in text
    assert "Send me" not in text
    no_ask = replies.help_text(replies.HelpFacts(ask_enabled=False, model=CLIP, group_bot="b"))
    assert "/ask" not in no_ask and "question" not in no_ask and "replies to me included" in no_ask


def test_an_unknown_command_gets_one_line() -> None:
    assert replies.unknown_command("/foo") == "I don't know /foo: /help shows what I can do."
    grouped = replies.unknown_command("/foo", "pic_bot")
    assert grouped == "I don't know /foo: /help@pic_bot shows what I can do."
    assert "&lt;" in replies.unknown_command("/<b>") and "\n" not in replies.unknown_command("/x")


@pytest.mark.parametrize(
    ("message", "reply"),
    [
        (
            "only minus terms: say what to look for too, e.g. `a beach -people`",
            "Only minus terms: say what to look for too, e.g. <code>a beach -people</code>",
        ),
        ("no category #dgo: did you mean #dog?", "No category #dgo: did you mean #dog?"),
        ("a <stray> ` backtick", "A &lt;stray&gt;  backtick"),
        ("#cat is not here", "#cat is not here"),
    ],
)
def test_a_message_from_core_becomes_an_html_reply(message: str, reply: str) -> None:
    assert replies.as_reply(message) == reply


def test_errors_quoting_core_start_with_a_capital_and_show_no_backtick() -> None:
    minus = replies.error_reply(EmptyQuery("only minus terms: e.g. `a beach -people`"))
    assert minus.startswith("Only minus terms") and "`" not in minus
    assert replies.error_reply(UnknownCategory("no category #x")) == "No category #x"
    no_tags = replies.error_reply(NoCategories("this index has no categories ... instances"))
    assert no_tags.startswith("This index has no categories") and "instances" not in no_tags


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (
            BadImage("x", reason=ImageProblem.TOO_MANY_PIXELS, size=(8000, 6000), limit=40_000_000),
            "That picture is 8,000×6,000 pixels (48 megapixels), over my limit of 40 megapixels.",
        ),
        (
            BadImage("x", reason=ImageProblem.TOO_MANY_PIXELS, limit=12_500_000),
            "That picture has too many pixels for me, over my limit of 12.5 megapixels.",
        ),
        (
            BadImage("x", reason=ImageProblem.NOT_A_PICTURE),
            "That file is not a picture I can read.",
        ),
        (
            BadImage("x", reason=ImageProblem.DAMAGED),
            "That picture is damaged (cut off or corrupt)",
        ),
        (BadImage("x", reason=ImageProblem.GONE), "I no longer have that picture at hand"),
        (BadImage("x"), "I couldn't read that picture."),
    ],
    ids=["too-many-pixels", "too-many-unknown-size", "not-a-picture", "damaged", "gone", "other"],
)
def test_a_picture_that_cannot_be_used_says_why(err: BadImage, expected: str) -> None:
    assert replies.error_reply(err).startswith(expected)


def test_megapixels() -> None:
    assert replies.megapixels(40_000_000) == "40 megapixels"
    assert replies.megapixels(1_000_000) == "1 megapixel"
    assert replies.megapixels(12_345_678) == "12.3 megapixels"


def test_an_empty_answer_says_what_was_not_possible() -> None:
    assert replies.answer_text("", caption_mode=True) == "I can't describe this picture."
    assert replies.answer_text("", caption_mode=False) == "I don't know."
    assert replies.answer_text("a dog", caption_mode=True) == "📷 A dog"


def test_ask_unavailable_says_when_to_try_again() -> None:
    assert replies.ask_unavailable(599.5).endswith("try again in 10 minutes.")
    assert replies.ask_unavailable(20).endswith("try again in a minute.")
    assert replies.ask_unavailable().endswith("try again later.")


def test_stats_for_a_user_leaves_the_operators_details_out() -> None:
    text = replies.stats_text(images=3, model=CLIP)
    assert (
        text == "Pictures indexed: 3\nModel: openai/clip-vit-base-patch32 (CLIP; queries: English)"
    )
    admin = replies.stats_text(images=3, model=CLIP, device="cuda:0", dtype="float16")
    assert admin.endswith("\nDevice: cuda:0 (float16)")
