"""Step caching: skip most of the DiT on denoising steps where its input has barely changed.

diffusers' First Block Cache (``FirstBlockCacheConfig``, TeaCache's idea made
generic): every step runs the first transformer block; when its residual moved
less than ``threshold`` (mean absolute change relative to the last computed
step's) the other blocks are skipped and their cached residual is added
instead. It needs no per-model calibration (MagCache does: magnitude ratios
measured on the real weights, which this project cannot run), and its hooks sit
on the blocks, so the memory manager's block streaming and strict checks run
around them.

The change is measured over the **noisy section's tokens only**. diffusers
measures it over the block's whole sequence, and ours also carries clean
context and history tokens (up to 23,920 of them beside 14,040 noisy ones at
480x832) that barely move between steps: the same threshold would skip more
steps the longer the history grew. Here the head block's decision is our own
(:class:`_NoisyHeadHook`, diffusers' head hook with the residual cut to the
last :meth:`noisy_tokens` tokens, where both DiTs put the noisy section); what
is cached and added back is diffusers' as ever.

A skipped step moves no streamed block: while the cache skips the rest of a
call, the DiT's ``skip_blocks`` flag is set and the block streamer
(``memory.streaming``) neither copies nor drops the blocks it would have run.

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
from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, ModelHook
from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK, FBCHeadBlockHook
from torch import nn

from framepack_history.config.presets import CACHE_SETTINGS  # noqa: F401  (the settings; re-exported)
from framepack_history.memory.streaming import SKIP_BLOCKS

CALL_HOOK = "framepack_history.step_cache_call"

#: First Block Cache thresholds per backbone (the README's Speed table says how they were chosen). Each is a
#: bound on the relative mean absolute change of the first block's residual over the noisy section's tokens
#: since the last computed step. toy: measured with ``benchmarks/step_cache.py`` on 8 held-out worlds (its
#: 8 Euler steps move that residual by 0.18-0.43 per step, so nothing below about 0.2 skips): 0.5 halves the
#: full passes, 0.7 keeps 3 of 8 (the same passes as when the whole sequence was measured; the skipped steps
#: differ a little). hunyuan_framepack: ParaAttention's default for HunyuanVideo, FramePack's base model
#: (0.06: 1.62x faster, "nearly zero quality loss"), and 0.1 for more. HunyuanVideo's image tokens are all
#: noisy, so its 0.06 bounds the same quantity as ours now does, but over 50 steps of plain HunyuanVideo, not
#: 25 UniPC steps of FramePack-F1 (larger steps move it more: likely fewer skips). Not measured on F1 here.
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
    for module in transformer.modules():
        cls = type(module)
        if getattr(cls, "_step_cache_block", False):
            try:
                TransformerBlockRegistry.get(cls)
            except ValueError:
                TransformerBlockRegistry.register(cls, TransformerBlockMetadata(return_hidden_states_index=0))


def _num_blocks(transformer: nn.Module) -> int:
    """Blocks in the ``ModuleList`` children diffusers' cache hooks look for (``blocks``, ``transformer_blocks``, ...)."""
    return sum(len(m) for name, m in transformer.named_children()
               if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(m, nn.ModuleList))


