"""Exporting a dual encoder's towers to ONNX from float32 weights, and their int8 variant.

Who uses it: `core.models.onnx_runtime`, once per model and versions (the files are cached,
`core.models.onnx_files`). The graphs take exactly what the torch path takes: the family's
tokenizer output (CLIP: input_ids and attention_mask; SigLIP: input_ids; any batch and
length) or float32 pixel_values (any batch), and give the projected embeddings
(`get_*_features(...).pooler_output`, not normalised).

The exporter is torch's TorchScript one (`dynamo=False`: it needs no onnxscript), tracing a
padded batch of two texts of different lengths so that padding is in the graph.

int8 is ONNX Runtime's quantization of the MatMuls' weights (the token embeddings stay
exact), in the way that kept each tower closest to float32 for its speed on ViT-B/32
(docs/models.md): the text tower's weights in blocks of `TEXT_BLOCK` along the input
(`MatMulNBits`, int8 arithmetic with the activations quantized per block as well: a text's
activations have outliers that one scale per tensor blurs, which cost a tenth of the top-10
on the latency benchmark); the image tower's per output channel with dynamic quantization
(`quantize_dynamic`: one scale per activation tensor), faster, and as close. Their fidelity
is checked before they are used (`core.models.onnx_runtime`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

OPSET = 17
"""The ONNX opset exported (LayerNormalization is one op from 17 on)."""
TEXT_BLOCK = 32
"""The text tower's int8 weights share one scale per this many inputs."""


class _TextTower(torch.nn.Module):
    """`get_text_features(**tokens).pooler_output`, with the tokens as positional inputs."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tokens: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(self.names, tokens, strict=True))
        return self.model.get_text_features(**inputs).pooler_output


class _ImageTower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output


def export_text(model: torch.nn.Module, tokens: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write the text tower of float32 `model` to `path`, its inputs named as `tokens` (the
    tokenizer's output for a probe batch)."""
    names = tuple(tokens)
    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    _export(_TextTower(model, names), tuple(tokens.values()), names, axes, path)


def export_image(model: torch.nn.Module, pixels: torch.Tensor, path: Path) -> None:
    """Write the image tower of float32 `model` to `path` (pixel_values, any batch)."""
    names = ("pixel_values",)
    _export(_ImageTower(model), (pixels,), names, {"pixel_values": {0: "batch"}}, path)


def quantize(source: str | bytes, target: Path, tower: str) -> None:
    """Write the int8 variant of the float32 `tower` ("text" or "image") in `source` (a path,
    or the file's bytes) to `target`. Needs the `onnx` and `onnx-ir` packages."""
    import onnx

    model = onnx.load_model_from_string(source) if isinstance(source, bytes) else onnx.load(source)
    with _quiet_quantizer():
        if tower == "text":
            _int8_blocks(model, target)
        else:
            _int8_channels(model, target)


def _int8_blocks(model, target: Path) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        model, bits=8, block_size=TEXT_BLOCK, is_symmetric=True, accuracy_level=4
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)


def _int8_channels(model, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        model,
        target,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
    )


def _export(
    tower: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    names: tuple[str, ...],
    axes: dict[str, dict[int, str]],
    path: Path,
) -> None:
    if next(tower.parameters()).dtype != torch.float32:
        raise ValueError("the ONNX towers are exported from float32 weights only")
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter's deprecation notice and its tracer's notes on the
        # shapes it traced: the traced graph is checked against torch before it is used.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tower.eval(),
            inputs,
            str(path),
            input_names=list(names),
            output_names=["embeddings"],
            dynamic_axes={**axes, "embeddings": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


class _QuietQuantizer(logging.Filter):
    """The quantizer logs a line per tensor on the root logger, and advice meant for static
    quantization: only its real warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        advice = "pre-processing before quantization" in record.getMessage()
        return record.levelno >= logging.WARNING and not advice


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizers' lines below WARNING are noise (one per tensor): `_QuietQuantizer` on
    the root logger, and a WARNING level on onnxruntime's quantization loggers."""
    root, quantization = logging.getLogger(), logging.getLogger("onnxruntime.quantization")
    quiet, level = _QuietQuantizer(), quantization.level
    root.addFilter(quiet)
    quantization.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeFilter(quiet)
        quantization.setLevel(level)
