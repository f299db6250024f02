"""Which tensors move: weight groups, the DiT block streamer and a residency ledger.

A :class:`WeightGroup` owns a set of parameters/buffers and swaps their
``.data`` between a host copy (pinned, so copies run asynchronously) and a
device copy. The :class:`BlockStreamer` cuts the DiT into a *stem* (everything
outside its blocks, always resident) and one group per block: the planner's
resident blocks stay on the device, the others are onloaded on a side CUDA
stream one block ahead of the computation and dropped after their forward.

diffusers' ``apply_group_offloading`` does the all-blocks-streamed case, but it
cannot keep a chosen subset of blocks resident and, with ``record_stream``,
lets the CPU run ahead of the GPU and allocate more blocks than budgeted; both
are the reason for this file.

A step cache may skip every block after the first (``generation.step_cache``):
it then sets the DiT's ``skip_blocks`` flag (:data:`SKIP_BLOCKS`) for the rest
of that call, and the streamer neither copies nor drops the blocks that do not
run. Its hooks are torch forward hooks, which fire before the cache's own hook
can skip a block, so the flag is how they learn it.

On a machine without CUDA the compute device is the CPU itself. The same code
then runs against a *simulated* device: "onloading" clones the host copy, and
the :class:`Residency` ledger tells device copies from host copies by storage,
so a test can prove what would have been resident on a real device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import torch
from torch import nn

from framepack_history.backbones.base import transformer_blocks
from framepack_history.lora.adapters import is_adapter
from framepack_history.memory.measure import quant_state_tensors

#: The DiT's attribute that is True while the rest of its current call's blocks are skipped (a step cache
#: decided so after the first block): those blocks are neither copied to the device nor dropped.
SKIP_BLOCKS = "skip_blocks"


class Residency:
    """Which weight bytes sit on the compute device, measured from the tensors themselves."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.simulated = self.device.type == "cpu"
        self._host: set[int] = set()  # storages that are host copies (simulated device only)
        self.modules: dict[str, nn.Module] = {}
        self.peak = 0
        self.samples: list[tuple[str, int]] = []
        self.verify = False  # also sample before every streamed block (tests; costs a pass over the weights)

    def mark_host(self, t: torch.Tensor, host: bool = True) -> None:
        if self.simulated:
            (self._host.add if host else self._host.discard)(t.untyped_storage().data_ptr())

    def is_resident(self, t: torch.Tensor) -> bool:
        if t.device.type != self.device.type:
            return False
        return not (self.simulated and t.untyped_storage().data_ptr() in self._host)

    def track(self, name: str, module: nn.Module | None) -> None:
        if module is None:
            self.modules.pop(name, None)
        else:
            self.modules[name] = module

    def resident_bytes(self, names: Iterable[str] | None = None) -> int:
        """Bytes of distinct device storages among the tracked modules' weights (``names``, or all)."""
        seen: dict[int, int] = {}
        for m in (self.modules.values() if names is None else [self.modules[n] for n in names if n in self.modules]):
            for t in (*m.parameters(), *m.buffers(), *quant_state_tensors(m)):
                if t.device.type != "meta" and self.is_resident(t):
                    s = t.untyped_storage()
                    seen[s.data_ptr()] = s.nbytes()
        return sum(seen.values())

    def sample(self, where: str) -> int:
        b = self.resident_bytes()
        self.peak = max(self.peak, b)
        self.samples.append((where, b))
        return b


def _pin(t: torch.Tensor) -> torch.Tensor:
    return t.pin_memory() if torch.cuda.is_available() and not t.is_pinned() else t


def _host_copy(t: torch.Tensor, simulated: bool) -> torch.Tensor:
    """A (pinned) host copy of a device tensor, written once; on a simulated device, a clone."""
    if simulated:
        return t.clone()
    if t.device.type == "cpu":
        return _pin(t)
    return torch.empty(t.shape, dtype=t.dtype, pin_memory=torch.cuda.is_available()).copy_(t)


