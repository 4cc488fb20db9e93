"""Retrieval quality: recall@K on a COCO split, the way papers report it. Used by
`python -m core eval` (operators checking a model or an index) and the tests.

- text → image R@K: the share of captions whose own picture ranks K or better among all the
  pictures of the split; image → text R@K: the share of pictures with at least one of their
  captions ranked K or better among all the captions. In percent.
- Exact: brute force over the normalised vectors (chunked numpy matrix products), as the
  papers compute it. Through the index: the same text queries against the Chroma collection
  (HNSW), when it holds exactly the split's pictures made by the same model, and with the
  captions' ranking fused in (`core.search.fusion`, as text searches are) when a captions
  collection exists.
- Like the papers, each picture keeps its first `CAPTIONS_PER_IMAGE` (5) captions.
- Ties: a wrong item scoring within `TIE_TOLERANCE` of the right one ranks before it (the
  pessimistic rank), so equal vectors never flatter a model and float noise in the last bits
  never changes a result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from core.config import Settings
from core.errors import BadEvalInput, BadImage, DatasetError
from core.images import decode_image
from core.json_files import read_json
from core.search.service import SearchService
from core.sources.coco import COCO_SPLITS, CocoReader
from core.store.database import Database, Match, VectorStore
from core.store.records import CaptionRecord, ImageRecord

if TYPE_CHECKING:  # torch and transformers load only when a model is used
    from core.models.encoder import DualEncoder

log = logging.getLogger(__name__)

KS = (1, 5, 10)
CAPTIONS_PER_IMAGE = 5
"""Captions kept per picture (the first ones): what the papers use."""
TIE_TOLERANCE = 1e-5
"""Scores this close to the right item's count as ties, and ties count against it."""
CHUNK_CELLS = 1 << 24
"""Similarities computed at a time (64 MB of float32), whatever the split's size."""
IMAGE_BATCH = 32
TEXT_BATCH = 256
QUERY_BATCH = 256
KARPATHY_SPLIT = "test"


@dataclass(frozen=True)
class Published:
    """A model's published zero-shot retrieval on the COCO 5k test split (None = unknown)."""

    text_to_image: tuple[float | None, float | None, float | None]
    image_to_text: tuple[float | None, float | None, float | None] | None
    source: str


PUBLISHED = {
    "openai/clip-vit-base-patch32": Published(
        (30.4, 55.9, 66.9), (50.1, 75.0, 83.5), "open_clip's retrieval table, COCO 5k test"
    ),
    "google/siglip-base-patch16-224": Published(
        (47.8, None, None), None, "SigLIP paper, COCO 5k test"
    ),
}


@dataclass(frozen=True)
class EvalImage:
    """One picture of the split and the captions it is evaluated with."""

    id: str
    path: str
    captions: tuple[str, ...]


@dataclass(frozen=True)
class EvalSet:
    """The pictures to evaluate on, and what they are, for people."""

    description: str
    images: tuple[EvalImage, ...]
    standard: bool = False
    """The whole Karpathy 5k test split: comparable with the published numbers."""


@dataclass(frozen=True)
class Recalls:
    """Recall@K in percent, for each K of `KS`."""

    at: tuple[tuple[int, float], ...]

    def __getitem__(self, k: int) -> float:
        return dict(self.at)[k]

    def to_json(self) -> dict[str, float]:
        return {f"R@{k}": value for k, value in self.at}


@dataclass(frozen=True)
class EvalReport:
    """What `Evaluator.run` measured."""

    model: str
    selection: str
    images: int
    captions: int
    text_to_image: Recalls
    image_to_text: Recalls
    text_to_image_index: Recalls | None = None
    text_to_image_fused: Recalls | None = None
    skipped: tuple[tuple[str, str], ...] = ()
    """(path, reason) of pictures that could not be read, left out of the evaluation."""
    notes: tuple[str, ...] = ()
    """Where the vectors came from, why a row is missing."""
    comparable: bool = False
    """Whether the published numbers were measured on the same pictures."""

    def to_json(self) -> dict:
        optional = {"text_to_image_index": self.text_to_image_index}
        optional["text_to_image_fused"] = self.text_to_image_fused
        return {
            "model": self.model,
            "images": self.images,
            "captions": self.captions,
            "text_to_image": self.text_to_image.to_json(),
            "image_to_text": self.image_to_text.to_json(),
            **{k: v.to_json() for k, v in optional.items() if v is not None},
            "split": self.selection,
            "standard_split": self.comparable,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "notes": list(self.notes),
        }


