"""The memory plan of a minute of HunyuanVideo-FramePack on a 12 GB card (no weights, no GPU needed).

Predicted device and host peaks of every phase for ``rtx4070-12gb``, 60 s at
the 640 bucket (480x832), history encoder on; against the goal of at most
11.5 GiB on the device and 32 GiB on the host; then the same request with the
DiT's blocks stored in float8 (blocks resident, bytes streamed per step). Other presets and lengths:

    python benchmarks/memory_plan.py --preset rtx4090-24gb --seconds 120 --full
    python benchmarks/memory_plan.py --seconds 300                          # five minutes, bounded history
    python benchmarks/memory_plan.py --seconds 300 --max-history-tokens 0   # five minutes, no cap
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataclasses import replace

from framepack_history.config.presets import load_preset
from framepack_history.memory.planner import GiB, Plan, format_table, plan

GOAL_DEVICE_GIB, GOAL_HOST_GIB = 11.5, 32.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="rtx4070-12gb")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--history", default="encoder", choices=("encoder", "window", "none"))
    ap.add_argument("--full", action="store_true", help="every section, not one per 20 s")
    ap.add_argument("--max-history-tokens", type=int, help="history-token cap (0 = none; default: the preset's)")
    ap.add_argument("--no-fp8", action="store_true", help="skip the float8-weights comparison")
    args = ap.parse_args()

    preset = load_preset(args.preset)
    if args.max_history_tokens is not None:
        preset.history.max_tokens = args.max_history_tokens
    print(f"history-token cap: {preset.history.max_tokens or 'none'}")
    t0 = time.perf_counter()
    p = plan(preset, args.seconds, history_mode=args.history)
    took = time.perf_counter() - t0
    print(format_table(p, full=args.full))
    den = [r for r in p if r.phase == "denoise"]
    per20 = max(1, round(20 / p.section_seconds))
    marks = {r.section: r for r in den if r.section % per20 == per20 - 1 or r is den[-1]}
    print("\nhistory tokens on the device: " + ", ".join(
        f"{(s + 1) * p.section_seconds:.0f} s: {r.history_tokens}" for s, r in marks.items()))
    print(f"history tokens per 20 s: {p.tokens_per_20s} (DiT sequence at the last section: {den[-1].tokens} tokens)")
    dev, host = p.device_peak / GiB, p.host_peak / GiB
    ok = dev <= GOAL_DEVICE_GIB and host <= GOAL_HOST_GIB
    print(f"goal: device peak {dev:.2f} <= {GOAL_DEVICE_GIB} GiB, host peak {host:.2f} <= {GOAL_HOST_GIB} GiB: "
          f"{'met' if ok else 'NOT met'} (planned in {took:.1f} s)")
    if not args.no_fp8:
        compare_storage(args, p)
    return 0 if ok else 1


def compare_storage(args: argparse.Namespace, base: Plan) -> None:
    """The same request with the DiT's blocks stored in float8: blocks resident, bytes streamed per step."""
    preset = load_preset(args.preset)
    rows = [(preset.hardware.weights_dtype or preset.hardware.dtype, base)]
    if not preset.hardware.weights_dtype:
        fp8 = replace(preset, hardware=replace(preset.hardware, weights_dtype="float8_e4m3fn"))
        rows.append(("float8_e4m3fn", plan(fp8, args.seconds, history_mode=args.history)))
    print(f"\n{'DiT weights':<16}{'resident':>10}{'streamed':>10}{'GiB copied/step':>17}{'device peak':>13}{'host peak':>11}")
    for name, p in rows:
        st, n = p.strategy, len(p.strategy.resident) + len(p.strategy.streamed)
        print(f"{name:<16}{len(st.resident):>6}/{n:<3}{len(st.streamed):>10}{st.streamed_bytes / GiB:>17.2f}"
              f"{p.device_peak / GiB:>12.2f}G{p.host_peak / GiB:>10.2f}G")
    if len(rows) == 2:
        a, b = rows[0][1].strategy, rows[1][1].strategy
        print(f"float8 / {rows[0][0]}: bytes copied per step {b.streamed_bytes / max(1, a.streamed_bytes):.2f}x, "
              f"resident blocks {len(b.resident)} vs {len(a.resident)}")


if __name__ == "__main__":
    sys.exit(main())
