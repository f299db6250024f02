"""The DiT's speed settings from a preset's ``hardware``: weight storage, attention kernel, compilation.

Applied once, right after loading and before a memory manager reads the
weights (float8 storage changes how many bytes each block has), and recorded
on the backbone (``backbone.speed``) for the sidecar.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from framepack_history.backbones.attention import apply_backend, choose_backend
from framepack_history.backbones.base import transformer_blocks
from framepack_history.backbones.precision import store_weights

__all__ = ["apply_speed", "compile_blocks"]


def compile_blocks(dit: nn.Module, backend: str = "inductor", **options: Any) -> int:
    """``torch.compile`` each repeated block's ``forward`` (regional compilation); returns how many.

    The blocks share one shape, so one compiled graph serves them all and the
    first section pays the compile once. Only ``forward`` is compiled, not the
    module call: the streamer's pre/post hooks (which swap weights between
    host and device) stay eager around it.
    """

    blocks = transformer_blocks(dit)
    for block in blocks:
        if not hasattr(block, "_eager_forward"):
            block._eager_forward = block.forward
        block.forward = torch.compile(block._eager_forward, backend=backend, **options)
    return len(blocks)


def apply_speed(backbone: Any, hardware: Any, compile_backend: str = "inductor") -> dict[str, Any]:
    """Weight storage, attention kernel and compilation of ``backbone.transformer`` as ``hardware`` says."""
    dit = backbone.transformer
    stored = store_weights(dit, hardware.weights_dtype, backbone.dtype)
    kernel = choose_backend(backbone.device, backbone.dtype, hardware.attention)
    apply_backend(dit, kernel)
    compiled = compile_blocks(dit, compile_backend) if hardware.compile else 0
    backbone.speed = {"attention": kernel, "weights_dtype": hardware.weights_dtype if stored else str(backbone.dtype).split(".")[-1],
                      "compiled_blocks": compiled}
    return backbone.speed
