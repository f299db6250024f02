"""Stage I: frame-query pretraining ("frame preservation").

Per sample a random set Omega of history latent frames is chosen (random
count *and* random positions: scattered, or with some probability one
contiguous run). The encoder sees the history with Omega clean and every
other frame noised (logit-normal level around 0.2); the DiT must denoise
``H[Omega]`` - placed at their own time positions inside the past - from
the embedding and the text alone, with the rectified-flow loss. Encoder and
DiT (LoRA, or full finetuning for the toy) train jointly.

Why random Omega: with fixed targets (say the last frames) the encoder could
keep only those; random targets force it to preserve the whole timeline.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from framepack_history.config.storyboard import caption_at
from framepack_history.generation.context import query_context
from framepack_history.training.common import logit_normal
from framepack_history.training.modeling import FlowModule
from framepack_history.training.settings import TrainConfig
from framepack_history.training.stages import StageTask, latents_of, run_stage, track_of


def sample_omega(t: int, gen: torch.Generator, omega_min: int, omega_max: int, contiguous_p: float) -> torch.Tensor:
    """Sorted latent-frame indices in ``[0, t)``: a random count, at random places."""
    hi = max(1, min(omega_max, t))
    lo = max(1, min(omega_min, hi))
    k = int(torch.randint(lo, hi + 1, (1,), generator=gen))
    if float(torch.rand(1, generator=gen)) < contiguous_p:
        start = int(torch.randint(0, t - k + 1, (1,), generator=gen))
        return torch.arange(start, start + k)
    return torch.randperm(t, generator=gen)[:k].sort().values


class FrameQueryModule(FlowModule):
    """``forward(batch)``: encode the masked history, denoise each sample's Omega frames."""

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x = batch["latents"]  # [B, C, T, h, w] clean history
        b, _, t = x.shape[:3]
        s = batch["mask_sigma"].view(b, 1, 1, 1, 1)
        keep = batch["keep"].view(b, 1, t, 1, 1)
        masked = torch.where(keep, x, (1 - s) * x + s * batch["mask_noise"])
        track = batch.get("track")  # [B, T] camera offsets (canvas positions), or None
        # Capped (Stage II's p_capped): the merges a job would make on its clean history.
        tokens, pos = self.history(masked, track, cap=batch.get("cap", 0), layout_from=x)
        # Every sample queries its own positions; the count is shared within a step so
        # the whole batch goes through the DiT in one call (per-sample target_t).
        omega = batch["omega"]  # [B, k] history latent-frame indices
        x0 = torch.stack([x[i, :, omega[i]] for i in range(b)])
        noise, sigma = batch["noise"], batch["sigma"]
        sv = sigma.view(b, 1, 1, 1, 1)
        ctx = query_context((tokens, pos), (omega - t).float().to(x.device),  # relative to the end of the history
                            None if track is None else torch.gather(track, 1, omega))
        pred = self.backbone.predict((1 - sv) * x0 + sv * noise, sigma, batch["cond"], ctx, batch.get("guidance", 1.0))
        loss = self.flow_loss(pred, x0, noise, sigma).mean()
        return {"loss": loss, "omega_frames": torch.tensor(float(omega.shape[1]))}


class Stage1Task(StageTask):
    """Batches with Omega, masks and noise drawn from the step's generator."""

    def make_batch(self, items: dict[str, Any], gen: torch.Generator) -> dict[str, Any]:
        c1, bb = self.cfg.stage1, self.module.backbone
        x = latents_of(items, bb)
        b, _, t = x.shape[:3]
        dev = x.device
        # One random count per step (it varies across steps), random places per sample.
        k = int(torch.randint(max(1, min(c1.omega_min, t)), max(1, min(c1.omega_max, t)) + 1, (1,), generator=gen))
        omegas = torch.stack([sample_omega(t, gen, k, k, c1.omega_contiguous_p) for _ in range(b)])
        keep = torch.zeros(b, t, dtype=torch.bool)
        keep[torch.arange(b)[:, None], omegas] = True
        center = math.log(c1.mask_noise_center / (1 - c1.mask_noise_center))
        mask_sigma = logit_normal(b, center, c1.mask_noise_std, gen)
        mask_noise = torch.randn(x.shape, generator=gen)
        sigma = logit_normal(b, self.cfg.sigma_mean, self.cfg.sigma_std, gen)
        noise = torch.randn((b, x.shape[1], k, *x.shape[3:]), generator=gen).to(dev)
        drop = torch.rand(b, generator=gen) < self.cfg.caption_dropout
        # The prompt in force at the end of the history: what a generator would be conditioned on next.
        end_s = bb.geometry.pixel_frames(t) / self.fps
        prompts = ["" if drop[i] else caption_at(items["caption"][i], end_s) for i in range(b)]
        return {
            "latents": x, "track": track_of(items, bb), "keep": keep.to(dev), "mask_sigma": mask_sigma.to(dev), "mask_noise": mask_noise.to(dev),
            "omega": omegas.to(dev), "noise": noise, "sigma": sigma.to(dev), "cond": self.batched(self.conditions(prompts, x)),
            "guidance": self.guidance,  # the DiT's distilled guidance, as recall runs it
        }


def main(cfg: TrainConfig) -> Path:
    """Train Stage I from a validated config; returns the output folder."""
    return run_stage(cfg, FrameQueryModule, Stage1Task)
