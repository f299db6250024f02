"""Where HunyuanVideo-FramePack's weights come from: local folders or the hub cache, safetensors only.

Every component is located up front (:func:`locate`), so a missing one fails in
milliseconds instead of after loading gigabytes; the rules of what counts as
present are :mod:`framepack_history.hub.files`'s, shared with the ``download`` command.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from framepack_history.errors import WeightsNotFoundError
from framepack_history.hub import files as hub

HINT = "download them or point to a local folder"


def is_offline(local_files_only: bool | None) -> bool:
    return local_files_only if local_files_only is not None else hub.offline()


def locate(source: str, subfolder: str, marker: str, component: str, offline: bool, cache_dir: str | None) -> str | None:
    """Local folder holding ``component``; ``None`` means "let the hub client fetch it"."""
    c = hub.Component(component, source, subfolder, marker)
    if c.is_hub and not offline:
        return None
    folder = hub.local_folder(c, cache_dir)
    if folder is None:
        raise WeightsNotFoundError(
            f"{component}: '{source}' (subfolder '{subfolder or '.'}') is not in the local Hugging Face cache "
            f"and the hub is offline (HF_HUB_OFFLINE=1 / local_files_only); {HINT}."
        )
    if hub.complete(folder, c):
        return str(folder)
    wanted = f"{marker} and *.safetensors" if marker == "config.json" else marker
    raise WeightsNotFoundError(f"{component}: no {wanted} in '{folder}' (from '{source}'); {HINT}.")


def load(component: str, loader: Any, where: str | None, source: str, subfolder: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` from a located folder or the hub; missing files become ``WeightsNotFoundError``."""
    try:
        if where is not None:
            return loader.from_pretrained(where, **kwargs)
        return loader.from_pretrained(source, subfolder=subfolder or None, **kwargs)
    except OSError as err:  # diffusers/transformers report missing files as OSError/EnvironmentError
        if isinstance(err, WeightsNotFoundError):
            raise
        raise WeightsNotFoundError(f"{component}: could not load from '{source}': {err}; {HINT}.") from err


def load_frozen(*args: Any, **kwargs: Any) -> nn.Module:
    return load(*args, **kwargs).eval().requires_grad_(False)


def snapshot(source: str, cache_dir: str | None) -> str:
    from huggingface_hub import snapshot_download  # huggingface_hub: only when the hub is asked

    return snapshot_download(source, cache_dir=cache_dir, allow_patterns=["*.json", "*.safetensors"])


def text_encoder_quantization_config(kind: str | None, dtype: torch.dtype) -> Any:
    """transformers' ``BitsAndBytesConfig`` for the LLaMA text encoder: ``"nf4"`` (4-bit, double
    quantisation, ~0.53 byte/weight), ``"int8"`` (LLM.int8) or ``None`` (full precision).

    Only ``nn.Linear`` weights are quantised; embeddings and norms keep ``dtype``.
    """
    if kind is None:
        return None
    from transformers import BitsAndBytesConfig  # transformers: only for the real model (the toy needs none)

    if kind == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=dtype)
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"text_encoder_quantization must be 'nf4', 'int8' or None (got {kind!r})")
