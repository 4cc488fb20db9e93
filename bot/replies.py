"""Every text the bot sends, as pure functions: easy to read in one place and to test."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import PurePath

from core.errors import (
    BadImage,
    EmptyQuery,
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
from core.search.service import Hit

CAPTION_LIMIT = 1024
"""Telegram's limit for a photo caption, in characters (after HTML parsing)."""
TEXT_LIMIT = 4096

# Every text is sent with parse_mode=HTML: whatever comes from data or users is escaped.


def hit_caption(rank: int, hit: Hit) -> str:
    """ "#1 · 0.31 · a red circle": rank, score with two decimals, first caption."""
    head = f"#{rank} · {hit.score:.2f}"
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


def help_text(*, ask_enabled: bool, model: ModelNote) -> str:
    lines = [
        "I find pictures. Try:",
        "• send a few words, e.g. <i>a dog running on a beach</i> — I answer with the best "
        "matching photos",
        "• send a photo (or an image file) — I answer with similar photos",
    ]
    if ask_enabled:
        lines += [
            "• reply <code>/ask what is the man holding?</code> to any photo (yours or mine) — "
            "I answer questions about it",
            "• reply <code>/ask</code> alone to a photo — I describe it",
        ]
    lines += SEARCH_SYNTAX
    lines += [
        "",
        "Each result shows its rank, a similarity score (higher is closer) and a caption.",
        "Under each album: <b>More ▸</b> — the next results · <b>Similar 2</b> — pictures like "
        "result 2 · <b>Full size</b> — the original files, as documents",
        html.escape(model_line(model), quote=False),
        "/stats — what is indexed · /help — this message",
    ]
    return "\n".join(lines)


SEARCH_SYNTAX = [
    "",
    "<b>Change a search</b> (each part weighs +1, a minus part −0.5):",
    "• <code>cat + snow</code> — both ideas together",
    '• <code>a dog on a beach -people</code> — push away; <code>-"two words"</code> for a '
    "phrase (a - inside a word, as in t-shirt, is just a letter)",
    "• <code>#dog #frisbee in a park</code> — only photos holding a dog and a frisbee (COCO's "
    "80 objects; <code>#hot_dog</code> for two words; hashtags work on COCO indexes only)",
    "• a photo with a caption — that photo changed by the words: <i>at night</i>, "
    "<code>-red</code>",
]
"""Help lines on the compound-query syntax; the weights are core.search.query's."""


def start_text(*, ask_enabled: bool, model: ModelNote) -> str:
    return "Hello! " + help_text(ask_enabled=ask_enabled, model=model)


UNSUPPORTED = (
    "I can only search with words or pictures: send a short description (e.g. "
    "<i>two cats on a sofa</i>) or a photo."
)
UNKNOWN_COMMAND = "I don't know that command."
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
ASK_UNAVAILABLE = (
    "Questions about photos are unavailable right now. The operator has been told; try again later."
)
ASK_BUSY = "I'm busy answering other questions: try again in a minute."
ASK_PENDING = "I'm still answering your previous question: one at a time, please."
NO_ANSWER = "I don't know."


def question_too_long(length: int) -> str:
    return f"That question is too long ({length} characters): keep it under {MAX_QUESTION_CHARS}."


def answer_text(answer: str, *, caption_mode: bool) -> str:
    """BLIP-2's answer as sent: capitalised, HTML-safe; a caption is marked as such."""
    if not answer:
        return NO_ANSWER
    text = answer[0].upper() + answer[1:]
    return html.escape(("📷 " if caption_mode else "") + clip(text, TEXT_LIMIT - 2), quote=False)


def rate_limited(retry_in_s: float) -> str:
    seconds = max(1, round(retry_in_s))
    return f"You're sending requests too fast. Try again in {seconds} s."


def stats_text(
    *,
    images: int,
    model: ModelNote,
    device: str,
    dtype: str,
    store: str | None = None,
    tuned: str | None = None,
) -> str:
    """/stats; `store` (where the data lives) only for admins; `tuned`: how DTYPE=auto
    chose."""
    family = FAMILY_NAMES.get(model.family, model.family)
    languages = "any" if model.multilingual else "English"
    text = (
        f"Pictures indexed: {images:,}\nModel: {model.name} ({family}; queries: {languages})"
        f"\nDevice: {device} ({dtype})"
    )
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


def error_reply(err: SearchBotError) -> str:
    """What the user reads when a request fails with a domain error."""
    if isinstance(err, (UnknownCategory, NoCategories, UnknownPicture)):
        return html.escape(str(err), quote=False)  # written for the user: names the fix
    if isinstance(err, EmptyQuery):
        if "only minus terms" in str(err):
            return html.escape(str(err), quote=False)
        return "Send me a few words describing a picture, e.g. <i>a red bus in the rain</i>."
    if isinstance(err, BadImage):
        return "I couldn't read that picture (it may be corrupt, or too large). Try another one."
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


def reading_of(reading: str) -> str:
    """How the query was read, HTML-safe and short ("your picture" when core said nothing)."""
    return html.escape(clip(reading.strip() or "your picture", MAX_READING_CHARS), quote=False)


def results_text(reading: str, first: int, last: int, total: int, *, more: bool) -> str:
    """The message under an album: "🔎 <b>a red circle</b> — 1–5 of 72", and, on the last
    page, that nothing follows."""
    text = f"🔎 <b>{reading_of(reading)}</b> — {first}–{last} of {total:,}"
    return text if more else text + "\n" + all_found(reading)


def all_found(reading: str) -> str:
    return f"That's all I found for <b>{reading_of(reading)}</b>."


def nothing_close(reading: str) -> str:
    return (
        f"Nothing close enough for <b>{reading_of(reading)}</b>: "
        "the nearest pictures score below the threshold."
    )


def no_results(reading: str) -> str:
    return f"No pictures found for <b>{reading_of(reading)}</b>. Try other words?"


def full_size_caption(rank: int) -> str:
    return f"#{rank} · full size"


def full_size_skipped(ranks: list[int]) -> str:
    """Some originals were not sent: over 50 MB, gone, or refused by the guard."""
    listed = ", ".join(f"#{rank}" for rank in ranks)
    return f"I couldn't send the original of {listed}: it is over 50 MB or no longer available."
