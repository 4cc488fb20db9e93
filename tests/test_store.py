from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from core.errors import IndexEmpty, IndexGone, ModelMismatch, StoreUnavailable
from core.store import database as store_module
from core.store.database import Database
from core.store.effort import SearchEffort
from core.store.records import CaptionRecord, ImageRecord
from tests.auth_proxy import AuthProxy
from tests.chroma_run import ChromaServer, free_port
from tests.conftest import make_settings


def unit_vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def records(n: int) -> list[ImageRecord]:
    return [
        ImageRecord(
            id=str(i),
            path=f"/data/img{i}.jpg",
            split="val2014",
            width=640,
            height=480,
            captions=(f"caption {i} one", f"caption {i} two") if i % 2 == 0 else (),
            file_size=1000 + i,
            mtime_ns=10**18 + i,
        )
        for i in range(n)
    ]


def exercise_round_trip(db: Database, name: str) -> None:
    store = db.open(name, ImageRecord, model="m", dim=8, create=True)
    items, vectors = records(20), unit_vectors(20)
    store.upsert(items, vectors)
    assert store.count() == 20

    [matches] = store.query(vectors[3:4], k=5)
    assert matches[0].record == items[3]  # every field survives the round trip
    assert matches[0].score == pytest.approx(1.0, abs=1e-4)
    assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)
    expected = np.argsort(-(vectors @ vectors[3]))[:5]
    assert [m.record.id for m in matches] == [str(i) for i in expected]
    assert matches[1].score == pytest.approx(float(vectors[expected[1]] @ vectors[3]), abs=1e-4)

    # a deeper search (text queries' `SearchEffort`): the best 5 of 15, read with metadata
    [deep] = store.query(vectors[3:4], k=5, depth=15, with_vectors=True)
    assert [m.record for m in deep] == [m.record for m in matches]
    assert [m.score for m in deep] == pytest.approx([m.score for m in matches], abs=1e-6)
    assert np.allclose(deep[1].vector, vectors[expected[1]], atol=1e-6)
    pages = list(store.vector_pages(7))  # the exact search's stream of every stored vector
    assert [len(ids) for ids, _ in pages] == [7, 7, 6]
    by_id = {id_: row for ids, rows in pages for id_, row in zip(ids, rows, strict=True)}
    assert np.allclose(np.stack([by_id[str(i)] for i in range(20)]), vectors, atol=1e-6)
    effort = SearchEffort(256, 0.98, 0.004, 300, "captions", 0.97, True)
    store.record_search_effort(effort)
    assert store.search_effort() == effort and db.info(name).effort == effort

    got = store.get(["5", "missing", "2"])
    assert sorted(got, key=lambda r: r.id) == [items[2], items[5]]
    assert sorted(r.id for r in store) == sorted(r.id for r in items)

    store.upsert([items[0]], -vectors[:1])  # replace, not duplicate
    assert store.count() == 20
    store.delete(["0", "1"])
    assert store.count() == 18
    assert store.get(["0", "1"]) == []

    reopened = db.open(name, ImageRecord, model="m", dim=8)
    assert reopened.count() == 18
    assert db.drop(name)
    assert not db.drop(name)


def test_round_trip_embedded(tmp_path: Path) -> None:
    exercise_round_trip(Database(make_settings(tmp_path)), "images_test")


def test_round_trip_on_a_chroma_server(tmp_path: Path, chroma_server: ChromaServer) -> None:
    db = Database(
        make_settings(tmp_path, chroma_host=chroma_server.host, chroma_port=chroma_server.port)
    )
    assert "server" in db.description
    exercise_round_trip(db, "server_images_test")


