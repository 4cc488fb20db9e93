"""What a build checks before anything long starts (issue 23): the model without loading it,
the store, the source, COCO_BASE_URL and the disk, each failure named by its setting; and
`index_builder.py --check`, which does only that."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from core.errors import DatasetError, DownloadError, ModelUnavailable, StoreBusy, StoreUnavailable
from core.indexing import preflight
from core.indexing.lock import builder_lock
from core.indexing.preflight import (
    BuildSource,
    build_needed,
    check_build,
    check_download,
    check_index_space,
    check_model,
    check_store,
)
from core.sources.coco_download import plan_coco
from core.store.collection_info import BuildRecord
from core.store.database import Database
from core.store.records import ImageRecord
from tests.chroma_run import free_port
from tests.coco_server import CocoServer, build_coco_zips
from tests.conftest import ROOT, TINY_CLIP, make_settings, subprocess_env
from tests.mini_coco import make_mini_coco

HUB_ID = "openai/clip-vit-base-patch32"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty local Hugging Face cache, whatever this machine's holds."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_model(cache: Path, name: str, files: list[str]) -> None:
    """Put `files` of model `name` into a Hugging Face cache, laid out as the hub client does."""
    repo = cache / f"models--{name.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for file in files:
        (snapshot / file).write_text("{}")


def test_a_local_model_directory_is_checked_without_loading_it(tmp_path: Path) -> None:
    assert check_model("CLIP_MODEL", str(TINY_CLIP)).endswith(": a local model directory")
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text("{}")
    (tmp_path / "a-file").write_text("")
    (tmp_path / "empty").mkdir()
    cases = {
        "nowhere": "which does not exist",
        "a-file": "which is not a directory",
        "empty": "which has no config.json (not a Hugging Face model directory)",
        "config-only": "which has no weights (model.safetensors or pytorch_model.bin)",
    }
    for name, problem in cases.items():
        with pytest.raises(ModelUnavailable) as caught:
            check_model("CLIP_MODEL", str(tmp_path / name))
        assert str(caught.value) == f"CLIP_MODEL points to {tmp_path / name}, {problem}"


def test_a_hub_model_offline_must_be_in_the_cache_weights_too(hub_cache: Path) -> None:
    with pytest.raises(ModelUnavailable) as caught:
        check_model("CLIP_MODEL", HUB_ID)
    message = str(caught.value)
    assert message.startswith(f"CLIP_MODEL={HUB_ID} is not (completely) in the local Hugging")
    assert "HF_HUB_OFFLINE is set" in message and f"`hf download {HUB_ID}`" in message
    cache_model(hub_cache, HUB_ID, ["config.json"])  # an interrupted download
    with pytest.raises(ModelUnavailable):
        check_model("CLIP_MODEL", HUB_ID)


def test_a_cached_hub_model_is_found_offline(hub_cache: Path) -> None:
    cache_model(hub_cache, HUB_ID, ["config.json", "model.safetensors"])
    assert check_model("CLIP_MODEL", HUB_ID) == (
        f"CLIP_MODEL {HUB_ID}: in the local Hugging Face cache"
    )


def test_an_unreachable_hub_is_one_line_in_seconds(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ModelUnavailable) as caught:
        check_model("CLIP_MODEL", "nobody/no-such-clip")
    message = str(caught.value)
    assert message.startswith("CLIP_MODEL=nobody/no-such-clip is not in the local Hugging Face")
    assert "cannot be reached" in message and "\n" not in message


def test_an_embedded_store_must_be_writable_and_free(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert check_store(settings).endswith(": writable")
    assert not settings.chroma_path.exists()  # a check makes nothing
    (tmp_path / "a-file").write_text("")
    under_a_file = make_settings(tmp_path, chroma_path=tmp_path / "a-file" / "chroma")
    with pytest.raises(StoreUnavailable, match=r"^CHROMA_PATH=.*a-file/chroma cannot be written"):
        check_store(under_a_file)
    with builder_lock(settings):  # another builder
        with pytest.raises(StoreBusy, match=r"another index_builder \(pid \d+\) is running"):
            check_store(settings)
        assert check_store(settings, wait=True).endswith(": writable")


def test_an_unreachable_server_names_the_settings(tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(tmp_path, chroma_host="127.0.0.1", chroma_port=port)
    with pytest.raises(StoreUnavailable) as caught:
        check_store(settings)
    assert str(caught.value).startswith(f"CHROMA_HOST=127.0.0.1 CHROMA_PORT={port}: ")


Usage = namedtuple("Usage", "total used free")


def test_too_little_disk_is_said_before_the_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_mini_coco(tmp_path / "mirror", {"val2014": 4}, seed=2)
    with CocoServer(build_coco_zips(tmp_path / "mirror")) as mirror:
        settings = make_settings(
            tmp_path,
            coco_root=tmp_path / "coco",
            coco_base_url=mirror.url,
            coco_checksums=mirror.write_checksums(tmp_path / "SUMS"),
        )
        plan = plan_coco(settings, ["val2014"])
        assert "2 files" in check_download(settings, plan)
        monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**6, 10**6 - 100, 100))
        with pytest.raises(DownloadError) as caught:
            check_download(settings, plan)
        assert mirror.gets() == []  # sizes were asked (HEAD), nothing fetched
    assert str(caught.value).startswith(
        f"not enough disk space for COCO2014 in COCO_ROOT={settings.coco_root}: need "
    )
    assert str(caught.value).endswith(", 100 bytes free")
    with pytest.raises(StoreUnavailable, match=r"about 324.0 MB more needed for 40,504 pictures"):
        check_index_space(tmp_path / "chroma", 40_504)
    (tmp_path / "chroma").mkdir()  # a built index: a refresh needs only what it lacks
    with open(tmp_path / "chroma" / "chroma.sqlite3", "wb") as sparse:
        sparse.truncate(40_504 * 8_000 - 50)
    assert check_index_space(tmp_path / "chroma", 40_504).endswith("(about 50 bytes needed)")


def test_the_source_is_checked(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, coco_root=tmp_path / "coco")
    with pytest.raises(DatasetError, match=r"folder .*nowhere not found"):
        check_build(settings, BuildSource(folder=tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=r"captions_val2014\.json not found \(COCO_ROOT="):
        check_build(settings, BuildSource(splits=("val2014",)))
    lines = check_build(settings, BuildSource(folder=tmp_path)).lines
    assert [line.split(":")[0] for line in lines] == [
        f"embedded Chroma in {settings.chroma_path}",
        f"folder {tmp_path}",
        f"CLIP_MODEL {TINY_CLIP}",
    ]


def test_index_builder_check_only_checks(tmp_path: Path) -> None:
    """`--check` says what it found and fetches nothing: the zips' sizes are asked for."""
    make_mini_coco(tmp_path / "mirror", {"val2014": 4}, seed=2)
    with CocoServer(build_coco_zips(tmp_path / "mirror")) as mirror:
        settings = make_settings(
            tmp_path,
            coco_root=tmp_path / "coco",
            coco_base_url=mirror.url,
            coco_checksums=mirror.write_checksums(tmp_path / "SUMS"),
        )
        result = subprocess.run(
            [
                sys.executable,
                str(ROOT / "index_builder.py"),
                "--check",
                "--download",
                "--split",
                "val2014",
            ],
            env=subprocess_env(settings),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert mirror.gets() == [] and mirror.requests  # HEADs only
    said = result.stdout.splitlines()
    assert said[-1] == "everything the build needs is in place"
    assert f"COCO_BASE_URL {mirror.url}: answers; 2 files (" in result.stdout
    assert f"CLIP_MODEL {TINY_CLIP}: a local model directory" in said
    assert not (tmp_path / "coco").exists() and not settings.chroma_path.exists()


def test_an_unreachable_coco_base_url_is_named_in_seconds(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(tmp_path, coco_root=tmp_path / "coco", coco_base_url=url)
    with pytest.raises(DownloadError) as caught:
        check_build(settings, BuildSource(splits=("val2014",), download=True))
    assert str(caught.value).startswith(f"COCO_BASE_URL {url} cannot be reached: ")
    assert preflight.QUICK_RETRY.attempts == 2  # asked twice, a second apart


def test_a_build_is_needed_when_empty_or_unfinished_for_this_source(tmp_path: Path) -> None:
    """What `--if-needed` (`make run`) decides, without loading anything."""
    settings = make_settings(tmp_path)
    assert build_needed(settings, "COCO2014 val2014 in /c") == (
        f"collection 'test_images' in embedded Chroma in {settings.chroma_path} is empty: "
        "building it"
    )
    store = Database(settings).open("test_images", ImageRecord, model="m", dim=4, create=True)
    store.upsert([ImageRecord(id="1", path="/x/1.jpg")], np.ones((1, 4), dtype=np.float32))
    assert build_needed(settings, "COCO2014 val2014 in /c") is None  # other pictures: kept
    store.record_build(BuildRecord("COCO2014 val2014 in /c", 24, 0, complete=False))
    assert build_needed(settings, "COCO2014 val2014 in /c") == (
        "the last build of COCO2014 val2014 in /c did not finish (1 of 24 pictures): finishing it"
    )
    assert build_needed(settings, "folder /photos") is None
