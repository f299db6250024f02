"""Step caching: skip most of the DiT on denoising steps where its input has barely changed.

diffusers' First Block Cache (``FirstBlockCacheConfig``, TeaCache's idea made
generic): every step runs the first transformer block; when its residual moved
less than ``threshold`` (mean absolute change relative to the last computed
step's) the other blocks are skipped and their cached residual is added
instead. It needs no per-model calibration (MagCache does: magnitude ratios
measured on the real weights, which this project cannot run), and its hooks sit
on the blocks, so the memory manager's block streaming and strict checks run
around them unchanged.

One :class:`StepCache` lives for one section: the hooks go on when it opens and
come off when it closes, so nothing leaks into the next section or request, and
with caching off no hook is ever installed (frames are bit for bit the same).
Each prediction branch (with or without the history embedding, conditional or
not) runs under its own diffusers cache context, so the branches never read
each other's residuals. The last step of a section is always computed, as
TeaCache does (the first is computed because nothing is cached yet). What the
cache holds (about four whole-sequence hidden states per branch) is planned by
``memory.planner``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

import torch
from diffusers.hooks import HookRegistry
from torch import nn

from framepack_history.config.presets import CACHE_SETTINGS  # noqa: F401  (the settings; re-exported)

#: First Block Cache thresholds per backbone (the README's Speed table says how they were chosen).
#: toy: measured with ``benchmarks/step_cache.py`` on 8 held-out worlds (its 8 Euler steps move the first
#: block's residual by 0.2-0.37 per step, so nothing below 0.2 ever skips): 0.5 halves the full passes,
#: 0.7 keeps 3 of 8. hunyuan_framepack: ParaAttention's default for HunyuanVideo, FramePack's base model
#: (0.06: 1.62x faster, "nearly zero quality loss"), and 0.1 for more; not measured on FramePack-F1 here.
THRESHOLDS: dict[str, dict[str, float]] = {
    "toy": {"fast": 0.5, "faster": 0.7},
    "hunyuan_framepack": {"fast": 0.06, "faster": 0.10},
}


def threshold_for(backbone: str, setting: str) -> float | None:
    """The First Block Cache threshold of ``setting`` on ``backbone``; None for ``off``."""
    if setting == "off":
        return None
    return THRESHOLDS.get(backbone, THRESHOLDS["hunyuan_framepack"])[setting]


def _register_blocks(transformer: nn.Module) -> None:
    """Tell diffusers' block registry how this project's own blocks return their hidden states.

    diffusers' transformers (HunyuanVideo's blocks) are registered already; the
    toy DiT's block returns the hidden states alone.
    """
    from diffusers.hooks._helpers import (  # diffusers: only on the path that uses it (slow to import)
        TransformerBlockMetadata,
        TransformerBlockRegistry,
    )

    for module in transformer.modules():
        cls = type(module)
        if getattr(cls, "_step_cache_block", False):
            try:
                TransformerBlockRegistry.get(cls)
            except ValueError:
                TransformerBlockRegistry.register(cls, TransformerBlockMetadata(return_hidden_states_index=0))


def _head_state(transformer: nn.Module):
    """The First Block Cache state manager (shared by all its block hooks)."""
    from diffusers.hooks.first_block_cache import (
        _FBC_LEADER_BLOCK_HOOK,  # diffusers: only on the path that uses it (slow to import)
    )

    for module in transformer.modules():
        reg = getattr(module, "_diffusers_hook", None)
        hook = None if reg is None else reg.get_hook(_FBC_LEADER_BLOCK_HOOK)
        if hook is not None:
            return hook.state_manager
    raise RuntimeError("First Block Cache is not enabled on this transformer")


def _num_blocks(transformer: nn.Module) -> int:
    """Blocks in the ``ModuleList`` children diffusers' cache hooks look for (``blocks``, ``transformer_blocks``, ...)."""
    from diffusers.hooks._common import (
        _ALL_TRANSFORMER_BLOCK_IDENTIFIERS,  # diffusers: only on the path that uses it (slow to import)
    )

    return sum(len(m) for name, m in transformer.named_children()
               if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(m, nn.ModuleList))


@dataclass
class PassCount:
    """DiT calls of one section: how many ran every block (``full``) out of ``calls``."""

    calls: int = 0
    full: int = 0
    by_branch: dict[str, list[int]] = field(default_factory=dict)  # branch -> [full, calls]

    def add(self, branch: str, computed: bool) -> None:
        self.calls += 1
        self.full += int(computed)
        row = self.by_branch.setdefault(branch, [0, 0])
        row[0] += int(computed)
        row[1] += 1

    def to_dict(self) -> dict[str, object]:
        return {"calls": self.calls, "full": self.full, "by_branch": {k: list(v) for k, v in self.by_branch.items()}}


class StepCache:
    """First Block Cache on ``transformer`` for one section of ``steps`` steps (``threshold`` None = off).

    Use as a context manager; call every prediction through :meth:`call` with
    its branch name. ``passes`` counts the calls and those that ran every block.
    """

    def __init__(self, transformer: nn.Module, threshold: float | None, steps: int) -> None:
        if threshold is not None and _num_blocks(transformer) < 2:
            threshold = None  # First Block Cache needs a first block and others to skip
        self.transformer, self.threshold, self.steps = transformer, threshold, steps
        self.passes = PassCount()
        self._seen: dict[str, int] = {}  # branch -> calls so far

    def __enter__(self) -> Self:
        if self.threshold is not None:
            from diffusers.hooks import FirstBlockCacheConfig  # diffusers: only on the path that uses it (slow to import)

            _register_blocks(self.transformer)
            self.transformer.enable_cache(FirstBlockCacheConfig(threshold=self.threshold))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.threshold is not None and self.transformer.is_cache_enabled:
            self.transformer.disable_cache()  # the hooks and every branch's state go with it

    def call(self, branch: str, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run one prediction of ``branch`` under its own cache state, and count it."""
        i = self._seen.get(branch, 0)
        self._seen[branch] = i + 1
        if self.threshold is None:
            out = fn()
            self.passes.add(branch, True)
            return out
        if i >= self.steps - 1:
            # The last step runs every block (as TeaCache does): an empty state has nothing to reuse. The
            # branches' last calls come in one step, so the states dropped here are never read again.
            HookRegistry.check_if_exists_or_initialize(self.transformer).reset_stateful_hooks()
        with self.transformer.cache_context(branch):
            out = fn()
            self.passes.add(branch, bool(_head_state(self.transformer).get_state().should_compute))
        return out
