"""Step caching decides from the noisy section's tokens: context and history tokens do not change which steps skip.

The inputs are made so that the decisions are clear-cut: the noisy latents stay
almost the same for some steps (a first-block change of about 0.005) and are
replaced by fresh ones at others (a change of 0.6 to 1.0), at one timestep, so
the context and history tokens' own residuals barely move. Measured over the
whole sequence, as diffusers does, those tokens dilute a fresh section's change
below the threshold once there are enough of them, and the steps where the
section changed are skipped.
"""

from __future__ import annotations

import pytest
import torch

from framepack_history.backbones.base import Context
from framepack_history.config.presets import load_preset
from framepack_history.generation.loading import load_backbone
from framepack_history.generation.pipeline import Pipeline
from framepack_history.generation.step_cache import StepCache
from tests.conftest import TINY_HUNYUAN

PLAN = (0, 0, 1, 1, 1, 2, 2, 3)  # the fresh latents each step starts from: a new index is a big change
COMPUTED = "x.x..x.x"  # x: every block ran (the first and last steps always do), .: the rest was skipped


@pytest.fixture(scope="module")
def models() -> dict:
    """The embedded toy (four blocks) and the tiny FramePack-F1, each with its section shape and a text."""
    out = {}
    for name, preset in (("toy", load_preset("toy-cpu")), ("f1", load_preset(TINY_HUNYUAN))):
        bb = load_backbone(preset.model, "cpu", "float32")
        out[name] = (bb, Pipeline(bb, None, preset).latent_shape(), bb.encode_text("a red circle moves left"))
    return out


def _contexts(name: str, bb, shape: tuple[int, ...]) -> dict[str, Context]:
    """No context; the backbone's clean context; the clean context and 400-512 history tokens."""
    g = torch.Generator().manual_seed(5)
    tr = bb.transformer
    if name == "toy":
        dim, n = tr.config.hidden_size, 512
        window = torch.randn(1, shape[1], 4, *shape[3:], generator=g)
        context = Context(window_latents=window, window_t0=-4.0)
    else:
        dim, n = tr.config.num_attention_heads * tr.config.attention_head_dim, 400
        context = Context(recent_latents=torch.randn(1, shape[1], 6, *shape[3:], generator=g))
    tokens, positions = torch.randn(1, n, dim, generator=g), torch.rand(n, 3, generator=g) * 4 - 8
    history = Context(window_latents=context.window_latents, window_t0=context.window_t0,
                      recent_latents=context.recent_latents, history_tokens=tokens, history_positions=positions)
    return {"none": Context(), "context": context, "context+history": history}


def _decisions(bb, shape: tuple[int, ...], cond, ctx: Context, threshold: float, cache_cls=StepCache) -> str:
    """Which calls of one branch ran every block, as ``x`` (ran) and ``.`` (skipped)."""
    g = torch.Generator().manual_seed(0)
    fresh = [torch.randn(shape, generator=g) for _ in range(max(PLAN) + 1)]
    cache, out = cache_cls(bb.transformer, threshold, len(PLAN)), ""
    with torch.no_grad(), cache:
        for i, k in enumerate(PLAN):
            x = fresh[k] + 1e-3 * i * torch.randn(shape, generator=g)
            before = cache.passes.full
            cache.call("cond", lambda x=x: bb.predict(x, torch.tensor([0.6]), cond, ctx))
            out += "x" if cache.passes.full > before else "."
    return out


# The clean context alone dilutes less than history tokens: it is checked at a threshold its dilution crosses.
@pytest.mark.parametrize("name,added,threshold", [("toy", "context", 0.6), ("toy", "context+history", 0.1),
                                                  ("f1", "context", 0.75), ("f1", "context+history", 0.1)])
def test_added_tokens_do_not_change_which_steps_skip(models, name, added, threshold):
    bb, shape, cond = models[name]
    contexts = _contexts(name, bb, shape)
    plain = _decisions(bb, shape, cond, contexts["none"], threshold)
    assert plain == COMPUTED  # skips and full passes both: the test can tell them apart
    assert _decisions(bb, shape, cond, contexts[added], threshold) == plain


def test_the_change_is_measured_on_the_noisy_tokens(models):
    """``changes`` records each compared call's number; a fresh section moves it far more than the threshold."""
    bb, shape, cond = models["toy"]
    assert bb.transformer.noisy_tokens(shape) == shape[2] * (shape[3] // 2) * (shape[4] // 2)
    ctx = _contexts("toy", bb, shape)["context+history"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    cache = StepCache(bb.transformer, 0.1, 3)
    with torch.no_grad(), cache:
        for latents in (x, x + 1e-3 * torch.randn(shape, generator=g), torch.randn(shape, generator=g)):
            cache.call("cond", lambda latents=latents: bb.predict(latents, torch.tensor([0.6]), cond, ctx))
    first, small, last = cache.changes["cond"]
    assert first is None and last is None  # nothing to compare with; the last step's state was dropped
    assert 0 < small < 0.01
    assert not bb.transformer.skip_blocks  # cleared after every call and when the cache closes
