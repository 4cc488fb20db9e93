"""Query latency and ANN recall over an embedded collection of COCO2014's size (123,287
vectors with metadata), through the bot's own path, with the encoder's default query
runtime (ENCODER_RUNTIME=auto) and with torch, side by side in one run:

- text, the bot's real path: `python -m bot` (two processes, one per runtime, each with its
  own copy of the store and its own fake Telegram server on 127.0.0.1, which answers without
  Nagle's delay as Telegram does), a text message injected as an update, timed to the moment
  the album's request (sendMediaGroup) reaches the fake server; the two bots are asked in
  turn, after a warm-up each;
- where that time goes, in process through the calls the bot makes (bot/services.py): the
  tokenizer, the encoder (`embed_texts`), `prepare_texts` and the first `page` (Chroma,
  near-duplicates, file checks), per runtime, interleaved; and a photo search (640×480
  JPEG decode → encode → page);
- fidelity of the default runtime on the benchmark's queries: the lowest cosine of its text
  vectors with float32 torch's, and the overlap of their exact top-10 over the collection;
- the towers alone, each runtime side by side: the text tower (one 12-token query) and the
  image tower (one picture; and a batch of 32, the index builder's) in torch float32 and
  bfloat16 and in ONNX Runtime float32 and int8 (the files ENCODER_RUNTIME=auto exported);
- recall@10 of Chroma's HNSW against exact search on the same CLIP-like vectors, for the
  project's HNSW settings and for Chroma's defaults, side by side.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.common import (
    Timings,
    bench_settings,
    clip_like_vectors,
    make_photos,
    start_bot,
    subprocess_env,
    vit_b32_dir,
)
from bench.report import document, table

COCO_SIZE = 123_287
QUERIES = [
    "a dog running on a beach",
    "two cats sleeping on a sofa",
    "a red double decker bus in the rain",
    "a man riding a horse in a field",
    "a plate of food with broccoli and rice",
    "a group of people flying kites in a park",
    "a kitchen with a stove and a refrigerator",
    "a train stopped at a station",
    "a child holding an umbrella",
    "a bowl of fruit on a wooden table",
]
CHROMA_DEFAULT_HNSW = {
    "space": "cosine",
    "ef_construction": 100,
    "ef_search": 100,
    "max_neighbors": 16,
}
K = 10
"""Results per query (the bot's TOP_K here: an album of 10)."""
WARM_UP = 5
"""Queries of each kind run before the timed ones."""
BOT_USERS = 10
"""The bot's queries come from this many users in turn."""
PARTS = ("tokenizer", "encode", "prepare", "page", "image")
TOWER_QUERY = "a photo of a dog running on a sandy beach"
"""12 CLIP tokens, as the issue's measurements."""
TOWER_RUNS = {"text": 150, "image": 50, "image ×32": 5}
"""Timed calls per runtime after one warm-up, the runtimes in turn."""


@dataclass(frozen=True)
class AnnRecall:
    """One HNSW configuration against exact search: recall@10 and query times, for
    image-like and text-like query vectors."""

    image: float
    image_ms: Timings
    text_like: float
    text_like_ms: Timings


@dataclass(frozen=True)
class Fidelity:
    """A runtime's text vectors for QUERIES against float32 torch's."""

    min_cosine: float
    top10_overlap: float
    """The mean share of float32 torch's exact top-10 (over the collection) found."""


@dataclass(frozen=True)
class RuntimeRun:
    """One query runtime: the bot's text path, in-process parts, and fidelity."""

    name: str
    """"auto: text onnx-int8, images onnx-int8" or "torch"."""
    bot_text: Timings
    """update → the album's first request, through `python -m bot`."""
    bot_dispatch: Timings
    """update → the handler's first request (its "sending photo…" chat action): the long
    poll's answer, python-telegram-bot's dispatch, the access and rate checks."""
    parts: dict[str, Timings]
    """In process: tokenizer, encode (tokenizer + model), prepare (`prepare_texts`), page
    (the first page: Chroma + ranking + file checks), image (a whole photo search)."""
    fidelity: Fidelity


@dataclass(frozen=True)
class Towers:
    """Each tower alone, per runtime ("torch float32", "onnx-int8", ...)."""

    text: dict[str, Timings]
    image: dict[str, Timings]
    image_batch: dict[str, Timings]
    """A batch of 32 pictures (the index builder's), torch bfloat16 and onnx-int8."""


@dataclass(frozen=True)
class QueryLatency:
    """What `measure` found."""

    vectors: int
    queries: int
    tokenizer: str
    dtype: str
    insert_per_s: float
    default: RuntimeRun
    """ENCODER_RUNTIME=auto (the default)."""
    torch: RuntimeRun
    """ENCODER_RUNTIME=torch (the comparison: the path before ONNX Runtime)."""
    hnsw: dict
    project: AnnRecall
    """The project's HNSW settings (`core.store.database.HNSW`)."""
    chroma_defaults: AnnRecall
    towers: Towers

    def to_json(self) -> dict:
        default, torch = self.default, self.torch
        return {
            "vectors": self.vectors,
            "tokenizer": self.tokenizer,
            "dtype": self.dtype,
            "encoder_runtime": default.name,
            "insert_per_s": round(self.insert_per_s),
            "text_p50_ms": default.bot_text.p50_ms,
            "text_p95_ms": default.bot_text.p95_ms,
            "text_torch_p50_ms": torch.bot_text.p50_ms,
            "text_torch_p95_ms": torch.bot_text.p95_ms,
            "text_dispatch_p50_ms": default.bot_dispatch.p50_ms,
            "image_p50_ms": default.parts["image"].p50_ms,
            "image_p95_ms": default.parts["image"].p95_ms,
            "image_torch_p50_ms": torch.parts["image"].p50_ms,
            "image_torch_p95_ms": torch.parts["image"].p95_ms,
            "text_min_cosine_fp32": round(default.fidelity.min_cosine, 5),
            "text_top10_overlap_fp32": round(default.fidelity.top10_overlap, 4),
            "text_torch_min_cosine_fp32": round(torch.fidelity.min_cosine, 5),
            "text_torch_top10_overlap_fp32": round(torch.fidelity.top10_overlap, 4),
            "breakdown_ms": {
                run.name: {part: asdict(t) for part, t in run.parts.items()}
                for run in (default, torch)
            },
            "towers_ms": {
                kind: {runtime: asdict(t) for runtime, t in times.items()}
                for kind, times in _tower_times(self.towers).items()
            },
            "ann_recall_at_10": round(self.project.image, 4),
            "ann_query_ms": asdict(self.project.image_ms),
            "hnsw": self.hnsw,
            "chroma_default_recall_at_10": round(self.chroma_defaults.image, 4),
            "chroma_default_query_ms": asdict(self.chroma_defaults.image_ms),
            "ann_recall_at_10_text_like": round(self.project.text_like, 4),
            "ann_query_text_like_ms": asdict(self.project.text_like_ms),
            "chroma_default_recall_at_10_text_like": round(self.chroma_defaults.text_like, 4),
        }

    def to_markdown(self) -> str:
        default, torch = self.default, self.torch
        title = (
            f"{self.vectors:,} vectors with metadata, ViT-B/32 {self.dtype}, {self.queries} "
            f"queries each, tokenizer: {self.tokenizer}"
        )
        bot = table(
            f"A text query through the bot (update → the album's first request), {title}",
            ["ENCODER_RUNTIME", "p50 ms", "p95 ms", "target"],
            [
                [f"{default.name} (default)", *_cells(default.bot_text), "p50 ≤ 10"],
                [torch.name, *_cells(torch.bot_text), ""],
            ],
        )
        parts = table(
            "Where a text query's time goes (p50 / p95 ms; in process except the first row)",
            ["part", default.name, torch.name],
            _part_rows(self),
        )
        fidelity = (
            f"Fidelity on the {len(QUERIES)} benchmark queries against float32 torch: lowest "
            f"cosine {default.fidelity.min_cosine:.5f} ({default.name}) and "
            f"{torch.fidelity.min_cosine:.5f} (torch {self.dtype}); exact top-10 over the "
            f"{self.vectors:,} vectors shared {default.fidelity.top10_overlap:.3f} and "
            f"{torch.fidelity.top10_overlap:.3f}."
        )
        return document(bot, parts, fidelity, _towers_table(self.towers), _recall_table(self))


def coco_like_record(n: int, photo: Path):
    """Record `n` of a benchmark collection: the metadata a COCO record carries (split, size,
    five captions, file size and mtime), all pointing at one real photo."""
    from core.store.records import ImageRecord

    return ImageRecord(
        id=str(n),
        path=str(photo),
        split="train2014",
        width=640,
        height=480,
        captions=tuple(f"{QUERIES[(n + i) % len(QUERIES)]} number {n}" for i in range(5)),
        file_size=150_000,
        mtime_ns=1_700_000_000_000_000_000 + n,
    )


def build(settings, name: str, vectors: np.ndarray, photo: Path, hnsw: dict):
    """A collection of `vectors` with COCO-like records; returns (store, inserts per second)."""
    from core.search.sendable_files import record_roots
    from core.store.database import Database
    from core.store.records import ImageRecord

    records = [coco_like_record(n, photo) for n in range(len(vectors))]
    store = Database(settings).open(
        name, ImageRecord, model=settings.clip_model, dim=vectors.shape[1], create=True, hnsw=hnsw
    )
    record_roots(settings, [str(photo.resolve().parent)])  # the search sends only files there
    started = time.perf_counter()
    store.upsert(records, vectors)
    return store, len(vectors) / (time.perf_counter() - started)


def ann_top_k(store, queries: np.ndarray, k: int) -> tuple[list[list[str]], list[float]]:
    """The ids of each query's `k` nearest records through the store (HNSW), one query at a
    time with metadata, as the bot asks; and each query's seconds."""
    found, latencies = [], []
    for query in queries:
        started = time.perf_counter()
        [matches] = store.query(query[None, :], k)
        latencies.append(time.perf_counter() - started)
        found.append([m.record.id for m in matches])
    return found, latencies


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int, chunk: int = 100_000) -> np.ndarray:
    """Row indices of each query's `k` nearest rows of `base` by brute force (inner product of
    unit vectors), best first; `chunk` rows at a time, so a million rows need little scratch."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(base), chunk):
        scores = queries @ base[start : start + chunk].T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        best_scores = np.hstack([best_scores, np.take_along_axis(scores, top, axis=1)])
        best_rows = np.hstack([best_rows, top + start])
        keep = np.argsort(-best_scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
        best_rows = np.take_along_axis(best_rows, keep, axis=1)
    return best_rows


def recall(found: list[list[str]], exact: np.ndarray) -> float:
    """Mean share of the exact top-k rows (ids `str(row)`) among the ids found."""
    hits = [
        len(set(f) & {str(row) for row in e}) / len(e) for f, e in zip(found, exact, strict=True)
    ]
    return float(np.mean(hits))


def text_like(queries: np.ndarray, seed: int = 1) -> np.ndarray:
    """Queries shaped like CLIP text embeddings of these pictures: CLIP's texts and images
    lie in two cones apart (the modality gap), so a caption's vector has a cosine of only
    about 0.3 with its picture's and sits off the image manifold, where an HNSW graph
    built from image vectors is harder to navigate than for image queries. Model: the
    picture's vector scaled to 0.3, plus one shared gap direction, plus noise."""
    rng = np.random.default_rng(seed)
    gap = rng.normal(size=queries.shape[1])
    gap /= np.linalg.norm(gap)
    noise = rng.normal(size=queries.shape) * 0.3 / np.sqrt(queries.shape[1])
    texts = 0.3 * queries + 0.9 * gap + noise
    return (texts / np.linalg.norm(texts, axis=1, keepdims=True)).astype(np.float32)


