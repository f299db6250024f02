"""Out of memory: recognising it, asking for a more conservative plan, and saying what was measured.

No torch at import time (``sys.modules`` is consulted): a job's runner calls these on any failure.
The pipeline is duck-typed (``backbone``, ``preset``, and an optional ``memory`` manager).
"""

from __future__ import annotations

import sys
from typing import Any

GiB = 1024**3
Pipeline = Any  # a generation.pipeline.Pipeline; typed loosely so memory/ never imports generation/


def is_out_of_memory(err: BaseException) -> bool:
    """torch's OutOfMemoryError, an accelerator's "out of memory" RuntimeError, or host MemoryError."""
    torch = sys.modules.get("torch")
    seen = 0
    while err is not None and seen < 4:  # also when wrapped by another exception
        if isinstance(err, MemoryError) or (torch is not None and isinstance(err, torch.OutOfMemoryError)):
            return True
        if isinstance(err, RuntimeError) and "out of memory" in str(err).lower():
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def more_conservative(pipeline: Pipeline) -> str:
    """Ask for a plan that needs less device memory; returns what changed (for the log and messages).

    The memory manager, when one is attached, changes its plan where the error struck
    (``more_conservative() -> str``: more blocks streamed, fewer in flight, a tiled decode);
    otherwise VAE tiling is the one lever a backbone offers.
    """
    memory = getattr(pipeline, "memory", None)
    step = getattr(memory, "more_conservative", None)
    if callable(step):
        change = step()
        if change:
            return change if isinstance(change, str) else "the memory manager switched to a more conservative plan"
    backbone = pipeline.backbone
    tiling = getattr(backbone, "enable_vae_tiling", None)
    if callable(tiling) and not getattr(backbone, "_oom_tiling", False):
        tiling()
        backbone._oom_tiling = True
        return "VAE tiling enabled"
    return "no more conservative plan is available"


def measured_peak(pipeline: Pipeline) -> str:
    """The highest memory this process used on the pipeline's device (host RSS on a CPU).

    With a memory manager, also the peak of weights its residency ledger saw on the device.
    """
    torch = sys.modules.get("torch")
    device = getattr(pipeline.backbone, "device", None)
    ledger = getattr(getattr(getattr(pipeline, "memory", None), "residency", None), "peak", None)
    weights = f", weights on the device at most {ledger / GiB:.3f} GiB" if isinstance(ledger, int) else ""
    if torch is not None and device is not None and getattr(device, "type", "") == "cuda" and torch.cuda.is_initialized():
        return f"measured peak {torch.cuda.max_memory_allocated(device) / GiB:.2f} GiB on {device}{weights}"
    try:
        import resource  # not on Windows

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    except ImportError:
        return f"no peak measurement on {device}{weights}"
    return f"measured peak {rss / GiB:.2f} GiB of host memory (device {device}){weights}"


def reset_peak(pipeline: Pipeline) -> None:
    torch = sys.modules.get("torch")
    device = getattr(pipeline.backbone, "device", None)
    if torch is not None and getattr(device, "type", "") == "cuda" and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats(device)


def budget_text(pipeline: Pipeline) -> str:
    """The device budget the job ran under, and where it came from."""
    plan = getattr(getattr(pipeline, "memory", None), "plan", None)
    budget = getattr(plan, "budget", None)
    if getattr(budget, "device_bytes", None):
        return f"budget {budget.device_bytes / GiB:.2f} GiB ({getattr(budget, 'source', 'plan')})"
    hw = pipeline.preset.hardware
    if hw.device_budget_gib:
        return f"budget {hw.device_budget_gib:g} GiB (preset hardware.device_budget_gib)"
    return "budget: whatever is free on the device (preset hardware.device_budget_gib = 0)"
