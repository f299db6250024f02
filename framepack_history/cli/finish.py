"""``python -m framepack_history loop|join|export|upscale|interpolate INPUT... --out FILE``: finishing a video.

Runs in this process with no worker, on the same engine as the page's tool jobs
(:mod:`framepack_history.generation.finishing`); the output gets a ``.json`` sidecar like theirs
(:func:`framepack_history.jobs.tools.tool_sidecar`). The inputs are never written to.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from framepack_history.errors import InputError
from framepack_history.fsio import atomic_write_json
from framepack_history.generation.finishing import FORMATS, LOOP_MODES, SETTINGS, check, finish, output_suffix
from framepack_history.hub.finishing_weights import DEFAULT_MODEL, KNOWN
from framepack_history.jobs.tools import tool_sidecar


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The five verbs, each with ``INPUT`` and ``--out``."""
    p = sub.add_parser("loop", help="make a video loop: ping-pong, or its end cross-faded into its start",
                       description="Make a video that loops seamlessly.")
    _common(p)
    p.add_argument("--mode", default="pingpong", choices=LOOP_MODES,
                   help="pingpong: forward then backward; crossfade: the end fades into the start (default pingpong)")
    p.add_argument("--fade-frames", type=int, default=8, help="crossfade: frames the fade takes (default 8)")

    p = sub.add_parser("join", help="join videos of one size and frame rate, one after another",
                       description="Join videos one after another (video only): without re-encoding when their "
                                   "streams match, else encoded once as H.264.")
    _common(p, many=True)

    p = sub.add_parser("export", help="encode a video again as H.264, H.265, WebM or GIF",
                       description="Encode a video again in another format and quality.")
    _common(p)
    p.add_argument("--format", default="h264", choices=tuple(FORMATS),
                   help="h264 or h265 (.mp4), webm (VP9), gif (default h264)")
    p.add_argument("--quality", type=int, help="h264/h265: CRF 0-51, webm: CRF 0-63 (lower is better); "
                                               "gif: palette colours 2-256 (default: 18, 23, 32, 256)")

    ups = ", ".join(n for n, k in KNOWN.items() if k.task == "upscale")
    p = sub.add_parser("upscale", help="make a video 2x or 4x larger (nearest, bicubic, or an ESRGAN-family model)",
                       description="Upscale every frame: nearest or bicubic (no model), or esrgan: a learned "
                                   "ESRGAN-family upscaler (RRDBNet or SRVGGNetCompact weights, safetensors only), "
                                   "run in tiles sized to the memory free.")
    _common(p)
    p.add_argument("--scale", type=int, help="2 or 4 (default 2; with --method esrgan, the model's own, the only one "
                                              "it makes)")
    p.add_argument("--method", default="nearest", help="nearest, bicubic or esrgan (default nearest)")
    p.add_argument("--model", help=f"esrgan: a known model ({ups}; default {DEFAULT_MODEL['upscale']}; fetch it with "
                                   "`download --finishing NAME`) or a .safetensors file")
    _device(p)

    p = sub.add_parser("interpolate", help="2x or 4x the frame rate: frames blended, or made by RIFE",
                       description="Add frames between neighbours, blended linearly or made by RIFE (a model "
                                   "given the timestep, so 2x and 4x use the same weights); the frame rate is "
                                   "multiplied by the factor and the length is kept.")
    _common(p)
    p.add_argument("--factor", type=int, default=2, help="2 or 4 (default 2)")
    p.add_argument("--method", default="blend", help="blend or rife (default blend)")
    p.add_argument("--model", help=f"rife: a known model ({DEFAULT_MODEL['interpolate']}, the default; fetch it with "
                                   "`download --finishing NAME`) or a .safetensors file")
    _device(p)


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="where a model runs: cpu, cuda, cuda:1 (default: cuda when there is one)")
    p.add_argument("--budget-gib", type=float, default=0.0,
                   help="memory the model's tiles may use (default 0: half the free device memory, or 2 GiB on the CPU)")


def _common(p: argparse.ArgumentParser, many: bool = False) -> None:
    p.add_argument("inputs", nargs="+" if many else 1, metavar="INPUT", help="videos to join, in order" if many else "the video")
    p.add_argument("--out", help="the output file (default: beside the first input, NAME-VERB.EXT); a .json sidecar "
                                 "is written beside it")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The tool's settings from its flags."""
    return {name: getattr(args, name) for name in SETTINGS[args.command]}


def output_for(tool: str, inputs: list[Path], settings: dict[str, Any], out: str | None) -> Path:
    """Where the output goes; never over an input or an input's sidecar (:class:`InputError` naming ``--out``)."""
    first = inputs[0]
    path = Path(out) if out else first.with_name(f"{first.stem}-{tool}{output_suffix(tool, settings)}")
    resolved = path.resolve()
    for src in inputs:
        if resolved == src.resolve():
            raise InputError("--out", f"{path} is an input; the original is kept, so name another file")
        if resolved.with_suffix(".json") == src.resolve().with_suffix(".json") and src.with_suffix(".json").exists():
            raise InputError("--out", f"its sidecar would overwrite {src.with_suffix('.json').name}, the sidecar of "
                                      f"{src.name}; name another file")
    return path


def run(args: argparse.Namespace) -> int:
    tool = args.command
    inputs = [Path(p) for p in args.inputs]
    settings = check(tool, inputs, settings_of(args), "INPUT")
    out = output_for(tool, inputs, settings, args.out)
    want = output_suffix(tool, settings)
    if out.suffix.lower() != want and not (tool == "join" and out.suffix.lower() in (".mp4", ".mkv", ".mov")):
        raise InputError("--out", f"{out.name}: {tool} writes a {want} file")

    shown = not args.quiet and sys.stderr.isatty()  # a carriage-return line only where it redraws

    def on_progress(done: int, total: int) -> None:
        if shown:
            print(f"\r{tool}: {done}/{total} frames", end="", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    sources = [{"job": None, "file": str(p.resolve())} for p in inputs]
    try:
        result = finish(tool, inputs, out, settings, on_progress, "INPUT", device=getattr(args, "device", None),
                        budget_gib=getattr(args, "budget_gib", 0.0) or 0.0)
    except KeyboardInterrupt:
        print(f"\ninterrupted; {out} was not written", file=sys.stderr)
        return 130
    finally:
        if shown:
            print(file=sys.stderr)
    sidecar = out.with_suffix(".json")
    atomic_write_json(sidecar, tool_sidecar(tool, settings, sources, result, time.perf_counter() - t0))
    shape = tool
    if "size" in result:
        shape = f"{result['size'][0]}x{result['size'][1]}, {result['frames']} frames at {result['fps']:g} fps"
    if "model" in result:
        shape += f"; {result['model']['architecture']}"
    print(f"wrote {out} ({shape}) and {sidecar}")
    return 0


COMMANDS = {verb: run for verb in ("loop", "join", "export", "upscale", "interpolate")}
