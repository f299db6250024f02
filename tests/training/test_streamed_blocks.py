"""``stream_blocks``: a Stage II step with the frozen DiT blocks streamed equals the resident one.

A tiny FramePack-F1 (F1's layout, five blocks) runs one Stage II step twice from the
same seeds: with every block on the device, and with the blocks streamed through the
(simulated) device by :class:`~framepack_history.training.streaming.TrainingStreamer`.
The residency ledger and strict checks on every weight-owning module inside the blocks
show where the weights were: a block's base weights are on the device only while it
runs, in the forward and again in its recompute (with at most the neighbour the
streamer prefetches), never after the step; the LoRA adapters and the encoder never
move. Loss and every gradient of the LoRA and the encoder are equal bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from framepack_history.errors import InputError
from framepack_history.lora.adapters import is_adapter
from framepack_history.training.modeling import (
    build_backbone,
    build_encoder,
    prepare_transformer,
    stream_frozen_blocks,
    training_preset,
)
from framepack_history.training.settings import TrainConfig, check_train_config, load_config
from framepack_history.training.stage2_autoregressive import NextSectionModule, Stage2Task
from tests.conftest import TINY_TOY

from .conftest import CONFIGS
from .test_context_parity import F1_PRESET

DEEPER = F1_PRESET.replace("encoder_channels = [8, 16, 16, 32]",
                           "encoder_channels = [8, 16, 16, 32]\nconfig = { num_layers = 2, num_single_layers = 3 }")
PROMPT = "a red fox runs through snow"


def config(tmp_path: Path, preset: Path, **over) -> TrainConfig:
    base = {"out": str(tmp_path / "run"), "preset": str(preset), "caption_dropout": 0.0, "lora_rank": 4,
            "gradient_checkpointing": True, "stage2": {"window_frames": 0, "p_window_mode": 0.0}}
    cfg = load_config(TrainConfig, CONFIGS / "tiny_stage2.toml", {**base, **over})
    cfg.stage = "stage2"
    return check_train_config(cfg)


def build(cfg: TrainConfig):
    """The tiny F1's Stage II task as ``run_stage`` builds it (seeded: both runs start from the same weights)."""
    p = training_preset(cfg)
    bb = build_backbone(cfg, p.model, "cpu")
    enc = build_encoder(cfg, p.model, bb)
    prepare_transformer(cfg, bb)
    streamer = stream_frozen_blocks(cfg, bb)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # LoRA B starts at zero, which would leave A's gradient zero: give it values
        for n, w in sorted(bb.transformer.named_parameters()):
            if "lora_B" in n:
                w.copy_(torch.randn(w.shape, generator=gen) * 0.1)
    task = Stage2Task(cfg, NextSectionModule(bb, enc.train(), cfg), p.video.fps)
    task.preset, task.streamer = p, streamer
    return task


