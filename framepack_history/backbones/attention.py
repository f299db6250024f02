"""Which attention kernel the DiT runs: the fastest one installed, SDPA otherwise.

FramePack prefers SageAttention, then flash-attn, then xformers, then
PyTorch's SDPA; so does :func:`choose_backend`. The kernels are diffusers'
attention-dispatcher backends (``diffusers.models.attention_dispatch``), set
*per attention processor* of one model (:func:`apply_backend`), never through
diffusers' process-wide active backend (``set_attention_backend`` and the
``attention_backend`` context both change it for every thread), because the
page plans while the worker denoises.

flash-attn and SageAttention take no mask; the DiT gives one only when a batch
of several samples has text of different lengths. Such calls go to the same
kernel's varlen form (``flash_varlen``, ``sage_varlen``), which unpads by the mask.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["AUTO", "KERNELS", "apply_backend", "backend_of", "choose_backend", "installed_kernels", "masked_form"]

AUTO = "auto"
# FramePack's order of preference; each needs CUDA and half precision (xformers also takes float32).
KERNELS = ("sage", "flash", "xformers")
NATIVE = "native"  # torch's scaled_dot_product_attention: whatever kernel SDPA picks
_HALF = (torch.float16, torch.bfloat16)
_MASKED = {"sage": "sage_varlen", "flash": "flash_varlen", "_native_flash": "native"}


def installed_kernels() -> dict[str, bool]:
    """Which optional kernels diffusers found importable at a version it supports (no import errors printed)."""
    from diffusers.models import attention_dispatch as ad  # diffusers: only on the path that uses it (slow to import)

    return {"sage": ad._CAN_USE_SAGE_ATTN, "flash": ad._CAN_USE_FLASH_ATTN, "xformers": ad._CAN_USE_XFORMERS_ATTN}


def choose_backend(device: torch.device | str, dtype: torch.dtype, requested: str = AUTO,
                   installed: Mapping[str, bool] | None = None) -> str:
    """The attention backend for a model on ``device`` in ``dtype``.

    ``requested`` is ``"auto"`` (the fastest usable kernel, else ``native``) or a
    diffusers backend name. ``installed`` maps kernel names to availability
    (default: :func:`installed_kernels`); tests hand in a made-up one.
    A requested kernel that cannot run raises ``ValueError`` saying why.
    """
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,  # diffusers: only on the path that uses it (slow to import)
    )

    installed = installed_kernels() if installed is None else installed
    cuda = torch.device(device).type == "cuda"

    def usable(name: str) -> str | None:  # None, or why not
        if not installed.get(name, False):
            return "is not installed"
        if not cuda:
            return "needs a CUDA device"
        if name != "xformers" and dtype not in _HALF:
            return "needs float16 or bfloat16 weights"
        return None

    if requested == AUTO:
        return next((k for k in KERNELS if usable(k) is None), NATIVE)
    names = {b.value for b in AttentionBackendName}
    if requested not in names:
        raise ValueError(f"unknown attention backend {requested!r} (auto, {', '.join(KERNELS)}, native, …)")
    base = requested.split("_varlen")[0]
    if base in KERNELS and (why := usable(base)) is not None:
        have = [k for k in KERNELS if installed.get(k, False)]
        raise ValueError(f"attention backend {requested!r} {why} (installed: {', '.join(have) or 'none'}; "
                         f"'auto' picks the fastest usable one)")
    return requested


def masked_form(backend: str) -> str:
    """The backend that takes a key mask for the same kernel (flash -> flash_varlen, sage -> sage_varlen)."""
    return _MASKED.get(backend, backend)


def apply_backend(model: torch.nn.Module, backend: str) -> None:
    """Run every attention of ``model``'s DiT blocks through ``backend`` (only this model, any thread).

    The model class says how (its ``set_backend``): the FramePack DiT swaps in a
    per-processor choice, the toy DiT hands the name to its blocks.
    """
    model.set_backend(backend)
    model._attention_backend_name = backend


def backend_of(model: torch.nn.Module) -> str:
    """The backend :func:`apply_backend` set (``native`` when none was)."""
    return getattr(model, "_attention_backend_name", NATIVE)
