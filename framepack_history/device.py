"""The dtype table and device housekeeping shared by loading, planning, jobs and checkpoints.

No torch at import time: configs validate dtype names with :data:`DTYPE_NAMES`.
"""

from __future__ import annotations

import gc
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: held while torch's global RNG is seeded and drawn from (random initial weights) or restored (a checkpoint):
#: with several workers in one process, one worker's load must not draw from another's seed
RNG_LOCK = threading.RLock()

#: the weight dtypes a preset (``hardware.dtype``) or a training config may name
DTYPE_NAMES = ("float32", "bfloat16", "float16")
#: ``hardware.weights_dtype``: how the DiT's weights are stored ("" = in ``hardware.dtype``; see precision.py)
WEIGHT_STORAGE = ("", "float8_e4m3fn", "float8_e5m2")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name`` (one of :data:`DTYPE_NAMES`)."""
    import torch  # torch: kept off the page's import path

    if name not in DTYPE_NAMES:
        raise KeyError(f"dtype {name!r} is not one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def free_device_memory() -> None:
    """Collect garbage and hand the allocator's cached blocks back; allocates nothing.

    Call it after whatever held the memory is gone (a failed attempt, an evicted model).
    Initialises no accelerator: a process that never used one has nothing to hand back.
    """
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()
