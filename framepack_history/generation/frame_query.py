"""The frame query: a past frame asked of the DiT from the history embedding alone, and its scores.

Stage I trains it, ``eval retrieval`` measures it, and the Memory tab's recall shows it
(:mod:`framepack_history.jobs.recall`): one function for all three, so what is measured is what is shown.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from framepack_history.backbones.base import Backbone, Conditioning
from framepack_history.config.storyboard import caption_at
from framepack_history.generation.context import query_context
from framepack_history.generation.pipeline import Pipeline
from framepack_history.history.state import HistoryState
from framepack_history.sampling import guided, sample


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of ``[N, 3, H, W]`` images in ``[0, 1]``."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(1.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM of ``[N, 3, H, W]`` images in ``[0, 1]`` (Gaussian window, per channel, averaged)."""
    window = min(window, a.shape[-1], a.shape[-2])
    x = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum())[:, None] * (g / g.sum())[None, :]
    c = a.shape[1]
    kernel = g.expand(c, 1, window, window).to(a.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    a, b = a.float(), b.float()
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` pixels -> ``[0, 1]``, quantised to 8 bits like a saved video frame."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round() / 255.0


def uint8_to_unit(frames) -> torch.Tensor:
    """``uint8 [F, H, W, 3]`` -> ``[F, 3, H, W]`` in ``[0, 1]``."""
    return torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255.0


def start_condition(pipeline: Pipeline, latents: torch.Tensor) -> Conditioning:
    """Stage I's image conditioning of a history ``[1, C, T, h, w]``: its first latent, as Stage I shows it.

    Image-to-video backbones (FramePack-F1) condition every DiT call on the start image: the clean
    anchor latent and its SigLIP embedding. Stage I (``StageTask.conditions``) takes the anchor from the
    clip's first latent and shows SigLIP that latent decoded, so the recall does the same with the
    history's first latent (a job's start image latent). Backbones without an image encoder: empty.
    """
    bb = pipeline.backbone
    if type(bb).encode_image is Backbone.encode_image or getattr(bb, "image_encoder", True) is None:
        return Conditioning()
    first = latents[:, :, :1].to(bb.device, torch.float32)
    memory = pipeline.memory
    with torch.no_grad():
        with memory.phase("vae_decode") if memory is not None else nullcontext():
            pixels = bb.vae_decode(first).float()  # [1, 3, F, H, W]
        with memory.phase("image_encode") if memory is not None else nullcontext():
            return bb.encode_image(pixels[0, :, 0], first)


def retrieve(pipeline: Pipeline, hist: HistoryState, caption: str, pos: int, steps: int, seed: int,
             target_w: torch.Tensor | None = None, image: Conditioning | None = None) -> torch.Tensor:
    """Denoise latent frame ``pos`` of the history from its embedding alone; returns ``[1, C, 1, h, w]``.

    The DiT reads what a Stage I step feeds it for that frame (``tests/training/test_recall_parity.py``):
    :func:`~.context.query_context` of the history's tokens, the prompt in force at the end of the
    history, :func:`start_condition` (``image``: computed once by a caller that recalls many frames of
    one history) and the preset's distilled guidance.
    """
    bb, p = pipeline.backbone, pipeline.preset
    t, lat = hist.num_frames, hist.latents
    text = pipeline.text(caption_at(caption, bb.geometry.pixel_frames(t) / p.video.fps))
    image = start_condition(pipeline, lat) if image is None else image
    cond = Conditioning({**image.tensors, **text.tensors})  # in Stage I's order: image, then text
    tokens, positions = hist.tokens()
    if target_w is not None:  # Stage I's batch form: positions moved by a camera track are per sample
        target_w, positions = target_w.reshape(1, -1), positions.reshape(1, *positions.shape[-2:])
    # The target's time per sample ``[B, k]``, as Stage I gives it.
    ctx = query_context((tokens, positions), torch.tensor([[float(pos - t)]], device=bb.device), target_w)
    noise = torch.randn((1, lat.shape[1], 1, *lat.shape[3:]), generator=torch.Generator().manual_seed(seed))

    def model(x: torch.Tensor, s: torch.Tensor, conditional: bool) -> torch.Tensor:
        return bb.predict(x, s, cond, ctx, p.sampling.guidance).float()

    shift, mu = pipeline.schedule(p.sampling.shift)
    return sample(p.sampling.sampler, guided(model, 1.0), noise.to(bb.device), steps, shift, mu=mu)