def step(task: Stage2Task) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward and backward on a fixed clip (start latent + 2 sections + the target): loss and gradients."""
    clip = torch.randn((1, 16, 1 + 3 * 9, 8, 8), generator=torch.Generator().manual_seed(5))
    task.cfg.stage2.min_history_frames = 19
    batch = task.make_batch({"latents": clip, "caption": [PROMPT]}, torch.Generator().manual_seed(1))
    assert batch["split"] == 19 and batch["use_encoder"]
    task.module.train()
    loss = task.module(batch)["loss"]
    loss.backward()
    task.after_backward()
    grads = {n: p.grad.clone() for n, p in task.module.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("streamed")
    (root / "f1.toml").write_text(DEEPER)
    resident = build(config(root, root / "f1.toml"))
    streamed = build(config(root, root / "f1.toml", stream_blocks=True))
    s = streamed.streamer
    ledger, groups = s.residency, s.groups
    assert len(groups) == 5 and s.order == [0, 1, 2, 3, 4]

    def on(i: int) -> bool:
        return all(ledger.is_resident(t) for t in groups[i].tensors)

    seen: list[tuple[str, int, frozenset[int]]] = []
    strict: list[str] = []
    for i, block in enumerate(s.blocks):  # registered after the streamer's hooks: they run once it has copied
        block.register_forward_pre_hook(lambda m, a, i=i: seen.append(
            ("recompute" if s.recomputing else "forward", i, frozenset(j for j in range(5) if on(j)))))
        for qual, m in block.named_modules():
            own = [(n, t) for n, t in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)) if t is not None]
            if own:
                def check(mod, args, own=own, where=f"block{i}.{qual}"):
                    off = [n for n, t in own if not ledger.is_resident(t)]
                    assert not off, f"{where} ran with {off} off the device"
                    strict.append(where)
                m.register_forward_pre_hook(check)
    assert not any(on(i) for i in range(5))  # built: every block on the host
    loss_r, grads_r = step(resident)
    loss_s, grads_s = step(streamed)
    return {"resident": (loss_r, grads_r), "streamed": (loss_s, grads_s), "task": streamed, "seen": seen,
            "strict": strict, "on": on}


def test_a_block_is_on_the_device_only_while_it_runs_forward_and_recompute(runs) -> None:
    seen, on = runs["seen"], runs["on"]
    forward = [(i, res) for kind, i, res in seen if kind == "forward"]
    recompute = [(i, res) for kind, i, res in seen if kind == "recompute"]
    assert [i for i, _ in forward] == [0, 1, 2, 3, 4]
    assert [i for i, _ in recompute] == [4, 3, 2, 1, 0]  # checkpointing ran each block again, last first
    for i, res in forward:  # the running block, and the next one prefetched
        assert i in res and res <= {i, i + 1}, (i, sorted(res))
    for i, res in recompute:  # the recomputed block, and the one before it prefetched
        assert i in res and res <= {i, i - 1}, (i, sorted(res))
    assert not any(on(i) for i in range(5))  # after the step (and its release): none left
    # Strict checks fired in both passes for every weight-owning layer, LoRA adapters included.
    strict = runs["strict"]
    assert any(".lora_A." in w for w in strict)
    assert len(strict) == 2 * len(set(strict))


def test_adapters_and_the_encoder_stay_on_the_device(runs) -> None:
    task = runs["task"]
    s, ledger = task.streamer, task.streamer.residency
    moved = {id(t) for g in s.groups for t in g.tensors}
    dit = task.module.transformer
    adapters = [p for n, p in dit.named_parameters() if is_adapter(n)]
    assert adapters and not any(id(p) in moved for p in adapters)
    assert all(ledger.is_resident(p) for p in adapters)
    assert all(ledger.is_resident(p) for p in task.module.encoder.parameters())
    assert s.stem.on_device and s.resident_bytes == s.stem.nbytes()
    names = s.frozen_names("transformer.")
    assert names and not any("lora_" in n for n in names)
    assert all(n.startswith(("transformer.transformer_blocks.", "transformer.single_transformer_blocks.")) for n in names)


def test_loss_and_gradients_equal_the_resident_run_bit_for_bit(runs) -> None:
    loss_r, grads_r = runs["resident"]
    loss_s, grads_s = runs["streamed"]
    assert torch.equal(loss_r, loss_s)
    assert grads_r.keys() == grads_s.keys()
    assert any(".lora_A." in n for n in grads_s) and any(n.startswith("encoder.") for n in grads_s)
    for n, g in grads_r.items():
        assert torch.equal(g, grads_s[n]), (n, (g - grads_s[n]).abs().max())
    assert any(float(g.abs().max()) > 0 for n, g in grads_s.items() if ".lora_A." in n)


def test_streaming_without_gradient_checkpointing_is_refused(tmp_path) -> None:
    with pytest.raises(InputError) as e:
        config(tmp_path, TINY_TOY, stream_blocks=True, gradient_checkpointing=False)
    assert e.value.field == "stream_blocks" and "gradient_checkpointing" in e.value.message
    with pytest.raises(InputError, match="lora_rank"):
        config(tmp_path, TINY_TOY, stream_blocks=True, lora_rank=0)


def test_the_toy_backbone_is_not_streamed(tmp_path) -> None:
    cfg = config(tmp_path, TINY_TOY, stream_blocks=True)
    p = training_preset(cfg)
    bb = build_backbone(cfg, p.model, "cpu")
    prepare_transformer(cfg, bb)
    with pytest.raises(InputError, match="stream_blocks"):
        stream_frozen_blocks(cfg, bb)


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One Stage II step on prepared clips of a tiny F1 loaded from files, streamed and resident."""
    import framepack_history.backbones.hunyuan_framepack as hunyuan
    from framepack_history.cli.main import main

    from .conftest import train
    from .test_end_to_end_hunyuan import tiny_f1_preset, write_videos

    root = tmp_path_factory.mktemp("streamed_e2e")
    preset = tiny_f1_preset(root)
    videos = write_videos(root / "videos", seconds=3.0)
    assert main(["prepare-data", str(videos), "--preset", str(preset), "--out", str(root / "prepared"),
                 "--clip-seconds", "2"]) == 0
    over = {"preset": str(preset), "lora_rank": 4, "max_steps": 1, "batch_size": 1, "grad_accum": 2, "save_every": 1,
            "log_every": 1, "caption_dropout": 0.0, "gradient_checkpointing": True,
            "data": {"kind": "prepared", "root": str(root / "prepared")},
            "stage2": {"window_frames": 0, "p_window_mode": 0.0}}
    resident = train("stage2", root / "resident", **over)
    mp = pytest.MonkeyPatch()
    # Streamed loading with prepared data never builds the text or image encoders
    mp.setattr(hunyuan, "load_frozen", lambda *a, **k: pytest.fail("an encoder was loaded for a streamed run"))
    try:
        streamed = train("stage2", root / "streamed", **over, stream_blocks=True)
    finally:
        mp.undo()
    return {"resident": resident, "streamed": streamed}


