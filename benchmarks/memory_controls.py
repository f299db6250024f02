"""Memory controls on the trained toy: what pin, forget, cut and borrow buy (PSNR, held-out worlds).

On held-out worlds (seeds from ``EVAL_SEED_START``; ``--first`` skips some), mean ± standard error over worlds;
a difference between two columns is given with the standard error of the paired per-world differences.

* **borrow**: an old job pans right for ``--old-seconds``; a new job in the same world holds for
  ``--hold`` seconds, then pans right over the same places. Scored: the new job's frames at camera
  positions the old job showed (its start view excluded) against the old job's frames there, with the
  old job's history borrowed and without (same seed, same noise). Target: borrowing >= 4 dB better.
* **pin**: a ``--minutes`` long video (a pan, then holds and pans elsewhere); at its end the frame at
  ``--recall-at`` s is recalled from the embedding (the memory inspector's frame query) and scored against
  the real frame: uncapped, and for each cap of ``--caps`` capped and capped with that time pinned. By default
  the history is the true world's (teacher-forced, ``--pin-history true``); ``generated`` generates the
  three videos (text-to-video) and recalls from their own histories. Target: pinned equals uncapped.
* **forget**: a pan away and back (``pan_away_and_back``, ``--gap`` s); the return frames are scored
  against the model's own frames of the first visit, in ``encoder``, ``window`` and ``encoder`` with the
  first visit forgotten. Target: forgotten scores like ``window`` (the memory of it is gone).
* **cut**: a job shows place A for ``--shot`` s, cuts to place B half the canvas away (``camera jumps
  right``, a storyboard cut) for ``--away`` s and cuts back to A (``camera jumps left``); a job that never saw
  A starts at B and cuts to A at the same time. Scored against the true A frames: the first section back
  predicted from the true history (teacher-forced), and the ``--back`` s after the return when each job runs
  free from its true start view (``--cut-free``). Target: a margin over the job that never saw A.

    nice -n 10 python benchmarks/memory_controls.py --model toy-cpu [--worlds 16] [--only borrow,forget,pin,cut] [--out results.json]
    nice -n 10 python benchmarks/memory_controls.py --only pin --minutes 4.5 --caps 240,120 --worlds 16
    nice -n 10 python benchmarks/memory_controls.py --only cut --worlds 16 --cut-free
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

from benchmarks.toy_setup import load, mean_se, psnr, true_history, world_of  # noqa: E402
from framepack_history.backbones.toyworld import pan_away_and_back  # noqa: E402
from framepack_history.config.memory import cut_section  # noqa: E402
from framepack_history.config.request import GenerationRequest  # noqa: E402
from framepack_history.config.storyboard import parse_storyboard  # noqa: E402
from framepack_history.generation.frame_query import psnr as unit_psnr  # noqa: E402
from framepack_history.generation.frame_query import retrieve, to_unit  # noqa: E402
from framepack_history.generation.pipeline import ContextFrames, Generation, Pipeline, SectionDone  # noqa: E402


def generate(pipe: Pipeline, request: GenerationRequest, borrowed=None) -> tuple[np.ndarray, object]:
    """The whole video (start frame, then every section; uint8 [F, H, W, 3]) and the finished generation."""
    frames = []
    with torch.no_grad():
        for ev in pipe.run(request, borrowed=borrowed):
            if isinstance(ev, (ContextFrames, SectionDone)):
                frames.append(ev.frames)
    return np.concatenate(frames), pipe.last_generation


def bench_borrow(pipe: Pipeline, args) -> dict:
    rows = []
    for i in range(args.first, args.first + args.worlds):
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


def recall_psnr(pipe: Pipeline, history, prompt: str, pos: int, steps: int) -> float:
    """The memory inspector's score of latent frame ``pos``, recalled from ``history`` (as it stands)."""
    ctx = history.frame_context
    target_w = ctx[pos : pos + 1] if bool(ctx.any()) else None
    bb = pipe.backbone
    with torch.no_grad():
        x0 = retrieve(pipe, history, prompt, pos, steps, 0, target_w)
        got = bb.vae_decode(x0.to(bb.dtype))[:, :, -1:]
        real = bb.vae_decode(history.latents[:, :, pos : pos + 1].to(bb.device, bb.dtype))[:, :, -1:]
    return float(unit_psnr(to_unit(got[:, :, 0]), to_unit(real[:, :, 0]))[0])


