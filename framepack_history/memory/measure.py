"""Counting bytes without a GPU: live tensor bytes under a dispatch mode, module weight bytes.

:class:`LiveBytes` sees every tensor that an operator returns and follows its
storage until it is freed, so its ``peak`` is the largest amount of tensor
memory that was alive at once, counting only what was allocated inside the
``with`` block (activations, not weights or inputs made before it). It works
on real tensors (what the tests measure on the CPU) and on the ``meta``
device (what the planner traces: the model's own code path, no data, no FLOPs).

Two things a meta trace cannot know are made explicit:

* attention: on ``meta`` (and on the CPU with a mask) ``scaled_dot_product_attention``
  takes the math path and materialises ``N x N`` scores, while the GPU runs a
  fused kernel whose memory is linear in ``N``. With ``fused_attention=True``
  SDPA is replaced during the trace by its fused-kernel footprint: an output
  like the query plus a float32 log-sum-exp row per head. The swap is a
  :class:`~torch.overrides.TorchFunctionMode`, which (like the dispatch mode)
  is thread-local: a plan made on the page's thread never touches the
  attention of a job denoising on the worker's thread;
* data-dependent scalars (``.item()`` of a meta tensor, e.g. a text-length crop)
  are answered with ``scalar``.

``memoize(module)`` replays a module's recorded footprint for input shapes it
has already traced: a tiled VAE decode calls its decoder dozens of times on
a handful of tile shapes.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from typing_extensions import Self

_ITEM = torch.ops.aten._local_scalar_dense.default


def _fused_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The memory a fused (flash / memory-efficient) attention kernel allocates; the values are left empty."""
    lse = query.new_empty((*query.shape[:-1],), dtype=torch.float32)  # per-row log-sum-exp, freed on return
    out = query.new_empty((*query.shape[:-1], value.shape[-1]))
    del lse
    return out


class FusedAttention(TorchFunctionMode):
    """Within the block, on this thread only, SDPA calls allocate what a fused kernel would (see module doc)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is F.scaled_dot_product_attention:
            return _fused_sdpa(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


class LiveBytes(TorchDispatchMode):
    """Tracks bytes of tensor storages allocated inside the block: ``live`` now, ``peak`` at most."""

    def __init__(self, scalar: int = 1, fused_attention: bool = False) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.scalar = scalar
        self.fused_attention = fused_attention
        self._sizes: dict[int, int] = {}
        self._attention: FusedAttention | None = None

    def __enter__(self) -> Self:
        if self.fused_attention:  # a thread-local mode, never a process-wide replacement of SDPA
            self._attention = FusedAttention()
            self._attention.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        out = super().__exit__(*exc)
        if self._attention is not None:
            self._attention.__exit__(*exc)
            self._attention = None
        return out

    def reset_peak(self) -> None:
        self.peak = self.live

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)  # storages keep their Python object alive as long as they live
        if key in self._sizes:
            return
        size = storage.nbytes()
        self._sizes[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is _ITEM and args[0].is_meta:
            return self.scalar
        out = func(*args, **kwargs)
        inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if id(storage) not in inputs:  # views and in-place results reuse an input's storage
                    self._track(storage)
        return out

    @contextmanager
    def memoize(self, module: nn.Module) -> Iterator[None]:
        """Trace ``module`` once per input shape; later calls replay its peak and return an empty output."""
        forward, seen = module.forward, {}

        def replay(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            key = (tuple(x.shape), x.dtype, x.device)
            if key not in seen:
                outer, base = self.peak, self.live
                self.peak = base
                out = forward(x, *args, **kwargs)
                seen[key] = (self.peak - base, out.shape, out.dtype)
                self.peak = max(outer, self.peak)
                return out
            extra, shape, dtype = seen[key]
            self.peak = max(self.peak, self.live + extra)
            return torch.empty(shape, dtype=dtype, device=x.device)

        module.forward = replay
        try:
            yield
        finally:
            del module.forward  # back to the class's forward


def trace_peak(fn: Callable[[], Any], scalar: int = 1, fused_attention: bool = True) -> int:
    """Peak bytes of tensors allocated while running ``fn`` (typically on the meta device)."""
    with torch.no_grad(), LiveBytes(scalar=scalar, fused_attention=fused_attention) as lb:
        fn()
    return lb.peak


def tensor_bytes(tensors: Any) -> int:
    """Bytes of distinct storages among ``tensors`` (shared weights counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        try:
            key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        except (RuntimeError, NotImplementedError):
            key = id(t)
        seen[key or id(t)] = t.untyped_storage().nbytes() if t.device.type != "meta" else t.numel() * t.element_size()
    return sum(seen.values())


def quant_state_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Tensors bitsandbytes keeps beside 4-bit weights (absmax, codebooks, nested absmax), not module state."""
    out = []
    for p in module.parameters():
        qs = getattr(p, "quant_state", None)
        while qs is not None:
            parts = (getattr(qs, "absmax", None), getattr(qs, "code", None), getattr(qs, "offset", None))
            out += [t for t in parts if isinstance(t, torch.Tensor)]
            qs = getattr(qs, "state2", None)
        scb = getattr(p, "SCB", None)  # 8-bit row scales
        if isinstance(scb, torch.Tensor):
            out.append(scb)
    return out


def module_bytes(module: nn.Module | None) -> int:
    """Bytes of a module's parameters, buffers and quantisation state (meta modules count ``numel x itemsize``)."""
    if module is None:
        return 0
    return tensor_bytes([*module.parameters(), *module.buffers(), *quant_state_tensors(module)])
