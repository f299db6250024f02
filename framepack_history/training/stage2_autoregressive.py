"""Stage II: autoregressive (next-section) finetuning.

Each step splits the clips at a random latent frame; everything before the
split is history, the next section is the target. The DiT sees the
encoder's embedding of the *whole* preceding history (plus, optionally, a
tiny window of the last raw latent frames) and the caption in force at the
section start, and predicts the section with the rectified-flow loss.

* the DiT gets a fresh LoRA (real backbones) or keeps finetuning (toy); the
  encoder starts from Stage I (``model.encoder``) and stays trainable unless
  ``stage2.freeze_encoder`` (the paper's ablation);
* with probability ``stage2.p_frame_query`` a step trains Stage I's
  frame-query objective instead (the embedding must stay decodable, and the
  DiT keeps reading past frames out of it);
* with probability ``stage2.p_revisit_split`` the split is drawn where the
  target shows canvas that only the history beyond the window has seen
  (camera tracks only): the sections where memory, not the window, helps;
* with probability ``stage2.p_window_mode`` a step trains the sliding-window
  baseline instead (no embedding, the last section of raw latents, exactly
  what :class:`~framepack_history.generation.pipeline.Pipeline` feeds in ``window``
  mode), so that baseline is measured with the same weights.

The split point is shared by a batch (history lengths must match to batch
the encoder); it is redrawn every step, so the run covers every length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from framepack_history.backbones.base import Context
from framepack_history.config.storyboard import caption_at
from framepack_history.errors import InputError
from framepack_history.training.common import logit_normal
from framepack_history.training.modeling import FlowModule
from framepack_history.training.settings import TrainConfig
from framepack_history.training.stage1_frame_query import FrameQueryModule, Stage1Task
from framepack_history.training.stages import StageTask, latents_of, run_stage, track_of


class NextSectionModule(FlowModule):
    """``forward(batch)``: history -> embedding (+ window) -> denoise the next section."""

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if batch.get("frame_query"):
            out = FrameQueryModule.forward(self, batch)
            return {"loss": out["loss"], "frame_query": torch.tensor(1.0)}
        x, split, n = batch["latents"], batch["split"], batch["section"]
        x0 = x[:, :, split : split + n]
        track = batch.get("track")  # [B, T] camera offsets (canvas positions), or None
        ctx = Context()
        if batch["use_encoder"]:
            ctx.history_tokens, ctx.history_positions = self.history(
                x[:, :, :split], None if track is None else track[:, :split], cap=batch.get("cap", 0))
        w = batch["window"]
        if w > 0:
            ctx.window_latents = x[:, :, split - w : split]
            ctx.window_t0 = -float(w)
            ctx.window_w = None if track is None else track[:, split - w : split]
        if track is not None:
            ctx.target_w = track[:, split : split + n]
        sigma, noise = batch["sigma"], batch["noise"]
        sv = sigma.view(-1, 1, 1, 1, 1)
        pred = self.backbone.predict((1 - sv) * x0 + sv * noise, sigma, batch["cond"], ctx)
        loss = self.flow_loss(pred, x0, noise, sigma).mean()
        return {"loss": loss, "history_frames": torch.tensor(float(split)),
                "window_mode": torch.tensor(0.0 if batch["use_encoder"] else 1.0), "frame_query": torch.tensor(0.0)}


def revisit_weights(camera_x: torch.Tensor, view: int, window: int, section: int) -> torch.Tensor:
    """Per split point: pixels of the target section that only the history beyond the window has seen.

    ``camera_x`` ``[B, T]`` is each frame's left edge on the canvas (one latent frame per frame).
    ``out[s]`` sums, over the batch and the ``section`` frames from ``s``, the columns in view that some
    frame before ``s - window`` showed and none of the ``window`` frames just before ``s`` shows: the
    part of a section that only memory can draw (a sliding window cannot). Float ``[T + 1]``.
    """
    cx = camera_x.long()
    b, t = cx.shape
    width = int(cx.max()) + view
    cols = torch.arange(width)
    cover = (cols >= cx[..., None]) & (cols < cx[..., None] + view)  # [B, T, W]
    seen = torch.cummax(cover.to(torch.uint8), dim=1).values.bool()  # columns shown by frames 0..i
    out = torch.zeros(t + 1)
    for s in range(1, t - section + 1):
        h = s - window  # history frames before the window
        if h < 1:
            continue
        in_window = cover[:, h:s].any(1) if window > 0 else torch.zeros(b, width, dtype=torch.bool)
        only_memory = seen[:, h - 1] & ~in_window  # [B, W]
        out[s] = (cover[:, s : s + section] & only_memory[:, None]).sum()
    return out


def draw_cap(c2, gen: torch.Generator) -> int:
    """A history-token cap for this step (``stage2.p_capped``), else 0; draws nothing when the term is off."""
    if c2.p_capped <= 0 or float(torch.rand(1, generator=gen)) >= c2.p_capped:
        return 0
    return int(c2.capped_tokens[int(torch.randint(len(c2.capped_tokens), (1,), generator=gen))])


def section_latent_frames(module: FlowModule, section_frames: int) -> int:
    return module.backbone.geometry.latent_frames(section_frames)


class Stage2Task(StageTask):
    """Batches with a split point, history mode, captions and noise drawn from the step's generator."""

    def make_batch(self, items: dict[str, Any], gen: torch.Generator) -> dict[str, Any]:
        c2, bb = self.cfg.stage2, self.module.backbone
        if c2.p_frame_query > 0 and float(torch.rand(1, generator=gen)) < c2.p_frame_query:
            return {**Stage1Task.make_batch(self, items, gen), "frame_query": True, "cap": draw_cap(c2, gen)}
        x = latents_of(items, bb)
        b, t = x.shape[0], x.shape[2]
        n = section_latent_frames(self.module, self.preset.video.section_frames)
        lo = max(1, c2.min_history_frames, c2.window_frames)
        if t < lo + n:
            raise InputError("data.frames", f"clips have {t} latent frames; stage 2 needs at least {lo + n} "
                                          f"(history {lo} + section {n})")
        split = int(torch.randint(lo, t - n + 1, (1,), generator=gen))
        # Draw only when the term is on, so runs without it keep their random stream.
        revisit = c2.p_revisit_split > 0 and float(torch.rand(1, generator=gen)) < c2.p_revisit_split
        if revisit and "camera_x" in items and bb.geometry.temporal_scale == 1:
            weight = revisit_weights(torch.as_tensor(items["camera_x"]), self.preset.video.width, c2.window_frames, n)
            weight = weight[lo : t - n + 1]
            if float(weight.sum()) > 0:
                split = lo + int(torch.multinomial(weight, 1, generator=gen))
        use_encoder = not (float(torch.rand(1, generator=gen)) < c2.p_window_mode)
        # Window sizes exactly as the pipeline: encoder mode uses the add-on window (0 = none),
        # window mode defaults to one section of raw latents.
        window = c2.window_frames if use_encoder else (c2.window_frames or n)
        # Drawn only when the term is on, so runs without it keep their random stream.
        if use_encoder and c2.p_no_window > 0 and float(torch.rand(1, generator=gen)) < c2.p_no_window:
            window = 0
        window = min(window, split)
        cap = draw_cap(c2, gen) if use_encoder else 0
        sigma = logit_normal(b, self.cfg.sigma_mean, self.cfg.sigma_std, gen)
        noise = torch.randn((b, x.shape[1], n, *x.shape[3:]), generator=gen)
        drop = torch.rand(b, generator=gen) < self.cfg.caption_dropout
        start_s = bb.geometry.pixel_frames(split) / self.fps  # pixel frames before the split
        prompts = ["" if drop[i] else caption_at(items["caption"][i], start_s) for i in range(b)]
        return {"latents": x, "track": track_of(items, bb), "split": split, "section": n, "use_encoder": use_encoder,
                "window": window, "cap": cap,
                "sigma": sigma.to(x.device), "noise": noise.to(x.device), "cond": self.batched(self.conditions(prompts, x))}


def main(cfg: TrainConfig) -> Path:
    """Train Stage II from a validated config; returns the output folder."""
    return run_stage(cfg, NextSectionModule, Stage2Task)
