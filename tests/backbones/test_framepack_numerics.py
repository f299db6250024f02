"""FramePack's own arithmetic on ``hunyuan_framepack`` (lllyasviel/FramePack, ``demo_gradio_f1.py``):
the output projection in float32 beside a bfloat16 DiT, the timestep rounded to the DiT's dtype,
and float16 VAE and text/image encoders where the device has float16 kernels.

diffusers' ``HunyuanVideoFramepackPipeline`` (the bit-exact reference of ``test_f1_parity.py``)
does neither of the first two; ``numerics="diffusers"`` selects its arithmetic.
"""

from __future__ import annotations

import pytest
import torch

from framepack_history.backbones.base import Conditioning, Context
from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone
from framepack_history.backbones.precision import component_dtype
from framepack_history.config.presets import load_preset
from framepack_history.generation.loading import load_backbone
from tests.backbones.tiny_framepack import save_hub_layout
from tests.conftest import TINY_HUNYUAN

SIGMA = 0.7137  # sigma * 1000 = 713.7: bfloat16 holds 712 (steps of 4 between 512 and 1024)


@pytest.fixture(scope="module")
def bf16() -> HunyuanFramepackBackbone:
    return HunyuanFramepackBackbone.tiny(seed=1, dtype=torch.bfloat16)


def _inputs(bb: HunyuanFramepackBackbone) -> tuple[torch.Tensor, Conditioning, Context]:
    g = torch.Generator().manual_seed(0)
    cond = bb.encode_text("a red fox")
    image = torch.rand(3, 32, 32, generator=g) * 2 - 1
    cond.tensors.update(bb.encode_image(image).tensors)
    noisy = torch.randn(1, 16, 2, 4, 4, generator=g)
    recent = torch.randn(1, 16, 3, 4, 4, generator=g)
    return noisy, cond, Context(recent_latents=recent)


def _calls(bb: HunyuanFramepackBackbone, noisy, cond, ctx, sigma: float = SIGMA) -> tuple[list[dict], torch.Tensor]:
    """The DiT's keyword arguments for one prediction, and the prediction."""
    calls: list[dict] = []

    def hook(module, args, kwargs):
        calls.append(dict(kwargs))

    handle = bb.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            out = bb.predict(noisy, torch.tensor([sigma]), cond, ctx, 10.0)
    finally:
        handle.remove()
    return calls, out


def test_framepack_numerics_are_the_default() -> None:
    preset = load_preset(TINY_HUNYUAN)
    for bb in (HunyuanFramepackBackbone.tiny(), load_backbone(preset.model, "cpu", "bfloat16")):
        assert bb.numerics == "framepack" and bb.transformer.fp32_output and bb.noise_per_video
    bb.numerics = "diffusers"
    assert not bb.transformer.fp32_output
    with pytest.raises(ValueError, match="numerics must be one of"):
        bb.numerics = "comfy"


def test_timestep_is_rounded_to_the_dit_dtype_as_framepack(bf16) -> None:
    """FramePack's fm_wrapper: ``timestep = (sigma.float() * 1000).to(dtype)``; diffusers' pipeline passes float32."""
    noisy, cond, ctx = _inputs(bf16)
    framepack_t = (torch.tensor([SIGMA]).float() * 1000.0).to(torch.bfloat16)
    assert framepack_t.item() == 712.0
    calls, _ = _calls(bf16, noisy, cond, ctx)
    t = calls[0]["timestep"]
    assert t.dtype == torch.bfloat16 and torch.equal(t, framepack_t)
    try:
        bf16.numerics = "diffusers"
        calls, _ = _calls(bf16, noisy, cond, ctx)
    finally:
        bf16.numerics = "framepack"
    t = calls[0]["timestep"]
    assert t.dtype == torch.float32 and t.item() == pytest.approx(713.7, abs=1e-3)


