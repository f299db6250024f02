"""LoRA key layouts -> diffusers/peft names on the FramePack DiT, and a check against the DiT itself.

Accepted, as FramePack-Studio accepts them:

* **diffusers / peft**: ``[transformer.|diffusion_model.|base_model.model.]<module>.lora_A.weight`` and
  ``.lora_B.weight`` with FramePack's (diffusers') module names, e.g.
  ``transformer_blocks.0.attn.to_q``;
* **kohya / musubi-tuner, FramePack names**: ``lora_unet_<module with '.' -> '_'>.lora_down.weight``,
  ``.lora_up.weight`` and ``.alpha`` (musubi-tuner's FramePack LoRAs);
* **HunyuanVideo's original names** (``double_blocks.N.img_attn_qkv``, ``single_blocks.N.linear1``), in either
  of the two layouts above: converted by diffusers' own ``_convert_hunyuan_video_lora_to_diffusers``
  (fused qkv split into ``to_q/to_k/to_v``), which :class:`~diffusers.loaders.HunyuanVideoLoraLoaderMixin`
  uses for the same files.

kohya's ``alpha`` is folded into ``lora_A`` (its forward scales by ``alpha / rank``), so every adapter is
loaded with scale 1 and the request's weight is the only multiplier. Files are read with safetensors only.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from framepack_history.errors import InputError

_PREFIXES = ("base_model.model.", "transformer.", "diffusion_model.", "model.diffusion_model.")
_KOHYA = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$")
_PEFT = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B)(?:\.[A-Za-z0-9_-]+)?\.weight$|^(?P<amod>.+?)\.alpha$")
# musubi-tuner's flattened original HunyuanVideo names -> dotted ones (what diffusers' converter reads)
_ORIGINAL_PARTS = {
    "img_mod_linear": "img_mod.linear", "txt_mod_linear": "txt_mod.linear", "img_mlp_fc1": "img_mlp.fc1",
    "img_mlp_fc2": "img_mlp.fc2", "txt_mlp_fc1": "txt_mlp.fc1", "txt_mlp_fc2": "txt_mlp.fc2",
    "modulation_linear": "modulation.linear",
}


def read(path: str | Path, field: str = "--lora") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (never a pickle)."""
    from safetensors import SafetensorError  # safetensors: only when tensors are read or written
    from safetensors.torch import load_file  # safetensors: only when tensors are read or written

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(field, f"{Path(path).name}: not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None


def _strip(key: str) -> str:
    for p in _PREFIXES:
        if key.startswith(p):
            return key[len(p):]
    return key


def _is_original(keys: list[str]) -> bool:
    return any(("double_blocks" in k or "single_blocks" in k) for k in keys)


def _unflatten_original(name: str) -> str:
    m = re.match(r"^(double_blocks|single_blocks)_(\d+)_(.+)$", name)
    if not m:
        return name
    return f"{m.group(1)}.{m.group(2)}.{_ORIGINAL_PARTS.get(m.group(3), m.group(3))}"


def _pairs(sd: dict[str, torch.Tensor], file: str, field: str) -> dict[str, dict[str, torch.Tensor]]:
    """``module -> {"A", "B", "alpha"}`` from either layout (names as written, prefixes stripped)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    kohya = any(".lora_down." in k for k in sd)
    for key, t in sd.items():
        k = _strip(key)
        if kohya:
            m = _KOHYA.match(k)
            if m is None:
                raise InputError(field, f"{file}: unknown key {key!r} (expected kohya/musubi .lora_down/.lora_up/.alpha)")
            module, part = m.group("module"), {"lora_down.weight": "A", "lora_up.weight": "B", "alpha": "alpha"}[m.group("part")]
        else:
            m = _PEFT.match(k)
            if m is None:
                raise InputError(field, f"{file}: unknown key {key!r} (expected diffusers/peft .lora_A/.lora_B weights)")
            module = m.group("module") or m.group("amod")
            part = m.group("part")[-1] if m.group("part") else "alpha"
        out.setdefault(module, {})[part] = t
    return out


def to_diffusers(sd: dict[str, torch.Tensor], transformer: nn.Module, file: str,
                 field: str = "--lora") -> dict[str, torch.Tensor]:
    """``<module>.lora_A.weight`` / ``.lora_B.weight`` on ``transformer``'s module names, alpha folded in."""
    pairs = _pairs(sd, file, field)
    linear = linear_layers(transformer)
    flat = {n.replace(".", "_"): n for n in linear}
    original = _is_original(list(pairs))
    out: dict[str, torch.Tensor] = {}
    for module, parts in pairs.items():
        if "A" not in parts or "B" not in parts:
            missing = "lora_A (lora_down)" if "A" not in parts else "lora_B (lora_up)"
            raise InputError(field, f"{file}: {module!r} has no {missing} weight")
        a, b = parts["A"].float(), parts["B"].float()
        if a.dim() != 2 or b.dim() != 2:
            raise InputError(field, f"{file}: {module!r}: LoRA weights must be matrices (got {tuple(a.shape)} and {tuple(b.shape)})")
        if "alpha" in parts:
            a = a * (float(parts["alpha"]) / a.shape[0])
        name = module.removeprefix("lora_unet_")
        if original:
            name = _unflatten_original(name)
        elif name not in linear and name in flat:
            name = flat[name]  # kohya flattened every '.' into '_'
        out[f"{name}.lora_A.weight"], out[f"{name}.lora_B.weight"] = a, b
    if original:
        from diffusers.loaders.lora_conversion_utils import (
            _convert_hunyuan_video_lora_to_diffusers,  # diffusers: only on the path that uses it (slow to import)
        )

        try:
            out = {_strip(k): v for k, v in _convert_hunyuan_video_lora_to_diffusers(out).items()}
        except (RuntimeError, ValueError, KeyError) as e:
            raise InputError(field, f"{file}: HunyuanVideo-layout LoRA could not be converted ({e})") from None
    check(out, linear, file, field)
    return out


def linear_layers(transformer: nn.Module) -> dict[str, nn.Linear]:
    """The DiT's linear layers by name, seen through adapter layers already in it (their ``base_layer``)."""
    out = {}
    for name, m in transformer.named_modules():
        base = getattr(m, "base_layer", None)
        if isinstance(base, nn.Linear):
            out[name] = base
        elif isinstance(m, nn.Linear) and not name.endswith(".base_layer") and ".lora_" not in name:
            out[name] = m
    return out


def check(sd: dict[str, torch.Tensor], linear: dict[str, nn.Linear], file: str, field: str = "--lora") -> None:
    """Every module names a linear layer of the DiT and its A/B shapes fit it (``[r, in]``, ``[out, r]``)."""
    for key, a in sd.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        layer = linear.get(module)
        if layer is None:
            raise InputError(field, f"{file}: {module!r} names no linear layer of the FramePack DiT "
                                    f"(not a HunyuanVideo/FramePack LoRA, or made for another model)")
        b = sd[f"{module}.lora_B.weight"]
        if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features or a.shape[0] != b.shape[1]:
            raise InputError(field, f"{file}: {module!r}: LoRA shapes {tuple(b.shape)} x {tuple(a.shape)} do not fit the "
                                    f"layer ({layer.out_features} x {layer.in_features})")


def nbytes(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> int:
    """Device bytes of an adapter in the DiT's dtype."""
    size = torch.tensor([], dtype=dtype).element_size()
    return sum(t.numel() for t in sd.values()) * size