@dataclass
class WeightGroup:
    """Tensors that move together between a host copy and the compute device."""

    name: str
    tensors: list[torch.Tensor]
    residency: Residency
    keep_host: bool = True  # streamed groups keep their host copy; resident ones move
    host: list[torch.Tensor] = field(default_factory=list)
    on_device: bool = True
    event: object = None  # CUDA event: the copy to the device has finished

    @classmethod
    def of(cls, name: str, modules: Iterable[nn.Module], residency: Residency, keep_host: bool = True,
           extra: Iterable[torch.Tensor] = ()) -> WeightGroup:

        seen, tensors = set(), []
        own = chain(*(chain(m.named_parameters(), m.named_buffers()) for m in modules))
        # LoRA adapters stay resident (lora/adapters.py): a group moves base weights only
        for t in chain((t for n, t in own if not is_adapter(n)), extra):
            if id(t) not in seen:
                seen.add(id(t))
                tensors.append(t)
        g = cls(name, tensors, residency, keep_host)
        g.on_device = all(residency.is_resident(t) for t in tensors)
        if not g.on_device:  # loaded on the host: that copy becomes the (pinned) host copy
            g.host = [_pin(t.data) for t in tensors]
            for t, h in zip(tensors, g.host):
                t.data = h
                residency.mark_host(h)
        return g

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def offload(self, stream: torch.cuda.Stream | None = None) -> None:
        """Drop the device copy (making a host copy first if there is none)."""
        if not self.on_device:
            return
        if not self.host:
            self.host = [_host_copy(t.data, self.residency.simulated) for t in self.tensors]
            for h in self.host:
                self.residency.mark_host(h)
        for t, h in zip(self.tensors, self.host):
            if stream is not None and t.data.is_cuda:
                t.data.record_stream(stream)  # the compute stream may still read it: delay reuse, not the CPU
            t.data = h
        self.on_device, self.event = False, None

    def onload(self, stream: torch.cuda.Stream | None = None) -> None:
        """Copy the host copy to the device (asynchronously on ``stream`` when given)."""
        if self.on_device:
            return
        dev = self.residency.device
        ctx = torch.cuda.stream(stream) if stream is not None else nullcontext()
        with ctx:
            try:
                for t, h in zip(self.tensors, self.host):
                    t.data = h.clone() if self.residency.simulated else h.to(dev, non_blocking=stream is not None)
            except BaseException:  # out of memory part-way: back to the host copies, never half on the device
                for t, h in zip(self.tensors, self.host):
                    t.data = h
                raise
            if stream is not None:
                self.event = torch.cuda.Event()
                self.event.record(stream)
        if not self.keep_host:
            for h in self.host:
                self.residency.mark_host(h, False)
            self.host = []
        self.on_device = True

    def wait(self) -> None:
        """Make the compute stream wait for this group's copy (a GPU-side wait: the CPU runs on)."""
        if self.event is not None:
            torch.cuda.current_stream().wait_event(self.event)
            self.event = None