def measure(quick: bool, workdir: Path) -> QueryLatency:
    """Build the collection twice (the project's HNSW settings and Chroma's defaults), measure
    ANN recall on both, then time searches through the bot's path with the default query
    runtime and with torch, side by side."""
    count = 20_000 if quick else COCO_SIZE
    n_queries = 60 if quick else 200
    clip_dir = vit_b32_dir()
    photos = make_photos(workdir.parent / "photos", n_queries)
    vectors = clip_like_vectors(count + 300)
    base, held_out = vectors[:count], vectors[count:]
    settings = bench_settings(workdir, clip_dir.path, collection="latency", top_k=K)

    store, insert_rate = build(settings, "latency", base, photos[0], _project_hnsw())
    default_store, _ = build(settings, "chroma_defaults", base, photos[0], CHROMA_DEFAULT_HNSW)
    texts = text_like(held_out)
    project = ann_recall(store, base, held_out, texts)
    defaults = ann_recall(default_store, base, held_out, texts)
    # ENCODER_RUNTIME=auto exports and measures here, once: the bot below finds it cached.
    searches = {"auto": open_search(settings), "torch": open_search(settings, runtime="torch")}
    parts = in_process(searches, [p.read_bytes() for p in photos])
    fidelity = text_fidelity(searches, clip_dir.path, base)
    bot = bot_searches(settings, workdir, n_queries)
    towers = towers_alone(clip_dir.path, settings.chroma_path)
    names = {"auto": _runtime_name(searches["auto"]), "torch": "torch"}
    runs = {
        r: RuntimeRun(names[r], *bot[r], parts=parts[r], fidelity=fidelity[r]) for r in searches
    }
    return QueryLatency(
        vectors=count,
        queries=n_queries,
        tokenizer=clip_dir.tokenizer,
        dtype=str(searches["auto"].encoder.dtype).removeprefix("torch."),
        insert_per_s=insert_rate,
        default=runs["auto"],
        torch=runs["torch"],
        hnsw=_project_hnsw(),
        project=project,
        chroma_defaults=defaults,
        towers=towers,
    )


