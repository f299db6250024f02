"""Attention kernels: the choice (from a made-up list of installed packages) and each usable one vs SDPA."""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry, dispatch_attention_fn

from framepack_history.backbones.attention import apply_backend, backend_of, choose_backend, installed_kernels
from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone
from framepack_history.backbones.toy import ToyDiT

ALL = {"sage": True, "flash": True, "xformers": True}
NONE = {"sage": False, "flash": False, "xformers": False}


@pytest.mark.parametrize("installed, device, dtype, want", [
    (ALL, "cuda", torch.bfloat16, "sage"),  # FramePack's order: sage > flash > xformers > SDPA
    ({**ALL, "sage": False}, "cuda", torch.bfloat16, "flash"),
    ({**NONE, "xformers": True}, "cuda", torch.bfloat16, "xformers"),
    (NONE, "cuda", torch.bfloat16, "native"),
    (ALL, "cpu", torch.bfloat16, "native"),  # every kernel needs CUDA
    (ALL, "cuda", torch.float32, "xformers"),  # flash and sage need half precision
    ({**NONE, "flash": True}, "cuda", torch.float32, "native"),
])
def test_auto_picks_the_fastest_usable_kernel(installed, device, dtype, want) -> None:
    assert choose_backend(device, dtype, "auto", installed) == want


def test_requested_backend_is_checked() -> None:
    assert choose_backend("cuda", torch.bfloat16, "flash", ALL) == "flash"
    assert choose_backend("cpu", torch.float32, "_native_math", NONE) == "_native_math"
    with pytest.raises(ValueError, match="'sage' is not installed.*installed: flash"):
        choose_backend("cuda", torch.bfloat16, "sage", {**NONE, "flash": True})
    with pytest.raises(ValueError, match="needs a CUDA device"):
        choose_backend("cpu", torch.bfloat16, "flash", ALL)
    with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
        choose_backend("cuda", torch.bfloat16, "fast", ALL)


def test_detection_reads_diffusers_flags_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = installed_kernels()
    assert set(found) == {"sage", "flash", "xformers"} and all(isinstance(v, bool) for v in found.values())


def usable_here() -> list[str]:
    """Backends that run on this machine (CPU here): probed with and without a key mask."""
    q = torch.randn(2, 6, 2, 16)
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False
    names = ["native", "_native_math", "_native_flash", "_native_efficient", "flex", "_native_cudnn",
             *(k for k, ok in installed_kernels().items() if ok)]
    ok = []
    for name in names:
        try:
            dispatch_attention_fn(q, q, q, backend=AttentionBackendName(name))
        except (RuntimeError, ValueError):
            continue
        ok.append(name)
    return ok


BACKENDS = usable_here()


def test_some_backends_besides_native_run_here() -> None:
    assert {"native", "_native_math", "_native_flash"} <= set(BACKENDS)


@pytest.fixture(scope="module")
def hunyuan() -> HunyuanFramepackBackbone:
    return HunyuanFramepackBackbone.tiny(seed=0)


def _hunyuan_inputs(bb: HunyuanFramepackBackbone, b: int) -> dict:
    g = torch.Generator().manual_seed(3)
    text = bb.encode_text("a red fox runs through snow").tensors
    rep = lambda x: x.expand(b, *x.shape[1:]).clone()
    mask = rep(text["prompt_attention_mask"])
    if b > 1:
        mask[1:, 5:] = 0  # a shorter prompt: the batched key mask
    return dict(
        hidden_states=torch.randn(b, 16, 2, 8, 8, generator=g), timestep=torch.full((b,), 700.0),
        encoder_hidden_states=rep(text["prompt_embeds"]), encoder_attention_mask=mask,
        pooled_projections=rep(text["pooled_prompt_embeds"]), guidance=torch.full((b,), 6000.0),
        latents_clean=torch.randn(b, 16, 2, 8, 8, generator=g), indices_latents_clean=torch.tensor([0.0, 1.0]),
        history_tokens=torch.randn(1, 5, 32, generator=g), history_positions=torch.rand(5, 3, generator=g) * 4 - 6,
        return_dict=False,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b", [1, 2])
def test_framepack_dit_with_history_tokens_matches_sdpa(hunyuan, backend: str, b: int) -> None:
    dit, inputs = hunyuan.transformer, _hunyuan_inputs(hunyuan, b)
    active = _AttentionBackendRegistry._active_backend
    with torch.no_grad():
        apply_backend(dit, "native")
        ref = dit(**inputs)[0]
        apply_backend(dit, backend)
        out = dit(**inputs)[0]
        apply_backend(dit, "native")
    assert backend_of(dit) == "native"
    assert _AttentionBackendRegistry._active_backend == active  # nothing process-wide changed
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert (out - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_toy_dit_with_history_tokens_matches_sdpa(backend: str) -> None:
    torch.manual_seed(0)
    dit = ToyDiT(in_channels=12, hidden_size=64, depth=2, heads=2, rope_dims=(8, 12, 12)).eval()
    for p in dit.parameters():  # adaLN-zero starts at identity: give the blocks something to do
        torch.nn.init.normal_(p, std=0.05)
    g = torch.Generator().manual_seed(1)
    args = (torch.randn(1, 12, 2, 8, 8, generator=g), torch.tensor([0.4]), torch.tensor([[2, 3, 4, 0]]),
            torch.tensor([[True, True, True, False]]))
    kw = dict(history_tokens=torch.randn(1, 6, 64, generator=g), history_positions=torch.rand(6, 3, generator=g),
              window_latents=torch.randn(1, 12, 1, 8, 8, generator=g), window_t0=-1.0)
    with torch.no_grad():
        ref = dit(*args, **kw)
        apply_backend(dit, backend)
        out = dit(*args, **kw)
    if backend == "native":
        assert torch.equal(out, ref)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
