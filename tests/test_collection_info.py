"""A collection's size and model read without chromadb, from an embedded store's SQLite file
or a server's HTTP API: the same answer Chroma gives, and None (ask Chroma) whenever it
cannot be trusted. The embedded tests fail if a Chroma upgrade changes the file's layout,
the server tests if it changes the API: status and the bot's start-up would then go through
Chroma (loading the whole embedded index, importing chromadb)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest

from core.store.collection_info import (
    BUILD_KEY_PREFIX,
    FILE,
    MAX_BODY,
    MAX_BUILDS,
    BuildRecord,
    CollectionInfo,
    build_records,
    embedded_count,
    embedded_info,
    quick_info,
    server_info,
)
from core.store.database import Database
from core.store.effort import EFFORT_KEY, SearchEffort
from core.store.records import ImageRecord
from tests.auth_proxy import AuthProxy
from tests.chroma_run import ChromaServer, free_port
from tests.conftest import make_settings
from tests.local_http import LocalHttpServer


def test_size_and_model_follow_upserts_replacements_and_deletes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    db = Database(settings)
    store = db.open("counted", ImageRecord, model="the-model", dim=4, create=True)
    other = db.open("other", ImageRecord, model="other-model", dim=4, create=True)
    other.upsert([ImageRecord(id="9", path="/x/9.jpg")], np.ones((1, 4), dtype=np.float32))
    records = [ImageRecord(id=str(n), path=f"/x/{n}.jpg") for n in range(5)]
    vectors = np.eye(5, 4, dtype=np.float32) + 0.1
    store.upsert(records, vectors)
    store.upsert(records[:2], vectors[:2])  # replaced, not added
    store.delete(["3", "4"])
    info = embedded_info(settings.chroma_path, "counted")
    assert info == CollectionInfo("counted", 3, "the-model", 4)
    assert info.count == store.count() == store.count_at_rest()
    assert db.info("counted") == info
    assert embedded_info(settings.chroma_path, "other") == CollectionInfo(
        "other", 1, "other-model", 4
    )


def test_a_missing_collection_or_file_is_left_to_chroma(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    Database(settings).open("here", ImageRecord, model="m", dim=4, create=True)
    assert embedded_info(settings.chroma_path, "elsewhere") is None
    assert embedded_info(tmp_path / "nowhere", "here") is None
    (tmp_path / "not-chroma").mkdir()
    (tmp_path / "not-chroma" / FILE).write_bytes(b"not a database")
    assert embedded_info(tmp_path / "not-chroma", "here") is None


def test_a_recorded_model_or_dimension_of_the_wrong_type_is_not_believed(
    tmp_path: Path,
) -> None:
    """SQLite keeps whatever a column is given: a damaged file's model or dimension of
    another type is reported as unknown, never a crash."""
    settings = make_settings(tmp_path)
    store = Database(settings).open("odd", ImageRecord, model="m", dim=4, create=True)
    store.upsert([ImageRecord(id="1", path="/x/1.jpg")], np.ones((1, 4), dtype=np.float32))
    with closing(sqlite3.connect(settings.chroma_path / FILE)) as db, db:
        db.execute("UPDATE collection_metadata SET int_value = 'four' WHERE key = 'dim'")
        db.execute("UPDATE collection_metadata SET str_value = x'00ff' WHERE key = 'model'")
    assert embedded_info(settings.chroma_path, "odd") == CollectionInfo("odd", 1, None, None)


def test_nothing_is_trusted_while_the_log_is_ahead(tmp_path: Path) -> None:
    """A write logged but not yet applied: None, so the caller counts through Chroma."""
    settings = make_settings(tmp_path)
    store = Database(settings).open("ahead", ImageRecord, model="m", dim=4, create=True)
    store.upsert([ImageRecord(id="1", path="/x/1.jpg")], np.ones((1, 4), dtype=np.float32))
    collection_id = store._collection.id
    path = settings.chroma_path
    assert embedded_count(path, collection_id) == 1
    with closing(sqlite3.connect(path / FILE)) as db, db:
        db.execute(
            "INSERT INTO embeddings_queue (seq_id, operation, topic, id) "
            "SELECT MAX(seq_id) + 1, 0, topic, 'pending' FROM embeddings_queue"
        )
    assert embedded_count(path, collection_id) is None
    assert embedded_info(path, "ahead") is None
    assert embedded_count(tmp_path / "nowhere", collection_id) is None


def server_settings(tmp_path: Path, port: int, **overrides: object):
    return make_settings(tmp_path, chroma_host="127.0.0.1", chroma_port=port, **overrides)


def test_a_server_gives_the_same_answer_as_chroma(
    tmp_path: Path, chroma_server: ChromaServer
) -> None:
    settings = server_settings(tmp_path, chroma_server.port, collection="quick_info")
    db = Database(settings)
    store = db.open("quick_info", ImageRecord, model="the-model", dim=4, create=True)
    records = [ImageRecord(id=str(n), path=f"/x/{n}.jpg") for n in range(3)]
    store.upsert(records, np.eye(3, 4, dtype=np.float32) + 0.1)
    expected = CollectionInfo("quick_info", 3, "the-model", 4)
    assert server_info(settings, "quick_info") == expected == quick_info(settings, "quick_info")
    assert db.info("quick_info") == expected
    assert server_info(settings, "never built") is None


@pytest.mark.parametrize("header", ["Authorization", "X-Chroma-Token"])
def test_a_server_behind_a_token_checking_proxy(
    tmp_path: Path, chroma_server: ChromaServer, header: str
) -> None:
    settings = server_settings(tmp_path, chroma_server.port)
    Database(settings).open("behind_proxy", ImageRecord, model="m", dim=4, create=True).upsert(
        [ImageRecord(id="1", path="/x/1.jpg")], np.ones((1, 4), dtype=np.float32)
    )
    sent = "Bearer t0ken" if header == "Authorization" else "t0ken"
    with AuthProxy(chroma_server.port, header, sent) as proxy:
        allowed = server_settings(
            tmp_path, proxy.port, chroma_auth_token="t0ken", chroma_auth_header=header
        )
        assert server_info(allowed, "behind_proxy") == CollectionInfo("behind_proxy", 1, "m", 4)
        wrong = server_settings(
            tmp_path, proxy.port, chroma_auth_token="wrong", chroma_auth_header=header
        )
        assert server_info(wrong, "behind_proxy") is None
        assert proxy.refused == 1


class Nonsense(LocalHttpServer):
    """A "server" that answers every GET with one canned status, headers and body."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.paths: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.paths.append(self.path)
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


