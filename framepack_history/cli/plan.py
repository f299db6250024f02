"""``python -m framepack_history plan``: the memory plan of a preset and a request length."""

from __future__ import annotations

import argparse
import json

from framepack_history.config.loras import parse_arg
from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.generation.video import MAX_CONTINUE_SECONDS
from framepack_history.jobs.admission import check_loras
from framepack_history.training.settings import TrainConfig, check_train_config, load_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="predicted device/host memory per phase, and the streaming strategy",
                       description="Predict the peak device and host memory of every phase of a request, "
                                   "from model configs alone (no weights are loaded).")
    p.add_argument("--preset", default="toy-cpu", help="preset name or .toml path")
    p.add_argument("--seconds", type=float, default=60.0, help="video length in seconds")
    p.add_argument("--history", choices=("encoder", "window", "none"), help="history mode (default: the preset's)")
    p.add_argument("--encoder-rate", help="history encoder rate HxWxT (default: the preset's)")
    p.add_argument("--text-encoder", choices=("auto", "resident", "nf4", "int8", "streamed"), default="auto",
                   help="LLaMA text encoder: full precision, bitsandbytes nf4/int8, or streamed by layer")
    p.add_argument("--no-image", action="store_true", help="plan a text-to-video request (no start image)")
    p.add_argument("--continue-seconds", type=float, default=0.0, metavar="S",
                   help="plan continuing a video this long (at most 30 s of it is read; encoded chunk by chunk)")
    p.add_argument("--full", action="store_true", help="every section in the table, not one per 20 s")
    p.add_argument("--json", action="store_true", help="a JSON list of phases instead of a table")
    p.add_argument("--lora", action="append", metavar="FILE[:WEIGHT]", help="count these LoRAs' adapters (repeatable)")
    p.add_argument("--train", metavar="CONFIG", help="plan a training config instead (Stage I or II): memory per GPU, "
                                                     "FLOPs per step, which cards it fits")
    p.add_argument("--gpus", type=int, default=1, help="with --train: GPUs (more than one: FSDP over them)")


def run(args: argparse.Namespace) -> int:
    if args.train:
        return run_train(args.train, args.gpus)
    from framepack_history.memory.planner import (  # torch: kept off the page's import path
        format_table,
        plan,
    )

    preset = load_preset(args.preset)
    if args.seconds <= 0 or args.seconds > preset.video.max_seconds:
        raise InputError("--seconds", f"must be in (0, {preset.video.max_seconds:g}] for {preset.name} (got {args.seconds:g})")
    if args.encoder_rate is not None and args.encoder_rate not in preset.model.encoder_rates:
        raise InputError("--encoder-rate", f"{args.encoder_rate!r} is not offered by {preset.name}")
    if not 0 <= args.continue_seconds < float("inf"):
        raise InputError("--continue-seconds", f"must be a length in seconds >= 0 (got {args.continue_seconds:g})")
    seconds = min(args.continue_seconds, MAX_CONTINUE_SECONDS)  # what a start reads of the video
    continue_frames = round(seconds * preset.video.fps)
    text = None if args.text_encoder == "resident" else args.text_encoder
    adapters = 0
    if args.lora:

        adapters = check_loras(GenerationRequest(loras=[parse_arg(t) for t in args.lora]), preset)
    p = plan(preset, args.seconds, history_mode=args.history, rate=args.encoder_rate,
             start_image=not args.no_image, text_encoder_quantization=text, adapter_bytes=adapters,
             continue_frames=continue_frames)
    if adapters and not args.json:
        print(f"LoRA adapters: {adapters / 2**20:.1f} MiB on the device beside the DiT's stem")
    if args.json:
        print(json.dumps(p.to_json(), indent=1))
    else:
        print(format_table(p, full=args.full))
    return 0


def run_train(path: str, gpus: int) -> int:
    """``plan --train CONFIG``: the training plan's rows, totals, FLOPs and card table."""
    from framepack_history.training.plan import (  # torch: kept off the page's import path
        format_plan,
        plan_training,
    )

    try:
        cfg = check_train_config(load_config(TrainConfig, path))
    except InputError as e:
        raise InputError("--train", f"{e.field}: {e.message}" if e.field != "--config" else e.message) from None
    print(format_plan(plan_training(cfg, gpus, config_name=path)))
    return 0
