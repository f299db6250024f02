"""Frozen DiT blocks streamed from host memory through a training step (``stream_blocks = true``).

Generation's :class:`~framepack_history.memory.streaming.BlockStreamer` moves each
block's frozen weights to the device before its forward and drops them after.
Training runs every block twice: in the forward, and again in the backward, where
gradient checkpointing recomputes each block just before its gradients are taken
(last block first). This subclass follows both directions:

* forward: copy block *i* in (prefetching *i + 1*), drop it after its forward. The
  checkpointed forward keeps no tensors for backward, so nothing still points at
  the device copy;
* recompute: copy block *i* in (prefetching *i - 1*) and keep it until the
  recompute of block *i - 1* starts. The recomputed forward's saved tensors include
  the frozen weights themselves (checkpointing stores tensors that need no gradient
  as they are, so swapping the parameter's data would change what backward reads);
  they are consumed by block *i*'s backward, which autograd finishes before it asks
  for block *i - 1*'s saved tensors (its nodes come later in the graph, and the
  engine runs later nodes first). So a block is dropped only once no saved tensor
  needs it, and at most two blocks' weights are on the device at once;
* after the backward, :meth:`TrainingStreamer.release` drops the first block.

LoRA adapters (``lora_`` names) and the encoder never move: the weight groups take
base weights only. Checkpointing is what makes this work; without it autograd would
keep every block's weights for the backward, so the config refuses streaming then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from framepack_history.backbones.base import transformer_blocks
from framepack_history.errors import InputError
from framepack_history.lora.adapters import is_adapter
from framepack_history.memory.streaming import BlockStreamer, Residency


class TrainingStreamer(BlockStreamer):
    """Streams every DiT block (none resident) through forward and recompute; the stem stays on the device."""

    def __init__(self, transformer: nn.Module, residency: Residency, use_stream: bool | None = None) -> None:
        self.recomputing = False  # set while checkpointing recomputes a block (the backward, last block first)
        super().__init__(transformer, (), residency, use_stream=use_stream, name="transformer")

    # ------------------------------------------------------------ checkpointing
    @contextmanager
    def _recompute(self) -> Iterator[None]:
        self.recomputing = True
        try:
            yield
        finally:
            self.recomputing = False

    def checkpoint(self, module: nn.Module, *args: Any) -> Any:
        """The DiT's gradient-checkpointing function: diffusers' default, with the recompute flagged."""
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False,
                                                 context_fn=lambda: (nullcontext(), self._recompute()))

    # -------------------------------------------------------------------- hooks
    def pre_hook(self, pos: int) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:
            n = len(self.order)
            if self.recomputing:
                ahead = pos - 1 if pos > 0 else None
            else:
                self.wait_done(pos - 1)  # the block before this one is done: its memory is free to reuse
                ahead = pos + 1 if pos + 1 < n else None
            # Whatever else is on the device is done with: in the recompute, the blocks after this one have
            # finished their backward (and a second call's graph, run later, has been gone through first).
            dropped = False
            for i in range(n):
                if i != pos and i != ahead and self.group_at(i).on_device:
                    self.drop(self.group_at(i))
                    dropped = True
            if dropped and self.recomputing and self.stream is not None:
                torch.cuda.current_stream().synchronize()  # their memory is free before the next copy
            group = self.group_at(pos)
            self.fetch(group)  # no-op when the previous block prefetched it
            group.wait()
            if ahead is not None and self.prefetch:
                self.fetch(self.group_at(ahead))
            if self.residency.verify:
                self.residency.sample(f"{'recompute' if self.recomputing else 'pre'} {group.name}")
        return hook

    def post_hook(self, pos: int) -> Callable[[nn.Module, tuple, object], None]:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if self.recomputing:  # its saved tensors hold the weights until its backward: dropped later
                return
            self.mark_done(pos)
            self.drop(self.group_at(pos))
        return hook

    # ------------------------------------------------------------------- phases
    def frozen_names(self, prefix: str = "") -> list[str]:
        """Qualified names of the streamed tensors (DDP must neither broadcast nor check their device)."""
        ids = {id(t) for i in self.order for t in self.groups[i].tensors}
        named = list(self.transformer.named_parameters()) + list(self.transformer.named_buffers())
        return [prefix + n for n, t in named if id(t) in ids]

    def finish(self) -> None:
        """Hooks off, every weight on the host (export merges the LoRA there, never the whole DiT on the device)."""
        self.release()
        self.remove_hooks()
        self.stem.offload()
        for n, m in self.transformer.named_modules():
            if "lora_" in n:
                m.to("cpu")


def stream_blocks(transformer: nn.Module, device: torch.device | str) -> TrainingStreamer:
    """Stream ``transformer``'s blocks through ``device`` and checkpoint them with the streamer's function."""
    inside = {id(t) for b in transformer_blocks(transformer) for t in b.parameters()}
    trained = [n for n, t in transformer.named_parameters() if id(t) in inside and t.requires_grad and not is_adapter(n)]
    if trained:  # a streamed weight's gradient would land on a host copy that the next onload overwrites
        raise InputError("stream_blocks", f"streams frozen weights only, but {trained[0]!r} (and {len(trained) - 1} "
                                          "more) inside the DiT's blocks train; train LoRA adapters there")
    streamer = TrainingStreamer(transformer, Residency(device))
    transformer.enable_gradient_checkpointing(streamer.checkpoint)
    return streamer
