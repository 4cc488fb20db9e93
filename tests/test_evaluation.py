"""`core.evaluation` and `python -m core eval`: recall@K against brute force written here in the
plainest way, and the command end to end on a synthetic mini COCO with the tiny CLIP."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from core.__main__ import main as cli_main
from core.evaluation import (
    TIE_TOLERANCE,
    EvalReport,
    Recalls,
    format_report,
    image_to_text_ranks,
    ranks_in_lists,
    recalls,
    text_to_image_ranks,
)
from core.images import decode_image
from core.indexing import BuildOptions
from core.indexing import run as build_index
from core.models.encoder import DualEncoder
from core.search.service import SearchService
from core.sources.coco import CocoReader
from tests.conftest import CliResult, make_settings
from tests.mini_coco import make_mini_coco

KEYS = {"model", "images", "captions", "text_to_image", "image_to_text"}


# --- the maths, against loops over a similarity matrix ------------------------------------------


def brute_text_to_image(sim: list[list[float]], owner: list[int], tol: float = 0.0) -> list[int]:
    """sim[t][i]: text t against image i. Rank = 1 + wrong images scoring at least as high."""
    ranks = []
    for t, row in enumerate(sim):
        right = row[owner[t]]
        ranks.append(1 + sum(1 for i, s in enumerate(row) if i != owner[t] and s >= right - tol))
    return ranks


def brute_image_to_text(sim: list[list[float]], owner: list[int], tol: float = 0.0) -> list[int]:
    """For each image, the best over its own texts of 1 + other images' texts at least as high."""
    ranks = []
    for i in range(len(sim[0])):
        best = None
        for t in range(len(sim)):
            if owner[t] != i:
                continue
            rank = 1 + sum(
                1 for u in range(len(sim)) if owner[u] != i and sim[u][i] >= sim[t][i] - tol
            )
            best = rank if best is None else min(best, rank)
        ranks.append(best)
    return ranks


def brute_recalls(ranks: list[int]) -> dict[str, float]:
    return {f"R@{k}": 100.0 * sum(1 for r in ranks if r <= k) / len(ranks) for k in (1, 5, 10)}


