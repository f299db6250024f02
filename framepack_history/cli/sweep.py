"""``generate --sweep-seeds 1,2,3`` / ``--sweep-x guidance=1,3 --sweep-y cache=off,fast``: a sweep in process.

Every cell is admitted before the first runs (a bad one refuses the sweep, naming its axis and value, exit
status 2); then the cells run one after the other as ``generate`` runs one request, each into its own mp4
and sidecar, and a grid of their last frames is written beside them (``NAME-grid.png`` and ``NAME-grid.json``
with the captions).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from framepack_history.config.paths import WORKDIR
from framepack_history.config.presets import Preset
from framepack_history.config.request import GenerationRequest
from framepack_history.errors import InputError
from framepack_history.generation.video import write_json
from framepack_history.jobs.admission import admit_request, keep_inputs
from framepack_history.jobs.checkpoint import JobDir
from framepack_history.jobs.sweep import Sweep, check_cells, expand, grid_image, last_frame, make_sweep, parse_axis_arg


def add_flags(g: argparse.ArgumentParser) -> None:
    """The sweep flags of ``generate``."""
    g.add_argument("--sweep-seeds", metavar="S1,S2,...", help="a sweep: one video per seed (e.g. 1,2,3)")
    g.add_argument("--sweep-x", metavar="FIELD=V1,V2", help="a sweep's X axis: a request setting and its values "
                                                            "(e.g. guidance=1,3; lora_weight=0.5,1)")
    g.add_argument("--sweep-y", metavar="FIELD=V1,V2", help="a sweep's Y axis (e.g. cache=off,fast)")


def sweep_of(args: argparse.Namespace) -> Sweep | None:
    """The sweep the flags ask for (None when none)."""
    x = parse_axis_arg(args.sweep_x, "x") if args.sweep_x else None
    y = parse_axis_arg(args.sweep_y, "y") if args.sweep_y else None
    if y is not None and x is None:
        raise InputError("--sweep-y", "give --sweep-x too (the Y axis is the grid's rows)")
    return make_sweep(args.sweep_seeds, x, y)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text.replace(" · ", "_"))[:60]


def run_sweep(args: argparse.Namespace, preset: Preset, request: GenerationRequest, sweep: Sweep,
              run_job: Callable[..., int]) -> int:
    """Admit every cell, then run them in order with ``run_job`` (``generate``'s); write the grid. Exit status."""
    if args.job_dir:
        raise InputError("--job-dir", "a sweep makes one job per cell; give --out (each cell's video is named after it)")
    rate = args.encoder_rate
    cells = expand(request, sweep)
    check_cells(cells, sweep, lambda r: admit_request(r, preset, rate, fields=("--image", "--continue-video"),
                                                      rate_field="--encoder-rate"))
    base = Path(args.out) if args.out else (WORKDIR / "outputs" / dt.date.today().isoformat()
                                            / f"{dt.datetime.now():%H%M%S}-sweep.mp4")
    base.parent.mkdir(parents=True, exist_ok=True)
    status, done = 0, []
    for i, cell in enumerate(cells, 1):
        out = base.with_name(f"{base.stem}-{_slug(cell.caption)}.mp4")
        print(f"cell {i}/{len(cells)}: {cell.caption}")
        req = copy.deepcopy(cell.request)
        admit_request(req, preset, rate, fields=("--image", "--continue-video"), rate_field="--encoder-rate")
        with tempfile.TemporaryDirectory(prefix="fph-job-") as tmp:
            job = JobDir(tmp)
            keep_inputs(req, job.root / "inputs")
            job.create(req, preset, out=out, preset_ref=args.preset, encoder_rate=rate, status="running")
            code = run_job(job, preset, req, rate, out, args.quiet, keep=False)
        status = status or code
        done.append((cell, out if code == 0 else None))
    frames = [(last_frame(out) if out else None, cell.caption) for cell, out in done]
    cols = len(sweep.axes[0].values)
    if any(f is not None for f, _ in frames):
        png = base.with_name(f"{base.stem}-grid.png")
        Image.fromarray(grid_image(frames, cols, preset.video.display_scale)).save(png)
        write_json({"columns": cols, "axes": sweep.to_dict()["axes"],
                    "cells": [{"caption": c.caption, "row": c.row, "col": c.col, "labels": dict(c.labels),
                               "video": str(out) if out else None} for c, out in done]},
                   base.with_name(f"{base.stem}-grid.json"))
        print(f"wrote the grid {png} ({cols} columns: {', '.join(cap for _, cap in frames)})")
    return status
