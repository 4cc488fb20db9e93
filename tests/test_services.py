"""bot.services: the bot's use of the core services, without Telegram. Both models share one
lifecycle: `Services.start` loads them, `Services.close` frees them."""

from __future__ import annotations

import asyncio
import io

import pytest

from bot.services import Services
from core.errors import ModelUnavailable
from tests.conftest import ShapeIndex
from tests.fixtures.shapes import draw


def png(color: str, shape: str) -> bytes:
    out = io.BytesIO()
    draw(color, shape).save(out, format="PNG")
    return out.getvalue()


def test_start_loads_both_models_and_close_frees_them(shape_index: ShapeIndex) -> None:
    settings = shape_index.settings.model_copy(update={"vqa_preload": True})
    services = Services.start(settings)
    try:
        assert services.encoder.loaded and services.ask_enabled and services.vqa_ready

        async def download() -> bytes:
            return png("red", "circle")

        answer = asyncio.run(services.ask("photo", download, "what color is the shape?"))
        assert answer == "red"
        assert asyncio.run(services.search_text("a red circle")).page.hits
    finally:
        services.close()
    assert not services.encoder.loaded and not services.vqa_ready
    with pytest.raises(ModelUnavailable, match="is closed"):
        asyncio.run(services.search_text("a blue square"))


def test_without_vqa_preload_blip2_loads_on_the_first_question(shape_index: ShapeIndex) -> None:
    services = Services.start(shape_index.settings)
    try:
        assert services.ask_enabled and not services.vqa_ready

        async def download() -> bytes:
            return png("blue", "square")

        assert asyncio.run(services.ask("photo", download, "what shape is it?")) == "square"
        assert services.vqa_ready
    finally:
        services.close()


def test_with_vqa_disabled_there_is_no_ask(shape_index: ShapeIndex) -> None:
    services = Services.start(shape_index.settings.model_copy(update={"vqa_enabled": False}))
    try:
        assert not services.ask_enabled and not services.vqa_ready
    finally:
        services.close()
    assert not services.encoder.loaded
