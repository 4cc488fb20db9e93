"""`make run` from nothing, as a new user meets it: with only a token, it checks the token
first, then everything else that can fail (the model, the store, the disk), downloads COCO
val2014 (here from a mirror on 127.0.0.1), indexes it, and starts a bot that answers; a first
build stopped half-way is finished by the next `make run`. The Makefile's own virtual
environment is skipped (`-o`), the test's interpreter stands in for it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.config import Settings
from core.sources.coco import CocoReader
from core.sources.coco_download import ensure_coco
from core.sources.folders import FolderReader
from core.sources.scan import Reader
from tests.coco_server import CocoServer, build_coco_zips
from tests.conftest import ROOT, make_settings, subprocess_env
from tests.fake_telegram import FakeTelegram
from tests.mini_coco import make_mini_coco

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make_run(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            ["make", "-o", ".venv/.installed", "run", f"PY={sys.executable}", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so the whole make → python tree can be stopped
        )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_make_run_from_nothing(tmp_path: Path) -> None:
    make_mini_coco(tmp_path / "mirror", {"val2014": 24}, seed=4)
    settings = make_settings(
        tmp_path, coco_root=tmp_path / "coco", collection="from_nothing", vqa_enabled=False
    )
    log = tmp_path / "make.log"
    with (
        CocoServer(build_coco_zips(tmp_path / "mirror")) as mirror,
        FakeTelegram(hide_button_messages=True) as tg,
    ):
        checksums = str(mirror.write_checksums(tmp_path / "SHA256SUMS"))
        env = subprocess_env(
            settings, **tg.env(), COCO_BASE_URL=mirror.url, COCO_CHECKSUMS=checksums
        )
        proc = make_run(env, log)
        try:
            deadline = time.monotonic() + 240
            while "Application started" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)
            tg.inject_text("a red circle", user_id=5)
            [album] = tg.wait_sent(5, timeout=60)
            assert album.kind == "media_group"
            assert all(c.endswith("a red circle") for c in album.captions[:2])
        finally:
            stop(proc)
    said = log.read_text()
    token_ok = said.index("Telegram accepted the token")
    download = re.search(r"COCO2014 val2014: [\d.]+ kB to download from COCO_BASE_URL", said)
    assert download, said
    assert token_ok < download.start() < said.index("\nindexed 24 pictures\n")
    assert "COCO2014 val2014 is in place" in said
    # Issue 23: build output for people: one line per step, an estimate in words, one bar per
    # step, a short summary; no HTTP request lines, no timing breakdown (that takes -v).
    assert "24 pictures to embed: under a minute on a 2-core CPU" in said
    assert "httpx" not in said and "HTTP Request" not in said
    assert "per image:" not in said and " 0 min" not in said
    raw = log.read_bytes().decode()  # with its \r: read_text() makes each one a line break
    bars = [line for line in raw.split("\n") if "%|" in line]  # a bar redraws with \r
    assert len(bars) == 2, bars  # the download's (both zips) and the embedding's
    assert bars[0].rsplit("\r", 1)[-1].startswith("downloading val2014.zip: 100%"), bars
    builder = said[said.index("index_builder.py --download") : said.index(" -m bot\n")]
    assert " INFO " not in builder, builder  # no timestamps or logger names for people


def wait_for_the_bot(proc: subprocess.Popen, log: Path) -> str:
    """The log once the bot started (or fail with it, when make ended before)."""
    deadline = time.monotonic() + 240
    while "Application started" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)
    return log.read_text()


def interrupted_build(settings: Settings, reader: Reader | None = None) -> int:
    """Build COCO val2014 (or `reader`'s pictures) as `make run`'s builder does, and Ctrl-C it
    as its second write to the store begins: what a first build stopped half-way leaves.
    Batches of one picture, gathered `WRITE_BATCHES` per write: exactly that many stored."""
    from core.indexing import BuildOptions, run
    from core.indexing.writer import WRITE_BATCHES
    from core.store.database import VectorStore

    upsert, calls = VectorStore.upsert, []

    def upsert_then_ctrl_c(store: VectorStore, records: list, vectors: object) -> None:
        calls.append(len(records))
        if len(calls) > 1:
            raise KeyboardInterrupt
        upsert(store, records, vectors)

    reader = reader or CocoReader(settings.coco_root, ("val2014",))
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(VectorStore, "upsert", upsert_then_ctrl_c)
        summary = run(settings, reader, BuildOptions(batch_size=1, progress=False))
    assert summary.interrupted and summary.indexed == WRITE_BATCHES, summary
    return summary.indexed


def status(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "core", "status"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_make_run_finishes_an_interrupted_first_build(tmp_path: Path) -> None:
    """Issue 23: Ctrl-C during the first build left a partial index for ever, since `make run`
    builds only when `core status` says the index is empty. The build records that it is not
    finished; status says so (and fails), and the next `make run` finishes it."""
    make_mini_coco(tmp_path / "mirror", {"val2014": 24}, seed=4)
    with (
        CocoServer(build_coco_zips(tmp_path / "mirror")) as mirror,
        FakeTelegram(hide_button_messages=True) as tg,
    ):
        settings = make_settings(
            tmp_path,
            coco_root=tmp_path / "coco",
            collection="half_built",
            vqa_enabled=False,
            coco_base_url=mirror.url,
            coco_checksums=mirror.write_checksums(tmp_path / "SHA256SUMS"),
        )
        env = subprocess_env(settings, **tg.env())
        ensure_coco(settings, ["val2014"], progress=False)
        stored = interrupted_build(settings)
        half = status(env)
        assert half.returncode == 2, half
        root = settings.coco_root.resolve()
        assert (
            f"incomplete: {stored} of 24 pictures of COCO2014 val2014 in {root} "
            "(its last build stopped before the end)"
        ) in half.stdout, half.stdout
        log = tmp_path / "make.log"
        proc = make_run(env, log)
        try:
            said = wait_for_the_bot(proc, log)
        finally:
            stop(proc)
        done = status(env)
    assert f"did not finish ({stored} of 24 pictures): finishing it\n" in said, said
    assert f"\nindexed {24 - stored} pictures · {stored} unchanged\n" in said, said
    assert "nothing to download" in said
    assert done.returncode == 0 and "24 pictures" in done.stdout, done
    assert "incomplete" not in done.stdout


def test_make_run_leaves_an_index_of_other_pictures_alone(tmp_path: Path) -> None:
    """Only COCO's own unfinished build is finished by a plain `make run`: an index built
    from a folder (its build unfinished too) is used as it is, and COCO is not downloaded."""
    folder = tmp_path / "photos"
    make_mini_coco(folder, {"val2014": 12}, seed=5)
    settings = make_settings(tmp_path, collection="my_photos", vqa_enabled=False)
    interrupted_build(settings, FolderReader(folder / "val2014"))
    make_mini_coco(tmp_path / "mirror", {"val2014": 4}, seed=4)
    with (
        CocoServer(build_coco_zips(tmp_path / "mirror")) as mirror,
        FakeTelegram(hide_button_messages=True) as tg,
    ):
        env = subprocess_env(settings, **tg.env(), COCO_BASE_URL=mirror.url)
        log = tmp_path / "make.log"
        proc = make_run(env, log)
        try:
            said = wait_for_the_bot(proc, log)
        finally:
            stop(proc)
        assert mirror.requests == []
    assert "collection 'my_photos' holds pictures and no unfinished build of COCO2014" in said


def test_make_run_checks_the_model_before_the_big_download(tmp_path: Path) -> None:
    """Issue 23: with the default CLIP_MODEL on a machine without hub access, `make run`
    downloaded COCO (6 GB) and only then failed on the model. Now the builder checks the
    model first, in seconds, and names the setting."""
    make_mini_coco(tmp_path / "mirror", {"val2014": 4}, seed=4)
    settings = make_settings(
        tmp_path,
        coco_root=tmp_path / "coco",
        collection="no_model",
        clip_model="openai/clip-vit-base-patch32",
    )
    with (
        CocoServer(build_coco_zips(tmp_path / "mirror")) as mirror,
        FakeTelegram(hide_button_messages=True) as tg,
    ):
        empty_cache = tmp_path / "hf"
        env = subprocess_env(
            settings,
            **tg.env(),
            COCO_BASE_URL=mirror.url,
            HF_HOME=str(empty_cache),
            HF_HUB_CACHE=str(empty_cache / "hub"),
            HF_HUB_OFFLINE="1",
        )
        proc = make_run(env, tmp_path / "make.log")
        try:
            assert proc.wait(120) != 0
        finally:
            stop(proc)
        assert mirror.requests == []  # not a byte fetched, not even asked for a size
    said = (tmp_path / "make.log").read_text()
    assert "Telegram accepted the token" in said  # the token first, as before
    assert (
        "error: CLIP_MODEL=openai/clip-vit-base-patch32 is not (completely) in the local "
        "Hugging Face cache and HF_HUB_OFFLINE is set: download it once with "
        "`hf download openai/clip-vit-base-patch32`"
    ) in said, said
    assert not (tmp_path / "coco").exists()


def test_make_run_with_a_wrong_token_stops_before_any_download(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, coco_root=tmp_path / "coco", collection="never")
    make_mini_coco(tmp_path / "mirror", {"val2014": 4}, seed=4)
    with (
        CocoServer(build_coco_zips(tmp_path / "mirror")) as mirror,
        FakeTelegram(hide_button_messages=True) as tg,
    ):
        env = subprocess_env(
            settings, **{**tg.env(), "TELEGRAM_BOT_TOKEN": "1:AAwrong"}, COCO_BASE_URL=mirror.url
        )
        proc = make_run(env, tmp_path / "make.log")
        try:
            assert proc.wait(120) != 0
        finally:
            stop(proc)
        assert mirror.gets() == []  # not a byte fetched
    said = (tmp_path / "make.log").read_text()
    assert "Telegram refused TELEGRAM_BOT_TOKEN: check it with @BotFather" in said
    assert "1:AAwrong" not in said


def test_make_run_reports_a_bad_setting_once(tmp_path: Path) -> None:
    env = subprocess_env(
        make_settings(tmp_path), TELEGRAM_BOT_TOKEN="1:AAx", RATE_LIMIT_PER_MINUTE="lots"
    )
    proc = make_run(env, tmp_path / "make.log")
    try:
        assert proc.wait(120) == 2
    finally:
        stop(proc)
    said = (tmp_path / "make.log").read_text()
    assert said.count("bad setting RATE_LIMIT_PER_MINUTE='lots'") == 1, said


def test_make_run_folder_lets_the_bot_serve_that_folder() -> None:
    """The bot's roots come from the host: `make run FOLDER=...` names the folder to it."""
    plan = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "run", "FOLDER=/srv/my photos", "PY=python"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert 'python index_builder.py --folder "/srv/my photos"' in plan
    assert plan[-1] == 'PICTURE_ROOTS="/srv/my photos" python -m bot'