def test_data_persists_across_clients(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    Database(settings).open("persist", ImageRecord, model="m", dim=8, create=True).upsert(
        records(3), unit_vectors(3)
    )
    assert Database(settings).open("persist", ImageRecord, model="m", dim=8).count() == 3


def test_upserts_are_chunked_to_the_client_batch_limit(tmp_path: Path) -> None:
    store = Database(make_settings(tmp_path)).open(
        "chunked", ImageRecord, model="m", dim=8, create=True
    )
    store._max_batch = 7  # the real limit is thousands; make 50 records need 8 chunks
    store.upsert(records(50), unit_vectors(50))
    assert store.count() == 50
    store.delete([str(i) for i in range(45)])
    assert store.count() == 5


def test_a_recent_count_is_reused_only_when_asked_and_only_while_fresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Database(make_settings(tmp_path)).open(
        "counted", ImageRecord, model="m", dim=8, create=True
    )
    store.upsert(records(5), unit_vectors(5))
    now = [1000.0]
    monkeypatch.setattr(store_module.time, "monotonic", lambda: now[0])
    assert store.count(max_age_s=30) == 5
    store.upsert(records(8), unit_vectors(8))
    assert store.count(max_age_s=30) == 5  # read 0 s ago: reused
    assert store.count() == 8  # no age allowed: counted afresh
    store.delete(["0"])
    now[0] += 29
    assert store.count(max_age_s=30) == 8
    now[0] += 2
    assert store.count(max_age_s=30) == 7  # 31 s old: counted again
    store.delete([str(n) for n in range(1, 8)])
    assert store.count() == 0
    store.upsert(records(2), unit_vectors(2))
    assert store.count(max_age_s=30) == 2  # an empty collection is never taken as read


def test_upsert_rejects_mismatched_lengths(tmp_path: Path) -> None:
    store = Database(make_settings(tmp_path)).open(
        "len", ImageRecord, model="m", dim=8, create=True
    )
    with pytest.raises(ValueError, match="3 records but 2 vectors"):
        store.upsert(records(3), unit_vectors(2))


def test_caption_records(tmp_path: Path) -> None:
    store = Database(make_settings(tmp_path)).open(
        "caps", CaptionRecord, model="m", dim=8, create=True
    )
    caption = CaptionRecord(id="42:0", image_id="42", caption="a dog on a beach")
    store.upsert([caption], unit_vectors(1))
    assert store.query(unit_vectors(1), k=1)[0][0].record == caption


@pytest.mark.parametrize(("model", "dim"), [("other-model", 8), ("m", 16)])
def test_other_model_or_dimension_is_refused(tmp_path: Path, model: str, dim: int) -> None:
    db = Database(make_settings(tmp_path))
    db.open("space", ImageRecord, model="m", dim=8, create=True)
    with pytest.raises(ModelMismatch) as caught:
        db.open("space", ImageRecord, model=model, dim=dim)
    message = str(caught.value)
    assert "'m' (8-d vectors)" in message and "--rebuild" in message
    with pytest.raises(ModelMismatch):
        db.open("space", ImageRecord, model=model, dim=dim, create=True)


def test_missing_or_empty_collection_is_index_empty(tmp_path: Path) -> None:
    db = Database(make_settings(tmp_path))
    with pytest.raises(IndexEmpty, match=r"index is empty: .*index_builder\.py"):
        db.open("never_built", ImageRecord, model="m", dim=8)
    store = db.open("built_empty", ImageRecord, model="m", dim=8, create=True)
    with pytest.raises(IndexEmpty, match="index is empty"):
        store.query(unit_vectors(1), k=3)


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, chroma_host="127.0.0.1", chroma_port=free_port())
    with pytest.raises(StoreUnavailable, match=r"Chroma server http://127\.0\.0\.1:\d+"):
        Database(settings)


