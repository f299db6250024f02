"""How the DiT's weights are stored (the compute dtype, or float8 with compute in the compute dtype),
and the dtype of the models beside it (``component_dtype``).

float8 storage (diffusers' layerwise casting: each ``Linear``/``Conv`` keeps its
weight in float8 and casts it to the compute dtype for its own forward only)
halves the bytes of every block. On a 12 GB card that matters twice: more
blocks stay resident, and each streamed block copies half the bytes per step.
Only the repeated blocks are cast, every ``Linear`` in them, the adaLN
modulation included (diffusers' default skips it with the norms, but it is a
third of a double block's bytes); the stem (embedders, refiner, output head,
always resident and small) and any LoRA layers keep the compute dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from framepack_history.backbones.base import transformer_blocks
from framepack_history.device import WEIGHT_STORAGE

__all__ = ["FLOAT8", "WEIGHT_STORAGE", "component_dtype", "storage_dtype", "store_weights"]

FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2)
#: device types whose float16 kernels are the fast, complete ones (convolutions and attention included)
FLOAT16_DEVICES = ("cuda", "mps")


def component_dtype(device: torch.device | str, dit_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the VAE and the text and image encoders beside a DiT computing in ``dit_dtype``.

    FramePack's demo runs LLaMA, CLIP, SigLIP and the VAE in float16 and only the DiT
    in bfloat16; on CUDA (and MPS) so do we, whenever the DiT computes in 16 bits.
    On the CPU they keep the DiT's dtype: float16 matrix and convolution kernels there
    are slow or missing, where bfloat16 ones are not. A float32 DiT (the tests'
    reference runs) keeps everything in float32.
    """
    if torch.device(device).type in FLOAT16_DEVICES and dit_dtype in (torch.bfloat16, torch.float16):
        return torch.float16
    return dit_dtype


def storage_dtype(name: str) -> torch.dtype | None:
    """The float8 dtype called ``name``; None for "" (weights stay in the compute dtype)."""
    if name not in WEIGHT_STORAGE:
        raise ValueError(f"weights_dtype must be one of {', '.join(repr(n) for n in WEIGHT_STORAGE)} (got {name!r})")
    return getattr(torch, name) if name else None


def store_weights(dit: nn.Module, name: str, compute: torch.dtype) -> bool:
    """Store ``dit``'s block weights as ``name`` (float8) and compute in ``compute``; False when ``name`` is "".

    Works on a ``meta``-built DiT too: its parameters become float8 ``meta``
    tensors, which the planner counts and ``streaming.load_safetensors`` fills
    in float8 (so the full-precision model never exists on the device).
    """
    dtype = storage_dtype(name)
    if dtype is None:
        return False
    if compute in FLOAT8 or compute == torch.float32 and dtype == torch.float8_e5m2:
        raise ValueError(f"cannot compute in {compute} with {name} weights")
    from diffusers.hooks import apply_layerwise_casting  # diffusers: only on the path that uses it (slow to import)

    for block in transformer_blocks(dit):
        apply_layerwise_casting(block, dtype, compute, skip_modules_pattern=("lora_",))
    return True