def test_a_streamed_run_trains_and_exports_what_the_resident_run_does(trained) -> None:
    """The loop end to end: accelerate, one step of two micro-batches, export with the LoRA merged on the host.

    The forward is bit-exact (equal loss). The trained weights agree to a thousandth of one step's size
    (lr 1e-3), not bit for bit: the resident run's weights come from ``from_pretrained``, some at 8-byte
    offsets into a shared buffer, and CPU matmul kernels sum unaligned operands in another order (the
    streamed run computes on aligned copies). With aligned weights on both sides the gradients are
    bit-equal (the test above).
    """
    from safetensors.torch import load_file

    from framepack_history.training.common import read_log

    r, s = trained["resident"], trained["streamed"]
    assert read_log(r / "loss.jsonl")[0]["loss"] == read_log(s / "loss.jsonl")[0]["loss"]
    moved = 0.0
    for rel in ("transformer_lora/adapter_model.safetensors", "history_encoder/diffusion_pytorch_model.safetensors",
                "transformer/diffusion_pytorch_model.safetensors"):
        a, b = load_file(str(r / rel)), load_file(str(s / rel))
        assert a.keys() == b.keys() and a
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=f"{rel}: {k}")
        if rel.startswith("transformer_lora"):
            moved = max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k)
    assert moved > 5e-4  # lora_B left zero: the step trained it (Adam moves it about lr = 1e-3)


def test_a_trainable_weight_inside_a_block_is_not_streamed(tmp_path) -> None:
    (tmp_path / "f1.toml").write_text(DEEPER)
    cfg = config(tmp_path, tmp_path / "f1.toml", stream_blocks=True)
    p = training_preset(cfg)
    bb = build_backbone(cfg, p.model, "cpu")
    prepare_transformer(cfg, bb)
    bb.transformer.single_transformer_blocks[1].norm.linear.weight.requires_grad_(True)
    with pytest.raises(InputError, match="single_transformer_blocks.1.norm.linear.weight"):
        stream_frozen_blocks(cfg, bb)



# Two DDP processes that each stream their blocks: tests/training/test_end_to_end_hunyuan.py's
# test_two_processes_train_on_prepared_clips (one two-rank launch checks both).