# --- the recall maths (pure) ----------------------------------------------------------------


def text_to_image_ranks(
    texts: np.ndarray, images: np.ndarray, image_of_text: np.ndarray
) -> np.ndarray:
    """The rank (1 = first) of each text's own picture among all `images`:
    1 + the number of other pictures scoring at least its score (within `TIE_TOLERANCE`).
    `image_of_text[t]` is the row of `images` that text `t` describes."""
    image_of_text = np.asarray(image_of_text)
    ranks = np.empty(len(texts), dtype=np.int64)
    step = max(1, CHUNK_CELLS // max(1, len(images)))
    for start in range(0, len(texts), step):
        sims = texts[start : start + step] @ images.T
        right = sims[np.arange(len(sims)), image_of_text[start : start + step]]
        ranks[start : start + step] = (sims >= right[:, None] - TIE_TOLERANCE).sum(axis=1)
    return ranks  # the right picture counts itself: the count is already 1 + the others


def image_to_text_ranks(
    images: np.ndarray, texts: np.ndarray, image_of_text: np.ndarray
) -> np.ndarray:
    """The best rank of each picture's own texts among all `texts`: 1 + the number of other
    pictures' texts scoring at least its best text (within `TIE_TOLERANCE`)."""
    image_of_text = np.asarray(image_of_text)
    if len(images) and np.bincount(image_of_text, minlength=len(images)).min() == 0:
        raise ValueError("every image needs at least one text")
    ranks = np.empty(len(images), dtype=np.int64)
    step = max(1, CHUNK_CELLS // max(1, len(texts)))
    for start in range(0, len(images), step):
        sims = images[start : start + step] @ texts.T
        own = image_of_text[None, :] == np.arange(start, start + len(sims))[:, None]
        best = np.where(own, sims, -np.inf).max(axis=1)
        wrong_above = (sims >= best[:, None] - TIE_TOLERANCE) & ~own
        ranks[start : start + step] = 1 + wrong_above.sum(axis=1)
    return ranks


def ranks_in_lists(found: Sequence[Sequence[str]], wanted: Sequence[str]) -> np.ndarray:
    """The rank of `wanted[i]` in the list `found[i]` (best first), or len(list) + 1 when it
    is not there (ranks beyond a list's depth are unknown: recall@K needs K <= depth)."""
    return np.array(
        [
            ids.index(w) + 1 if w in ids else len(ids) + 1
            for ids, w in zip(found, wanted, strict=True)
        ],
        dtype=np.int64,
    )


def recalls(ranks: np.ndarray, ks: Sequence[int] = KS) -> Recalls:
    """Recall@K in percent: the share of `ranks` that are K or better."""
    ranks = np.asarray(ranks)
    if len(ranks) == 0:
        raise ValueError("no ranks")
    return Recalls(tuple((k, 100.0 * float(np.mean(ranks <= k))) for k in ks))


# --- what to evaluate on --------------------------------------------------------------------


def select_coco(root: Path, split: str = "val2014", limit: int | None = None) -> EvalSet:
    """The first `limit` pictures (by id) of a COCO2014 split with captions, on disk."""
    _check_limit(limit)
    if split not in COCO_SPLITS:
        raise BadEvalInput(f"unknown COCO split {split!r}: use one of {', '.join(COCO_SPLITS)}")
    try:
        scan = CocoReader(root, [split]).scan()
    except DatasetError as err:
        raise BadEvalInput(str(err)) from None
    records = [r for r in scan.records if r.captions][:limit]
    if not records:
        raise BadEvalInput(f"no pictures with captions found in {root}/{split}")
    images = tuple(EvalImage(r.id, r.path, r.captions[:CAPTIONS_PER_IMAGE]) for r in records)
    which = f"first {len(images):,} by id" if limit is not None else "all"
    return EvalSet(f"COCO2014 {split} ({which})", images)


def select_karpathy(path: Path, coco_root: Path, limit: int | None = None) -> EvalSet:
    """The Karpathy test split (`split` == "test", 5,000 val2014 pictures) of
    `dataset_coco.json`, with its captions; the first `limit` by id when given."""
    _check_limit(limit)
    entries = _read_karpathy(Path(path))
    root = Path(coco_root).expanduser().resolve()
    images = []
    for n, entry in entries:
        try:
            folder, name = str(entry["filepath"]), str(entry["filename"])
            cocoid = int(entry["cocoid"])
            texts = [" ".join(str(s["raw"]).split()) for s in entry["sentences"]]
        except (KeyError, TypeError, ValueError):
            raise BadEvalInput(
                f"{path}: images[{n}] lacks filepath, filename, cocoid or sentences[].raw: "
                "is it Karpathy's dataset_coco.json?"
            ) from None
        if Path(folder).name != folder or Path(name).name != name or folder in ("", ".", ".."):
            raise BadEvalInput(f"{path}: images[{n}] has a bad filepath or filename")
        captions = tuple(t for t in texts if t)[:CAPTIONS_PER_IMAGE]
        if captions:
            images.append(EvalImage(str(cocoid), str(root / folder / name), captions))
    images.sort(key=lambda image: int(image.id))
    if not images:
        raise BadEvalInput(f"{path}: no {KARPATHY_SPLIT!r} pictures with sentences")
    chosen = tuple(images[:limit])
    which = f"first {len(chosen):,} by id" if limit is not None else f"{len(chosen):,} pictures"
    return EvalSet(f"Karpathy {KARPATHY_SPLIT} split ({which})", chosen, standard=limit is None)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise BadEvalInput(f"--limit must be at least 1, got {limit}")


def _read_karpathy(path: Path) -> list[tuple[int, dict]]:
    """(position, entry) of the test entries of a Karpathy split file."""
    data = read_json(path, "Karpathy split file", BadEvalInput)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise BadEvalInput(f"{path} has no 'images' list: is it Karpathy's dataset_coco.json?")
    if not all(isinstance(entry, dict) for entry in data["images"]):
        raise BadEvalInput(f"{path}: 'images' holds something that is not an object")
    return [(n, e) for n, e in enumerate(data["images"]) if e.get("split") == KARPATHY_SPLIT]


# --- the service ----------------------------------------------------------------------------


@dataclass
class _Vectors:
    """The vectors of an evaluation: pictures kept, their vectors, their texts'."""

    images: list[EvalImage]
    image_vectors: np.ndarray
    texts: list[str] = field(default_factory=list)
    image_of_text: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    text_vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 1), np.float32))
    skipped: list[tuple[str, str]] = field(default_factory=list)
    store: VectorStore[ImageRecord] | None = None
    """The collection, when it holds exactly these pictures made by this model."""


