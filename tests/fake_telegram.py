"""A fake Telegram Bot API server for tests: the real bot talks HTTP to it on 127.0.0.1.

Standard library only (plus Pillow, to measure and downscale images). It runs a
`ThreadingHTTPServer` in a background thread on a free port and speaks the Bot API the way
python-telegram-bot 22 (httpx) uses it: form-urlencoded POSTs, or multipart/form-data when
files are uploaded (`attach://<name>` references inside the `media` JSON of
sendMediaGroup), with JSON-valued parameters sent as JSON strings.

Use it as a context manager and point the bot at it::

    with FakeTelegram() as tg:
        app = (
            ApplicationBuilder()
            .token(tg.token)
            .base_url(tg.base_url)            # http://127.0.0.1:N/bot
            .base_file_url(tg.base_file_url)  # http://127.0.0.1:N/file/bot
            .build()
        )
        # or for `python -m bot` as a subprocess: env={**os.environ, **tg.env()}
        msg = tg.inject_text("a red circle")
        call = tg.wait_for("sendMediaGroup")
        assert tg.sent_to(msg["chat"]["id"])[-1].kind == "media_group"
        tg.assert_no_errors()

Everything the bot calls is recorded (`calls`, `wait_for`, `sent_to`), users' messages
are injected as updates that long polling (`getUpdates`) or a webhook on 127.0.0.1
delivers, and faults (429 flood control, 502 from nginx, outages, dropped connections,
slow answers) can be scheduled per method.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import html
import io
import itertools
import json
import re
import select
import socket
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from PIL import Image, UnidentifiedImageError

FAKE_TOKEN = "123456:TEST"
DEFAULT_USER_ID = 1000
CAPTION_LIMIT = 1024
TEXT_LIMIT = 4096
MEDIA_GROUP_MIN, MEDIA_GROUP_MAX = 2, 10
DOWNLOAD_LIMIT = 20 * 1024 * 1024  # getFile refuses bigger files
PHOTO_UPLOAD_LIMIT = 10 * 1024 * 1024
PHOTO_MAX_DIMENSIONS = 10_000  # width + height
PHOTO_MAX_RATIO = 20
_THUMB_SIDES = (90, 320)  # Telegram's "s" and "m" sizes, below the full picture
_FULL_DECODE_PIXELS = 40_000_000  # bigger pictures are only probed by their header

NGINX_PAGE = (
    "<html>\r\n<head><title>{code} {phrase}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {phrase}</h1></center>\r\n<hr><center>nginx/1.18.0</center>\r\n"
    "</body>\r\n</html>\r\n"
)

# Parameters that Telegram reads as JSON (PTB sends them as JSON strings).
_JSON_PARAMS = frozenset(
    {
        "media",
        "reply_markup",
        "reply_parameters",
        "commands",
        "allowed_updates",
        "entities",
        "caption_entities",
        "link_preview_options",
        "scope",
        "results",
        "options",
        "explanation_entities",
        "reaction",
        "message_ids",
    }
)
# Parameters that stay strings even when they look like numbers or booleans.
_TEXT_PARAMS = frozenset(
    {
        "text",
        "caption",
        "parse_mode",
        "description",
        "short_description",
        "name",
        "title",
        "query",
        "file_name",
        "question",
        "url",
        "secret_token",
        "callback_query_id",
        "inline_query_id",
        "inline_message_id",
        "photo",
        "document",
        "sticker",
        "video",
        "audio",
        "voice",
        "animation",
        "video_note",
        "thumbnail",
        "file_id",
        "action",
        "emoji",
        "language_code",
        "ip_address",
        "business_connection_id",
        "message_effect_id",
        "first_name",
        "last_name",
        "phone_number",
        "address",
        "payload",
    }
)
_CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
_DEFAULT_EXCLUDED_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
_COMMAND_RE = re.compile(r"^[a-z0-9_]{1,32}$")
_SEND_KINDS = {
    "sendMessage": "message",
    "sendPhoto": "photo",
    "sendDocument": "document",
    "sendMediaGroup": "media_group",
}


# --------------------------------------------------------------------------- records


@dataclass
class Call:
    """One request the bot made (failed attempts included).

    `params` are decoded (ints, bools, JSON-valued parameters as objects); `files` maps the
    multipart part name ("photo", or the `attach://` name) to the uploaded bytes. `time` is
    `time.monotonic()` when the request arrived, `received` when its whole body had arrived
    (an album's last photo: the moment the reply was delivered). `status` is the HTTP status
    answered (499: the client hung up before the answer, as nginx logs it).
    """

    method: str
    params: dict[str, Any]
    files: dict[str, bytes]
    time: float
    received: float = 0.0
    status: int = 200
    result: Any = None
    error: str | None = None
    file_names: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200

    def __str__(self) -> str:
        shown = {
            k: (v if len(repr(v)) < 80 else repr(v)[:77] + "...") for k, v in self.params.items()
        }
        files = f" files={sorted(self.files)}" if self.files else ""
        err = f" error={self.error!r}" if self.error else ""
        return f"{self.method} [{self.status}] {shown}{files}{err}"


@dataclass
class Sent:
    """Something the bot sent to a chat: a message, a photo, a document or an album.

    `messages` are the Message dicts Telegram answered (one per album item), as they are now
    (edits show). Keys starting with "_" are the fake's notes (`_by_file_id`, `_deleted`),
    never sent to the bot.
    """

    method: str
    chat_id: int
    messages: list[dict[str, Any]]
    call: Call

    @property
    def kind(self) -> str:
        """ "message", "photo", "document", "media_group", or the method name for others."""
        return _SEND_KINDS.get(self.method, self.method)

    @property
    def text(self) -> str | None:
        """The message text (after entity parsing, as Telegram shows it)."""
        return self.messages[0].get("text")

    @property
    def caption(self) -> str | None:
        return self.messages[0].get("caption")

    @property
    def captions(self) -> list[str | None]:
        return [m.get("caption") for m in self.messages]

    @property
    def photo_file_ids(self) -> list[str]:
        """file_id of the largest size of each photo sent."""
        return [m["photo"][-1]["file_id"] for m in self.messages if m.get("photo")]

    @property
    def by_file_id(self) -> list[bool]:
        """Per item: was the media sent by an existing file_id (no upload)?"""
        return [bool(m.get("_by_file_id")) for m in self.messages]


@dataclass
class StoredFile:
    """A file the fake knows: uploaded by the bot, or registered for a user's message."""

    file_id: str
    file_unique_id: str
    data: bytes
    kind: str  # "photo", "document", "sticker", ...
    file_path: str
    file_size: int
    width: int | None = None
    height: int | None = None
    file_name: str | None = None
    mime_type: str | None = None
    sizes: list[dict[str, Any]] | None = None  # photos: the whole PhotoSize array

    @property
    def too_big(self) -> bool:
        return self.file_size > DOWNLOAD_LIMIT


@dataclass
class _Upload:
    filename: str
    content_type: str
    data: bytes


@dataclass
class _Fault:
    status: int | str
    retry_after: int
    description: str | None
    delay: float
    times: int
    where: Callable[[dict[str, Any]], bool] | None = None
    gate: Hold | None = None

    def applies(self, params: dict[str, Any]) -> bool:
        return self.where is None or bool(self.where(params))


class Hold:
    """Calls held by `FakeTelegram.hold`: `wait_arrived()` until one is held, `release()`."""

    def __init__(self) -> None:
        self._arrived = threading.Event()
        self._released = threading.Event()

    def wait_arrived(self, timeout: float = 60) -> None:
        if not self._arrived.wait(timeout):
            raise AssertionError(f"no held call arrived within {timeout}s")

    def release(self) -> None:
        self._released.set()

    def _hold(self) -> None:
        self._arrived.set()
        self._released.wait()


@dataclass
class _Outage:
    until: float
    status: int | str
    methods: frozenset[str] | None
    retry_after: int


class ApiError(Exception):
    """Raised by method handlers: answered as Telegram's error JSON."""

    def __init__(self, status: int, description: str, parameters: dict | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


class _Disconnected(Exception):
    """The client went away while we were holding its request (long poll)."""


@dataclass
class _Ctx:
    call: Call
    handler: BaseHTTPRequestHandler
    files: dict[str, _Upload]


# --------------------------------------------------------------------------- formatting


_ADMIN_RIGHTS = {
    "can_be_edited": False,
    "is_anonymous": False,
    "can_manage_chat": True,
    "can_delete_messages": True,
    "can_manage_video_chats": True,
    "can_restrict_members": True,
    "can_promote_members": False,
    "can_change_info": True,
    "can_invite_users": True,
    "can_post_stories": False,
    "can_edit_stories": False,
    "can_delete_stories": False,
}


def _u16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _bad_entities(detail: str) -> ApiError:
    return ApiError(400, f"Bad Request: can't parse entities: {detail}")


_HTML_TAGS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
_TAG_RE = re.compile(r"<(/?)([^\s>/]*)([^>]*)>")
_ATTR_RE = re.compile(r"""([a-zA-Z_-]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+)))?""")
_HTML_ENTITY_RE = re.compile(r"&(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);")


def _parse_html(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Telegram's HTML parse mode: the plain text and its entities, or ApiError 400."""
    out: list[str] = []
    pos = 0  # UTF-16 offset in the output
    stack: list[tuple[str, dict[str, str], int]] = []
    entities: list[dict[str, Any]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "<":
            byte = len(text[:i].encode())
            m = _TAG_RE.match(text, i)
            if not m or not m.group(2):
                raise _bad_entities(f"Unexpected end of name token at byte offset {byte}")
            closing, name, rest = m.group(1) == "/", m.group(2).lower(), m.group(3)
            if not closing:
                if name not in _HTML_TAGS:
                    raise _bad_entities(f'Unsupported start tag "{name}" at byte offset {byte}')
                attrs = {
                    a.group(1).lower(): a.group(2) or a.group(3) or a.group(4) or ""
                    for a in _ATTR_RE.finditer(rest)
                }
                if name == "span" and attrs.get("class") != "tg-spoiler":
                    raise _bad_entities(f'Tag "span" must have class "tg-spoiler" at byte {byte}')
                stack.append((name, attrs, pos))
            else:
                if not stack:
                    raise _bad_entities(f"Unexpected end tag at byte offset {byte}")
                open_name, attrs, start = stack.pop()
                if open_name != name:
                    raise _bad_entities(
                        f'Unmatched end tag at byte offset {byte}, expected "</{open_name}>", '
                        f'found "</{name}>"'
                    )
                ent: dict[str, Any] = {"type": _HTML_TAGS[name], "offset": start}
                ent["length"] = pos - start
                lang = attrs.get("class", "")
                if (
                    name == "code"
                    and stack
                    and stack[-1][0] == "pre"
                    and lang.startswith("language-")
                ):
                    stack[-1][1]["_language"] = lang[len("language-") :]
                    ent = {}
                elif name == "a":
                    ent["url"] = attrs.get("href", "")
                elif name == "pre" and attrs.get("_language"):
                    ent["language"] = attrs["_language"]
                elif name == "blockquote" and "expandable" in attrs:
                    ent["type"] = "expandable_blockquote"
                elif name == "tg-emoji":
                    ent["custom_emoji_id"] = attrs.get("emoji-id", "")
                if ent and ent["length"] > 0:
                    entities.append(ent)
            i = m.end()
            continue
        if ch == "&":
            m = _HTML_ENTITY_RE.match(text, i)
            if m:
                decoded = html.unescape(m.group(0))
                out.append(decoded)
                pos += _u16(decoded)
                i = m.end()
                continue
        out.append(ch)
        pos += _u16(ch)
        i += 1
    if stack:
        raise _bad_entities(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    return "".join(out), entities


_MDV2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!")
_MDV2_NAMES = {
    "*": ("bold", "Bold"),
    "_": ("italic", "Italic"),
    "__": ("underline", "Underline"),
    "~": ("strikethrough", "Strikethrough"),
    "||": ("spoiler", "Spoiler"),
    "[": ("text_link", "TextUrl"),
}


def _parse_markdown_v2(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Telegram's MarkdownV2 parse mode (the common subset), strict about reserved chars."""
    out: list[str] = []
    pos = 0
    stack: list[tuple[str, int, int]] = []  # marker, UTF-16 start, byte offset
    entities: list[dict[str, Any]] = []
    i, n = 0, len(text)

    def emit(s: str) -> None:
        nonlocal pos
        out.append(s)
        pos += _u16(s)

    def byte(k: int) -> int:
        return len(text[:k].encode())

    def unescape_code(s: str) -> str:
        return re.sub(r"\\([`\\])", r"\1", s)

    while i < n:
        ch = text[i]
        at_line_start = i == 0 or text[i - 1] == "\n"
        if ch == "\\":
            if i + 1 < n and 1 <= ord(text[i + 1]) <= 126:
                emit(text[i + 1])
                i += 2
                continue
            if i + 1 >= n:
                raise _bad_entities(
                    "Character '\\' is reserved and must be escaped with the preceding '\\'"
                )
            emit(ch)
            i += 1
            continue
        if ch == "`":
            fence = "```" if text.startswith("```", i) else "`"
            j = i + len(fence)
            while j < n and not text.startswith(fence, j):
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                kind = "Pre" if fence == "```" else "Code"
                raise _bad_entities(f"Can't find end of {kind} entity at byte offset {byte(i)}")
            content = text[i + len(fence) : j]
            ent: dict[str, Any] = {"type": "code" if fence == "`" else "pre"}
            if fence == "```":
                first, nl, body = content.partition("\n")
                if nl and first and " " not in first:
                    ent["language"] = first
                    content = body
                elif nl and not first:
                    content = body
            content = unescape_code(content)
            ent["offset"] = pos
            emit(content)
            ent["length"] = pos - ent["offset"]
            if ent["length"]:
                entities.append(ent)
            i = j + len(fence)
            continue
        if ch in "*_~|":
            if ch == "_" and text.startswith("__", i):
                marker = "__"
            elif ch == "|":
                if not text.startswith("||", i):
                    raise _bad_entities(
                        "Character '|' is reserved and must be escaped with the preceding '\\'"
                    )
                marker = "||"
            elif ch == "*" and at_line_start and text.startswith("**>", i):
                i += 3  # expandable block quotation
                continue
            else:
                marker = ch
            if stack and stack[-1][0] == marker:
                _, start, _b = stack.pop()
                if pos > start:
                    entities.append(
                        {"type": _MDV2_NAMES[marker][0], "offset": start, "length": pos - start}
                    )
            elif any(s[0] == marker for s in stack):
                top = stack[-1]
                raise _bad_entities(
                    f"Can't find end of {_MDV2_NAMES[top[0]][1]} entity at byte offset {top[2]}"
                )
            else:
                stack.append((marker, pos, byte(i)))
            i += len(marker)
            continue
        if ch == "[" or (ch == "!" and text.startswith("![", i)):
            stack.append(("[", pos, byte(i)))
            i += 1 if ch == "[" else 2
            continue
        if ch == "]" and stack and stack[-1][0] == "[":
            _, start, _b = stack.pop()
            if text.startswith("(", i + 1):
                j = i + 2
                url: list[str] = []
                while j < n and text[j] != ")":
                    if text[j] == "\\" and j + 1 < n:
                        j += 1
                    url.append(text[j])
                    j += 1
                if j >= n:
                    raise _bad_entities(f"Can't find end of a URL at byte offset {byte(i + 1)}")
                link = "".join(url)
                if pos > start and link:
                    if link.startswith("tg://emoji?id="):
                        ent = {"type": "custom_emoji", "custom_emoji_id": link[14:]}
                    else:
                        ent = {"type": "text_link", "url": link}
                    entities.append({**ent, "offset": start, "length": pos - start})
                i = j + 1
            else:
                i += 1
            continue
        if ch == ">" and at_line_start:
            i += 1
            continue
        if ch in _MDV2_RESERVED:
            raise _bad_entities(
                f"Character '{ch}' is reserved and must be escaped with the preceding '\\'"
            )
        emit(ch)
        i += 1
    if stack:
        marker, _, b = stack[-1]
        raise _bad_entities(f"Can't find end of {_MDV2_NAMES[marker][1]} entity at byte offset {b}")
    return "".join(out), entities


def _parse_markdown(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Telegram's legacy Markdown parse mode: *bold* _italic_ `code` ```pre``` [text](url)."""
    out: list[str] = []
    entities: list[dict[str, Any]] = []
    pos = 0
    i, n = 0, len(text)
    types = {"*": "bold", "_": "italic", "`": "code", "```": "pre"}
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n and text[i + 1] in "_*`[":
            out.append(text[i + 1])
            pos += 1
            i += 2
            continue
        if ch in "*_`[":
            marker = "```" if text.startswith("```", i) else ch
            close = "]" if marker == "[" else marker
            j = text.find(close, i + len(marker))
            if j < 0:
                raise _bad_entities(
                    f"Can't find end of the entity starting at byte offset {len(text[:i].encode())}"
                )
            content = text[i + len(marker) : j]
            ent: dict[str, Any] = {"offset": pos}
            end = j + len(close)
            if marker == "[":
                if text.startswith("(", end):
                    k = text.find(")", end)
                    if k < 0:
                        raise _bad_entities("Can't find end of a URL")
                    ent.update(type="text_link", url=text[end + 1 : k])
                    end = k + 1
                else:
                    ent = {}
            else:
                ent["type"] = types[marker]
            out.append(content)
            pos += _u16(content)
            if ent and content:
                ent["length"] = _u16(content)
                entities.append(ent)
            i = end
            continue
        out.append(ch)
        pos += _u16(ch)
        i += 1
    return "".join(out), entities


def parse_formatted(
    text: str, parse_mode: str | None, entities: list[dict[str, Any]] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """Text as Telegram shows it, and its entities, for a parse_mode (or explicit entities)."""
    mode = (parse_mode or "").lower()
    if mode == "html":
        plain, ents = _parse_html(text)
    elif mode == "markdownv2":
        plain, ents = _parse_markdown_v2(text)
    elif mode == "markdown":
        plain, ents = _parse_markdown(text)
    elif mode:
        raise ApiError(400, f"Bad Request: unsupported parse_mode {parse_mode!r}")
    else:
        plain, ents = text, list(entities or [])
    ents.sort(key=lambda e: (e["offset"], -e["length"]))
    return plain, ents


# --------------------------------------------------------------------------- requests


def _decode_value(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if key in _JSON_PARAMS:
        try:
            return json.loads(value)
        except ValueError:
            raise ApiError(400, f"Bad Request: can't parse {key} JSON object") from None
    if key in _TEXT_PARAMS:
        return value
    if value in ("true", "false", "True", "False"):
        return value.lower() == "true"
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    if re.fullmatch(r"-?\d+\.\d*", value):
        return float(value)
    return value


def _unescape_form_param(value: str) -> str:
    value = re.sub(r"%(0[0-9A-F]|1[0-9A-F]|22)", lambda m: chr(int(m.group(1), 16)), value)
    return re.sub(r"\\(.)", r"\1", value)


def _parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, str], dict[str, _Upload]]:
    m = re.search(r'boundary="?([^";,]+)"?', content_type)
    if not m:
        raise ApiError(400, "Bad Request: multipart boundary not found")
    delimiter = b"--" + m.group(1).encode("latin-1")
    fields: dict[str, str] = {}
    uploads: dict[str, _Upload] = {}
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        if data.endswith(b"\r\n"):
            data = data[:-2]
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, val = line.partition(":")
            headers[key.strip().lower()] = val.strip()
        disposition = {
            k.lower(): _unescape_form_param(v)
            for k, v in re.findall(
                r';\s*([\w*-]+)="((?:[^"\\]|\\.)*)"', headers.get("content-disposition", "")
            )
        }
        name = disposition.get("name")
        if not name:
            continue
        if "filename" in disposition:
            ctype = headers.get("content-type", "application/octet-stream")
            uploads[name] = _Upload(disposition["filename"], ctype, data)
        else:
            fields[name] = data.decode("utf-8", "replace")
    return fields, uploads


def _image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) when the bytes decode as an image, else None. Pictures of more than
    `_FULL_DECODE_PIXELS` are only probed by their header (tests of pixel limits use them)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
            if size[0] * size[1] <= _FULL_DECODE_PIXELS:
                img.load()  # truncated or corrupt data fails here, as on Telegram's side
            return size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def _header_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def _thumbnail(data: bytes, side: int) -> tuple[bytes, int, int]:
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        img.thumbnail((side, side))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=80)
        return buf.getvalue(), img.width, img.height


# --------------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeTelegram

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client dropping its keep-alive connection (the bot stopping) is not an error."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects
    server_version = "FakeTelegram/1.0"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are closed after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.fake.debug:
            sys.stderr.write("fake-telegram: " + (format % args) + "\n")

    def do_POST(self) -> None:
        self.server.fake._serve(self)

    do_GET = do_POST


class FakeTelegram:
    """The fake Bot API. See the module docstring; every public method is thread-safe."""

    def __init__(
        self,
        token: str = FAKE_TOKEN,
        *,
        bot_username: str = "test_image_bot",
        bot_name: str = "Test Image Bot",
        debug: bool = False,
        hide_button_messages: bool = False,
    ) -> None:
        self.token = token
        self.debug = debug
        self.hide_button_messages = hide_button_messages
        """`sent_to`/`wait_sent` leave out text messages that carry an inline keyboard (the
        buttons under an album), for tests about what the bot answers, not its buttons."""
        self.bot_user: dict[str, Any] = {
            "id": int(token.split(":")[0]),
            "is_bot": True,
            "first_name": bot_name,
            "username": bot_username,
        }
        self.errors: list[str] = []  # tracebacks of the fake's own failures: should stay empty
        self.unknown_methods: list[str] = []
        self.webhook: dict[str, Any] | None = None
        self.webhook_deliveries: list[tuple[int, int | str]] = []  # (update_id, status)
        self.commands: dict[str, list[dict[str, str]]] = {}
        self._cond = threading.Condition(threading.RLock())
        self._calls: list[Call] = []
        self._sent: list[Sent] = []
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(100_000)
        self._message_ids: dict[int, int] = {}
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._files: dict[str, StoredFile] = {}
        self._admins: dict[int, set[int]] = {}
        """chat id → the ids of its administrators (getChatMember answers "administrator")."""
        self._paths: dict[str, StoredFile] = {}
        self._file_counter = itertools.count(1)
        self._media_groups = itertools.count(13_000_000_000_000_000)
        self._faults: dict[str, deque[_Fault]] = {}
        self._outages: list[_Outage] = []
        self._gates: list[Hold] = []
        self._blocked: set[int] = set()
        self._users: dict[int, dict[str, Any]] = {}
        self._callback_queries: dict[str, bool] = {}  # id -> answered
        self._inline_queries: dict[str, bool] = {}
        self._allowed_updates: list[str] | None = None
        self._poll_generation = 0
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._webhook_thread: threading.Thread | None = None
        self._stopping = False
        self._methods: dict[str, Callable[[dict[str, Any], _Ctx], Any]] = {
            "getMe": self._get_me,
            "logOut": lambda p, c: True,
            "close": lambda p, c: True,
            "getUpdates": self._get_updates,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "sendMessage": self._send_message,
            "sendPhoto": self._send_photo,
            "sendDocument": self._send_document,
            "sendMediaGroup": self._send_media_group,
            "sendChatAction": self._send_chat_action,
            "getFile": self._get_file,
            "getChatMember": self._get_chat_member,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "answerCallbackQuery": self._answer_callback_query,
            "answerInlineQuery": self._answer_inline_query,
            "editMessageText": self._edit_message_text,
            "editMessageCaption": self._edit_message_caption,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "deleteMessage": self._delete_message,
        }
        self._canonical = {name.lower(): name for name in self._methods}

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> FakeTelegram:
        """Bind 127.0.0.1 on a free port and serve in a background thread."""
        if self._server is not None:
            return self
        self._stopping = False
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.name = f"fake-telegram:{self.port}"
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake held long polls and close open connections."""
        if self._server is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            gates = list(self._gates)
        for gate in gates:  # held calls end
            gate.release()
        self._server.shutdown()
        with self._cond:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        if self._thread:
            self._thread.join(5)
        if self._webhook_thread:
            self._webhook_thread.join(5)
        self._server = None

    def __enter__(self) -> FakeTelegram:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeTelegram is not started")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """For `ApplicationBuilder().base_url(...)`: PTB appends `<token>/<method>`."""
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        """For `ApplicationBuilder().base_file_url(...)`: PTB appends `<token>/<file_path>`."""
        return f"http://127.0.0.1:{self.port}/file/bot"

    def env(self) -> dict[str, str]:
        """Environment for `python -m bot` as a subprocess."""
        return {
            "TELEGRAM_BOT_TOKEN": self.token,
            "TELEGRAM_BASE_URL": self.base_url,
            "TELEGRAM_BASE_FILE_URL": self.base_file_url,
        }

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._cond:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # ----------------------------------------------------------------- recording API

    def calls(
        self, method: str | None = None, *, ok: bool | None = None, since: int = 0
    ) -> list[Call]:
        """Recorded calls in the order they were recorded, optionally of one method, only
        (un)successful, from the `since`-th (a `mark()`) on."""
        with self._cond:
            return [c for c in self._calls[since:] if self._matches(c, method, ok)]

    def mark(self) -> int:
        """An index into the call log, for `wait_for(..., since=tg.mark())`."""
        with self._cond:
            return len(self._calls)

    def wait_for(
        self,
        what: str | Callable[[Call], bool],
        timeout: float = 60.0,
        *,
        since: int = 0,
        ok: bool | None = None,
        count: int = 1,
    ) -> Call:
        """Block until `count` calls (from index `since`) match a method name or a predicate;
        return the `count`-th. On timeout raise AssertionError listing what was recorded."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [c for c in self._calls[since:] if self._matches(c, what, ok)]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {count} x {_describe(what)}"
                        f"{'' if ok is None else f' (ok={ok})'}; recorded calls:\n"
                        + self._log_text()
                    )
                self._cond.wait(left)

    def wait_sent(
        self, chat_id: int, n: int = 1, timeout: float = 10.0, *, since: int = 0
    ) -> list[Sent]:
        """Block until at least `n` things were sent to `chat_id` (counting from the `since`-th
        send to that chat); return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                sent = self.sent_to(chat_id)[since:]
                if len(sent) >= n:
                    return sent
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {n} sends to chat {chat_id}; "
                        f"recorded calls:\n" + self._log_text()
                    )
                self._cond.wait(left)

    def sent_to(self, chat_id: int) -> list[Sent]:
        """What the bot successfully sent to a chat, in order (copies of the messages)."""
        with self._cond:
            return [
                Sent(s.method, s.chat_id, copy.deepcopy(s.messages), s.call)
                for s in self._sent
                if s.chat_id == chat_id and not (self.hide_button_messages and _has_buttons(s))
            ]

    def message(self, chat_id: int, message_id: int) -> dict[str, Any] | None:
        """A message (the user's or the bot's) as the fake stores it now."""
        with self._cond:
            msg = self._messages.get((chat_id, message_id))
            return copy.deepcopy(msg) if msg else None

    def file(self, file_id: str) -> StoredFile | None:
        with self._cond:
            return self._files.get(file_id)

    def file_bytes(self, file_id: str) -> bytes:
        with self._cond:
            return self._files[file_id].data

    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates not yet confirmed by the bot (getUpdates offset) or delivered (webhook)."""
        with self._cond:
            return copy.deepcopy(self._updates)

    @property
    def polls(self) -> int:
        """How many getUpdates calls have arrived so far (held long polls included)."""
        with self._cond:
            return self._poll_generation

    def wait_polls(self, count: int, timeout: float = 60.0) -> None:
        """Block until `polls` reaches `count`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._poll_generation < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self._poll_generation} polls of {count} in {timeout}s")
                self._cond.wait(left)

    def wait_updates_consumed(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._updates:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(self._updates)} updates still pending after {timeout}s"
                    )
                self._cond.wait(left)

    def assert_no_errors(self, *, allow_unknown: bool = False) -> None:
        """Fail if the fake itself crashed handling a request, or (unless `allow_unknown`)
        the bot called a method the fake only answers generically."""
        with self._cond:
            problems = list(self.errors)
            if not allow_unknown:
                problems += [f"unknown method {m}" for m in self.unknown_methods]
        assert not problems, "fake Telegram problems:\n" + "\n".join(problems)

    def _matches(
        self, call: Call, what: str | Callable[[Call], bool] | None, ok: bool | None
    ) -> bool:
        if ok is not None and call.ok != ok:
            return False
        if what is None:
            return True
        if isinstance(what, str):
            return call.method.lower() == what.lower()
        return bool(what(call))

    def _log_text(self) -> str:
        return "\n".join(f"  {c}" for c in self._calls) or "  (none)"

    # ----------------------------------------------------------------- faults API

    def fail(
        self,
        method: str,
        status: int | str = 429,
        *,
        retry_after: int = 1,
        times: int = 1,
        description: str | None = None,
        delay: float = 0.0,
        chat_id: int | None = None,
        where: Callable[[dict[str, Any]], bool] | None = None,
        gate: Hold | None = None,
    ) -> None:
        """Make the next `times` calls of `method` fail, after `delay` seconds.

        status: 429 (flood control with retry_after), 502/503/504 (nginx HTML page, not
        JSON), any other int (Telegram error JSON with `description`), "disconnect" (close
        the connection without an answer), or 200 with a delay (a slow but good answer).
        Only calls to `chat_id`, or whose params satisfy `where`, get the fault (so a test
        never races with other chats on which request gets it); with `gate`, the call is
        held until the gate is set (or the fake stops).
        """
        if chat_id is not None:
            outer = where

            def where(params: dict[str, Any]) -> bool:
                return params.get("chat_id") == chat_id and (outer is None or outer(params))

        with self._cond:
            self._faults.setdefault(method.lower(), deque()).append(
                _Fault(status, retry_after, description, delay, times, where, gate)
            )

    def slow(
        self,
        method: str,
        seconds: float,
        *,
        times: int = 1,
        chat_id: int | None = None,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """Answer the next `times` calls of `method` normally, but only after `seconds`."""
        self.fail(method, 200, delay=seconds, times=times, chat_id=chat_id, where=where)

    def hold(
        self,
        method: str,
        *,
        times: int = 1,
        chat_id: int | None = None,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> Hold:
        """Answer the next `times` matching calls of `method` normally, but only once the
        returned hold is released: a slow call whose end the test decides, not a clock."""
        gate = Hold()
        with self._cond:
            self._gates.append(gate)
        self.fail(method, 200, times=times, chat_id=chat_id, where=where, gate=gate)
        return gate

    def outage(
        self,
        seconds: float,
        status: int | str = 502,
        methods: list[str] | tuple[str, ...] | set[str] | None = None,
        *,
        retry_after: int = 1,
    ) -> None:
        """Fail every call (or the calls of `methods`) for `seconds` from now."""
        with self._cond:
            self._outages.append(
                _Outage(
                    time.monotonic() + seconds,
                    status,
                    frozenset(m.lower() for m in methods) if methods else None,
                    retry_after,
                )
            )

    def clear_faults(self) -> None:
        """Forget the faults not yet taken; held calls go on."""
        with self._cond:
            self._faults.clear()
            self._outages.clear()
            gates = list(self._gates)
        for gate in gates:
            gate.release()

    def block(self, user_id: int) -> None:
        """The user blocked the bot: sends to their chat get 403 Forbidden."""
        with self._cond:
            self._blocked.add(user_id)

    def _take_fault(self, method: str, params: dict[str, Any]) -> _Fault | None:
        with self._cond:
            now = time.monotonic()
            self._outages = [o for o in self._outages if o.until > now]
            for o in self._outages:
                if o.methods is None or method.lower() in o.methods:
                    return _Fault(o.status, o.retry_after, None, 0.0, 1)
            queue = self._faults.get(method.lower())
            fault = next((f for f in queue or () if f.applies(params)), None)
            if fault is None:
                return None
            fault.times -= 1
            if fault.times <= 0:
                queue.remove(fault)
            return fault

    # ----------------------------------------------------------------- injecting updates

    def user(
        self,
        user_id: int = DEFAULT_USER_ID,
        *,
        username: str | None = None,
        first_name: str | None = None,
    ) -> dict[str, Any]:
        """The User object of a (human) test user; remembered per id."""
        with self._cond:
            known = self._users.get(user_id)
            if known is None or username or first_name:
                known = {
                    "id": user_id,
                    "is_bot": False,
                    "first_name": first_name or (known or {}).get("first_name", f"User{user_id}"),
                    "username": username or (known or {}).get("username", f"user{user_id}"),
                    "language_code": "en",
                }
                self._users[user_id] = known
            return dict(known)

    def _chat(self, chat_id: int, user: dict[str, Any] | None = None) -> dict[str, Any]:
        if chat_id > 0:
            u = user if user and user["id"] == chat_id else self.user(chat_id)
            chat = {"id": chat_id, "type": "private", "first_name": u["first_name"]}
            if u.get("username"):
                chat["username"] = u["username"]
            return chat
        kind = "supergroup" if chat_id < -1_000_000_000_000 else "group"
        return {"id": chat_id, "type": kind, "title": f"Test group {chat_id}"}

    def _next_message_id(self, chat_id: int) -> int:
        self._message_ids[chat_id] = self._message_ids.get(chat_id, 0) + 1
        return self._message_ids[chat_id]

    def _reply_copy(self, chat_id: int, reply_to: Any) -> dict[str, Any]:
        if hasattr(reply_to, "to_dict"):  # a telegram.Message the test got from PTB
            reply_to = reply_to.to_dict()
        mid = reply_to if isinstance(reply_to, int) else reply_to["message_id"]
        if isinstance(reply_to, dict) and reply_to.get("chat", {}).get("id", chat_id) != chat_id:
            raise ValueError("reply_to is a message of another chat")
        stored = self._messages.get((chat_id, mid))
        if stored is None:
            raise ValueError(f"no message {mid} in chat {chat_id} to reply to")
        reply = copy.deepcopy(stored)
        reply.pop("reply_to_message", None)
        return reply

    def inject_message(
        self,
        *,
        user_id: int = DEFAULT_USER_ID,
        chat_id: int | None = None,
        reply_to: dict[str, Any] | int | None = None,
        username: str | None = None,
        update_type: str = "message",
        **fields: Any,
    ) -> dict[str, Any]:
        """Inject a user's message with arbitrary `fields` (voice=..., location=..., poll=...)
        and queue it as an update; return the message dict."""
        with self._cond:
            user = self.user(user_id, username=username)
            chat_id = user_id if chat_id is None else chat_id
            msg: dict[str, Any] = {
                "message_id": self._next_message_id(chat_id),
                "from": user,
                "chat": self._chat(chat_id, user),
                "date": int(time.time()),
            }
            if reply_to is not None:
                msg["reply_to_message"] = self._reply_copy(chat_id, reply_to)
            msg.update(fields)
            self._messages[(chat_id, msg["message_id"])] = msg
            self._queue_update({update_type: msg})
            return copy.deepcopy(msg)

    def inject_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue a raw update (an update_id is assigned when missing); return it."""
        with self._cond:
            return copy.deepcopy(self._queue_update(copy.deepcopy(update)))

    def _queue_update(self, update: dict[str, Any]) -> dict[str, Any]:
        update.setdefault("update_id", next(self._update_ids))
        self._updates.append(update)
        self._cond.notify_all()
        return update

    @staticmethod
    def _command_entities(text: str | None) -> list[dict[str, Any]]:
        if not text or not text.startswith("/"):
            return []
        cmd = text.split(maxsplit=1)[0]
        return [{"type": "bot_command", "offset": 0, "length": _u16(cmd)}]

    def inject_text(
        self,
        text: str,
        *,
        user_id: int = DEFAULT_USER_ID,
        chat_id: int | None = None,
        reply_to: dict[str, Any] | int | None = None,
        username: str | None = None,
        entities: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A text message; "/cmd ..." gets its bot_command entity."""
        fields: dict[str, Any] = {"text": text}
        ents = (entities or []) + self._command_entities(text)
        if ents:
            fields["entities"] = ents
        return self.inject_message(
            user_id=user_id, chat_id=chat_id, reply_to=reply_to, username=username, **fields
        )

    def inject_command(self, command: str, args: str = "", **kwargs: Any) -> dict[str, Any]:
        """`inject_command("ask", "what colour?")` → the text "/ask what colour?"."""
        text = "/" + command.lstrip("/") + (f" {args}" if args else "")
        return self.inject_text(text, **kwargs)

    def set_admins(self, chat_id: int, *user_ids: int) -> None:
        """Make `user_ids` (the bot's id included, if given) the administrators of a group."""
        with self._cond:
            self._admins[chat_id] = set(user_ids)

    def revoke_file(self, file_id: str) -> None:
        """Forget a file: Telegram no longer honours its file_id (getFile and sends fail)."""
        with self._cond:
            self._files.pop(file_id, None)

    def register_file(
        self,
        data: bytes,
        *,
        kind: str = "document",
        file_size: int | None = None,
        file_name: str | None = None,
        mime_type: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> StoredFile:
        """Store bytes under a new file_id (getFile/download will serve them). A declared
        `file_size` above 20 MB makes getFile answer "file is too big"."""
        with self._cond:
            n = next(self._file_counter)
            prefix = {"photo": "AgACAgIAAxkBAA", "sticker": "CAACAgIAAxkBAA"}.get(
                kind, "BQACAgIAAxkBAA"
            )
            digest = hashlib.sha1(data + kind.encode() + str(file_size).encode()).hexdigest()
            folder = {"photo": "photos", "sticker": "stickers"}.get(kind, kind + "s")
            ext = {"photo": ".jpg", "sticker": ".webp"}.get(kind, "")
            if not ext and file_name and "." in file_name:
                ext = "." + file_name.rsplit(".", 1)[1]
            stored = StoredFile(
                file_id=f"{prefix}{n:06d}{digest[:16]}",
                file_unique_id=f"AQAD{digest[:12]}",
                data=data,
                kind=kind,
                file_path=f"{folder}/file_{n}{ext}",
                file_size=len(data) if file_size is None else file_size,
                width=width,
                height=height,
                file_name=file_name,
                mime_type=mime_type,
            )
            self._files[stored.file_id] = stored
            self._paths[stored.file_path] = stored
            return stored

    def _photo_sizes(
        self, data: bytes, *, file_size: int | None = None, size: tuple[int, int] | None = None
    ) -> list[dict[str, Any]]:
        """Store a photo: a PhotoSize array, thumbnails first, the real bytes last."""
        probed = _image_size(data)
        real = size or probed
        entries: list[tuple[bytes, int, int, int | None]] = []
        if real is not None and probed is not None and probed[0] * probed[1] <= _FULL_DECODE_PIXELS:
            w, h = real
            for side in _THUMB_SIDES:
                if max(w, h) > side:
                    thumb, tw, th = _thumbnail(data, side)
                    entries.append((thumb, tw, th, None))
            entries.append((data, w, h, file_size))
        else:  # not an image (or a huge one): a plausible array all the same
            w, h = real or _header_size(data) or (640, 480)
            entries = [(data, max(1, w // 8), max(1, h // 8), None), (data, w, h, file_size)]
        sizes: list[dict[str, Any]] = []
        for blob, tw, th, declared in entries:
            f = self.register_file(blob, kind="photo", file_size=declared, width=tw, height=th)
            sizes.append(
                {
                    "file_id": f.file_id,
                    "file_unique_id": f.file_unique_id,
                    "width": tw,
                    "height": th,
                    "file_size": f.file_size,
                }
            )
        for s in sizes:
            self._files[s["file_id"]].sizes = sizes
        return sizes

    def _add_caption(self, fields: dict[str, Any], caption: str | None) -> None:
        """A caption, with its bot_command entity when it starts with "/"."""
        if caption is not None:
            fields["caption"] = caption
            if ents := self._command_entities(caption):
                fields["caption_entities"] = ents

    def inject_photo(
        self,
        data: bytes,
        caption: str | None = None,
        *,
        user_id: int = DEFAULT_USER_ID,
        chat_id: int | None = None,
        reply_to: dict[str, Any] | int | None = None,
        file_size: int | None = None,
        size: tuple[int, int] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A photo message: `photo` holds 2-3 PhotoSizes, the largest being `data`."""
        with self._cond:
            extra: dict[str, Any] = {
                "photo": self._photo_sizes(data, file_size=file_size, size=size)
            }
            self._add_caption(extra, caption)
            return self.inject_message(
                user_id=user_id, chat_id=chat_id, reply_to=reply_to, **extra, **fields
            )

    def inject_document(
        self,
        data: bytes,
        file_name: str = "file.bin",
        mime_type: str = "application/octet-stream",
        caption: str | None = None,
        *,
        user_id: int = DEFAULT_USER_ID,
        chat_id: int | None = None,
        reply_to: dict[str, Any] | int | None = None,
        file_size: int | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A file message (an image sent "as file" is a document with an image mime type)."""
        with self._cond:
            f = self.register_file(
                data, kind="document", file_size=file_size, file_name=file_name, mime_type=mime_type
            )
            doc: dict[str, Any] = {
                "file_id": f.file_id,
                "file_unique_id": f.file_unique_id,
                "file_name": file_name,
                "mime_type": mime_type,
                "file_size": f.file_size,
            }
            if mime_type.startswith("image/") and _image_size(data):
                thumb, tw, th = _thumbnail(data, 320)
                t = self.register_file(thumb, kind="photo", width=tw, height=th)
                doc["thumbnail"] = {
                    "file_id": t.file_id,
                    "file_unique_id": t.file_unique_id,
                    "width": tw,
                    "height": th,
                    "file_size": t.file_size,
                }
            extra: dict[str, Any] = {"document": doc}
            self._add_caption(extra, caption)
            return self.inject_message(
                user_id=user_id, chat_id=chat_id, reply_to=reply_to, **extra, **fields
            )

    def inject_sticker(
        self,
        emoji: str = "😀",
        *,
        data: bytes | None = None,
        user_id: int = DEFAULT_USER_ID,
        chat_id: int | None = None,
        reply_to: dict[str, Any] | int | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A (static, 512x512) sticker message."""
        if data is None:
            buf = io.BytesIO()
            Image.new("RGBA", (512, 512), (255, 200, 0, 255)).save(buf, "WEBP")
            data = buf.getvalue()
        with self._cond:
            f = self.register_file(data, kind="sticker", width=512, height=512)
            sticker = {
                "file_id": f.file_id,
                "file_unique_id": f.file_unique_id,
                "type": "regular",
                "width": 512,
                "height": 512,
                "is_animated": False,
                "is_video": False,
                "emoji": emoji,
                "set_name": "TestStickers",
                "file_size": f.file_size,
            }
            return self.inject_message(
                user_id=user_id, chat_id=chat_id, reply_to=reply_to, sticker=sticker, **fields
            )

    def inject_callback_query(
        self, data: str, message: dict[str, Any], *, user_id: int = DEFAULT_USER_ID
    ) -> dict[str, Any]:
        """A press on an inline button of `message` (a message the bot sent)."""
        with self._cond:
            chat_id = message["chat"]["id"]
            stored = self._messages.get((chat_id, message["message_id"]), message)
            query = {
                "id": str(next(self._file_counter) * 7919),
                "from": self.user(user_id),
                "message": copy.deepcopy(stored),
                "chat_instance": str(abs(chat_id) * 31),
                "data": data,
            }
            self._callback_queries[query["id"]] = False
            self._queue_update({"callback_query": query})
            return copy.deepcopy(query)

    def inject_inline_query(
        self, query: str, offset: str = "", *, user_id: int = DEFAULT_USER_ID
    ) -> dict[str, Any]:
        """`@bot <query>` typed in some chat (the `offset` of a next page, "" for the first)."""
        with self._cond:
            inline = {
                "id": str(next(self._file_counter) * 7907),
                "from": self.user(user_id),
                "query": query,
                "offset": offset,
                "chat_type": "sender",
            }
            self._inline_queries[inline["id"]] = False
            self._queue_update({"inline_query": inline})
            return copy.deepcopy(inline)

    def callback_answer(self, query_id: str, timeout: float = 10.0) -> Call:
        """The answerCallbackQuery call for the press `query_id` (waits for it)."""
        return self.wait_for(
            lambda c: (
                c.method == "answerCallbackQuery"
                and c.ok
                and str(c.params.get("callback_query_id")) == query_id
            ),
            timeout,
        )

    def inline_answer(self, query_id: str, timeout: float = 10.0) -> Call:
        """The answerInlineQuery call for the inline query `query_id` (waits for it)."""
        return self.wait_for(
            lambda c: (
                c.method == "answerInlineQuery"
                and c.ok
                and str(c.params.get("inline_query_id")) == query_id
            ),
            timeout,
        )

    # ----------------------------------------------------------------- HTTP plumbing

    def _serve(self, h: _Handler) -> None:
        try:
            self._serve_unsafe(h)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            h.close_connection = True
        except Exception:
            self._record_error(f"{h.command} {h.path}")
            with contextlib.suppress(Exception):
                self._respond_json(h, 500, _error_json(500, "Internal Server Error"))

    def _record_error(self, where: str) -> None:
        with self._cond:
            self.errors.append(f"{where}:\n{traceback.format_exc()}")
            self._cond.notify_all()

    def _respond(self, h: _Handler, status: int, body: bytes, ctype: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()

    def _respond_json(self, h: _Handler, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode()
        self._respond(h, status, body, "application/json")

    def _read_body(self, h: _Handler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length else b""

    def _serve_unsafe(self, h: _Handler) -> None:
        started = time.monotonic()
        url = urlsplit(h.path)
        path = unquote(url.path)
        body = self._read_body(h)
        received = time.monotonic()
        if path.startswith("/file/bot"):
            self._serve_file(h, path[len("/file/bot") :])
            return
        if not path.startswith("/bot"):
            self._respond_json(h, 404, _error_json(404, "Not Found"))
            return
        token, _, method = path[len("/bot") :].partition("/")
        if token != self.token:
            self._respond_json(h, 401, _error_json(401, "Unauthorized"))
            return
        if not method:
            self._respond_json(h, 404, _error_json(404, "Not Found"))
            return
        method = self._canonical.get(method.lower(), method)
        call = Call(method, {}, {}, started, received)
        try:
            raw, uploads = self._raw_params(h, url.query, body)
            call.params = {k: _decode_value(k, v) for k, v in raw.items()}
            call.files = {k: u.data for k, u in uploads.items()}
            call.file_names = {k: u.filename for k, u in uploads.items()}
        except ApiError as err:
            self._finish_call(h, call, err.status, None, err)
            return

        fault = self._take_fault(method, call.params)
        if fault is not None:
            if fault.gate is not None:
                fault.gate._hold()
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status != 200:
                self._answer_fault(h, call, fault)
                return

        ctx = _Ctx(call, h, uploads)
        status, result, error = 200, None, None
        try:
            with self._cond:
                handler = self._methods.get(method)
                if handler is None and method.lower().startswith("send"):
                    result = self._send_generic(call.params, ctx)
                elif handler is None:
                    self.unknown_methods.append(method)
                    result = True
                else:
                    result = handler(call.params, ctx)
        except ApiError as err:
            status, error = err.status, err
        except _Disconnected:
            call.status, call.error = 499, "client closed the connection during the long poll"
            self._record(call)
            h.close_connection = True
            return
        except Exception:
            self._record_error(f"{method} {call.params}")
            status, error = 500, ApiError(500, "Internal Server Error")
        self._finish_call(h, call, status, result, error)

    def _raw_params(
        self, h: _Handler, query: str, body: bytes
    ) -> tuple[dict[str, Any], dict[str, _Upload]]:
        raw: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
        uploads: dict[str, _Upload] = {}
        ctype = h.headers.get("Content-Type", "")
        if not body:
            return raw, uploads
        if ctype.startswith("multipart/form-data"):
            fields, uploads = _parse_multipart(body, ctype)
            raw.update(fields)
        elif ctype.startswith("application/json"):
            try:
                obj = json.loads(body)
            except ValueError:
                raise ApiError(400, "Bad Request: can't parse JSON request body") from None
            if not isinstance(obj, dict):
                raise ApiError(400, "Bad Request: JSON request body must be an object")
            raw.update(obj)
        else:
            raw.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        return raw, uploads

    def _finish_call(
        self, h: _Handler, call: Call, status: int, result: Any, error: ApiError | None
    ) -> None:
        call.status = status
        if error is None:
            call.result = copy.deepcopy(result)
            self._record(call)
            self._respond_json(h, 200, {"ok": True, "result": result})
            return
        call.error = error.description
        self._record(call)
        self._respond_json(h, status, _error_json(status, error.description, error.parameters))

    def _record(self, call: Call) -> None:
        with self._cond:
            self._calls.append(call)
            self._cond.notify_all()

    def _answer_fault(self, h: _Handler, call: Call, fault: _Fault) -> None:
        status = fault.status
        if status == "disconnect":
            call.status, call.error = 0, "connection dropped without an answer"
            self._record(call)
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        assert isinstance(status, int), f"bad fault status {status!r}"
        if status == 429:
            description = fault.description or f"Too Many Requests: retry after {fault.retry_after}"
            self._finish_call(
                h, call, 429, None, ApiError(429, description, {"retry_after": fault.retry_after})
            )
            return
        phrase = _phrase(status)
        if status in (502, 503, 504) and fault.description is None:
            call.status, call.error = status, f"{status} {phrase} (nginx page)"
            self._record(call)
            page = NGINX_PAGE.format(code=status, phrase=phrase).encode()
            self._respond(h, status, page, "text/html")
            return
        default = {
            400: "Bad Request: fake failure",
            403: "Forbidden: bot was blocked by the user",
        }.get(status, phrase)
        self._finish_call(h, call, status, None, ApiError(status, fault.description or default))

    def _serve_file(self, h: _Handler, rest: str) -> None:
        token, _, file_path = rest.partition("/")
        with self._cond:
            stored = self._paths.get(file_path) if token == self.token else None
        if stored is None:
            self._respond_json(h, 404, _error_json(404, "Not Found"))
            return
        self._respond(h, 200, stored.data, stored.mime_type or "application/octet-stream")

    # ----------------------------------------------------------------- methods

    def _get_me(self, p: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    def _get_updates(self, p: dict[str, Any], ctx: _Ctx) -> list[dict[str, Any]]:
        if self.webhook:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = int(p.get("offset") or 0)
        limit = max(1, min(100, int(p.get("limit") or 100)))
        timeout = max(0.0, float(p.get("timeout") or 0))
        if "allowed_updates" in p and p["allowed_updates"] is not None:
            self._allowed_updates = list(p["allowed_updates"])
        self._poll_generation += 1
        generation = self._poll_generation
        self._cond.notify_all()  # a poll held for another client ends with 409 Conflict
        if offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        while True:
            ready = [u for u in self._updates if self._allowed(u)]
            if offset < 0:
                ready = ready[offset:]
            if ready or self._stopping:
                return copy.deepcopy(ready[:limit])
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            self._cond.wait(min(left, 0.25))
            if _peer_closed(ctx.handler.connection):
                raise _Disconnected  # PTB cancelled the poll (stop, shutdown): no 409 for that
            if generation != self._poll_generation:
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only one "
                    "bot instance is running",
                )

    def _allowed(self, update: dict[str, Any]) -> bool:
        kind = next((k for k in update if k != "update_id"), "")
        if self._allowed_updates:
            return kind in self._allowed_updates
        return kind not in _DEFAULT_EXCLUDED_UPDATES

    def _set_webhook(self, p: dict[str, Any], ctx: _Ctx) -> bool:
        url = str(p.get("url") or "")
        if not url:
            return self._delete_webhook(p, ctx)
        host = urlsplit(url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ApiError(
                400, "Bad Request: bad webhook: the fake Telegram only delivers to 127.0.0.1"
            )
        self.webhook = {
            "url": url,
            "secret_token": p.get("secret_token"),
            "max_connections": p.get("max_connections", 40),
            "allowed_updates": p.get("allowed_updates"),
            "ip_address": p.get("ip_address"),
        }
        if p.get("allowed_updates") is not None:
            self._allowed_updates = list(p["allowed_updates"])
        if p.get("drop_pending_updates"):
            self._updates.clear()
        if self._webhook_thread is None or not self._webhook_thread.is_alive():
            self._webhook_thread = threading.Thread(
                target=self._deliver_webhooks, name="fake-telegram-webhook", daemon=True
            )
            self._webhook_thread.start()
        self._cond.notify_all()
        return True

    def _delete_webhook(self, p: dict[str, Any], ctx: _Ctx) -> bool:
        self.webhook = None
        if p.get("drop_pending_updates"):
            self._updates.clear()
        self._cond.notify_all()
        return True

    def _get_webhook_info(self, p: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
        info: dict[str, Any] = {
            "url": self.webhook["url"] if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self.webhook:
            info["max_connections"] = self.webhook["max_connections"]
            if self.webhook["allowed_updates"] is not None:
                info["allowed_updates"] = self.webhook["allowed_updates"]
        return info

    def _deliver_webhooks(self) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            with self._cond:
                while not self._stopping and not (self.webhook and self._updates):
                    self._cond.wait(0.5)
                if self._stopping:
                    return
                assert self.webhook is not None
                hook = dict(self.webhook)
                update = self._updates[0]
            if not self._allowed(update):
                status: int | str = "skipped"
            else:
                req = urllib.request.Request(
                    hook["url"],
                    data=json.dumps(update).encode(),
                    headers={"Content-Type": "application/json"},
                    method="POST",
                )
                if hook.get("secret_token"):
                    req.add_header("X-Telegram-Bot-Api-Secret-Token", hook["secret_token"])
                try:
                    with opener.open(req, timeout=10) as resp:
                        status = resp.status
                except urllib.error.HTTPError as err:
                    status = err.code
                except OSError as err:
                    status = f"error: {err}"
            with self._cond:
                self.webhook_deliveries.append((update["update_id"], status))
                delivered = status == "skipped" or (isinstance(status, int) and status < 300)
                if delivered and self._updates and self._updates[0] is update:
                    self._updates.pop(0)
                self._cond.notify_all()
                if not delivered:
                    self._cond.wait(0.2)

    # sending ---------------------------------------------------------------

    def _target_chat(self, p: dict[str, Any]) -> int:
        chat_id = p.get("chat_id")
        if chat_id in (None, ""):
            raise ApiError(400, "Bad Request: chat_id is empty")
        if isinstance(chat_id, str):
            if re.fullmatch(r"-?\d+", chat_id):
                chat_id = int(chat_id)
            else:
                raise ApiError(400, "Bad Request: chat not found")
        if chat_id in self._blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        return int(chat_id)

    def _reply_of(self, p: dict[str, Any], chat_id: int) -> dict[str, Any] | None:
        rp = p.get("reply_parameters")
        if isinstance(rp, dict):
            mid, allow = rp.get("message_id"), rp.get("allow_sending_without_reply")
            if rp.get("chat_id") not in (None, chat_id):
                raise ApiError(400, "Bad Request: replies to other chats are not faked")
        else:
            mid, allow = p.get("reply_to_message_id"), p.get("allow_sending_without_reply")
        if mid is None:
            return None
        stored = self._messages.get((chat_id, int(mid)))
        if stored is None:
            if allow:
                return None
            raise ApiError(400, "Bad Request: message to be replied not found")
        reply = copy.deepcopy(stored)
        reply.pop("reply_to_message", None)
        return reply

    def _new_bot_message(
        self, p: dict[str, Any], chat_id: int, reply: dict[str, Any] | None
    ) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "message_id": self._next_message_id(chat_id),
            "from": dict(self.bot_user),
            "chat": self._chat(chat_id),
            "date": int(time.time()),
        }
        if reply is not None:
            msg["reply_to_message"] = reply
        markup = p.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            _check_inline_keyboard(markup)
            msg["reply_markup"] = markup
        return msg

    def _caption_fields(self, caption: Any, parse_mode: Any, entities: Any) -> dict[str, Any]:
        if caption in (None, ""):
            return {}
        plain, ents = parse_formatted(str(caption), parse_mode, entities)
        if len(plain) > CAPTION_LIMIT:
            raise ApiError(400, "Bad Request: message caption is too long")
        fields: dict[str, Any] = {"caption": plain}
        if ents:
            fields["caption_entities"] = ents
        return fields

    def _remember(
        self, method: str, chat_id: int, messages: list[dict[str, Any]], ctx: _Ctx
    ) -> None:
        for m in messages:
            self._messages[(chat_id, m["message_id"])] = m
        self._sent.append(Sent(method, chat_id, messages, ctx.call))

    def _public(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in msg.items() if not k.startswith("_")}

    def _send_message(self, p: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
        chat_id = self._target_chat(p)
        text = p.get("text")
        if text is None or str(text).strip() == "":
            raise ApiError(400, "Bad Request: message text is empty")
        plain, ents = parse_formatted(str(text), p.get("parse_mode"), p.get("entities"))
        if len(plain) > TEXT_LIMIT:
            raise ApiError(400, "Bad Request: message is too long")
        if not plain.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        reply = self._reply_of(p, chat_id)
        msg = self._new_bot_message(p, chat_id, reply)
        msg["text"] = plain
        if ents:
            msg["entities"] = ents
        if isinstance(p.get("link_preview_options"), dict):
            msg["link_preview_options"] = p["link_preview_options"]
        self._remember("sendMessage", chat_id, [msg], ctx)
        return self._public(msg)

    def _resolve_media(self, value: Any, field_name: str, kind: str, ctx: _Ctx) -> tuple[Any, bool]:
        """An uploaded part, an attach:// reference or a file_id → (upload or StoredFile,
        by_file_id)."""
        if isinstance(value, str) and value.startswith("attach://"):
            upload = ctx.files.get(value[len("attach://") :])
            if upload is None:
                raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
            return upload, False
        if value in (None, "") and field_name in ctx.files:
            return ctx.files[field_name], False
        if value in (None, ""):
            raise ApiError(400, f"Bad Request: there is no {kind} in the request")
        if not isinstance(value, str) or value.startswith(("http://", "https://")):
            raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
        stored = self._files.get(value)
        if stored is None:
            raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
        if (kind == "photo") != (stored.kind == "photo"):
            raise ApiError(
                400, f"Bad Request: can't use file of type {stored.kind.title()} as {kind.title()}"
            )
        return stored, True

    def _photo_from(self, source: Any) -> list[dict[str, Any]]:
        if isinstance(source, StoredFile):
            assert source.sizes is not None
            return copy.deepcopy(source.sizes)
        data = source.data
        size = _image_size(data)
        if size is None:
            raise ApiError(400, "Bad Request: IMAGE_PROCESS_FAILED")
        w, h = size
        if len(data) > PHOTO_UPLOAD_LIMIT:
            raise ApiError(400, "Bad Request: PHOTO_SAVE_FILE_INVALID")
        if w + h > PHOTO_MAX_DIMENSIONS or max(w, h) > PHOTO_MAX_RATIO * min(w, h):
            raise ApiError(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
        return self._photo_sizes(data)

    def _document_from(self, source: Any) -> dict[str, Any]:
        if isinstance(source, StoredFile):
            stored = source
        else:
            stored = self.register_file(
                source.data,
                kind="document",
                file_name=source.filename,
                mime_type=source.content_type,
            )
        doc = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.file_size,
        }
        if stored.file_name:
            doc["file_name"] = stored.file_name
        if stored.mime_type:
            doc["mime_type"] = stored.mime_type
        return doc

    def _send_photo(self, p: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
        chat_id = self._target_chat(p)
        source, by_id = self._resolve_media(p.get("photo"), "photo", "photo", ctx)
        fields = self._caption_fields(
            p.get("caption"), p.get("parse_mode"), p.get("caption_entities")
        )
        reply = self._reply_of(p, chat_id)
        photo = self._photo_from(source)
        msg = self._new_bot_message(p, chat_id, reply)
        msg["photo"] = photo
        msg.update(fields)
        msg["_by_file_id"] = by_id
        self._remember("sendPhoto", chat_id, [msg], ctx)
        return self._public(msg)

    def _send_document(self, p: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
        chat_id = self._target_chat(p)
        source, by_id = self._resolve_media(p.get("document"), "document", "document", ctx)
        fields = self._caption_fields(
            p.get("caption"), p.get("parse_mode"), p.get("caption_entities")
        )
        reply = self._reply_of(p, chat_id)
        msg = self._new_bot_message(p, chat_id, reply)
        msg["document"] = self._document_from(source)
        msg.update(fields)
        msg["_by_file_id"] = by_id
        self._remember("sendDocument", chat_id, [msg], ctx)
        return self._public(msg)

    def _send_media_group(self, p: dict[str, Any], ctx: _Ctx) -> list[dict[str, Any]]:
        chat_id = self._target_chat(p)
        media = p.get("media")
        if not isinstance(media, list) or not media:
            raise ApiError(400, "Bad Request: media to send are not specified")
        if len(media) > MEDIA_GROUP_MAX:
            raise ApiError(400, "Bad Request: too many messages to send as an album")
        if len(media) < MEDIA_GROUP_MIN:
            raise ApiError(400, "Bad Request: media group must include 2-10 items")
        types = {m.get("type") if isinstance(m, dict) else None for m in media}
        if not types <= {"photo", "video"} and len(types) > 1:
            raise ApiError(400, "Bad Request: documents and audio can't be mixed with other media")
        prepared = []
        for item in media:
            if not isinstance(item, dict) or item.get("type") not in ("photo", "document"):
                raise ApiError(400, "Bad Request: the fake supports photo and document albums")
            kind = item["type"]
            source, by_id = self._resolve_media(item.get("media"), "", kind, ctx)
            fields = self._caption_fields(
                item.get("caption"), item.get("parse_mode"), item.get("caption_entities")
            )
            prepared.append((kind, source, by_id, fields))
        reply = self._reply_of(p, chat_id)
        group_id = str(next(self._media_groups))
        messages = []
        for kind, source, by_id, fields in prepared:
            msg = self._new_bot_message({}, chat_id, reply)
            msg["media_group_id"] = group_id
            msg[kind] = self._photo_from(source) if kind == "photo" else self._document_from(source)
            msg.update(fields)
            msg["_by_file_id"] = by_id
            messages.append(msg)
        self._remember("sendMediaGroup", chat_id, messages, ctx)
        return [self._public(m) for m in messages]

    def _send_generic(self, p: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
        """Any other send* method: a Message echoing the parameters, so PTB can parse it."""
        self.unknown_methods.append(ctx.call.method)
        chat_id = self._target_chat(p)
        msg = self._new_bot_message(p, chat_id, self._reply_of(p, chat_id))
        skip = {"chat_id", "reply_parameters", "reply_to_message_id", "reply_markup"}
        msg.update({k: v for k, v in p.items() if k not in skip})
        self._remember(ctx.call.method, chat_id, [msg], ctx)
        return self._public(msg)

    def _send_chat_action(self, p: dict[str, Any], ctx: _Ctx) -> bool:
        self._target_chat(p)
        if p.get("action") not in _CHAT_ACTIONS:
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        return True

    def _get_chat_member(self, p: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
        try:
            chat_id, user_id = int(p["chat_id"]), int(p["user_id"])
        except (KeyError, TypeError, ValueError):
            raise ApiError(400, "Bad Request: invalid user_id specified") from None
        user = self.bot_user if user_id == self.bot_user["id"] else self.user(user_id)
        if user_id in self._admins.get(chat_id, set()):
            return {"status": "administrator", "user": user, **_ADMIN_RIGHTS}
        return {"status": "member", "user": user}

    def _get_file(self, p: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
        file_id = p.get("file_id")
        if not file_id:
            raise ApiError(400, "Bad Request: file_id is empty")
        stored = self._files.get(str(file_id))
        if stored is None:
            raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
        if stored.too_big:
            raise ApiError(400, "Bad Request: file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.file_size,
            "file_path": stored.file_path,
        }

    @staticmethod
    def _commands_key(p: dict[str, Any]) -> str:
        scope = p.get("scope") or {"type": "default"}
        return json.dumps([scope, p.get("language_code") or ""], sort_keys=True)

    def _set_my_commands(self, p: dict[str, Any], ctx: _Ctx) -> bool:
        commands = p.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise ApiError(400, "Bad Request: can't parse commands JSON object")
        for c in commands:
            if not isinstance(c, dict) or not _COMMAND_RE.match(str(c.get("command", ""))):
                raise ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(str(c.get("description", ""))) <= 256:
                raise ApiError(400, "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID")
        self.commands[self._commands_key(p)] = [
            {"command": c["command"], "description": c["description"]} for c in commands
        ]
        return True

    def _get_my_commands(self, p: dict[str, Any], ctx: _Ctx) -> list[dict[str, str]]:
        return copy.deepcopy(self.commands.get(self._commands_key(p), []))

    def _delete_my_commands(self, p: dict[str, Any], ctx: _Ctx) -> bool:
        self.commands.pop(self._commands_key(p), None)
        return True

    def my_commands(self) -> list[dict[str, str]]:
        """The commands set for the default scope and language."""
        with self._cond:
            return copy.deepcopy(self.commands.get(self._commands_key({}), []))

    def _edited(self, p: dict[str, Any]) -> dict[str, Any]:
        if p.get("inline_message_id"):
            raise ApiError(400, "Bad Request: inline messages are not faked")
        chat_id = self._target_chat(p)
        msg = self._messages.get((chat_id, int(p.get("message_id") or 0)))
        if msg is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        if msg["from"]["id"] != self.bot_user["id"]:
            raise ApiError(400, "Bad Request: message can't be edited")
        return msg

    def _edit_message_text(self, p: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
        msg = self._edited(p)
        text = str(p.get("text") or "")
        plain, ents = parse_formatted(text, p.get("parse_mode"), p.get("entities"))
        if not plain.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if len(plain) > TEXT_LIMIT:
            raise ApiError(400, "Bad Request: message is too long")
        if "text" not in msg:
            raise ApiError(400, "Bad Request: there is no text in the message to edit")
        if plain == msg.get("text") and ents == msg.get("entities", []):
            raise ApiError(
                400,
                "Bad Request: message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup of the message",
            )
        msg["text"] = plain
        msg.pop("entities", None)
        if ents:
            msg["entities"] = ents
        msg["edit_date"] = int(time.time())
        return self._public(msg)

    def _edit_message_caption(self, p: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
        msg = self._edited(p)
        msg.pop("caption", None)
        msg.pop("caption_entities", None)
        msg.update(
            self._caption_fields(p.get("caption"), p.get("parse_mode"), p.get("caption_entities"))
        )
        msg["edit_date"] = int(time.time())
        return self._public(msg)

    def _edit_message_reply_markup(self, p: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
        msg = self._edited(p)
        markup = p.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            _check_inline_keyboard(markup)
            msg["reply_markup"] = markup
        else:
            msg.pop("reply_markup", None)
        return self._public(msg)

    def _answer_callback_query(self, p: dict[str, Any], ctx: _Ctx) -> bool:
        query_id = str(p.get("callback_query_id") or "")
        if self._callback_queries.get(query_id) is not False:
            raise ApiError(
                400,
                "Bad Request: query is too old and response timeout expired or query ID is invalid",
            )
        if len(str(p.get("text") or "")) > 200:
            raise ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        self._callback_queries[query_id] = True
        return True

    def _answer_inline_query(self, p: dict[str, Any], ctx: _Ctx) -> bool:
        query_id = str(p.get("inline_query_id") or "")
        if self._inline_queries.get(query_id) is not False:
            raise ApiError(
                400,
                "Bad Request: query is too old and response timeout expired or query ID is invalid",
            )
        results = p.get("results")
        if not isinstance(results, list) or len(results) > 50:
            raise ApiError(400, "Bad Request: RESULTS_TOO_MUCH")
        if len(str(p.get("next_offset") or "").encode()) > 64:
            raise ApiError(400, "Bad Request: NEXT_OFFSET_INVALID")
        ids = [str(r.get("id")) for r in results if isinstance(r, dict)]
        if len(set(ids)) != len(results) or any(not 1 <= len(i.encode()) <= 64 for i in ids):
            raise ApiError(400, "Bad Request: RESULT_ID_INVALID")
        for result in results:
            if result.get("type") == "photo" and "photo_file_id" in result:
                stored = self._files.get(str(result["photo_file_id"]))
                if stored is None or stored.kind != "photo":
                    raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
                self._caption_fields(
                    result.get("caption"), result.get("parse_mode"), result.get("caption_entities")
                )
        self._inline_queries[query_id] = True
        return True

    def _delete_message(self, p: dict[str, Any], ctx: _Ctx) -> bool:
        chat_id = self._target_chat(p)
        key = (chat_id, int(p.get("message_id") or 0))
        if key not in self._messages:
            raise ApiError(400, "Bad Request: message to delete not found")
        self._messages[key]["_deleted"] = True
        return True


# --------------------------------------------------------------------------- helpers


def _check_inline_keyboard(markup: dict[str, Any]) -> None:
    """Telegram's checks of an inline keyboard: callback_data of 1-64 bytes, a text each."""
    rows = markup.get("inline_keyboard")
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise ApiError(400, "Bad Request: can't parse inline keyboard button")
    for row in rows:
        for button in row:
            if not isinstance(button, dict) or not str(button.get("text") or "").strip():
                raise ApiError(400, "Bad Request: BUTTON_TEXT_INVALID")
            data = button.get("callback_data")
            if data is not None and not 1 <= len(str(data).encode()) <= 64:
                raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _error_json(status: int, description: str, parameters: dict | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        payload["parameters"] = parameters
    return payload


def _describe(what: str | Callable[[Call], bool]) -> str:
    return repr(what) if isinstance(what, str) else getattr(what, "__name__", "predicate")


def _has_buttons(sent: Sent) -> bool:
    """A text message carrying an inline keyboard."""
    markup = sent.messages[0].get("reply_markup") if sent.method == "sendMessage" else None
    return bool(markup and markup.get("inline_keyboard"))


def _peer_closed(conn: socket.socket) -> bool:
    """True when the client hung up (EOF readable) on a connection we hold an answer for."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        if not readable:
            return False
        return conn.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def small_jpeg(
    color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)
) -> bytes:
    """A tiny JPEG, for tests that need some picture."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()