class BlockStreamer:
    """Keeps the stem and the ``resident`` blocks on the device and streams the others through it.

    The streamed blocks keep a pinned host copy; each one is copied to the
    device while the block before it computes (on a side stream), and freed
    after its own forward. At most two streamed blocks are on the device at
    once: before prefetching the next one, the CPU waits until the previous
    streamed block has finished on the GPU, so it can never run ahead and
    allocate more (diffusers' ``record_stream`` path has no such bound).
    """

    def __init__(self, transformer: nn.Module, resident: Iterable[int], residency: Residency,
                 use_stream: bool | None = None, name: str = "transformer", prefetch: bool = True) -> None:

        self.residency = residency
        self.transformer = transformer
        self.blocks = transformer_blocks(transformer)
        self._calls: dict[int, int] = {}  # streamed position -> forwards run since it was loaded
        self.copied_bytes = 0  # host-to-device bytes of streamed blocks (what guidance in one pass saves)
        self.resident = set(resident)
        self.prefetch = prefetch  # False: one streamed block on the device at a time (after an out-of-memory error)
        stem = [m for name, m in transformer.named_children() if not isinstance(m, nn.ModuleList)]
        own = [t for t in (*transformer._parameters.values(), *transformer._buffers.values()) if t is not None]
        self.stem = WeightGroup.of("stem", stem, residency, keep_host=False, extra=own)
        self.groups = [WeightGroup.of(f"block{i}", [b], residency, keep_host=i not in self.resident)
                       for i, b in enumerate(self.blocks)]
        self.order = [i for i in range(len(self.blocks)) if i not in self.resident]
        cuda = residency.device.type == "cuda"
        self.stream = torch.cuda.Stream() if (use_stream if use_stream is not None else cuda) and cuda else None
        self._done: dict[int, object] = {}  # streamed position -> compute-finished event
        self._hooks = []
        for pos, i in enumerate(self.order):
            self._hooks.append(self.blocks[i].register_forward_pre_hook(self.pre_hook(pos)))
            self._hooks.append(self.blocks[i].register_forward_hook(self.post_hook(pos)))
        for i in self.order:
            self.groups[i].offload()
        residency.track(name, transformer)

    # -------------------------------------------------------------- phases
    def load(self) -> None:
        """Stem and resident blocks on the device (after an :meth:`evict`)."""
        self.stem.onload()
        for i in self.resident:
            self.groups[i].onload()

    def evict(self) -> None:
        """Everything to the host (a conditioning phase needs the room)."""
        self.release()
        self.stem.offload()
        for i in self.resident:
            self.groups[i].offload()

    def release(self) -> None:
        """Drop streamed blocks still on the device (a prefetch for a step that did not come)."""
        for i in self.order:
            self.drop(self.groups[i])
        self._done.clear()
        self._calls.clear()

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def close(self) -> None:
        """Remove the hooks and put every block back on the device."""
        self.release()
        self.remove_hooks()
        self.load()
        for i in self.order:
            self.groups[i].keep_host = False
            self.groups[i].onload()
            self.groups[i].wait()

    @property
    def loaded(self) -> bool:
        """Stem and resident blocks are on the device."""
        return self.stem.on_device and all(self.groups[i].on_device for i in self.resident)

    @property
    def resident_bytes(self) -> int:
        """Stem + resident blocks: what stays on the device between sections."""
        return self.stem.nbytes() + sum(self.groups[i].nbytes() for i in self.resident)

    @property
    def streamed_bytes(self) -> int:
        return sum(self.groups[i].nbytes() for i in self.order)

    # ------------------------------------------------------ extension points
    # A subclass changes when blocks move (training's streamer follows the backward too) by overriding
    # :meth:`pre_hook` / :meth:`post_hook` and moving groups with the methods below, never the state behind them.
    def group_at(self, pos: int) -> WeightGroup:
        """The weight group of streamed position ``pos`` (an index into :attr:`order`)."""
        return self.groups[self.order[pos]]

    def compute_stream(self) -> torch.cuda.Stream | None:
        """The stream blocks compute on (None without a side stream: nothing to order against)."""
        return torch.cuda.current_stream() if self.stream is not None else None

    def fetch(self, group: WeightGroup) -> None:
        """Start copying ``group`` to the device (on the side stream), counted in :attr:`copied_bytes`."""
        if not group.on_device:
            self.copied_bytes += group.nbytes()
        group.onload(self.stream)

    def drop(self, group: WeightGroup) -> None:
        """Back to the host copy once the compute stream is done reading the device copy."""
        group.offload(self.compute_stream())

    def mark_done(self, pos: int) -> None:
        """Record that position ``pos``'s compute has been queued (see :meth:`wait_done`)."""
        if self.stream is not None:
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream())
            self._done[pos] = done

    def wait_done(self, pos: int) -> None:
        """Wait (CPU) until position ``pos``'s marked compute has finished: its dropped memory is free to reuse."""
        back = self._done.pop(pos, None)
        if back is not None:
            back.synchronize()

    def pre_hook(self, pos: int) -> Callable[[nn.Module, tuple], None]:
        """The forward pre-hook of streamed position ``pos``: its block on the device, the next one prefetched."""
        def hook(module: nn.Module, args: tuple) -> None:
            if self._skipped():  # the block returns its input: nothing to copy, nothing to prefetch
                return
            group = self.group_at(pos)
            self.fetch(group)  # no-op when the previous block prefetched it
            group.wait()
            if len(self.order) > 1 and self.prefetch:
                self.wait_done((pos - 1) % len(self.order))  # the block before this one is done: its memory is free
                self.fetch(self.group_at((pos + 1) % len(self.order)))
            if self.residency.verify:
                self.residency.sample(f"pre {group.name}")
        return hook

    def post_hook(self, pos: int) -> Callable[[nn.Module, tuple, object], None]:
        """The forward hook of streamed position ``pos``: the block dropped after its (last) forward."""
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if self._skipped():
                # Skipped, or the first block, whose hook fires after the cache decided to skip the rest: it
                # stays on the device for the next call, like a block prefetched before the skip (two at most).
                return
            self.mark_done(pos)
            # Guidance's branches run each block in turn (the DiT's ``block_calls``): keep it until the last.
            self._calls[pos] = self._calls.get(pos, 0) + 1
            if self._calls[pos] < getattr(self.transformer, "block_calls", 1):
                return
            self._calls.pop(pos)
            self.drop(self.group_at(pos))
        return hook

    def _skipped(self) -> bool:
        return bool(getattr(self.transformer, SKIP_BLOCKS, False))