def bench_pin(pipe: Pipeline, args) -> dict:
    rows = []
    steps = int(pipe.settings(GenerationRequest()).steps)
    seconds = args.minutes * 60
    caps = [int(c) for c in str(args.caps).split(",")]
    span = (max(0.0, args.recall_at - 1), args.recall_at + 1)
    variants = [("uncapped", 0, False)] + [(f"{name}_{cap}", cap, name == "pinned") for cap in caps
                                           for name in ("capped", "pinned")]
    for i in range(args.first, args.first + args.worlds):
        world, seed = world_of(pipe, i)
        board = world.caption(f"0s: camera pans right; 3s: camera holds; {seconds / 2:g}s: camera pans left; "
                              f"{seconds / 2 + 3:g}s: camera holds")
        row: dict = {"world": seed}
        if args.pin_history == "true":
            v = pipe.preset.video
            sections = pipe.sections_for(seconds)
            ep = world.render(board, (sections * v.section_frames + 1) / v.fps)
            pins = [(pipe.frames_at(span[0], 1), pipe.frames_at(span[1], 1, up=True))]  # after the start latent
            for name, cap, pinned in variants:
                hist = true_history(pipe, ep, sections, cap, pins if pinned else ())
                pos = pipe.frames_at(args.recall_at, 1)
                row[name] = recall_psnr(pipe, hist, board, pos, steps)
                row[f"{name}_reduction"] = hist.time_reduction_at(pos)  # 1: the recalled frame kept at full detail
        else:
            for name, cap, pinned in variants:
                memory = [{"op": "pin", "start": span[0], "end": span[1]}] if pinned else None
                _, gen = generate(pipe, GenerationRequest(prompt=board, seconds=seconds, seed=seed,
                                                          max_history_tokens=cap, memory=memory))
                origin = gen.history.num_frames - gen.next_section * pipe.section_latent_frames
                pos = pipe.frames_at(args.recall_at, origin)
                row[name] = recall_psnr(pipe, gen.history, board, pos, steps)
                row[f"{name}_reduction"] = gen.history.time_reduction_at(pos)
        rows.append(row)
        print(f"pin world {seed}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                for k, v in row.items()), flush=True)
    out: dict = {"rows": rows, **{name: mean_se([r[name] for r in rows]) for name, _, _ in variants}}
    for cap in caps:
        out[f"pinned_{cap}_minus_uncapped_db"] = mean_se([r[f"pinned_{cap}"] - r["uncapped"] for r in rows])
        out[f"capped_{cap}_minus_uncapped_db"] = mean_se([r[f"capped_{cap}"] - r["uncapped"] for r in rows])
        out[f"pinned_{cap}_minus_capped_db"] = mean_se([r[f"pinned_{cap}"] - r[f"capped_{cap}"] for r in rows])
        merged = [r for r in rows if r[f"capped_{cap}_reduction"] > 1]  # the worlds where the cap hit the recalled frame
        out[f"capped_{cap}_merged_worlds"] = len(merged)
        if len(merged) > 1:
            for name in ("capped", "pinned"):
                out[f"where_merged_{name}_{cap}_minus_uncapped_db"] = mean_se([r[f"{name}_{cap}"] - r["uncapped"]
                                                                              for r in merged])
            out[f"where_merged_pinned_{cap}_minus_capped_db"] = mean_se([r[f"pinned_{cap}"] - r[f"capped_{cap}"]
                                                                         for r in merged])
    return out


def bench_forget(pipe: Pipeline, args) -> dict:
    rows = []
    for i in range(args.first, args.first + args.worlds):
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


def cut_jobs(world, args) -> dict[str, tuple[str, int, list[float]]]:
    """The two jobs of the cut test: ``(storyboard, start x, cut times)`` each.

    ``seen``: A for ``--shot`` s, a cut to B (half the canvas right) for ``--away`` s, a cut back to A.
    ``unseen``: B from the start, a cut to A at the same time. A is the world's home view moved so that B fits.
    """
    back = args.shot + args.away
    a = min(world.home_x, world.spec.max_x - world.spec.jump_px)
    return {"seen": (world.caption(f"0s: camera holds; {args.shot:g}s: camera jumps right; {back:g}s: camera jumps left"),
                     a, [args.shot, back]),
            "unseen": (world.caption(f"0s: camera holds; {back:g}s: camera jumps left"), a + world.spec.jump_px, [back])}


def bench_cut(pipe: Pipeline, args) -> dict:
    rows = []
    v = pipe.preset.video
    back = args.shot + args.away
    k = cut_section(back, pipe.preset)  # the section the return starts
    seconds = back + args.back
    total = pipe.sections_for(seconds)
    cap = int(pipe.preset.history.max_tokens or 0)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.first, args.first + args.worlds):
            world, seed = world_of(pipe, i)
            row: dict = {"world": seed}
            truth = {}
            for name, (board, x0, cuts) in cut_jobs(world, args).items():
                ep = world.render(board, (total * v.section_frames + 1) / v.fps, start_x=x0)
                truth[name] = ep
                memory = [{"op": "cut", "time": t} for t in cuts]
                # teacher-forced: the first section back at A, from the true history before it
                req = GenerationRequest(prompt=board, seconds=seconds, seed=seed, memory=memory)
                gen = Generation(req, parse_storyboard(board), total, true_history(pipe, ep, k, cap), next_section=k)
                with torch.no_grad():
                    got = pipe.generate_section(gen).frames
                row[f"{name}_tf"] = psnr(got, ep.frames[1 + k * v.section_frames : 1 + (k + 1) * v.section_frames])
                if args.cut_free:  # free-running from the true start view, to the end
                    path = Path(tmp) / f"start_{seed}_{name}.png"
                    Image.fromarray(ep.frames[0]).save(path)
                    video, _ = generate(pipe, GenerationRequest(prompt=board, seconds=seconds, seed=seed,
                                                                memory=memory, image=str(path)))
                    after = slice(1 + k * v.section_frames, len(video))
                    row[f"{name}_free"] = psnr(video[after], ep.frames[after])
            ret = slice(1 + k * v.section_frames, None)
            assert (truth["seen"].camera_x[ret] == truth["unseen"].camera_x[ret]).all(), "the two jobs return to one place"
            assert np.array_equal(truth["seen"].frames[ret], truth["unseen"].frames[ret])
            rows.append(row)
            print(f"cut world {seed}: " + ", ".join(f"{key} {val:.2f}" for key, val in row.items() if key != "world"),
                  flush=True)
    out: dict = {"rows": rows, "return_section": k, "cap": cap}
    for mode in ("tf", "free") if args.cut_free else ("tf",):
        out[f"seen_{mode}"] = mean_se([r[f"seen_{mode}"] for r in rows])
        out[f"unseen_{mode}"] = mean_se([r[f"unseen_{mode}"] for r in rows])
        out[f"margin_{mode}_db"] = mean_se([r[f"seen_{mode}"] - r[f"unseen_{mode}"] for r in rows])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy-cpu", help="a preset name, preset file or training run folder")
    p.add_argument("--worlds", type=int, default=16)
    p.add_argument("--first", type=int, default=0, help="the first held-out world (seed 1,000,000 + first)")
    p.add_argument("--only", default="borrow,forget,pin,cut", help="which: borrow, forget, pin, cut (comma-separated)")
    p.add_argument("--old-seconds", type=float, default=8.0, help="borrow: the old job's pan")
    p.add_argument("--hold", type=float, default=2.0, help="borrow: the new job holds this long before panning")
    p.add_argument("--minutes", type=float, default=4.5, help="pin: the video's length")
    p.add_argument("--caps", default="240,120", help="pin: history-token caps (comma-separated; 240 is toy-cpu's)")
    p.add_argument("--recall-at", type=float, default=1.5, help="pin: the time recalled at the end")
    p.add_argument("--pin-history", choices=("true", "generated"), default="true",
                   help="pin: recall from the true world's history (teacher-forced) or from generated videos'")
    p.add_argument("--gap", type=float, default=8.0, help="forget: seconds between the first visit and the return")
    p.add_argument("--shot", type=float, default=8.0, help="cut: seconds at A before the cut to B")
    p.add_argument("--away", type=float, default=16.0, help="cut: seconds at B before the cut back to A")
    p.add_argument("--back", type=float, default=4.0, help="cut: seconds after the return (free-running scores them)")
    p.add_argument("--cut-free", action="store_true", help="cut: also run both jobs free from their true start views")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load(args.model)
    results: dict = {"model": args.model, "args": vars(args)}
    for name in [s.strip() for s in args.only.split(",") if s.strip()]:
        t0 = time.perf_counter()
        results[name] = {"borrow": bench_borrow, "forget": bench_forget, "pin": bench_pin, "cut": bench_cut}[name](pipe, args)
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(name, {k: v for k, v in results[name].items() if k != "rows"}, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
