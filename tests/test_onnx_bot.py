"""End to end: `python -m bot` serving text and photo searches through ONNX Runtime's int8
towers (ENCODER_RUNTIME=onnx-int8), against the fake Telegram Bot API."""

from __future__ import annotations

from pathlib import Path

from tests.bot_harness import build_index, jpeg, running_bot
from tests.fake_telegram import FakeTelegram

ADMIN = 1300


def test_the_bot_answers_text_and_photos_through_onnx_runtime(tmp_path: Path) -> None:
    settings, images = build_index(
        tmp_path, {"train2014": 72}, admin_user_ids=frozenset({ADMIN}), rate_limit_per_minute=0
    )
    with (
        FakeTelegram(hide_button_messages=True) as tg,
        running_bot(settings, images, tg, ENCODER_RUNTIME="onnx-int8") as bot,
    ):
        tg.inject_text("a red circle", user_id=1301)
        [album] = tg.wait_sent(1301, timeout=60)
        assert album.kind == "media_group" and len(album.messages) == 5
        assert bot.album_labels(album).count(("red", "circle")) >= 4
        tg.inject_photo(jpeg("green", "square", (200, 150)), user_id=1302)
        [album] = tg.wait_sent(1302, timeout=60)
        assert bot.album_labels(album).count(("green", "square")) >= 4
        tg.inject_text("/stats", user_id=ADMIN)
        [stats] = tg.wait_sent(ADMIN, timeout=60)
        assert "queries: text onnx-int8, images onnx-int8 (set)" in stats.text
        tg.assert_no_errors()
    assert "ENCODER_RUNTIME onnx-int8: text → onnx-int8, images → onnx-int8; set" in bot.log()
    assert list((settings.chroma_path / "onnx").rglob("text-onnx-int8-*.onnx"))
