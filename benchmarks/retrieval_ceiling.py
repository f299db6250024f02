"""How much of a token box any per-box code can keep: the ceiling under Stage I retrieval at 2x2x4.

At the toy's rate one history token (128 numbers, the DiT's width) stands for a box of 4 latent frames x
4 x 4 latent pixels x 12 channels = 768 numbers. Whatever the encoder, the DiT can redraw a frame only
from what the tokens keep. This script measures, on held-out toy worlds (the retrieval table's clips,
``toyworld`` eval split, 12 s histories), the PSNR of the best reconstruction of every box from a
``width``-number code:

* **linear** (what the large patchifier and the box branch are): the principal components of boxes of
  training worlds (the Stage I clips), the best linear code and decode of that size;
* **nonlinear**: an MLP autoencoder (768 -> 1024 -> 1024 -> width -> 1024 -> 1024 -> 768) trained on the
  training worlds' boxes for ``--steps`` batches of 512 (what a nonlinear code of that size keeps with a
  decoder far larger than a DiT reading tokens; still rising when it stops).

PSNR is on pixels in [0, 1], as in ``eval retrieval`` (the toy VAE is lossless space-to-depth, so latent
and pixel errors agree).

    nice -n 10 python benchmarks/retrieval_ceiling.py --steps 3000   # about 10 min on an idle core
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from framepack_history.config.presets import load_preset
from framepack_history.generation.loading import load_backbone
from framepack_history.training.data import toyworld_dataset
from framepack_history.training.settings import DataConfig

BOX = (4, 4, 4)  # latent frames, height, width of one 2x2x4 token at the toy DiT's 1x2x2 patch


def boxes(latents: torch.Tensor) -> torch.Tensor:
    """``[N, C, T, H, W]`` latents -> ``[M, C*4*4*4]`` token boxes."""
    ft, fh, fw = BOX
    b = latents.unfold(2, ft, ft).unfold(3, fh, fh).unfold(4, fw, fw)  # N, C, T', H', W', ft, fh, fw
    return b.permute(0, 2, 3, 4, 1, 5, 6, 7).flatten(4).flatten(0, 3)


@torch.no_grad()
def clips(split: str, n: int, frames: int = 48) -> torch.Tensor:
    """Latents ``[n, 12, T, 8, 8]`` of toy-world clips (the shipped preset's lossless VAE)."""
    preset = load_preset("toy-cpu")
    bb = load_backbone(preset.model)
    v = preset.video
    data = toyworld_dataset(DataConfig(kind="toyworld", frames=frames, num_videos=n, split=split), v.width, v.height, v.fps)
    return torch.cat([bb.vae_encode(data[i]["video"][None]).float() for i in range(len(data))])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR on [0, 1] pixels of [-1, 1] values."""
    return 10 * math.log10(1.0 / (((a - b) ** 2).mean().item() / 4))


def linear(train: torch.Tensor, test: torch.Tensor, widths: list[int]) -> dict[int, float]:
    """PSNR of the best rank-``k`` linear code of each held-out box, for every ``k`` in ``widths``."""
    mean = train.mean(0)
    _, _, v = torch.linalg.svd(train - mean, full_matrices=False)
    return {k: psnr((test - mean) @ v[:k].T @ v[:k] + mean, test) for k in widths}


def nonlinear(train: torch.Tensor, test: torch.Tensor, width: int, steps: int, seed: int = 0) -> list[tuple[int, float]]:
    """(step, held-out PSNR) of an MLP autoencoder with a ``width``-number code, trained for ``steps`` batches."""
    torch.manual_seed(seed)
    d = train.shape[1]
    enc = nn.Sequential(nn.Linear(d, 1024), nn.GELU(), nn.Linear(1024, 1024), nn.GELU(), nn.Linear(1024, width))
    dec = nn.Sequential(nn.Linear(width, 1024), nn.GELU(), nn.Linear(1024, 1024), nn.GELU(), nn.Linear(1024, d))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], 1e-3)
    curve = []
    gen = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        batch = train[torch.randint(0, len(train), (512,), generator=gen)]
        loss = ((dec(enc(batch)) - batch) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == steps:
            with torch.no_grad():
                curve.append((step, psnr(dec(enc(test)), test)))
            print(f"  autoencoder step {step}: {curve[-1][1]:.2f} dB", flush=True)
    return curve


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-clips", type=int, default=1024, help="training worlds (Stage I's split)")
    ap.add_argument("--eval-clips", type=int, default=64, help="held-out worlds (the retrieval table's)")
    ap.add_argument("--width", type=int, default=128, help="numbers per token (the toy DiT's width)")
    ap.add_argument("--steps", type=int, default=3000, help="autoencoder training batches (0 = linear only)")
    ap.add_argument("--out", default="outputs/bench/retrieval_ceiling.json")
    args = ap.parse_args(argv)
    train, test = boxes(clips("train", args.train_clips)), boxes(clips("eval", args.eval_clips))
    widths = sorted({32, 64, args.width, 2 * args.width})
    lin = linear(train, test, widths)
    for k, v in lin.items():
        print(f"linear code of {k} numbers per box: {v:.2f} dB")
    curve = nonlinear(train, test, args.width, args.steps) if args.steps > 0 else []
    if curve:
        print(f"nonlinear code of {args.width} numbers per box: {curve[-1][1]:.2f} dB after {curve[-1][0]} steps "
              f"(linear {lin[args.width]:.2f} dB)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"linear": lin, "nonlinear": curve, "args": vars(args)}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
