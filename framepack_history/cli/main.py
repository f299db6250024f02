"""Headless command line: ``python -m framepack_history SUBCOMMAND ...``.

Bad input exits with status 2 and one line naming the argument; anything
else that goes wrong is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from framepack_history.cli.download import add_parser as add_download_parser
from framepack_history.cli.download import run as cmd_download
from framepack_history.cli.finish import COMMANDS as finishing_commands
from framepack_history.cli.finish import add_parsers as add_finishing_parsers
from framepack_history.cli.plan import add_parser as add_plan_parser
from framepack_history.cli.plan import run as cmd_plan
from framepack_history.cli.prepare import add_parser as add_prepare_parser
from framepack_history.cli.prepare import run as cmd_prepare
from framepack_history.cli.queue_file import add_parser as add_queue_parser
from framepack_history.cli.queue_file import run as cmd_run_queue
from framepack_history.cli.sweep import add_flags as add_sweep_flags
from framepack_history.cli.sweep import run_sweep, sweep_of
from framepack_history.cli.train import COMMANDS as training_commands
from framepack_history.cli.train import add_parsers as add_training_parsers
from framepack_history.config.loras import parse_arg as parse_lora
from framepack_history.config.memory import parse_memory_arg, parse_memory_text
from framepack_history.config.paths import WORKDIR
from framepack_history.config.fields import FIELDS, resolve
from framepack_history.config.presets import available_presets, load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.config.storyboard import parse_keyframe_arg as parse_keyframe
from framepack_history.device import torch_dtype
from framepack_history.errors import InputError, OutOfMemoryFailure, UsageError, WeightsNotFoundError
from framepack_history.hub import files as hub
from framepack_history.jobs.admission import admit_request, check_kept_keyframes, keep_inputs
from framepack_history.jobs.checkpoint import JobDir, Resumed
from framepack_history.jobs.extend import extend_job
from framepack_history.jobs.recall import Inspector, save_png


def report(error: Exception) -> int:
    """Print a user-facing error as one line on stderr; the exit status for bad input (2)."""
    if isinstance(error, InputError):
        print(f"error: {error.field}: {error.message}", file=sys.stderr)
    else:
        print(error if isinstance(error, UsageError) else f"error: {error}", file=sys.stderr)
    return 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit status 2
        raise UsageError(f"{self.prog}: error: {message}")


def _add_request_flags(g: argparse.ArgumentParser) -> None:
    """One flag per request field the command line offers, from the field table (``config.fields``)."""
    for row in FIELDS:
        if not row.cli:
            continue
        kw: dict[str, Any] = {"default": row.default, "help": row.help, "metavar": row.metavar}
        if row.kind in ("int", "float"):
            kw["type"] = int if row.kind == "int" else float
        if row.choices and row.cli_choices:
            kw["choices"] = row.choices
        if row.kind in ("loras", "keyframes"):  # --lora FILE[:WEIGHT], --keyframe TIME:IMAGE, repeated
            kw["action"] = "append"
        if row.kind == "memory":  # --memory TEXT, --pin, --forget, --cut, repeated, into one list in the order given
            g.add_argument(row.flag, dest=row.dest, action="append", metavar=row.metavar, help=row.help,
                           type=lambda text: ("memory", text))
            for op, metavar, what in (("pin", "START:END", "never merge the history of START..END s under the cap"),
                                      ("forget", "START:END", "leave START..END s out of the history the DiT reads"),
                                      ("cut", "TIME", "a new shot at TIME s: no window or recent context from before")):
                g.add_argument(f"--{op}", dest=row.dest, action="append", metavar=metavar, help=f"{what}; repeat for several",
                               type=lambda text, op=op: (op, text))
            continue
        g.add_argument(row.flag, **{k: v for k, v in kw.items() if v is not None})


def _add_generate(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="generate a video headless", description="Generate a video section by section.")
    g.add_argument("--preset", default="toy-cpu", help=f"preset name or .toml path ({', '.join(available_presets())})")
    _add_request_flags(g)
    g.add_argument("--no-loras", action="store_true", help="no LoRAs, not even the preset's")
    g.add_argument("--encoder-rate", help="history encoder rate HxWxT (one of the preset's choices)")
    g.add_argument("--device", help="override the preset's device (cpu, cuda, cuda:1 ...)")
    g.add_argument("--out", help="output .mp4 (default outputs/DATE/TIME.mp4); a .json sidecar is written beside it")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--job-dir", help="checkpoint every section in this (new or empty) folder; "
                                     "`python -m framepack_history resume DIR` finishes the job after a crash")
    g.add_argument("--attention", help="DiT attention kernel: auto (fastest installed: sage, flash, xformers; "
                                       "else native SDPA) or a name; overrides hardware.attention")
    g.add_argument("--weights-dtype", choices=("float8_e4m3fn", "float8_e5m2", "none"),
                   help="store the DiT's blocks in float8 (none = the compute dtype); overrides hardware.weights_dtype")
    add_sweep_flags(g)  # --sweep-seeds, --sweep-x, --sweep-y: one video per cell, and a grid


def _add_resume(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("resume", help="finish an interrupted job from its last finished section",
                       description="Continue a job from its job folder (`generate --job-dir DIR`, or the app's jobs/ID).")
    r.add_argument("job_dir", metavar="DIR", help="the job folder")
    r.add_argument("--device", help="override the job's device (cpu, cuda, cuda:1 ...)")
    r.add_argument("--out", help="write the video here instead of where the job said (.mp4)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_recall(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("recall", help="the memory inspector: a past frame recalled from a job's history embedding",
                       description="Recall the frame at a time from a job's history embedding (on the CPU, from its last "
                                   "checkpoint) and compare it with the real frame.")
    r.add_argument("job_dir", metavar="JOB_DIR", help="the job folder (`generate --job-dir DIR`, or the app's jobs/ID)")
    r.add_argument("--at", type=float, required=True, help="time in the video, in seconds")
    r.add_argument("--out", default="recall.png", help="PNG of the recalled frame (default recall.png)")
    r.add_argument("--real-out", help="also write the real frame here (PNG)")
    r.add_argument("--steps", type=int, help="denoising steps (default: the job's)")
    r.add_argument("--seed", type=int, default=0, help="noise seed of the recall")


def _add_extend(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("extend", help="continue a finished job from its saved history with a new storyboard",
                       description="Continue a finished job from its job folder's saved history (raw latents and "
                                   "history tokens, not its mp4). The new video starts with the old one.")
    e.add_argument("job_dir", metavar="JOB_DIR", help="the finished job's folder (`generate --job-dir DIR`, or the app's jobs/ID)")
    e.add_argument("--seconds", type=float, required=True, help="seconds to add")
    e.add_argument("--prompt", default=None,
                   help="storyboard of the whole video, times from its start (default: the old job's prompt)")
    e.add_argument("--job-dir", dest="new_job_dir", help="the new job's folder (default: JOB_DIR-extended, -2, ...)")
    e.add_argument("--out", help="output .mp4 (default: beside the old video, NAME-extended.mp4)")
    e.add_argument("--device", help="override the job's device (cpu, cuda, cuda:1 ...)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")


def _free(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... : the first that does not exist."""
    k, found = 1, path
    while found.exists():
        k += 1
        found = path.with_name(f"{path.stem}-{k}{path.suffix}")
    return found


