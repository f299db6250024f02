"""How many bytes a run may use: the device and host budgets, and what a CUDA budget keeps back.

A budget is the preset's ``hardware`` figures (or free memory measured where
they are 0). The planner makes every choice against :attr:`Budget.usable`:
the device budget less :data:`CUDA_ALLOWANCE`, the bytes no trace on the
``meta`` device sees (the CUDA context, library workspaces, fragmentation),
so that planned rows stay comparable with ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from framepack_history.config.presets import Preset

GiB, MiB = 1 << 30, 1 << 20
HOST_OVERHEAD = {"cuda": 2 * GiB, "cpu": 3 * GiB // 4}  # interpreter + torch/CUDA libraries + allocator pools
RESERVE_FRACTION = 0.04  # of a CPU "device" budget: the host allocator's slack (a CUDA budget has CUDA_ALLOWANCE)


@dataclass(frozen=True)
class CudaAllowance:
    """Device bytes a CUDA run uses that no trace on ``meta`` sees; the same for every preset.

    Each term with where its figure comes from (none measured on a GPU by this project yet:
    ``benchmarks/gpu_e2e.py`` prints what it sees of each beside these).
    """

    #: The CUDA context (driver state and the kernels loaded so far). With lazy module loading (PyTorch sets
    #: CUDA_MODULE_LOADING=LAZY since 1.13; CUDA's default on Linux since 12.2) a context measured 287 MB
    #: against 667 MB eager (https://github.com/pytorch/pytorch/pull/86509), "around 400MB"
    #: (https://github.com/pytorch/pytorch/issues/109888), 426 MiB bare on an RTX 6000 Ada with torch 2.10
    #: (https://github.com/unslothai/unsloth-zoo/pull/1053). Kernels first used mid-run (cuBLAS, cuDNN's
    #: conv3d engines, the attention kernel) load into it later: 512 MiB.
    context: int = 512 * MiB
    #: Library workspaces taken from the caching allocator outside any traced op: cuBLAS keeps one per
    #: (handle, stream), by default ":4096:2:16:8" (8.125 MiB), 32 MiB on Hopper
    #: (https://github.com/pytorch/pytorch/pull/89027), and cuBLASLt 1-32 MiB more
    #: (https://github.com/pytorch/pytorch/pull/120925); only the compute stream runs matmuls (the
    #: streamer's side stream only copies). The rest is for cuDNN's conv3d workspace in the VAE, which PyTorch
    #: also takes from the caching allocator and gives up for a leaner algorithm when the allocation fails.
    workspaces: int = 128 * MiB
    #: Reserved but unallocated bytes at the peak. Streaming frees and reallocates block-sized buffers every
    #: step; with fixed segments that left 1.7 GiB reserved and free in a VAE decode that ran out of memory,
    #: which is why the package sets expandable segments (``framepack_history/__init__.py``). With them the
    #: slack is the last partly used segment pages per stream: the former 4 % reserve's size, less workspaces.
    fragmentation: int = 384 * MiB

    @property
    def total(self) -> int:
        return self.context + self.workspaces + self.fragmentation

    def describe(self, with_context: bool = True) -> str:
        """One line naming the allowance and its terms."""
        parts = ([f"context {self.context / MiB:.0f} MiB"] if with_context else []) + [
            f"cuBLAS/cuDNN workspaces {self.workspaces / MiB:.0f} MiB",
            f"allocator fragmentation {self.fragmentation / MiB:.0f} MiB"]
        total = self.total - (0 if with_context else self.context)
        return f"CUDA allowance {total / GiB:.2f} GiB ({', '.join(parts)})"


CUDA_ALLOWANCE = CudaAllowance()

@dataclass
class Budget:
    """Bytes the run may use on the compute device and on the host."""

    device_bytes: int
    host_bytes: int
    device: str = "cuda"  # "cuda" or "cpu" (the CPU is then both host and device)
    source: str = "preset"

    @property
    def allowance(self) -> int:
        """Bytes of ``device_bytes`` kept for what no trace sees: ``CUDA_ALLOWANCE`` on CUDA (less the
        context where the budget was measured as free memory, which the context had already taken)."""
        if self.device != "cuda":
            return 0
        return CUDA_ALLOWANCE.total - (CUDA_ALLOWANCE.context if self.source == "measured" else 0)

    @property
    def usable(self) -> int:
        """What the plan's device rows may reach: the budget less the CUDA allowance (a CPU: less 4 %)."""
        if self.device != "cuda":
            return int(self.device_bytes * (1 - RESERVE_FRACTION))
        return max(0, self.device_bytes - self.allowance)

    def describe_allowance(self) -> str:
        """One line: what the budget keeps back for what the plan does not trace."""
        if self.device != "cuda":
            return f"{RESERVE_FRACTION:.0%} of the {self.device} budget kept back (no CUDA allowance)"
        measured = self.source == "measured"
        after = " (free memory measured after the context)" if measured else ""
        return f"{CUDA_ALLOWANCE.describe(with_context=not measured)} kept back from the {self.device_bytes / GiB:.2f} GiB budget{after}"

    @classmethod
    def for_preset(cls, preset: Preset, device: str | None = None) -> Budget:
        """The preset's ``hardware`` budgets, or measured free memory where they are 0 (less the allowance)."""
        import psutil  # psutil: only when the host budget is measured

        dev = (device or preset.hardware.device).split(":")[0]
        hw, src = preset.hardware, "preset"
        host = int(hw.host_budget_gib * GiB) or int(psutil.virtual_memory().available * 0.9)
        if hw.device_budget_gib:
            return cls(int(hw.device_budget_gib * GiB), host, dev, src)
        if dev == "cuda" and torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            return cls(int(free), host, dev, "measured")
        return cls(host, host, dev, "measured" if not hw.host_budget_gib else "preset")
