"""Every text the bot sends, as pure functions: easy to read in one place and to test."""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from pathlib import PurePath

from core.errors import (
    BadImage,
    EmptyQuery,
    ImageProblem,
    IndexEmpty,
    IndexRebuilding,
    ModelMismatch,
    ModelUnavailable,
    NoCategories,
    SearchBotError,
    StoreUnavailable,
    UnknownCategory,
    UnknownPicture,
)
from core.search.query import hashtag
from core.search.service import MAX_RESULTS, Hit, shown_score

CAPTION_LIMIT = 1024
"""Telegram's limit for a photo caption, in characters (after HTML parsing)."""
TEXT_LIMIT = 4096

# Every text is sent with parse_mode=HTML: whatever comes from data or users is escaped.


def hit_caption(rank: int, hit: Hit) -> str:
    """ "#1 · 0.31 · a red circle": rank, score (its cosine, never below 0.00: `shown_score`,
    as the CLI prints it), first caption. Albums and inline results alike."""
    head = f"#{rank} · {shown_score(hit.score)}"
    caption = f"{head} · {hit.caption}" if hit.caption else head
    return html.escape(clip(caption, CAPTION_LIMIT), quote=False)


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


@dataclass(frozen=True)
class ModelNote:
    """Which search model runs, as /help and /stats tell it."""

    name: str
    """CLIP_MODEL as everyone may see it (`public_model_name`)."""
    family: str
    """"clip", "siglip" or "siglip2"."""
    multilingual: bool


FAMILY_NAMES = {"clip": "CLIP", "siglip": "SigLIP", "siglip2": "SigLIP 2"}


def model_line(model: ModelNote) -> str:
    """ "Search model: google/siglip2-base-patch16-224 (SigLIP 2): write in any language." """
    family = FAMILY_NAMES.get(model.family, model.family)
    languages = "write in any language" if model.multilingual else "English descriptions work best"
    return f"Search model: {model.name} ({family}): {languages}."


@dataclass(frozen=True)
class HelpFacts:
    """What /help and /start say depends on: the bot, where they are asked, and the index."""

    ask_enabled: bool
    model: ModelNote
    categories: tuple[str, ...] = ()
    """The index's own categories (its #hashtags); none for folder and URL-list indexes."""
    group_bot: str | None = None
    """The bot's username when asked in a group (commands and mentions name it there)."""
    library: tuple[str, ...] = ()
    """What /help says of the chat's own library (`bot.library_texts.help_lines`); none
    without LIBRARY_ENABLED."""


def help_text(facts: HelpFacts) -> str:
    """/help: what to send and what comes back, in a private chat or in a group (where the
    bot answers only what names it), how to change a search, with the index's own
    categories, and which model runs."""
    lines = _group_uses(facts) if facts.group_bot else _private_uses(facts)
    lines += ["", "<b>Ways to search</b>", *SEARCH_SYNTAX, *_category_lines(facts.categories)]
    if facts.library:
        lines += ["", *facts.library]
    commands = "/stats — what is indexed · /help — this message"
    if facts.group_bot:
        commands = commands.replace("/stats", f"/stats@{facts.group_bot}")
        commands = commands.replace("/help", f"/help@{facts.group_bot}")
    lines += [
        "",
        scores_help(facts.model),
        BUTTONS_HELP,
        html.escape(model_line(facts.model), quote=False),
    ]
    lines.append(commands)
    return "\n".join(lines)


def _private_uses(facts: HelpFacts) -> list[str]:
    """What to send in a private chat, where every message is for the bot."""
    lines = [
        "I find pictures. Send me:",
        "• a few words, e.g. <i>a dog running on a beach</i> — the best matching photos",
        "• a photo (or an image file) — similar photos; a caption changes the search, e.g. "
        "<i>at night</i>",
    ]
    if facts.ask_enabled:
        return [
            *lines,
            "• <code>/ask what is the man holding?</code> as a reply to any photo (yours or "
            "mine) — my answer; <code>/ask</code> alone — a description",
            "• a reply to a photo: a question (<i>what colour is it?</i>) gets my answer; other "
            "words search for that photo changed by them (<i>at night</i>)",
        ]
    return [*lines, "• a reply to a photo — that photo, changed by your words (<i>at night</i>)"]


def _group_uses(facts: HelpFacts) -> list[str]:
    """What to send in a group, where the bot answers only what names it or asks it."""
    me = f"@{html.escape(facts.group_bot or '', quote=False)}"
    lines = [
        "I find pictures. In this group:",
        f"• <code>{me} a red bus</code> — the best matching photos",
        f"• a photo with <code>{me}</code> in its caption — similar photos",
    ]
    if facts.ask_enabled:
        lines += [
            "• a reply to one of my photos with a question (<i>what colour is it?</i>) — my "
            f"answer; to anyone's photo, reply <code>/ask{me} what is the man holding?</code> "
            f"(<code>/ask{me}</code> alone: a description)",
        ]
    lines += [
        f"• a reply to a photo with <code>{me} at night</code> — that photo, changed by the words",
        "I leave everything else alone, replies to me that are not questions included."
        if facts.ask_enabled
        else "I leave everything else alone, replies to me included.",
    ]
    return lines


