"""Bounded history on five-minute toy videos: tokens, per-section cost, revisit after a 4-minute excursion, recall by age.

The episodes are held-out toy worlds (``toyworld``): the camera leaves its start view, holds one view away for
four minutes and comes back (``leave_and_return``), and the video goes on to five minutes. Every figure is
measured with and without ``history.max_tokens`` (the shipped model, ``toy-cpu``, its history guidance):

* **tokens** after five minutes of history;
* **per-section time**, mean of the last 10 sections over the first 10 of a five-minute job (denoise + decode +
  history append, coarse re-encodes included). By default the last 10 continue from the true history of the
  first 290 sections (a job at that point), measured in alternating rounds (first, last, first, last; the faster
  of each section's rounds) so that a changing machine load hits both alike; ``--full`` generates the whole job
  section by section instead;
* **revisit margin**: the return section after the 4-minute excursion predicted from the true history
  (teacher-forced) in ``encoder`` mode vs the ``window`` baseline, PSNR against the true frames;
* **recall by age**: a past frame recalled from the embedding (Stage I's frame query) 10 s, 1 min and 4 min
  before the end of that history, PSNR against the true frame.

    nice -n 10 python benchmarks/long_history.py                 # 8 worlds, the 5-minute timing from true history
    nice -n 10 python benchmarks/long_history.py --caps 0,40 --worlds 0 --full   # whole generated jobs (about 10 min)
    nice -n 10 python benchmarks/long_history.py --skip-cost --caps 0,40,80,160 --worlds 64 --merge oldest  # README rows
    nice -n 10 python benchmarks/long_history.py --skip-cost --worlds 64 --preset outputs/train/toy-long/preset.toml

``--merge`` picks the cap's merge rule (``history.merge``: similar, the default, or oldest); ``--preset`` another
model (a training run's ``preset.toml``). The margin's ± is the standard error of the paired per-world differences.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from framepack_history.backbones.toyworld import EVAL_SEED_START, World, WorldSpec, leave_and_return
from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.config.storyboard import parse_storyboard
from framepack_history.generation.frame_query import psnr, retrieve, to_unit, uint8_to_unit
from framepack_history.generation.loading import build_encoder, load_backbone
from framepack_history.generation.pipeline import Generation, Pipeline, SectionDone, to_pixels
from framepack_history.history.state import HistoryState
from framepack_history.training.revisit import encode_like_pipeline, history_of

VIDEO_S = 300.0
EXCURSION_S = 240.0  # --excursion: 20 checks the machinery against the README's 20 s leave-and-return row
AGES_S = (10.0, 60.0, 240.0)
MERGE = {"rule": "similar"}  # --merge: which groups the cap merges (history.merge)


def load_pipeline(name: str = "toy-cpu") -> Pipeline:
    preset = load_preset(name)
    bb = load_backbone(preset.model)
    bb.transformer.eval()
    return Pipeline(bb, build_encoder(preset.model, bb), preset)


def episode(pipe: Pipeline, index: int, seconds: float, excursion: float = EXCURSION_S):
    """A held-out world: leave the start view, hold one view away, be back after ``excursion`` s; ``seconds`` long."""
    v = pipe.preset.video
    spec = WorldSpec(view=v.width, fps=v.fps)
    return World.from_seed(EVAL_SEED_START + 500 + index, spec).render(leave_and_return(excursion, spec), seconds)


def true_history(pipe: Pipeline, ep, sections: int, cap: int, mode: str = "encoder") -> HistoryState:
    """The history a job holds after ``sections`` sections of the true video (start frame included)."""
    return history_of(pipe, ep, encode_like_pipeline(pipe, ep.frames, sections), mode, cap, MERGE["rule"])


def generation(pipe: Pipeline, ep, hist: HistoryState, start: int, total: int, mode: str, seed: int) -> Generation:
    req = GenerationRequest(prompt=ep.caption, seconds=total * pipe.preset.video.section_frames / ep.fps, seed=seed,
                            history_mode=mode)
    gen = Generation(req, parse_storyboard(ep.caption), total, hist, next_section=start)
    gen.image_cond = pipe.backbone.encode_image(to_pixels(ep.frames[:1])[0, :, 0].to(pipe.backbone.device))
    return gen


def timed_sections(pipe: Pipeline, ep, cap: int, start: int, count: int) -> tuple[list[float], int]:
    """Seconds per section for ``count`` sections after ``start`` true ones; the tokens at the end."""
    hist = true_history(pipe, ep, start, cap)
    gen = generation(pipe, ep, hist, start, start + count, "encoder", seed=7)
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        pipe.generate_section(gen)
        times.append(time.perf_counter() - t0)
    return times, hist.num_tokens


def section_cost(pipe: Pipeline, ep, cap: int, full: bool, rounds: int) -> dict:
    total = round(VIDEO_S * ep.fps / pipe.preset.video.section_frames)
    if full:  # the whole job, generated section by section
        req = GenerationRequest(prompt=ep.caption, seconds=VIDEO_S, seed=7, max_history_tokens=cap)
        times, tokens = [], 0
        for ev in pipe.run(req):
            if isinstance(ev, SectionDone):
                times.append(sum(ev.timings.values()))
                tokens = ev.history_tokens
        first, last = times[:10], times[-10:]
    else:
        best_first, best_last = [float("inf")] * 10, [float("inf")] * 10
        for _ in range(rounds):
            f, _ = timed_sections(pipe, ep, cap, 0, 10)
            la, tokens = timed_sections(pipe, ep, cap, total - 10, 10)
            best_first = [min(a, b) for a, b in zip(best_first, f)]
            best_last = [min(a, b) for a, b in zip(best_last, la)]
        first, last = best_first, best_last
        tokens = true_history(pipe, ep, total, cap).num_tokens
    return {"tokens_at_5min": tokens, "first10_s": float(np.mean(first)), "last10_s": float(np.mean(last)),
            "ratio": float(np.mean(last) / np.mean(first))}


@torch.no_grad()
def revisit_and_recall(pipe: Pipeline, ep, caps: list[int], index: int, excursion: float) -> dict:
    """Teacher-forced return section (encoder per cap, and window) and recall PSNR by age, for one world."""
    s, fps = pipe.preset.video.section_frames, ep.fps
    k = (round(excursion * fps) - 1) // s  # the section holding the return frame
    section = slice(1 + k * s, 1 + (k + 1) * s)
    truth = uint8_to_unit(ep.frames[section])
    out: dict = {}
    win = true_history(pipe, ep, k, 0, mode="window")
    got = uint8_to_unit(pipe.generate_section(generation(pipe, ep, win, k, k + 1, "window", index)).frames)
    out["window"] = {"revisit_psnr": float(psnr(got, truth).mean())}
    bb = pipe.backbone
    for cap in caps:
        hist = true_history(pipe, ep, k, cap)
        row: dict = {"tokens": hist.num_tokens}
        track = hist.frame_context
        for age in AGES_S:
            pos = max(0, hist.num_frames - 1 - round(age * fps))
            x0 = retrieve(pipe, hist, ep.caption, pos, pipe.preset.sampling.steps, index * 100 + int(age),
                          track[pos : pos + 1].to(bb.device) if bool(track.any()) else None)
            got_f = to_unit(bb.vae_decode(x0)[:, :, -1])
            row[f"recall_{age:g}s_psnr"] = float(psnr(got_f, uint8_to_unit(ep.frames[pos : pos + 1]).to(got_f.device))[0])
            row[f"recall_{age:g}s_coarse"] = hist.time_reduction_at(pos)
        gen = generation(pipe, ep, hist, k, k + 1, "encoder", index)
        got = uint8_to_unit(pipe.generate_section(gen).frames)
        row["revisit_psnr"] = float(psnr(got, truth).mean())
        out[f"encoder cap {cap or 'none'}"] = row
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--caps", default="0,40,80,160", help="history-token caps to compare (0 = no cap)")
    ap.add_argument("--worlds", type=int, default=8, help="held-out worlds for revisit and recall")
    ap.add_argument("--rounds", type=int, default=2, help="alternating timing rounds (the faster of each section's)")
    ap.add_argument("--full", action="store_true", help="time whole five-minute jobs generated section by section")
    ap.add_argument("--skip-cost", action="store_true", help="revisit and recall only")
    ap.add_argument("--excursion", type=float, default=EXCURSION_S, help="seconds away before the camera returns")
    ap.add_argument("--preset", default="toy-cpu", help="preset name or .toml (a training run's preset.toml)")
    ap.add_argument("--merge", default="similar", choices=["similar", "oldest"], help="which groups the cap merges")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared, busy machine more threads spin against each other)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    caps = [int(c) for c in args.caps.split(",")]
    MERGE["rule"] = args.merge
    torch.manual_seed(0)
    t_start = time.perf_counter()
    pipe = load_pipeline(args.preset)
    v = pipe.preset.video
    print(f"toy-cpu: {v.fps} fps, {v.section_frames}-frame sections, rate {pipe.encoder.config.rate}, "
          f"history guidance {pipe.preset.history.guidance:g}, {torch.get_num_threads()} threads")
    results: dict = {"caps": caps, "worlds": args.worlds, "full": args.full, "cost": {}, "worlds_detail": []}

    ep5 = episode(pipe, 0, VIDEO_S + 1 / v.fps)
    print(f"\nper-section time, five-minute job ({'generated' if args.full else 'last 10 from the true history of 290 sections'}):")
    for cap in [] if args.skip_cost else caps:
        row = section_cost(pipe, ep5, cap, args.full, args.rounds)
        results["cost"][cap] = row
        print(f"  cap {cap or 'none':>4}: {row['tokens_at_5min']:>5} tokens at 5 min; first 10 {row['first10_s']:.3f} s, "
              f"last 10 {row['last10_s']:.3f} s per section: ratio {row['ratio']:.2f} (goal <= 1.1)")

    print(f"\nrevisit after a {args.excursion:g} s excursion and recall by age ({args.worlds} held-out worlds, true history):")
    for i in range(args.worlds):
        ep = episode(pipe, i, args.excursion + 4.0, args.excursion)
        results["worlds_detail"].append(revisit_and_recall(pipe, ep, caps, i, args.excursion))
    per = results["worlds_detail"]
    if not per:
        return _done(results, args, t_start)
    win = float(np.mean([w["window"]["revisit_psnr"] for w in per]))
    results["window_revisit_psnr"] = win
    print(f"  window: revisit {win:.2f} dB")
    results["summary"] = {}
    for cap in caps:
        key = f"encoder cap {cap or 'none'}"
        mean = {m: float(np.mean([w[key][m] for w in per])) for m in per[0][key]}
        diffs = np.array([w[key]["revisit_psnr"] - w["window"]["revisit_psnr"] for w in per])
        lo, hi = float(diffs.min()), float(diffs.max())
        se = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
        results["summary"][key] = {**mean, "margin": mean["revisit_psnr"] - win, "margin_se": se,
                                   "margin_min": lo, "margin_max": hi}
        ages = ", ".join(f"{a:g} s {mean[f'recall_{a:g}s_psnr']:.1f} dB (x{mean[f'recall_{a:g}s_coarse']:.0f})" for a in AGES_S)
        print(f"  {key}: {mean['tokens']:.0f} tokens at 4 min; revisit {mean['revisit_psnr']:.2f} dB, margin over window "
              f"{mean['revisit_psnr'] - win:+.2f} ± {se:.2f} dB ({lo:+.1f} to {hi:+.1f}; goal >= +4); recall by age {ages}")
    print("\n(x N: the time reduction of the token group holding the frame, 1 = full detail)")
    return _done(results, args, t_start)


def _done(results: dict, args: argparse.Namespace, t_start: float) -> int:
    print(f"{time.perf_counter() - t_start:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
