"""Where and in which precision models run: resolves the DEVICE and DTYPE settings, and
loads Hugging Face models with a clear error when their weights are missing."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch
from transformers.utils import logging as hf_logging

from core.errors import ConfigError, ModelUnavailable
from core.models.hub import ask_hub, first_line, hub_endpoint, hub_offline, in_hub_cache

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """`auto` → cuda when present, else mps when present, else cpu; others are checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("DEVICE=cuda but torch sees no CUDA GPU (is this the CPU build?)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("DEVICE=mps but torch sees no Apple GPU")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 is
    both faster and accurate enough for CLIP; elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` → float16 on cuda, bfloat16 on a CPU with native bf16, else float32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ConfigError(f"DTYPE={name!r} is not one of auto, float32, bfloat16, float16")
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        log.warning("DTYPE=float16 on the CPU is slow and imprecise; bfloat16 is better there")
    return dtype


def load_pretrained(what: str, name: str, loader: Callable[[], T]) -> T:
    """Run `loader` (a `from_pretrained` call) and turn "weights not there" into one clear
    `ModelUnavailable` message naming the model and what to do.

    A local path is checked before loading (the advice is then about the path); a hub id
    that is not in the cache is looked up once, quickly, so that an unreachable hub is one
    line within seconds instead of minutes of retries; the hub's own warnings are quiet.
    """
    hf_logging.disable_progress_bar()  # a bar per weight file is noise in our logs
    setting = _SETTINGS.get(what, f"the {what} model")
    if _is_path(name):
        _check_model_dir(what, setting, name)
    elif not hub_offline() and not in_hub_cache(name):
        _check_hub(what, name)
    try:
        with _quiet_hub():
            return loader()
    except (OSError, ValueError) as err:
        if _is_path(name):
            hint = (
                f"{setting} points to {name}, which is not a complete Hugging Face {what} "
                f"model ({first_line(err)})"
            )
        elif hub_offline():
            hint = (
                f"{name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                f"download it once with `hf download {name}` on a connected machine, "
                "or point the setting at a local directory"
            )
        else:
            hint = (
                f"{name!r} could not be downloaded or found: check the name and the network, "
                f"or download it with `hf download {name}` and retry"
            )
        raise ModelUnavailable(f"{what} model unavailable: {hint} ({type(err).__name__})") from err


_SETTINGS = {"CLIP": "CLIP_MODEL", "BLIP-2": "VQA_MODEL"}


def _is_path(name: str) -> bool:
    """A local path rather than a hub id ("owner/name"): it exists, or looks like a path."""
    if Path(name).expanduser().exists() or Path(name).is_absolute():
        return True
    if name.startswith(("./", "../", "~", ".\\", "..\\")) or name in (".", ".."):
        return True
    return name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _check_model_dir(what: str, setting: str, name: str) -> None:
    path = Path(name).expanduser()
    if not path.exists():
        problem = "which does not exist"
    elif not path.is_dir():
        problem = "which is not a directory"
    elif not (path / "config.json").is_file():
        problem = "which has no config.json (not a Hugging Face model directory)"
    else:
        return
    raise ModelUnavailable(f"{what} model unavailable: {setting} points to {name}, {problem}")


def _check_hub(what: str, name: str) -> None:
    """One quick look-up of `name` on the hub: a clear error when the hub has no such model
    or cannot be reached (any other answer: let the download say what is wrong)."""
    answer = ask_hub(name)
    if answer.unreachable is not None:
        raise ModelUnavailable(
            f"{what} model unavailable: cannot reach the Hugging Face hub at "
            f"{hub_endpoint()} to download {name!r} ({answer.unreachable}): download it "
            f"with `hf download {name}` on a connected machine, or point the setting at a "
            "local directory"
        )
    if not answer.known:
        raise ModelUnavailable(
            f"{what} model unavailable: there is no model {name!r} on the Hugging Face hub "
            "(or it is private): check the name, or point the setting at a local directory"
        )


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """The hub's retry warnings, printed twice (its own handler and ours), are noise: the
    failure, if any, becomes one `ModelUnavailable` line."""
    hub = logging.getLogger("huggingface_hub")
    level = hub.level
    hub.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub.setLevel(level)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` is an out-of-memory failure of the CPU or an accelerator."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


@contextlib.contextmanager
def out_of_memory_is_unavailable(
    device: torch.device, what: str, advice: str = ""
) -> Iterator[None]:
    """Turn running out of memory (CPU or accelerator) inside the block into one clear
    `ModelUnavailable` ("<what> ran out of memory on <device> (...)<advice>"), after giving
    cached accelerator memory back."""
    try:
        yield
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise ModelUnavailable(
            f"{what} ran out of memory on {device} ({type(err).__name__}: {err}){advice}"
        ) from err


_SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
}


def load_streamed(model_class: type, name: str, dtype: torch.dtype, fallback: Callable[[], T]) -> T:
    """`model_class.from_pretrained(name, dtype=dtype)` at the memory of the model alone.

    transformers maps the whole checkpoint and converts it, so loading float32 weights
    as bfloat16 peaks at both copies (docs/benchmarks.md measures the bot's memory). Here
    the model is built empty in `dtype` and each tensor is read with plain file reads (page
    cache, not our RSS) and copied in: the peak is the model plus its largest tensor. Only
    a single local or cached `model.safetensors` whose keys match the model exactly is
    streamed; anything else goes through `fallback`.
    """
    from transformers import AutoConfig
    from transformers.initialization import no_init_weights

    path = _single_safetensors(name)
    if path is None or _stored_as(path, dtype):
        # Already in `dtype`: transformers maps the file without copying, and pages in
        # only what is used (a bot that only gets text queries never reads the image tower).
        return fallback()
    config = AutoConfig.from_pretrained(name)
    with no_init_weights():
        model = model_class.from_config(config, dtype=dtype)
    state = model.state_dict()
    loaded: set[str] = set()
    with open(path, "rb") as file:
        size = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(size))
        base = 8 + size
        for key, info in header.items():
            if key == "__metadata__":
                continue
            target = state.get(key)
            kind = _SAFETENSORS_DTYPES.get(info.get("dtype", ""))
            if target is None or kind is None or list(target.shape) != info["shape"]:
                log.debug("%s: checkpoint key %s does not match; loading normally", name, key)
                return fallback()
            start, end = info["data_offsets"]
            buffer = bytearray(end - start)
            file.seek(base + start)
            file.readinto(buffer)
            if buffer:
                target.copy_(torch.frombuffer(buffer, dtype=kind).reshape(info["shape"]))
            del buffer
            loaded.add(key)
    if loaded != set(state):
        log.debug("%s: %d weights not in the checkpoint; loading normally", name, len(state))
        return fallback()
    return model


def _stored_as(path: Path, dtype: torch.dtype) -> bool:
    """Whether every floating-point tensor in the safetensors file is already `dtype`."""
    with open(path, "rb") as file:
        header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
    kinds = {
        _SAFETENSORS_DTYPES.get(info.get("dtype", ""))
        for key, info in header.items()
        if key != "__metadata__"
    }
    return {kind for kind in kinds if kind is None or kind.is_floating_point} == {dtype}


def _single_safetensors(name: str) -> Path | None:
    if _is_path(name):
        path = Path(name).expanduser() / "model.safetensors"
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "model.safetensors")
    except ValueError:
        return None
    return Path(found) if isinstance(found, str) else None