def cmd_extend(args: argparse.Namespace) -> int:
    from framepack_history.generation.loading import check_device  # torch: kept off the page's import path

    if not Path(args.job_dir).is_dir():
        raise InputError("JOB_DIR", f"{args.job_dir} is not a folder")
    src = JobDir(args.job_dir)
    if not src.exists():
        raise InputError("JOB_DIR", f"{args.job_dir} is not a job folder")
    info = src.info()
    if args.out and Path(args.out).suffix.lower() != ".mp4":
        raise InputError("--out", f"must end in .mp4 (got {args.out!r})")
    dst = JobDir(args.new_job_dir or _free(src.root.with_name(src.root.name + "-extended")))
    out = Path(args.out) if args.out else _free(info.out.with_name(f"{info.out.stem}-extended.mp4"))
    prompt = info.request.prompt if args.prompt is None else args.prompt
    request = extend_job(src, dst, prompt, args.seconds, out=out, segments_dir=dst.root / "segments")
    preset = dst.info().preset
    if args.device:
        preset.hardware.device = str(check_device(args.device, "--device"))
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"extending {src.root} by {args.seconds:g} s in {dst.root}", file=sys.stderr)
    return _run_job(dst, preset, request, info.encoder_rate, out, args.quiet, keep=True)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m framepack_history", description="Long video generation with a compressed history embedding.")
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)
    _add_generate(sub)
    _add_resume(sub)
    _add_recall(sub)
    _add_extend(sub)
    i = sub.add_parser("inspect", help="show a preset and its history-token budget")
    i.add_argument("--preset", default="toy-cpu")
    i.add_argument("--json", action="store_true")

    add_prepare_parser(sub)  # prepare-data: videos to latent clips and embeddings for training
    add_training_parsers(sub)  # train vae|stage1|stage2, eval retrieval|revisit

    add_plan_parser(sub)  # plan: predicted memory per phase

    add_download_parser(sub)  # download: a preset's weights
    add_finishing_parsers(sub)  # loop, join, export, upscale, interpolate: finishing a video
    add_queue_parser(sub)  # run-queue: a saved queue, headless and resumable
    return p