def test_output_projection_runs_in_float32_with_bf16_weights(bf16) -> None:
    """norm_out in bfloat16, then FramePack's float32 ``proj_out`` (its weights cast up) and its unpatchify."""
    tr = bf16.transformer
    assert tr.proj_out.weight.dtype == torch.bfloat16  # stored as loaded: only the arithmetic is float32
    noisy, cond, ctx = _inputs(bf16)
    normed: list[torch.Tensor] = []
    handle = tr.norm_out.register_forward_hook(lambda m, a, out: normed.append(out))
    try:
        _, out = _calls(bf16, noisy, cond, ctx)
    finally:
        handle.remove()
    h = normed[0]
    assert h.dtype == torch.bfloat16
    # FramePack: hidden_states.to(float32); proj_out.to(float32); rearrange 'b (t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)'
    proj = torch.nn.Linear(tr.proj_out.in_features, tr.proj_out.out_features).to(torch.float32)
    proj.load_state_dict({k: v.float() for k, v in tr.proj_out.state_dict().items()})
    with torch.no_grad():
        x = proj(h.float())
    b, (t, hh, ww), p = 1, noisy.shape[2:], tr.config.patch_size
    ref = x.reshape(b, t, hh // p, ww // p, -1, 1, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, -1, t, hh, ww)
    assert out.dtype == torch.float32
    assert torch.equal(out, ref)
    # diffusers' arithmetic keeps the head in bfloat16: a different (coarser) prediction
    try:
        bf16.numerics = "diffusers"
        _, coarse = _calls(bf16, noisy, cond, ctx)
    finally:
        bf16.numerics = "framepack"
    assert not torch.equal(coarse.float(), out)
    assert torch.equal(coarse.float(), coarse.float().bfloat16().float())  # bfloat16 values only


def test_in_float32_both_numerics_are_the_same() -> None:
    """The DiT call: the float32 parity with diffusers (test_f1_parity.py) holds for the default numerics' DiT too."""
    bb = HunyuanFramepackBackbone.tiny(seed=2)
    noisy, cond, ctx = _inputs(bb)
    calls, ours = _calls(bb, noisy, cond, ctx)
    bb.numerics = "diffusers"
    theirs_calls, theirs = _calls(bb, noisy, cond, ctx)
    assert torch.equal(ours, theirs) and torch.equal(calls[0]["timestep"], theirs_calls[0]["timestep"])


@pytest.mark.parametrize(("device", "dit", "parts"), [
    ("cuda", torch.bfloat16, torch.float16),  # FramePack's demo: float16 VAE, LLaMA, CLIP, SigLIP; bfloat16 DiT
    ("cuda:1", torch.bfloat16, torch.float16),
    ("mps", torch.bfloat16, torch.float16),
    ("cuda", torch.float16, torch.float16),
    ("cuda", torch.float32, torch.float32),  # a float32 DiT keeps everything in float32 (reference runs)
    ("cpu", torch.bfloat16, torch.bfloat16),  # no fast float16 convolutions and matmuls on the CPU
    ("cpu", torch.float32, torch.float32),
])
def test_component_dtype_per_device(device, dit, parts) -> None:
    assert component_dtype(device, dit) == parts


def test_load_backbone_gives_the_components_the_devices_dtype() -> None:
    bb = load_backbone(load_preset(TINY_HUNYUAN).model, "cpu", "bfloat16")
    assert bb.component_dtype == component_dtype("cpu", torch.bfloat16) == torch.bfloat16
    assert bb.transformer.dtype == bb.vae.dtype == torch.bfloat16


def test_float16_components_beside_a_bf16_dit(tmp_path) -> None:
    """What CUDA loads (``from_pretrained`` with the component dtype): DiT bfloat16, the rest float16;
    the conditioning reaches the DiT in its dtype, as FramePack's ``.to(transformer.dtype)``."""
    save_hub_layout(HunyuanFramepackBackbone.tiny(seed=3), tmp_path, "f1")
    bb = HunyuanFramepackBackbone.from_pretrained(
        str(tmp_path / "f1"), str(tmp_path / "base"), str(tmp_path / "redux"), dtype=torch.bfloat16,
        component_dtype=torch.float16, local_files_only=True)
    assert bb.transformer.dtype == torch.bfloat16 and bb.numerics == "framepack"
    for module in (bb.vae, bb.text_encoder, bb.text_encoder_2, bb.image_encoder):
        assert {p.dtype for p in module.parameters()} == {torch.float16}, type(module).__name__
    text = bb.encode_text("a red fox").tensors
    image = bb.encode_image(torch.zeros(3, 32, 32)).tensors
    assert text["prompt_embeds"].dtype == text["pooled_prompt_embeds"].dtype == torch.bfloat16
    assert image["image_embeds"].dtype == torch.bfloat16 and image["start_latents"].dtype == torch.float32


def test_siglip_sees_the_8_bit_frame_as_framepack(bf16) -> None:
    """FramePack's hf_clip_vision_encode: the uint8 frame through the processor's own resize and rescale
    (``test_f1_parity.py`` checks diffusers' float path, ``numerics="diffusers"``, against its pipeline)."""
    import numpy as np

    from framepack_history.generation.pipeline import to_pixels

    frame = (np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)
    ours = bf16.encode_image(to_pixels(frame[None])[0, :, 0]).tensors["image_embeds"]
    pre = bf16.feature_extractor.preprocess(images=frame, return_tensors="pt").to(dtype=bf16.image_encoder.dtype)
    with torch.no_grad():
        ref = bf16.image_encoder(**pre).last_hidden_state.to(bf16.dtype)
    assert torch.equal(ours, ref)
    try:  # diffusers' pipeline hands the processor the float frame instead: resized as floats, a different embedding
        bf16.numerics = "diffusers"
        theirs = bf16.encode_image(to_pixels(frame[None])[0, :, 0]).tensors["image_embeds"]
    finally:
        bf16.numerics = "framepack"
    assert not torch.equal(theirs, ours)
