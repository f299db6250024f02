"""A request's LoRAs checked at submit, before any weights load: found, safetensors, made for this DiT.

The DiT is the preset's on the ``meta`` device (no weights; the memory planner's copy), so a wrong
shape or an unknown layer is reported at once, naming the file, instead of when the job starts.
"""

from __future__ import annotations

from ..config import GenerationRequest, InputError, Preset
from . import files


def check_loras(request: GenerationRequest, preset: Preset, field: str = "--lora") -> None:
    """Resolve ``request.loras`` (the preset's when unset) to entries with path and sha256, or raise."""
    entries = [files.resolve(e, field) for e in files.requested(request.loras, preset.loras)]
    if entries and preset.model.backbone != "hunyuan_framepack":
        raise InputError(field, f"the {preset.model.backbone} backbone takes no LoRAs "
                                "(they are made for HunyuanVideo/FramePack)")
    if entries:
        from ..memory.components import meta_components
        from . import convert

        dit = meta_components(preset).backbone.transformer
        for e in entries:
            convert.to_diffusers(convert.read(e["path"], field), dit, e["name"], field)
    request.loras = entries
