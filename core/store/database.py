"""The vector store: the only module that imports chromadb.

A `Database` is an embedded Chroma (PersistentClient in `CHROMA_PATH`) or a Chroma server
(`CHROMA_HOST`/`CHROMA_PORT`). A `VectorStore` is one collection of typed records with
their vectors. Collections use the cosine space, never an embedding function (vectors
always come from our own encoder), and record which model and dimension made them: opening
one with another model is refused, because mixing embedding spaces silently ruins search.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import chromadb
import numpy as np
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import NotFoundError

from core.config import Settings
from core.errors import IndexEmpty, IndexGone, ModelMismatch, StoreUnavailable
from core.store.collection_info import (
    BuildRecord,
    CollectionInfo,
    auth_headers,
    build_records,
    describe,
    embedded_count,
)
from core.store.effort import EFFORT_KEY, SearchEffort
from core.store.records import R

HNSW = {"space": "cosine", "ef_construction": 200, "ef_search": 128, "max_neighbors": 32}
"""HNSW parameters of new collections: more neighbours and a wider search than Chroma's
defaults (16, ef 100), for a better recall@10 at a small cost in query time (the latency
benchmark measures both side by side: docs/benchmarks.md)."""
PAGE = 2000
CATEGORIES_KEY = "categories"
"""Collection metadata key: JSON list of the category names its records may hold."""
METADATA_SETTLE_S = 0.5
"""On a server, how long a metadata write is left to settle before it is checked: another
builder's write from a copy read before ours lands within this (see `_merge_metadata`)."""
METADATA_ATTEMPTS = 10

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Match(Generic[R]):
    """A query result: the stored record and its cosine similarity to the query."""

    record: R
    score: float
    """1 - cosine distance: 1.0 is the same direction, 0.0 unrelated."""
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)
    """The record's stored vector, when the query asked for it (`with_vectors`)."""


def _is_unreachable(err: BaseException) -> bool:
    if isinstance(err, ConnectionError):
        return True
    if isinstance(err, ValueError) and "could not connect" in str(err).lower():
        return True  # what chromadb.HttpClient raises when no server answers
    return type(err).__module__.split(".")[0] in ("httpx", "httpcore")


@contextmanager
def _reachable(where: str) -> Iterator[None]:
    """Turn connection failures into `StoreUnavailable` naming the store, and a collection
    that vanished under an open handle into `IndexGone`."""
    try:
        yield
    except NotFoundError as err:
        raise IndexGone(
            f"the collection was dropped or replaced in {where} (is the index being rebuilt?)"
        ) from err
    except Exception as err:
        if not _is_unreachable(err):
            raise
        raise StoreUnavailable(f"the vector store ({where}) is unreachable: {err}") from err


@contextmanager
def _authorised(where: str) -> Iterator[None]:
    """A server (or its proxy) that refuses our credentials: one clear `StoreUnavailable`."""
    try:
        yield
    except Exception as err:
        text = str(err).lower()
        if not any(word in text for word in ("401", "403", "unauthorized", "forbidden")):
            raise
        raise StoreUnavailable(
            f"{where} refused the request ({err}): check CHROMA_AUTH_TOKEN and CHROMA_AUTH_HEADER"
        ) from err


