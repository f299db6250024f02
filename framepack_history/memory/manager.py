"""Phase hooks the pipeline calls: load what a phase needs, evict the rest, stream the DiT.

``MemoryManager.phase(name)`` is a context manager around each pipeline phase
(``text_encode``, ``image_encode``, ``vae_encode``, ``denoise``, ``vae_decode``).
It carries out a :class:`~.planner.Plan`: the DiT's stem and resident blocks
stay on the device between sections, its other blocks stream; the text
encoders, the image encoder and the VAE are on the device only for their
phases (quantised or lazily built components are dropped and rebuilt rather
than moved, since bitsandbytes weights cannot round-trip through the host).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..backbones.base import Backbone
from .planner import Plan
from .streaming import BlockStreamer, Residency, WeightGroup, block_placement, load_safetensors

PHASE_NEEDS: dict[str, tuple[str, ...]] = {
    "text_encode": ("text_encoder", "text_encoder_2"),
    "image_encode": ("image_encoder",),
    "vae_encode": ("vae",),
    "denoise": ("transformer",),
    "vae_decode": ("vae", "transformer"),  # the DiT's resident part stays for the next section
    "preview": (),  # nothing: previews are a linear latent-to-RGB map (Backbone.preview), never the VAE
}
COMPONENTS = ("text_encoder", "text_encoder_2", "image_encoder", "vae")


def _quantized(module: nn.Module) -> bool:
    return bool(getattr(module, "is_quantized", False) or getattr(module, "hf_quantizer", None))


class MemoryManager:
    """Carries out a plan for one backbone; ``residency`` records what was on the device at every phase."""

    def __init__(self, backbone: Backbone, plan: Plan, *, loaders: dict[str, Callable[[], nn.Module]] | None = None,
                 verify: bool = False, use_stream: bool | None = None) -> None:
        self.backbone, self.plan = backbone, plan
        self.loaders = {**getattr(backbone, "loaders", {}), **(loaders or {})}
        self.residency = Residency(backbone.device)
        self.residency.verify = verify
        self.use_stream = use_stream
        dit = backbone.transformer
        if any(p.is_meta for p in dit.parameters()):  # built on meta (offload mode): read its files block by block
            folder = getattr(backbone, "weight_folders", {}).get("transformer")
            if folder is None:
                raise ValueError("the DiT has no weights (meta) and the backbone names no folder to read them from")
            load_safetensors(dit, folder, block_placement(dit, plan.strategy.resident), backbone.device, backbone.dtype)
        self.streamer = BlockStreamer(backbone.transformer, plan.strategy.resident, self.residency, use_stream)
        if plan.strategy.vae_tiling and hasattr(backbone, "enable_vae_tiling"):
            backbone.enable_vae_tiling()
        self.groups: dict[str, WeightGroup] = {}
        self.streamers: dict[str, BlockStreamer] = {}  # components streamed layer by layer (text encoder)
        for name in COMPONENTS:
            self._adopt(name)
        for name, g in self.groups.items():
            if not (name == "vae" and plan.strategy.vae_resident):
                g.offload()
        self.phases: list[tuple[str, int | None, int]] = []  # (phase, section, resident bytes at its start)
        self.residency.sample("init")

    # ----------------------------------------------------------- components
    def _adopt(self, name: str) -> None:
        module = getattr(self.backbone, name, None)
        if not isinstance(module, nn.Module):
            return
        self.residency.track(name, module)
        if name == "text_encoder" and self.plan.strategy.text_encoder == "streamed" and not _quantized(module):
            self.streamers[name] = BlockStreamer(module, (), self.residency, self.use_stream, name=name)
            self.streamers[name].evict()
        elif not _quantized(module):  # bitsandbytes weights stay where they were built (or are dropped)
            self.groups[name] = WeightGroup.of(name, [module], self.residency)

    def _load(self, name: str) -> None:
        if getattr(self.backbone, name, None) is None and name in self.loaders:
            setattr(self.backbone, name, self.loaders[name]())
            self._adopt(name)
        if name in self.groups:
            self.groups[name].onload()
        if name in self.streamers:
            self.streamers[name].load()

    def _evict(self, name: str) -> None:
        if name in self.loaders and getattr(self.backbone, name, None) is not None:
            setattr(self.backbone, name, None)  # rebuilt from disk if a later job needs it
            self.groups.pop(name, None)
            streamer = self.streamers.pop(name, None)
            if streamer is not None:
                streamer.remove_hooks()
            self.residency.track(name, None)
            gc.collect()
        elif name in self.groups:
            self.groups[name].offload()
        elif name in self.streamers:
            self.streamers[name].evict()

    def _room_for(self, phase: str) -> bool:
        """Whether a conditioning phase fits beside the DiT's resident part."""
        rows = [r for r in self.plan if r.phase == phase]
        if not rows:
            return True
        dit = self.streamer.stem.nbytes() + sum(self.streamer.groups[i].nbytes() for i in self.streamer.resident)
        return rows[0].device_peak_bytes + dit <= self.plan.budget.usable

    # ---------------------------------------------------------------- hooks
    @contextmanager
    def phase(self, name: str, section: int | None = None) -> Iterator[None]:
        """Make room for ``name``, load its components, and tidy up after it."""
        needs = PHASE_NEEDS.get(name, ())
        keep_vae = self.plan.strategy.vae_resident
        for comp in COMPONENTS:
            if comp not in needs and not (comp == "vae" and keep_vae and name in ("denoise", "vae_decode")):
                self._evict(comp)
        if "transformer" in needs:
            self.streamer.load()
        elif not self._room_for(name):
            self.streamer.evict()
        for comp in needs:
            if comp != "transformer":
                self._load(comp)
        if self.residency.device.type == "cuda":
            torch.cuda.empty_cache()  # hand evicted blocks back before the phase allocates
        self.phases.append((name, section, self.residency.sample(f"{name} start")))
        try:
            yield
        finally:
            if name == "denoise":
                self.streamer.release()
            if name == "preview" and not keep_vae:
                self._evict("vae")
            self.residency.sample(f"{name} end")

    def more_conservative(self) -> bool:
        """After an out-of-memory error: decode in tiles if not already. False when nothing is left to give."""
        if self.plan.strategy.vae_tiling or not hasattr(self.backbone, "enable_vae_tiling"):
            return False
        self.backbone.enable_vae_tiling()
        self.plan.strategy.vae_tiling = True
        return True

    def close(self) -> None:
        """Back to a plain backbone: hooks removed, every weight on the device."""
        self.streamer.close()
        for st in self.streamers.values():
            st.close()
        for g in self.groups.values():
            g.keep_host = False
            g.onload()
