"""Evaluation: what the embedding preserves, and whether revisited places come back the same.

``eval retrieval``
    Stage-I-style frame retrieval on held-out clips: encode the clean
    history, ask the DiT for one history frame at its own time position
    (the sampler from :mod:`framepack_history.sampling`, nothing else as
    context), decode, and score PSNR/SSIM against the original frame, by
    position in the history (old, middle, recent third). Every model sees
    the same clips, query positions and noise. Baselines at the same token
    budget are separate (small) training runs given as more ``label=folder``
    entries: the FramePack-style large patchifier (``encoder.kind =
    "large_patchifier"``), LR branch only, HR branch only, no Stage I.

``eval revisit`` (see :mod:`.revisit`)
    Pan-away-and-back and leave-and-return storyboards of the toy world;
    on prepared footage, the last section of each clip from its true history.

Both read real footage from a ``prepare-data`` folder (``data.kind =
"prepared"``, held-out videos by ``data.files``). There a clip's truth is its
VAE reconstruction (the folder keeps latents, not pixels), so retrieval's
``vae`` row is the ceiling of decoding one latent alone against the whole clip.

Models are run folders written by training (``<run>/preset.toml``) or
preset files.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from framepack_history.config.presets import MAX_HISTORY_GUIDANCE, load_preset
from framepack_history.errors import InputError
from framepack_history.generation.frame_query import psnr, retrieve, ssim, to_unit, uint8_to_unit  # noqa: F401
from framepack_history.generation.loading import load_backbone
from framepack_history.generation.pipeline import Pipeline
from framepack_history.history.state import HistoryState
from framepack_history.training.data import PreparedDataset, pixel_dataset
from framepack_history.training.modeling import load_encoder
from framepack_history.training.settings import DataConfig, find_path
from framepack_history.training.stages import track_of

BANDS = ("old", "middle", "recent")


@dataclass
class EvalConfig:
    models: list[str] = field(default_factory=list)  # "label=run folder or preset .toml"
    out: str = "outputs/eval"
    seed: int = 0
    device: str = "cpu"
    steps: int = 0  # 0 = each model's preset
    history_guidance: float = -1.0  # revisit: < 0 = each model's preset (history.guidance); 1 = off
    data: DataConfig = field(default_factory=lambda: DataConfig(split="eval", num_videos=8))
    queries_per_band: int = 2  # retrieval: history frames asked per clip and band
    returns_after: list[float] = field(default_factory=lambda: [10.0, 20.0])  # revisit gaps (s)
    gaps: list[float] = field(default_factory=lambda: [5.0, 20.0, 60.0, 240.0])  # the gap sweep's gaps (s)
    kinds: list[str] = field(default_factory=lambda: ["pan_away_and_back", "leave_and_return"])
    modes: list[str] = field(default_factory=lambda: ["encoder", "window"])
    free_running: bool = True  # revisit: also generate whole episodes from the start frame


def check_eval_config(cfg: EvalConfig) -> EvalConfig:
    """Semantic checks; errors name the key."""
    if not cfg.models:
        raise InputError("models", "is empty: give [\"label=run folder\", ...]")
    bad = [k for k in cfg.kinds if k not in ("pan_away_and_back", "leave_and_return")]
    if bad:
        raise InputError("kinds", f"unknown {bad[0]!r} (pan_away_and_back, leave_and_return)")
    bad = [m for m in cfg.modes if m not in ("encoder", "window")]
    if bad:
        raise InputError("modes", f"unknown {bad[0]!r} (encoder, window)")
    if any(g <= 0 for g in cfg.returns_after) or cfg.queries_per_band < 1 or cfg.steps < 0:
        raise InputError("returns_after", "gaps must be > 0, queries_per_band >= 1 and steps >= 0")
    if not cfg.gaps or not all(g > 0 for g in cfg.gaps):  # also refuses NaN
        raise InputError("gaps", "give one or more gaps in seconds, each > 0")
    if not cfg.history_guidance <= MAX_HISTORY_GUIDANCE:  # also refuses NaN
        raise InputError("history_guidance", f"must be <= {MAX_HISTORY_GUIDANCE:g} (< 0: each model's preset)")
    return cfg


# ------------------------------------------------------------------ metrics
def summary(values: list[float], episodes: list[int] | None = None) -> dict[str, float]:
    """Mean, std, count and the standard error of the mean (``se``).

    ``episodes`` (one id per value): values of one episode are not independent
    (several queries of one clip share its world), so the standard error is
    then taken over the per-episode means, ``std / sqrt(episodes)``.
    """
    t = torch.tensor(values, dtype=torch.float64) if values else torch.zeros(0, dtype=torch.float64)
    if episodes is None:
        units = t
    else:
        if len(episodes) != len(values):
            raise ValueError(f"summary: {len(episodes)} episode ids for {len(values)} values")
        ids = sorted(set(episodes))
        units = torch.stack([t[[j for j, e in enumerate(episodes) if e == i]].mean() for i in ids]) if ids else t
    se = float(units.std() / len(units) ** 0.5) if len(units) > 1 else float("nan")
    out = {"mean": float(t.mean()) if len(t) else float("nan"),
           "std": float(t.std()) if len(t) > 1 else 0.0, "n": len(t), "se": se}
    if episodes is not None:
        out["episodes"] = len(units)
    return out


def mean_se(cell: dict[str, Any], digits: int = 1) -> str:
    """``"16.8 ± 0.4"``: a summary as mean ± standard error."""
    se = cell.get("se", float("nan"))
    return f"{cell['mean']:.{digits}f}" + ("" if se != se else f" ± {se:.{digits}f}")


# ------------------------------------------------------------------ models
def parse_models(entries: list[str]) -> list[tuple[str, Path]]:
    """``["ours=outputs/train/a", "lr-only=..."]`` -> ``[(label, path)]``."""
    out = []
    for e in entries:
        label, eq, path = e.partition("=")
        if not eq:
            label, path = Path(e).stem if e.endswith(".toml") else Path(e).name, e
        out.append((label.strip(), find_path(path.strip())))
    if not out:
        raise InputError("models", "is empty: give [\"label=run folder\", ...]")
    return out


def load_run(path: Path, device: str = "cpu") -> Pipeline:
    """A pipeline from a training run folder (its ``preset.toml``) or a preset file."""
    preset = load_preset(path / "preset.toml" if path.is_dir() else path)
    preset.hardware.device = device
    backbone = load_backbone(preset.model, device, "float32")
    encoder = None
    if preset.model.encoder:
        encoder = load_encoder(find_path(preset.model.encoder)).to(backbone.device).eval()
        encoder.set_patch_embedding(backbone.patch_embedding())
    backbone.transformer.eval()
    return Pipeline(backbone, encoder, preset)


def load_for_eval(path: Path, cfg: EvalConfig) -> Pipeline:
    """:func:`load_run` with the eval config's sampling steps and history guidance (each only where it sets one)."""
    pipe = load_run(path, cfg.device)
    if cfg.steps:
        pipe.preset.sampling.steps = cfg.steps
    if cfg.history_guidance >= 0:
        pipe.preset.history.guidance = cfg.history_guidance
    return pipe