@pytest.mark.parametrize(
    ("header", "sent"),
    [("Authorization", "Bearer t0ken-for-tests"), ("X-Chroma-Token", "t0ken-for-tests")],
)
def test_a_server_behind_a_token_checking_proxy(
    tmp_path: Path, chroma_server: ChromaServer, header: str, sent: str
) -> None:
    with AuthProxy(chroma_server.port, header, sent) as proxy:
        settings = make_settings(
            tmp_path,
            chroma_host="127.0.0.1",
            chroma_port=proxy.port,
            chroma_auth_token="t0ken-for-tests",
            chroma_auth_header=header,
        )
        exercise_round_trip(Database(settings), f"behind_proxy_{header.lower()}")
        assert proxy.requests > 0 and proxy.refused == 0
        for token in (None, "wrong"):
            refused = make_settings(
                tmp_path, chroma_host="127.0.0.1", chroma_port=proxy.port, chroma_auth_token=token
            )
            with pytest.raises(StoreUnavailable, match="check CHROMA_AUTH_TOKEN"):
                Database(refused).info("anything")


def test_ssl_and_headers_reach_the_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}
    monkeypatch.setattr("chromadb.HttpClient", lambda **kwargs: seen.update(kwargs))
    settings = make_settings(
        tmp_path, chroma_host="chroma.internal", chroma_ssl=True, chroma_auth_token="abc"
    )
    db = Database(settings)
    assert seen["ssl"] is True and seen["headers"] == {"Authorization": "Bearer abc"}
    assert db.description == "Chroma server https://chroma.internal:8000"
    assert "abc" not in db.description


def test_a_collection_dropped_under_an_open_handle_is_index_gone(
    tmp_path: Path, chroma_server: ChromaServer
) -> None:
    settings = make_settings(
        tmp_path, chroma_host=chroma_server.host, chroma_port=chroma_server.port
    )
    db = Database(settings)
    store = db.open("dropped_later", ImageRecord, model="m", dim=8, create=True)
    store.upsert(records(3), unit_vectors(3))
    db.drop("dropped_later")
    with pytest.raises(IndexGone, match="dropped or replaced"):
        store.query(unit_vectors(1), k=2)
    db.open("dropped_later", ImageRecord, model="m", dim=8, create=True)  # replaced
    with pytest.raises(IndexGone):
        store.query(unit_vectors(1), k=2)  # the old handle still names the dropped one


def test_metadata_written_by_several_builders_at_once_keeps_everyones(
    tmp_path: Path, chroma_server: ChromaServer
) -> None:
    """Builders of several shards on one server create the collection and record their
    categories at the same moment: nobody's are lost (modify() replaces the
    whole metadata, so a plain read-merge-write would lose some)."""
    settings = make_settings(
        tmp_path, chroma_host=chroma_server.host, chroma_port=chroma_server.port
    )
    writers = 6
    start = threading.Barrier(writers)

    def builder(n: int) -> None:
        db = Database(settings)  # a client of its own, as a builder process has
        start.wait()
        store = db.open("shared_metadata", ImageRecord, model="m", dim=8, create=True)
        start.wait()
        store.add_categories([f"category {n}", "common"])

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(builder, range(writers)))
    store = Database(settings).open("shared_metadata", ImageRecord, model="m", dim=8)
    assert set(store.categories()) == {f"category {n}" for n in range(writers)} | {"common"}
    assert [c.name for c in Database(settings)._client.list_collections()].count(
        "shared_metadata"
    ) == 1


def test_a_metadata_write_replaced_by_a_stale_one_is_merged_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another builder's write from a copy read before ours lands while ours settles: ours
    is merged again, with theirs."""
    db = Database(make_settings(tmp_path))
    store = db.open("stale_metadata", ImageRecord, model="m", dim=8, create=True)
    store.add_categories(["old"])
    collection = db._client.get_collection("stale_metadata", embedding_function=None)
    stale = dict(collection.metadata)  # what the other builder read, before our write
    stale["categories"] = json.dumps(["old", "theirs"])
    writes = []

    def other_builder_writes(seconds: float) -> None:
        if not writes:
            writes.append(seconds)
            collection.modify(metadata=stale)

    monkeypatch.setattr(store_module.time, "sleep", other_builder_writes)
    store.add_categories(["ours"])
    assert writes  # the stale write did land after ours
    assert set(store.categories()) == {"old", "ours", "theirs"}
    assert db.open("stale_metadata", ImageRecord, model="m", dim=8)  # model and dim kept