SEARCH_SYNTAX = [
    "• <code>cat + snow</code> — both",
    '• <code>a dog on a beach -people</code> — fewer people; <code>-"two words"</code> for a '
    "phrase (a - inside a word, as in t-shirt, is just a letter)",
]
"""Help lines on the compound-query syntax (core.search.query), in a user's words."""
SCORE_RANGES = {
    "clip": ("about 0.3", "about 0.9"),
    "siglip": ("about 0.1–0.2", "about 0.9"),
    "siglip2": ("about 0.1–0.2", "about 0.9"),
}
"""What a good match scores with each model family: (words, a near-copy of a photo). CLIP's
cosine between a text and a picture it describes well is near 0.3; SigLIP's sits lower (its
sigmoid reads even odds at a cosine near 0.1); two near-identical pictures score near 0.9."""


def scores_help(model: ModelNote) -> str:
    """/help's sentence on the number beside each result: what it is and, for the model that
    runs, what a good match scores (a bare 0.31 looks poor to anyone who expects 0 to 1)."""
    ranges = SCORE_RANGES.get(model.family)
    scale = "0 to 1, higher is closer"
    if ranges is not None:
        words, copy = ranges
        scale += (
            f": with this model, words that match well score {words}, a near-copy of a photo {copy}"
        )
    return f"Each result shows its rank, how close it is to your search ({scale}) and a caption."


BUTTONS_HELP = (
    "Under each album: <b>More ▸</b> — the next results · <b>Similar 2</b> — pictures like "
    "result 2 · <b>Full size</b> — the original files, as documents"
)
CATEGORIES_LISTED = 12
"""Hashtags /help lists at most (COCO has 80); an unknown one answers with the closest."""


def _category_lines(categories: tuple[str, ...]) -> list[str]:
    """The #hashtag line, with this index's own categories and how many there are; none for
    an index without categories (a hashtag there only earns an error)."""
    if not categories:
        return []
    names = sorted(categories)
    example = "dog" if "dog" in names else names[0]
    listed = ", ".join(hashtag(name) for name in names[:CATEGORIES_LISTED])
    if len(names) > CATEGORIES_LISTED:
        listed += f" and {len(names) - CATEGORIES_LISTED} more"
    kinds = "1 kind of object" if len(names) == 1 else f"{len(names)} kinds of objects"
    tag, name = html.escape(hashtag(example), quote=False), html.escape(example, quote=False)
    return [
        f"• <code>{tag} in a park</code> — only photos with a {name} in them. This index "
        f"knows {kinds}: {html.escape(listed, quote=False)}"
    ]


def start_text(facts: HelpFacts) -> str:
    """/start: a greeting, then the help."""
    return "Hello! " + help_text(facts)


UNSUPPORTED = (
    "I can only search with words or pictures: send a short description (e.g. "
    "<i>two cats on a sofa</i>) or a photo."
)
MAX_COMMAND_SHOWN = 40
"""An unknown command is quoted back cut to this many characters."""


def unknown_command(command: str, group_bot: str | None = None) -> str:
    """One line for a command the bot does not have (`command` as written, e.g. "/foo"),
    pointing to the help; in a group the help's command names the bot."""
    shown = html.escape(clip(command, MAX_COMMAND_SHOWN), quote=False)
    help_command = f"/help@{group_bot}" if group_bot else "/help"
    return f"I don't know {shown}: {html.escape(help_command, quote=False)} shows what I can do."


NOT_ALLOWED = "Sorry, this bot is private. Ask its owner to add your user id ({user_id})."
GENERIC_ERROR = "Sorry, something went wrong on my side. Please try again in a moment."
FILE_TOO_BIG = "That file is too big for me: Telegram lets bots download files up to 20 MB."
NOT_AN_IMAGE_FILE = "That file is not a picture I can search with. Send a JPEG, PNG or WebP."


MAX_QUESTION_CHARS = 300
ASK_USAGE = (
    "Reply to a photo with /ask and a question, e.g. <code>/ask what is the man holding?</code>"
    " — or just <code>/ask</code> for a description. You can also send a photo with the "
    "caption <code>/ask your question</code>."
)
ASK_NO_PHOTO = "That message has no photo. Reply /ask to a photo or to an image file."
ASK_DISABLED = "Questions about photos are switched off on this bot."
ASK_FIRST_ANSWER = (
    "Loading the model that answers questions: the first answer takes a little longer…"
)
ASK_BUSY = "I'm busy answering other questions: try again in a minute."
ASK_PENDING = "I'm still answering your previous question: one at a time, please."
NO_ANSWER = "I don't know."
NO_CAPTION = "I can't describe this picture."


