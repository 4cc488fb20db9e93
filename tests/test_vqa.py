from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from core.errors import ModelUnavailable
from core.models.vqa import VqaModel, build_prompt, clean_answer
from tests.conftest import TINY_BLIP2, in_hf_cache
from tests.fixtures.shapes import LABELS, caption, draw


@pytest.fixture(scope="module")
def vqa() -> VqaModel:
    model = VqaModel(str(TINY_BLIP2), device="cpu", dtype="float32", max_new_tokens=10)
    model.load()
    return model


def test_prompt() -> None:
    assert build_prompt("what is the man holding?") == "Question: what is the man holding? Answer:"
    assert build_prompt("  what\n is  it? ") == "Question: what is it? Answer:"
    assert build_prompt(None) == "" and build_prompt("   ") == ""


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("red", "red"),
        ("  a red circle \n", "a red circle"),
        ("Question: what color? Answer: red", "red"),
        ("a dog. it is running on the beach. yes", "a dog."),
        ("is it? yes it is", "is it?"),
        ("3.5 meters long", "3.5 meters long"),
        ("", ""),
        (".", ""),  # no word: no answer, not a lone dot
        (" ? ", ""),
        ("Question: what? Answer: ...", ""),
        ("2", "2"),
    ],
)
def test_answer_cleaning(raw: str, clean: str) -> None:
    assert clean_answer(raw) == clean


def test_the_fixture_answers_colours_shapes_and_captions(vqa: VqaModel) -> None:
    rng = random.Random(2024)
    sizes = [(64, 64), (120, 90), (200, 150), (90, 120)]
    colours = shapes = captions = 0
    n = 36
    for i in range(n):
        color, shape = LABELS[i % 12]
        image = draw(color, shape, width=sizes[i % 4][0], height=sizes[i % 4][1], rng=rng)
        colours += vqa.answer(image, "what color is the shape?") == color
        shapes += vqa.answer(image, "what shape is it?") == shape
        captions += vqa.answer(image) == caption(color, shape)
    assert colours / n >= 0.9 and shapes / n >= 0.9 and captions / n >= 0.8


def test_generation_is_bounded_by_max_new_tokens() -> None:
    short = VqaModel(str(TINY_BLIP2), device="cpu", dtype="float32", max_new_tokens=1)
    image = draw("red", "circle", rng=random.Random(1))
    assert short.answer(image) == "a"  # "a red circle", cut after one token


def test_generation_is_bounded_by_time() -> None:
    hurried = VqaModel(str(TINY_BLIP2), device="cpu", dtype="float32", timeout_s=1e-9)
    image = draw("red", "circle", rng=random.Random(1))
    assert len(hurried.answer(image).split()) <= 1  # stopped after at most one step


def test_answers_from_many_threads_are_right(vqa: VqaModel) -> None:
    rng = random.Random(3)
    jobs = [(draw(c, s, rng=rng), c) for c, s in LABELS]
    answers: dict[int, str] = {}

    def work(n: int) -> None:
        answers[n] = vqa.answer(jobs[n][0], "what color is the shape?")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    right = sum(answers[n] == colour for n, (_, colour) in enumerate(jobs))
    assert right >= len(jobs) - 1


def test_loading_is_lazy() -> None:
    model = VqaModel(str(TINY_BLIP2), device="cpu", dtype="float32")
    assert not model.loaded
    model.answer(draw("blue", "square", rng=random.Random(0)), "what shape is it?")
    assert model.loaded


def test_missing_weights_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable) as caught:
        VqaModel("nobody/no-such-blip2", device="cpu").load()
    assert "BLIP-2 model unavailable" in str(caught.value)
    assert "nobody/no-such-blip2" in str(caught.value)
    with pytest.raises(ModelUnavailable, match=r"which has no config\.json"):
        VqaModel(str(tmp_path), device="cpu").load()


@pytest.mark.real_models
@pytest.mark.skipif(
    not in_hf_cache("Salesforce/blip2-opt-2.7b"),
    reason="Salesforce/blip2-opt-2.7b not in the HF cache",
)
def test_real_default_model_answers() -> None:
    vqa = VqaModel("Salesforce/blip2-opt-2.7b", device="auto", dtype="auto", max_new_tokens=10)
    image = draw("red", "circle", width=224, height=224, rng=random.Random(0))
    assert "red" in vqa.answer(image, "what color is the circle?").lower()
    assert vqa.answer(image)  # a caption