class Evaluator:
    """Measures recall@K of the configured model (and index) on an `EvalSet`."""

    def __init__(
        self,
        settings: Settings,
        encoder: DualEncoder | None = None,
        *,
        use_index: bool = True,
        progress: bool = True,
    ) -> None:
        self.settings = settings
        from core.models.encoder import DualEncoder  # here: it imports torch

        self.encoder = encoder or DualEncoder.from_settings(settings)
        self.use_index = use_index
        self.progress = progress

    def run(self, selection: EvalSet) -> EvalReport:
        """Gather the vectors, rank exactly, then through the index where it can."""
        self.encoder.load()
        notes: list[str] = []
        got = self._image_vectors(list(selection.images), notes)
        self._text_vectors(got)
        index = fused = None
        if got.store is not None:
            index, fused = self._index_recalls(got, notes)
        return EvalReport(
            model=self.settings.clip_model,
            selection=selection.description,
            images=len(got.images),
            captions=len(got.texts),
            text_to_image=recalls(
                text_to_image_ranks(got.text_vectors, got.image_vectors, got.image_of_text)
            ),
            image_to_text=recalls(
                image_to_text_ranks(got.image_vectors, got.text_vectors, got.image_of_text)
            ),
            text_to_image_index=index,
            text_to_image_fused=fused,
            skipped=tuple(got.skipped),
            notes=tuple(notes),
            comparable=selection.standard and not got.skipped,
        )

    def _image_vectors(self, images: list[EvalImage], notes: list[str]) -> _Vectors:
        """The collection's vectors when it holds all these pictures (same model, same files),
        else freshly encoded ones."""
        store, exact = self._matching_store(images, notes) if self.use_index else (None, False)
        if store is not None:
            stored = store.vectors([image.id for image in images])
            vectors = np.stack([stored[image.id] for image in images]).astype(np.float32)
            notes.append(f"picture vectors: read from collection {store.name!r}")
            return _Vectors(images, vectors, store=store if exact else None)
        return self._encode_images(images)

    def _matching_store(
        self, images: list[EvalImage], notes: list[str]
    ) -> tuple[VectorStore[ImageRecord] | None, bool]:
        """(the collection, whether it holds exactly `images`) when it holds them all, made
        by this model from the same files; else (None, False), with a note saying why."""
        name, db = self.settings.collection, Database(self.settings)
        info = db.info(name)
        if info is None or info.count == 0:
            notes.append(f"index rows: no collection {name!r}")
            return None, False
        if info.model != self.settings.clip_model or info.dim != self.encoder.dim:
            notes.append(f"index rows: collection {name!r} was built with model {info.model}")
            return None, False
        store = db.open(name, ImageRecord, model=self.settings.clip_model, dim=self.encoder.dim)
        stored = {r.id: r.path for r in store.get([image.id for image in images])}
        if any(stored.get(image.id) != image.path for image in images):
            notes.append(f"index rows: collection {name!r} lacks some of these pictures")
            return None, False
        if info.count != len(images):
            notes.append(
                f"index rows: collection {name!r} holds {info.count:,} pictures, not just "
                f"these {len(images):,}"
            )
            return store, False
        return store, True

    def _encode_images(self, images: list[EvalImage]) -> _Vectors:
        """Decode (worker threads) and embed in batches; unreadable pictures are skipped."""
        kept: list[EvalImage] = []
        parts: list[np.ndarray] = []
        skipped: list[tuple[str, str]] = []
        with (
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode") as pool,
            tqdm(total=len(images), unit="img", desc="embedding images", disable=self._bar) as bar,
        ):
            for start in range(0, len(images), IMAGE_BATCH):
                batch = images[start : start + IMAGE_BATCH]
                pixels = []
                for image, result in zip(batch, pool.map(self._pixels, batch), strict=True):
                    if isinstance(result, BadImage):
                        log.warning("skipped %s: %s", image.path, result)
                        skipped.append((image.path, str(result)))
                    else:
                        kept.append(image)
                        pixels.append(result)
                if pixels:
                    parts.append(
                        self.encoder.embed_pixels(self.encoder.batch_pixels(pixels), IMAGE_BATCH)
                    )
                bar.update(len(batch))
        if not kept:
            raise BadEvalInput(f"none of the {len(images):,} pictures could be read")
        return _Vectors(kept, np.concatenate(parts), skipped=skipped)

    def _pixels(self, image: EvalImage) -> np.ndarray | BadImage:
        try:
            decoded = decode_image(
                image.path,
                min_side=self.encoder.input_size,
                max_pixels=self.settings.max_image_pixels,
            )
        except BadImage as err:
            return err
        return self.encoder.prepare(decoded.image)

    def _text_vectors(self, got: _Vectors) -> None:
        """Every caption of the kept pictures, each distinct text embedded once."""
        got.texts = [text for image in got.images for text in image.captions]
        got.image_of_text = np.array(
            [n for n, image in enumerate(got.images) for _ in image.captions], dtype=np.int64
        )
        unique = list(dict.fromkeys(got.texts))
        parts = []
        with tqdm(
            total=len(unique), unit="caption", desc="embedding captions", disable=self._bar
        ) as bar:
            for start in range(0, len(unique), TEXT_BATCH):
                chunk = unique[start : start + TEXT_BATCH]
                parts.append(self.encoder.embed_texts(chunk, TEXT_BATCH))
                bar.update(len(chunk))
        row = {text: n for n, text in enumerate(unique)}
        got.text_vectors = np.concatenate(parts)[[row[text] for text in got.texts]]

    def _index_recalls(
        self, got: _Vectors, notes: list[str]
    ) -> tuple[Recalls | None, Recalls | None]:
        """Text → image through the collection (HNSW), and fused with the captions' ranking
        (the query's own caption left out of it) when there is a captions collection."""
        service = SearchService.open(self.settings, self.encoder)
        if service.fusion is None:
            notes.append(
                "fused row: no captions collection (build the index --with-captions) "
                "or CAPTION_FUSION=0"
            )
        depth = max(KS)
        wanted = [got.images[n].id for n in got.image_of_text]
        plain: list[list[str]] = []
        fused: list[list[str]] = []
        for start, matches in self._queries(service, got.text_vectors, depth):
            for offset, found in enumerate(matches):
                plain.append([m.record.id for m in found])
                if service.fusion is not None:
                    n = start + offset
                    skip = _own_caption(wanted[n], got.texts[n])
                    ranked = service.fusion.fuse(
                        got.text_vectors[n], found, depth, skip_caption=skip
                    )
                    fused.append([m.record.id for m in ranked])
        fused_recalls = recalls(ranks_in_lists(fused, wanted)) if fused else None
        return recalls(ranks_in_lists(plain, wanted)), fused_recalls

    def _queries(
        self, service: SearchService, vectors: np.ndarray, depth: int
    ) -> Iterator[tuple[int, list[list[Match[ImageRecord]]]]]:
        """(offset, the `depth` nearest pictures of each vector) in batches, with a bar."""
        with tqdm(
            total=len(vectors), unit="query", desc="querying the index", disable=self._bar
        ) as bar:
            for start in range(0, len(vectors), QUERY_BATCH):
                yield start, service.store.query(vectors[start : start + QUERY_BATCH], depth)
                bar.update(len(vectors[start : start + QUERY_BATCH]))

    @property
    def _bar(self) -> bool | None:
        """tqdm's `disable`: None shows bars on a terminal only."""
        return None if self.progress else True