class Database:
    """A Chroma client: embedded by default, a server when `CHROMA_HOST` is set."""

    def __init__(self, settings: Settings) -> None:
        chroma_settings = ChromaSettings(anonymized_telemetry=False)
        self._settle_s = METADATA_SETTLE_S if settings.chroma_host else 0.0
        self._path: Path | None = None
        """The embedded store's folder; None for a server."""
        self.description = describe(settings)
        if settings.chroma_host:
            with _reachable(self.description), _authorised(self.description):
                self._client = chromadb.HttpClient(
                    host=settings.chroma_host,
                    port=settings.chroma_port,
                    ssl=settings.chroma_ssl,
                    headers=auth_headers(settings),
                    settings=chroma_settings,
                )
        else:
            self._path = settings.chroma_path
            try:
                settings.chroma_path.mkdir(parents=True, exist_ok=True)
                self._client = chromadb.PersistentClient(
                    path=str(settings.chroma_path), settings=chroma_settings
                )
            except OSError as err:
                raise StoreUnavailable(f"cannot open {self.description}: {err}") from err

    def open(
        self,
        name: str,
        record_type: type[R],
        *,
        model: str,
        dim: int,
        create: bool = False,
        hnsw: dict | None = None,
    ) -> VectorStore[R]:
        """Open collection `name`; with `create`, make it when missing (with `hnsw`
        settings, default `HNSW`).

        Without `create`, a missing collection raises `IndexEmpty`. A collection built with
        another model or dimension raises `ModelMismatch`.
        """
        with _reachable(self.description):
            if create:
                collection = self._client.get_or_create_collection(
                    name,
                    configuration={"hnsw": hnsw or HNSW},
                    metadata={"model": model, "dim": dim, "kind": record_type.kind},
                    embedding_function=None,
                )
            else:
                try:
                    collection = self._client.get_collection(name, embedding_function=None)
                except NotFoundError:
                    raise IndexEmpty(_empty_message(name)) from None
            _check_space(name, collection.metadata or {}, model, dim)
            batch = int(self._client.get_max_batch_size())
        connection = Connection(self._client, self.description, batch, self._settle_s, self._path)
        return VectorStore(collection, record_type, connection)

    def info(self, name: str) -> CollectionInfo | None:
        """Size and model of collection `name`, or None when there is none."""
        with _reachable(self.description):
            try:
                collection = self._client.get_collection(name, embedding_function=None)
            except NotFoundError:
                return None
            metadata = collection.metadata or {}
            count = _count_at_rest(collection, self._path)
            return CollectionInfo(
                name,
                count,
                metadata.get("model"),
                metadata.get("dim"),
                build_records(metadata),
                SearchEffort.from_metadata(metadata),
            )

    def drop(self, name: str) -> bool:
        """Delete collection `name`; False when there was none."""
        with _reachable(self.description):
            try:
                self._client.delete_collection(name)
            except NotFoundError:
                return False
            return True


@dataclass(frozen=True)
class Connection:
    """What every collection opened by one `Database` shares: the client and its facts."""

    client: chromadb.api.ClientAPI
    description: str
    """Where the store lives, for people: "embedded Chroma in data/chroma"."""
    max_batch: int
    """The most records the client takes in one call."""
    settle_s: float = 0.0
    """How long a metadata write is left to settle (`METADATA_SETTLE_S` on a server)."""
    embedded_path: Path | None = None
    """The embedded store's folder; None for a server."""


def _count_at_rest(collection: chromadb.Collection, embedded_path: Path | None) -> int:
    """The number of records of `collection`, without loading its index when it is embedded
    in `embedded_path` (from Chroma's SQLite file, see `core.store.collection_info`); through Chroma
    otherwise."""
    count = None if embedded_path is None else embedded_count(embedded_path, collection.id)
    return collection.count() if count is None else count


def _empty_message(name: str) -> str:
    return (
        f"index is empty: collection {name!r} has no images yet. Build it with "
        "`python index_builder.py --coco-root data/coco` (see README, 'Build the index')"
    )


def _where_contains(contains: dict[str, Sequence[str]]) -> dict | None:
    """A Chroma `where` that wants every value of `contains[key]` in list metadata `key`."""
    return _where_all(
        *({key: {"$contains": value}} for key, values in contains.items() for value in values)
    )


def _where_all(*clauses: dict | None) -> dict | None:
    """One Chroma `where` wanting every clause given (None: no filter)."""
    wanted = [clause for clause in clauses if clause]
    if not wanted:
        return None
    return wanted[0] if len(wanted) == 1 else {"$and": wanted}


def _strings(metadata: dict, key: str) -> tuple[str, ...]:
    """The non-empty strings of the JSON list under `key` of collection metadata."""
    try:
        values = json.loads(metadata.get(key) or "[]")
    except json.JSONDecodeError:
        return ()
    if not isinstance(values, list):
        return ()
    return tuple(value for value in values if isinstance(value, str) and value)


def _vec(value: Any) -> np.ndarray | None:
    return None if value is None else np.asarray(value, dtype=np.float32)


