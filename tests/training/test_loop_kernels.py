"""The shared loop's faster kernels do the same maths as the plain ones: fused AdamW, the EMA's one-pass lerp."""

from __future__ import annotations

import copy

import torch
from torch import nn

from framepack_history.training.common import EMA, adamw_kernel


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 3))


def test_fused_adamw_follows_the_per_tensor_loop():
    plain, fused = _model(), _model()
    opts = [torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.01, foreach=False),
            torch.optim.AdamW(fused.parameters(), lr=1e-2, weight_decay=0.01, **adamw_kernel(native=False))]
    assert opts[1].defaults["fused"] is True and adamw_kernel(native=True) == {}
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(4, 6, generator=gen)
        for model, opt in zip((plain, fused), opts):
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    moved = max((p - q).abs().max().item() for p, q in zip(plain.parameters(), _model().parameters()))
    assert moved > 1e-3  # the steps did something
    for p, q in zip(plain.parameters(), fused.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_ema_update_equals_the_per_parameter_lerp():
    model = _model()
    model[2].bias.requires_grad_(False)  # frozen parameters have no shadow
    ema = EMA(model, decay=0.9)
    expected = {n: t.clone() for n, t in ema.shadow.items()}
    assert "2.bias" not in expected
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * (step + 1))
        ema.update(model)
        for n, p in model.named_parameters():
            if n in expected:
                expected[n] = expected[n] + 0.1 * (p.detach() - expected[n])
    for n, t in expected.items():
        torch.testing.assert_close(ema.shadow[n], t, rtol=1e-6, atol=1e-6)
    copy_of = copy.deepcopy(model)
    ema.copy_to(copy_of)
    torch.testing.assert_close(copy_of[0].weight, ema.shadow["0.weight"])
