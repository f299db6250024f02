"""Flow-matching samplers as pure functions with a per-step callback.

Convention: ``x_sigma = (1 - sigma) * x0 + sigma * noise`` and the model
returns the velocity ``v = noise - x0``; sampling runs sigma from 1 to 0.

The callback receives ``{"step", "total", "x", "sigma", "denoised"}`` after
every step. It is where previews are drawn and where cancellation happens:
raising from it stops sampling cleanly (see :class:`Cancelled`).
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import UniPCMultistepScheduler

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict], None] | None

SAMPLERS = ("euler", "unipc")


class Cancelled(Exception):
    """Raised by a callback to stop sampling; carries no partial result."""


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Timestep shift (SD3/FramePack): spend more steps at high noise when shift > 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(steps: int, shift: float = 1.0) -> torch.Tensor:
    """``steps + 1`` sigmas from 1 down to 0 (the last one is exactly 0)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1), shift)


def guided(model: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor], cfg: float) -> Model:
    """Real classifier-free guidance on top of a ``model(x, sigma, conditional)``.

    With ``cfg == 1`` only the conditional pass runs (distilled guidance
    models such as FramePack use this).
    """
    if cfg == 1.0:
        return lambda x, s: model(x, s, True)

    def fn(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        cond, uncond = model(x, s, True), model(x, s, False)
        return uncond + cfg * (cond - uncond)

    return fn


def history_guided(model: Callable[[torch.Tensor, torch.Tensor, bool, bool], torch.Tensor],
                   scale: float) -> Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]:
    """History guidance on top of a ``model(x, sigma, conditional, with_history)``.

    ``without + scale * (with - without)``: the prediction moves ``scale``
    times as far from the one made without the history embedding (the
    add-on window alone) as the history moves it. The same weights learn
    both predictions in Stage II (its window-mode steps play the part of
    classifier-free guidance's dropped condition), so no extra model is
    needed. ``scale == 1`` runs only the pass with the history.
    """
    if scale == 1.0:
        return lambda x, s, c: model(x, s, c, True)

    def fn(x: torch.Tensor, s: torch.Tensor, conditional: bool) -> torch.Tensor:
        with_h, without = model(x, s, conditional, True), model(x, s, conditional, False)
        return without + scale * (with_h - without)

    return fn


def _report(callback: Callback, step: int, total: int, x: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor) -> None:
    if callback is not None:
        callback({"step": step, "total": total, "x": x, "sigma": float(sigma), "denoised": x - sigma * v})


@torch.no_grad()
def sample_euler(model: Model, noise: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None) -> torch.Tensor:
    """First-order Euler over ``sigmas`` (decreasing, ending at 0)."""
    x = noise
    total = len(sigmas) - 1
    for i in range(total):
        s, s_next = sigmas[i], sigmas[i + 1]
        v = model(x, s.expand(x.shape[0]).to(x.device))
        _report(callback, i + 1, total, x, s, v)
        x = x + (s_next - s) * v
    return x


@torch.no_grad()
def sample_unipc(model: Model, noise: torch.Tensor, steps: int, shift: float = 1.0, callback: Callback = None) -> torch.Tensor:
    """UniPC (bh2) in flow mode, through diffusers' scheduler."""
    sched = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, solver_order=2
    )
    sched.set_timesteps(steps, device=noise.device)
    x = noise
    for i, t in enumerate(sched.timesteps):
        s = sched.sigmas[i].to(x.device, torch.float32)
        v = model(x, s.expand(x.shape[0]))
        _report(callback, i + 1, steps, x, s, v)
        x = sched.step(v, t, x, return_dict=False)[0]
    return x


def sample(name: str, model: Model, noise: torch.Tensor, steps: int, shift: float, callback: Callback = None) -> torch.Tensor:
    """Dispatch by sampler name (``"euler"`` or ``"unipc"``)."""
    if name == "euler":
        return sample_euler(model, noise, flow_sigmas(steps, shift).to(noise.device), callback)
    if name == "unipc":
        return sample_unipc(model, noise, steps, shift, callback)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
