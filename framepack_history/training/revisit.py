"""Revisit consistency on the toy world: does a place look the same when the camera comes back?

Episodes: ``pan_away_and_back`` (pan away for half the gap, pan back) and
``leave_and_return`` (pan a whole view away, hold, come back), with the
camera back at its start view after each gap in ``returns_after`` seconds.
The start frame is the given context (image-to-video), like in the app.
The scored section is the one that contains the return frame.

(a) teacher-forced: the return section predicted from the TRUE history
    (history mode ``encoder`` vs ``window``, same weights), PSNR/SSIM
    against the true frames;
    Two diagnostics of whether the DiT reads the embedding: the same section
    with another episode's history (its own add-on window kept), and PSNR on
    the memory-only pixels (canvas that the add-on window does not show);
(b) free-running: the whole episode generated from the start frame; each
    frame of the return section is compared with the model's *own* frame of
    the first visit to the same camera position (at least half the gap
    earlier). The true video's own score (its sprites move) is the ceiling.

On real footage (``data.kind = "prepared"``: held-out clips of a
``prepare-data`` folder) there is no camera track to return to: the kind is
``real_footage`` and the scored section is each clip's last, predicted
teacher-forced from the clip's true history before it, in both modes. The
encoder - window margin is then what the history tokens add over the DiT's own
recent context, against the clip's VAE reconstruction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from framepack_history.backbones.toyworld import EVAL_SEED_START, World, WorldSpec, leave_and_return, pan_away_and_back
from framepack_history.config.request import GenerationRequest
from framepack_history.config.storyboard import parse_storyboard
from framepack_history.errors import InputError
from framepack_history.generation.frame_query import psnr, ssim, uint8_to_unit
from framepack_history.generation.pipeline import Generation, Pipeline, to_pixels
from framepack_history.history.state import HistoryState
from framepack_history.training.data import SPEC_KEYS
from framepack_history.training.evaluate import EvalConfig, cfg_dict, clip_of, eval_dataset, load_for_eval, parse_models, summary
from framepack_history.training.stages import track_of


def storyboard(kind: str, gap: float, spec) -> str:

    if kind == "pan_away_and_back":
        return pan_away_and_back(gap / 2)
    if kind == "leave_and_return":
        return leave_and_return(gap, spec)
    raise InputError("kinds", f"unknown revisit kind {kind!r} (pan_away_and_back, leave_and_return)")


def make_episode(pipeline: Pipeline, cfg: EvalConfig, kind: str, gap: float, index: int):
    """The true episode (long enough to contain the return section) and that section's index."""
    v = pipeline.preset.video
    spec = WorldSpec(view=v.width, fps=v.fps, **{k: tuple(x) if isinstance(x, list) else x
                                                  for k, x in cfg.data.options.items() if k in SPEC_KEYS})
    s = v.section_frames
    _, k = return_section(gap, v.fps, s)
    seed = world_seed(cfg, index)
    ep = World.from_seed(seed, spec).render(storyboard(kind, gap, spec), (1 + (k + 1) * s) / v.fps)
    return ep, k, seed


