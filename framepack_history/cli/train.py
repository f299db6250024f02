"""``train`` and ``eval`` subcommands of ``python -m framepack_history``.

    python -m framepack_history train vae|stage1|stage2 --config FILE [--key value ...]
    python -m framepack_history eval retrieval|revisit|gaps --config FILE [--key value ...]

Every key of the config file can be overridden on the command line; dotted
keys reach into tables (``--stage1.omega_max 6``), values are read as TOML
(``--models '["ours=outputs/train/a", "lr=outputs/train/b"]'``). Under
``accelerate launch -m framepack_history train ...`` the same command runs
on every process.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from framepack_history.errors import InputError
from framepack_history.training.settings import TrainConfig, check_train_config, load_config, parse_overrides

OVERRIDES_HELP = "--config FILE, then any config key as --key value (dotted keys for tables)"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``train`` and ``eval`` on the main parser's subcommands."""
    t = sub.add_parser("train", help="train the toy VAE, Stage I or Stage II (accelerate-ready)",
                       description="Train: python -m framepack_history train vae|stage1|stage2 --config FILE [--key value ...]")
    t.add_argument("stage", choices=("vae", "stage1", "stage2"))
    t.add_argument("overrides", nargs=argparse.REMAINDER, help=OVERRIDES_HELP)
    t.set_defaults(help_parser=t)
    e = sub.add_parser("eval", help="retrieval PSNR/SSIM, revisit consistency or the gap sweep of trained runs",
                       description="Evaluate: python -m framepack_history eval retrieval|revisit|gaps --config FILE "
                                   "[--key value ...]. gaps: the memory table over --gaps (seconds away; the model's "
                                   "history cap; held-out worlds --data.split eval --data.num_videos N from "
                                   "--data.options.first; an existing gaps.json resumes). "
                                   "Real footage: --data.kind prepared --data.root DIR (a prepare-data folder) and the "
                                   "held-out videos as --data.files '[\"a.mp4\", ...]' (or --data.exclude_files).")
    e.add_argument("metric", choices=("retrieval", "revisit", "gaps"))
    e.add_argument("overrides", nargs=argparse.REMAINDER, help=OVERRIDES_HELP)
    e.set_defaults(help_parser=e)


def _wants_help(args: argparse.Namespace) -> bool:
    """``--help`` after the stage lands in the overrides (REMAINDER); it still means help."""
    return any(a in ("-h", "--help") for a in args.overrides)


def _help(args: argparse.Namespace, cls: type) -> int:
    """The subcommand's usage plus every config key with its default (exit status 0)."""

    def keys(obj: object, prefix: str = "") -> list[str]:
        rows = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                rows += keys(value, f"{prefix}{f.name}.")
            else:
                rows.append(f"  --{prefix}{f.name} {value!r}")
        return rows

    print(args.help_parser.format_help().rstrip())
    print("\nconfig keys (defaults; a --config file or --key value overrides them):")
    print("\n".join(keys(cls())))
    return 0


def _split(args: argparse.Namespace) -> tuple[str | None, dict]:

    over = parse_overrides(list(args.overrides))
    path = over.pop("config", None)
    return (str(path) if path is not None else None), over


def cmd_train(args: argparse.Namespace) -> int:

    if _wants_help(args):
        return _help(args, TrainConfig)
    path, over = _split(args)
    cfg = load_config(TrainConfig, path, over)
    if cfg.stage and cfg.stage != args.stage:
        raise InputError("--config", f"is a {cfg.stage} config, not {args.stage}")
    cfg.stage = args.stage
    check_train_config(cfg)
    if args.stage == "vae":
        from framepack_history.training.vae import main  # torch: kept off the page's import path
    elif args.stage == "stage1":
        from framepack_history.training.stage1_frame_query import main  # torch: kept off the page's import path
    else:
        from framepack_history.training.stage2_autoregressive import main  # torch: kept off the page's import path
    out = main(cfg)
    if os.environ.get("RANK", "0") == "0":  # once, not once per process
        print(f"wrote {out} (loss log {out / 'loss.jsonl'}, curve {out / 'loss.png'})", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from framepack_history.training.evaluate import (  # torch: kept off the page's import path
        EvalConfig,
        check_eval_config,
    )

    if _wants_help(args):
        return _help(args, EvalConfig)
    path, over = _split(args)
    cfg = check_eval_config(load_config(EvalConfig, path, over))
    if args.metric == "retrieval":
        from framepack_history.training.evaluate import (  # torch: kept off the page's import path
            mean_se,
            run_retrieval,
        )

        res = run_retrieval(cfg)
        for label, row in res["models"].items():
            cells = "  ".join(f"{b} {mean_se(row[b]['psnr'], 2)} dB/{mean_se(row[b]['ssim'], 3)}"
                              for b in ("old", "middle", "recent", "all"))
            print(f"{label:>16}: {cells}  ({row['history_tokens_per_second']:.1f} tokens/s, "
                  f"{row['all']['psnr']['episodes']} clips; ± standard error)")
    elif args.metric == "gaps":
        from framepack_history.training.gap_sweep import run_gaps, table_lines  # torch: kept off the page's import path

        print("\n".join(table_lines(run_gaps(cfg))))
        print(f"wrote {cfg.out}/gaps.json", file=sys.stderr)
        return 0
    else:
        from framepack_history.training.revisit import (  # torch: kept off the page's import path
            run_revisit,
            summary_lines,
        )

        res = run_revisit(cfg)
        print("\n".join(summary_lines(res)))
    print(f"wrote {cfg.out}/{args.metric}.json and {cfg.out}/{args.metric}.png", file=sys.stderr)
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval}
