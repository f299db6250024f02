"""Step caching (diffusers' First Block Cache): DiT passes saved, and what they cost, measured in one run.

* toy (``toy-cpu``, the embedded model): for ``off`` and each cache threshold,
  full DiT passes per section (a pass that runs every block; cached steps run
  only the first block) over all calls, and the quality against ``off`` on
  held-out toy worlds (seeds 1,000,000 + i): fidelity (camera holds, first
  section from the start frame vs the true world, as ``toy_quality.py``) and
  free-running revisit PSNR (the return section of a pan away and back vs the
  model's own first visit, as ``eval revisit``). A run with half the steps and
  no cache is the plain alternative with the same pass budget.
* tiny FramePack-F1 (``tests/presets/tiny-hunyuan.toml``, random weights, the
  parity test's model): passes per section and max abs difference of the
  frames against ``off``. Random weights change a lot from step to step, so the
  presets' thresholds skip nothing there; ``--f1-threshold`` shows the
  mechanism on that path (its frames mean nothing).

    nice -n 10 python benchmarks/step_cache.py [--worlds 8] [--thresholds 0.3,0.4]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from toy_quality import psnr

from framepack_history.backbones.toyworld import EVAL_SEED_START, World, WorldSpec
from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.generation import step_cache
from framepack_history.generation.loading import build_encoder, load_backbone
from framepack_history.generation.pipeline import Pipeline, SectionDone
from framepack_history.training.evaluate import EvalConfig
from framepack_history.training.revisit import make_episode, score_episode
from framepack_history.training.settings import DataConfig

ROOT = Path(__file__).resolve().parent.parent


class Counted:
    """Sums the DiT passes of every section a pipeline generates (wraps this one pipeline's method)."""

    def __init__(self, pipe: Pipeline) -> None:
        self.calls = self.full = self.sections = 0
        inner = pipe.generate_section

        def generate_section(gen, on_step=None):
            done = inner(gen, on_step)
            self.calls += done.dit_passes["calls"]
            self.full += done.dit_passes["full"]
            self.sections += 1
            return done

        pipe.generate_section = generate_section  # this instance only, until :meth:`close`
        self._pipe = pipe

    def close(self) -> None:
        del self._pipe.generate_section  # back to the class's method


def with_threshold(backbone: str, threshold: float | None) -> str:
    """The setting to request for ``threshold`` (the benchmark sweeps ``fast``'s threshold)."""
    if threshold is None:
        return "off"
    step_cache.THRESHOLDS[backbone] = {**step_cache.THRESHOLDS[backbone], "fast": threshold}
    return "fast"


def toy_row(pipe: Pipeline, setting: str, steps: int, worlds: int, gap: float) -> dict:
    """Passes, fidelity and free-running revisit PSNR for one setting on ``worlds`` held-out worlds."""
    pipe.preset.sampling.cache, pipe.preset.sampling.steps = setting, steps
    count = Counted(pipe)
    v = pipe.preset.video
    spec, s = WorldSpec(view=v.width, fps=v.fps), v.section_frames
    fid = []
    for i in range(worlds):
        seed = EVAL_SEED_START + i
        ep = World.from_seed(seed, spec).render("0s: camera holds", (1 + s) / v.fps)
        req = GenerationRequest(prompt=ep.caption, seconds=s / v.fps, seed=seed)
        got = next(e for e in pipe.run(req) if isinstance(e, SectionDone)).frames
        fid.append(psnr(got, ep.frames[1 : 1 + s]))
    cfg = EvalConfig(models=["x"], modes=["encoder"], data=DataConfig(kind="toyworld", split="eval", num_videos=worlds))
    revisit = []
    for i in range(worlds):
        ep, k, seed = make_episode(pipe, cfg, "pan_away_and_back", gap, i)
        row = score_episode(pipe, cfg, ep, k, seed, gap)["encoder"]
        revisit.append(row["free_running_psnr_vs_first_visit"])
    count.close()
    return {"calls": count.calls, "full": count.full, "fidelity": float(np.mean(fid)), "revisit": float(np.mean(revisit))}


def toy(args: argparse.Namespace) -> None:
    preset = load_preset("toy-cpu")
    bb = load_backbone(preset.model, "cpu", "float32")
    pipe = Pipeline(bb, build_encoder(preset.model, bb), preset)
    steps = preset.sampling.steps
    shipped = dict(step_cache.THRESHOLDS["toy"])
    rows = [("off", None, steps)] + [(f"{name} ({th:g})", th, steps) for name, th in shipped.items()]
    rows += [(f"threshold {th:g}", th, steps) for th in args.thresholds if th not in shipped.values()]
    rows.append((f"off, {steps // 2} steps", None, steps // 2))
    print(f"toy-cpu: {steps} Euler steps, history guidance {preset.history.guidance:g} (two calls per step), "
          f"{args.worlds} held-out worlds; fidelity = camera holds, first section vs the true world; "
          f"revisit = free-running pan away and back ({args.gap:g} s), return section vs its own first visit")
    print(f"{'setting':<22}{'full passes / calls':>22}{'fewer passes':>14}{'fidelity dB':>13}{'Δ':>7}"
          f"{'revisit dB':>12}{'Δ':>7}{'wall s':>8}")
    base = None
    for label, th, n in rows:
        t0 = time.perf_counter()
        r = toy_row(pipe, with_threshold("toy", th), n, args.worlds, args.gap)
        wall = time.perf_counter() - t0
        base = base or r
        ratio = base["calls"] / r["full"]  # against every block of every step of the preset
        print(f"{label:<22}{r['full']:>12} / {r['calls']:<9}{ratio:>12.2f}x{r['fidelity']:>13.2f}"
              f"{r['fidelity'] - base['fidelity']:>+7.2f}{r['revisit']:>12.2f}{r['revisit'] - base['revisit']:>+7.2f}"
              f"{wall:>8.1f}")
    step_cache.THRESHOLDS["toy"] = shipped


def tiny_f1(args: argparse.Namespace) -> None:
    preset = load_preset(ROOT / "tests/presets/tiny-hunyuan.toml")
    preset.sampling.steps = args.f1_steps
    bb = load_backbone(preset.model, "cpu", "float32")
    pipe = Pipeline(bb, None, preset)
    shipped = dict(step_cache.THRESHOLDS["hunyuan_framepack"])
    rows = [("off", None)] + [(f"{n} ({th:g})", th) for n, th in shipped.items()]
    rows.append((f"threshold {args.f1_threshold:g}", args.f1_threshold))
    print(f"\ntiny FramePack-F1 (random weights, window mode, {args.f1_steps} UniPC steps, 3 sections, text-to-video):")
    print(f"{'setting':<22}{'full passes / calls':>22}{'per section':>16}{'max abs diff vs off':>22}")
    ref = None
    for label, th in rows:
        req = GenerationRequest(prompt="a red circle moves left", seconds=3 * preset.video.section_frames / preset.video.fps,
                                seed=1, history_mode="window", cache=with_threshold("hunyuan_framepack", th))
        done = [e for e in pipe.run(req) if isinstance(e, SectionDone)]
        frames = np.concatenate([d.frames for d in done]).astype(np.int16)
        ref = frames if ref is None else ref
        full, calls = sum(d.dit_passes["full"] for d in done), sum(d.dit_passes["calls"] for d in done)
        per = ", ".join(str(d.dit_passes["full"]) for d in done)
        print(f"{label:<22}{full:>12} / {calls:<9}{per:>16}{int(np.abs(frames - ref).max()):>22}")
    step_cache.THRESHOLDS["hunyuan_framepack"] = shipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", type=int, default=8)
    ap.add_argument("--gap", type=float, default=10.0, help="revisit: seconds until the camera is back")
    ap.add_argument("--thresholds", default="", help="more toy thresholds to measure, e.g. 0.25,0.5")
    ap.add_argument("--f1-steps", type=int, default=25)
    ap.add_argument("--f1-threshold", type=float, default=0.4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    args.thresholds = [float(x) for x in args.thresholds.split(",") if x.strip()]
    torch.set_num_threads(args.threads)
    toy(args)
    tiny_f1(args)


if __name__ == "__main__":
    main()