def _details_of(
    result: Any, with_vectors: bool, *, nested: bool = True
) -> dict[str, tuple[dict, np.ndarray | None]]:
    """(metadata, stored vector or None) by id, from Chroma's answer to a query (`nested`:
    a list per query vector) or to a `get`."""
    ids, mds = result["ids"], result["metadatas"]
    vecs = result.get("embeddings") if with_vectors else None
    if not nested:
        ids, mds, vecs = [ids], [mds], None if vecs is None else [vecs]
    out: dict[str, tuple[dict, np.ndarray | None]] = {}
    for n, (row_ids, row_mds) in enumerate(zip(ids, mds, strict=True)):
        row_vecs = vecs[n] if vecs is not None else [None] * len(row_ids)
        for id_, md, vec in zip(row_ids, row_mds, row_vecs, strict=True):
            out[id_] = (md or {}, _vec(vec))
    return out


def _check_space(name: str, metadata: dict, model: str, dim: int) -> None:
    built_model, built_dim = metadata.get("model"), metadata.get("dim")
    if built_model == model and built_dim == dim:
        return
    raise ModelMismatch(
        f"collection {name!r} was built with model {built_model!r} ({built_dim}-d vectors) "
        f"but CLIP_MODEL is {model!r} ({dim}-d): searching it would mix embedding spaces. "
        "Rebuild it with `python index_builder.py --rebuild`, or set COLLECTION to another name."
    )


class CollectionMetadata:
    """What a collection records about itself in its metadata, beside its model: the category
    names its records hold, each source's build record, the measured search effort. Read
    afresh (another process may have written them) and merged on write (`_merge_metadata`).
    `VectorStore` is one."""

    name: str
    description: str
    _connection: Connection

    def categories(self) -> tuple[str, ...]:
        """The category names this collection's records may hold (recorded by
        `add_categories`; empty for folder and URL-list indexes)."""
        return _strings(self._metadata(), CATEGORIES_KEY)

    def search_effort(self) -> SearchEffort | None:
        """How deep text searches go, as the last build measured (`record_search_effort`);
        None when none was recorded or the record is malformed (then: the defaults)."""
        return SearchEffort.from_metadata(self._metadata())

    def _metadata(self) -> dict:
        """The collection's metadata as stored now (not as this handle was opened)."""
        with _reachable(self.description):
            collection = self._connection.client.get_collection(self.name, embedding_function=None)
        return dict(collection.metadata or {})

    def add_categories(self, names: Iterable[str]) -> None:
        """Record category names the records hold (kept, merged, sorted)."""
        wanted = set(names)
        if not wanted:
            return

        def merged(metadata: dict) -> dict | None:
            have = set(_strings(metadata, CATEGORIES_KEY))
            if wanted <= have:
                return None
            return {CATEGORIES_KEY: json.dumps(sorted(have | wanted))}

        _merge_metadata(self._connection, self.name, f"the {CATEGORIES_KEY}", merged)

    def record_build(self, build: BuildRecord) -> None:
        """Record (or replace) the build record of `build.source` in the collection's metadata,
        keeping every other key (other sources' records, the categories, the model)."""
        self._record(build.key, build.to_metadata(), "the build record")

    def record_search_effort(self, effort: SearchEffort) -> None:
        """Record (or replace) the search effort in the collection's metadata, keeping every
        other key."""
        self._record(EFFORT_KEY, effort.to_metadata(), "the search effort")

    def _record(self, key: str, value: str, what: str) -> None:
        """Set metadata `key` to `value`, keeping every other key (see `_merge_metadata`)."""

        def merged(metadata: dict) -> dict | None:
            return None if metadata.get(key) == value else {key: value}

        _merge_metadata(self._connection, self.name, what, merged)


