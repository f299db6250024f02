"""Training and generation agree: history positions, LR-only baseline init, LoRA merge, flow loss."""

from __future__ import annotations

import torch

from framepack_history.training.settings import TrainConfig


def _toy(tiny_toy_preset):
    from framepack_history.generation.loading import build_encoder, load_backbone

    bb = load_backbone(tiny_toy_preset.model)
    return bb, build_encoder(tiny_toy_preset.model, bb)


def test_training_history_tokens_match_history_state(tiny_toy_preset):
    """The tokens and positions Stage I/II train on are exactly what generation feeds the DiT."""
    from framepack_history.history.state import HistoryState
    from framepack_history.training.modeling import FlowModule

    bb, enc = _toy(tiny_toy_preset)
    latents = torch.randn(1, 4, 7, 16, 16)  # an odd length: a partial last group
    tokens, pos = FlowModule(bb, enc, TrainConfig()).history(latents)
    state = HistoryState(enc)
    state.append(latents[:, :, :4])
    state.append(latents[:, :, 4:])
    ref_tokens, ref_pos = state.tokens()
    torch.testing.assert_close(tokens, ref_tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pos, ref_pos)
    assert float(pos[:, 0].max()) < 0  # the whole history sits in the past


def test_large_patchifier_starts_as_pool_plus_the_dits_patchifier(tiny_toy_preset):
    from framepack_history.history.encoder import HistoryEncoder
    from framepack_history.training.modeling import LargePatchifier, anchor_dtype

    bb, _ = _toy(tiny_toy_preset)
    geo = bb.geometry
    lr_only = anchor_dtype(HistoryEncoder(latent_channels=4, hidden_size=geo.hidden_size, patch_size=geo.patch_size,
                                          rate="2x2x2", use_hr_branch=False))
    lr_only.set_patch_embedding(bb.patch_embedding())
    big = LargePatchifier(4, geo.hidden_size, geo.patch_size, "2x2x2")
    big.init_from(bb.patch_embedding())
    x = torch.randn(1, 4, 5, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(big(x), lr_only(x), rtol=1e-4, atol=1e-5)
    assert big.tokens_for(5, 16, 16) == lr_only.tokens_for(5, 16, 16)


def test_large_patchifier_round_trips(tmp_path):
    from framepack_history.training.modeling import LargePatchifier, load_encoder

    big = LargePatchifier(4, 32, (1, 2, 2), "4x4x2")
    big.save_pretrained(tmp_path / "enc")
    again = load_encoder(tmp_path / "enc")
    assert type(again) is LargePatchifier and torch.equal(again.proj.weight, big.proj.weight)


def test_lora_merge_keeps_the_output_and_leaves_plain_weights():
    from peft import LoraConfig, inject_adapter_in_model

    from framepack_history.backbones.toy import ToyDiT
    from framepack_history.training.modeling import LORA_TARGETS, merge_lora

    dit = ToyDiT(in_channels=4, hidden_size=32, depth=1, heads=2, rope_dims=(4, 6, 6))
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.1)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=LORA_TARGETS["toy"]), dit)
    lora = [n for n, _ in dit.named_parameters() if "lora_" in n]
    assert len(lora) == 8  # qkv, out, mlp.0, mlp.2: A and B each
    for n, p in dit.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    args = (torch.randn(1, 4, 2, 8, 8), torch.tensor([0.5]), torch.tensor([[2, 3, 4] + [0] * 13]))
    mask = args[2] > 0
    with torch.no_grad():
        before = dit(*args, mask)
        merge_lora(dit)
        after = dit(*args, mask)
    torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-5)
    assert set(dit.state_dict()) == set(ToyDiT(in_channels=4, hidden_size=32, depth=1, heads=2, rope_dims=(4, 6, 6)).state_dict())


def test_flow_loss_weightings(tiny_toy_preset):
    from framepack_history.training.modeling import FlowModule

    bb, enc = _toy(tiny_toy_preset)
    x0, noise = torch.randn(2, 4, 1, 8, 8), torch.randn(2, 4, 1, 8, 8)
    sigma = torch.tensor([0.5, 0.25])
    pred = noise - x0 + 1.0  # error of exactly 1 everywhere
    v = FlowModule(bb, enc, TrainConfig(loss_weighting="velocity")).flow_loss(pred, x0, noise, sigma)
    x = FlowModule(bb, enc, TrainConfig(loss_weighting="x0")).flow_loss(pred, x0, noise, sigma)
    torch.testing.assert_close(v, torch.ones(2))
    torch.testing.assert_close(x, sigma**2)


def test_stage2_window_mode_feeds_what_the_pipeline_feeds(tmp_path):
    """Window-mode steps: no embedding, one section of raw latents (the pipeline's default window)."""
    from framepack_history.training.common import step_generator
    from framepack_history.training.modeling import build_backbone, build_encoder, training_preset
    from framepack_history.training.settings import load_config
    from framepack_history.training.stage2_autoregressive import NextSectionModule, Stage2Task

    from .conftest import CONFIGS

    cfg = load_config(TrainConfig, CONFIGS / "tiny_stage2.toml",
                      {"out": str(tmp_path), "stage2": {"p_window_mode": 1.0, "window_frames": 0}})
    preset = training_preset(cfg)
    bb = build_backbone(cfg, preset.model, "cpu")
    task = Stage2Task(cfg, NextSectionModule(bb, build_encoder(cfg, preset.model, bb), cfg), preset.video.fps)
    task.preset = preset
    items = {"latents": torch.randn(2, 4, 12, 16, 16), "caption": ["0s: camera pans left; 1s: camera holds"] * 2}
    for step in range(5):
        b = task.make_batch(items, step_generator(0, step))
        assert not b["use_encoder"] and b["section"] == preset.video.section_frames
        assert b["window"] == min(b["section"], b["split"])


