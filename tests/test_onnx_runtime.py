"""ENCODER_RUNTIME: the queries through ONNX Runtime (float32 or int8 weights) give torch
float32's vectors for every family; the exported towers are cached on disk and reused,
untrusted or broken files are exported again; auto measures once, guards fidelity and caches
its choice; anything missing or failing falls back to torch."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import ConfigError
from core.models import onnx_runtime, tuning
from core.models.encoder import DualEncoder
from core.models.onnx_files import DIGEST_GLOB, DIRECTORY, OnnxCache
from core.models.tuning import RuntimeTuning, Tuning
from tests.conftest import TINY_CLIP, TINY_SIGLIP
from tests.test_model_families import (
    SIGLIP_TEXT,
    TEXTS,
    _gemma_tokenizer,
    _save,
    _siglip,
    pictures,
)

FAMILIES = ("clip", "siglip", "siglip2")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A checkpoint of each family: the fixtures' CLIP and SigLIP, a SigLIP 2 (Gemma
    tokenizer) built like test_model_families'."""
    torch.manual_seed(0)
    siglip2 = _save(
        tmp_path_factory.mktemp("s2") / "tiny-siglip2", *_siglip(_gemma_tokenizer()), SIGLIP_TEXT
    )
    return {"clip": TINY_CLIP, "siglip": TINY_SIGLIP, "siglip2": siglip2.path}


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every tower exported or quantized from now on, by name."""
    done: list[str] = []
    for name in ("export_text", "export_image", "quantize"):
        original = getattr(onnx_runtime, name)

        def counted(*args, _original=original, _name=name):
            done.append(_name)
            return _original(*args)

        monkeypatch.setattr(onnx_runtime, name, counted)
    return done


def encoder(model: Path, cache: Path, runtime: str, dtype: str = "float32") -> DualEncoder:
    return DualEncoder(
        str(model),
        device="cpu",
        dtype=dtype,
        tuning_cache=cache / tuning.CACHE_NAME,
        runtime=runtime,
    )


def torch_vectors(model: Path) -> tuple[np.ndarray, np.ndarray]:
    reference = DualEncoder(str(model), device="cpu", dtype="float32")
    return reference.embed_texts(TEXTS), reference.embed_images(pictures())


def lowest_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_vectors_equal_torch_float32_for_every_family(
    family: str, models: dict[str, Path], tmp_path: Path
) -> None:
    texts, images = torch_vectors(models[family])
    exact = encoder(models[family], tmp_path, "onnx")
    got_texts, got_images = exact.embed_texts(TEXTS, batch_size=3), exact.embed_images(pictures())
    assert exact.tuning is not None and exact.tuning.runtime is not None
    assert (exact.tuning.runtime.text, exact.tuning.runtime.image) == ("onnx", "onnx")
    assert got_texts.dtype == np.float32 and got_texts.shape == texts.shape
    np.testing.assert_allclose(got_texts, texts, atol=1e-5)  # SigLIP padded to 64 as torch
    np.testing.assert_allclose(got_images, images, atol=1e-5)
    int8 = encoder(models[family], tmp_path, "onnx-int8")  # quantized from the cached float32
    assert lowest_cosine(int8.embed_texts(TEXTS), texts) >= onnx_runtime.MIN_COSINE
    assert lowest_cosine(int8.embed_images(pictures()), images) >= onnx_runtime.MIN_COSINE


def test_auto_measures_once_then_reuses_the_cached_choice_and_files(
    tmp_path: Path, exports: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = encoder(TINY_CLIP, tmp_path, "auto")
    first.load()
    assert sorted(exports) == ["export_image", "export_text", "quantize", "quantize"]
    chosen = first.tuning.runtime
    assert chosen.reason == "measured" and {chosen.text, chosen.image} <= {
        "torch",
        "onnx",
        "onnx-int8",
    }
    assert set(chosen.text_ms) == set(chosen.image_ms) == {"torch", "onnx", "onnx-int8"}
    assert set(chosen.cosines) == {f"{t} {r}" for t in ("text", "image") for r in chosen.text_ms}
    [(key, entry)] = [
        (k, v)
        for k, v in json.loads((tmp_path / tuning.CACHE_NAME).read_text()).items()
        if "ENCODER_RUNTIME" in k
    ]
    assert f"onnxruntime {__import__('onnxruntime').__version__}" in key
    assert (entry["text"], entry["image"]) == (chosen.text, chosen.image)
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / DIRECTORY).rglob("*.onnx")}
    assert len(files) == 4 and all(p.stat().st_mode & 0o077 == 0 for p in files)

    def refuse(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(onnx_runtime, "_timed", refuse)
    second = encoder(TINY_CLIP, tmp_path, "auto")
    np.testing.assert_allclose(
        second.embed_texts(["a red circle"]), first.embed_texts(["a red circle"]), atol=1e-6
    )
    assert second.tuning.runtime.reason == "cached" and len(exports) == 4  # nothing exported
    assert {p: p.stat().st_mtime_ns for p in files} == files


def damage(path: Path, how: str) -> None:
    if how == "corrupted":
        path.write_bytes(b"not an onnx model")
    elif how == "writable by others":
        path.chmod(0o666)
    else:
        os.chown(path, 4321, 4321)


@pytest.mark.parametrize("how", ["corrupted", "writable by others", "another user's"])
def test_a_broken_or_untrusted_cache_file_is_exported_again(
    how: str, tmp_path: Path, exports: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    if how == "another user's" and os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    texts, _ = torch_vectors(TINY_CLIP)
    encoder(TINY_CLIP, tmp_path, "onnx").load()
    [text_file] = (tmp_path / DIRECTORY).rglob(f"text-onnx-{DIGEST_GLOB}.onnx")
    damage(text_file, how)
    exports.clear()
    with caplog.at_level(logging.WARNING, logger="core.models.onnx_runtime"):
        again = encoder(TINY_CLIP, tmp_path, "onnx")
        np.testing.assert_allclose(again.embed_texts(TEXTS), texts, atol=1e-5)
    assert exports == ["export_text"]  # only the bad file, and once
    assert f"ONNX cache file {text_file} is ignored" in caplog.text
    info = text_file.stat()
    assert (info.st_uid, info.st_mode & 0o077) == (os.geteuid(), 0)


def test_without_onnxruntime_auto_is_torch_and_an_explicit_setting_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # not importable
    with caplog.at_level(logging.INFO, logger="core.models.onnx_runtime"):
        auto = encoder(TINY_CLIP, tmp_path, "auto")
        texts = auto.embed_texts(TEXTS)
    np.testing.assert_allclose(texts, torch_vectors(TINY_CLIP)[0], atol=1e-6)
    assert (auto.tuning.runtime.text, auto.tuning.runtime.image) == ("torch", "torch")
    [line] = [r.getMessage() for r in caplog.records if r.name == "core.models.onnx_runtime"]
    assert "auto → torch" in line and "onnxruntime" in line
    assert not (tmp_path / DIRECTORY).exists()
    for setting in ("onnx", "onnx-int8"):
        with pytest.raises(ConfigError, match=f"ENCODER_RUNTIME={setting} needs onnxruntime"):
            encoder(TINY_CLIP, tmp_path, setting).load()


def test_a_failing_export_falls_back_to_torch_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unsupported(*args):
        raise RuntimeError("Exporting the operator 'aten::something' is not supported")

    monkeypatch.setattr(onnx_runtime, "export_text", unsupported)
    with caplog.at_level(logging.WARNING, logger="core.models.onnx_runtime"):
        fallen = encoder(TINY_CLIP, tmp_path, "auto")
        texts = fallen.embed_texts(TEXTS)
    np.testing.assert_allclose(texts, torch_vectors(TINY_CLIP)[0], atol=1e-6)
    assert fallen.tuning.runtime.text == "torch"
    [line] = caplog.messages
    assert "ENCODER_RUNTIME auto → torch: ONNX Runtime failed (RuntimeError" in line
    assert "torch" in fallen.tuning.summary()


def test_explicit_runtimes_measure_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("measured although ENCODER_RUNTIME was set")

    monkeypatch.setattr(onnx_runtime, "_timed", refuse)
    plain = encoder(TINY_CLIP, tmp_path, "torch")
    plain.load()
    assert plain.tuning is None and not (tmp_path / DIRECTORY).exists()
    int8 = encoder(TINY_CLIP, tmp_path, "onnx-int8")
    int8.load()
    assert int8.tuning.summary() == "float32; queries: text onnx-int8, images onnx-int8 (set)"
    assert not (tmp_path / tuning.CACHE_NAME).exists()  # a setting is not a measurement


def test_a_candidate_below_the_fidelity_floor_is_rejected_and_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert onnx_runtime.choose_runtime(
        {"torch": 12.0, "onnx": 9.0, "onnx-int8": 4.0},
        {"torch": 0.99995, "onnx": 1.0, "onnx-int8": 0.9985},
        0.999,
    ) == ("onnx", ["onnx-int8"])
    monkeypatch.setattr(onnx_runtime, "MIN_COSINE", 1.5)  # nothing can pass: torch
    with caplog.at_level(logging.WARNING, logger="core.models.onnx_runtime"):
        strict = encoder(TINY_CLIP, tmp_path, "auto")
        strict.load()
    chosen = strict.tuning.runtime
    assert (chosen.text, chosen.image) == ("torch", "torch")
    assert len(chosen.rejected) == 6 and "text onnx-int8" in chosen.rejected
    assert "text onnx-int8 rejected, its cosine with float32" in caplog.text


def test_the_stats_line_and_the_log_say_what_runs_and_why() -> None:
    runtime = RuntimeTuning(
        "onnx-int8",
        "torch",
        text_ms={"torch": 12.1, "onnx": 13.5, "onnx-int8": 4.8},
        image_ms={"torch": 44.3, "onnx": 66.9, "onnx-int8": 27.6},
        cosines={"image onnx-int8": 0.9981},
        rejected=["image onnx-int8"],
    )
    tuned = Tuning("bfloat16", {"bfloat16": 90.0, "float32": 30.0}, runtime=runtime)
    assert tuned.summary() == (
        "bfloat16 (measured); queries: text onnx-int8, images torch (measured)"
    )
    assert runtime.line() == (
        "text → onnx-int8 (4.8 ms; torch 12.1, onnx 13.5), images → torch (44.3 ms; onnx 66.9, "
        "onnx-int8 27.6 rejected: cosine 0.9981); measured"
    )


def test_a_new_export_replaces_only_its_own_older_file(tmp_path: Path) -> None:
    old = OnnxCache(tmp_path, "org/model", "0" * 16)
    for runtime in ("onnx", "onnx-int8"):
        old.write("text", runtime, lambda path: path.write_bytes(b"old"))
    new = OnnxCache(tmp_path, "org/model", "1" * 16)
    new.write("text", "onnx", lambda path: path.write_bytes(b"new"))
    names = sorted(p.name for p in new.folder.iterdir())
    assert names == [f"text-onnx-{'1' * 16}.onnx", f"text-onnx-int8-{'0' * 16}.onnx"]
    with new.opened("text", "onnx") as model:
        assert Path(model).read_bytes() == b"new"  # /proc/self/fd/N: the checked file
