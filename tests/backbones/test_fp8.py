"""float8 weight storage (hardware.weights_dtype) on the tiny HunyuanVideo-FramePack model.

Output against the same weights in full precision (the rounding error of
float8 is measured, not assumed), the planner's halved block bytes, and the
rtx4070-12gb plan shape in strict mode with float8 blocks streamed.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone
from framepack_history.backbones.precision import FLOAT8, store_weights
from framepack_history.config.presets import load_preset, preset_from_dict
from framepack_history.errors import InputError
from framepack_history.generation.loading import build_encoder
from framepack_history.generation.pipeline import Pipeline
from framepack_history.memory.components import meta_components
from framepack_history.memory.manager import MemoryManager
from framepack_history.memory.planner import plan
from tests.memory.test_memory_strict import SECONDS, TILES, _budget, _frames, _reference, hub  # noqa: F401  (hub: fixture)

FP8 = "float8_e4m3fn"


def _fp8(preset):
    return dataclasses.replace(preset, hardware=dataclasses.replace(preset.hardware, weights_dtype=FP8))


def test_preset_field_is_checked() -> None:
    data = load_preset("rtx4070-12gb").to_dict()
    data["hardware"]["weights_dtype"] = "int3"
    with pytest.raises(InputError, match="weights_dtype"):
        preset_from_dict(data)
    assert load_preset("rtx4070-12gb-fp8").hardware.weights_dtype == FP8


def test_float8_storage_stays_close_to_full_precision() -> None:
    bb = HunyuanFramepackBackbone.tiny(seed=0)
    text = bb.encode_text("a red fox").tensors
    g = torch.Generator().manual_seed(2)
    kw = dict(hidden_states=torch.randn(1, 16, 2, 8, 8, generator=g), timestep=torch.tensor([700.0]),
              encoder_hidden_states=text["prompt_embeds"], encoder_attention_mask=text["prompt_attention_mask"],
              pooled_projections=text["pooled_prompt_embeds"], guidance=torch.tensor([6000.0]),
              history_tokens=torch.randn(1, 5, 32, generator=g), history_positions=torch.rand(5, 3, generator=g),
              return_dict=False)
    dit = bb.transformer
    with torch.no_grad():
        ref = dit(**kw)[0]
        full = sum(p.numel() * p.element_size() for b in dit.transformer_blocks for p in b.parameters())
        assert store_weights(dit, FP8, torch.float32)
        stored = sum(p.numel() * p.element_size() for b in dit.transformer_blocks for p in b.parameters())
        out = dit(**kw)[0]
    assert {p.dtype for p in dit.transformer_blocks[0].ff.parameters()} == {torch.float8_e4m3fn}
    assert stored < full * 0.55  # float32 -> float8 is a quarter; the norms (float32) are half of a 32-wide block
    rel = ((out - ref).norm() / ref.norm()).item()
    # e4m3 keeps 3 mantissa bits: about 2-3 % relative weight error, about the same on the output
    assert 1e-4 < rel < 0.02, rel  # measured 0.35 % (float32 compute), 0.62 % in bfloat16


def test_planner_counts_half_the_block_bytes() -> None:
    bf16, fp8 = load_preset("rtx4070-12gb"), load_preset("rtx4070-12gb-fp8")
    a, b = meta_components(bf16).block_bytes(), meta_components(fp8).block_bytes()
    assert len(a) == len(b) == 60
    assert all(0.5 < y / x < 0.501 for x, y in zip(a, b))  # every Linear in float8; the norms stay bf16


def test_strict_streaming_with_float8_blocks(hub):  # noqa: F811
    """The tight rtx4070 shape with float8 blocks: strict residency holds, streamed copies are float8."""
    preset, paths = hub
    preset8 = _fp8(preset)
    budget = _budget(preset8)  # about half the float8 blocks fit
    p = plan(preset8, SECONDS, budget=budget, text_encoder_quantization="nf4")
    p.strategy.vae_tiling = True
    bb = HunyuanFramepackBackbone.from_pretrained(**paths, offload=True)
    assert store_weights(bb.transformer, FP8, bb.dtype)  # on meta: read from the files as float8
    manager = MemoryManager(bb, copy.deepcopy(p), strict=True)
    bb.vae.enable_tiling(**TILES)
    streamer = manager.streamer
    assert streamer.order and streamer.resident
    host = [h for i in streamer.order for h in streamer.groups[i].host]
    assert any(h.dtype in FLOAT8 for h in host)
    pipe = Pipeline(bb, build_encoder(preset.model, bb), preset, memory=manager)
    got = _frames(pipe, history_mode="encoder")
    ref = _reference(hub, "text-to-video, encoder", history_mode="encoder")
    assert got.shape == ref.shape
    diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    # measured: mean 0.11, max 2 levels of 255 (float8 blocks, float32 compute, two sections)
    assert diff.mean() < 0.5 and diff.max() <= 8 and not np.array_equal(got, ref), (diff.mean(), diff.max())
    assert manager.residency.peak <= manager.plan.budget.usable
    full = plan(preset, SECONDS, budget=budget, text_encoder_quantization="nf4")  # float32 blocks, same budget
    assert len(full.strategy.resident) < len(p.strategy.resident)
    assert p.strategy.streamed_bytes < full.strategy.streamed_bytes / 2