def _own_caption(image_id: str, text: str) -> Callable[[CaptionRecord], bool]:
    """Whether a stored caption is the query itself (its picture, its words)."""

    def skip(record: CaptionRecord) -> bool:
        return record.image_id == image_id and " ".join(record.caption.split()) == text

    return skip


# --- for people -----------------------------------------------------------------------------


def format_report(report: EvalReport) -> str:
    """The report as a table, with the published numbers of the model beside it."""
    published = PUBLISHED.get(report.model)
    rows = [
        ("T→I exact", report.text_to_image, published and published.text_to_image),
        ("T→I index", report.text_to_image_index, None),
        ("T→I fused", report.text_to_image_fused, None),
        ("I→T exact", report.image_to_text, published and published.image_to_text),
    ]
    lines = [
        f"model {report.model} · {report.selection} · {report.images:,} images · "
        f"{report.captions:,} captions (first {CAPTIONS_PER_IMAGE} per image, as in the papers)",
        f"{'':<11}{'R@1':>7}{'R@5':>7}{'R@10':>7}" + ("   published" if published else ""),
    ]
    for label, values, paper in rows:
        if values is None:
            continue
        line = f"{label:<11}" + "".join(f"{values[k]:>7.1f}" for k in KS)
        if paper:
            line += "   " + " / ".join("-" if v is None else f"{v:.1f}" for v in paper)
        lines.append(line)
    if published:
        verdict = (
            "comparable: the same 5k test split"
            if report.comparable
            else "NOT comparable: measured on other pictures (only --karpathy's whole test "
            "split is; smaller sets give higher recall)"
        )
        lines.append(f"published: {published.source}; {verdict}")
    if report.skipped:
        lines.append(f"skipped {len(report.skipped):,} unreadable pictures (see the log)")
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)