def block_placement(transformer: nn.Module, resident: Iterable[int]) -> Callable[[str], bool]:
    """``name -> True`` when a parameter of ``transformer`` belongs on the device (stem or resident block)."""
    keep, prefixes, i = set(resident), {}, 0
    for cname, child in transformer.named_children():
        if isinstance(child, nn.ModuleList):
            for j in range(len(child)):
                prefixes[f"{cname}.{j}."] = i
                i += 1

    def on_device(name: str) -> bool:
        head = name.split(".", 2)
        block = prefixes.get(f"{head[0]}.{head[1]}." if len(head) > 2 else "")
        return block is None or block in keep

    return on_device


def load_safetensors(module: nn.Module, folder: str | Path, on_device: Callable[[str], bool], device: torch.device,
                     dtype: torch.dtype) -> nn.Module:
    """Fill a ``meta``-built module from the ``*.safetensors`` files in ``folder``, one tensor at a time.

    The files are memory-mapped; each tensor goes straight to the compute device
    or into pinned host memory (``on_device(name)``), so the host never holds a
    second full copy of the weights, only the page cache of the mapping.
    """
    from safetensors import safe_open  # safetensors: only when tensors are read or written

    pin = device.type == "cuda"
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118  (a safetensors handle, not a dict)
                owner, _, leaf = name.rpartition(".")
                mod = module.get_submodule(owner)
                t = f.get_tensor(name)
                # a float8-stored layer (precision.store_weights) stays float8: half the bytes to place
                now = mod._parameters.get(leaf, mod._buffers.get(leaf))
                want = now.dtype if now is not None and now.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else dtype
                t = t.to(want) if t.is_floating_point() else t
                if on_device(name):
                    t = t.to(device)
                elif pin:
                    t = torch.empty_like(t, pin_memory=True).copy_(t)
                if leaf in mod._parameters:
                    mod._parameters[leaf] = nn.Parameter(t, requires_grad=False)
                elif leaf in mod._buffers:
                    mod._buffers[leaf] = t
    missing = [n for n, p in (*module.named_parameters(), *module.named_buffers()) if p.is_meta]
    if missing:
        raise ValueError(f"{folder}: no weights for {missing[:5]}{' …' if len(missing) > 5 else ''}")
    return module.eval()
