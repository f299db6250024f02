"""Flow-matching samplers as pure functions with a per-step callback.

Convention: ``x_sigma = (1 - sigma) * x0 + sigma * noise`` and the model
returns the velocity ``v = noise - x0``; sampling runs sigma from 1 to 0.

The callback receives ``{"step", "total", "x", "sigma", "denoised"}`` after
every step. It is where previews are drawn and where cancellation happens:
raising from it stops sampling cleanly (see :class:`Cancelled`).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict], None] | None

SAMPLERS = ("euler", "unipc")


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Timestep shift (SD3/FramePack): spend more steps at high noise when shift > 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def f1_mu(tokens: int, exp_max: float = 7.0) -> float:
    """FramePack-F1's dynamic shift exponent for a section of ``tokens`` DiT tokens.

    Flux's rule: ``mu`` linear from 0.5 at 256 tokens to 1.15 at 4,096, capped at
    ``log(exp_max)`` (shift 7 from about 3,900 tokens on, e.g. every 480x832 section).
    The shift itself is ``exp(mu)``.
    """
    slope = (1.15 - 0.5) / (4096 - 256)
    return min(tokens * slope + (0.5 - slope * 256), math.log(exp_max))


def time_shift_sigmas(sigmas: torch.Tensor, mu: float) -> torch.Tensor:
    """Flux's exponential time shift ``e^mu / (e^mu + 1/sigma - 1)``, written as the references compute it."""
    # Tensor / tensor: torch evaluates ``scalar / tensor`` as a reciprocal times the scalar, which rounds differently.
    e = torch.full_like(sigmas, math.exp(mu))
    return e / (e + (torch.ones_like(sigmas) / sigmas - 1))


