"""What runs each tower for the queries: a torch model, or an ONNX Runtime session.

Who uses it: `DualEncoder.embed_texts` and `embed_images` call `QueryTowers.features` (what
`core.models.onnx_runtime` chose at load); `OnnxTower` is one exported tower in one ONNX
Runtime session, created once with torch's thread count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from core.models.tuning import RuntimeTuning

TEXT, IMAGE = "text", "image"


class OnnxTower:
    """One tower (its ONNX file: a path or its bytes) in an ONNX Runtime session on the CPU.

    Its intra-op threads are as many as torch's and sleep between queries rather than spin
    (the bot's other threads, Chroma's among them, need the cores right after)."""

    def __init__(self, model: str | bytes, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(
            model, options, providers=["CPUExecutionProvider"]
        )
        self.inputs = tuple(i.name for i in self._session.get_inputs())

    def run(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The tower's output for `inputs` (the tokenizer's tensors, or pixel_values in
        float32), as a float32 tensor."""
        feeds = {name: np.ascontiguousarray(inputs[name].numpy()) for name in self.inputs}
        return torch.from_numpy(self._session.run(None, feeds)[0])


@dataclass(frozen=True)
class QueryTowers:
    """The ONNX session serving each tower, or None where torch serves it; and how that was
    chosen (None: ENCODER_RUNTIME=torch)."""

    text: OnnxTower | None = None
    image: OnnxTower | None = None
    tuning: RuntimeTuning | None = None

    def session(self, tower: str) -> OnnxTower | None:
        return self.text if tower == TEXT else self.image

    def features(
        self, tower: str, model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """The projected (not normalised) embeddings of `inputs` by `tower`, through its
        session, else through `model` (the inputs already on its device and in its dtype)."""
        session = self.session(tower)
        return session.run(inputs) if session is not None else torch_features(model, tower, inputs)


def torch_features(
    model: torch.nn.Module, tower: str, inputs: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """`get_text_features` or `get_image_features`: in transformers 5 their `pooler_output`
    is the projected embedding."""
    features = model.get_text_features if tower == TEXT else model.get_image_features
    return features(**inputs).pooler_output