COLLECTION = json.dumps({"id": "abc", "name": "x", "metadata": {"model": "m", "dim": 4}})


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (302, b"", {"Location": "http://127.0.0.2:1/elsewhere"}),
        (200, b"<html>not json</html>", None),
        (200, b'["a list"]', None),
        (200, json.dumps({"id": 7}).encode(), None),
        (200, b" " * (MAX_BODY + 10) + b"{}", None),
        (500, COLLECTION.encode(), None),
    ],
    ids=["redirect", "not-json", "a-list", "id-not-a-string", "too-big", "error-status"],
)
def test_a_server_answering_nonsense_is_left_to_chroma(
    tmp_path: Path, status: int, body: bytes, headers: dict[str, str] | None
) -> None:
    with Nonsense(status, body, headers) as server:
        assert server_info(server_settings(tmp_path, server.port), "x") is None
        assert len(server.paths) == 1  # asked once, and never followed the redirect


class Counting(LocalHttpServer):
    """A "server" with one collection that answers its count with `count`."""

    def __init__(self, count: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                body = count if self.path.endswith("/abc/count") else COLLECTION.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


@pytest.mark.parametrize("count", [b"-1", b"true", b"3.5", b'"3"', b"null"])
def test_a_count_that_is_not_a_count_is_left_to_chroma(tmp_path: Path, count: bytes) -> None:
    with Counting(count) as server:
        assert server_info(server_settings(tmp_path, server.port), "x") is None


def test_the_fake_server_itself_is_read(tmp_path: Path) -> None:
    with Counting(b"3") as server:
        info = server_info(server_settings(tmp_path, server.port), "x")
    assert info == CollectionInfo("x", 3, "m", 4)


def test_no_server_is_left_to_chroma(tmp_path: Path) -> None:
    assert server_info(server_settings(tmp_path, free_port()), "x") is None


# --- build records (issue 23: an interrupted first build is finished) -----------------------


def test_build_records_are_read_as_chroma_keeps_them(tmp_path: Path) -> None:
    """What a build records in the collection's metadata is read back without chromadb, per
    source, and replacing one source's record keeps the others and the rest of the metadata."""
    settings = make_settings(tmp_path)
    db = Database(settings)
    store = db.open("built", ImageRecord, model="m", dim=4, create=True)
    store.upsert([ImageRecord(id="1", path="/x/1.jpg")], np.ones((1, 4), dtype=np.float32))
    store.add_categories(["dog"])
    coco = BuildRecord("COCO2014 val2014 in /data/coco", 40_504, 0, complete=False)
    folder = BuildRecord("folder /photos", 3, 40_504, complete=True)
    store.record_build(coco)
    store.record_build(folder)
    info = embedded_info(settings.chroma_path, "built")
    assert info is not None and info.builds == (coco, folder)
    assert info.incomplete == (coco,) and coco.done(info.count) == 1
    store.record_build(replace(coco, complete=True))
    info = embedded_info(settings.chroma_path, "built")
    assert info is not None and info.incomplete == () and len(info.builds) == 2
    assert db.info("built") == info
    assert store.categories() == ("dog",) and (info.model, info.dim) == ("m", 4)


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        json.dumps(["a list"]),
        json.dumps({"source": 3, "target": 1, "others": 0, "complete": False}),
        json.dumps({"source": "s", "target": -1, "others": 0, "complete": False}),
        json.dumps({"source": "s", "target": 1, "others": 0, "complete": "no"}),
        json.dumps({"source": "s", "target": True, "others": 0, "complete": False}),
        json.dumps({"source": "s" * 5000, "target": 1, "others": 0, "complete": False}),
    ],
    ids=["not-json", "a-list", "source", "negative", "complete", "bool-target", "too-long"],
)
def test_a_build_record_that_is_not_one_is_ignored(value: str) -> None:
    """The store is not trusted: a record of the wrong shape is no record."""
    assert build_records({f"{BUILD_KEY_PREFIX}x": value, "model": "m"}) == ()