def test_stage2_history_alone_steps_drop_the_window_and_nothing_else(tmp_path):
    """p_no_window: encoder-mode steps without the add-on window; at 0 the batches are those of a config without it."""
    from framepack_history.training.common import step_generator
    from framepack_history.training.modeling import build_backbone, build_encoder, training_preset
    from framepack_history.training.settings import load_config
    from framepack_history.training.stage2_autoregressive import NextSectionModule, Stage2Task

    from .conftest import CONFIGS

    def batches(**stage2):
        cfg = load_config(TrainConfig, CONFIGS / "tiny_stage2.toml",
                          {"out": str(tmp_path), "stage2": {"window_frames": 2, "p_window_mode": 0.0, **stage2}})
        preset = training_preset(cfg)
        bb = build_backbone(cfg, preset.model, "cpu")
        task = Stage2Task(cfg, NextSectionModule(bb, build_encoder(cfg, preset.model, bb), cfg), preset.video.fps)
        task.preset = preset
        items = {"latents": torch.randn(2, 4, 12, 16, 16, generator=torch.Generator().manual_seed(1)),
                 "caption": ["camera holds"] * 2}
        return [task.make_batch(items, step_generator(0, step)) for step in range(6)]

    plain, zero, always = batches(), batches(p_no_window=0.0), batches(p_no_window=1.0)
    assert all(b["use_encoder"] and b["window"] == 2 for b in plain)
    assert [(b["split"], b["window"]) for b in zero] == [(b["split"], b["window"]) for b in plain]
    assert all(torch.equal(a["noise"], b["noise"]) for a, b in zip(zero, plain))
    assert all(b["use_encoder"] and b["window"] == 0 for b in always)


def test_export_from_a_gathered_state_dict_matches_the_trained_module(tmp_path, stage1_run):
    """The FSDP/DeepSpeed export path: rebuild on the CPU, load the full state dict, export."""
    from safetensors.torch import load_file

    from framepack_history.training.modeling import (
        FlowModule,
        build_backbone,
        build_encoder,
        export_from_state,
        prepare_transformer,
        training_preset,
    )
    from framepack_history.training.settings import load_config

    from .conftest import CONFIGS

    cfg = load_config(TrainConfig, CONFIGS / "tiny_stage1.toml", {"out": str(tmp_path), "lora_rank": 2})
    preset = training_preset(cfg)
    bb = build_backbone(cfg, preset.model, "cpu")
    enc = build_encoder(cfg, preset.model, bb)
    prepare_transformer(cfg, bb)
    module = FlowModule(bb, enc, cfg)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))  # "trained"
    state = {k: v.clone() for k, v in module.state_dict().items()}
    export_from_state(tmp_path / "out", state, cfg, preset)
    enc_file = "history_encoder/diffusion_pytorch_model.safetensors"
    saved = load_file(str(tmp_path / "out" / enc_file))
    assert all(torch.equal(saved[k], state[f"encoder.{k}"]) for k in saved)
    assert (tmp_path / "out" / "transformer_lora" / "adapter_model.safetensors").is_file()


def test_image_to_video_backbones_get_the_first_frame_as_condition(tmp_path):
    """FramePack-F1 always sees the start image; training conditions on each clip's first frame too."""
    from framepack_history.training.common import step_generator
    from framepack_history.training.modeling import build_backbone, build_encoder, training_preset
    from framepack_history.training.settings import load_config
    from framepack_history.training.stage2_autoregressive import NextSectionModule, Stage2Task

    from .conftest import CONFIGS

    cfg = load_config(TrainConfig, CONFIGS / "tiny_stage2.toml",
                      {"out": str(tmp_path), "preset": "tests/presets/tiny-hunyuan.toml", "lora_rank": 4,
                       "stage2": {"window_frames": 0}})  # F1 reads its own context, no add-on window
    preset = training_preset(cfg)
    bb = build_backbone(cfg, preset.model, "cpu")
    task = Stage2Task(cfg, NextSectionModule(bb, build_encoder(cfg, preset.model, bb), cfg), preset.video.fps)
    task.preset = preset
    latents = torch.randn(2, 16, 6, 8, 8)
    b = task.make_batch({"latents": latents, "caption": ["a", "b"]}, step_generator(0, 0))
    cond = b["cond"].tensors
    assert {"prompt_embeds", "image_embeds", "start_latents"} <= set(cond)
    assert cond["image_embeds"].shape[0] == 2 and cond["start_latents"].shape[-2:] == (8, 8)
    assert torch.equal(cond["start_latents"], latents[:, :, :1])  # the clip's first latent, as generation's start
