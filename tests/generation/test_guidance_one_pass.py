"""History guidance and cfg in one DiT pass per step: every block runs both branches while it is resident.

The frames equal the one-pass-per-branch version bit for bit, and on a model
whose blocks are streamed the bytes copied per step with guidance 2.0 equal
those with guidance 1.0 (measured by the streaming hooks).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch

from framepack_history.backbones.base import Backbone, Conditioning, Context, transformer_blocks
from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.generation.loading import build_encoder, load_backbone
from framepack_history.generation.pipeline import Pipeline, SectionDone
from framepack_history.memory.streaming import BlockStreamer, Residency
from framepack_history.sampling import guidance_branches, guided, guided_together, history_guided
from tests.conftest import TINY_HUNYUAN
from tests.memory.test_memory_strict import hub  # noqa: F401  (fixture)

DEEP = {"num_layers": 2, "num_single_layers": 3}


@pytest.mark.parametrize("cfg, hg", [(1.0, 1.0), (1.0, 2.0), (3.0, 1.0), (3.0, 2.0)])
def test_combination_matches_the_nested_passes(cfg: float, hg: float) -> None:
    def model(x, s, c, h):
        return x * (1.5 if c else 0.5) + s * (2.0 if h else -1.0) + (0.25 if c and h else 0.0)

    x, s = torch.randn(2, 3), torch.tensor(0.7)
    together = guided_together(lambda x, s, branches: [model(x, s, c, h) for c, h in branches], cfg, hg)
    assert torch.equal(together(x, s), guided(history_guided(model, hg), cfg)(x, s))
    assert len(guidance_branches(cfg, hg)) == (2 if cfg != 1 else 1) * (2 if hg != 1 else 1)


@pytest.fixture(scope="module")
def tiny():
    preset = load_preset(TINY_HUNYUAN)
    preset.model.config.update(DEEP)
    return preset, load_backbone(preset.model)


def _branches(bb):
    text = bb.encode_text("a red fox")
    image = bb.encode_image(torch.rand(3, 64, 64) * 2 - 1)
    cond = Conditioning({**text.tensors, **image.tensors})
    neg = Conditioning({**bb.encode_text("").tensors, **image.tensors})
    g = torch.Generator().manual_seed(4)
    ctx = Context(history_tokens=torch.randn(1, 7, 32, generator=g), history_positions=torch.rand(7, 3, generator=g) * 3 - 5,
                  window_latents=torch.randn(1, 16, 1, 8, 8, generator=g), window_t0=-1.0)
    bare = replace(ctx, history_tokens=None, history_positions=None)
    return [(cond, ctx), (cond, bare), (neg, ctx), (neg, bare)]


def test_branches_equal_separate_predictions_bitwise(tiny) -> None:
    _, bb = tiny
    noisy = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.6])
    branches = _branches(bb)
    with torch.no_grad():
        together = bb.predict_branches(noisy, sigma, branches, 10.0)
        apart = [bb.predict(noisy, sigma, c, ctx, 10.0) for c, ctx in branches]
    assert len(together) == 4
    for a, b in zip(together, apart):
        assert torch.equal(a, b)
    assert not torch.equal(together[0], together[1])  # the branches differ: history tokens are read


def test_streamed_bytes_per_step_do_not_double_with_guidance(tiny) -> None:
    _, bb0 = tiny
    bb = copy.deepcopy(bb0)
    dit = bb.transformer
    n = len(transformer_blocks(dit))
    streamer = BlockStreamer(dit, resident=[0, 3], residency=Residency("cpu"))  # 3 of 5 blocks streamed
    assert len(streamer.order) == 3 and streamer.streamed_bytes > 0
    noisy, sigma = torch.randn(1, 16, 2, 8, 8), torch.tensor([0.5])
    branches = _branches(bb)[:2]  # history guidance: with and without the embedding

    def copied(fn) -> int:
        """Bytes copied by the second of two steps (steady state: the first streamed block is prefetched)."""
        with torch.no_grad():
            fn()
            before = streamer.copied_bytes
            fn()
        return streamer.copied_bytes - before

    one = copied(lambda: bb.predict(noisy, sigma, *branches[0], 10.0))
    both = copied(lambda: bb.predict_branches(noisy, sigma, branches, 10.0))
    apart = copied(lambda: [bb.predict(noisy, sigma, c, x, 10.0) for c, x in branches])
    assert one == streamer.streamed_bytes  # each streamed block copied once per pass
    assert both == one  # guidance 2.0 in one pass: the bytes of guidance 1.0
    assert apart == 2 * one  # what the two-pass version moved
    assert all(not streamer.groups[i].on_device for i in streamer.order[1:])  # dropped after the last branch
    assert n == 5


def _frames(pipe: Pipeline, **kw) -> np.ndarray:
    req = GenerationRequest(prompt="a red circle", seconds=1.0, seed=3, history_mode="encoder", **kw)
    return np.concatenate([e.frames for e in pipe.run(req) if isinstance(e, SectionDone)])


def test_pipeline_frames_equal_the_two_pass_version(tiny) -> None:
    preset, bb = tiny
    preset = replace(preset, history=replace(preset.history, guidance=2.0),
                     sampling=replace(preset.sampling, cfg=1.5, negative_prompt="blurry"))
    enc = build_encoder(preset.model, bb)
    one = _frames(Pipeline(bb, enc, preset))
    two_pass = copy.copy(bb)  # the same modules; this object predicts one branch per DiT call
    two_pass.predict_branches = partial(Backbone.predict_branches, two_pass)
    assert np.array_equal(one, _frames(Pipeline(two_pass, enc, preset)))
    off = _frames(Pipeline(bb, enc, replace(preset, history=replace(preset.history, guidance=1.0))))
    assert not np.array_equal(one, off)  # guidance changed the frames


def test_planner_traces_both_branches_together() -> None:
    """The planned activation peak of a guided step vs live tensor bytes of predict_branches (tiny model, CPU)."""
    from framepack_history.memory.components import denoise_activation, meta_components
    from framepack_history.memory.measure import LiveBytes

    preset = load_preset(TINY_HUNYUAN)
    preset.video.width = preset.video.height = 128  # enough tokens for the blocks to dominate
    bb = load_backbone(preset.model)
    comps = meta_components(preset)
    geo = bb.geometry
    h = w = 128 // geo.spatial_scale
    t = geo.latent_frames(preset.video.section_frames)
    hist, window = 600, 2
    cond = bb.encode_text("a red circle")
    cond.tensors["image_embeds"] = torch.randn(1, comps.image_tokens, bb.transformer.config.image_proj_dim)
    cond.tensors["prompt_attention_mask"] = torch.ones_like(cond.tensors["prompt_attention_mask"])
    ctx = Context(torch.randn(1, hist, geo.hidden_size), torch.randn(hist, 3),
                  torch.randn(1, geo.latent_channels, window, h, w), -2.0)
    bare = replace(ctx, history_tokens=None, history_positions=None)
    noisy = torch.randn(1, geo.latent_channels, t, h, w)
    with torch.no_grad(), LiveBytes() as lb:
        for v in bb.predict_branches(noisy, torch.tensor([0.5]), [(cond, ctx), (cond, bare)]):
            v.float()
    two = denoise_activation(comps, preset.video, hist, window, True, [(True, True), (True, False)])
    one = denoise_activation(comps, preset.video, hist, window, True)
    assert abs(two / lb.peak - 1) < 0.15, (two, lb.peak)
    assert one < two < 2 * one  # the second branch's sequence is alive, not a second set of activations


def test_one_pass_guidance_in_the_strict_rtx4070_shape(hub):  # noqa: F811
    """History guidance 2.0 through the tight plan (streamed blocks, strict residency) equals the resident model."""
    from tests.memory.test_memory_strict import _frames as strict_frames
    from tests.memory.test_memory_strict import _reference, _tight

    pipe = _tight(hub)
    kw = dict(history_mode="encoder", history_guidance=2.0)
    got = strict_frames(pipe, **kw)
    assert np.array_equal(got, _reference(hub, "encoder, history guidance 2", **kw))
    assert pipe.memory.residency.peak <= pipe.memory.plan.budget.usable
    streamer = pipe.memory.streamer
    assert streamer.order and streamer.copied_bytes > 0
