"""The toy DiT's rotary values (``rope_values``): values turned by the relative offset, nothing absolute."""

from __future__ import annotations

import pytest
import torch

from framepack_history.backbones.toy import ToyDiT, _Block, rope_tables

DIMS = (4, 6, 6)  # head dim 16: two heads of a 32-wide block


def _block(rope_values: bool) -> _Block:
    torch.manual_seed(0)
    block = _Block(32, 2, rope_values).eval()
    torch.nn.init.normal_(block.mod.weight, std=0.2)  # adaLN-zero starts closed: open the gates
    return block


def _run(block: _Block, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    cos, sin = rope_tables(pos, DIMS, 100.0)
    c = torch.linspace(-1, 1, 32)[None]
    with torch.no_grad():
        return block(x, c, cos, sin)


@pytest.mark.parametrize("rope_values", [False, True])
def test_two_copies_of_a_token_read_their_offset_only_with_rotary_values(rope_values: bool) -> None:
    """Two tokens with the same content: plain RoPE mixes two equal values, whatever their offset;
    rotary values arrive turned by it, so a query can tell where it sits relative to what it reads."""
    block = _block(rope_values)
    x = torch.randn(1, 1, 32).expand(1, 2, 32).contiguous()
    outs = [_run(block, x, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, d]]))[0, 1] for d in (0.5, 1.5)]
    moved = (outs[0] - outs[1]).abs().max().item()
    if rope_values:
        assert moved > 1e-2
    else:
        assert moved < 1e-5


def test_rotary_values_are_translation_invariant() -> None:
    """Shifting every position by the same amount changes nothing: only offsets matter."""
    block = _block(True)
    x = torch.randn(1, 5, 32)
    pos = torch.rand(5, 3) * 4
    a = _run(block, x, pos)
    b = _run(block, x, pos + torch.tensor([2.0, -3.0, 7.5]))
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, _run(block, x, pos * 2), atol=1e-3)  # offsets do matter


def test_the_flag_is_part_of_the_dits_config_and_off_by_default() -> None:
    assert ToyDiT().config.rope_values is False
    dit = ToyDiT(rope_values=True)
    assert all(block.rope_values for block in dit.blocks)
