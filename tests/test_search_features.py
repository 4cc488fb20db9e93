"""The search API the bot calls: prepare / prepare_texts / page, compound queries,
similar pictures, COCO categories as #hashtags, caption fusion, near-duplicates, MIN_SCORE."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from core.errors import EmptyQuery, NoCategories, UnknownCategory, UnknownPicture
from core.indexing import BuildOptions, run
from core.search.query import combine
from core.search.service import PreparedQuery, Query, SearchService
from core.sources.coco import CocoReader
from core.sources.folders import FolderReader
from core.store.database import Database
from core.store.records import CaptionRecord
from tests.conftest import ShapeIndex, make_settings
from tests.fixtures.shapes import LABELS, caption
from tests.mini_coco import make_mini_coco
from tests.searching import search


@pytest.fixture(scope="module")
def service(shape_index: ShapeIndex) -> SearchService:
    return SearchService.open(shape_index.settings)


@pytest.fixture(scope="module")
def labels(shape_index: ShapeIndex) -> dict[str, tuple[str, str]]:
    return {str(i.id): (i.color, i.shape) for i in shape_index.images}


def test_plus_combines_terms(service: SearchService, labels: dict) -> None:
    page = search(service, "red + square", 5)
    assert [labels[h.id] for h in page.hits] == [("red", "square")] * 5
    assert page.reading == "red + square" and page.total == 60


def test_minus_pushes_away(service: SearchService, labels: dict) -> None:
    # The fixture CLIP reads a lone word as one class ("red" ≈ "a red circle", cosine 0.96),
    # so `red -circle` cannot show the push there; terms it was trained on can.
    without = search(service, "a red circle + a red triangle", 5)
    assert ("red", "circle") in [labels[h.id] for h in without.hits]
    page = search(service, "a red circle + a red triangle -circle", 5)
    assert ("red", "circle") not in [labels[h.id] for h in page.hits]
    assert page.reading == "a red circle + a red triangle \N{MINUS SIGN}circle"


def test_the_vector_is_the_weighted_sum(service: SearchService, shape_index: ShapeIndex) -> None:
    red, circle, blue = service.encoder.embed_texts(["red", "circle", "blue"])
    prepared = service.prepare(Query(text="red -circle"))
    assert np.allclose(prepared.vector, combine([red, circle], [1.0, -0.5]), atol=1e-5)
    photo = shape_index.images[1].path.read_bytes()
    with_words = service.prepare(Query(text="blue", picture=photo))
    image = service.encoder.embed_images([service._load(photo)])[0]
    assert np.allclose(with_words.vector, combine([image, blue], [1.0, 1.0]), atol=1e-5)
    assert with_words.reading == "your photo + blue" and not with_words.fuse_captions


def test_a_picture_changed_by_words(
    service: SearchService, shape_index: ShapeIndex, labels: dict
) -> None:
    green_square = next(i for i in shape_index.images if (i.color, i.shape) == ("green", "square"))
    words = 'a blue square -"a green square"'
    page = search(service, Query(text=words, picture=green_square.path.read_bytes()), 5)
    assert [labels[h.id] for h in page.hits[:3]] == [("blue", "square")] * 3


def test_only_minus_terms_is_empty(service: SearchService) -> None:
    with pytest.raises(EmptyQuery, match="only minus terms"):
        service.prepare(Query(text="-people -cars"))
    with pytest.raises(EmptyQuery, match="nothing to search for"):
        service.prepare(Query(text="  "))


def test_prepare_texts_embeds_once_and_equals_prepare(service: SearchService, monkeypatch) -> None:
    texts = ["a red circle", "cat + snow -dog", "a red circle"]
    single = [service.prepare(Query(text=t)) for t in texts]
    calls = []
    embed = service.encoder.embed_texts
    monkeypatch.setattr(service.encoder, "embed_texts", lambda t: calls.append(t) or embed(t))
    batched = service.prepare_texts(texts)
    assert len(calls) == 1 and sorted(calls[0]) == ["a red circle", "cat", "dog", "snow"]
    for one, other in zip(single, batched, strict=True):
        assert np.allclose(one.vector, other.vector, atol=1e-5)
    mixed = service.prepare_texts(["a red circle", "  "], return_errors=True)
    assert isinstance(mixed[0], PreparedQuery) and isinstance(mixed[1], EmptyQuery)


def test_pages_follow_each_other(service: SearchService) -> None:
    prepared = PreparedQuery.from_json(service.prepare(Query(text="a blue circle")).to_json())
    first, second = service.page(prepared, 5), service.page(prepared, 5, offset=5)
    whole = service.page(prepared, 10)
    assert [h.id for h in first.hits + second.hits] == [h.id for h in whole.hits]
    assert first.more and second.offset == 5
    last = service.page(prepared, 10, offset=55)
    assert len(last.hits) == 5 and not last.more
    assert service.page(prepared, 5, offset=500).hits == []


def test_like_a_stored_picture(
    service: SearchService, shape_index: ShapeIndex, monkeypatch
) -> None:
    image = shape_index.images[7]
    monkeypatch.setattr(service.encoder, "embed_images", None)  # no re-encoding
    labels = {str(i.id): (i.color, i.shape) for i in shape_index.images}
    page = search(service, Query(like_id=str(image.id)), 3)
    assert str(image.id) not in [h.id for h in page.hits]  # never itself, at 1.00
    assert [labels[h.id] for h in page.hits] == [(image.color, image.shape)] * 3
    assert page.reading == f"like picture {image.id}"
    with pytest.raises(UnknownPicture, match="not in the index"):
        service.prepare(Query(like_id="nope"))


def test_min_score_and_nearest_anyway(shape_index: ShapeIndex) -> None:
    service = SearchService.open(shape_index.settings.model_copy(update={"min_score": 0.99}))
    page = search(service, "a green triangle", 5)
    assert page.hits == [] and page.below_min_score > 0
    anyway = search(service, "a green triangle", 5, nearest_anyway=True)
    assert len(anyway.hits) == 5 and anyway.below_min_score == 0


def test_a_copied_picture_comes_back_once(tmp_path: Path, shape_index: ShapeIndex) -> None:
    for image in shape_index.images[:6]:
        shutil.copy(image.path, tmp_path / image.path.name)
    shutil.copy(shape_index.images[0].path, tmp_path / "copy.jpg")
    settings = make_settings(tmp_path, collection="dups", duplicate_cosine=0.95)
    run(settings, FolderReader(tmp_path), BuildOptions(progress=False))
    dedup = SearchService.open(settings.model_copy(update={"duplicate_cosine": 0.9999}))
    copy = (tmp_path / "copy.jpg").read_bytes()
    hits = search(dedup, copy, 7).hits
    names = [Path(h.path).name for h in hits]
    assert len(hits) == 6 and len({"copy.jpg", shape_index.images[0].path.name} & set(names)) == 1
    keep_all = SearchService(dedup.encoder, dedup.store, files=dedup.files)  # both copies
    assert search(keep_all, copy, 7).hits[1].score >= 0.999


def test_caption_fusion_never_hurts_precision(
    tmp_path: Path, shape_index: ShapeIndex, service: SearchService, labels: dict
) -> None:
    settings = shape_index.settings.model_copy(update={"collection": "shapes"})
    captions = Database(settings).open(
        "shapes_captions",
        CaptionRecord,
        model=settings.clip_model,
        dim=service.encoder.dim,
        create=True,
    )
    records = [
        CaptionRecord(f"{i.id}:0", str(i.id), caption(i.color, i.shape)) for i in shape_index.images
    ]
    captions.upsert(records, service.encoder.embed_texts([r.caption for r in records]))
    try:
        fused = SearchService.open(settings)
        assert fused.fusion is not None
        for color, shape in LABELS:
            text = caption(color, shape)
            image_only = search(service, text, 5).hits
            with_captions = search(fused, text, 5).hits
            precision = [
                sum(labels[h.id] == (color, shape) for h in hits)
                for hits in (image_only, with_captions)
            ]
            assert precision[1] >= precision[0], text
            assert precision[1] == 5
    finally:
        Database(settings).drop("shapes_captions")


CATS = {"cat": [0, 3, 13, 20], "dog": [3, 5], "hot dog": [1]}


@pytest.fixture(scope="module")
def coco_index(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("coco-cats")
    settings = make_settings(root, coco_root=root / "coco", collection="cats")
    made = make_mini_coco(settings.coco_root, {"train2014": 16, "val2014": 8}, categories=CATS)
    run(settings, CocoReader(settings.coco_root), BuildOptions(progress=False))
    return settings, made


def test_hashtags_filter_by_category(coco_index) -> None:
    settings, made = coco_index
    service = SearchService.open(settings)
    assert service.store.categories() == ("cat", "dog", "hot dog")
    cats = {str(made[i].id) for i in CATS["cat"]}
    page = search(service, "#cat", 10)
    assert {h.id for h in page.hits} == cats and page.reading == "#cat"
    both = search(service, "#cat #dog a red circle", 10)
    assert [h.id for h in both.hits] == [str(made[3].id)]
    assert both.reading == "a red circle · #cat #dog"
    assert len(search(service, "#hotdog", 5).hits) == 1
    assert len(search(service, "#hot_dog", 5).hits) == 1
    with pytest.raises(UnknownCategory, match="no category #dgo: did you mean #dog"):
        service.prepare(Query(text="#dgo"))


def test_categories_are_stored_with_the_pictures(coco_index) -> None:
    settings, made = coco_index
    store = SearchService.open(settings).store
    record = store.get([str(made[3].id)])[0]
    assert record.categories == ("cat", "dog")
    assert store.get([str(made[2].id)])[0].categories == ()


def test_a_folder_index_has_no_categories(shape_index: ShapeIndex, service: SearchService) -> None:
    with pytest.raises(NoCategories, match="no categories"):
        service.prepare(Query(text="#dog"))


def test_cli_where(coco_index, run_cli) -> None:
    settings, made = coco_index
    result = run_cli(settings, "search", "--where", "cat,dog", "a red circle", "--k", "5")
    assert result.returncode == 0, result.stderr
    assert [Path(line.split()[2]).name for line in result.stdout.splitlines()] == [
        made[3].path.name
    ]
    assert "#cat #dog" in result.stderr
    only = run_cli(settings, "search", "--where", "cat", "--k", "10")
    assert only.returncode == 0 and len(only.stdout.splitlines()) == 4
    bad = run_cli(settings, "search", "--where", "dgo", "x")
    assert bad.returncode == 2 and "did you mean #dog" in bad.stderr