def ann_recall(store, base: np.ndarray, images: np.ndarray, texts: np.ndarray) -> AnnRecall:
    """Recall@10 and query times of `store` for image-like and text-like query vectors."""
    image, image_ms = recall_at_10(store, base, images)
    text, text_ms = recall_at_10(store, base, texts)
    return AnnRecall(image, image_ms, text, text_ms)


def recall_at_10(store, base: np.ndarray, queries: np.ndarray) -> tuple[float, Timings]:
    found, latencies = ann_top_k(store, queries, 10)
    return recall(found, exact_top_k(base, queries, 10)), Timings.of(latencies)


# --- in process: the calls the bot makes ------------------------------------------------------


def open_search(settings, runtime: str | None = None):
    """The search service as the bot opens it (`SearchService.open`: the encoder, the
    collection, the host's roots, the options), with ENCODER_RUNTIME `runtime` when given."""
    from core.search.service import SearchService

    if runtime is not None:
        settings = settings.model_copy(update={"encoder_runtime": runtime})
    return SearchService.open(settings)


def text_search(search, text: str) -> None:
    """A text message, as the bot answers it: its micro-batcher prepares the batch of texts
    (here one) in one encoder call, then the first page is read."""
    [prepared] = search.prepare_texts([text])
    _check(search.page(prepared, K))