# --- failures: out of memory, and no retry storm ------------------------------------------------


class OutOfMemoryOnce:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.calls = 0

    def __call__(self, *args: object, **kwargs: object) -> None:
        self.calls += 1
        raise self.exc


@pytest.mark.parametrize(
    "exc",
    [MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")],
    ids=["cpu", "cuda"],
)
def test_out_of_memory_while_loading_is_clear_and_backs_off(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    import core.models.vqa as vqa_module

    failing = OutOfMemoryOnce(exc)
    monkeypatch.setattr(vqa_module.Blip2ForConditionalGeneration, "from_pretrained", failing)
    model = VqaModel(str(TINY_BLIP2), device="cpu", dtype="float32")
    now = [1000.0]
    model._clock = lambda: now[0]
    with pytest.raises(ModelUnavailable, match=r"loading BLIP-2 .* ran out of memory"):
        model.answer(draw("red", "circle"), "what color is the shape?")
    for _ in range(3):  # asked again at once: no new load, the same clear reason
        with pytest.raises(ModelUnavailable, match="not retried for another"):
            model.answer(draw("red", "circle"), "what color is the shape?")
    assert failing.calls == 1
    now[0] += vqa_module.LOAD_RETRY_S + 1
    monkeypatch.undo()
    assert model.answer(draw("red", "circle"), "what color is the shape?") == "red"


def test_out_of_memory_while_generating_is_a_clear_error(
    vqa: VqaModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = vqa._model()
    monkeypatch.setattr(model.language_model, "generate", OutOfMemoryOnce(MemoryError()))
    with pytest.raises(ModelUnavailable, match="ran out of memory"):
        vqa.answer(draw("blue", "square"), "what shape is it?")
    monkeypatch.undo()
    assert vqa.answer(draw("blue", "square"), "what shape is it?") == "square"


# --- the picture's encoding, reused for follow-up questions ------------------------------------


@pytest.mark.parametrize("question", ["what color is the shape?", "what shape is it?", None])
def test_answers_equal_blip2s_own_generate(vqa: VqaModel, question: str | None) -> None:
    """Our two steps (encode, then generate from the encoding) give exactly what
    `Blip2ForConditionalGeneration.generate` gives for the same picture and prompt."""
    model, processor = vqa._model()
    for n, (color, shape) in enumerate(LABELS[:6]):
        picture = draw(color, shape, rng=random.Random(100 + n))
        inputs = processor(images=picture, text=build_prompt(question), return_tensors="pt")
        reference = model.generate(
            **inputs, max_new_tokens=vqa.max_new_tokens, num_beams=1, do_sample=False
        )
        expected = processor.batch_decode(
            reference[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )[0]
        assert vqa.answer(picture, question) == clean_answer(expected)


def test_a_follow_up_question_reuses_the_encoding(
    vqa: VqaModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.models.vqa as vqa_module

    monkeypatch.setattr(vqa_module, "ENCODINGS_KEPT", 2)
    drawn: list[str] = []

    def picture(color: str, shape: str):
        def load():
            drawn.append(color)
            return draw(color, shape, rng=random.Random(7))

        return load

    assert (
        vqa.answer_about("photo-1", picture("red", "circle"), "what color is the shape?") == "red"
    )
    assert vqa.answer_about("photo-1", picture("red", "circle"), "what shape is it?") == "circle"
    assert drawn == ["red"] and vqa.knows("photo-1")  # the follow-up needed no picture
    vqa.answer_about("photo-2", picture("blue", "square"), "what shape is it?")
    vqa.answer_about("photo-3", picture("green", "triangle"), "what shape is it?")
    assert not vqa.knows("photo-1") and vqa.knows("photo-3")  # bounded: oldest forgotten
    assert vqa.answer_about("photo-1", picture("red", "circle"), None) == "a red circle"
    assert drawn == ["red", "blue", "green", "red"]


def test_close_frees_the_weights_and_the_kept_encodings() -> None:
    model = VqaModel(str(TINY_BLIP2), device="cpu", dtype="float32", max_new_tokens=10)
    red = draw("red", "circle", rng=random.Random(7))
    assert model.answer_about("photo", lambda: red, "what color is the shape?") == "red"
    model.close()
    assert not model.loaded and not model.knows("photo")
    with pytest.raises(ModelUnavailable, match="is closed"):
        model.answer(red, "what color is the shape?")
    model.load()
    assert model.answer(red, "what color is the shape?") == "red"
