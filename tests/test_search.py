from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.__main__ import main as cli_main
from core.errors import BadImage, EmptyQuery, IndexEmpty
from core.images import load_image
from core.models.encoder import DualEncoder
from core.search.sendable_files import SendableFiles
from core.search.service import MAX_QUERY_CHARS, SearchService, clean_query
from core.store.database import Database
from core.store.records import ImageRecord
from tests.conftest import ROOT, ShapeIndex, make_settings, subprocess_env
from tests.fixtures.shapes import LABELS, caption
from tests.searching import search


@pytest.fixture(scope="module", params=["clip", "siglip"])
def family_index(
    request: pytest.FixtureRequest, shape_index: ShapeIndex, siglip_shape_index: ShapeIndex
) -> ShapeIndex:
    """The shapes indexed with each model family's fixture: the semantic tests run on both."""
    return shape_index if request.param == "clip" else siglip_shape_index


@pytest.fixture(scope="module")
def service(family_index: ShapeIndex) -> SearchService:
    return SearchService.open(family_index.settings)


@pytest.mark.parametrize(("color", "shape"), LABELS)
def test_text_finds_the_described_pictures(
    service: SearchService, family_index: ShapeIndex, color: str, shape: str
) -> None:
    hits = search(service, caption(color, shape), 5).hits
    assert len(hits) == 5
    labels = {str(i.id): (i.color, i.shape) for i in family_index.images}
    precision = sum(labels[h.id] == (color, shape) for h in hits) / 5
    assert precision >= 0.8, [labels[h.id] for h in hits]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_hits_carry_id_path_score_and_captions(
    service: SearchService, family_index: ShapeIndex
) -> None:
    hit = search(service, "a green triangle", 1).hits[0]
    image = next(i for i in family_index.images if str(i.id) == hit.id)
    assert hit.path == str(image.path)
    assert hit.captions == (f"a {image.color} {image.shape}", "another caption")
    assert hit.caption == hit.captions[0]
    assert -1.0 <= hit.score <= 1.0


def test_an_indexed_picture_finds_itself_first(
    service: SearchService, family_index: ShapeIndex
) -> None:
    for image in family_index.images[::7]:
        hits = search(service, image.path.read_bytes(), 3).hits  # a draft-decoded JPEG
        assert hits[0].id == str(image.id)
        # 32-px fixtures magnify draft decoding's small change (test_model_families checks it
        # at full size); the picture still finds itself first.
        assert hits[0].score >= 0.97


def test_batched_text_search_equals_single_searches(service: SearchService) -> None:
    queries = ["a red circle", "a blue square", "a yellow triangle"]
    batched = [service.page(prepared, 4) for prepared in service.prepare_texts(queries)]
    assert [[h.id for h in page.hits] for page in batched] == [
        [h.id for h in search(service, q, 4).hits] for q in queries
    ]


def test_empty_and_long_queries(service: SearchService) -> None:
    for blank in ["", "   ", "\n\t"]:
        with pytest.raises(EmptyQuery):
            search(service, blank, 5)
    assert clean_query("  a   red\ncircle ") == "a red circle"
    assert len(clean_query("word " * 10_000)) == MAX_QUERY_CHARS
    assert len(search(service, "a red circle " * 2_000, 5).hits) == 5


def test_bad_image_bytes(service: SearchService) -> None:
    with pytest.raises(BadImage):
        search(service, b"not an image", 5)


def test_hits_whose_file_vanished_are_skipped(tmp_path: Path, shape_index: ShapeIndex) -> None:
    settings = make_settings(tmp_path, collection="vanishing")
    encoder = DualEncoder(settings.clip_model, device="cpu", dtype="float32")
    copies = []
    for image in shape_index.images[:12]:
        copy = tmp_path / image.path.name
        copy.write_bytes(image.path.read_bytes())
        copies.append((image, copy))
    store = Database(settings).open(
        settings.collection, ImageRecord, model=settings.clip_model, dim=encoder.dim, create=True
    )
    vectors = encoder.embed_images([load_image(c) for _, c in copies])
    store.upsert([ImageRecord(id=str(i.id), path=str(c)) for i, c in copies], vectors)
    service = SearchService(encoder, store, files=SendableFiles(lambda: (str(tmp_path),)))
    target_image, target_copy = copies[0]
    assert search(service, target_copy.read_bytes(), 5).hits[0].id == str(target_image.id)
    target_copy.unlink()
    hits = search(service, target_image.path.read_bytes(), 5).hits
    assert str(target_image.id) not in [h.id for h in hits]
    assert len(hits) == 5  # still a full list


