"""The gap sweep: the toy's memory table, memory as a function of how long the camera was away.

In each held-out toy world the camera sees its start view (and the sprites in it), leaves for a gap
``g`` (``leave_and_return``: pan one view away, hold, pan back) and is back at the start view at frame
``g * fps``. The section holding that frame is scored as :func:`~.revisit.score_episode` scores it:

* **teacher-forced**: predicted from the true history, PSNR against the true frames;
* **free-running**: the whole episode generated from the start frame, each frame of the return section
  against the model's own frame at the same camera position on the first visit; the true video's own
  score (its sprites move) is the ceiling.

Both histories are capped as a job caps them: the model's preset's ``history.max_tokens`` and
``history.merge`` (``encoder`` mode; the ``window`` baseline has no tokens). Every gap is scored in the
same worlds, so the ``encoder`` − ``window`` margin is read by the standard error of the paired
per-world differences.

Results are kept per world (``worlds``: seed -> gap -> episode), so a run can be split into shards of
worlds (``data.options.first``), resumed after a kill (each world is written as it finishes), and shards
merged into one table (:func:`merge_runs`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from framepack_history.errors import InputError
from framepack_history.fsio import atomic_write_json
from framepack_history.generation.pipeline import Pipeline
from framepack_history.training.evaluate import EvalConfig, load_for_eval, parse_models
from framepack_history.training.revisit import aggregate, make_episode, return_section, score_episode, world_seed

KIND = "leave_and_return"
#: the table's columns: (heading, metric)
SCORINGS = (("teacher-forced", "teacher_forced_psnr"), ("free-running vs first visit", "free_running_psnr_vs_first_visit"))


def gap_key(gap: float) -> str:
    return f"{gap:g}s"


def settings_of(pipe: Pipeline, cfg: EvalConfig) -> dict[str, Any]:
    """What a run's numbers depend on besides its worlds: shards merge only when these agree."""
    h = pipe.preset.history
    return {"gaps": [float(g) for g in cfg.gaps], "modes": list(cfg.modes), "free_running": cfg.free_running,
            "split": cfg.data.split, "steps": int(pipe.preset.sampling.steps), "history_guidance": float(h.guidance),
            "max_tokens": int(h.max_tokens), "merge": h.merge, "window_frames": int(h.window_frames)}


@torch.no_grad()
def score_world(pipe: Pipeline, cfg: EvalConfig, index: int) -> dict[str, Any]:
    """Every gap of ``cfg.gaps`` in world ``index`` (of the block ``data.options.first`` starts)."""
    v, h = pipe.preset.video, pipe.preset.history
    out: dict[str, Any] = {}
    for gap in cfg.gaps:
        ep, k, seed = make_episode(pipe, cfg, KIND, gap, index)
        ret, _ = return_section(gap, v.fps, v.section_frames)
        cell = score_episode(pipe, cfg, ep, k, seed, gap, max_tokens=h.max_tokens, merge=h.merge)
        cell.update(return_frame=ret, section=[1 + k * v.section_frames, 1 + (k + 1) * v.section_frames])
        out[gap_key(gap)] = cell
    return out


def table(worlds: dict[str, dict[str, Any]], gaps: list[float], modes: list[str]) -> dict[str, Any]:
    """``{gap: cell}`` over the worlds in seed order (:func:`~.revisit.aggregate`'s cells)."""
    order = sorted(worlds, key=int)
    return {gap_key(g): aggregate([worlds[s][gap_key(g)] for s in order], modes) for g in gaps}


def sweep(pipe: Pipeline, cfg: EvalConfig, run: dict[str, Any], save: Callable[[], None] | None = None) -> dict[str, Any]:
    """Score the worlds of ``cfg.data`` that ``run["worlds"]`` lacks, saving after each; then its table."""
    worlds = run.setdefault("worlds", {})
    for i in range(cfg.data.num_videos):
        seed = str(world_seed(cfg, i))
        if seed in worlds:  # done by an earlier, interrupted run
            continue
        worlds[seed] = score_world(pipe, cfg, i)
        run["table"] = table(worlds, cfg.gaps, cfg.modes)
        if save is not None:
            save()
    run["table"] = table(worlds, cfg.gaps, cfg.modes)
    return run


