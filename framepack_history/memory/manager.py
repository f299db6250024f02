"""Residency by construction: a component is on the device whenever its code runs.

Every module that owns weights in a managed component (text encoders, image
encoder, VAE, the DiT's stem) carries a diffusers ``ModelHook`` whose
``pre_forward`` asks the manager to make that component resident. So whatever
code runs loads what it uses: the VAE inside ``encode_image``, the DiT's
patchifier inside the history encoder's LR branch, with no list of which
phase needs what that the code could contradict. The DiT's resident blocks
come with its stem; its other blocks stream (:class:`~.streaming.BlockStreamer`).

Making room is by bytes, as a model cache does: the least recently used
idle components are evicted until the component, the others still resident
and the current phase's planned activations fit the plan's budget. Components
built on use (bitsandbytes-quantised text encoders cannot round-trip through
the host) stand behind an :class:`OnFirstCall` placeholder; evicting one drops
it and puts the placeholder back.

``phase(name)`` is bookkeeping: it makes room for the phase's planned
activations, samples the residency ledger, and remembers where an
out-of-memory error struck so that :meth:`MemoryManager.more_conservative`
pulls the lever that helps there. :meth:`MemoryManager.prepare` re-plans per
request (mode, length, history tokens, resolution).

Strict mode (tests): a second hook on every module checks the ledger before
its forward and raises :class:`OffDeviceError` naming the module when one of its
own weights is off the device. On the CPU the ledger tells simulated host
copies from device copies, so device mistakes show without a GPU.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from itertools import chain
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from framepack_history.backbones.base import Backbone
from framepack_history.errors import OffDeviceError
from framepack_history.lora.adapters import adapter_bytes, is_adapter
from framepack_history.memory.measure import module_bytes
from framepack_history.memory.oom import is_out_of_memory
from framepack_history.memory.planner import Plan, plan
from framepack_history.memory.streaming import BlockStreamer, Residency, WeightGroup, block_placement, load_safetensors

COMPONENTS = ("text_encoder", "text_encoder_2", "image_encoder", "vae")
RESIDENT_HOOK, STRICT_HOOK = "framepack_history.resident", "framepack_history.strict"


def _quantized(module: nn.Module) -> bool:
    return bool(getattr(module, "is_quantized", False) or getattr(module, "hf_quantizer", None))


def _own_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    return ((n, t) for n, t in chain(module.named_parameters(recurse=False), module.named_buffers(recurse=False))
            if t is not None)


class _Resident(ModelHook):
    """Before a forward: the component this module belongs to is made resident."""

    def __init__(self, manager: MemoryManager, name: str) -> None:
        super().__init__()
        self.manager, self.name = manager, name

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        self.manager.use(self.name)
        return args, kwargs


class _Strict(ModelHook):
    """Before a forward: every weight the module owns is on the device, by the ledger."""

    def __init__(self, residency: Residency, label: str) -> None:
        super().__init__()
        self.residency, self.label = residency, label

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        for name, t in _own_tensors(module):
            if t.device.type != "meta" and not self.residency.is_resident(t):
                raise OffDeviceError(f"{self.label} ran with its weight {name!r} off the device")
        return args, kwargs


class OnFirstCall(nn.Module):
    """Stands in for a component that is built on use: calling it builds the component and calls that."""

    def __init__(self, manager: MemoryManager, name: str) -> None:
        super().__init__()
        self._manager, self._name = (manager,), name  # a tuple: not a submodule

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._manager[0].use(self._name)(*args, **kwargs)


class MemoryManager:
    """Carries out a plan for one backbone; ``residency`` records what was on the device at every phase."""

    def __init__(self, backbone: Backbone, plan: Plan, *, loaders: dict[str, Callable[[], nn.Module]] | None = None,
                 verify: bool = False, use_stream: bool | None = None, strict: bool = False,
                 residency: Residency | None = None) -> None:
        self.backbone, self.plan = backbone, plan
        self.loaders = {**getattr(backbone, "loaders", {}), **(loaders or {})}
        # a caller's ledger can already know which storages are host copies (a DiT built in host memory)
        self.residency = residency or Residency(backbone.device)
        self.residency.verify = verify
        self.use_stream, self.strict = use_stream, strict
        self._lru: OrderedDict[str, None] = OrderedDict()  # resident components, least recently used first
        self._stack: list[str] = []  # phases entered and not yet left (a preview runs inside denoise)
        self._expected: dict[str, int] = {}  # bytes of components built on use, for making room before the build
        self._watched: dict[int, int] = {}  # id -> bytes of always-resident modules outside the components
        self.failed_phase: str | None = None
        self.changes: list[str] = []  # what each re-plan or out-of-memory retry changed
        self.phases: list[tuple[str, int | None, int]] = []  # (phase, section, resident bytes at its start)
        self.adapter_bytes = 0  # LoRA adapters on the DiT: always resident (see lora/adapters.py)
        dit = backbone.transformer
        if any(p.is_meta for p in dit.parameters()):  # built on meta (offload mode): read its files block by block
            folder = getattr(backbone, "weight_folders", {}).get("transformer")
            if folder is None:
                raise ValueError("the DiT has no weights (meta) and the backbone names no folder to read them from")
            load_safetensors(dit, folder, block_placement(dit, plan.strategy.resident), backbone.device, backbone.dtype)
        self.streamer = BlockStreamer(dit, plan.strategy.resident, self.residency, use_stream)
        self._hook_tree("transformer", dit, streamed=self.streamer.blocks)
        if self.streamer.loaded:  # built on the host (e.g. parked in pinned memory): loaded on first use instead
            self._lru["transformer"] = None
        if plan.strategy.vae_tiling and hasattr(backbone, "enable_vae_tiling"):
            backbone.enable_vae_tiling()
        self.groups: dict[str, WeightGroup] = {}
        self.streamers: dict[str, BlockStreamer] = {}  # components streamed layer by layer (text encoder)
        for name, ph in (("text_encoder", "text_encode"), ("image_encoder", "image_encode")):
            planned = [r.weights_bytes for r in plan if r.phase == ph]  # room to make before the first build
            if planned:
                self._expected[name] = max(planned)
        for name in COMPONENTS:
            self._adopt(name)
        for name in COMPONENTS:
            self._evict(name)  # loaded on first use
        self.residency.sample("init")

    # ----------------------------------------------------------- components
    def _hook_tree(self, name: str, root: nn.Module, streamed: list[nn.Module] = ()) -> None:
        """Residency hooks on ``root`` and every module that owns weights (not inside ``streamed`` blocks)."""
        inside = {id(m) for b in streamed for m in b.modules()}
        for qual, m in root.named_modules():
            owns = m is root or next(_own_tensors(m), None) is not None
            if not owns:
                continue
            reg = HookRegistry.check_if_exists_or_initialize(m)
            # registered first, so it runs last: after the residency hook has loaded the component
            if self.strict and reg.get_hook(STRICT_HOOK) is None:
                reg.register_hook(_Strict(self.residency, f"{name}.{qual}" if qual else name), STRICT_HOOK)
            if id(m) not in inside and reg.get_hook(RESIDENT_HOOK) is None:
                reg.register_hook(_Resident(self, name), RESIDENT_HOOK)

    @staticmethod
    def _unhook_tree(root: nn.Module) -> None:
        for m in root.modules():
            reg = getattr(m, "_diffusers_hook", None)
            if reg is not None:
                reg.remove_hook(RESIDENT_HOOK, recurse=False)
                reg.remove_hook(STRICT_HOOK, recurse=False)

    @property
    def fixed_bytes(self) -> int:
        """Always-resident weights outside the components (history encoders, LoRA adapters)."""
        return sum(self._watched.values()) + self.adapter_bytes

    def adapters_changed(self) -> None:
        """The DiT's LoRA adapters changed: count their bytes; in strict mode, check them like every weight."""
        dit = self.backbone.transformer
        self.adapter_bytes = adapter_bytes(dit)
        if self.strict:
            for qual, m in dit.named_modules():
                if is_adapter(qual + ".") and next(_own_tensors(m), None) is not None:
                    reg = HookRegistry.check_if_exists_or_initialize(m)
                    if reg.get_hook(STRICT_HOOK) is None:
                        reg.register_hook(_Strict(self.residency, f"transformer.{qual}"), STRICT_HOOK)

    def watch(self, module: nn.Module, name: str = "history_encoder") -> None:
        """An always-resident module (a history encoder): strict checks, and its bytes kept out of the room."""
        self._watched[id(module)] = module_bytes(module)
        if self.strict:
            for qual, m in module.named_modules():
                reg = HookRegistry.check_if_exists_or_initialize(m)
                if next(_own_tensors(m), None) is not None and reg.get_hook(STRICT_HOOK) is None:
                    reg.register_hook(_Strict(self.residency, f"{name}.{qual}" if qual else name), STRICT_HOOK)

    def _adopt(self, name: str) -> None:
        module = getattr(self.backbone, name, None)
        if module is None and name in self.loaders:
            setattr(self.backbone, name, OnFirstCall(self, name))
            return
        if not isinstance(module, nn.Module) or isinstance(module, OnFirstCall):
            return
        self.residency.track(name, module)
        if name == "text_encoder" and self.plan.strategy.text_encoder == "streamed" and not _quantized(module):
            self.streamers[name] = BlockStreamer(module, (), self.residency, self.use_stream, name=name)
            self._hook_tree(name, module, streamed=self.streamers[name].blocks)
        else:
            if not _quantized(module):  # bitsandbytes weights stay where they were built (or are dropped)
                self.groups[name] = WeightGroup.of(name, [module], self.residency)
            self._hook_tree(name, module)
        self._lru[name] = None

    def _nbytes(self, name: str) -> int:
        """Device bytes of a component while it is resident."""
        if name == "transformer":
            return self.streamer.resident_bytes
        if name in self.groups:
            return self.groups[name].nbytes()
        if name in self.streamers:
            return self.streamers[name].resident_bytes
        module = getattr(self.backbone, name, None)
        if isinstance(module, OnFirstCall) or module is None:
            return self._expected.get(name, 0)
        return module_bytes(module)

    def _load(self, name: str) -> nn.Module:
        module = getattr(self.backbone, name)
        if isinstance(module, OnFirstCall):  # built on use (its loader places it on the device)
            module = self.loaders[name]()
            setattr(self.backbone, name, module)
            self._adopt(name)
            self._expected[name] = module_bytes(module)
        if name == "transformer":
            self.streamer.load()
        elif name in self.groups:
            self.groups[name].onload()
        elif name in self.streamers:
            self.streamers[name].load()
        return module

    def _evict(self, name: str) -> None:
        self._lru.pop(name, None)
        module = getattr(self.backbone, name, None)
        if name == "transformer":
            self.streamer.evict()
        elif name in self.loaders and isinstance(module, nn.Module) and not isinstance(module, OnFirstCall):
            self._expected[name] = module_bytes(module)
            self._unhook_tree(module)
            self.groups.pop(name, None)
            streamer = self.streamers.pop(name, None)
            if streamer is not None:
                streamer.remove_hooks()
            self.residency.track(name, None)
            setattr(self.backbone, name, OnFirstCall(self, name))  # rebuilt from disk when next called
            del module
            if self.residency.device.type == "cuda":
                gc.collect()  # bitsandbytes state can sit in reference cycles: free the device memory now
        elif name in self.groups:
            self.groups[name].offload()
        elif name in self.streamers:
            self.streamers[name].evict()
        elif isinstance(module, nn.Module) and not isinstance(module, OnFirstCall):
            self._lru[name] = None  # quantised without a loader: cannot move, stays

    # ------------------------------------------------------------ residency
    def _reserve(self) -> int:
        """Device bytes the current phase needs besides component weights (activations, tokens, blocks in flight)."""
        if not self._stack:
            return self.fixed_bytes
        name = self._stack[-1]
        rows = [r for r in self.plan if r.phase == name]
        extra = max((r.device_peak_bytes - r.weights_bytes for r in rows), default=0)
        in_flight = self.plan.strategy.buffer_bytes if name == "denoise" else 0
        return self.fixed_bytes + max(0, extra) + in_flight

    def resident_bytes(self) -> int:
        return sum(self._nbytes(n) for n in self._lru)

    def _make_room(self, need: int, keep: str | None) -> None:
        """Evict least recently used components until ``need`` more bytes fit beside the phase's reserve."""
        usable, reserve, stuck = self.plan.budget.usable, self._reserve(), set()
        while self.resident_bytes() + need + reserve > usable:
            victim = next((n for n in self._lru if n != keep and n not in stuck), None)
            if victim is None:
                return  # nothing idle is left to evict: the phase runs with what it has
            self._evict(victim)
            if victim in self._lru:  # quantised without a loader: it cannot move
                stuck.add(victim)

    def use(self, name: str) -> nn.Module:
        """Make ``name`` resident (evicting idle components if the room needs it) and return it."""
        if name in self._lru:
            self._lru.move_to_end(name)
            return getattr(self.backbone, name)
        self._make_room(self._nbytes(name), keep=name)
        module = self._load(name)
        self._lru[name] = None
        self._lru.move_to_end(name)
        return module

    def evict(self, name: str) -> None:
        """Take ``name`` off the device now (it comes back on its next forward)."""
        self._evict(name)

    # ---------------------------------------------------------------- hooks
    @contextmanager
    def phase(self, name: str, section: int | None = None) -> Iterator[None]:
        """Make room for ``name``'s planned activations; sample the ledger; note an out-of-memory error."""
        self._stack.append(name)
        self._make_room(0, keep=None)
        if self.residency.device.type == "cuda":
            torch.cuda.empty_cache()  # hand evicted weights back before the phase allocates
        self.phases.append((name, section, self.residency.sample(f"{name} start")))
        try:
            yield
        except BaseException as e:

            if is_out_of_memory(e) and self.failed_phase is None:
                self.failed_phase = name
            raise
        finally:
            if name == "denoise":
                self.streamer.release()
            self._stack.pop()
            self.residency.sample(f"{name} end")

    # ------------------------------------------------------------- planning
    def prepare(self, preset: Any, seconds: float, *, history_mode: str, rate: str | None, start_image: bool,
                size: tuple[int, int] | None = None, continue_frames: int = 0) -> str:
        """Plan this request; switch to a more conservative strategy if it needs more than the current one.

        ``continue_frames``: the pixel frames of the video it continues (0 = none), encoded chunk by chunk.
        Returns what changed ("" when the current strategy already covers it).
        """
        p = plan(preset, seconds, history_mode=history_mode, rate=rate, start_image=start_image, size=size,
                 text_encoder_quantization=self.plan.strategy.text_encoder, budget=self.plan.budget,
                 adapter_bytes=self.adapter_bytes, continue_frames=continue_frames)
        cur, new = self.plan.strategy, p.strategy
        resident = lambda st: sum(self.streamer.groups[i].nbytes() for i in st.resident)  # noqa: E731
        change = []
        if resident(new) < resident(cur):
            change.append(f"{len(new.streamed)} of {len(self.streamer.blocks)} DiT blocks streamed "
                          f"(was {len(cur.streamed)})")
            strategy = replace(new, vae_tiling=cur.vae_tiling or new.vae_tiling)
        else:
            strategy = replace(cur, vae_tiling=cur.vae_tiling or new.vae_tiling)
        if strategy.vae_tiling and not cur.vae_tiling:
            change.append("VAE tiled")
        p.strategy = strategy
        self._set_plan(p)
        text = f"re-planned for {seconds:g} s {history_mode}: " + ", ".join(change) if change else ""
        if text:
            self.changes.append(text)
        return text

    def _set_plan(self, p: Plan) -> None:
        """Carry out ``p``'s strategy: a new resident block set rebuilds the streamer; tiling is turned on."""
        self.plan = p
        st = p.strategy
        if set(st.resident) != self.streamer.resident:
            self._restream(st.resident, self.streamer.prefetch)
        if st.vae_tiling and hasattr(self.backbone, "enable_vae_tiling"):
            self.backbone.enable_vae_tiling()

    def _restream(self, resident: tuple[int, ...], prefetch: bool) -> None:
        was_loaded = "transformer" in self._lru
        self.streamer.release()
        self.streamer.remove_hooks()
        self.streamer = BlockStreamer(self.backbone.transformer, resident, self.residency, self.use_stream,
                                      prefetch=prefetch)
        self._lru.pop("transformer", None)
        if was_loaded:
            self.streamer.evict()  # loaded again (within the new room) by the DiT's next forward

    def more_conservative(self) -> str:
        """After an out-of-memory error: change the plan where it struck. Returns what changed ("" = nothing left)."""
        where, self.failed_phase = self.failed_phase or "denoise", None
        if where in ("vae_decode", "vae_encode", "preview", "image_encode"):
            levers = (self._tile, self._stream_more, self._one_in_flight)
        else:
            levers = (self._stream_more, self._one_in_flight, self._tile)
        for lever in levers:
            change = lever()
            if change:
                self.changes.append(f"out of memory in {where}: {change}")
                return self.changes[-1]
        return ""

    def _stream_more(self) -> str:
        """Half the resident blocks (every other one, so prefetches still hide behind resident compute)."""
        st, n = self.plan.strategy, len(self.streamer.blocks)
        if not st.resident:
            return ""
        keep = tuple(sorted(st.resident)[::2]) if len(st.resident) > 1 else ()
        streamed = tuple(i for i in range(n) if i not in keep)
        sizes = sorted(self.streamer.groups[i].nbytes() for i in streamed)
        self.plan.strategy = replace(st, resident=keep, streamed=streamed, buffer_bytes=sum(sizes[-2:]),
                                     vae_resident=False, streamed_bytes=sum(sizes))
        self._restream(keep, self.streamer.prefetch)
        return f"{len(streamed)} of {n} DiT blocks streamed (was {len(st.streamed)})"

    def _one_in_flight(self) -> str:
        if not self.streamer.order or not self.streamer.prefetch:
            return ""
        self.streamer.prefetch = False
        return "one streamed block in flight instead of two (no prefetch)"

    def _tile(self) -> str:
        if self.plan.strategy.vae_tiling or not hasattr(self.backbone, "enable_vae_tiling"):
            return ""
        self.backbone.enable_vae_tiling()
        self.plan.strategy.vae_tiling = True
        return "VAE decode tiled"

    # ------------------------------------------------------------ teardown
    def unload(self) -> None:
        """Everything off the device and every hook removed (the backbone is being dropped)."""
        for name in list(self._lru):
            self._evict(name)
        self.streamer.evict()
        self.streamer.remove_hooks()
        for name in ("transformer", *COMPONENTS):
            module = getattr(self.backbone, name, None)
            if isinstance(module, nn.Module):
                self._unhook_tree(module)
        gc.collect()

    def close(self) -> None:
        """Back to a plain backbone: hooks removed, every weight on the device (components built)."""
        for name in COMPONENTS:
            if isinstance(getattr(self.backbone, name, None), OnFirstCall):
                self._load(name)
        self.streamer.close()
        for st in self.streamers.values():
            st.close()
        for g in self.groups.values():
            g.keep_host = False
            g.onload()
        for name in ("transformer", *COMPONENTS):
            module = getattr(self.backbone, name, None)
            if isinstance(module, nn.Module):
                self._unhook_tree(module)
