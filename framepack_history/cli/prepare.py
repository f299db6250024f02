"""``prepare-data``: a folder of captioned videos to latent clips, text and start-image embeddings.

    python -m framepack_history prepare-data VIDEOS_DIR --preset P [--out DIR] [--clip-seconds S]

Training then reads the folder with ``[data] kind = "prepared"``, ``root = DIR``
and loads no VAE, text or image encoder (``training/prepare.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from framepack_history.config.paths import WORKDIR
from framepack_history.config.presets import available_presets, load_preset
from framepack_history.errors import InputError
from framepack_history.hub import files as hub


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare-data", help="encode a folder of videos once for training (latents, text, start image)",
                       description="Encode every video (mp4, webm, mov, mkv) under VIDEOS_DIR, with its name.txt caption "
                                   "(plain or a timestamped storyboard), into latent clips plus text and start-image "
                                   "embeddings, so training needs no VAE or encoder. Interrupted runs resume.")
    p.add_argument("videos", metavar="VIDEOS_DIR", help="folder of videos (searched recursively) with name.txt captions")
    p.add_argument("--preset", required=True, help=f"preset name or .toml path ({', '.join(available_presets())}): "
                                                   "backbone, resolution bucket and frame rate")
    p.add_argument("--out", help="output folder (default data/prepared/PRESET-NAME)")
    p.add_argument("--clip-seconds", type=float, default=20.0,
                   help="clip length in seconds, rounded to whole sections (default 20)")
    p.add_argument("--device", help="where the VAE and encoders run (default: the preset's)")
    p.add_argument("--latent-dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                   help="how latents are stored (default bfloat16)")


def run(args: argparse.Namespace) -> int:
    from framepack_history.training.prepare import prepare_folder  # torch: kept off the page's import path

    if not Path(args.videos).is_dir():
        raise InputError("VIDEOS_DIR", f"no such folder: {args.videos!r}")
    preset = load_preset(args.preset)
    if gone := hub.missing(preset.model):  # never a silent multi-GB download: say how to get them
        raise InputError("--preset", hub.missing_message(preset.model, gone, args.preset))
    if args.device:
        from framepack_history.generation.loading import check_device  # torch: kept off the page's import path

        check_device(args.device, "--device")
    out = Path(args.out) if args.out else WORKDIR / "data" / "prepared" / f"{preset.name}-{args.clip_seconds:g}s"
    result = prepare_folder(args.videos, preset.path or args.preset, out, args.clip_seconds,
                            device=args.device, latent_dtype=args.latent_dtype)
    print(result.summary())
    if result.clips == 0:
        print("error: no clip was prepared", file=sys.stderr)
        return 1
    return 0