def photo_search(search, photo: bytes) -> None:
    """A photo, as the bot answers it: prepare its query (decode, embed), read the first
    page."""
    from core.search.service import Query

    _check(search.page(search.prepare(Query(picture=photo)), K))


def in_process(searches: dict, photos: list[bytes]) -> dict[str, dict[str, Timings]]:
    """Each part of a text search, and a photo search, per runtime: after a warm-up, one
    query of each kind per runtime in turn (drift hits all alike); one photo per query."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(vit_b32_dir().path)
    for n in range(WARM_UP):
        for search in searches.values():
            text_search(search, QUERIES[n])
            photo_search(search, photos[n])
    seconds = {r: {part: [] for part in PARTS} for r in searches}
    for n, photo in enumerate(photos):
        text = QUERIES[n % len(QUERIES)]
        for runtime, search in searches.items():
            took = seconds[runtime]
            took["tokenizer"].append(_seconds(_tokenize, tokenizer, text))
            took["encode"].append(_seconds(search.encoder.embed_texts, [text]))
            started = time.perf_counter()
            [prepared] = search.prepare_texts([text])
            took["prepare"].append(time.perf_counter() - started)
            took["page"].append(_seconds(lambda p=prepared, s=search: _check(s.page(p, K))))
            took["image"].append(_seconds(photo_search, search, photo))
    return {r: {part: Timings.of(s) for part, s in parts.items()} for r, parts in seconds.items()}


def text_fidelity(searches: dict, clip: Path, base: np.ndarray) -> dict[str, Fidelity]:
    """Each runtime's text vectors for QUERIES against float32 torch's: the lowest cosine,
    and the share of the exact top-10 over `base` they keep."""
    from core.models.encoder import DualEncoder

    float32 = DualEncoder(str(clip), device="cpu", dtype="float32").embed_texts(QUERIES)
    expected = exact_top_k(base, float32, K)
    out = {}
    for runtime, search in searches.items():
        vectors = search.encoder.embed_texts(QUERIES)
        found = exact_top_k(base, vectors, K)
        overlap = [len(set(f) & set(e)) / K for f, e in zip(found, expected, strict=True)]
        cosine = float((vectors * float32).sum(axis=1).min())
        out[runtime] = Fidelity(cosine, float(statistics.fmean(overlap)))
    return out


def towers_alone(clip: Path, chroma: Path) -> Towers:
    """Each tower's milliseconds per runtime, the runtimes in turn: torch float32 and
    bfloat16, ONNX Runtime float32 and int8 (ENCODER_RUNTIME=auto's files under `chroma`)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from core.models.onnx_files import DIGEST_GLOB, DIRECTORY
    from core.models.onnx_towers import IMAGE, TEXT, OnnxTower, torch_features

    models = {
        f"torch {d}": AutoModel.from_pretrained(clip, dtype=getattr(torch, d)).eval()
        for d in ("float32", "bfloat16")
    }
    tokens = dict(AutoTokenizer.from_pretrained(clip)([TOWER_QUERY], return_tensors="pt"))
    pixels = torch.randn(32, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    out = {}
    for kind, tower, inputs in (
        ("text", TEXT, tokens),
        ("image", IMAGE, {"pixel_values": pixels[:1]}),
        ("image ×32", IMAGE, {"pixel_values": pixels}),
    ):
        runs = {
            name: lambda i=inputs, m=model, t=tower: torch_features(m, t, _cast(i, m.dtype))
            for name, model in models.items()
            if kind != "image ×32" or name == "torch bfloat16"
        }
        for runtime in ("onnx", "onnx-int8") if kind != "image ×32" else ("onnx-int8",):
            files = (chroma / DIRECTORY).glob(f"*/{tower}-{runtime}-{DIGEST_GLOB}.onnx")
            path = max(files, key=lambda f: f.stat().st_mtime_ns)  # the latest export
            runs[runtime] = OnnxTower(str(path), torch.get_num_threads()).run
        with torch.inference_mode():
            out[kind] = _interleaved(runs, inputs, TOWER_RUNS[kind])
    return Towers(out["text"], out["image"], out["image ×32"])


def _cast(inputs: dict, dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}


def _interleaved(runs: dict, inputs: dict, repeats: int) -> dict[str, Timings]:
    """Milliseconds per run of `inputs`: one warm-up each, then `repeats` rounds in turn."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run(inputs)
    for _ in range(repeats):
        for name, run in runs.items():
            seconds[name].append(_seconds(run, inputs))
    return {name: Timings.of(s) for name, s in seconds.items()}


def _tokenize(tokenizer, text: str) -> None:
    """The tokenizer call `embed_texts` makes for one CLIP query."""
    tokenizer([text], padding=True, truncation=True, max_length=77, return_tensors="pt")


# --- the bot's real path ----------------------------------------------------------------------


def bot_searches(settings, workdir: Path, count: int) -> dict[str, tuple[Timings, Timings]]:
    """`count` text queries to each of two bots, ENCODER_RUNTIME=auto and torch, in turn,
    after a warm-up each: (update → the album's first request, update → the handler's first
    request). Each bot has its own copy of the store (their file_id caches belong to their
    own fake servers)."""
    copy = workdir / "chroma-torch"
    shutil.copytree(settings.chroma_path, copy, dirs_exist_ok=True)
    bot = settings.model_copy(
        update={"rate_limit_per_minute": 0, "vqa_enabled": False, "micro_batch": True}
    )
    runs = {
        "auto": bot,
        "torch": bot.model_copy(update={"chroma_path": copy, "encoder_runtime": "torch"}),
    }
    seconds: dict[str, list[tuple[float, float]]] = {runtime: [] for runtime in runs}
    with contextlib.ExitStack() as stack:
        bots = {r: stack.enter_context(running_bot(s, workdir, r)) for r, s in runs.items()}
        for n in range(WARM_UP):
            for tg in bots.values():
                bot_query(tg, QUERIES[n], 9000 + n)
        for n in range(count):
            for runtime, tg in bots.items():
                seconds[runtime].append(
                    bot_query(tg, QUERIES[n % len(QUERIES)], 7000 + n % BOT_USERS)
                )
    return {
        runtime: (Timings.of([album for album, _ in s]), Timings.of([start for _, start in s]))
        for runtime, s in seconds.items()
    }


@contextlib.contextmanager
def running_bot(settings, workdir: Path, name: str) -> Iterator:
    """`python -m bot` with `settings` against its own fake Telegram server (yielded)."""
    from tests.fake_telegram import FakeTelegram

    with FakeTelegram() as tg:
        _no_nagle(tg)
        proc = start_bot(subprocess_env(settings, **tg.env()), workdir, workdir / f"bot-{name}.log")
        try:
            yield tg
        finally:
            proc.terminate()
            proc.wait(60)


def _no_nagle(tg) -> None:
    """The fake server's answers leave at once, as Telegram's do (TCP_NODELAY, which the
    connections it accepts inherit): otherwise Nagle's algorithm holds each answer's body
    until the bot's delayed ACK, 40 ms on Linux per update, a cost of the fake (its headers
    and body are two writes), not of the bot."""
    tg._server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def bot_query(tg, text: str, user: int) -> tuple[float, float]:
    """Seconds from injecting `text` as `user`'s update to the arrival of the album's
    request, and to the arrival of the handler's chat action; returns once the bot has also
    sent the message under the album."""
    since, mark = len(tg.sent_to(user)), tg.mark()
    asked = time.monotonic()
    tg.inject_text(text, user_id=user)
    album, _buttons = tg.wait_sent(user, 2, timeout=120, since=since)[:2]
    assert album.kind == "media_group" and len(album.messages) == K, album
    action = tg.wait_for(
        lambda c: c.method == "sendChatAction" and c.params.get("chat_id") == user, since=mark
    )
    return album.call.time - asked, action.time - asked


# --- helpers ----------------------------------------------------------------------------------


def _runtime_name(search) -> str:
    """ "auto: text onnx-int8, images onnx-int8" (what ENCODER_RUNTIME=auto chose)."""
    tuned = search.encoder.tuning
    runtime = tuned.runtime if tuned is not None else None
    return f"auto: text {runtime.text}, images {runtime.image}" if runtime else "auto"


def _part_rows(result: QueryLatency) -> list[list[object]]:
    default, torch = result.default, result.torch
    labels = {
        "tokenizer": "tokenizer (CLIP BPE, one query)",
        "encode": "encode: tokenizer + text tower (`embed_texts`)",
        "prepare": "prepare: read the query + encode (`prepare_texts`)",
        "page": "first page: Chroma top-25 + near-duplicates + file checks (`page`)",
    }
    rows = [
        ["the bot's whole path (above)", _pair(default.bot_text), _pair(torch.bot_text)],
        [
            "of which update → the handler's first request (poll, dispatch, checks)",
            _pair(default.bot_dispatch),
            _pair(torch.bot_dispatch),
        ],
    ]
    rows += [[label, _pair(default.parts[p]), _pair(torch.parts[p])] for p, label in labels.items()]
    rest = [
        round(run.bot_text.p50_ms - run.parts["prepare"].p50_ms - run.parts["page"].p50_ms, 2)
        for run in (default, torch)
    ]
    rows.append(["rest of the bot's path (whole − prepare − page, p50)", *rest])
    rows.append(["Chroma top-10 alone (project HNSW)", _pair(result.project.image_ms), ""])
    rows.append(
        [
            "photo search: JPEG decode → encode → first page (in process)",
            _pair(default.parts["image"]),
            _pair(torch.parts["image"]),
        ]
    )
    return rows


def _towers_table(towers: Towers) -> str:
    runtimes = list(towers.text)
    rows = [
        [kind, *(_pair(times[r]) if r in times else "" for r in runtimes)]
        for kind, times in (
            ("text tower, one 12-token query", towers.text),
            ("image tower, one picture", towers.image),
            ("image tower, a batch of 32 (the index builder's)", towers.image_batch),
        )
    ]
    return table("The towers alone (p50 / p95 ms), side by side", ["", *runtimes], rows)


def _tower_times(towers: Towers) -> dict[str, dict[str, Timings]]:
    return {"text": towers.text, "image": towers.image, "image_batch_32": towers.image_batch}


def _recall_table(result: QueryLatency) -> str:
    project, defaults = result.project, result.chroma_defaults
    return table(
        f"ANN recall@10 vs exact search, {result.vectors:,} CLIP-like vectors",
        ["HNSW settings", "recall@10, image queries", "recall@10, text-like", "query p50 ms"],
        [
            [
                f"project: {_describe(result.hnsw)}",
                f"{project.image:.3f}",
                f"{project.text_like:.3f}",
                project.image_ms.p50_ms,
            ],
            [
                f"Chroma defaults: {_describe(CHROMA_DEFAULT_HNSW)}",
                f"{defaults.image:.3f}",
                f"{defaults.text_like:.3f}",
                defaults.image_ms.p50_ms,
            ],
        ],
    )


def _cells(timings: Timings) -> list[float]:
    return [timings.p50_ms, timings.p95_ms]


def _pair(timings: Timings) -> str:
    return f"{timings.p50_ms} / {timings.p95_ms}"


def _seconds(call, *args: object) -> float:
    started = time.perf_counter()
    call(*args)
    return time.perf_counter() - started


def _check(page) -> None:
    """A search of the benchmark finds a whole page."""
    assert len(page.hits) == K, f"{len(page.hits)} hits, not {K}"


def _project_hnsw() -> dict:
    from core.store.database import HNSW

    return dict(HNSW)


def _describe(hnsw: dict) -> str:
    return (
        f"M={hnsw['max_neighbors']}, ef_construction={hnsw['ef_construction']}, "
        f"ef_search={hnsw['ef_search']}"
    )