class _CallStart(ModelHook):
    """On the DiT: at each call, how many noisy tokens it has, and that no block is skipped yet.

    ``skip_blocks`` is cleared before the first block's streaming hook runs (the
    first block always computes) and again after the call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.noisy: int | None = None  # None: the whole sequence (a DiT that does not say)

    def pre_forward(self, module: nn.Module, *args: object, **kwargs: object) -> tuple[tuple, dict]:
        latents = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        count = getattr(module, "noisy_tokens", None)
        self.noisy = None if count is None else int(count(tuple(latents.shape)))
        setattr(module, SKIP_BLOCKS, False)
        return args, kwargs

    def post_forward(self, module: nn.Module, output: object) -> object:
        setattr(module, SKIP_BLOCKS, False)
        return output


class _NoisyHeadHook(FBCHeadBlockHook):
    """diffusers' First Block Cache head hook, deciding from the noisy section's tokens alone.

    The residual's last ``call.noisy`` tokens are the noisy section's in both
    DiTs (context and history tokens are prepended); the relative mean absolute
    change is diffusers' formula on them. After deciding, it tells the block
    streamer through the DiT's ``skip_blocks`` whether the remaining blocks run.
    """

    def __init__(self, state_manager: object, threshold: float, call: _CallStart, transformer: nn.Module) -> None:
        super().__init__(state_manager, threshold)
        self.call, self.transformer = call, transformer
        self.change: float | None = None  # the last call's measured change (None: nothing to compare with)

    def new_forward(self, module: nn.Module, *args: object, **kwargs: object) -> object:
        out = super().new_forward(module, *args, **kwargs)
        setattr(self.transformer, SKIP_BLOCKS, not self.state_manager.get_state().should_compute)
        return out

    @torch.compiler.disable
    def _should_compute_remaining_blocks(self, hidden_states_residual: torch.Tensor) -> bool:
        prev = self.state_manager.get_state().head_block_residual
        self.change = None
        if prev is None or prev.shape != hidden_states_residual.shape:
            return True
        now, n = hidden_states_residual, self.call.noisy
        if n is not None and 0 < n <= now.shape[1]:
            now, prev = now[:, -n:], prev[:, -n:]
        self.change = ((now - prev).abs().mean() / prev.abs().mean()).item()
        return self.change > self.threshold


def _replace_head_hook(transformer: nn.Module, call: _CallStart) -> _NoisyHeadHook:
    """Swap diffusers' head hook (just registered, so the outermost on its block) for :class:`_NoisyHeadHook`."""
    for module in transformer.modules():
        reg = getattr(module, "_diffusers_hook", None)
        hook = None if reg is None else reg.get_hook(_FBC_LEADER_BLOCK_HOOK)
        if hook is None:
            continue
        if reg._hook_order[-1] != _FBC_LEADER_BLOCK_HOOK:  # diffusers rewires only the last hook cleanly
            raise RuntimeError("First Block Cache's head hook is not the last hook on its block")
        reg.remove_hook(_FBC_LEADER_BLOCK_HOOK, recurse=False)
        head = _NoisyHeadHook(hook.state_manager, hook.threshold, call, transformer)
        reg.register_hook(head, _FBC_LEADER_BLOCK_HOOK)
        return head
    raise RuntimeError("First Block Cache is not enabled on this transformer")


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
    its branch name. ``passes`` counts the calls and those that ran every block;
    ``changes`` holds, per branch, each call's measured change of the noisy
    tokens' first-block residual (None where nothing was compared: the first
    and last steps), the number the threshold is held against.
    """

    def __init__(self, transformer: nn.Module, threshold: float | None, steps: int) -> None:
        if threshold is not None and _num_blocks(transformer) < 2:
            threshold = None  # First Block Cache needs a first block and others to skip
        self.transformer, self.threshold, self.steps = transformer, threshold, steps
        self.passes = PassCount()
        self.changes: dict[str, list[float | None]] = {}
        self._seen: dict[str, int] = {}  # branch -> calls so far
        self._head: _NoisyHeadHook | None = None

    def __enter__(self) -> Self:
        if self.threshold is not None:
            _register_blocks(self.transformer)
            self.transformer.enable_cache(FirstBlockCacheConfig(threshold=self.threshold))
            call = _CallStart()
            HookRegistry.check_if_exists_or_initialize(self.transformer).register_hook(call, CALL_HOOK)
            self._head = _replace_head_hook(self.transformer, call)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.threshold is not None and self.transformer.is_cache_enabled:
            self.transformer.disable_cache()  # the hooks and every branch's state go with it
            HookRegistry.check_if_exists_or_initialize(self.transformer).remove_hook(CALL_HOOK, recurse=False)
            setattr(self.transformer, SKIP_BLOCKS, False)

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
            self.passes.add(branch, bool(self._head.state_manager.get_state().should_compute))
            self.changes.setdefault(branch, []).append(self._head.change)
        return out