def eval_dataset(cfg: EvalConfig, pipeline: Pipeline):
    """Pixel clips (toy world, video folder) or the latent clips of a ``prepare-data`` folder."""
    v = pipeline.preset.video
    if cfg.data.kind == "prepared":
        data = PreparedDataset(find_path(cfg.data.root), cfg.data.files, cfg.data.exclude_files, cfg.data.bucket)
        made = {k: data.settings.get(k) for k in ("backbone", "fps")}
        if made != {"backbone": pipeline.backbone.name, "fps": v.fps}:
            raise InputError("data.root", f"{cfg.data.root} was prepared for {made}, not for this model "
                                          f"({pipeline.backbone.name} at {v.fps} fps)")
        return data
    return pixel_dataset(cfg.data, v.width, v.height, v.fps)


@torch.no_grad()
def clip_of(item: dict[str, Any], backbone) -> tuple[torch.Tensor, torch.Tensor]:
    """``(latents [1, C, T, h, w], pixels [3, F, H, W] in [-1, 1])`` of an item; prepared clips decode their latents."""
    if "latents" in item:
        lat = item["latents"][None].to(backbone.device, torch.float32)
        return lat, backbone.vae_decode(lat)[0].float().cpu()
    video = item["video"]
    return backbone.vae_encode(video[None].to(backbone.device)).float(), video


# --------------------------------------------------------------- retrieval
def query_positions(t: int, per_band: int, gen: torch.Generator) -> dict[str, list[int]]:
    """Random latent-frame positions inside each third of a ``t``-frame history."""
    out = {}
    for i, band in enumerate(BANDS):
        lo, hi = i * t // 3, max(i * t // 3 + 1, (i + 1) * t // 3)
        out[band] = sorted(torch.randint(lo, hi, (per_band,), generator=gen).tolist())
    return out


