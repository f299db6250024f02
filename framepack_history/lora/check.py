"""A request's LoRAs checked at submit, before any weights load: found, safetensors, made for this DiT.

The DiT is the preset's on the ``meta`` device (no weights; the memory planner's copy), so a wrong
shape or an unknown layer is reported at once, naming the file, instead of when the job starts.
"""

from __future__ import annotations

from ..config import GenerationRequest, InputError, Preset
from . import files


def check_loras(request: GenerationRequest, preset: Preset, field: str = "--lora") -> int:
    """Resolve ``request.loras`` (the preset's when unset) to entries with path and sha256, or raise.

    Returns the device bytes their adapters take in the preset's dtype (what the memory plan counts).
    """
    entries = [files.resolve(e, field) for e in files.requested(request.loras, preset.loras)]
    if entries and preset.model.backbone != "hunyuan_framepack":
        raise InputError(field, f"the {preset.model.backbone} backbone takes no LoRAs "
                                "(they are made for HunyuanVideo/FramePack)")
    total = 0
    if entries:
        from ..memory.components import meta_components
        from . import convert

        comps = meta_components(preset)
        seen = set()
        for e in entries:
            sd = convert.to_diffusers(convert.read(e["path"], field), comps.backbone.transformer, e["name"], field)
            if e["sha256"] not in seen:  # the same file twice is one adapter
                seen.add(e["sha256"])
                total += convert.nbytes(sd, comps.dtype)
    request.loras = entries
    return total
