"""Compound queries: how a search text is read, and how its parts become one vector.

Pure (no model, no store), so the reading rules are unit-tested on their own. Used by
`core.search.service.SearchService.prepare`.

Syntax (what the bot's /help quotes):

- words are one term: `a dog on a beach`
- `+` combines terms: `cat + snow` (each positive term weighs +1)
- `-word` pushes away at half weight: `a dog on a beach -people` (each minus term weighs
  -0.5); `-"two words"` pushes away a phrase. A `-` inside a word (`t-shirt`) is a letter.
- `#name` keeps only pictures holding that COCO category: `#dog #frisbee in a park`
  (several hashtags: all of them); `#hot_dog` or `#hotdog` for two-word names
- with a picture, the picture weighs +1 and the words change it: `at night`, `-red`
- what nobody can see is not a term: zero-width and other format characters, and terms of
  punctuation only (`...`). A term of symbols only (an emoji, `🐶`) is kept apart in
  `ParsedQuery.symbols`: the service searches it only when the model has tokens of its own
  for it (`has_real_tokens`)

The vector is the weighted sum of the terms' L2-normalised embeddings, normalised again.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from core.errors import EmptyQuery, NoCategories, UnknownCategory

PLUS_WEIGHT = 1.0
"""Weight of each positive term (and of the picture, when there is one)."""
MINUS_WEIGHT = -0.5
"""Weight of each `-term`: it pushes away at half the weight a positive term pulls."""
MINUS_SIGNS = ("-", "\N{MINUS SIGN}")
HASHTAG_PROMPT = "a photo of a {}"
"""A query of hashtags only searches for the mean of these texts, one per category."""

_TOKEN = re.compile(r'(?P<sign>[-+\N{MINUS SIGN}]?)"(?P<phrase>[^"]*)"|(?P<word>\S+)')
_EDGE_PUNCTUATION = ".,;:!?()[]{}'\""
_BREAKS = frozenset("\N{ZERO WIDTH SPACE}")
"""Invisible characters that separate words: read as a space."""
_JOINERS = frozenset("\N{ZERO WIDTH NON-JOINER}\N{ZERO WIDTH JOINER}")
"""Format characters that belong to words (Persian, Indic scripts) and to emoji sequences."""


@dataclass(frozen=True)
class ParsedQuery:
    """A search text, read: the terms that pull, the terms that push away, the hashtags."""

    positives: tuple[str, ...] = ()
    negatives: tuple[str, ...] = ()
    hashtags: tuple[str, ...] = ()
    """As written, without the `#`, lower-cased."""
    symbols: tuple[str, ...] = ()
    """Positive terms of symbols only, such as an emoji: searched only when the model's
    tokenizer has tokens of its own for them (`has_real_tokens`), else left out."""

    def reading(self, base: str = "", categories: Sequence[str] = ()) -> str:
        """How the query was read, for people: "a dog on a beach −people · #dog".

        `base` names the picture the words change ("your photo"); `categories` replaces the
        hashtags by the category names they were resolved to."""
        parts = [base] if base else []
        parts += list(self.positives)
        text = " + ".join(parts)
        for term in self.negatives:
            shown = f'"{term}"' if " " in term else term
            text += f" \N{MINUS SIGN}{shown}"
        tags = [hashtag(c) for c in categories] if categories else [f"#{t}" for t in self.hashtags]
        if tags:
            text = f"{text} · {' '.join(tags)}" if text.strip() else " ".join(tags)
        return text.strip()


def parse_query(text: str) -> ParsedQuery:
    """Read a search text (see the module docstring for the syntax). Never raises: a text
    with nothing in it gives an empty `ParsedQuery`."""
    text = visible(text)
    positives: list[str] = []
    negatives: list[str] = []
    hashtags: list[str] = []
    current: list[str] = []
    minus_next = False

    def close() -> None:
        if current:
            positives.append(" ".join(current))
            current.clear()

    for match in _TOKEN.finditer(text):
        sign, phrase, word = match.group("sign"), match.group("phrase"), match.group("word")
        if phrase is not None:
            phrase = " ".join(phrase.split())
            if not phrase:
                continue
            if sign in MINUS_SIGNS or minus_next:
                negatives.append(phrase)
            else:
                if sign == "+":
                    close()
                current.append(phrase)
            minus_next = False
            continue
        if word == "+":
            close()
        elif word in MINUS_SIGNS:
            minus_next = True
            continue
        elif word.startswith("#") and _strip(word[1:]):
            hashtags.append(_strip(word[1:]).lower())
        elif (word[0] in MINUS_SIGNS and _strip(word[1:])[:1].isalnum()) or minus_next:
            negatives.append(_strip(word[1:] if word[0] in MINUS_SIGNS else word))
        elif word.startswith("+") and _strip(word[1:]):
            close()
            current.append(word[1:])
        else:
            current.append(word)
        minus_next = False
    close()
    return ParsedQuery(
        tuple(t for t in positives if has_words(t)),
        tuple(t for t in negatives if has_words(t)),
        tuple(dict.fromkeys(hashtags)),
        tuple(t for t in positives if is_symbols(t)),
    )


def visible(text: str) -> str:
    """`text` without what nobody sees: a zero-width space and control characters become
    spaces, other format characters go (ZWJ and ZWNJ stay: they join letters and emoji)."""
    out = []
    for char in text:
        category = unicodedata.category(char)
        if char in _BREAKS or category == "Cc":
            out.append(" ")
        elif category != "Cf" or char in _JOINERS:
            out.append(char)
    return "".join(out)


def has_words(term: str) -> bool:
    """Whether `term` holds a letter or a digit, in any script (else there is nothing in it
    a model reads as words: punctuation, symbols, marks)."""
    return any(unicodedata.category(char)[0] in "LN" for char in term)


def is_symbols(term: str) -> bool:
    """Whether `term` is symbols without words, such as an emoji (`🐶`, `❤️`)."""
    return not has_words(term) and any(unicodedata.category(char) == "So" for char in term)


class Tokenizer(Protocol):
    """What `has_real_tokens` uses of a Hugging Face tokenizer."""

    unk_token_id: int | None

    def __call__(self, text: str, *, add_special_tokens: bool) -> Mapping[str, Any]: ...

    def decode(self, token_ids: list[int]) -> str: ...


def has_real_tokens(tokenizer: Tokenizer, text: str) -> bool:
    """Whether `tokenizer` has tokens of its own for `text` (an emoji), so that the model
    learnt something about it: no unknown token, and no token that stands for a byte of a
    character (byte-level BPE and byte fallback spell what they do not know byte by byte;
    such a token decoded alone is U+FFFD)."""
    ids = [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    unknown = getattr(tokenizer, "unk_token_id", None)
    if not ids or (unknown is not None and unknown in ids):
        return False
    pieces = [tokenizer.decode([i]) for i in ids]
    return all("\ufffd" not in piece for piece in pieces) and any(p.strip() for p in pieces)


def _strip(word: str) -> str:
    return word.strip(_EDGE_PUNCTUATION)


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The weighted sum of L2-normalised `vectors`, normalised again (float32).

    Raises `EmptyQuery` when the terms cancel out (a zero vector has no direction)."""
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.float32))
    for vector, weight in zip(vectors, weights, strict=True):
        vector = np.asarray(vector, dtype=np.float32)
        total += weight * vector / max(float(np.linalg.norm(vector)), 1e-12)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise EmptyQuery("the words of this search cancel each other out: drop a minus term")
    return (total / norm).astype(np.float32)


