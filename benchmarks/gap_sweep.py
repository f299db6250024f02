"""The gap sweep on the shipped toy: memory after the camera was away 5 s, 20 s, 1 min and 4 min.

Held-out toy worlds (``framepack_history/training/gap_sweep.py``): the camera sees its start view, leaves for
the gap and comes back; the return section is scored teacher-forced (against the true world) and
free-running (against the model's own first visit), ``encoder`` vs ``window``, with the preset's
history-token cap (toy-cpu: 240 tokens, ``similar``). The margin's ± is the standard error of the paired
per-world differences.

    nice -n 10 python benchmarks/gap_sweep.py --worlds 64 --json outputs/eval/gaps.json
    # two shards in parallel, then one table (a killed shard resumes from its JSON: run it again)
    nice -n 10 python benchmarks/gap_sweep.py --worlds 32 --first 0  --json outputs/eval/gaps_a.json &
    nice -n 10 python benchmarks/gap_sweep.py --worlds 32 --first 32 --json outputs/eval/gaps_b.json &
    python benchmarks/gap_sweep.py --merge outputs/eval/gaps_a.json outputs/eval/gaps_b.json [--json all.json]

Cost: about a minute of one core per world with all four gaps (the free-running 4-minute episode is 240
sections per mode).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from framepack_history.config.paths import PRESET_DIR  # noqa: E402
from framepack_history.training.evaluate import EvalConfig, check_eval_config  # noqa: E402
from framepack_history.training.gap_sweep import merge_runs, run_gaps, table_lines  # noqa: E402
from framepack_history.training.settings import DataConfig  # noqa: E402


def model_entry(spec: str) -> str:
    """``label=path`` for :func:`parse_models`: a preset name (``toy-cpu``), a preset file or a run folder."""
    named = PRESET_DIR / f"{spec}.toml"
    path = named if not Path(spec).exists() and named.is_file() else Path(spec)
    label = spec if path == named else path.stem if path.suffix == ".toml" else path.name
    return f"{label}={path}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="toy-cpu", help="preset name or .toml, or a training run folder")
    ap.add_argument("--worlds", type=int, default=64, help="held-out worlds")
    ap.add_argument("--first", type=int, default=0, help="the first world (a shard's offset in the held-out block)")
    ap.add_argument("--gaps", default="5,20,60,240", help="seconds away, comma-separated")
    ap.add_argument("--steps", type=int, default=0, help="sampling steps (0: the preset's)")
    ap.add_argument("--no-free-running", action="store_true", help="teacher-forced only")
    ap.add_argument("--json", help="results (per world, written as each finishes; an existing file is resumed)")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="print (and with --json write) the table of these shards")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared, busy machine more threads spin against each other)")
    args = ap.parse_args(argv)
    if args.merge:
        res = merge_runs([json.loads(Path(p).read_text()) for p in args.merge])
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
        print("\n".join(table_lines(res)))
        return 0
    torch.set_num_threads(args.threads)
    cfg = check_eval_config(EvalConfig(
        models=[model_entry(args.preset)], steps=args.steps, free_running=not args.no_free_running,
        gaps=[float(g) for g in args.gaps.split(",")],
        data=DataConfig(split="eval", num_videos=args.worlds, options={"first": args.first})))
    out = Path(args.json) if args.json else Path(cfg.out) / f"gaps_{args.first}_{args.first + args.worlds}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"gap sweep: worlds {args.first}..{args.first + args.worlds - 1} of the held-out block, gaps {args.gaps} s, "
          f"{torch.get_num_threads()} thread(s); results in {out}", flush=True)

    def progress(label: str, done: int) -> None:
        print(f"  {label}: {done} world(s) in {out} ({time.perf_counter() - t0:.0f} s)", flush=True)

    res = run_gaps(cfg, out, progress)
    print("\n".join(table_lines(res)))
    print(f"{time.perf_counter() - t0:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