def run_gaps(cfg: EvalConfig, path: Path | None = None, on_world: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """The sweep for every model of ``cfg.models``; results in ``path`` (``{out}/gaps.json`` by default).

    An existing file with the same settings is resumed: its worlds are kept and not scored again.
    ``on_world(label, worlds done)`` runs after each world (progress).
    """
    if cfg.data.split != "eval" or cfg.data.kind != "toyworld":
        # the sweep's worlds are the held-out ones (the eval config's default split); training worlds would flatter it
        raise InputError("data.split", f"the gap sweep scores held-out toy worlds: needs data.kind = \"toyworld\" and "
                                       f"data.split = \"eval\" (got {cfg.data.kind!r}, {cfg.data.split!r})")
    path = Path(path) if path is not None else Path(cfg.out) / "gaps.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"metric": "gaps", "models": {}}
    for label, model in parse_models(cfg.models):
        pipe = load_for_eval(model, cfg)
        run = {"path": str(model), "settings": settings_of(pipe, cfg), "worlds": {}}
        before = old.get("models", {}).get(label)
        if before is not None:
            if before.get("settings") != run["settings"]:
                raise InputError("out", f"{path} holds a {label!r} run with other settings "
                                        f"({before.get('settings')}); give another --out or remove it")
            run["worlds"] = before.get("worlds", {})
        results["models"][label] = run

        def save(label: str = label) -> None:
            atomic_write_json(path, {**old, **results, "models": {**old.get("models", {}), **results["models"]}})
            if on_world is not None:
                on_world(label, len(results["models"][label]["worlds"]))

        sweep(pipe, cfg, run, save)
        save()
    return json.loads(path.read_text())


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Shards of one sweep (``gaps.json`` files over other worlds) as one: their worlds, one table per model.

    Shards must agree on each model's settings; a world in two shards must hold the same scores.
    """
    out: dict[str, Any] = {"metric": "gaps", "models": {}}
    for n, res in enumerate(runs):
        if res.get("metric") != "gaps":
            raise InputError("merge", f"file {n + 1} is not a gap sweep (metric {res.get('metric')!r})")
        for label, run in res["models"].items():
            into = out["models"].setdefault(label, {"path": run["path"], "settings": run["settings"], "worlds": {}})
            if run["settings"] != into["settings"]:
                raise InputError("merge", f"file {n + 1}: {label!r} was run with other settings "
                                          f"({run['settings']} vs {into['settings']})")
            for seed, cell in run["worlds"].items():
                if into["worlds"].setdefault(seed, cell) != cell:
                    raise InputError("merge", f"file {n + 1}: world {seed} of {label!r} differs from another shard's")
    for run in out["models"].values():
        s = run["settings"]
        run["table"] = table(run["worlds"], s["gaps"], s["modes"])
    return out


def _cell(c: dict[str, Any] | None, sign: str = "") -> str:
    """A summary as ``mean ± se`` (``–`` where the cell has no values)."""
    if not c or not c.get("n"):
        return "–"
    return f"{c['mean']:{sign}.2f}" + ("" if math.isnan(c["se"]) else f" ± {c['se']:.2f}")


def ceiling(worlds: dict[str, dict[str, Any]], gap: str) -> str:
    """The true video's own score at the return (its frames against its first visit's): the median over worlds,
    and in how many the frames are identical (no sprite in view moved: PSNR clamped at 100 dB, which a mean
    would let dominate)."""
    vals = [w[gap]["truth_self_psnr"] for w in worlds.values() if "truth_self_psnr" in w[gap]]
    if not vals:
        return "–"
    same = sum(v >= 99.99 for v in vals)
    return f"{float(np.median(vals)):.1f} (identical in {same}/{len(vals)})"


def table_lines(results: dict[str, Any]) -> list[str]:
    """Per model, a Markdown table: per gap, each scoring's ``encoder`` / ``window`` / margin (dB, ± standard
    error; the margin's over the paired per-world differences) and the true video's own ceiling."""
    lines = []
    for label, run in results["models"].items():
        s = run["settings"]
        worlds = len(run["worlds"])
        lines += [f"{label}: {worlds} held-out world(s), cap {s['max_tokens'] or 'none'} tokens ({s['merge']}), "
                  f"history guidance {s['history_guidance']:g}, {s['steps']} steps; PSNR dB, mean ± standard error",
                  "",
                  "| gap | " + " | ".join(f"{h}: encoder | window | margin" for h, _ in SCORINGS) + " | true video's own, median |",
                  "|---" * (2 + 3 * len(SCORINGS)) + "|"]
        for gap, cell in run["table"].items():
            parts = []
            for _, metric in SCORINGS:
                parts += [_cell(cell.get("encoder", {}).get(metric)), _cell(cell.get("window", {}).get(metric)),
                          _cell(cell.get("margin", {}).get(metric), "+")]
            lines.append(f"| {gap} | " + " | ".join(parts) + f" | {ceiling(run['worlds'], gap)} |")
    return lines
