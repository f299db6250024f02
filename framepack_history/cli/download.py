"""``python -m framepack_history download``: fetch a preset's weights, with sizes, progress and resume."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from framepack_history.config.presets import load_preset
from framepack_history.errors import DownloadError
from framepack_history.hub import files as hub
from framepack_history.hub import finishing_weights as finishing
from framepack_history.hub.download import Plan, check_disk, fetch, free_space, human, local_preset, make_plan


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download the weights a preset needs (sizes first, resumable)",
                       description="Download exactly the files a preset needs (configs, tokenizers, safetensors) into "
                                   "the Hugging Face cache (HF_HOME) or --local-dir. Shows the total size first, refuses "
                                   "when the disk lacks room, and continues an interrupted download where it stopped.")
    p.add_argument("--preset", default="rtx4070-12gb", help="preset name or .toml path (default rtx4070-12gb)")
    p.add_argument("--finishing", nargs="+", metavar="NAME",
                   help=f"instead of a preset's weights, finishing models: {', '.join(finishing.KNOWN)}, or all "
                        "(safetensors copies of the released weights, for upscale --method esrgan and interpolate "
                        "--method rife)")
    p.add_argument("--local-dir", help="put the repos in DIR/<owner>/<name> instead of the cache, and write "
                                       "DIR/<preset>.toml that reads them")
    p.add_argument("--dry-run", action="store_true", help="print what would be downloaded, then stop")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    if args.finishing:
        return run_finishing(args)
    preset = load_preset(args.preset)
    comps = hub.components(preset.model)
    if not comps:
        print(f"{preset.name} needs no download (its weights ship with the project or are built from configs)")
        return 0
    plan, status = plan_and_fetch(
        lambda: make_plan(preset.model, args.preset, args.local_dir), args,
        lambda p: f"{preset.name}: {len(p.files)} files in {len(p.commits)} repos", lambda f: f"{f.repo}/{f.path}")
    if status is not None:
        return status
    if plan.local_dir is not None:
        copy = local_preset(preset.path, plan)
        print(f"done: {plan.local_dir}; start with `{hub.python()} app.py --preset {copy}`")
    else:
        print(f"done: {preset.name}'s weights are in {plan.target}; start with `{hub.python()} app.py --preset {args.preset}`")
    return 0


def plan_and_fetch(make: Callable[[], Plan], args: argparse.Namespace, what: Callable[[Plan], str],
                   label: Callable[[Any], str]) -> tuple[Plan, None] | tuple[None, int]:
    """Plan and print its sizes, then list the files (``--dry-run``) or check the disk and fetch them.

    ``(plan, None)`` when every file is here; else ``(None, exit status)``: 0 after a dry run, 1 for a failed
    download, 130 when interrupted (the same command again continues).
    """
    try:
        plan = make()
        print(f"{what(plan)}, {human(plan.total)} in all; {human(plan.todo)} to download into {plan.target} "
              f"({human(free_space(plan.target))} free)", flush=True)
        if args.dry_run:
            for f in plan.files:
                print(f"  {'have' if f.done else 'get '} {human(f.size):>9}  {label(f)}")
            return None, 0
        check_disk(plan)
        fetch_with_bars(plan, args.quiet)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return None, 1
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to continue where it stopped", file=sys.stderr)
        return None, 130
    return plan, None


def fetch_with_bars(plan: Plan, quiet: bool) -> None:
    """:func:`fetch` with a total and a per-file progress bar on stderr (none with ``quiet``)."""
    from tqdm import tqdm  # tqdm: only for a progress bar on a terminal

    bars: dict[str, tqdm] = {}

    def on_progress(p) -> None:
        if quiet:
            return
        if "total" not in bars:
            bars["total"] = tqdm(total=p.total, unit="B", unit_scale=True, desc="total", position=0, file=sys.stderr)
        if bars.get("name") != p.file:
            if "file" in bars:
                bars["file"].close()
            bars["name"] = p.file
            bars["file"] = tqdm(total=p.file_size, unit="B", unit_scale=True, position=1, leave=False, file=sys.stderr,
                                desc=p.file[-48:])
        for key, value in (("total", p.done), ("file", p.file_done)):
            bars[key].update(value - bars[key].n)

    try:
        fetch(plan, on_progress)
    finally:
        for key in ("file", "total"):
            if key in bars:
                bars[key].close()


def run_finishing(args: argparse.Namespace) -> int:
    """``download --finishing NAME...``: the finishing models' files, with the same sizes, disk check and resume."""
    names = finishing.names_for(args.finishing)  # an unknown name: InputError, exit status 2
    plan, status = plan_and_fetch(lambda: finishing.make_plan(names, args.local_dir), args,
                                  lambda p: f"{', '.join(names)}: {len(p.files)} files",
                                  lambda f: f"{f.component}: {f.repo}/{f.path}")
    if status is not None:
        return status
    for f in plan.files:
        where = plan.local_dir / f.repo / f.path if plan.local_dir is not None else None
        use = f"--model {where}" if where is not None else f"--model {f.component}"
        print(f"done: {f.component} ({f.repo}/{f.path}); use it with {use}")
    return 0
