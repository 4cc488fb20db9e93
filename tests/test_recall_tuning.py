"""Text recall at the end of a build (issue 24): the depth of text searches is chosen by
measurement against exact search, recorded in the collection's metadata (read back checked:
a malformed record is no record), applied by every text search, and shown by
`python -m core status`."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import chromadb
import numpy as np
import pytest

from core.indexing import BuildOptions, run
from core.indexing import build as build_step
from core.indexing.recall import (
    Recall,
    RecallCheck,
    choose,
    exact_neighbours,
    measure,
    sample_texts,
    tune,
)
from core.models.encoder import DualEncoder
from core.search import ranking
from core.search.prepared import PreparedQuery
from core.search.ranking import Ranker
from core.search.sendable_files import SendableFiles
from core.sources.coco import CocoReader
from core.store.collection_info import embedded_info
from core.store.database import Database, VectorStore
from core.store.effort import EFFORT_KEY, SearchEffort
from core.store.records import ImageRecord
from tests.conftest import ROOT, make_settings
from tests.mini_coco import make_mini_coco

SPARSE = {"space": "cosine", "ef_construction": 8, "ef_search": 1, "max_neighbors": 8}
"""An HNSW graph too sparse for its default search: a top-10 search of random vectors finds
about half their true neighbours; one 256 candidates deep finds them all."""
PICTURES, DIM = 2000, 16


def unit(rows: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def sparse(tmp_path_factory: pytest.TempPathFactory) -> tuple[VectorStore[ImageRecord], Path]:
    """A collection of `PICTURES` random vectors on the `SPARSE` graph, every record pointing
    at one real file (so the search may send them); and that file's folder."""
    root = tmp_path_factory.mktemp("sparse")
    (root / "photo.jpg").write_bytes(b"\xff\xd8 a picture")
    settings = make_settings(root)
    store = Database(settings).open(
        "sparse", ImageRecord, model="m", dim=DIM, create=True, hnsw=SPARSE
    )
    records = [ImageRecord(id=str(n), path=str(root / "photo.jpg")) for n in range(PICTURES)]
    store.upsert(records, unit(PICTURES, seed=0))
    return store, root