class VectorStore(CollectionMetadata, Generic[R]):
    """One collection of records of type `R` with their L2-normalised vectors."""

    def __init__(
        self, collection: chromadb.Collection, record_type: type[R], connection: Connection
    ) -> None:
        self._collection = collection
        self._type = record_type
        self._connection = connection
        self._max_batch = connection.max_batch
        self._counted: tuple[int, float] | None = None
        """The last count and when it was read (`time.monotonic`)."""
        self.description = connection.description
        """Where the collection lives, for people: "embedded Chroma in data/chroma"."""

    @property
    def name(self) -> str:
        return self._collection.name

    def count(self, *, max_age_s: float = 0.0) -> int:
        """The number of records. With `max_age_s`, a non-zero count read at most that many
        seconds ago is reused (an empty collection is always counted again: it may be
        filling): counting is linear in the collection, too slow at scale to repeat for
        every search (docs/benchmarks.md)."""
        now = time.monotonic()
        counted = self._counted
        if counted and counted[0] and max_age_s > 0 and now - counted[1] <= max_age_s:
            return counted[0]
        with _reachable(self.description):
            count = self._collection.count()
        self._counted = (count, now)
        return count

    def count_at_rest(self) -> int:
        """The number of records, without loading an embedded collection's index (read from
        Chroma's SQLite file; through Chroma while a write is pending). The bot counts this way
        at start-up, which then does not grow with the collection; `count` (any read) loads
        the index, which takes long and much memory for a large collection (bench/scale.py)."""
        with _reachable(self.description):
            return _count_at_rest(self._collection, self._connection.embedded_path)

    def check_not_empty(self, *, max_age_s: float = 0.0) -> None:
        """Raise `IndexEmpty` when the collection holds nothing (`max_age_s`: see `count`)."""
        if self.count(max_age_s=max_age_s) == 0:
            raise IndexEmpty(_empty_message(self.name))

    def upsert(self, records: Sequence[R], vectors: np.ndarray) -> None:
        """Insert or replace records with their vectors, in chunks Chroma accepts."""
        if len(records) != len(vectors):
            raise ValueError(f"{len(records)} records but {len(vectors)} vectors")
        with _reachable(self.description):
            for start, chunk in _chunks(records, self._max_batch):
                self._collection.upsert(
                    ids=[r.id for r in chunk],
                    embeddings=np.asarray(vectors[start : start + len(chunk)], dtype=np.float32),
                    metadatas=[r.to_metadata() for r in chunk],
                )

    def query(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        contains: dict[str, Sequence[str]] | None = None,
        where: dict | None = None,
        with_vectors: bool = False,
        depth: int = 0,
    ) -> list[list[Match[R]]]:
        """The `k` nearest records of each query vector, best first.

        `contains`: only records whose list metadata `key` holds every one of the values
        (`{"categories": ["dog", "frisbee"]}`); `where`: only records matching this Chroma
        `where` as well. `with_vectors`: each match carries its stored vector. `depth`: search
        that many candidates deep (more than `k`: the HNSW search explores max(ef_search,
        depth) of them, see `core.store.effort`) and keep the best `k`; only those are read
        with their metadata. Raises `IndexEmpty` when the collection holds nothing.
        """
        if len(vectors) == 0:
            return []
        deep = depth > k
        include: Any = ["distances"]
        if not deep:
            include += ["metadatas"] + (["embeddings"] if with_vectors else [])
        with _reachable(self.description):
            result = self._collection.query(
                query_embeddings=np.asarray(vectors, dtype=np.float32),
                n_results=depth if deep else k,
                where=_where_all(_where_contains(contains or {}), where),
                include=include,
            )
        if not any(result["ids"]):
            self.check_not_empty()  # else the filter matched nothing
        found = [
            list(zip(ids[:k], dists[:k], strict=True))
            for ids, dists in zip(result["ids"], result["distances"], strict=True)
        ]
        if deep:
            details = self._details([id_ for row in found for id_, _ in row], with_vectors)
        else:
            details = _details_of(result, with_vectors)
        return [
            [
                Match(self._type.from_metadata(id_, details[id_][0]), 1 - float(d), details[id_][1])
                for id_, d in row
                if id_ in details  # a record deleted since the search is left out
            ]
            for row in found
        ]

    def _details(self, ids: Sequence[str], with_vectors: bool) -> dict[str, tuple[dict, Any]]:
        """(metadata, stored vector or None) of each of `ids` still stored."""
        include: Any = ["metadatas"] + (["embeddings"] if with_vectors else [])
        out: dict[str, tuple[dict, Any]] = {}
        with _reachable(self.description):
            for _, chunk in _chunks(list(dict.fromkeys(ids)), self._max_batch):
                got = self._collection.get(ids=list(chunk), include=include)
                out.update(_details_of(got, with_vectors, nested=False))
        return out

    def vector_pages(self, size: int = PAGE) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every stored vector with its id, `size` at a time: (ids, float32 rows) per page
        (memory stays bounded however large the collection)."""
        for got in self._pages(size, ["embeddings"]):
            yield list(got["ids"]), np.asarray(got["embeddings"], dtype=np.float32)

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of `ids` (missing ids are left out)."""
        return {id_: vec for id_, (_, vec) in self._details(ids, True).items()}

    def update_metadata(self, records: Sequence[R]) -> None:
        """Replace the metadata of stored records, keeping their vectors."""
        with _reachable(self.description):
            for _, chunk in _chunks(records, self._max_batch):
                self._collection.update(
                    ids=[r.id for r in chunk], metadatas=[r.to_metadata() for r in chunk]
                )

    def get(self, ids: Sequence[str]) -> list[R]:
        """The stored records among `ids` (missing ids are left out)."""
        return [self._type.from_metadata(i, md) for i, (md, _) in self._details(ids, False).items()]

    def find(self, where: dict) -> list[R]:
        """Every stored record matching the Chroma `where`, page by page."""
        return [
            self._type.from_metadata(id_, md or {})
            for got in self._pages(PAGE, ["metadatas"], where)
            for id_, md in zip(got["ids"], got["metadatas"], strict=True)
        ]

    def delete(self, ids: Sequence[str]) -> None:
        with _reachable(self.description):
            for _, chunk in _chunks(ids, self._max_batch):
                self._collection.delete(ids=list(chunk))

    def __iter__(self) -> Iterator[R]:
        """Every stored record, page by page (memory stays bounded)."""
        for got in self._pages(PAGE, ["metadatas"]):
            for id_, md in zip(got["ids"], got["metadatas"], strict=True):
                yield self._type.from_metadata(id_, md or {})

    def _pages(self, size: int, include: Any, where: dict | None = None) -> Iterator[Any]:
        """Chroma's answers to `get` of every record (matching `where`), `size` at a time."""
        offset = 0
        while True:
            with _reachable(self.description):
                got = self._collection.get(where=where, limit=size, offset=offset, include=include)
            if not got["ids"]:
                return
            yield got
            offset += len(got["ids"])


