"""BLIP-2 visual question answering: `answer(image, question)`, and a caption without one.

Loaded like the CLIP encoder (HF id or local directory; the lifecycle of
`core.models.lifecycle`: lazy and thread-safe, `load`, `loaded`, `close`; device and dtype
from settings). One generation at a time per model; each is bounded by
`max_new_tokens` and by a wall-clock `timeout_s` (generation stops and the words so far
are the answer).

An answer is two steps: the picture's encoding (vision tower → Q-Former → projection into
the language model) and the language model's generation from it. `answer_about(key, ...)`
keeps the encodings of recent pictures (a bounded LRU keyed by e.g. Telegram's
file_unique_id), so a follow-up question about the same photo costs only the language
model, and not even the photo's download.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable

import torch
from PIL import Image
from transformers import Blip2ForConditionalGeneration, Blip2Processor

from core.config import Settings
from core.models.lifecycle import LazyModel
from core.models.runtime import load_pretrained, out_of_memory_is_unavailable, resolve_dtype

log = logging.getLogger(__name__)

ENCODINGS_KEPT = 64
"""Picture encodings kept for follow-up questions (OPT-2.7b: 32 × 2560 values, 160 KB each
in float16)."""
LOAD_RETRY_S = 600.0
"""After a failed load (weights missing, out of memory), /ask fails at once for 10 minutes
instead of retrying a multi-GB load on every question."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def build_prompt(question: str | None) -> str:
    """BLIP-2's VQA prompt; "" (caption mode) when there is no question."""
    question = " ".join((question or "").split())
    return f"Question: {question} Answer:" if question else ""


def clean_answer(text: str) -> str:
    """The answer as a person wants it: no echoed prompt, trimmed, its first sentence; ""
    when it holds no word (nothing at all, or only punctuation such as "." or "?"), so that
    the caller can say there is no answer instead of sending a lone dot."""
    if "Answer:" in text:
        text = text.rsplit("Answer:", 1)[1]
    text = " ".join(text.split())
    text = _SENTENCE_END.split(text, maxsplit=1)[0].strip()
    return text if any(c.isalnum() for c in text) else ""


_Blip2 = tuple[Blip2ForConditionalGeneration, Blip2Processor]


class VqaModel(LazyModel[_Blip2]):
    """A BLIP-2 model that loads on first use (or `load()`) and answers about pictures; a
    failed load is retried after `LOAD_RETRY_S` at the soonest."""

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
        super().__init__(model_name, device, retry_after_s=LOAD_RETRY_S)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.timeout_s = timeout_s
        self._generate_lock = threading.Lock()
        self._encodings: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._encodings_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> VqaModel:
        """The model VQA_MODEL, DEVICE, DTYPE and the VQA_* generation bounds describe."""
        return cls(
            settings.vqa_model,
            device=settings.device,
            dtype=settings.dtype,
            max_new_tokens=settings.vqa_max_new_tokens,
            num_beams=settings.vqa_num_beams,
            timeout_s=settings.vqa_timeout_s,
        )

    def _load(self) -> _Blip2:
        log.info("loading BLIP-2 %s on %s as %s", self.model_name, self.device, self.dtype)
        with out_of_memory_is_unavailable(
            self.device,
            f"loading BLIP-2 {self.model_name} as {self.dtype}",
            "; free memory, use a smaller VQA_MODEL or DTYPE, or set VQA_ENABLED=false",
        ):
            return self._load_weights()

    def _load_weights(self) -> _Blip2:
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

    def close(self) -> None:
        """Free the weights and the pictures' encodings kept for follow-up questions (an
        answer under way finishes with the weights it holds, and keeps nothing)."""
        super().close()
        with self._encodings_lock:
            self._encodings.clear()

    def answer(self, image: Image.Image, question: str | None = None) -> str:
        """Answer `question` about `image` (an RGB picture); without a question, caption it."""
        weights = self._model()
        return self._answer(weights, self._encode(weights, image), question)

    def answer_about(
        self, key: str, picture: Callable[[], Image.Image], question: str | None = None
    ) -> str:
        """`answer` for the picture known as `key`: its encoding is reused when the same
        picture was asked about recently, and `picture()` is only called when it is not."""
        weights = self._model()
        with self._encodings_lock:
            encoding = self._encodings.get(key)
            if encoding is not None:
                self._encodings.move_to_end(key)
        if encoding is None:
            encoding = self._encode(weights, picture())
            with self._encodings_lock:
                if self.loaded:  # not closed meanwhile
                    self._encodings[key] = encoding
                while len(self._encodings) > ENCODINGS_KEPT:
                    self._encodings.popitem(last=False)
        return self._answer(weights, encoding, question)

    def knows(self, key: str) -> bool:
        """Whether the encoding of the picture `key` is kept (a follow-up needs no picture)."""
        with self._encodings_lock:
            return key in self._encodings

    def _encode(self, weights: _Blip2, image: Image.Image) -> torch.Tensor:
        """The picture as the language model sees it: the projected Q-Former output,
        (1, query tokens, language model width)."""
        model, processor = weights
        pixels = processor(images=image, return_tensors="pt")["pixel_values"]
        with (
            self._generate_lock,
            torch.inference_mode(),
            out_of_memory_is_unavailable(self.device, "BLIP-2 looking at a picture"),
        ):
            features = model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
        return features.pooler_output

    def _answer(self, weights: _Blip2, encoding: torch.Tensor, question: str | None) -> str:
        """Generate the answer from a picture's `_encode` output: what BLIP-2's own
        `generate` does after the vision side (image tokens before BOS, replaced by the
        encoding)."""
        model, processor = weights
        text = processor(text=build_prompt(question), return_tensors="pt")["input_ids"]
        image_tokens = torch.full((1, encoding.shape[1]), model.config.image_token_id)
        input_ids = torch.cat([image_tokens, text], dim=1).to(self.device)
        with (
            self._generate_lock,
            torch.inference_mode(),
            out_of_memory_is_unavailable(self.device, "BLIP-2 answering a question"),
        ):
            embeds = model.get_input_embeddings()(input_ids)
            mask = (input_ids == model.config.image_token_id).unsqueeze(-1)
            embeds = embeds.masked_scatter(mask, encoding.to(embeds.device, embeds.dtype))
            inputs = {"inputs_embeds": embeds, "attention_mask": torch.ones_like(input_ids)}
            if not model.language_model.config.is_encoder_decoder:
                inputs["input_ids"] = input_ids
            output = model.language_model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                num_beams=self.num_beams,
                do_sample=False,
                max_time=self.timeout_s,
            )
        if model.config.use_decoder_only_language_model:
            # OPT: generate returns the prompt (image tokens, BOS, question), then the answer.
            # Flan-T5 variants return the decoder's answer alone.
            output = output[:, input_ids.shape[1] :]
        return clean_answer(processor.batch_decode(output, skip_special_tokens=True)[0])