def hashtag(category: str) -> str:
    """How a category is written as a hashtag: "hot dog" → "#hot_dog"."""
    return "#" + category.replace(" ", "_")


def _key(name: str) -> str:
    """What two spellings of one category share: "Hot_Dog", "hot dog", "hotdog" → "hotdog"."""
    return re.sub(r"[\s_\-]+", "", name.lower())


def resolve_categories(tags: Iterable[str], known: Sequence[str]) -> tuple[str, ...]:
    """The category names that hashtags `tags` (without `#`) stand for, in order.

    Raises `NoCategories` when the index records none, `UnknownCategory` (with the
    closest names) when a tag names none of `known`."""
    tags = [tag for tag in tags if tag]
    if not tags:
        return ()
    if not known:
        raise NoCategories(
            "this index has no categories, so #hashtags cannot filter it (only COCO indexes "
            "built with annotations/instances_<split>.json have them): search with words"
        )
    by_key = {_key(name): name for name in known}
    names = []
    for tag in tags:
        name = by_key.get(_key(tag))
        if name is None:
            raise UnknownCategory(_unknown_message(tag, known))
        names.append(name)
    return tuple(dict.fromkeys(names))


def _unknown_message(tag: str, known: Sequence[str]) -> str:
    written = [hashtag(name)[1:] for name in known]
    close = difflib.get_close_matches(tag.lower().replace(" ", "_"), written, n=3, cutoff=0.6)
    if close:
        return f"no category #{tag}: did you mean {' or '.join('#' + c for c in close)}?"
    examples = " ".join("#" + c for c in sorted(written)[:8])
    return f"no category #{tag}: this index knows {len(known)} categories, e.g. {examples}"