def as_vectors(sim: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Texts and images whose products are exactly `sim`: the texts are its rows, the images
    the identity (so a hand-made similarity matrix goes through the real functions)."""
    return np.array(sim, dtype=np.float32), np.eye(len(sim[0]), dtype=np.float32)


def test_hand_made_example() -> None:
    # 3 images; texts 0,1 -> image 0, text 2 -> image 1, texts 3,4 -> image 2
    sim = [
        [0.9, 0.1, 0.2],  # its image first
        [0.3, 0.5, 0.3],  # image 0 ties with image 2 (ties count against): rank 3
        [0.2, 0.2, 0.8],  # image 1 ties with image 0: rank 3
        [0.1, 0.7, 0.6],  # rank 2
        [0.0, 0.0, 0.0],  # all tied: rank 3
    ]
    owner = [0, 0, 1, 2, 2]
    texts, images = as_vectors(sim)
    assert text_to_image_ranks(texts, images, np.array(owner)).tolist() == [1, 3, 3, 2, 3]
    # image 0: its best text is text 0 (0.9), nothing else that high: 1
    # image 1: its text 2 scores 0.2; texts 0 (0.1)... column 1 = [.1,.5,.2,.7,0]: 2 above: 3
    # image 2: text 3 scores 0.6 (text 4: 0.0); other images' texts: .2,.3,.8 -> one above: 2
    assert image_to_text_ranks(images, texts, np.array(owner)).tolist() == [1, 3, 2]
    assert recalls(np.array([1, 3, 3, 2, 3]), (1, 2, 3)).at == ((1, 20.0), (2, 40.0), (3, 100.0))


@pytest.mark.parametrize("seed", range(6))
def test_ranks_equal_brute_force_on_random_matrices_with_ties(seed: int) -> None:
    rng = random.Random(seed)
    n_images = rng.randint(2, 14)
    owner = [i for i in range(n_images) for _ in range(rng.randint(1, 4))]  # 1-4 texts each
    rng.shuffle(owner)
    # scores on a coarse grid: many exact ties; some texts repeated exactly
    sim = [[rng.randint(-3, 3) / 4 for _ in range(n_images)] for _ in owner]
    for _ in range(len(sim) // 4):
        sim[rng.randrange(len(sim))] = list(sim[rng.randrange(len(sim))])
    texts, images = as_vectors(sim)
    t2i = text_to_image_ranks(texts, images, np.array(owner))
    i2t = image_to_text_ranks(images, texts, np.array(owner))
    assert t2i.tolist() == brute_text_to_image(sim, owner)
    assert i2t.tolist() == brute_image_to_text(sim, owner)
    assert recalls(t2i).to_json() == pytest.approx(brute_recalls(brute_text_to_image(sim, owner)))
    assert recalls(i2t).to_json() == pytest.approx(brute_recalls(brute_image_to_text(sim, owner)))


def test_chunking_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    images = rng.normal(size=(40, 8)).astype(np.float32)
    texts = rng.normal(size=(130, 8)).astype(np.float32)
    owner = np.array([n % 40 for n in range(130)])
    whole = (text_to_image_ranks(texts, images, owner), image_to_text_ranks(images, texts, owner))
    monkeypatch.setattr("core.evaluation.CHUNK_CELLS", 50)  # one or two rows at a time
    chunked = (text_to_image_ranks(texts, images, owner), image_to_text_ranks(images, texts, owner))
    assert [r.tolist() for r in chunked] == [r.tolist() for r in whole]


def test_an_image_without_texts_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one text"):
        image_to_text_ranks(np.eye(3), np.eye(3)[:2], np.array([0, 1]))


def test_ranks_in_lists() -> None:
    found = [["a", "b", "c"], ["c", "a"], []]
    assert ranks_in_lists(found, ["b", "b", "x"]).tolist() == [2, 3, 1]


# --- end to end on a mini COCO ------------------------------------------------------------------


@dataclass(frozen=True)
class Coco:
    root: Path
    captions: dict[int, list[str]]
    """Image id -> its captions in annotation-id order (the reader's order)."""
    paths: dict[int, Path]
    val_ids: list[int]


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Coco:
    root = tmp_path_factory.mktemp("eval") / "coco"
    made = make_mini_coco(root, {"train2014": 4, "val2014": 20}, seed=5)
    data = json.loads((root / "annotations" / "captions_val2014.json").read_text())
    by_image = defaultdict(list)
    for annotation in sorted(data["annotations"], key=lambda a: a["id"]):
        by_image[annotation["image_id"]].append(annotation["caption"])
    val = sorted(image.id for image in made if image.split == "val2014")
    return Coco(root, dict(by_image), {image.id: image.path for image in made}, val)


@pytest.fixture(scope="module")
def encoder() -> DualEncoder:
    return DualEncoder(make_settings(Path("unused")).clip_model, device="cpu", dtype="float32")


def independent(encoder: DualEncoder, images: list[tuple[Path, list[str]]]) -> dict:
    """The expected JSON numbers: the fixture encodes, plain Python ranks (same tie rule)."""
    pictures = [decode_image(p, min_side=encoder.input_size).image for p, _ in images]
    image_vectors = encoder.embed_images(pictures).tolist()
    owner = [n for n, (_, captions) in enumerate(images) for _ in captions]
    text_vectors = encoder.embed_texts([c for _, captions in images for c in captions]).tolist()
    sim = [
        [sum(a * b for a, b in zip(t, i, strict=True)) for i in image_vectors] for t in text_vectors
    ]
    return {
        "images": len(images),
        "captions": len(owner),
        "text_to_image": brute_recalls(brute_text_to_image(sim, owner, TIE_TOLERANCE)),
        "image_to_text": brute_recalls(brute_image_to_text(sim, owner, TIE_TOLERANCE)),
    }


def check_json(result: CliResult, expected: dict) -> dict:
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= KEYS
    assert set(report["text_to_image"]) == set(report["image_to_text"]) == {"R@1", "R@5", "R@10"}
    for key in ("images", "captions"):
        assert report[key] == expected[key]
    for key in ("text_to_image", "image_to_text"):
        assert report[key] == pytest.approx(expected[key]), key
    return report


def test_limit_json_equals_an_independent_computation(
    coco: Coco, encoder: DualEncoder, tmp_path: Path, run_cli
) -> None:
    settings = make_settings(tmp_path, coco_root=coco.root)
    result = run_cli(settings, "eval", "--limit", "14", "--json")
    chosen = coco.val_ids[:14]
    expected = independent(encoder, [(coco.paths[i], coco.captions[i]) for i in chosen])
    report = check_json(result, expected)
    assert report["model"] == settings.clip_model
    assert "text_to_image_index" not in report and "text_to_image_fused" not in report
    assert any("no collection" in note for note in report["notes"])
    # 20 val pictures over 12 colour x shape classes share caption texts: not all found first
    assert report["image_to_text"]["R@1"] < 100


def test_table_output(coco: Coco, tmp_path: Path, run_cli) -> None:
    result = run_cli(make_settings(tmp_path, coco_root=coco.root), "eval", "--limit", "6")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "6 images · 30 captions (first 5 per image" in lines[0]
    assert lines[1].split() == ["R@1", "R@5", "R@10"]
    assert [line.split()[0] for line in lines[2:4]] == ["T→I", "I→T"]
    assert all(0 <= float(v) <= 100 for line in lines[2:4] for v in line.split()[2:])


def test_index_and_fused_rows(coco: Coco, tmp_path: Path, run_cli) -> None:
    settings = make_settings(tmp_path, coco_root=coco.root, collection="eval_plain")
    build_index(
        settings, CocoReader(coco.root, ["val2014"]), BuildOptions(limit=14, progress=False)
    )
    report = json.loads(run_cli(settings, "eval", "--limit", "14", "--json").stdout)
    # 14 pictures: HNSW is exact here, and the same stored vectors are ranked both ways
    assert report["text_to_image_index"] == report["text_to_image"]
    assert "text_to_image_fused" not in report
    assert any("no captions collection" in note for note in report["notes"])
    assert any("read from collection 'eval_plain'" in note for note in report["notes"])
    fewer = json.loads(run_cli(settings, "eval", "--limit", "10", "--json").stdout)
    assert fewer["images"] == 10 and "text_to_image_index" not in fewer  # holds 14, not 10
    assert any("holds 14 pictures, not just these 10" in note for note in fewer["notes"])

    fused = make_settings(tmp_path, coco_root=coco.root, collection="eval_fused")
    build_index(
        fused,
        CocoReader(coco.root, ["val2014"]),
        BuildOptions(limit=14, with_captions=True, progress=False),
    )
    result = run_cli(fused, "eval", "--limit", "14")
    assert result.returncode == 0, result.stderr
    rows = [line.split()[:2] for line in result.stdout.splitlines()[2:6]]
    assert rows == [["T→I", "exact"], ["T→I", "index"], ["T→I", "fused"], ["I→T", "exact"]]
    report = json.loads(run_cli(fused, "eval", "--limit", "14", "--json").stdout)
    assert set(report["text_to_image_fused"]) == {"R@1", "R@5", "R@10"}
    off = json.loads(run_cli(fused, "eval", "--limit", "14", "--json", "--no-index").stdout)
    assert "text_to_image_index" not in off and off["text_to_image"] == pytest.approx(
        report["text_to_image"]
    )


def test_fusion_hook_leaves_out_the_skipped_captions(coco: Coco, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, coco_root=coco.root, collection="eval_hook")
    build_index(
        settings,
        CocoReader(coco.root, ["val2014"]),
        BuildOptions(limit=8, with_captions=True, progress=False),
    )
    service = SearchService.open(settings)
    assert service.fusion is not None
    vector = service.encoder.embed_texts([coco.captions[coco.val_ids[3]][0]])[0]
    matches = service.store.query(vector[None, :], 5)[0]
    plain = [m.record.id for m in matches]
    everything_skipped = service.fusion.fuse(vector, matches, 5, skip_caption=lambda r: True)
    assert [m.record.id for m in everything_skipped] == plain
    assert str(coco.val_ids[3]) in [m.record.id for m in service.fusion.fuse(vector, matches, 5)]


def write_karpathy(path: Path, coco: Coco) -> list[tuple[Path, list[str]]]:
    """A split file: 6 'test' val2014 pictures (one with 6 sentences, whose sentences are
    not the annotation file's), the rest 'train', 'val' or 'restval'. Returns the expected
    (path, first 5 captions) of the test pictures, by id."""
    test_ids = coco.val_ids[2:8]
    entries, expected = [], []
    for n, image_id in enumerate(coco.val_ids + [i for i in coco.paths if i not in coco.val_ids]):
        sentences = list(reversed(coco.captions.get(image_id, ["x"])))
        if image_id == test_ids[1]:
            sentences = ["a  sixth\tsentence first", *sentences]  # whitespace is normalised
        split = "test" if image_id in test_ids else ("train", "val", "restval")[n % 3]
        picture = coco.paths[image_id]
        entries.append(
            {
                "filepath": picture.parent.name,
                "filename": picture.name,
                "cocoid": image_id,
                "split": split,
                "sentences": [{"raw": s, "tokens": s.split()} for s in sentences],
            }
        )
        if split == "test":
            clean = [" ".join(s.split()) for s in sentences]
            expected.append((image_id, picture, clean[:5]))
    random.Random(1).shuffle(entries)
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return [(p, captions) for _, p, captions in sorted(expected)]


def test_karpathy_file_selects_its_test_split(
    coco: Coco, encoder: DualEncoder, tmp_path: Path, run_cli
) -> None:
    split_file = tmp_path / "dataset_coco.json"
    expected_images = write_karpathy(split_file, coco)
    assert len(expected_images) == 6 and expected_images[1][1][0] == "a sixth sentence first"
    settings = make_settings(tmp_path, coco_root=coco.root)
    result = run_cli(settings, "eval", "--karpathy", str(split_file), "--json")
    report = check_json(result, independent(encoder, expected_images))
    assert report["captions"] == 30 and report["standard_split"] is True
    limited = run_cli(settings, "eval", "--karpathy", str(split_file), "--limit", "4", "--json")
    check_json(limited, independent(encoder, expected_images[:4]))
    assert json.loads(limited.stdout)["standard_split"] is False


def test_published_numbers_and_comparability() -> None:
    r = Recalls(((1, 31.0), (5, 56.0), (10, 67.0)))
    report = EvalReport("openai/clip-vit-base-patch32", "Karpathy test split", 5000, 25000, r, r)
    text = format_report(report)
    assert "30.4 / 55.9 / 66.9" in text and "50.1 / 75.0 / 83.5" in text
    assert "NOT comparable" in text
    standard = format_report(
        EvalReport("openai/clip-vit-base-patch32", "x", 5000, 25000, r, r, comparable=True)
    )
    assert "comparable: the same 5k test split" in standard
    siglip = format_report(EvalReport("google/siglip-base-patch16-224", "x", 5, 25, r, r))
    assert "47.8 / - / -" in siglip
    assert "published" not in format_report(EvalReport("my/model", "x", 5, 25, r, r))


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, ["--karpathy", "missing.json"], "not found"),
        ('{"images": [', ["--karpathy", "split.json"], "is not valid JSON"),
        ('{"pictures": []}', ["--karpathy", "split.json"], "has no 'images' list"),
        (
            '{"images": [{"split": "test", "filename": "a.jpg"}]}',
            ["--karpathy", "split.json"],
            "lacks",
        ),
        ('{"images": [{"split": "train"}]}', ["--karpathy", "split.json"], "no 'test' pictures"),
        (None, ["--limit", "0"], "--limit must be at least 1"),
        (None, ["--coco-root", "no-such-dir"], "annotation file"),
    ],
)
def test_bad_inputs_give_one_line_and_exit_2(
    coco: Coco, tmp_path: Path, run_cli, content: str | None, args: list[str], message: str
) -> None:
    if content is not None:
        (tmp_path / "split.json").write_text(content)
    result = run_cli(make_settings(tmp_path, coco_root=coco.root), "eval", *args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_help_explains_every_flag(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        cli_main(["eval", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ["--coco-root", "--split", "--karpathy", "--limit", "--no-index", "--json"]:
        assert flag in text
    assert "first 5 captions" in text and "comparable only with --karpathy" in text
