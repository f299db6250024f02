"""The GPU checks' figures as Markdown tables, ready to paste into docs/RESULTS.md.

Reads what ``scripts/gpu_checks.sh`` wrote into its output folder (``machine.txt``,
``gpu_e2e.json``, ``gpu_speed.json``, ``gpu_offload.json``, ``gpu_train.json``);
a benchmark that did not finish leaves out its table and says so.

    python benchmarks/gpu_summary.py outputs/gpu_checks
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MIB = 1 << 20


def _load(folder: Path, name: str) -> dict | None:
    p = folder / f"{name}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None else format(x, fmt)


def _mib(b: float | None) -> str:
    return "–" if b is None else f"{b / MIB:.1f}"


def e2e_tables(d: dict) -> list[str]:
    """Per scenario: the step figures; per phase: planned against measured."""
    tiny = d["card"].startswith("cpu")
    unit = "MiB" if tiny else "GiB"
    scale = 1024 if tiny else 1
    out = [(f"`benchmarks/gpu_e2e.py` on {d['card']}, cap {d['cap_gib']:g} GiB, budget {d['budget_gib']:.2f} GiB, "
            f"usable {d.get('usable_gib', 0):.2f} GiB:"), "",
           ("| scenario | weights | cache | strategy | s/step | steps skipped | MiB copied per computed step | "
            "MiB copied per skipped step | planned peak | host RSS peak GiB | error |"),
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in d["scenarios"]:
        out.append(f"| {s['scenario']} | {s['weights']} | {s['cache']} | {s['strategy']} | {_f(s['s_per_step'], '.3f')} | "
                   f"{s['skipped_steps']}/{s['steps']} | {_mib(s['bytes_per_computed_step'])} | "
                   f"{_mib(s['bytes_per_skipped_step'])} | {s['planned_peak_gib'] * scale:.2f} {unit} | "
                   f"{s['host_rss_peak_gib']:.2f} | {s['error'] or ''} |")
    out += ["", f"| scenario | phase | section | planned {unit} | measured {unit} (max allocated) | reserved {unit} |",
            "|---|---|---|---|---|---|"]
    for s in d["scenarios"]:
        for p in s["phases"]:
            out.append(f"| {s['scenario']} | {p['phase']} | {'' if p['section'] is None else p['section']} | "
                       f"{p['planned_gib'] * scale:.2f} | {p['measured_gib'] * scale:.2f} | {p['reserved_gib'] * scale:.2f} |")
    a = d.get("allowance") or {}
    if "context_mib" in a:
        pl = a["planned"]
        out += ["", "| CUDA allowance term | planned MiB | seen MiB |", "|---|---|---|",
                f"| context (device memory outside the allocator) | {pl['context_mib']:.0f} | {a['context_mib']:.0f} |",
                (f"| fragmentation (reserved less allocated, worst phase) | {pl['fragmentation_mib']:.0f} | "
                 f"{a['fragmentation_mib']:.0f} |"),
                f"| workspaces (inside the allocated figures) | {pl['workspaces_mib']:.0f} | – |"]
    return out


def speed_table(d: dict) -> list[str]:
    out = [f"`benchmarks/gpu_speed.py` on {d['card']}, cap {d['cap_gib']:g} GiB:", "",
           "| variant | attention | weights | s/step | GiB copied per step | decode s | s/frame at 25 steps | peak GiB | error |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        out.append(f"| {r['variant']} | {r['attention']} | {r['weights']} | {_f(r['s_per_step'], '.3f')} | "
                   f"{_f(r['copied_gib_per_step'])} | {_f(r['decode_s'])} | {_f(r['s_per_frame_25_steps'], '.3f')} | "
                   f"{_f(r['peak_gib'])} | {r.get('error') or ''} |")
    return out


def offload_table(d: dict) -> list[str]:
    out = [(f"`benchmarks/gpu_offload.py` on {d['device']}: {d['resident_blocks']} blocks resident, "
            f"{d['streamed_blocks']} streamed; s/step streamed {_f(d['s_per_step_streamed'], '.3f')}, resident "
            f"{_f(d['s_per_step_resident'], '.3f')}; outputs identical: {d['outputs_identical']}"), "",
           "| section | history tokens | DiT tokens | planned GiB | measured GiB |", "|---|---|---|---|---|"]
    for s in d["sections"]:
        out.append(f"| {s['section']} | {s['history_tokens']} | {s['dit_tokens']} | {s['planned_peak_gib']:.2f} | "
                   f"{_f(s['measured_peak_gib'])} |")
    return out


def train_table(d: dict) -> list[str]:
    out = [(f"`benchmarks/gpu_train.py` on {d['card']} ({Path(d['config']).name}: LoRA rank {d['lora_rank']}, "
            f"gradient checkpointing {d['gradient_checkpointing']}, {d['mixed_precision']}; a clip of "
            f"{d['latent_frames']} latents cut at {d['split']}):"), "",
           ("| s/step | first step s | planned s/step (H100, plan's MFU) | peak GiB (max allocated) | reserved GiB | "
            "planned GiB (what the run holds) | error |"), "|---|---|---|---|---|---|---|",
           (f"| {_f(d['s_per_step'], '.2f')} | {_f(d['first_step_s'])} | {_f(d.get('planned_s_per_step_h100'), '.1f')} | "
            f"{d['peak_gib']:.2f} | {d['reserved_gib']:.2f} | {_f(d.get('planned_gib'))} | {d['error'] or ''} |")]
    if d.get("streamed"):  # stream_blocks: frozen blocks copied in for the forward and again for the recompute
        out += ["", (f"Frozen blocks streamed from pinned host memory ({_mib(d['streamed_block_bytes'])} MiB): "
                     f"{_mib(d['copied_bytes_per_step'] or 0)} MiB copied to the device per step.")]
    return out


def summary(folder: Path) -> str:
    lines = ["## GPU checks", ""]
    machine = folder / "machine.txt"
    if machine.is_file():
        lines += [f"Machine: {'; '.join(x.strip() for x in machine.read_text().splitlines() if x.strip())}", ""]
    for name, table in (("gpu_e2e", e2e_tables), ("gpu_speed", speed_table), ("gpu_offload", offload_table),
                        ("gpu_train", train_table)):
        d = _load(folder, name)
        if d is None:
            lines += [f"`{name}`: no figures (it did not finish; see {name}.log)", ""]
            continue
        try:
            lines += table(d) + [""]
        except (KeyError, TypeError) as e:  # a partial file from a run stopped part-way
            lines += [f"`{name}`: figures incomplete ({type(e).__name__}: {e})", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="the output folder of scripts/gpu_checks.sh")
    args = ap.parse_args()
    if not args.folder.is_dir():
        print(f"no such folder: {args.folder}", file=sys.stderr)
        return 2
    print(summary(args.folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