def return_section(gap: float, fps: int, section_frames: int) -> tuple[int, int]:
    """``(return frame, index of the section holding it)``: frame 0 is the start frame, section k covers
    frames ``1 + k*s .. (k+1)*s``."""
    ret = round(gap * fps)
    return ret, max(0, (ret - 1) // section_frames)


def world_seed(cfg: EvalConfig, index: int) -> int:
    """The toy world of episode ``index``: held-out worlds by default (data.split = "eval");
    data.options.first picks another block of them."""
    base = 0 if cfg.data.split == "train" else EVAL_SEED_START
    return base + int(cfg.data.options.get("first", 0)) + index


@torch.no_grad()
def encode_like_pipeline(pipeline: Pipeline, frames: np.ndarray, sections: int) -> torch.Tensor:
    """Latents of the start frame, then of each section's frames, encoded separately as the pipeline does."""
    bb, s = pipeline.backbone, pipeline.preset.video.section_frames
    parts = [bb.vae_encode(to_pixels(frames[:1]).to(bb.device)).float().cpu()]
    for j in range(sections):
        parts.append(bb.vae_encode(to_pixels(frames[1 + j * s : 1 + (j + 1) * s]).to(bb.device)).float().cpu())
    return torch.cat(parts, dim=2)


def history_of(pipeline: Pipeline, ep, latents: torch.Tensor, mode: str, max_tokens: int = 0,
               merge: str = "similar") -> HistoryState:
    """The history a job holds after ``latents`` (the episode's first frames), in ``mode``.

    ``max_tokens``/``merge``: the history-token cap as a job applies it (``encoder`` mode only; the window
    has no tokens to cap). One append: the capped layout does not depend on how the history was appended.
    """
    bb = pipeline.backbone
    enc = mode == "encoder"
    hist = HistoryState(pipeline.encoder if enc else None, bb.device, max_tokens=max_tokens if enc else 0, merge=merge)
    # The true camera track of the given frames (canvas-position backbones), relative to the start view.
    track = track_of({"camera_x": torch.as_tensor(ep.camera_x - ep.camera_x[0])[None]}, bb)
    hist.append(latents, frame_context=None if track is None else track[0, : latents.shape[2]].cpu())
    return hist


def _generation(pipeline: Pipeline, ep, mode: str, seed: int, total: int, start: int, latents: torch.Tensor,
                max_tokens: int = 0, merge: str = "similar") -> Generation:
    bb = pipeline.backbone
    req = GenerationRequest(prompt=ep.caption, seconds=len(ep.frames) / ep.fps, seed=seed, history_mode=mode)
    hist = history_of(pipeline, ep, latents, mode, max_tokens, merge)
    gen = Generation(req, parse_storyboard(ep.caption), total, hist, next_section=start)
    gen.image_cond = bb.encode_image(to_pixels(ep.frames[:1])[0, :, 0].to(bb.device))
    return gen


def first_visits(camera_x: np.ndarray, frames: range, min_gap: int) -> list[tuple[int, int]]:
    """``(frame, first frame with the same camera x at least min_gap earlier)`` pairs."""
    pairs = []
    for f in frames:
        same = np.nonzero(camera_x[: max(0, f - min_gap + 1)] == camera_x[f])[0]
        if len(same):
            pairs.append((f, int(same[0])))
    return pairs


def memory_columns(camera_x: np.ndarray, section: range, window: int, view: int) -> np.ndarray:
    """Bool ``[F, view]``: the section's columns that none of the ``window`` frames before it shows."""
    shown = set()
    for f in range(max(0, section.start - window), section.start):
        shown.update(range(int(camera_x[f]), int(camera_x[f]) + view))
    return np.array([[int(camera_x[f]) + c not in shown for c in range(view)] for f in section], bool)


def masked_psnr(got: torch.Tensor, truth: torch.Tensor, columns: np.ndarray) -> float:
    """PSNR (dB) over the pixels of ``columns`` (``[F, W]``) of ``[F, 3, H, W]`` images in [0, 1]."""
    err = (got.float() - truth.float()).pow(2).mean(1)  # [F, H, W]
    mask = torch.as_tensor(columns)[:, None, :].expand_as(err)
    return float(10 * torch.log10(1.0 / err[mask].mean().clamp(min=1e-10)))


def score_episode(pipeline: Pipeline, cfg: EvalConfig, ep, k: int, seed: int, gap: float,
                  other=None, max_tokens: int = 0, merge: str = "similar") -> dict[str, Any]:
    """Teacher-forced and free-running scores for one episode, per history mode.

    ``other``: another episode of the same kind and gap, whose history replaces this one's
    (all but the add-on window) in one more encoder-mode prediction. ``max_tokens``/``merge``: the
    history-token cap of both histories (0: none); the tokens each held are recorded.
    """
    s, fps = pipeline.preset.video.section_frames, ep.fps
    lat = encode_like_pipeline(pipeline, ep.frames, k)  # true history: start frame + k sections
    section = range(1 + k * s, 1 + (k + 1) * s)
    truth = uint8_to_unit(ep.frames[section.start : section.stop])
    win = pipeline.preset.history.window_frames
    columns = memory_columns(ep.camera_x, section, win, ep.frames.shape[2])
    pairs = first_visits(ep.camera_x, section, max(1, int(gap * fps / 2)))
    true_all = uint8_to_unit(ep.frames)
    out: dict[str, Any] = {"pairs": len(pairs)}
    if pairs:
        a, b = zip(*pairs)
        out["truth_self_psnr"] = float(psnr(true_all[list(a)], true_all[list(b)]).mean())
    modes = [m for m in cfg.modes if m != "encoder" or pipeline.encoder is not None]
    for mode in modes:
        row: dict[str, Any] = {}
        gen = _generation(pipeline, ep, mode, seed, k + 1, k, lat, max_tokens, merge)
        row["teacher_forced_history_tokens"] = gen.history.num_tokens
        got = uint8_to_unit(pipeline.generate_section(gen).frames)
        row["teacher_forced_psnr"] = float(psnr(got, truth).mean())
        row["teacher_forced_ssim"] = float(ssim(got, truth).mean())
        if columns.any():
            row["teacher_forced_psnr_memory_columns"] = masked_psnr(got, truth, columns)
        if mode == "encoder" and other is not None:
            swapped = encode_like_pipeline(pipeline, other.frames, k)
            if win:
                swapped[:, :, -win:] = lat[:, :, -win:]
            got = uint8_to_unit(pipeline.generate_section(_generation(pipeline, ep, mode, seed, k + 1, k, swapped)).frames)
            row["teacher_forced_psnr_other_history"] = float(psnr(got, truth).mean())
        if cfg.free_running:
            gen = _generation(pipeline, ep, mode, seed, k + 1, 0, lat[:, :, :1], max_tokens, merge)
            video, most = [ep.frames[:1]], 0
            for _ in range(k + 1):
                most = max(most, gen.history.num_tokens)  # the tokens each section was generated from
                video.append(pipeline.generate_section(gen).frames)
            row["free_running_history_tokens"] = most
            own = uint8_to_unit(np.concatenate(video))
            row["free_running_psnr_vs_truth"] = float(psnr(own[section.start : section.stop], truth).mean())
            if pairs:
                a, b = zip(*pairs)
                row["free_running_psnr_vs_first_visit"] = float(psnr(own[list(a)], own[list(b)]).mean())
                row["free_running_ssim_vs_first_visit"] = float(ssim(own[list(a)], own[list(b)]).mean())
        out[mode] = row
    return out


@torch.no_grad()
def score_clip(pipeline: Pipeline, cfg: EvalConfig, item: dict[str, Any], seed: int) -> dict[str, Any]:
    """A prepared clip's last section from its true history before it, per history mode (teacher-forced)."""
    bb, v = pipeline.backbone, pipeline.preset.video
    lat, video = clip_of(item, bb)
    n = bb.geometry.latent_frames(v.section_frames)
    t = lat.shape[2]
    k = (t - 1) // n  # sections after the start latent
    if k < 2:
        raise InputError("data.root", f"prepared clips of {t} latent frames hold {k} section(s); revisit needs 2 or more")
    history = lat[:, :, : 1 + (k - 1) * n].cpu()
    first = bb.geometry.pixel_frames(history.shape[2])
    truth = uint8_to_unit(_to_uint8(video[:, first:]))
    caption = item["caption"]
    out: dict[str, Any] = {"history_seconds": first / v.fps}
    modes = [m for m in cfg.modes if m != "encoder" or pipeline.encoder is not None]
    for mode in modes:
        req = GenerationRequest(prompt=caption, seconds=bb.geometry.pixel_frames(t) / v.fps, seed=seed, history_mode=mode)
        hist = HistoryState(pipeline.encoder if mode == "encoder" else None, bb.device)
        hist.append(history)
        gen = Generation(req, parse_storyboard(caption), k, hist, next_section=k - 1)
        gen.image_cond = bb.encode_image(video[:, 0].to(bb.device), history[:, :, :1].to(bb.device))
        got = uint8_to_unit(pipeline.generate_section(gen).frames)
        m = min(len(got), len(truth))  # the same frames, whatever the decode holds back
        out[mode] = {"teacher_forced_psnr": float(psnr(got[-m:], truth[-m:]).mean()),
                     "teacher_forced_ssim": float(ssim(got[-m:], truth[-m:]).mean())}
    return out


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """``[3, F, H, W]`` in [-1, 1] -> ``uint8 [F, H, W, 3]``."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()


def revisit_footage(pipe: Pipeline, cfg: EvalConfig) -> dict[str, Any]:
    """``{"real_footage": {"<history>s": cell}}``: every held-out prepared clip, in the toy's table cells."""
    data = eval_dataset(cfg, pipe)
    eps = [score_clip(pipe, cfg, data[i], cfg.seed * 1000 + i) for i in range(len(data))]
    agg: dict[str, Any] = {"episodes": len(eps)}
    for mode in cfg.modes:
        rows = [e[mode] for e in eps if mode in e]
        if rows:
            agg[mode] = {m: summary([r[m] for r in rows]) for m in rows[0]}
    if "encoder" in cfg.modes and "window" in cfg.modes:
        agg["margin"] = paired_margins(eps)
    return {"real_footage": {f"{eps[0]['history_seconds']:g}s": agg}}


def run_revisit(cfg: EvalConfig) -> dict[str, Any]:
    """Revisit consistency for every model, kind and gap; writes JSON + PNG to ``cfg.out``."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"metric": "revisit", "models": {}, "config": cfg_dict(cfg)}
    for label, path in parse_models(cfg.models):
        pipe = load_for_eval(path, cfg)
        per: dict[str, Any] = revisit_footage(pipe, cfg) if cfg.data.kind == "prepared" else {}
        for kind in cfg.kinds if cfg.data.kind != "prepared" else ():
            for gap in cfg.returns_after:
                made = [_ep(pipe, cfg, kind, gap, i) for i in range(cfg.data.num_videos)]
                eps = [score_episode(pipe, cfg, *m, gap, other=made[(i + 1) % len(made)][0] if len(made) > 1 else None)
                       for i, m in enumerate(made)]
                per.setdefault(kind, {})[f"{gap:g}s"] = aggregate(eps, cfg.modes)
        results["models"][label] = {"path": str(path), "history_guidance": pipe.preset.history.guidance, **per}
    (out / "revisit.json").write_text(json.dumps(results, indent=2))
    plot_revisit(results, out / "revisit.png")
    return results


def aggregate(eps: list[dict[str, Any]], modes: list[str]) -> dict[str, Any]:
    """One table cell from :func:`score_episode` results: each mode's metrics summarised, and the paired margins."""
    agg: dict[str, Any] = {"episodes": len(eps), "truth_self_psnr": summary(
        [e["truth_self_psnr"] for e in eps if "truth_self_psnr" in e])}
    for mode in modes:
        rows = [e[mode] for e in eps if mode in e]
        if rows:
            agg[mode] = {m: summary([r[m] for r in rows if m in r]) for m in rows[0]}
    if "encoder" in modes and "window" in modes:
        agg["margin"] = paired_margins(eps)
    return agg


def paired_margins(eps: list[dict[str, Any]]) -> dict[str, Any]:
    """``encoder`` − ``window`` per episode, summarised (mean ± standard error of the paired differences).

    Both modes score the same episodes, so the per-episode difference cancels
    what the world itself contributes: its standard error is the one to read
    a margin by (smaller than the two modes' own errors combined).
    """
    out = {}
    for m in ("teacher_forced_psnr", "free_running_psnr_vs_first_visit", "teacher_forced_psnr_memory_columns"):
        d = [e["encoder"][m] - e["window"][m] for e in eps
             if m in e.get("encoder", {}) and m in e.get("window", {})]
        if d:
            out[m] = summary(d)
    return out


def summary_lines(results: dict[str, Any]) -> list[str]:
    """One line per model, episode kind and gap: mean PSNR (dB) ± standard error, ``encoder`` vs ``window`` and
    the margin (± the standard error of the paired per-episode differences)."""
    def mean(cell: dict, mode: str, metric: str) -> float:
        return cell.get(mode, {}).get(metric, {}).get("mean", float("nan"))

    def se(cell: dict, mode: str, metric: str) -> str:
        s = cell.get(mode, {}).get(metric, {}).get("se", float("nan"))
        return "" if math.isnan(s) else f" ± {s:.1f}"

    lines = []
    for label, row in results["models"].items():
        lines.append(f"{label} (history guidance {row.get('history_guidance', 1.0):g}): encoder vs window, dB "
                     "(mean ± standard error over episodes)")
        for kind, gaps in row.items():
            if not isinstance(gaps, dict):
                continue
            for gap, cell in gaps.items():
                parts = []
                for name, metric in (("teacher-forced", "teacher_forced_psnr"),
                                     ("free-running vs first visit", "free_running_psnr_vs_first_visit"),
                                     ("memory-only pixels", "teacher_forced_psnr_memory_columns")):
                    e, w = mean(cell, "encoder", metric), mean(cell, "window", metric)
                    if not (math.isnan(e) and math.isnan(w)):
                        parts.append(f"{name} {e:.1f}{se(cell, 'encoder', metric)} vs {w:.1f}{se(cell, 'window', metric)}"
                                     f" ({e - w:+.1f}{se(cell, 'margin', metric)})")
                swap = mean(cell, "encoder", "teacher_forced_psnr_other_history")
                if not math.isnan(swap):
                    parts.append(f"another episode's history {swap:.1f}{se(cell, 'encoder', 'teacher_forced_psnr_other_history')}")
                lines.append(f"  {kind.replace('_', ' ')} {gap} ({cell.get('episodes', 0)} episodes): " + "; ".join(parts))
    return lines


def _ep(pipe: Pipeline, cfg: EvalConfig, kind: str, gap: float, i: int):
    ep, k, seed = make_episode(pipe, cfg, kind, gap, i)
    return ep, k, seed


def plot_revisit(results: dict[str, Any], png: Path) -> None:
    """Teacher-forced PSNR and free-running PSNR vs the first visit, by episode kind and gap."""
    import matplotlib  # matplotlib: only when a chart is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: only when a chart is drawn

    models = results["models"]
    groups = [(k, g) for lb in models for k, gaps in models[lb].items() if isinstance(gaps, dict) for g in gaps]
    groups = list(dict.fromkeys(groups))
    series = [(lb, m) for lb in models for m in ("encoder", "window")
              if any(m in models[lb].get(k, {}).get(g, {}) for k, g in groups)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    width = 0.8 / max(1, len(series))
    panels = (("teacher_forced_psnr", "teacher-forced: PSNR vs true frames"),
              ("free_running_psnr_vs_first_visit", "free-running: PSNR vs own first visit"))
    for ax, (metric, title) in zip(axes, panels):
        for j, (lb, mode) in enumerate(series):
            cells = [models[lb].get(k, {}).get(g, {}).get(mode, {}).get(metric, {}) for k, g in groups]
            ax.bar([i + j * width for i in range(len(groups))], [c.get("mean", float("nan")) for c in cells], width,
                   yerr=[c.get("se", 0.0) for c in cells], capsize=2, label=f"{lb} / {mode}")
        if metric.startswith("free"):
            ceil = [next(iter(models.values())).get(k, {}).get(g, {}).get("truth_self_psnr", {}).get("mean", float("nan"))
                    for k, g in groups]
            ax.plot([i + 0.4 - width / 2 for i in range(len(groups))], ceil, "k_", ms=20, label="true video")
        ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(groups))],
                      [f"{k.replace('_', ' ')}\n{g}" for k, g in groups], fontsize=7)
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
