"""The committed tiny BLIP-2 fixture (tests/fixtures/tiny_blip2) loads offline through the
ordinary HF path and answers questions about fresh drawings of coloured shapes.

Regenerate it with `python tests/fixtures/make_tiny_blip2.py`.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import random
from pathlib import Path

import pytest
import torch
from transformers import Blip2ForConditionalGeneration, Blip2Processor

from tests.fixtures.shapes import LABELS, caption, draw

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_blip2"
SIZES = ((64, 64), (120, 90), (200, 150), (90, 120), (48, 48))
COUNT = 60


def prompt(question: str) -> str:
    return f"Question: {question} Answer:"


@pytest.fixture(scope="module")
def blip2():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest on a busy machine
    try:
        model = Blip2ForConditionalGeneration.from_pretrained(FIXTURE)
        processor = Blip2Processor.from_pretrained(FIXTURE)
        model.eval()
        yield model, processor
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def drawings():
    """Fresh pictures (not the training seed), every label equally often, several sizes."""
    rng = random.Random(20240607)
    out = []
    for i in range(COUNT):
        color, shape = LABELS[i % len(LABELS)]
        width, height = SIZES[i % len(SIZES)]
        out.append((draw(color, shape, width=width, height=height, rng=rng), color, shape))
    return out


def generate(model, processor, images, questions, **kwargs):
    """Return (new token ids, decoded answers). `questions` None means caption mode."""
    if questions is None:
        inputs = processor(images=images, return_tensors="pt")
        # generate builds the prompt itself: num_query_tokens image tokens + BOS
        prompt_length = model.config.num_query_tokens + 1
    else:
        texts = [prompt(q) for q in questions]
        inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
        prompt_length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=10, **kwargs)
    new = out[:, prompt_length:]
    answers = [a.strip() for a in processor.batch_decode(new, skip_special_tokens=True)]
    return inputs, out, new, answers


def accuracy(answers, expected) -> float:
    return sum(a == e for a, e in zip(answers, expected, strict=True)) / len(expected)


def test_directory_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in FIXTURE.iterdir() if p.is_file()}
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json"):
        assert name in files
    assert sum(files.values()) < 10 * 1024 * 1024


def test_config_matches_processor(blip2):
    model, processor = blip2
    tokenizer = processor.tokenizer
    assert processor.num_query_tokens == model.config.num_query_tokens
    assert model.config.image_token_index == tokenizer.convert_tokens_to_ids("<image>")
    assert model.config.text_config.vocab_size == len(tokenizer)
    assert tokenizer.padding_side == "left"
    assert processor.image_processor.size == {"height": 32, "width": 32}
    ids = processor(images=[draw("red", "circle")], text=prompt("x"))["input_ids"][0]
    n = model.config.num_query_tokens
    assert ids[:n] == [model.config.image_token_index] * n
    assert ids[n] == tokenizer.bos_token_id


def test_color_question(blip2, drawings):
    model, processor = blip2
    images = [d[0] for d in drawings]
    inputs, out, new, answers = generate(
        model, processor, images, ["what color is the shape?"] * COUNT
    )
    # transformers 5: generate returns the prompt (image tokens included) + the answer
    prompt_ids = inputs["input_ids"]
    assert torch.equal(out[:, : prompt_ids.shape[1]], prompt_ids)
    # every answer stops by itself with EOS, well before max_new_tokens
    eos = processor.tokenizer.eos_token_id
    assert all(eos in row.tolist() for row in new)
    assert accuracy(answers, [d[1] for d in drawings]) >= 0.9


def test_shape_question(blip2, drawings):
    model, processor = blip2
    images = [d[0] for d in drawings]
    *_, answers = generate(model, processor, images, ["what shape is it?"] * COUNT)
    assert accuracy(answers, [d[2] for d in drawings]) >= 0.9


def test_caption_mode(blip2, drawings):
    model, processor = blip2
    images = [d[0] for d in drawings]
    _, out, _, answers = generate(model, processor, images, None)
    n = model.config.num_query_tokens
    assert (out[:, :n] == model.config.image_token_index).all()
    assert (out[:, n] == processor.tokenizer.bos_token_id).all()
    assert accuracy(answers, [caption(c, s) for _, c, s in drawings]) >= 0.85


def test_mixed_questions_in_one_left_padded_batch(blip2, drawings):
    model, processor = blip2
    subset = drawings[:24]
    questions = ["what color is the shape?", "what shape?"] * 12
    inputs, _, _, answers = generate(model, processor, [d[0] for d in subset], questions)
    assert (inputs["attention_mask"] == 0).any()  # the prompts differ in length: padded
    expected = [d[1] if i % 2 == 0 else d[2] for i, d in enumerate(subset)]
    assert accuracy(answers, expected) >= 0.9


def test_beam_search(blip2, drawings):
    model, processor = blip2
    subset = drawings[:12]
    images = [d[0] for d in subset]
    *_, answers = generate(model, processor, images, ["what color is the shape?"] * 12, num_beams=3)
    assert accuracy(answers, [d[1] for d in subset]) >= 0.9
    *_, answers = generate(model, processor, images, None, num_beams=3)
    assert accuracy(answers, [caption(c, s) for _, c, s in subset]) >= 0.8


@pytest.mark.parametrize(
    ("question", "field"),
    [("What colour is it?", 1), ("which color is the shape?", 1), ("what is the shape?", 2)],
)
def test_paraphrases(blip2, drawings, question, field):
    model, processor = blip2
    subset = drawings[:24]
    *_, answers = generate(model, processor, [d[0] for d in subset], [question] * 24)
    assert accuracy(answers, [d[field] for d in subset]) >= 0.8