def ask_unavailable(retry_in_s: float | None = None) -> str:
    """/ask when BLIP-2 cannot answer (it failed to load, or ran out of memory), with when the
    bot tries again, where it knows (`retry_in_s`)."""
    if retry_in_s is None:
        when = "later"
    else:
        minutes = max(1, math.ceil(retry_in_s / 60))
        when = "in a minute" if minutes == 1 else f"in {minutes} minutes"
    return (
        "Questions about photos are unavailable right now. The operator has been told; "
        f"try again {when}."
    )


def question_too_long(length: int) -> str:
    return f"That question is too long ({length} characters): keep it under {MAX_QUESTION_CHARS}."


def answer_text(answer: str, *, caption_mode: bool) -> str:
    """BLIP-2's answer as sent: capitalised, HTML-safe; a caption is marked as such. An empty
    answer says so in the words of what was asked (a question, or a description)."""
    if not answer:
        return NO_CAPTION if caption_mode else NO_ANSWER
    text = answer[0].upper() + answer[1:]
    return html.escape(("📷 " if caption_mode else "") + clip(text, TEXT_LIMIT - 2), quote=False)


def rate_limited(retry_in_s: float) -> str:
    seconds = max(1, round(retry_in_s))
    return f"You're sending requests too fast. Try again in {seconds} s."


def stats_text(
    *,
    images: int,
    model: ModelNote,
    device: str | None = None,
    dtype: str | None = None,
    store: str | None = None,
    tuned: str | None = None,
) -> str:
    """/stats: the pictures indexed and the model for everyone; the operator's details (the
    device and dtype, how DTYPE=auto chose, where the data lives) only when given, which
    the bot does for ADMIN_USER_IDS."""
    family = FAMILY_NAMES.get(model.family, model.family)
    languages = "any" if model.multilingual else "English"
    text = f"Pictures indexed: {images:,}\nModel: {model.name} ({family}; queries: {languages})"
    if device is not None:
        text += f"\nDevice: {device}" + (f" ({dtype})" if dtype else "")
    if tuned is not None:
        text += f"\nTuned: {tuned}"
    if store is not None:
        text += f"\nStore: {store}"
    return html.escape(text, quote=False)


def public_model_name(model: str) -> str:
    """A model as everyone may see it: a hub id as it is, a local directory by its name only
    (its path tells where the files live)."""
    if model.startswith(("/", "./", "../", "~")) or model.count("/") > 1 or "\\" in model:
        return PurePath(model.replace("\\", "/")).name or model
    return model


NO_CATEGORIES = (
    "This index has no categories, so #hashtags cannot filter it: search with words instead."
)
_BACKTICKED = re.compile(r"`([^`\n]+)`")


def as_reply(message: str) -> str:
    """A message written in core (plain text, where `code` may be marked with Markdown
    backticks) as the bot sends it: HTML-escaped, backticked parts as <code>, no stray
    backtick, and a capital first letter."""
    text = html.escape(message.strip(), quote=False)
    text = _BACKTICKED.sub(r"<code>\1</code>", text).replace("`", "")
    return text[:1].upper() + text[1:]


def megapixels(pixels: int) -> str:
    """ "40 megapixels", "12.5 megapixels", "1 megapixel"."""
    value = f"{pixels / 1_000_000:.1f}".removesuffix(".0")
    return f"{value} megapixel" + ("" if value == "1" else "s")


def bad_image(err: BadImage) -> str:
    """Why a picture cannot be used, in a user's terms, and what to do about it."""
    if err.reason is ImageProblem.TOO_MANY_PIXELS:
        over = f"over my limit of {megapixels(err.limit)}" if err.limit else "over my limit"
        if err.size is not None:
            width, height = err.size
            what = f"is {width:,}×{height:,} pixels ({megapixels(width * height)}), {over}"
        else:
            what = f"has too many pixels for me, {over}"
        return (
            f"That picture {what}. Send it as a photo rather than a file (Telegram makes it "
            "smaller), or a smaller copy."
        )
    if err.reason is ImageProblem.NOT_A_PICTURE:
        return "That file is not a picture I can read. Send a photo, or a JPEG, PNG or WebP file."
    if err.reason is ImageProblem.DAMAGED:
        return (
            "That picture is damaged (cut off or corrupt), so I can't read it. Try sending it "
            "again, or another one."
        )
    if err.reason is ImageProblem.GONE:
        return "I no longer have that picture at hand: send or ask again."
    return "I couldn't read that picture. Try another one."


