"""Build a backbone and its history encoder from a preset's model spec.

Weights come from local folders or hub ids, as safetensors only. Nothing is
loaded at import time: the worker calls these when a job first needs them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from framepack_history.backbones.base import Backbone, place
from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone
from framepack_history.backbones.precision import component_dtype
from framepack_history.backbones.speed import apply_speed
from framepack_history.backbones.toy import ToyBackbone
from framepack_history.config.paths import resolve_path
from framepack_history.config.presets import ModelSpec, Preset
from framepack_history.device import torch_dtype as dtype_named
from framepack_history.errors import InputError, WeightsNotFoundError
from framepack_history.history.encoder import HistoryEncoder
from framepack_history.hub import files as hub
from framepack_history.memory.manager import MemoryManager
from framepack_history.memory.planner import plan


def check_device(device: str | torch.device, field: str = "--device") -> torch.device:
    """``device`` parsed and present on this machine, or an :class:`InputError` that says so."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(field, f"{device!r} is not a device name (cpu, cuda, cuda:1, mps ...): {str(e).splitlines()[0][:120]}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(field, f"{device!r}: no CUDA device here (this torch is {torch.__version__}); use --device cpu or a CPU preset")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(field, f"{device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(field, f"{device!r}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps", "xpu", "meta"):
        raise InputError(field, f"{device!r}: unsupported device type {dev.type!r}")
    return dev


def load_backbone(spec: ModelSpec, device: str | torch.device = "cpu", dtype: str = "float32", **hub_kwargs) -> Backbone:
    """The preset's backbone, from weights if given, else random weights from ``spec.config``.

    ``hub_kwargs`` go to the real backbone's ``from_pretrained`` (offload, text-encoder quantisation).
    """
    check_device(device, "hardware.device")
    torch_dtype = dtype_named(dtype)
    if spec.backbone == "toy":

        if not spec.weights:
            return ToyBackbone.from_config(**spec.config, seed=spec.seed, device=device, dtype=torch_dtype)
        folder = Path(resolve_path(spec.weights))
        if not (folder / "transformer").is_dir():
            raise WeightsNotFoundError(f"toy weights not found in {folder}: train them (README) or point model.weights to a folder")
        return ToyBackbone.from_pretrained(folder, device=device, dtype=torch_dtype)
    if spec.backbone == "hunyuan_framepack":
        parts = component_dtype(device, torch_dtype)  # FramePack's float16 VAE and encoders where the device has them
        if not spec.weights:
            return HunyuanFramepackBackbone.tiny(seed=spec.seed, device=device, dtype=torch_dtype, component_dtype=parts,
                                                 **spec.config)
        # Loading never downloads (a job must not start a silent multi-GB download): what is missing
        # fails at once, naming the `download` command that fetches it.
        gone = hub.missing(spec)
        if gone:
            raise WeightsNotFoundError(hub.missing_message(spec, gone))
        return HunyuanFramepackBackbone.from_pretrained(
            transformer=resolve_path(spec.weights),
            base=resolve_path(spec.components.get("base", "hunyuanvideo-community/HunyuanVideo")),
            image_encoder=resolve_path(spec.components.get("image_encoder", "lllyasviel/flux_redux_bfl")),
            device=device,
            dtype=torch_dtype,
            component_dtype=parts,
            local_files_only=True,
            **hub_kwargs,
        )
    raise ValueError(f"unknown backbone {spec.backbone!r}")


def build_encoder(spec: ModelSpec, backbone: Backbone, rate: str | None = None) -> HistoryEncoder:
    """The history encoder bound to ``backbone``'s patchifier.

    With ``spec.encoder`` pointing at a folder, its weights are loaded (the
    rate is then the trained one); otherwise a fresh encoder is built whose
    HR gate starts at zero, i.e. the LR branch alone.
    """
    geo = backbone.geometry
    folder = Path(resolve_path(spec.encoder)) if spec.encoder else None
    if folder is not None:
        if not (folder / "config.json").is_file():
            raise WeightsNotFoundError(f"history encoder weights not found in {folder}: train them or clear model.encoder")
        enc = HistoryEncoder.load(folder)
    else:
        torch.manual_seed(spec.seed + 1)
        enc = HistoryEncoder(
            latent_channels=geo.latent_channels,
            hidden_size=geo.hidden_size,
            patch_size=tuple(geo.patch_size),
            rate=rate or spec.encoder_rate,
            channels=tuple(spec.encoder_channels),
        )
    enc = place(enc, backbone.device, backbone.dtype).eval()
    enc.set_patch_embedding(backbone.patch_embedding())
    return enc


def needs_manager(preset: Preset) -> bool:
    """Whether the preset's weights must be budgeted (real HunyuanVideo-FramePack weights on an accelerator)."""
    hw, spec = preset.hardware, preset.model
    return spec.backbone == "hunyuan_framepack" and bool(spec.weights) and hw.device != "cpu"


def load_for_device(preset: Preset):
    """The preset's backbone and, where weights must be budgeted, the memory manager that fits them.

    On an accelerator with real HunyuanVideo-FramePack weights the plan for the
    preset's longest video in its default mode is where the manager starts;
    each request re-plans for itself (:meth:`~.memory.manager.MemoryManager.prepare`).
    Everything else (the CPU, the toy model, tiny test models) runs resident.
    """
    hw, spec = preset.hardware, preset.model

    if not needs_manager(preset):
        backbone = load_backbone(spec, hw.device, hw.dtype)
        apply_speed(backbone, hw)
        return backbone, None

    p = plan(preset, preset.video.max_seconds)
    quant = p.strategy.text_encoder if p.strategy.text_encoder in ("nf4", "int8") else None
    backbone = load_backbone(spec, hw.device, hw.dtype, offload=True, text_encoder_quantization=quant)
    apply_speed(backbone, hw)  # before the manager reads the DiT's weights: float8 ones are read as float8
    return backbone, MemoryManager(backbone, p)


def fits_beside(preset: Preset, loaded: list) -> bool:
    """Whether ``preset``'s backbone may join the ``loaded`` ``(backbone, manager or None)`` pairs.

    One large (managed) backbone per device, unless the device budget holds the
    planned peaks of all of them at once.
    """
    device = torch.device(preset.hardware.device)
    same = [(bb, m) for bb, m in loaded if torch.device(getattr(bb, "device", "cpu")) == device]
    if not needs_manager(preset) and all(m is None for _, m in same):
        return True
    if not same:
        return True

    mine = plan(preset, preset.video.max_seconds)
    others = sum(m.plan.device_peak for _, m in same if m is not None)
    return mine.device_peak + others <= mine.budget.usable
