"""End to end, the bot under attack: poisoned index records, a memory-hungry PNG, a full /ask
queue, and a collection rebuilt under the running bot."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.images import load_image
from core.indexing import BuildOptions, run
from core.models.encoder import DualEncoder
from core.sources.coco import CocoReader
from core.store.database import Database
from core.store.records import ImageRecord
from tests.bot_harness import RunningBot, build_index, jpeg, png_bytes, running_bot
from tests.chroma_run import ChromaServer
from tests.conftest import make_settings
from tests.fake_telegram import FakeTelegram, Sent
from tests.mini_coco import MiniImage, make_mini_coco

ASK_QUEUE = 2


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def poison(settings, images, root: Path) -> dict[str, Path | str]:
    """Records that rank first for "a red circle" (a red circle's own vector) but point where
    the bot must never read: outside the roots, a symlink out, a device, a FIFO, a huge file."""
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(jpeg("red", "circle", seed=99))
    images_dir = settings.coco_root / "val2014"
    link = images_dir / "innocent-link.jpg"
    link.symlink_to(outside / "secret.jpg")
    fifo = images_dir / "pipe.jpg"
    os.mkfifo(fifo)
    huge = images_dir / "huge.jpg"
    with open(huge, "wb") as handle:
        handle.truncate(1536 * 1024 * 1024)  # 1.5 GB of zeros, sparse
    paths: dict[str, Path | str] = {
        "p-outside": outside / "secret.jpg",
        "p-symlink": link,
        "p-zero": "/dev/zero",
        "p-fifo": fifo,
        "p-huge": huge,
    }
    encoder = DualEncoder(settings.clip_model, device="cpu", dtype="float32")
    red = next(i for i in images if (i.color, i.shape) == ("red", "circle"))
    vector = encoder.embed_images([load_image(red.path)])
    store = Database(settings).open(
        settings.collection, ImageRecord, model=settings.clip_model, dim=encoder.dim
    )
    records = [
        ImageRecord(id=id_, path=str(path), split="val2014", captions=("a red circle",))
        for id_, path in paths.items()
    ]
    store.upsert(records, vector.repeat(len(records), axis=0))
    poison_the_roots(settings, root, encoder, vector)
    return paths


ENV_BYTES = b"TELEGRAM_BOT_TOKEN=123456:SECRET-never-leaves\n"


def poison_the_roots(settings, root: Path, encoder: DualEncoder, red: np.ndarray) -> None:
    """The store claims "/" as an indexed folder (as a build before the host decided would
    have recorded it) and names an operator's .env, a private photo outside every folder
    the host serves, and a picture that will turn into something else once it was shown."""
    (root / ".env").write_bytes(ENV_BYTES)
    private = root / "private" / "photo.jpg"
    private.parent.mkdir()
    private.write_bytes(jpeg("red", "circle", seed=61))
    swap = settings.coco_root / "val2014" / "swap.jpg"
    swap.write_bytes(jpeg("red", "circle", seed=62))
    db = Database(settings)
    collection = db._client.get_collection(settings.collection, embedding_function=None)
    collection.modify(metadata={**collection.metadata, "roots": json.dumps(["/"])})
    store = db.open(settings.collection, ImageRecord, model=settings.clip_model, dim=encoder.dim)
    named = {"p-env": root / ".env", "p-private": private, "p-swap": swap}
    vectors = np.concatenate([red, encoder.embed_images([load_image(private), load_image(swap)])])
    store.upsert(
        [ImageRecord(id=i, path=str(p), split="val2014") for i, p in named.items()], vectors
    )


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBot]:
    root = tmp_path_factory.mktemp("trust")
    settings, images = build_index(
        root, {"val2014": 48}, rate_limit_per_minute=0, ask_queue_size=ASK_QUEUE
    )
    poison(settings, images, root)
    swap = settings.coco_root / "val2014" / "swap.jpg"
    images = [*images, MiniImage(0, "val2014", swap, "red", "circle")]  # a picture, for now
    with (
        FakeTelegram(hide_button_messages=True) as tg,
        running_bot(settings, images, tg) as running,
    ):
        yield running
        tg.assert_no_errors()


def test_poisoned_records_are_never_read_or_sent(bot: RunningBot) -> None:
    secret = (bot.settings.chroma_path.parent / "outside" / "secret.jpg").read_bytes()
    for user in (2001, 2002):
        bot.tg.inject_text("a red circle", user_id=user)
        [album] = bot.tg.wait_sent(user, timeout=60)
        assert album.kind == "media_group" and len(album.messages) == 5
        uploads = [bot.tg.file_bytes(fid) for fid in album.photo_file_ids]
        assert secret not in uploads
        assert bot.album_labels(album).count(("red", "circle")) >= 4  # indexed pictures only
    log = bot.log()
    for record in ("p-outside", "p-symlink", "p-zero", "p-fifo", "p-huge"):
        lines = [line for line in log.splitlines() if f"index entry {record} " in line]
        assert len(lines) == 1, (record, lines)  # refused, and logged once
        assert "never sent" in lines[0]
    assert bot.proc.poll() is None


def test_the_store_never_decides_which_files_leave(bot: RunningBot) -> None:
    """Neither the store's "/" root nor its records reach a file outside the folders the
    host serves, and Full size sends only what still decodes as a picture."""
    user, root = 2201, bot.settings.chroma_path.parent
    private = (root / "private" / "photo.jpg").read_bytes()
    swap = bot.settings.coco_root / "val2014" / "swap.jpg"
    bot.tg.hide_button_messages = False
    try:
        bot.tg.inject_photo(private, user_id=user)
        album, _ = bot.tg.wait_sent(user, 2, timeout=60)
        assert private not in [bot.tg.file_bytes(fid) for fid in album.photo_file_ids]
        bot.tg.inject_photo(swap.read_bytes(), user_id=user)
        album, buttons = bot.tg.wait_sent(user, 2, timeout=60, since=2)
        assert bot.tg.file_bytes(album.photo_file_ids[0]) == swap.read_bytes()
        swap.write_bytes(ENV_BYTES)  # the file shown as #1 is now the operator's secrets
        full_size = next(
            b["callback_data"]
            for row in buttons.messages[0]["reply_markup"]["inline_keyboard"]
            for b in row
            if b["text"] == "Full size"
        )
        query = bot.tg.inject_callback_query(full_size, buttons.messages[0], user_id=user)
        bot.tg.callback_answer(query["id"], timeout=30)
        sent = bot.tg.wait_sent(user, len(album.messages), timeout=60, since=4)
    finally:
        bot.tg.hide_button_messages = True
    documents = [m for m in sent if m.kind == "document"]
    assert len(documents) == len(album.messages) - 1  # #1 is skipped, the rest are sent
    for document in documents:
        assert bot.tg.file_bytes(document.messages[0]["document"]["file_id"]) != ENV_BYTES
    assert "#1" in sent[-1].text and "couldn't send" in sent[-1].text
    log = bot.log()
    assert "index entry p-private " in log and "index entry p-env " not in log.replace(
        "index entry p-env (", ""
    )


def test_a_huge_png_costs_bounded_memory(bot: RunningBot) -> None:
    user = 2101
    bot.tg.inject_photo(jpeg("blue", "square", (200, 150)), user_id=user)  # warm up
    bot.tg.wait_sent(user, timeout=60)
    big = Image.new("RGBA", (6320, 6320), (0, 128, 0, 255))
    big.paste((255, 0, 0, 128), (1000, 1000, 5000, 5000))
    data = png_bytes(big)
    assert len(data) < 1024 * 1024  # small on the wire, 40 megapixels inside
    before = peak_rss_mb(bot.proc.pid)
    bot.tg.inject_document(data, "big.png", "image/png", user_id=user)
    [album] = bot.tg.wait_sent(user, timeout=120, since=1)
    assert album.kind == "media_group"
    growth = peak_rss_mb(bot.proc.pid) - before
    assert growth < 300, f"peak RSS grew by {growth:.0f} MB"


def wait_text(bot: RunningBot, user: int, wanted: str, timeout: float = 120) -> Sent:
    """The first message sent to `user` whose text contains `wanted`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for sent in bot.tg.sent_to(user):
            if sent.text and wanted in sent.text:
                return sent
        time.sleep(0.05)
    raise AssertionError(f"no {wanted!r} for {user}: {[s.text for s in bot.tg.sent_to(user)]}")


def test_a_full_ask_queue_refuses_at_once_and_searches_keep_flowing(bot: RunningBot) -> None:
    askers, late, searcher = [2201, 2202], 2203, 2204
    photo = jpeg("green", "square", (160, 120))
    photos = {}
    for user in [*askers, late]:
        photos[user] = bot.tg.inject_photo(photo, user_id=user)
        bot.tg.wait_sent(user, timeout=60)
    mark = bot.tg.mark()
    file_ids = {size["file_id"] for user in askers for size in photos[user]["photo"]}
    held = bot.tg.hold(  # the two questions hold their slots until the test releases them
        "getFile", times=len(askers), where=lambda p: p.get("file_id") in file_ids
    )
    for user in askers:
        bot.tg.inject_text("/ask what shape is it?", user_id=user, reply_to=photos[user])
    for user in askers:  # "typing…" shows once a question holds its slot and downloads
        bot.tg.wait_for(
            lambda c, u=user: (
                c.method == "sendChatAction"
                and c.params["chat_id"] == u
                and c.params["action"] == "typing"
            ),
            since=mark,
            timeout=30,
        )

    bot.tg.inject_text("/ask what color is the shape?", user_id=late, reply_to=photos[late])
    busy = wait_text(bot, late, "busy", timeout=60)
    assert "try again in a minute" in busy.text
    bot.tg.inject_text("/ask and now?", user_id=askers[0], reply_to=photos[askers[0]])
    wait_text(bot, askers[0], "still answering your previous question", timeout=60)
    bot.tg.inject_text("a yellow square", user_id=searcher)
    [album] = bot.tg.wait_sent(searcher, timeout=60)
    assert album.kind == "media_group"  # the queue is full, searches still flow
    assert not [s for u in askers for s in bot.tg.sent_to(u) if s.text == "Square"]
    held.release()

    for user in askers:
        answer = wait_text(bot, user, "Square")
        assert answer.text == "Square"
    bot.tg.inject_text("/ask what color is the shape?", user_id=late, reply_to=photos[late])
    assert wait_text(bot, late, "Green").text == "Green"  # the slots were released


def test_a_rebuild_under_the_running_bot(tmp_path: Path, chroma_server: ChromaServer) -> None:
    settings = make_settings(
        tmp_path,
        coco_root=tmp_path / "coco",
        collection="rebuilt_live",
        chroma_host=chroma_server.host,
        chroma_port=chroma_server.port,
        vqa_enabled=False,
    )
    images = make_mini_coco(settings.coco_root, {"val2014": 24})
    reader = CocoReader(settings.coco_root, ["val2014"])
    run(settings, reader, BuildOptions(progress=False))
    with FakeTelegram(hide_button_messages=True) as tg, running_bot(settings, images, tg) as bot:
        tg.inject_text("a red circle", user_id=7)
        [first] = tg.wait_sent(7, timeout=60)
        assert first.kind == "media_group"

        Database(settings).drop(settings.collection)  # --rebuild's first step
        tg.inject_text("a red circle", user_id=7)
        [rebuilding] = tg.wait_sent(7, timeout=60, since=1)
        assert "being rebuilt" in rebuilding.text

        run(settings, reader, BuildOptions(rebuild=True, progress=False))
        tg.inject_text("a red circle", user_id=7)
        [again] = tg.wait_sent(7, timeout=60, since=2)
        assert again.kind == "media_group"
        assert all(c.endswith("a red circle") for c in again.captions[:2])
        assert "reopening it" in bot.log() or "search is available now" in bot.log()
        tg.assert_no_errors()
