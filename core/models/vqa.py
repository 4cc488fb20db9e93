"""BLIP-2 visual question answering: `answer(image, question)`, and a caption without one.

Loaded like the CLIP encoder (HF id or local directory, lazy and thread-safe, device and
dtype from settings). One generation at a time per model; each is bounded by
`max_new_tokens` and by a wall-clock `timeout_s` (generation stops and the words so far
are the answer).
"""

from __future__ import annotations

import logging
import re
import threading

import torch
from PIL import Image
from transformers import Blip2ForConditionalGeneration, Blip2Processor

from core.models.runtime import (
    LazyModel,
    load_pretrained,
    out_of_memory_is_unavailable,
    resolve_device,
    resolve_dtype,
)

log = logging.getLogger(__name__)

LOAD_RETRY_S = 600.0
"""After a failed load (weights missing, out of memory), /ask fails at once for 10 minutes
instead of retrying a multi-GB load on every question."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def build_prompt(question: str | None) -> str:
    """BLIP-2's VQA prompt; "" (caption mode) when there is no question."""
    question = " ".join((question or "").split())
    return f"Question: {question} Answer:" if question else ""


def clean_answer(text: str) -> str:
    """The answer as a person wants it: no echoed prompt, trimmed, its first sentence."""
    if "Answer:" in text:
        text = text.rsplit("Answer:", 1)[1]
    text = " ".join(text.split())
    return _SENTENCE_END.split(text, maxsplit=1)[0].strip()


class VqaModel:
    """A BLIP-2 model that loads on first use (or `load()`) and answers about pictures."""

    def __init__(
        self,
        model_name: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_new_tokens: int = 30,
        num_beams: int = 1,
        timeout_s: float = 60.0,
    ) -> None:
        self.model_name = model_name
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.timeout_s = timeout_s
        self._model = LazyModel(self._load, retry_after_s=LOAD_RETRY_S)
        self._generate_lock = threading.Lock()

    def _load(self) -> tuple[Blip2ForConditionalGeneration, Blip2Processor]:
        log.info("loading BLIP-2 %s on %s as %s", self.model_name, self.device, self.dtype)
        with out_of_memory_is_unavailable(
            self.device,
            f"loading BLIP-2 {self.model_name} as {self.dtype}",
            "; free memory, use a smaller VQA_MODEL or DTYPE, or set VQA_ENABLED=false",
        ):
            return self._load_weights()

    def _load_weights(self) -> tuple[Blip2ForConditionalGeneration, Blip2Processor]:
        model = load_pretrained(
            "BLIP-2",
            self.model_name,
            lambda: Blip2ForConditionalGeneration.from_pretrained(
                self.model_name, dtype=self.dtype
            ),
        )
        processor = load_pretrained(
            "BLIP-2", self.model_name, lambda: Blip2Processor.from_pretrained(self.model_name)
        )
        model.to(self.device).eval()
        return model, processor

    def load(self) -> None:
        """Load the weights now instead of on the first question (raises `ModelUnavailable`)."""
        self._model.get()

    @property
    def loaded(self) -> bool:
        return self._model.loaded

    def answer(self, image: Image.Image, question: str | None = None) -> str:
        """Answer `question` about `image` (an RGB picture); without a question, caption it."""
        model, processor = self._model.get()
        inputs = processor(images=image, text=build_prompt(question), return_tensors="pt")
        inputs = {
            k: v.to(self.device, self.dtype) if k == "pixel_values" else v.to(self.device)
            for k, v in inputs.items()
        }
        prompt_tokens = inputs["input_ids"].shape[1]
        with (
            self._generate_lock,
            torch.inference_mode(),
            out_of_memory_is_unavailable(self.device, "BLIP-2 answering a question"),
        ):
            output = model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                num_beams=self.num_beams,
                do_sample=False,
                max_time=self.timeout_s,
            )
        if model.config.use_decoder_only_language_model:
            # OPT: generate returns the prompt (image tokens, BOS, question), then the answer.
            # Flan-T5 variants return the decoder's answer alone.
            output = output[:, prompt_tokens:]
        text = processor.batch_decode(output, skip_special_tokens=True)[0]
        return clean_answer(text)