class VectorsOf:
    """An encoder stand-in: the texts are "0", "1", ... and embed to given vectors."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.vectors[[int(text) for text in texts]]


def texts(count: int) -> object:
    from core.indexing.recall import TextQueries

    return TextQueries(tuple(str(n) for n in range(count)), "captions")


def clear_effort(store: VectorStore) -> None:
    """Remove the recorded effort (the raw client: the project never removes it)."""
    collection = store._connection.client.get_collection(store.name)
    metadata = {k: v for k, v in (collection.metadata or {}).items() if k != EFFORT_KEY}
    collection.modify(metadata=metadata)


# --- choosing -------------------------------------------------------------------------------


def test_the_cheapest_depth_that_meets_the_target_is_chosen() -> None:
    curve = {d: Recall(r, 0.0) for d, r in {0: 0.879, 256: 0.95, 512: 0.975, 1024: 0.99}.items()}
    asked: list[int] = []

    def recall_at(depth: int) -> Recall:
        asked.append(depth)
        return curve[depth]

    assert choose((0, 256, 512, 1024), recall_at, 0.97) == (
        512,
        [(0, curve[0]), (256, curve[256]), (512, curve[512])],
    )
    assert asked == [0, 256, 512]  # deeper ones are not measured
    assert choose((0, 256, 512, 1024), curve.__getitem__, 0.8)[0] == 0


def test_a_depth_must_clear_the_target_by_its_margin() -> None:
    """0.975 measured ±0.004 is not surely 0.97 (three standard errors: 0.963)."""
    curve = {0: Recall(0.975, 0.004), 256: Recall(0.99, 0.002)}
    assert choose((0, 256), curve.__getitem__, 0.97)[0] == 256
    assert choose((0, 256), curve.__getitem__, 0.96)[0] == 0
    assert Recall.of([1.0, 0.9, 0.8, 1.0]).mean == pytest.approx(0.925)
    assert Recall.of([1.0, 0.9, 0.8, 1.0]).stderr == pytest.approx(0.0479, abs=1e-4)


def test_the_deepest_depth_is_chosen_when_none_meets_the_target() -> None:
    curve = {0: Recall(0.6, 0.0), 256: Recall(0.8, 0.0), 512: Recall(0.9, 0.0)}
    depth, measured = choose((0, 256, 512), curve.__getitem__, 0.97)
    assert depth == 512 and measured == list(curve.items())


# --- measuring on a real collection ----------------------------------------------------------


def test_tuning_searches_deeper_where_the_default_search_misses(sparse) -> None:
    store, _ = sparse
    queries = unit(40, seed=1)
    exact = exact_neighbours(store, queries, 10)
    truth = np.argsort(-(queries @ unit(PICTURES, seed=0).T), axis=1)[:, :10]
    assert exact == [{str(n) for n in row} for row in truth]  # streamed = brute force

    check = RecallCheck(target=0.95, min_pictures=100, min_queries=10, depths=(0, 64, 256))
    tuning = tune(store, VectorsOf(queries), texts(40), check)
    effort = tuning.effort
    assert effort is not None and effort.depth == 256 and effort.met
    assert [depth for depth, _ in tuning.curve] == [0, 64, 256]
    assert tuning.curve[0][1].mean < 0.8 <= 0.95 <= tuning.curve[-1][1].low
    assert (effort.queries, effort.source, effort.target) == (40, "captions", 0.95)
    assert store.search_effort() == effort
    assert embedded_info(store._connection.embedded_path, "sparse").effort == effort
    assert "search depth 256" in tuning.describe() and "default" in tuning.describe()

    easy = tune(store, VectorsOf(queries), texts(40), RecallCheck(0.3, 300, 100, 10))
    assert easy.effort is not None and easy.effort.depth == 0 and len(easy.curve) == 1
    assert store.search_effort() == easy.effort  # replaced


def test_an_unreachable_target_takes_the_deepest_search_and_says_so(sparse) -> None:
    store, _ = sparse
    check = RecallCheck(target=1.0, min_pictures=100, min_queries=10, depths=(0, 16))
    tuning = tune(store, VectorsOf(unit(30, seed=2)), texts(30), check)
    assert tuning.effort is not None and tuning.effort.depth == 16
    assert not tuning.effort.met and tuning.effort.recall < 1.0
    assert "below the target" in tuning.describe()
    assert store.search_effort() == tuning.effort


def test_too_few_pictures_or_queries_measure_nothing(sparse) -> None:
    store, _ = sparse
    clear_effort(store)
    encoder = VectorsOf(unit(30, seed=3))
    small = tune(store, encoder, texts(30), RecallCheck(min_pictures=PICTURES + 1))
    assert small.effort is None and "too few pictures (2,000" in small.skipped
    few = tune(store, encoder, texts(5), RecallCheck(min_pictures=100, min_queries=10))
    assert few.effort is None and "5 text queries" in few.skipped
    assert "not measured" in few.describe()
    assert store.search_effort() is None  # the defaults stay


def test_the_sample_is_the_same_whatever_the_order() -> None:
    records = [
        ImageRecord(id=str(n), path=f"/x/{n}.jpg", captions=(f"a {n}", f"b {n}"))
        for n in range(50)
    ] + [ImageRecord(id=f"bare{n}", path=f"/x/bare{n}.jpg") for n in range(50)]
    sample = sample_texts(records, ("dog",), 10)
    assert sample == sample_texts(list(reversed(records)), ("dog",), 10)
    assert sample.source == "captions" and len(sample.texts) == 10
    numbers = {text.split()[1] for text in sample.texts}
    assert len(numbers) == 10  # one caption per picture
    named = sample_texts(records[50:], ("zebra", "dog", "dog"), 10)
    assert named.texts == ("a photo of a dog", "a photo of a zebra")
    assert named.source == "category names"


# --- the record: stored, read back, checked ---------------------------------------------------

GOOD = SearchEffort(512, 0.975, 0.004, 300, "captions", 0.97, True)


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        json.dumps(["a list"]),
        json.dumps({**json.loads(GOOD.to_metadata()), "depth": -1}),
        json.dumps({**json.loads(GOOD.to_metadata()), "depth": 10**9}),
        json.dumps({**json.loads(GOOD.to_metadata()), "depth": True}),
        json.dumps({**json.loads(GOOD.to_metadata()), "depth": 512.0}),
        json.dumps({**json.loads(GOOD.to_metadata()), "recall": 1.5}),
        json.dumps({**json.loads(GOOD.to_metadata()), "recall": "0.9"}),
        json.dumps({**json.loads(GOOD.to_metadata()), "stderr": -0.1}),
        json.dumps({**json.loads(GOOD.to_metadata()), "target": 0}),
        json.dumps({**json.loads(GOOD.to_metadata()), "queries": 0}),
        json.dumps({**json.loads(GOOD.to_metadata()), "source": "anything"}),
        json.dumps({**json.loads(GOOD.to_metadata()), "met": 1}),
        GOOD.to_metadata().replace("0.975", "NaN"),
        GOOD.to_metadata()[:-1] + ', "pad": "' + "x" * 2000 + '"}',
        json.dumps({k: v for k, v in json.loads(GOOD.to_metadata()).items() if k != "met"}),
    ],
)
def test_a_malformed_effort_is_no_effort(value: str) -> None:
    assert SearchEffort.from_metadata({EFFORT_KEY: value}) is None


def test_an_effort_round_trips_through_the_metadata() -> None:
    assert SearchEffort.from_metadata({EFFORT_KEY: GOOD.to_metadata()}) == GOOD
    assert SearchEffort.from_metadata({EFFORT_KEY: 512}) is None
    assert SearchEffort.from_metadata({}) is None


def test_a_malformed_stored_effort_leaves_the_defaults(sparse) -> None:
    store, root = sparse
    collection = chromadb.PersistentClient(path=str(root / "chroma")).get_collection("sparse")
    collection.modify(metadata={**(collection.metadata or {}), EFFORT_KEY: '{"depth": 99999}'})
    assert store.search_effort() is None
    assert embedded_info(root / "chroma", "sparse").effort is None
    assert Ranker(store, SendableFiles(lambda: (str(root),)), None, None).text_depth() == 0


# --- the search applies it --------------------------------------------------------------------


def test_text_searches_go_as_deep_as_recorded(sparse, monkeypatch: pytest.MonkeyPatch) -> None:
    store, root = sparse
    clear_effort(store)
    queries = unit(30, seed=4)
    exact = exact_neighbours(store, queries, 10)

    def recall(ranker: Ranker, text: bool) -> float:
        hits = 0
        for vector, truth in zip(queries, exact, strict=True):
            prepared = PreparedQuery(vector=tuple(map(float, vector)), fuse_captions=text)
            kept = ranker.rank(prepared, 10, None, PICTURES).kept[:10]
            hits += len(truth & {m.record.id for m in kept})
        return hits / (10 * len(queries))

    monkeypatch.setattr(ranking, "EFFORT_MAX_AGE_S", 0.0)  # a new record applies at once
    ranker = Ranker(store, SendableFiles(lambda: (str(root),)), None, None)
    default = recall(ranker, text=True)
    assert default < 0.8
    store.record_search_effort(SearchEffort(256, 1.0, 0.0, 30, "captions", 0.97, True))
    assert ranker.text_depth() == 256
    assert recall(ranker, text=True) >= 0.97
    assert recall(ranker, text=False) == default  # a picture query keeps the default search
    assert store.query(queries[:1], 10, depth=256)[0][0].record.path == str(root / "photo.jpg")


def test_a_recorded_effort_is_read_again_after_a_while(
    sparse, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, root = sparse
    store.record_search_effort(SearchEffort(64, 0.9, 0.01, 30, "captions", 0.97, False))
    ranker = Ranker(store, SendableFiles(lambda: (str(root),)), None, None)
    assert ranker.text_depth() == 64
    store.record_search_effort(SearchEffort(512, 0.99, 0.003, 30, "captions", 0.97, True))
    assert ranker.text_depth() == 64  # cached
    monkeypatch.setattr(ranking, "EFFORT_MAX_AGE_S", 0.0)
    assert ranker.text_depth() == 512


# --- at the end of a build --------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder() -> DualEncoder:
    encoder = DualEncoder(
        str(ROOT / "tests" / "fixtures" / "tiny_clip"), device="cpu", dtype="float32"
    )
    encoder.load()
    return encoder


def build_mini(settings, encoder: DualEncoder):
    reader = CocoReader(settings.coco_root, ("val2014",))
    return run(settings, reader, BuildOptions(progress=False), encoder=encoder)


def test_a_build_measures_text_recall_and_status_shows_it(
    tmp_path: Path, encoder: DualEncoder, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    settings = make_settings(tmp_path, coco_root=tmp_path / "coco", recall_target=0.9)
    make_mini_coco(settings.coco_root, {"val2014": 24})
    small = build_mini(settings, encoder)
    assert small.recall is not None and small.recall.effort is None
    assert "too few pictures (24" in small.recall.skipped
    assert "text recall" not in run_cli(settings, "status").stdout

    monkeypatch.setattr(build_step, "RecallCheck", functools.partial(RecallCheck, min_pictures=10))
    make_mini_coco(settings.coco_root, {"val2014": 30})  # six more: the build changes
    summary = build_mini(settings, encoder)
    effort = summary.recall.effort if summary.recall else None
    assert effort is not None and effort.source == "captions" and effort.queries == 30
    assert (effort.depth, effort.target, effort.met) == (0, 0.9, True)  # a tiny graph is exact
    status = run_cli(settings, "status")
    assert status.returncode == 0
    assert (
        "text recall@10 1.000 ±0.000 at the default search depth (target 0.9), measured on 30 "
        "captions"
        in status.stdout
    )

    again = build_mini(settings, encoder)  # nothing changed: not measured again
    assert again.up_to_date and again.recall is None
    retargeted = settings.model_copy(update={"recall_target": 0.95})
    assert build_mini(retargeted, encoder).recall is not None  # another target: measured


def test_measure_counts_the_share_of_the_exact_top_10(sparse) -> None:
    store, _ = sparse
    queries = unit(10, seed=5)
    exact = exact_neighbours(store, queries, 10)
    assert measure(store, queries, exact, 1024) == Recall(1.0, 0.0)
    assert measure(store, queries, [{"nope"} for _ in exact], 1024) == Recall(0.0, 0.0)