def _request(args: argparse.Namespace) -> GenerationRequest:
    """The request the flags ask for (``config.fields``: one flag per field); LoRAs as entries."""
    values = {row.name: getattr(args, row.dest) for row in FIELDS if row.cli}
    lora = values["loras"]
    values["loras"] = [] if args.no_loras else None if lora is None else [parse_lora(text) for text in lora]
    values["keyframes"] = [parse_keyframe(text) for text in values["keyframes"] or ()] or None
    values["memory"] = [entry for op, text in values["memory"] or ()
                        for entry in (parse_memory_text(text) if op == "memory" else [parse_memory_arg(op, text)])] or None
    return GenerationRequest(**values)


def cmd_generate(args: argparse.Namespace) -> int:
    from framepack_history.generation.loading import check_device  # torch: kept off the page's import path

    preset = load_preset(args.preset)
    if args.device:
        preset.hardware.device = str(check_device(args.device, "--device"))
    _speed_overrides(args, preset)
    request = _request(args)
    request.validate(preset)  # fail fast, before any weights load
    if gone := hub.missing(preset.model):  # never a silent multi-GB download: say how to get them
        raise InputError("--preset", hub.missing_message(preset.model, gone, args.preset))
    rate = args.encoder_rate
    if args.out and Path(args.out).suffix.lower() != ".mp4":
        raise InputError("--out", f"must end in .mp4 (got {args.out!r})")
    if (sweep := sweep_of(args)) is not None:  # every cell admitted before the first runs
        return run_sweep(args, preset, request, sweep, _run_job)
    # the page's and the API's admission: unreadable files, LoRAs and the cap fail before weights load
    admit_request(request, preset, rate, fields=("--image", "--continue-video"), rate_field="--encoder-rate")
    out = Path(args.out) if args.out else WORKDIR / "outputs" / dt.date.today().isoformat() / f"{dt.datetime.now():%H%M%S}-seed{args.seed}.mp4"
    if args.job_dir and JobDir(args.job_dir).exists():
        raise InputError("--job-dir", f"{args.job_dir} already holds a job: finish it with "
                                      f"`python -m framepack_history resume {args.job_dir}`, or give a new folder")
    if args.job_dir and Path(args.job_dir).exists() and not Path(args.job_dir).is_dir():
        raise InputError("--job-dir", f"{args.job_dir} is a file, not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Without --job-dir the checkpoints still serve the out-of-memory retry, in a folder removed at the end.
    with tempfile.TemporaryDirectory(prefix="fph-job-") as tmp:
        job = JobDir(args.job_dir or tmp)
        keep_inputs(request, job.root / "inputs")  # a resumed job must not depend on files that may move
        job.create(request, preset, out=out, preset_ref=args.preset, encoder_rate=rate, status="running")
        return _run_job(job, preset, request, rate, out, args.quiet, keep=bool(args.job_dir))


def cmd_resume(args: argparse.Namespace) -> int:
    from framepack_history.generation.loading import check_device  # torch: kept off the page's import path

    job = JobDir(args.job_dir)
    if not Path(args.job_dir).is_dir():
        raise InputError("DIR", f"{args.job_dir} is not a folder")
    info = job.info()
    if job.status == "done":
        print(f"{args.job_dir}: already finished; the video is {info.out}")
        return 0
    if job.owner_alive():
        raise InputError("DIR", f"{args.job_dir} is being worked on by process {job.checkpoint()['owner']['pid']}")
    check_kept_keyframes(info.request, "DIR")  # the same images, or the resumed frames would differ
    if args.device:
        info.preset.hardware.device = str(check_device(args.device, "--device"))
    if args.out and Path(args.out).suffix.lower() != ".mp4":
        raise InputError("--out", f"must end in .mp4 (got {args.out!r})")
    out = Path(args.out) if args.out else info.out
    out.parent.mkdir(parents=True, exist_ok=True)
    return _run_job(job, info.preset, info.request, info.encoder_rate, out, args.quiet, keep=True)


def _speed_overrides(args: argparse.Namespace, preset) -> None:
    """``--attention`` / ``--weights-dtype`` into the preset; a kernel that cannot run here is an input error."""
    hw = preset.hardware
    if args.weights_dtype:
        hw.weights_dtype = "" if args.weights_dtype == "none" else args.weights_dtype
    if args.attention:
        from framepack_history.backbones.attention import choose_backend  # torch: kept off the page's import path

        try:
            choose_backend(hw.device, torch_dtype(hw.dtype), args.attention)
        except ValueError as e:
            raise InputError("--attention", str(e)) from None
        hw.attention = args.attention


def _load_pipeline(preset, request: GenerationRequest, rate: str | None):
    """Backbone + history encoder + pipeline for one request."""
    import torch  # torch: kept off the page's import path

    from framepack_history.generation.loading import (  # torch: kept off the page's import path
        build_encoder,
        load_for_device,
    )
    from framepack_history.generation.pipeline import Pipeline  # torch: kept off the page's import path

    if preset.hardware.device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        backbone, memory = load_for_device(preset)
    except WeightsNotFoundError as e:
        raise InputError("--preset", str(e)) from None
    encoder = build_encoder(preset.model, backbone, rate) if resolve(request, preset).history_mode == "encoder" else None
    return Pipeline(backbone, encoder, preset, memory=memory)


def _run_job(job, preset, request: GenerationRequest, rate: str | None, out: Path, quiet: bool, keep: bool) -> int:
    """Render into ``job`` with a progress bar; a crash, Ctrl-C or a second OOM leaves it resumable."""
    from tqdm import tqdm  # tqdm: only for a progress bar on a terminal

    from framepack_history.generation.pipeline import (  # torch: kept off the page's import path
        SectionDone,
        SectionStarted,
    )
    from framepack_history.jobs.render import render  # torch: kept off the page's import path

    pipeline = _load_pipeline(preset, request, rate)
    bar = None
    steps = pipeline.settings(request).steps

    def on_event(ev) -> None:
        nonlocal bar
        if quiet:
            return
        if isinstance(ev, Resumed) and ev.sections_done:
            print(f"resuming after section {ev.sections_done} of {ev.total}", file=sys.stderr)
        if isinstance(ev, SectionStarted):
            if bar is None:
                bar = tqdm(total=ev.total * steps, initial=ev.index * steps, unit="step", desc="sections", file=sys.stderr)
            bar.set_description(f"section {ev.index + 1}/{ev.total}")
        elif isinstance(ev, SectionDone) and bar is not None:
            bar.set_postfix(history_tokens=ev.history_tokens)

    def on_step(index: int, info: dict) -> None:
        if bar is not None:
            bar.update(1)

    hint = f"; resume it with `python -m framepack_history resume {job.root}`" if keep else ""
    try:
        data = render(pipeline, request, out, job.info().segments_dir, on_event=on_event, on_step=on_step, job=job)
    except OutOfMemoryFailure as e:
        print(f"error: {e}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted{hint}", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    print(f"wrote {out} ({data['seconds']:.2f} s, {len(data['sections'])} sections) and {out.with_suffix('.json')}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from framepack_history.history.budget import history_budget  # torch: kept off the page's import path

    preset = load_preset(args.preset)
    info = {"preset": preset.to_dict(), "history": history_budget(preset)}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        h = info["history"]
        print(f"{preset.name}: {preset.description}")
        print(f"  backbone {preset.model.backbone}, {preset.video.width}x{preset.video.height} @ {preset.video.fps} fps, "
              f"sections of {preset.video.section_frames} frames")
        for rate, row in h["rates"].items():
            print(f"  rate {rate}: {row['tokens_per_second']:.1f} history tokens/s, {row['tokens']} per 20 s "
                  f"(1/{row['compression']:.0f} of {row['raw_tokens_per_second']:.0f} raw DiT tokens/s)")
    return 0


def cmd_recall(args: argparse.Namespace) -> int:

    for name, path in (("--out", args.out), ("--real-out", args.real_out)):
        if path is not None and Path(path).suffix.lower() != ".png":
            raise InputError(name, f"must end in .png (got {path!r})")
    if args.steps is not None and not 1 <= args.steps <= 1000:
        raise InputError("--steps", f"must be an integer in [1, 1000] (got {args.steps})")
    if not Path(args.job_dir).is_dir():
        raise InputError("JOB_DIR", f"{args.job_dir} is not a folder")
    r = Inspector().recall(args.job_dir, args.at, steps=args.steps, seed=args.seed)

    scale = JobDir(args.job_dir).info().preset.video.display_scale
    save_png(r.recalled, args.out, scale)
    if args.real_out:
        save_png(r.real, args.real_out, scale)
    print(r.summary())
    if r.layout_text():
        print(r.layout_text())
    print(f"PSNR {r.psnr:.2f} dB; wrote {args.out}" + (f" and {args.real_out}" if args.real_out else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0

        return {"generate": cmd_generate, "resume": cmd_resume, "recall": cmd_recall, "extend": cmd_extend,
                "inspect": cmd_inspect, "plan": cmd_plan, "run-queue": cmd_run_queue,
                "download": cmd_download, "prepare-data": cmd_prepare, **training_commands, **finishing_commands}[args.command](args)
    except (UsageError, InputError) as e:
        return report(e)
