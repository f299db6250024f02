"""Memory controls on the trained toy: what pin, forget and borrow buy (PSNR, mean over held-out worlds).

On held-out worlds (seeds from ``EVAL_SEED_START``), text-to-video from each world's first view:

* **borrow**: an old job pans right for ``--old-seconds``; a new job in the same world holds for
  ``--hold`` seconds, then pans right over the same places. Scored: the new job's frames at camera
  positions the old job showed (its start view excluded) against the old job's frames there, with the
  old job's history borrowed and without (same seed, same noise). Target: borrowing >= 4 dB better.
* **pin**: a ``--minutes`` long video (a pan, then holds and pans elsewhere) under a tight history-token
  cap (``--cap``); at the end the frame at ``--recall-at`` s is recalled from the embedding (the memory
  inspector's frame query) and scored against the real frame: uncapped, capped, capped with that time
  pinned. Target: pinned equals uncapped (four minutes on).
* **forget**: a pan away and back (``pan_away_and_back``, ``--gap`` s); the return frames are scored
  against the model's own frames of the first visit, in ``encoder``, ``window`` and ``encoder`` with the
  first visit forgotten. Target: forgotten scores like ``window`` (the memory of it is gone).

Not measured: **cut** (the toy world's camera cannot jump to another place, so "cut away and come back"
has no toy episode; the mechanism is tested in ``tests/jobs/test_memory_controls.py``).

    python benchmarks/memory_controls.py --model toy-cpu [--worlds 16] [--only borrow,forget,pin] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from framepack_history.backbones.toyworld import EVAL_SEED_START, World, WorldSpec, pan_away_and_back  # noqa: E402
from framepack_history.config.paths import PRESET_DIR  # noqa: E402
from framepack_history.config.request import GenerationRequest  # noqa: E402
from framepack_history.generation.frame_query import psnr as unit_psnr  # noqa: E402
from framepack_history.generation.frame_query import retrieve, to_unit  # noqa: E402
from framepack_history.generation.pipeline import ContextFrames, Pipeline, SectionDone  # noqa: E402
from framepack_history.training.evaluate import load_run  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def load(spec: str) -> Pipeline:
    """``toy-cpu`` (a preset name), a preset file or a training run folder."""
    path = Path(spec)
    if not path.exists() and (PRESET_DIR / f"{spec}.toml").is_file():
        path = PRESET_DIR / f"{spec}.toml"
    return load_run(path)


def generate(pipe: Pipeline, request: GenerationRequest, borrowed=None) -> tuple[np.ndarray, object]:
    """The whole video (start frame, then every section; uint8 [F, H, W, 3]) and the finished generation."""
    frames = []
    with torch.no_grad():
        for ev in pipe.run(request, borrowed=borrowed):
            if isinstance(ev, (ContextFrames, SectionDone)):
                frames.append(ev.frames)
    return np.concatenate(frames), pipe.last_generation


def world_of(pipe: Pipeline, i: int) -> tuple[World, int]:
    v = pipe.preset.video
    seed = EVAL_SEED_START + i
    return World.from_seed(seed, WorldSpec(view=v.width, fps=v.fps)), seed


def mean_se(xs: list[float]) -> str:
    a = np.asarray(xs, np.float64)
    se = a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return f"{a.mean():.2f} ± {se:.2f}"


def bench_borrow(pipe: Pipeline, args) -> dict:
    rows = []
    for i in range(args.worlds):
        world, seed = world_of(pipe, i)
        old_board = world.caption("0s: camera pans right")
        old, gen = generate(pipe, GenerationRequest(prompt=old_board, seconds=args.old_seconds, seed=seed))
        lent = (gen.history.latents.clone(), gen.history.frame_context.clone())
        new_board = world.caption(f"0s: camera holds; {args.hold:g}s: camera pans right")
        new_seconds = args.hold + args.old_seconds
        request = GenerationRequest(prompt=new_board, seconds=new_seconds, seed=seed)
        plain, _ = generate(pipe, request)
        borrowed, _ = generate(pipe, GenerationRequest(prompt=new_board, seconds=new_seconds, seed=seed, borrow="old-job"),
                               borrowed=lent)
        x_old = world.camera_path(old_board, len(old) / world.spec.fps)[: len(old)]
        x_new = world.camera_path(new_board, len(plain) / world.spec.fps)[: len(plain)]
        pairs = [(f, int(np.nonzero(x_old == x)[0][0])) for f, x in enumerate(x_new)
                 if x != x_new[0] and (x_old == x).any()]
        if not pairs:
            continue
        a, b = zip(*pairs)
        rows.append({"world": seed, "frames": len(pairs),
                     "borrowed_psnr": psnr(borrowed[list(a)], old[list(b)]),
                     "plain_psnr": psnr(plain[list(a)], old[list(b)])})
        print(f"borrow world {seed}: {rows[-1]}", flush=True)
    margin = [r["borrowed_psnr"] - r["plain_psnr"] for r in rows]
    return {"rows": rows, "borrowed_psnr": mean_se([r["borrowed_psnr"] for r in rows]),
            "plain_psnr": mean_se([r["plain_psnr"] for r in rows]), "margin_db": mean_se(margin)}


def recall_psnr(pipe: Pipeline, gen, at: float, steps: int) -> float:
    """The memory inspector's score of the frame at ``at`` s, recalled from ``gen``'s history at its end."""
    v = pipe.preset.video
    origin = gen.history.num_frames - gen.next_section * pipe.section_latent_frames
    pos = pipe.frames_at(at, origin)
    ctx = gen.history.frame_context
    target_w = ctx[pos : pos + 1] if bool(ctx.any()) else None
    bb = pipe.backbone
    with torch.no_grad():
        x0 = retrieve(pipe, gen.history, gen.request.prompt, pos, steps or v.section_frames, 0, target_w)
        got = bb.vae_decode(x0.to(bb.dtype))[:, :, -1:]
        real = bb.vae_decode(gen.history.latents[:, :, pos : pos + 1].to(bb.device, bb.dtype))[:, :, -1:]
    return float(unit_psnr(to_unit(got[:, :, 0]), to_unit(real[:, :, 0]))[0])


def bench_pin(pipe: Pipeline, args) -> dict:
    rows = []
    steps = int(pipe.settings(GenerationRequest()).steps)
    seconds = args.minutes * 60
    for i in range(args.worlds):
        world, seed = world_of(pipe, i)
        board = world.caption(f"0s: camera pans right; 3s: camera holds; {seconds / 2:g}s: camera pans left; "
                              f"{seconds / 2 + 3:g}s: camera holds")
        row = {"world": seed}
        pin = [{"op": "pin", "start": max(0.0, args.recall_at - 1), "end": args.recall_at + 1}]
        for name, kw in (("uncapped", {"max_history_tokens": 0}), ("capped", {"max_history_tokens": args.cap}),
                         ("capped_pinned", {"max_history_tokens": args.cap, "memory": pin})):
            _, gen = generate(pipe, GenerationRequest(prompt=board, seconds=seconds, seed=seed, **kw))
            row[name] = recall_psnr(pipe, gen, args.recall_at, steps)
        rows.append(row)
        print(f"pin world {seed}: {row}", flush=True)
    return {"rows": rows, **{k: mean_se([r[k] for r in rows]) for k in ("uncapped", "capped", "capped_pinned")},
            "pinned_minus_uncapped_db": mean_se([r["capped_pinned"] - r["uncapped"] for r in rows])}


def bench_forget(pipe: Pipeline, args) -> dict:
    rows = []
    for i in range(args.worlds):
        world, seed = world_of(pipe, i)
        board = world.caption(pan_away_and_back(args.gap / 2))
        seconds = args.gap + 1.0
        xs = None
        row = {"world": seed}
        for name, kw in (("encoder", {"history_mode": "encoder"}), ("window", {"history_mode": "window"}),
                         ("forgotten", {"history_mode": "encoder",
                                        "memory": [{"op": "forget", "start": 0, "end": args.gap / 2}]})):
            video, _ = generate(pipe, GenerationRequest(prompt=board, seconds=seconds, seed=seed, **kw))
            if xs is None:
                xs = world.camera_path(board, len(video) / world.spec.fps)[: len(video)]
            gap = max(1, int(args.gap * world.spec.fps / 2))
            pairs = []
            for f in range(len(video)):
                same = np.nonzero(xs[: max(0, f - gap + 1)] == xs[f])[0]
                if len(same):
                    pairs.append((f, int(same[0])))
            a, b = zip(*pairs) if pairs else ((), ())
            row[name] = psnr(video[list(a)], video[list(b)]) if pairs else float("nan")
        rows.append(row)
        print(f"forget world {seed}: {row}", flush=True)
    return {"rows": rows, **{k: mean_se([r[k] for r in rows]) for k in ("encoder", "window", "forgotten")},
            "forgotten_minus_window_db": mean_se([r["forgotten"] - r["window"] for r in rows])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy-cpu", help="a preset name, preset file or training run folder")
    p.add_argument("--worlds", type=int, default=16)
    p.add_argument("--only", default="borrow,forget,pin", help="which: borrow, forget, pin (comma-separated)")
    p.add_argument("--old-seconds", type=float, default=8.0, help="borrow: the old job's pan")
    p.add_argument("--hold", type=float, default=2.0, help="borrow: the new job holds this long before panning")
    p.add_argument("--minutes", type=float, default=4.5, help="pin: the video's length")
    p.add_argument("--cap", type=int, default=120, help="pin: the history-token cap")
    p.add_argument("--recall-at", type=float, default=1.5, help="pin: the time recalled at the end")
    p.add_argument("--gap", type=float, default=8.0, help="forget: seconds between the first visit and the return")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    pipe = load(args.model)
    results: dict = {"model": args.model, "args": vars(args)}
    for name in [s.strip() for s in args.only.split(",") if s.strip()]:
        t0 = time.perf_counter()
        results[name] = {"borrow": bench_borrow, "forget": bench_forget, "pin": bench_pin}[name](pipe, args)
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(name, {k: v for k, v in results[name].items() if k != "rows"}, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
