"""Training's block streamer extends generation's through its public extension points only."""

from __future__ import annotations

import ast
from pathlib import Path

import torch
from torch import nn

from framepack_history.memory.streaming import BlockStreamer, Residency

SOURCE = Path(__file__).resolve().parents[2] / "framepack_history" / "training" / "streaming.py"


def test_training_streamer_reads_no_private_name_of_block_streamer() -> None:
    tree = ast.parse(SOURCE.read_text())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrainingStreamer"]
    own = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    private = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
               and n.value.id == "self" and n.attr.startswith("_") and not n.attr.startswith("__")}
    assert private <= own, f"private names of BlockStreamer read by training: {sorted(private - own)}"


class _Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.transformer_blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.transformer_blocks:
            x = b(x)
        return self.proj(x)


def test_overridden_hooks_are_the_ones_registered_and_move_blocks_through_the_public_methods() -> None:
    seen: list[tuple[str, int]] = []

    class Logged(BlockStreamer):
        def pre_hook(self, pos: int):
            inner = super().pre_hook(pos)

            def hook(module, args):
                seen.append(("pre", pos))
                inner(module, args)
            return hook

        def post_hook(self, pos: int):
            def hook(module, args, output):
                seen.append(("post", pos))
                self.mark_done(pos)
                self.drop(self.group_at(pos))
            return hook

    torch.manual_seed(0)
    model = _Blocks()
    ref = model(torch.ones(1, 4))
    residency = Residency("cpu")
    streamer = Logged(model, (), residency)
    assert not any(streamer.group_at(p).on_device for p in range(3))
    assert torch.equal(model(torch.ones(1, 4)), ref)
    assert seen == [(k, p) for p in range(3) for k in ("pre", "post")]
    # each block copied once, then block 0 again: prefetched after the last one for the next call, kept till released
    assert streamer.copied_bytes == sum(streamer.group_at(p).nbytes() for p in (0, 1, 2, 0))
    assert [streamer.group_at(p).on_device for p in range(3)] == [True, False, False]
    streamer.release()
    assert not any(streamer.group_at(p).on_device for p in range(3))
