"""What a LoRA costs the DiT: resident unfused adapters (what runs) against fusing into streamed blocks.

Two ways to run a LoRA beside block streaming:

* **resident adapters** (chosen): peft adapter layers, kept on the device next to the DiT's stem;
  every linear layer computes ``W x + w * B (A x)``. Costs the adapter's bytes on the device and
  ``r (in + out)`` extra multiply-adds per token and layer.
* **fused into streamed blocks**: each streamed block's device copy gets ``W + w * B A`` after its
  copy lands. Costs ``r in out`` multiply-adds per layer *per block copy* (every step), a transient
  ``in x out`` delta, and resident blocks need a merge and an exact unmerge per job.

Part 1 measures both on the CPU (one run, same inputs) on a scaled-down FramePack-F1 DiT.
Part 2 counts the full-size DiT's linear layers (configs on ``meta``, no weights) and gives the
device bytes and multiply-add shares at FramePack-F1's 480x832 section.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from framepack_history.backbones.base import (  # noqa: E402
    Conditioning,
    Context,
    transformer_blocks,  # noqa: E402
)

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
           "proj_mlp", "proj_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]


def _block_linears(dit: nn.Module) -> list[nn.Linear]:
    return [m for b in transformer_blocks(dit) for n, m in b.named_modules()
            if isinstance(m, nn.Linear) and any(n.endswith(t) for t in TARGETS)]


def _timed(fn, repeat: int, warm: bool = True) -> float:
    if warm:
        fn()
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return sorted(t)[len(t) // 2]


def measure(rank: int, repeat: int) -> None:
    from peft import LoraConfig

    from framepack_history.backbones.hunyuan_framepack import HunyuanFramepackBackbone

    torch.manual_seed(0)
    bb = HunyuanFramepackBackbone.tiny(num_attention_heads=8, attention_head_dim=64, rope_axes_dim=(16, 24, 24),
                                       num_layers=2, num_single_layers=4)
    dit = bb.transformer
    d = dit.config.num_attention_heads * dit.config.attention_head_dim
    cond = Conditioning({**bb.encode_text("a red circle").tensors, **bb.encode_image(torch.zeros(3, 128, 128)).tensors})
    x, s = torch.randn(1, 16, 3, 16, 16), torch.tensor([0.5])  # 192 noisy tokens
    ctx = Context(recent_latents=torch.randn(1, 16, 19, 16, 16))

    def forward() -> None:
        with torch.no_grad():
            bb.predict(x, s, cond, ctx, 10.0)

    plain = copy.deepcopy(dit)
    dit.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS), adapter_name="bench")
    for n, p in dit.named_parameters():
        if "lora_B" in n:
            nn.init.normal_(p, std=0.01)
    # interleaved (without, with, without, ...) so that a busy machine slows both alike
    base_t, lora_t = [], []
    forward()
    for _ in range(repeat):
        dit.disable_adapters()
        base_t.append(_timed(forward, 1, warm=False))
        dit.enable_adapters()
        lora_t.append(_timed(forward, 1, warm=False))
    base, unfused = sorted(base_t)[repeat // 2], sorted(lora_t)[repeat // 2]
    ratio = sorted(b / a for a, b in zip(base_t, lora_t))[repeat // 2]
    adapter = sum(p.numel() * p.element_size() for n, p in dit.named_parameters() if "lora_" in n)
    pairs = [(m.base_layer.weight, m.lora_A["bench"].weight, m.lora_B["bench"].weight)
             for m in dit.modules() if hasattr(m, "lora_A") and "bench" in getattr(m, "lora_A", {})]

    def fuse_all_blocks() -> None:  # what fusing costs per step when every block streams
        with torch.no_grad():
            for w, a, b in pairs:
                w.detach().clone().addmm_(b, a, alpha=0.8)

    fuse = _timed(fuse_all_blocks, repeat)
    blocks = sum(p.numel() * p.element_size() for b in transformer_blocks(plain) for p in b.parameters())
    print(f"measured (CPU, {torch.get_num_threads()} threads; DiT hidden {d}, 6 blocks, LoRA rank {rank} on "
          f"{len(pairs)} layers, {x.shape[2] * 8 * 8} noisy tokens + F1 context; median of {repeat})")
    print(f"  DiT forward without LoRA            {base * 1e3:8.1f} ms")
    print(f"  with resident unfused adapters      {unfused * 1e3:8.1f} ms  ({ratio:.3f}x, median of paired ratios)")
    print(f"  fusing every block's deltas once    {fuse * 1e3:8.1f} ms  (+{fuse / base:.3f} of a forward, per step)")
    print(f"  adapter bytes / block bytes         {adapter / blocks:.4f}")


def full_size(ranks: tuple[int, ...], tokens: int) -> None:
    from framepack_history.config.presets import load_preset
    from framepack_history.memory.components import meta_components

    comps = meta_components(load_preset("rtx4070-12gb"))
    dit = comps.backbone.transformer
    linears = _block_linears(dit)
    mac = sum(m.in_features * m.out_features for m in linears)  # per token
    blocks = sum(comps.block_bytes())
    print(f"full-size FramePack-F1 DiT (meta; {len(transformer_blocks(dit))} blocks, {len(linears)} targeted linear "
          f"layers, {blocks / 2**30:.2f} GiB of block weights in bf16; {tokens} tokens per call)")
    for r in ranks:
        extra = sum(r * (m.in_features + m.out_features) for m in linears)  # per token, unfused
        adapter = extra * 2  # bf16 bytes: A [r, in] + B [out, r]
        fused = sum(r * m.in_features * m.out_features for m in linears)  # per step, every block streamed
        print(f"  rank {r:>3}: adapter {adapter / 2**20:7.1f} MiB on the device ({adapter / blocks:.2%} of the blocks); "
              f"unfused +{extra / mac:.2%} of the linear multiply-adds; fused into streamed blocks "
              f"+{fused / (mac * tokens):.3%} per step")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--tokens", type=int, default=39_465, help="DiT tokens of a 480x832 section with history")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    measure(args.rank, args.repeat)
    full_size((16, 32, 128), args.tokens)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
