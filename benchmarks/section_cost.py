"""Cost per section against section index: the history is appended, never re-encoded.

Runs N sections on a preset (default toy-cpu, 60 sections) and prints, per
section, the history-encoding time, the denoising time and the history token
count; then, for each time, the ratio mean(last 10) / mean(first 10), with the
denoising ratio the backbone's token count predicts printed beside the
measured one.

    python benchmarks/section_cost.py [--preset toy-cpu] [--sections 60]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from framepack_history.config.presets import load_preset  # noqa: E402
from framepack_history.config.request import GenerationRequest
from framepack_history.generation.loading import build_encoder, load_backbone  # noqa: E402
from framepack_history.generation.pipeline import Pipeline, SectionDone  # noqa: E402


def dit_flops(n_tokens: int, hidden: int, depth: int) -> float:
    """Forward FLOPs of a transformer over n tokens: linear layers + attention."""
    return depth * (24 * hidden**2 * n_tokens + 4 * n_tokens**2 * hidden)


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="toy-cpu")
    ap.add_argument("--sections", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    preset = load_preset(args.preset)
    bb = load_backbone(preset.model, preset.hardware.device, preset.hardware.dtype)
    enc = build_encoder(preset.model, bb)
    pipe = Pipeline(bb, enc, preset)
    seconds = args.sections * preset.video.section_frames / preset.video.fps
    req = GenerationRequest(prompt="0s: camera pans right; 20s: camera pans left", seconds=seconds, seed=0)

    geo = bb.geometry
    v = preset.video
    noisy = pipe.section_latent_frames * geo.tokens_per_latent_frame(v.height, v.width)
    text = getattr(getattr(bb, "tokenizer", None), "max_length", 0)
    cfg = bb.transformer.config
    hidden = geo.hidden_size
    depth = getattr(cfg, "depth", None) or (getattr(cfg, "num_layers", 0) + getattr(cfg, "num_single_layers", 0))

    rows = []
    print(f"{'section':>7} {'history_tokens':>14} {'encode_ms':>9} {'denoise_ms':>10} {'decode_ms':>9}")
    for ev in pipe.run(req):
        if isinstance(ev, SectionDone):
            # tokens the DiT saw while denoising this section = history *before* it
            seen = rows[-1]["tokens_after"] if rows else 0
            rows.append({"tokens_seen": seen, "tokens_after": ev.history_tokens, **ev.timings})
            t = ev.timings
            print(f"{ev.index:>7} {ev.history_tokens:>14} {t['history_encode_s'] * 1e3:>9.2f} {t['denoise_s'] * 1e3:>10.1f} {t['decode_s'] * 1e3:>9.2f}")

    first, last = rows[1:11], rows[-10:]  # skip section 0: warm-up and an empty history
    enc_ratio = mean([r["history_encode_s"] for r in last]) / mean([r["history_encode_s"] for r in first])
    den_ratio = mean([r["denoise_s"] for r in last]) / mean([r["denoise_s"] for r in first])
    pred = mean([dit_flops(text + noisy + r["tokens_seen"], hidden, depth) for r in last]) / mean(
        [dit_flops(text + noisy + r["tokens_seen"], hidden, depth) for r in first]
    )
    print()
    print(f"preset {preset.name}: {len(rows)} sections, {noisy} noisy tokens per section, "
          f"history {rows[-1]['tokens_after']} tokens after {seconds:g} s")
    print(f"history-encoding time ratio mean(last 10)/mean(first 10): {enc_ratio:.2f}  (goal <= 1.10)")
    print(f"denoising time ratio mean(last 10)/mean(first 10): measured {den_ratio:.2f}, predicted from token count {pred:.2f}")


if __name__ == "__main__":
    main()
