"""Toy VAE training: the toy backbone has no pretrained VAE, so it learns one first.

A per-frame autoencoder on random frames of the training clips: MSE
reconstruction, a small penalty that keeps latents near unit scale, and
noise on the latents before decoding so the decoder tolerates the slightly
off-manifold latents a small DiT generates. At export the scaling factor is
set so latents have unit root mean square (what the flow-matching noise
assumes).

Output: ``<out>/vae`` (``ToyVAE.save_pretrained``), then point Stage I's
``vae_weights`` at ``<out>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from framepack_history.backbones.toy import ToyVAE
from framepack_history.config.presets import load_preset
from framepack_history.errors import InputError
from framepack_history.training.common import make_accelerator, run
from framepack_history.training.data import pixel_dataset, step_batches
from framepack_history.training.settings import TrainConfig, find_path


class VAEModule(nn.Module):
    """``forward(batch)``: reconstruct the frames; returns the loss and the latent scale."""

    def __init__(self, vae: nn.Module, cfg: TrainConfig) -> None:
        super().__init__()
        self.vae = vae
        self._cfg = (cfg,)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self._cfg[0].vae
        x = batch["frames"]
        z = self.vae.encode(x)
        recon = self.vae.decode(z + cfg.latent_noise * batch["latent_noise"] * z.detach().std())
        mse = F.mse_loss(recon, x)
        reg = z.pow(2).mean()
        return {"loss": mse + cfg.latent_reg * reg, "mse": mse.detach(), "latent_rms": reg.detach().sqrt()}


class VAETask:
    def __init__(self, cfg: TrainConfig, module: VAEModule, dataset) -> None:
        self.cfg, self.module, self.dataset = cfg, module, dataset

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.module.vae.parameters()), "lr": self.cfg.lr}]

    def make_batch(self, items: dict[str, Any], gen: torch.Generator) -> dict[str, Any]:
        video = items["video"]  # [B, 3, F, H, W]
        k = min(self.cfg.vae.frames_per_clip, video.shape[2])
        idx = torch.stack([torch.randperm(video.shape[2], generator=gen)[:k] for _ in range(video.shape[0])])
        frames = torch.stack([video[i, :, idx[i]] for i in range(video.shape[0])])
        dev = next(self.module.vae.parameters()).device
        noise = torch.randn(frames.shape[0], self.module.vae.config.latent_channels, k,
                            frames.shape[3] // self.module.vae.config.spatial_scale,
                            frames.shape[4] // self.module.vae.config.spatial_scale, generator=gen)
        return {"frames": frames.to(dev), "latent_noise": noise.to(dev)}

    def export_state(self, out: Path, state: dict) -> None:
        raise InputError("--config", "train vae runs on one device or with DDP, not FSDP/DeepSpeed")

    @torch.no_grad()
    def export(self, out: Path, module: VAEModule) -> None:
        vae = module.vae.eval()
        vae.register_to_config(scaling_factor=1.0)
        n = min(len(self.dataset), 16)
        dev = next(vae.parameters()).device
        z = torch.cat([vae.encode(self.dataset[i]["video"][None].to(dev)).flatten() for i in range(n)])
        # Root mean square, not std: the flow noise assumes E[x0^2] ~ 1, and latents need not be zero-mean.
        vae.register_to_config(scaling_factor=float(1.0 / z.pow(2).mean().sqrt().clamp(min=1e-6)))
        vae.save_pretrained(out / "vae", safe_serialization=True)


def main(cfg: TrainConfig) -> Path:
    """Train the toy VAE from a validated config; returns the output folder."""
    preset = load_preset(find_path(cfg.preset))
    if preset.model.backbone != "toy":
        raise InputError("preset", "train vae is for the toy backbone; real backbones bring a pretrained VAE")
    accelerator = make_accelerator(cfg)
    torch.manual_seed(cfg.seed)
    vae_cfg = {**preset.model.config.get("vae", {}), **cfg.model.get("config", {}).get("vae", {})}
    if vae_cfg.get("kind") == "space_to_depth":
        raise InputError("model.config.vae.kind", "a space_to_depth VAE has no weights to train; "
                                                  "set kind = \"conv\" to train a learned one")
    vae = ToyVAE(**vae_cfg).to(accelerator.device)
    module = VAEModule(vae, cfg)
    v = preset.video
    dataset = pixel_dataset(cfg.data, v.width, v.height, v.fps)
    task = VAETask(cfg, module, dataset)
    batches = step_batches(dataset, cfg.batch_size, cfg.seed, cfg.grad_accum, cfg.max_steps, cfg.num_workers,
                           accelerator.num_processes)
    return run(cfg, accelerator, task, batches)
