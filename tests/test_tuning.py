"""DTYPE=auto and --batch-size auto: chosen by measurement, guarded for fidelity, cached per
CPU, model and torch version, skipped when set explicitly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel

import index_builder
from bot import replies
from core.models import runtime, tuning
from core.models.encoder import DualEncoder
from tests.conftest import TINY_CLIP

ROOT = Path(__file__).resolve().parent.parent


def key(**changes: str) -> tuning.TuningKey:
    values = {"cpu": "Some CPU", "model": "m", "torch": "2.13", "device": "cpu"} | changes
    return tuning.TuningKey(**values)


def test_cache_round_trip_is_keyed_by_cpu_model_and_torch(tmp_path: Path) -> None:
    cache = tuning.TuningCache(tmp_path / tuning.CACHE_NAME)
    chosen = tuning.Tuning("bfloat16", {"bfloat16": 152.0, "float32": 30.0}, batch_size=32)
    cache.put(key(), chosen)
    back = tuning.TuningCache(tmp_path / tuning.CACHE_NAME).get(key())
    assert back is not None and back.cached
    assert (back.dtype, back.batch_size, back.dtype_rates) == ("bfloat16", 32, chosen.dtype_rates)
    for changed in (key(cpu="Other CPU"), key(model="n"), key(torch="2.14")):
        assert cache.get(changed) is None
    (tmp_path / tuning.CACHE_NAME).write_text("not json")
    assert cache.get(key()) is None  # a broken file is ignored, not fatal


def test_the_faster_dtype_and_batch_win() -> None:
    dtype, rejected = tuning.choose_dtype(
        {"float32": 30.0, "bfloat16": 152.0}, {"float32": 1.0, "bfloat16": 0.999}
    )
    assert (dtype, rejected) == ("bfloat16", {})
    dtype, _ = tuning.choose_dtype(
        {"float32": 30.0, "bfloat16": 29.0}, {"float32": 1.0, "bfloat16": 0.999}
    )
    assert dtype == "float32"
    assert tuning.choose_batch({16: 105.0, 32: 152.0, 64: 109.0, 128: 97.0}) == 32


def test_batch_sweep_times_each_size_with_the_injected_clock() -> None:
    seconds = {16: 16 / 105, 32: 32 / 152, 64: 64 / 109, 128: 128 / 97}
    now = [0.0]
    pending: list[int] = []

    def clock() -> float:
        if pending:
            now[0] += seconds[pending.pop()]
        return now[0]

    def embed(pixels: torch.Tensor) -> None:
        pending.append(len(pixels))

    rates = tuning.measure_batches(embed, lambda n: torch.zeros(n, 1), clock=clock, budget_s=1e9)
    assert set(rates) == {16, 32, 64, 128}
    assert tuning.choose_batch(rates) == 32


def test_the_fidelity_guard_rejects_a_dtype_whose_vectors_differ() -> None:
    model = torch.nn.Linear(4, 4)

    def embed(module: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        out = module(pixels)
        if out.dtype == torch.bfloat16:  # a "fast" dtype that gets the vectors wrong
            return out.flip(-1)
        return out

    _, cosines = tuning.measure_dtypes(
        model, embed, torch.randn(8, 4), [torch.float32, torch.bfloat16]
    )
    assert cosines["float32"] == pytest.approx(1.0)
    assert cosines["bfloat16"] < tuning.MIN_COSINE
    dtype, rejected = tuning.choose_dtype({"float32": 1.0, "bfloat16": 1000.0}, cosines)
    assert dtype == "float32" and set(rejected) == {"bfloat16"}


def test_auto_measures_once_then_reuses_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    measure = tuning.measure_dtypes

    def counted(*args, **kwargs):
        calls.append(1)
        return measure(*args, **kwargs)

    monkeypatch.setattr(tuning, "measure_dtypes", counted)
    path = tmp_path / tuning.CACHE_NAME
    first = DualEncoder(str(TINY_CLIP), device="cpu", tuning_cache=path, tune_batch=True)
    vectors = first.embed_texts(["a red circle"])
    assert len(calls) == 1 and first.tuning is not None and not first.tuning.cached
    assert first.tuning.batch_size in tuning.BATCH_CANDIDATES
    assert str(first.dtype).removeprefix("torch.") == first.tuning.dtype
    entry = next(iter(json.loads(path.read_text()).values()))
    assert entry["dtype"] == first.tuning.dtype

    second = DualEncoder(str(TINY_CLIP), device="cpu", tuning_cache=path, tune_batch=True)
    assert np.allclose(second.embed_texts(["a red circle"]), vectors, atol=1e-2)
    assert len(calls) == 1 and second.tuning is not None and second.tuning.cached

    monkeypatch.setattr(tuning, "cpu_name", lambda: "Another CPU")  # another machine
    third = DualEncoder(str(TINY_CLIP), device="cpu", tuning_cache=path)
    third.load()
    assert len(calls) == 2 and len(json.loads(path.read_text())) == 2


def test_an_explicit_dtype_measures_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("measured although DTYPE was explicit")

    monkeypatch.setattr(tuning, "measure_dtypes", refuse)
    monkeypatch.setattr(tuning, "measure_batches", refuse)
    path = tmp_path / tuning.CACHE_NAME
    encoder = DualEncoder(str(TINY_CLIP), device="cpu", dtype="float32", tuning_cache=path)
    assert encoder.embed_texts(["a red circle"]).shape[0] == 1
    assert encoder.tuning is None and not path.exists()


def test_weights_already_in_the_dtype_are_mapped_not_streamed() -> None:
    assert runtime.load_streamed(AutoModel, str(TINY_CLIP), torch.float32, lambda: "mapped") == (
        "mapped"
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_streamed_loading_gives_the_weights_from_pretrained_gives(dtype: torch.dtype) -> None:
    reference = AutoModel.from_pretrained(TINY_CLIP, dtype=dtype)

    def refuse():
        raise AssertionError("fell back to from_pretrained")

    streamed = runtime.load_streamed(AutoModel, str(TINY_CLIP), dtype, refuse)
    expected = reference.state_dict()
    got = streamed.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype
        assert torch.equal(got[name], tensor), name


def test_batch_size_auto_is_the_builder_default() -> None:
    assert index_builder.build_parser().parse_args(["--folder", "x"]).batch_size == "auto"
    assert index_builder.batch_size("auto") == "auto"
    assert index_builder.batch_size("48") == 48
    out = subprocess.run(
        [sys.executable, "index_builder.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--batch-size N|auto" in out and "hardware-tuning.json" in " ".join(out.split())


def test_stats_says_how_the_dtype_was_tuned() -> None:
    model = replies.ModelNote("clip-vit-base-patch32", "clip", False)
    text = replies.stats_text(
        images=3, model=model, device="cpu", dtype="bfloat16", tuned="bfloat16, batch 32 (measured)"
    )
    assert "Tuned: bfloat16, batch 32 (measured)" in text
    assert "Tuned" not in replies.stats_text(images=3, model=model, device="cpu", dtype="float32")
