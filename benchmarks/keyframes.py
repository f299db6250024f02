"""Keyframes on the toy model: does the video reach the keyframe's view at the keyframe's time?

On held-out worlds (seeds 1,000,000 + i; training uses seeds below 1,000,000) the camera pans right
from the world's start frame for ``--seconds``; the keyframe is the true world's frame at ``--at``
seconds. Each model generates the video from the start frame with the keyframe given and without it
(same seed, same noise). Scored, as PSNR against the true world:

* the frame at the keyframe's time (with vs without the keyframe: what the keyframe buys);
* the frames before it (fidelity: does leading the video to the keyframe cost the frames on the way?),
  and the last ``--near`` seconds of them (their views overlap the keyframe's: it can show what they pan into).

Mean ± standard error over worlds; a difference between two columns is given with the standard error
of the paired per-world differences.

    python benchmarks/keyframes.py --models shipped=toy-cpu keyframe=outputs/train/toy-keyframe [--worlds 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.toy_setup import load, mean_se, psnr, world_of  # noqa: E402
from framepack_history.backbones.toyworld import World  # noqa: E402
from framepack_history.config.request import GenerationRequest  # noqa: E402
from framepack_history.generation.pipeline import Pipeline, SectionDone  # noqa: E402

BOARD = "0s: camera pans right"


def video(pipe: Pipeline, world: World, seed: int, seconds: float, keyframe: dict | None) -> np.ndarray:
    """The generated frames after the start frame (uint8 [F, H, W, 3]); frame ``k`` is the world's frame ``k + 1``."""
    req = GenerationRequest(prompt=world.caption(BOARD), seconds=seconds, seed=seed,
                            keyframes=None if keyframe is None else [keyframe])
    return np.concatenate([e.frames for e in pipe.run(req) if isinstance(e, SectionDone)])


def score(pipes: dict[str, Pipeline], worlds: int, seconds: float, at: float, first: int,
          near_s: float) -> dict[str, dict[str, list]]:
    first_pipe = next(iter(pipes.values()))
    fps = first_pipe.preset.video.fps
    k = round(at * fps)  # the keyframe's frame (the start frame is frame 0)
    near = round(near_s * fps)
    metrics = [f"{m}_{g}" for m in ("key", "before", "near") for g in ("with", "without")]
    out: dict[str, dict[str, list]] = {name: {m: [] for m in metrics} for name in pipes}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(worlds):
            world, seed = world_of(first_pipe, first + i)
            truth = world.render(BOARD, seconds + 1 / fps).frames  # the start frame and every generated frame's truth
            path = Path(tmp) / f"key_{i}.png"
            Image.fromarray(truth[k]).save(path)
            for name, pipe in pipes.items():
                for given in ("with", "without"):
                    got = video(pipe, world, seed, seconds, {"time": at, "image": str(path)} if given == "with" else None)
                    out[name][f"key_{given}"].append(psnr(got[k - 1], truth[k]))
                    out[name][f"before_{given}"].append(psnr(got[: k - 1], truth[1:k]))
                    out[name][f"near_{given}"].append(psnr(got[k - 1 - near : k - 1], truth[k - near : k]))
            print(f"world {i + 1}/{worlds}: " + "  ".join(
                f"{name} {r['key_with'][-1]:.1f}/{r['key_without'][-1]:.1f}" for name, r in out.items()), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["shipped=toy-cpu"], help="NAME=PRESET_OR_RUN_FOLDER ...")
    ap.add_argument("--worlds", type=int, default=64)
    ap.add_argument("--first", type=int, default=0, help="the first held-out world (seed 1,000,000 + first)")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--at", type=float, default=10.0, help="the keyframe's time (s)")
    ap.add_argument("--near", type=float, default=2.0, help="seconds just before the keyframe scored on their own")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="", help="also write the per-world figures here")
    ap.add_argument("--merge", nargs="*", default=[], help="per-world figures of other models (--json of a run on the same worlds)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipes = {name: load(spec) for name, spec in (m.split("=", 1) for m in args.models)}
    t0 = time.perf_counter()
    res = score(pipes, args.worlds, args.seconds, args.at, args.first, args.near)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    for f in args.merge:
        res.update({k: v for k, v in json.loads(Path(f).read_text()).items() if k not in res})
    print(f"\nkeyframe at {args.at:g} s of a {args.seconds:g} s pan right, {args.worlds} held-out worlds, PSNR vs the true "
          f"world, mean ± standard error ({time.perf_counter() - t0:.0f} s):")
    print(f"{'model':<12} {'keyframe frame, with':>22} {'without':>14} {'gain (paired)':>16} "
          f"{'frames before, with':>21} {'without':>14} {f'last {args.near:g} s, with':>18} {'without':>14}")
    for name, r in res.items():
        gain = list(np.subtract(r["key_with"], r["key_without"]))
        print(f"{name:<12} {mean_se(r['key_with']):>22} {mean_se(r['key_without']):>14} {mean_se(gain):>16} "
              f"{mean_se(r['before_with']):>21} {mean_se(r['before_without']):>14} "
              f"{mean_se(r['near_with']):>18} {mean_se(r['near_without']):>14}")
    names = list(res)
    for a in names:
        for b in names:
            if a != b:
                for m, label in (("before", "frames before"), ("near", f"last {args.near:g} s"), ("key", "keyframe frame")):
                    d = list(np.subtract(res[a][f"{m}_with"], res[b][f"{m}_without"]))
                    print(f"{label}: {a} with the keyframe - {b} without: {mean_se(d)} dB (paired)")


if __name__ == "__main__":
    main()
