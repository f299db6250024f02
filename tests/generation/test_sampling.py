"""Samplers: exact on a linear flow, shift, guidance, callbacks and cancellation."""

from __future__ import annotations

import pytest
import torch

from framepack_history.errors import Cancelled
from framepack_history.sampling import flow_sigmas, guided, history_guided, sample, shift_sigmas


def exact_model(x0: torch.Tensor):
    """The true velocity field of a single target x0: v = (x - x0) / sigma."""
    return lambda x, s: (x - x0) / s.view(-1, *([1] * (x.dim() - 1))).clamp(min=1e-6)


@pytest.mark.parametrize("name", ["euler", "unipc"])
def test_samplers_reach_the_target(name):
    torch.manual_seed(0)
    x0, noise = torch.randn(1, 2, 1, 4, 4), torch.randn(1, 2, 1, 4, 4)
    out = sample(name, exact_model(x0), noise, steps=6, shift=3.0)
    assert (out - x0).abs().max() < 1e-3


def test_sigmas_and_shift():
    s = flow_sigmas(4, 1.0)
    assert s.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    shifted = flow_sigmas(4, 3.0)
    assert shifted[0] == 1 and shifted[-1] == 0
    assert torch.all(shifted[1:-1] > s[1:-1])  # shift > 1 spends more steps at high noise
    assert shift_sigmas(torch.tensor([0.5]), 1.0).item() == 0.5


def test_callback_sees_every_step_and_can_cancel():
    x0, noise = torch.zeros(1, 1, 1, 2, 2), torch.ones(1, 1, 1, 2, 2)
    seen = []
    sample("euler", exact_model(x0), noise, 5, 1.0, callback=lambda info: seen.append(info["step"]))
    assert seen == [1, 2, 3, 4, 5]

    def stop(info):
        if info["step"] == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        sample("unipc", exact_model(x0), noise, 5, 1.0, callback=stop)


def test_real_cfg_combines_passes():
    calls = []

    def model(x, s, cond):
        calls.append(cond)
        return torch.full_like(x, 2.0 if cond else 1.0)

    out = guided(model, 3.0)(torch.zeros(1), torch.ones(1))
    assert out.item() == 1.0 + 3.0 * (2.0 - 1.0)
    calls.clear()
    guided(model, 1.0)(torch.zeros(1), torch.ones(1))
    assert calls == [True]  # cfg 1: one pass


def test_history_guidance_extrapolates_from_the_prediction_without_history():
    calls = []

    def model(x, s, cond, with_history):
        calls.append((cond, with_history))
        return torch.full_like(x, (5.0 if with_history else 3.0) + (0.0 if cond else 100.0))

    out = history_guided(model, 2.0)(torch.zeros(1), torch.ones(1), True)
    assert out.item() == 3.0 + 2.0 * (5.0 - 3.0)
    assert sorted(calls) == [(True, False), (True, True)]  # both passes keep the text condition
    calls.clear()
    assert history_guided(model, 1.0)(torch.zeros(1), torch.ones(1), False).item() == 105.0
    assert calls == [(False, True)]  # scale 1: one pass, with the history
    # with real CFG on top, the unconditional pass is history-guided too
    calls.clear()
    out = guided(history_guided(model, 2.0), 3.0)(torch.zeros(1), torch.ones(1))
    assert out.item() == 107.0 + 3.0 * (7.0 - 107.0)
    assert len(calls) == 4


def test_unknown_sampler():
    with pytest.raises(ValueError, match="unknown sampler"):
        sample("ddim", lambda x, s: x, torch.zeros(1), 2, 1.0)


def test_unipc_is_framepacks_higher_order_solver():
    """On a nonlinear flow, UniPC (bh1, order 3, FramePack's form) converges at a higher order than Euler
    with the same model calls (halving the step: error / 4 or better, Euler's / 2); bh1 and bh2 differ."""
    from framepack_history.sampling import sample_euler, sample_unipc

    torch.manual_seed(0)
    w = torch.randn(4, 4) * 0.5

    def model(x, s):
        return torch.tanh(x @ w) * (1 + s.view(-1, 1, 1)) - 0.3 * x

    noise = torch.randn(2, 3, 4)
    exact = sample_euler(model, noise, flow_sigmas(4000))
    calls = []
    unipc = [(sample_unipc(lambda x, s: calls.append(1) or model(x, s), noise, flow_sigmas(n)) - exact).abs().max()
             for n in (8, 16)]
    euler = [(sample_euler(model, noise, flow_sigmas(n)) - exact).abs().max() for n in (8, 16)]
    assert len(calls) == 8 + 16
    assert unipc[0] / unipc[1] > 4 and euler[0] / euler[1] < 2.5, (unipc, euler)
    assert unipc[1] < euler[1] / 5
    sig = flow_sigmas(8, 3.0)
    assert not torch.equal(sample_unipc(model, noise, sig, variant="bh2"), sample_unipc(model, noise, sig))