def test_a_build_record_says_how_far_it_got() -> None:
    build = BuildRecord("folder /photos", target=100, others=40, complete=False)
    assert [build.done(n) for n in (0, 40, 50, 140, 500)] == [0, 0, 10, 100, 100]


def test_a_server_gives_the_build_records_too(tmp_path: Path, chroma_server: ChromaServer) -> None:
    settings = server_settings(tmp_path, chroma_server.port, collection="with_builds")
    store = Database(settings).open("with_builds", ImageRecord, model="m", dim=4, create=True)
    build = BuildRecord("folder /photos", 10, 0, complete=False)
    store.record_build(build)
    info = server_info(settings, "with_builds")
    assert info is not None and info.incomplete == (build,)


# --- the text searches' depth (issue 24), shown by status ---------------------------------


def test_the_search_effort_is_read_from_the_file_and_from_a_server(
    tmp_path: Path, chroma_server: ChromaServer
) -> None:
    effort = SearchEffort(512, 0.975, 0.004, 300, "captions", 0.97, True)
    embedded = make_settings(tmp_path, collection="with_effort")
    remote = server_settings(tmp_path, chroma_server.port, collection="with_effort")
    for settings in (embedded, remote):
        store = Database(settings).open("with_effort", ImageRecord, model="m", dim=4, create=True)
        store.upsert([ImageRecord(id="1", path="/x/1.jpg")], np.ones((1, 4), dtype=np.float32))
        assert quick_info(settings, "with_effort").effort is None
        store.record_search_effort(effort)
        info = quick_info(settings, "with_effort")
        assert info is not None and info.effort == effort
        assert Database(settings).info("with_effort") == info


def test_the_search_effort_is_read_beside_the_most_build_records(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = Database(settings).open("busy", ImageRecord, model="m", dim=4, create=True)
    store.upsert([ImageRecord(id="1", path="/x/1.jpg")], np.ones((1, 4), dtype=np.float32))
    effort = SearchEffort(0, 0.99, 0.01, 80, "category names", 0.97, True)
    store.record_search_effort(effort)
    for n in range(MAX_BUILDS + 1):
        store.record_build(BuildRecord(f"folder /photos/{n:03d}", 1, 0, complete=True))
    info = embedded_info(settings.chroma_path, "busy")
    assert info is not None and info.effort == effort and len(info.builds) == MAX_BUILDS


def test_a_malformed_search_effort_is_not_shown(tmp_path: Path, run_cli) -> None:
    settings = make_settings(tmp_path, collection="odd_effort")
    store = Database(settings).open("odd_effort", ImageRecord, model="m", dim=4, create=True)
    store.upsert([ImageRecord(id="1", path="/x/1.jpg")], np.ones((1, 4), dtype=np.float32))
    store.record_search_effort(SearchEffort(256, 0.98, 0.004, 300, "captions", 0.97, True))
    shown = run_cli(settings, "status")
    line = "text recall@10 0.980 ±0.004 at search depth 256 (target 0.97), measured on 300 captions"
    assert line in shown.stdout
    store._record(EFFORT_KEY, json.dumps({"depth": "deep"}), "a malformed effort")
    info = embedded_info(settings.chroma_path, "odd_effort")
    assert info is not None and info.effort is None and info.count == 1
    shown = run_cli(settings, "status")
    assert shown.returncode == 0 and "text recall" not in shown.stdout
