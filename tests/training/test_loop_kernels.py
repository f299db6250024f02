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


def test_channels_last_conv_weights_give_the_same_loss_and_gradients_and_export_contiguous(tmp_path):
    from safetensors.torch import save_file

    from framepack_history.history.encoder import HistoryEncoder
    from framepack_history.training.modeling import channels_last_convs, contiguous_params

    torch.manual_seed(0)
    patch = nn.Conv3d(12, 32, (1, 2, 2), stride=(1, 2, 2))
    enc = HistoryEncoder(latent_channels=12, hidden_size=32, rate="2x2x4", channels=(8, 16, 16, 16), attention_heads=2)
    with torch.no_grad():
        enc.hr_gate.fill_(0.5)  # the HR branch counts in the output (its gate starts at zero)
    model = nn.ModuleDict({"enc": enc, "patch": patch})
    twin = copy.deepcopy(model)
    assert channels_last_convs(twin) > 3
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in twin.parameters() if p.dim() == 5)
    x = torch.randn(2, 12, 9, 8, 8, generator=torch.Generator().manual_seed(1))
    losses = []
    for m in (model, twin):
        m["enc"].set_patch_embedding(m["patch"])
        loss = m["enc"](x).pow(2).mean()
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert twin["enc"].hr_convs[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    contiguous_params(twin)
    assert all(p.is_contiguous() for p in twin.parameters())
    save_file({n: p.detach() for n, p in twin.named_parameters()}, str(tmp_path / "w.safetensors"))