@torch.no_grad()
def run_retrieval(cfg: EvalConfig) -> dict[str, Any]:
    """Retrieval PSNR/SSIM by history position for every model; writes JSON + PNG to ``cfg.out``."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"metric": "retrieval", "models": {}, "config": cfg_dict(cfg)}
    for label, path in parse_models(cfg.models):
        pipe = load_run(path, cfg.device)
        if pipe.encoder is None:
            raise InputError("models", f"{label}: {path} has no history encoder to retrieve from")
        bb, v = pipe.backbone, pipe.preset.video
        steps = cfg.steps or pipe.preset.sampling.steps
        data = eval_dataset(cfg, pipe)
        scores: dict[str, dict[str, list[float]]] = {b: {"psnr": [], "ssim": []} for b in (*BANDS, "vae")}
        clips: dict[str, list[int]] = {b: [] for b in (*BANDS, "vae")}  # the clip of each score
        tokens = 0
        for i in range(len(data)):
            item = data[i]
            lat, video = clip_of(item, bb)
            t = lat.shape[2]
            hist = HistoryState(pipe.encoder, bb.device)
            track = track_of({k: v[None] for k, v in item.items() if k == "camera_x"}, bb)
            track = None if track is None else track[0].cpu()
            tokens = hist.append(lat, frame_context=track)  # encoded once per clip, exactly as at generation time
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + i)  # same queries for every model
            for band, positions in query_positions(t, cfg.queries_per_band, gen).items():
                for q, pos in enumerate(positions):
                    x0 = retrieve(pipe, hist, item["caption"], pos, steps, cfg.seed * 7 + i * 1000 + q,
                                  None if track is None else track[pos : pos + 1])
                    with torch.no_grad():
                        got = to_unit(bb.vae_decode(x0)[:, :, -1])
                        rec = to_unit(bb.vae_decode(lat[:, :, pos : pos + 1])[:, :, -1])
                    pix = bb.geometry.pixel_frames(pos + 1) - 1  # last pixel frame of latent frame pos
                    truth = to_unit(video[None, :, pix].to(got.device))
                    scores[band]["psnr"].append(float(psnr(got, truth)))
                    scores[band]["ssim"].append(float(ssim(got, truth)))
                    scores["vae"]["psnr"].append(float(psnr(rec, truth)))
                    scores["vae"]["ssim"].append(float(ssim(rec, truth)))
                    clips[band].append(i)
                    clips["vae"].append(i)
        row: dict[str, Any] = {k: {m: summary(v_, clips[k]) for m, v_ in s.items()} for k, s in scores.items()}
        row["all"] = {m: summary([x for b in BANDS for x in scores[b][m]], [c for b in BANDS for c in clips[b]])
                      for m in ("psnr", "ssim")}
        seconds = video.shape[1] / v.fps
        row["history_tokens"] = tokens
        row["history_tokens_per_second"] = tokens / seconds
        row["encoder"] = {"class": type(pipe.encoder).__name__, **{k: _jsonable(val) for k, val in pipe.encoder.config.items()
                                                                    if not k.startswith("_")}}
        row["path"] = str(path)
        row["truth"] = "vae_reconstruction" if cfg.data.kind == "prepared" else "pixels"
        results["models"][label] = row
    (out / "retrieval.json").write_text(json.dumps(results, indent=2))
    plot_retrieval(results, out / "retrieval.png")
    return results


def plot_retrieval(results: dict[str, Any], png: Path) -> None:
    """PSNR and SSIM by history position, one bar per model (VAE reconstruction as the ceiling line)."""
    import matplotlib  # matplotlib: only when a chart is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: only when a chart is drawn

    labels = list(results["models"])
    groups = [*BANDS, "all"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    width = 0.8 / max(1, len(labels))
    for ax, metric in zip(axes, ("psnr", "ssim")):
        for j, label in enumerate(labels):
            row = results["models"][label]
            vals = [row[g][metric]["mean"] for g in groups]
            err = [row[g][metric].get("se", 0.0) for g in groups]  # ± standard error
            ax.bar([i + j * width for i in range(len(groups))], vals, width, yerr=err, capsize=2, label=label)
        ceiling = sum(results["models"][lb]["vae"][metric]["mean"] for lb in labels) / max(1, len(labels))
        if metric == "ssim" or ceiling < 90:  # a lossless VAE (100 dB) would squash the bars
            ax.axhline(ceiling, color="k", ls="--", lw=1, label="VAE reconstruction")
        ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(groups))], groups)
        ax.set_ylabel("PSNR (dB)" if metric == "psnr" else "SSIM")
        ax.set_title(f"retrieval {metric.upper()} by history position")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def cfg_dict(cfg: Any) -> dict[str, Any]:

    return dataclasses.asdict(cfg)