def test_empty_collection_is_index_empty(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, collection="never_built")
    with pytest.raises(IndexEmpty):
        SearchService.open(settings)
    encoder = DualEncoder(settings.clip_model, device="cpu", dtype="float32")
    store = Database(settings).open(
        "built_but_empty", ImageRecord, model=settings.clip_model, dim=encoder.dim, create=True
    )
    with pytest.raises(IndexEmpty, match="index is empty"):
        search(SearchService(encoder, store, files=SendableFiles(tuple)), "a red circle", 5)


def test_cli_as_a_real_subprocess(shape_index: ShapeIndex, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "core", "search", "a blue circle", "--k", "2"],
        env=subprocess_env(shape_index.settings),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 2


def test_cli_text_output(shape_index: ShapeIndex, run_cli) -> None:
    result = run_cli(shape_index.settings, "search", "a blue circle", "--k", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    rank, score, path, *first_caption = lines[0].split()
    assert rank == "1" and 0 < float(score) <= 1 and Path(path).exists()
    assert " ".join(first_caption) == "a blue circle"


def test_cli_scores_read_as_the_bot_shows_them(shape_index: ShapeIndex, run_cli) -> None:
    """The far end of a search has negative cosines: printed as 0.00, two decimals, like an
    album's caption; --json keeps the exact cosine."""
    result = run_cli(shape_index.settings, "search", "a red circle", "--k", "60")
    assert result.returncode == 0, result.stderr
    scores = [line.split()[1] for line in result.stdout.strip().splitlines()]
    assert len(scores) == 60 and scores[-1] == "0.00"
    assert all(re.fullmatch(r"(0\.\d\d|1\.00)", score) for score in scores)
    assert "found: 60 in all" in result.stderr
    exact = json.loads(
        run_cli(shape_index.settings, "search", "a red circle", "--json", "--k", "60").stdout
    )
    assert exact[-1]["score"] < 0


def test_cli_like_leaves_the_picture_out_and_nothing_is_not_a_query(
    shape_index: ShapeIndex, run_cli
) -> None:
    image = shape_index.images[3]
    result = run_cli(shape_index.settings, "search", "--like", str(image.id), "--json")
    assert result.returncode == 0, result.stderr
    assert str(image.id) not in [hit["id"] for hit in json.loads(result.stdout)]
    for nothing in ["...", "\N{ZERO WIDTH SPACE}", "🙂"]:
        refused = run_cli(shape_index.settings, "search", nothing)
        assert refused.returncode == 2 and "nothing to search for" in refused.stderr


def test_cli_json_output_by_image(shape_index: ShapeIndex, run_cli) -> None:
    image = shape_index.images[5]
    result = run_cli(shape_index.settings, "search", "--image", str(image.path), "--json")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert len(hits) == 5  # TOP_K's default
    assert set(hits[0]) == {"id", "path", "score", "captions", "file_size", "mtime_ns"}
    assert hits[0]["id"] == str(image.id) and hits[0]["score"] >= 0.99
    assert hits[0]["captions"][0] == f"a {image.color} {image.shape}"


def test_cli_exit_codes(shape_index: ShapeIndex, tmp_path: Path, run_cli) -> None:
    empty = run_cli(shape_index.settings, "search", "   ")
    assert empty.returncode == 2 and "nothing to search for" in empty.stderr
    no_index = run_cli(make_settings(tmp_path, collection="nothing_here"), "search", "a dog")
    assert no_index.returncode == 2
    assert "index is empty: " in no_index.stderr and "index_builder.py" in no_index.stderr
    assert "Traceback" not in no_index.stderr
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a picture")
    bad_image = run_cli(shape_index.settings, "search", "--image", str(bad))
    assert bad_image.returncode == 1 and "not an image" in bad_image.stderr
    with pytest.raises(SystemExit) as usage:
        run_cli(shape_index.settings, "search")
    assert usage.value.code == 2
    other_model = run_cli(
        make_settings(
            shape_index.settings.chroma_path.parent, collection="shapes", clip_model=str(ROOT)
        ),
        "search",
        "a dog",
    )
    assert other_model.returncode == 1 and "which has no config.json" in other_model.stderr


def test_cli_help_explains_every_flag(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        cli_main(["search", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ["--image", "--k", "--json"]:
        assert flag in text


def test_scores_are_cosine_similarities(service: SearchService) -> None:
    vector = service.encoder.embed_texts(["a red square"])[0]
    hit = search(service, "a red square", 1).hits[0]
    stored = service.encoder.embed_images([load_image(hit.path)])[0]
    assert hit.score == pytest.approx(float(np.dot(vector, stored)), abs=1e-4)


def test_cli_status(shape_index: ShapeIndex, tmp_path: Path, run_cli) -> None:
    built = run_cli(shape_index.settings, "status")
    assert built.returncode == 0
    assert "'shapes'" in built.stdout and "60 pictures" in built.stdout
    assert "tiny_clip (32-d)" in built.stdout
    empty = run_cli(make_settings(tmp_path, collection="not_built"), "status")
    assert empty.returncode == 2 and "empty" in empty.stdout