def error_reply(err: SearchBotError) -> str:
    """What the user reads when a request fails with a domain error."""
    if isinstance(err, NoCategories):
        return NO_CATEGORIES
    if isinstance(err, (UnknownCategory, UnknownPicture)):
        return as_reply(str(err))  # written for the user: names the fix
    if isinstance(err, EmptyQuery):
        if "only minus terms" in str(err):
            return as_reply(str(err))
        return "Send me a few words describing a picture, e.g. <i>a red bus in the rain</i>."
    if isinstance(err, BadImage):
        return bad_image(err)
    if isinstance(err, IndexRebuilding):
        return "The picture index is being rebuilt right now. Try again in a few minutes."
    if isinstance(err, IndexEmpty):
        return (
            "The picture index is empty, so there is nothing to search yet. "
            "The bot's operator needs to build it (python index_builder.py)."
        )
    if isinstance(err, (StoreUnavailable, ModelUnavailable, ModelMismatch)):
        return "Search is unavailable right now. The operator has been told; try again later."
    return GENERIC_ERROR


# Buttons under each album, and what they answer.

MORE_LABEL = "More ▸"
FULL_SIZE_LABEL = "Full size"
NEAREST_LABEL = "Show the nearest anyway"
MAX_READING_CHARS = 200
"""The query as read is cut to this in the message under an album."""
BUTTON_EXPIRED = "This search has expired: send it again."
BUTTON_BROKEN = "This button no longer works."
BUTTON_BUSY = "Still working on it…"
DOCUMENT_LIMIT = 50 * 1024 * 1024
"""Telegram lets bots send documents up to 50 MB."""


def similar_label(i: int) -> str:
    return f"Similar {i}"


MAX_LIKES_SHOWN = 3
"""A Similar of a Similar of ...: the latest ranks named, the earlier ones an ellipsis."""
ALL_SHOWN = "That's all I found."
DEEPEST = (
    f"I show the first {MAX_RESULTS} results at most: change the words to find other pictures."
)


def reading_of(reading: str) -> str:
    """How the query was read, HTML-safe and short ("your picture" when core said nothing)."""
    return html.escape(clip(reading.strip() or "your picture", MAX_READING_CHARS), quote=False)


@dataclass(frozen=True)
class Heading:
    """What a search is called in the chat: how its words were read and, for a Similar
    search, the ranks pressed to get there, the latest first."""

    reading: str
    """The reading of the search the first Similar was pressed under."""
    likes: tuple[int, ...] = ()

    def html(self) -> str:
        """ "<b>a red circle</b>"; a Similar search: "like #2 of <b>a red circle</b>"."""
        prefix = "".join(f"like #{rank} of " for rank in self.likes[:MAX_LIKES_SHOWN])
        if len(self.likes) > MAX_LIKES_SHOWN:
            prefix += "… "
        return f"{prefix}<b>{reading_of(self.reading)}</b>"


def span(first: int, last: int, found: int | None) -> str:
    """Where a page lies among the results: "1 picture", "3 pictures" (all of them),
    "6–8 of 8", "6 of 6" (the end known), "6–10" (more may follow, how many is unknown)."""
    if found is not None and first == 1 and last == found:
        return "1 picture" if found == 1 else f"{found:,} pictures"
    shown = f"{first:,}" if first == last else f"{first:,}–{last:,}"
    return shown if found is None else f"{shown} of {found:,}"


def results_text(heading: Heading, first: int, last: int, found: int | None, *, more: bool) -> str:
    """The message under an album: "🔎 <b>a red circle</b> — 1–5", "… — 6–8 of 8", and, on
    the last page, that nothing follows (or that paging stops at `MAX_RESULTS`)."""
    text = f"🔎 {heading.html()} — {span(first, last, found)}"
    if more:
        return text
    deepest = last >= MAX_RESULTS and (found is None or found > last)
    return f"{text}\n{DEEPEST if deepest else ALL_SHOWN}"


def all_found(heading: Heading) -> str:
    """A More pressed past the last page."""
    return f"That's all I found for {heading.html()}."


def nothing_close(heading: Heading) -> str:
    return (
        f"Nothing close enough for {heading.html()}: "
        "the nearest pictures score below the threshold."
    )


def no_results(heading: Heading) -> str:
    return f"No pictures found for {heading.html()}. Try other words?"


def full_size_caption(rank: int) -> str:
    return f"#{rank} · full size"


def full_size_skipped(ranks: list[int]) -> str:
    """Some originals were not sent: over 50 MB, gone, or refused by the guard."""
    listed = ", ".join(f"#{rank}" for rank in ranks)
    return f"I couldn't send the original of {listed}: it is over 50 MB or no longer available."
