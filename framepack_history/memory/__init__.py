"""Device memory: a planner (how many bytes go where) and the mechanism that carries it out.

* :mod:`.planner` — pure arithmetic from configs on the ``meta`` device:
  :func:`plan` predicts the device and host peak of every phase of a request
  and chooses a :class:`Strategy` (resident DiT blocks, streamed blocks,
  text-encoder quantisation, VAE tiling) that fits the :class:`Budget`;
* :mod:`.streaming` / :mod:`.manager` — which tensors move: DiT blocks
  streamed from pinned host memory one block ahead of the computation,
  components made resident by hooks when their code runs and evicted when
  the room is needed, and a residency ledger that measures what sat on the
  device (strict mode: a module run off the device raises);
* :mod:`.measure` — live tensor bytes without a GPU (also on ``meta``).

Names are imported on first use, so ``import framepack_history.memory`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "Budget": "planner", "PhasePlan": "planner", "Plan": "planner", "Strategy": "planner",
    "format_table": "planner", "plan": "planner", "MemoryManager": "manager",
    "BlockStreamer": "streaming", "Residency": "streaming", "LiveBytes": "measure",
}
__all__ = ["BlockStreamer", "Budget", "LiveBytes", "MemoryManager", "PhasePlan", "Plan", "Residency", "Strategy",
           "format_table", "plan"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
