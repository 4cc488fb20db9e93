"""What the bot says about chats' libraries (/library, /save, /forget, the posts it keeps),
pure formatting like `bot.replies`."""

from __future__ import annotations

import datetime
import html

from bot.replies import CAPTION_LIMIT, clip
from core.search.service import Hit, shown_score
from core.sources.units import plural

MARK = "📚"
KEPT = (
    "A library keeps, on this bot's server, for each picture: its search vector, Telegram's "
    "file id, the chat, the message, who posted it, when, and its caption; never the picture "
    "itself (Telegram keeps that). It is searched only in this chat."
)
DELETING = "/forget (as a reply) removes one picture, <b>/library clear</b> all of them."
USAGE = (
    "<b>/library</b> shows this chat's library; <b>/library on</b> adds every photo posted "
    "here from now on, <b>/library off</b> stops; <b>/library clear</b> removes them all. "
    "Reply <b>/save</b> to a photo to add just that one, <b>/forget</b> to remove it."
)
OFF_ON_THIS_BOT = "This bot keeps no chat libraries (its operator has turned them off)."
ADMINS_ONLY = "Only this group's administrators can do that."
REPLY_TO_PICTURE = "Reply with {command} to a photo (or a picture sent as a file)."
TOO_BIG = "That picture is too big for me to add: Telegram lets bots download up to 20 MB."
BEHIND = (
    "I'm behind with adding photos to this chat's library: some just posted were not added. "
    "Reply /save to one to add it."
)
SAVED = "📚 Saved: this chat's library has {count}."
ALREADY = "📚 That picture is already in this chat's library."
FORGOTTEN = "📚 Removed that picture from this chat's library ({count} left)."
NOT_THERE = "📚 That picture is not in this chat's library."
FORGET_NOT_YOURS = "Only whoever posted that picture, or an administrator, can remove it."
CLEAR_ASK = "Remove all {count} of this chat's library? This cannot be undone."
CLEAR_EMPTY = "📚 This chat's library is empty: there is nothing to remove."
CLEAR_DONE = "📚 Removed {count} from this chat's library."
CLEAR_CANCELLED = "📚 Nothing removed."
CLEAR_EXPIRED = "That question has expired: send /library clear again."
CLEAR_LABEL = "Remove all {count}"
CANCEL_LABEL = "Cancel"
CANT_SEE = (
    " I can only see photos posted here if I'm an administrator of this group or my privacy "
    "mode is off (@BotFather, /setprivacy)."
)
ORIGINAL_GONE = "The message that posted it was deleted."


def pictures(count: int) -> str:
    return plural(count, "picture")


def state(on: bool, count: int) -> str:
    """/library: on or off, and how many pictures the chat's library holds."""
    how = "on: every photo posted here is added" if on else "off: reply /save to a photo to add it"
    return f"{MARK} This chat's library is {how}. It holds {pictures(count)}.\n\n{USAGE}\n\n{KEPT}"


def switched(on: bool, count: int, *, visible: bool = True) -> str:
    if not on:
        text = f"{MARK} Library off: photos posted here are no longer added."
        if count:
            text += (
                f" Its {pictures(count)} stay searchable here until removed "
                "(<b>/library clear</b>)."
            )
        return text
    text = (
        f"{MARK} Library on: from now on every photo posted here is added to this chat's "
        f"library, and searches here find them too (it holds {pictures(count)}). {KEPT} " + DELETING
    )
    return text + ("" if visible else CANT_SEE)


def posted_on(date: int) -> str:
    """ "3 Dec 2026" (UTC)."""
    day = datetime.datetime.fromtimestamp(date, datetime.timezone.utc)
    return f"{day.day} {day:%b %Y}"


def library_caption(rank: int, hit: Hit, poster: str | None = None) -> str:
    """ "📚 #2 · 0.31 · 3 Dec 2026, Anna · the whiteboard": a library picture in an album."""
    assert hit.library is not None
    posted = posted_on(hit.library.date) + (f", {poster}" if poster else "")
    head = f"{MARK} #{rank} · {shown_score(hit.score)} · {posted}"
    caption = f"{head} · {hit.caption}" if hit.caption else head
    return html.escape(clip(caption, CAPTION_LIMIT), quote=False)


def jump_label(rank: int) -> str:
    return f"{MARK} #{rank} ↩"


def original(rank: int, date: int, poster: str | None) -> str:
    """The reply to a library picture's message (a tap on its quote jumps there)."""
    who = f" by {html.escape(poster, quote=False)}" if poster else ""
    return f"{MARK} #{rank} was posted here on {posted_on(date)}{who}."


def help_lines(group_bot: str | None) -> tuple[str, ...]:
    """/help's part on the chat's own library."""
    at = f"@{html.escape(group_bot, quote=False)}" if group_bot else ""
    who = " (this group's administrators)" if group_bot else ""
    return (
        f"<b>{MARK} This chat's own library</b>",
        f"• <code>/library{at} on</code>{who} — every photo posted here from now on is added, "
        "and searches here find them too (marked 📚, with the date); "
        f"<code>/library{at} off</code> stops, <code>/library{at}</code> tells the state",
        f"• reply <code>/save{at}</code> to a photo to add it, <code>/forget{at}</code> to "
        f"remove it; <code>/library{at} clear</code>{who} removes them all",
        f"• {KEPT}",
    )


def stats_line(on: bool, count: int) -> str:
    """/stats: this chat's library (and only this chat's)."""
    return f"This chat's library: {pictures(count)} ({'on' if on else 'off'})"
