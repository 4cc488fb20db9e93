"""/ask latency: the full-size BLIP-2 OPT-2.7b architecture (3.8 B parameters) with random
weights, bfloat16, on this machine, through the project's VqaModel: seconds for a 10-token
answer, for a first question about a photo (vision tower, Q-Former and language model) and
for a follow-up about the same photo (its kept encoding: the language model alone), measured
side by side. Skipped when the machine has too little memory.

`measure` returns a `VqaLatency` (or a `VqaSkipped`), which renders its JSON and its table."""

from __future__ import annotations

import io
import os
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import CACHE, ROOT, coco_like_jpeg
from bench.report import document, table

NEEDED_GB = 20  # bf16 weights 7.7 GB, written once to disk, then loaded (peak ≈ 2×)
ANSWER_TOKENS = 10


@dataclass(frozen=True)
class VqaSkipped:
    """Too little memory for the model: nothing measured."""

    memory_gb: float

    def to_json(self) -> dict:
        return {"vqa_skipped": f"{self.memory_gb:.0f} GB RAM < {NEEDED_GB} GB"}

    def to_markdown(self) -> str:
        return document(
            f"\n(VQA latency skipped: {self.memory_gb:.0f} GB of RAM, {NEEDED_GB} GB needed)"
        )


@dataclass(frozen=True)
class VqaLatency:
    """Median seconds per answer of `ANSWER_TOKENS` tokens, and the model's load and build."""

    first_s: float
    """A first question about a photo."""
    follow_up_s: float
    """A second question about the same photo (its kept encoding)."""
    load_s: float
    build_s: float
    """Making the random-weight model (once; then it is cached on disk)."""

    def to_json(self) -> dict:
        return {
            "vqa_seconds_per_answer": round(self.first_s, 2),
            "vqa_follow_up_seconds_per_answer": round(self.follow_up_s, 2),
            "vqa_answer_tokens": ANSWER_TOKENS,
            "vqa_load_s": round(self.load_s, 1),
            "vqa_model_build_s": round(self.build_s, 1),
        }

    def to_markdown(self) -> str:
        first, follow = self.first_s, self.follow_up_s
        latency = table(
            "/ask latency: BLIP-2 OPT-2.7b architecture (random weights), bf16, CPU",
            ["question", "seconds per answer", "seconds per token", "model load s"],
            [
                [
                    f"first about a photo, {ANSWER_TOKENS} tokens, greedy",
                    round(first, 2),
                    round(first / ANSWER_TOKENS, 2),
                    round(self.load_s, 1),
                ],
                [
                    "follow-up about the same photo (kept encoding)",
                    round(follow, 2),
                    round(follow / ANSWER_TOKENS, 2),
                    "",
                ],
            ],
        )
        return document(latency, f"follow-up / first: {follow / first:.2f}")


def blip2_opt_2_7b_dir() -> Path:
    """Salesforce/blip2-opt-2.7b's architecture with random bf16 weights, in HF format."""
    path = CACHE / "blip2-opt-2.7b-random"
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        GPT2Tokenizer,
        OPTConfig,
    )
    from transformers.initialization import no_init_weights

    tokenizer = GPT2Tokenizer.from_pretrained(ROOT / "tests" / "fixtures" / "tiny_blip2")
    text = OPTConfig(
        hidden_size=2560,
        num_hidden_layers=32,
        num_attention_heads=32,
        ffn_dim=10240,
        max_position_embeddings=2048,
        word_embed_proj_dim=2560,
        vocab_size=50272,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
    )
    config = Blip2Config(
        vision_config=Blip2VisionConfig().to_dict(),
        qformer_config=Blip2QFormerConfig().to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=32,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.set_default_dtype(torch.bfloat16)
    try:
        with no_init_weights():
            model = Blip2ForConditionalGeneration(config)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_(0, 0.02, generator=generator)
    finally:
        torch.set_default_dtype(torch.float32)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    del model
    image_processor = BlipImageProcessor(size={"height": 224, "width": 224})
    Blip2Processor(image_processor, tokenizer, num_query_tokens=32).save_pretrained(path)
    return path


def measure(quick: bool, workdir: Path) -> VqaLatency | VqaSkipped:
    """A first question and a follow-up about each of a few photos, after a warm-up."""
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    if memory_gb < NEEDED_GB:
        return VqaSkipped(memory_gb)
    from PIL import Image

    from core.models.vqa import VqaModel

    made = time.perf_counter()
    path = blip2_opt_2_7b_dir()
    build_s = time.perf_counter() - made
    vqa = VqaModel(str(path), device="cpu", dtype="bfloat16", max_new_tokens=ANSWER_TOKENS)
    started = time.perf_counter()
    vqa.load()
    load_s = time.perf_counter() - started
    model, _ = vqa._model()
    language_model = getattr(model, "language_model", None)
    for owner in (model, language_model):
        if owner is not None and owner.generation_config is not None:
            owner.generation_config.min_new_tokens = ANSWER_TOKENS  # random weights: no early stop
    image = Image.open(io.BytesIO(coco_like_jpeg(random.Random(1)))).convert("RGB")
    runs = 1 if quick else 3
    vqa.answer(image, "what is in the picture?")  # warm-up
    first, follow_up = [], []
    for n in range(runs):  # a new photo each time, then a second question about it
        for times, question in ((first, "what is in the picture?"), (follow_up, "what color?")):
            started = time.perf_counter()
            vqa.answer_about(f"photo-{n}", lambda: image, question)
            times.append(time.perf_counter() - started)
    return VqaLatency(statistics.median(first), statistics.median(follow_up), load_s, build_s)
