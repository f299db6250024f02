"""A request's LoRA set on a live DiT: peft adapters loaded by diffusers, switched per job, never fused.

Each distinct file (by SHA-256) becomes one named adapter, loaded with diffusers'
``load_lora_adapter`` and weighted with ``set_adapters``; a job that asks for another
set deletes what it no longer needs and loads only what is new, and a job with none
unloads the adapter layers altogether. The base weights are never written, so
switching LoRAs never reloads the model and never drifts (a fuse/unfuse cycle in
bf16 would). Adapters stay on the compute device next to the DiT's resident part,
also inside streamed blocks: the block streamer moves base weights only
(:func:`is_adapter`), and the memory planner counts the adapters' bytes.
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
            have[name] = new[name]["sha256"]
        setattr(dit, STATE, {n: have[n] for n in want})
        _place(dit, backbone.device, backbone.dtype)
        dit.set_adapters(list(want), list(want.values()))
    if memory is not None and hasattr(memory, "adapters_changed"):
        memory.adapters_changed()
    return entries


def _place(dit: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Adapter weights on the compute device in the DiT's dtype.

    peft puts a new adapter where its base layer's weight is, which for a streamed block is
    its pinned host copy; the adapters are meant to stay resident, so they move here.
    """
    for name, p in dit.named_parameters():
        if is_adapter(name) and (p.device != torch.device(device) or p.dtype != dtype):
            p.data = p.data.to(device, dtype)