def _chunks(items: Sequence[T], size: int) -> Iterator[tuple[int, Sequence[T]]]:
    """(offset, chunk) of `items` in chunks of at most `size` (what Chroma takes at once)."""
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def _merge_metadata(
    connection: Connection, name: str, what: str, merged: Callable[[dict], dict | None]
) -> None:
    """Write into collection `name`'s metadata the keys `merged(current metadata)` gives, until
    it gives None (what it wants is there), and make sure they stay there.

    Chroma has no atomic update of collection metadata: `modify()` replaces all of it,
    so two builders on one server that read it, merge their own values and write it
    back at once may overwrite each other's. So each writer reads it again once its
    write has settled (a write from a copy read before it has landed by then) and
    merges again until its values are there. No write at all when they already are."""
    for attempt in range(METADATA_ATTEMPTS + 1):
        with _reachable(connection.description):
            current = connection.client.get_collection(name, embedding_function=None)
            metadata = dict(current.metadata or {})
            changes = merged(metadata)
            if changes is None:
                return
            if attempt == METADATA_ATTEMPTS:
                break
            if attempt:
                log.info("another writer replaced %s of %s: merging again", what, name)
            # modify() replaces the whole metadata (model and dim included): pass it all.
            current.modify(metadata={**metadata, **changes})
        time.sleep(connection.settle_s * (1 + random.random()))  # jitter: writers fall apart
    raise StoreUnavailable(
        f"could not record {what} of collection {name!r} in {connection.description}: "
        f"other writers replaced them {METADATA_ATTEMPTS} times in a row"
    )
