"""End to end with the other model family: the real `python -m bot` searching an index built
with the tiny SigLIP fixture (the rest of the bot tests use the tiny CLIP)."""

from __future__ import annotations

from pathlib import Path

from tests.bot_harness import build_index, jpeg, running_bot
from tests.conftest import TINY_SIGLIP
from tests.fake_telegram import FakeTelegram
from tests.fixtures.shapes import LABELS, caption


def test_a_siglip_bot_finds_pictures_by_words_and_by_photo(tmp_path: Path) -> None:
    settings, images = build_index(
        tmp_path, {"val2014": 48}, clip_model=str(TINY_SIGLIP), vqa_enabled=False
    )
    with FakeTelegram(hide_button_messages=True) as tg, running_bot(settings, images, tg) as bot:
        for user, (color, shape) in enumerate(LABELS[::3], start=1):
            tg.inject_text(caption(color, shape), user_id=user)
            [album] = tg.wait_sent(user, timeout=60)
            assert bot.album_labels(album).count((color, shape)) >= 3, (color, shape)
        tg.inject_photo(jpeg("blue", "square", (200, 150)), user_id=50)
        [album] = tg.wait_sent(50, timeout=60)
        assert bot.album_labels(album).count(("blue", "square")) >= 3
        tg.inject_text("/stats", user_id=51)
        [stats] = tg.wait_sent(51, timeout=60)
        assert "Model: tiny_siglip (SigLIP; queries: English)" in stats.text
        tg.inject_text("/help", user_id=52)
        [help_] = tg.wait_sent(52, timeout=60)
        assert "tiny_siglip (SigLIP)" in help_.text
        tg.assert_no_errors()