def flow_sigmas(steps: int, shift: float = 1.0, mu: float | None = None) -> torch.Tensor:
    """``steps + 1`` sigmas from 1 down to 0 (the last one is exactly 0).

    ``mu`` (FramePack-F1's dynamic shift, see :func:`f1_mu`) replaces ``shift``:
    the grid is float64 ``linspace`` cast to float32 and shifted in float32, as
    diffusers' FlowMatchEuler scheduler does, so the timesteps match it bit for bit.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if mu is None:
        return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1), shift)
    grid = torch.from_numpy(np.linspace(1.0, 0.0, steps + 1)[:-1].astype(np.float32))
    return torch.cat([time_shift_sigmas(grid, mu), torch.zeros(1)])


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


Branch = tuple[bool, bool]  # (conditional, with_history)


def guidance_branches(cfg: float, history_scale: float) -> list[Branch]:
    """The predictions one step needs: with and without the text (cfg), with and without the history."""
    texts = (True, False) if cfg != 1.0 else (True,)
    hist = (True, False) if history_scale != 1.0 else (True,)
    return [(c, h) for c in texts for h in hist]


def guided_together(model: Callable[[torch.Tensor, torch.Tensor, list[Branch]], list[torch.Tensor]],
                    cfg: float, history_scale: float) -> Model:
    """``guided(history_guided(...), cfg)`` from one ``model(x, sigma, branches)`` call per step.

    The model predicts every branch of :func:`guidance_branches` at once (a
    backbone then runs each DiT block for all of them while it is on the
    device); the predictions are combined with the same arithmetic, in the same
    order, as the nested one-pass-per-branch form.
    """
    branches = guidance_branches(cfg, history_scale)

    def fn(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        pred = dict(zip(branches, model(x, s, branches)))

        def with_history(c: bool) -> torch.Tensor:
            if history_scale == 1.0:
                return pred[(c, True)]
            with_h, without = pred[(c, True)], pred[(c, False)]
            return without + history_scale * (with_h - without)

        if cfg == 1.0:
            return with_history(True)
        cond, uncond = with_history(True), with_history(False)
        return uncond + cfg * (cond - uncond)

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


def _unipc_step(denoise: Callable[[torch.Tensor, float], torch.Tensor], x: torch.Tensor, m: list[torch.Tensor],
                s_prev: list[float], s: float, order: int, bh1: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One UniPC predictor-corrector step from ``s_prev[-1]`` to ``s`` (data prediction, ``lambda = -log sigma``).

    ``m`` holds the last ``order`` x0 predictions at ``s_prev``. Returns the
    corrected sample and the model's x0 at the predicted one (reused next step).
    """
    lam0 = -math.log(s_prev[-1])
    h = -math.log(s) - lam0
    # Earlier predictions as divided differences against the newest one, at their relative log-sigma offsets.
    r = [(-math.log(s_prev[-(k + 1)]) - lam0) / h for k in range(1, order)]
    diffs = [(m[-(k + 1)] - m[-1]) / rk for k, rk in enumerate(r, start=1)]
    hh = -h
    phi1 = math.expm1(hh)
    big_b = hh if bh1 else math.expm1(hh)  # B(h): bh1 = h, bh2 = e^h - 1
    rows, rhs, phi_k, fact = [], [], phi1 / hh - 1, 1.0
    for k in range(1, order + 1):
        rows.append([rk ** (k - 1) for rk in [*r, 1.0]])
        rhs.append(phi_k * fact / big_b)
        fact *= k + 1
        phi_k = phi_k / hh - 1 / fact
    R, b = torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64)
    x_lin = (s / s_prev[-1]) * x - phi1 * m[-1]  # first-order (DDIM-like) step
    x_pred = x_lin
    if diffs:  # predictor (UniP): one order below the corrector
        rho_p = [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        x_pred = x_lin - big_b * sum(rho * d for rho, d in zip(rho_p, diffs))
    m_new = denoise(x_pred, s)
    rho_c = [0.5] if order == 1 else torch.linalg.solve(R, b).tolist()  # corrector (UniC)
    corr = sum((rho * d for rho, d in zip(rho_c[:-1], diffs)), torch.zeros_like(x)) + rho_c[-1] * (m_new - m[-1])
    return x_lin - big_b * corr, m_new


@torch.no_grad()
def sample_unipc(model: Model, noise: torch.Tensor, sigmas: torch.Tensor, callback: Callback = None,
                 variant: str = "bh1") -> torch.Tensor:
    """UniPC for flow matching as FramePack samples: variant ``bh1``, order up to 3, over ``sigmas``.

    Works on x0 predictions (``x - sigma * v``) with ``lambda = -log sigma``;
    the result is the last x0 prediction (the final sigma, 0, is never evaluated).
    """
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2' (got {variant!r})")
    total = len(sigmas) - 1
    order = min(3, total - 1)
    sig = [float(v) for v in sigmas]
    x = noise

    def denoise(x_: torch.Tensor, s: float, step: int) -> torch.Tensor:
        v = model(x_, torch.full((x_.shape[0],), s, device=x_.device, dtype=torch.float32))
        _report(callback, step, total, x_, torch.tensor(s), v)
        return x_ - s * v

    m = [denoise(x, sig[0], 1)]
    for i in range(1, total):
        x, m_new = _unipc_step(lambda x_, s, i=i: denoise(x_, s, i + 1), x, m, sig[max(0, i - order):i],
                               sig[i], min(i, order), variant == "bh1")
        m = (m + [m_new])[-order:]
    return m[-1]


def sample(name: str, model: Model, noise: torch.Tensor, steps: int, shift: float, callback: Callback = None,
           mu: float | None = None) -> torch.Tensor:
    """Dispatch by sampler name (``"euler"`` or ``"unipc"``); ``mu`` selects F1's dynamic shift over ``shift``."""
    sigmas = flow_sigmas(steps, shift, mu).to(noise.device)
    if name == "euler":
        return sample_euler(model, noise, sigmas, callback)
    if name == "unipc":
        return sample_unipc(model, noise, sigmas, callback)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
