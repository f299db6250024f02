"""A request's LoRA set on a live DiT: peft adapters loaded by diffusers, switched per job, never fused.

Each distinct file (by SHA-256) becomes one named adapter, loaded with diffusers'
``load_lora_adapter`` and weighted with ``set_adapters``; a job that asks for another
set deletes what it no longer needs and loads only what is new, and a job with none
unloads the adapter layers altogether. The base weights are never written, so
switching LoRAs never reloads the model and never drifts (a fuse/unfuse cycle in
bf16 would). Adapters stay on the compute device next to the DiT's resident part,
also inside streamed blocks: the block streamer moves base weights only
(:func:`is_adapter`), and the memory planner counts the adapters' bytes.

Adapters are stored in the DiT's compute dtype, whatever its blocks are stored
in: under float8 storage (``backbones/precision.py``) they are neither created in
float8 nor cast by its layerwise-casting hooks (which skip ``lora_`` modules).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from framepack_history.errors import InputError
from framepack_history.lora import convert, files

STATE = "_fph_loras"  # transformer attribute: adapter name -> sha256 of its file


def is_adapter(name: str) -> bool:
    """Whether a parameter name (relative to any module) belongs to a LoRA adapter."""
    return name.startswith(("lora_A.", "lora_B.", "lora_embedding_")) or ".lora_A." in name or ".lora_B." in name


def adapter_name(sha256: str) -> str:
    return f"lora_{sha256[:16]}"


def adapter_bytes(transformer: nn.Module) -> int:
    """Bytes of every LoRA adapter weight now in ``transformer``."""
    return sum(p.numel() * p.element_size() for n, p in transformer.named_parameters() if is_adapter(n))


def loaded(transformer: nn.Module) -> dict[str, str]:
    return dict(getattr(transformer, STATE, {}))


def apply(backbone: Any, entries: list[dict[str, Any]], memory: Any = None) -> list[dict[str, Any]]:
    """Make ``backbone``'s DiT carry exactly ``entries`` (resolved or not) at their weights; return them resolved.

    Bad files raise :class:`InputError` naming the file before anything changes.
    """
    entries = [files.resolve(e) for e in entries]
    if entries and backbone.name != "hunyuan_framepack":
        raise InputError("--lora", f"the {backbone.name} backbone takes no LoRAs (they are made for HunyuanVideo/FramePack)")
    dit = backbone.transformer
    want: dict[str, float] = {}
    for e in entries:  # the same file twice adds its weights
        want[adapter_name(e["sha256"])] = want.get(adapter_name(e["sha256"]), 0.0) + e["weight"]
    have = loaded(dit)
    new = {adapter_name(e["sha256"]): e for e in entries if adapter_name(e["sha256"]) not in have}
    converted = {name: convert.to_diffusers(convert.read(e["path"]), dit, e["name"]) for name, e in new.items()}
    if not want:
        if have:
            dit.unload_lora()  # back to plain linear layers: the base weights were never touched
            setattr(dit, STATE, {})
    else:
        gone = [n for n in have if n not in want]
        if gone:
            dit.delete_adapters(gone)
        for name, sd in converted.items():
            dit.load_lora_adapter(sd, adapter_name=name, prefix=None)
            _write(dit, name, sd, backbone.device, backbone.dtype)
            have[name] = new[name]["sha256"]
        setattr(dit, STATE, {n: have[n] for n in want})
        dit.set_adapters(list(want), list(want.values()))
    if memory is not None and hasattr(memory, "adapters_changed"):
        memory.adapters_changed()
    return entries


def _write(dit: nn.Module, name: str, sd: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> None:
    """Adapter ``name``'s weights: ``sd``'s values in the compute ``dtype`` on the compute device.

    peft creates each adapter in its base layer's weight dtype and copies the values into it,
    so under float8 storage they would be rounded to float8 (most of a small ``lora_B`` flushed
    to zero) before any later cast could help; they are written again here from the converted
    file, which never passed through the base layer's dtype. peft also puts a new adapter where
    its base weight is, which for a streamed block is its pinned host copy; the adapters are
    meant to stay resident, so they are written on the compute device.
    """
    for key, value in sd.items():
        module, part = key.removesuffix(".weight").rsplit(".", 1)  # "<module>.lora_A.weight"
        layer = getattr(dit.get_submodule(module), part)[name]
        # a copy: a converted tensor may be a view into a larger one (a fused qkv split by diffusers)
        layer.weight.data = value.to(device=device, dtype=dtype, copy=True)
