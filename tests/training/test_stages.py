"""Stage I / Stage II / toy VAE: a few steps on tiny models, exports, resume, Omega."""

from __future__ import annotations

import json
import math

import torch

from framepack_history.training.common import read_log

from .conftest import train


def test_stage1_runs_and_exports_an_app_loadable_folder(stage1_run):
    rows = read_log(stage1_run / "loss.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in rows)
    for part in ("transformer", "vae", "history_encoder"):
        assert (stage1_run / part / "config.json").is_file()
    assert (stage1_run / "tokenizer.json").is_file() and (stage1_run / "loss.png").stat().st_size > 0

    from framepack_history.config.presets import load_preset
    from framepack_history.config.request import GenerationRequest
    from framepack_history.generation.loading import build_encoder, load_backbone
    from framepack_history.generation.pipeline import Pipeline, SectionDone

    preset = load_preset(stage1_run / "preset.toml")
    bb = load_backbone(preset.model)
    pipe = Pipeline(bb, build_encoder(preset.model, bb), preset)
    done = [e for e in pipe.run(GenerationRequest(prompt="camera pans left", seconds=1.0)) if isinstance(e, SectionDone)]
    assert len(done) == 2 and done[-1].history_tokens > 0


def test_stage2_runs_from_stage1_with_window_mode_mixed_in(stage2_run, stage1_run):
    rows = read_log(stage2_run / "loss.jsonl")
    assert len(rows) == 4 and all(math.isfinite(r["loss"]) for r in rows)
    assert {r["window_mode"] for r in rows} == {0.0, 1.0}  # p_window_mode = 0.5 over 4 steps
    cfg = json.loads((stage2_run / "config.json").read_text())
    assert cfg["model"]["encoder"].endswith("history_encoder")
    # The encoder started from Stage I and kept training.
    from safetensors.torch import load_file

    a = load_file(str(stage1_run / "history_encoder" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(stage2_run / "history_encoder" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_frozen_encoder_ablation_keeps_stage1_weights(tmp_path, stage1_run):
    out = train("stage2", tmp_path / "frozen", max_steps=2, stage2={"freeze_encoder": True, "p_window_mode": 0.0},
                model={"weights": str(stage1_run), "encoder": str(stage1_run / "history_encoder")})
    from safetensors.torch import load_file

    a = load_file(str(stage1_run / "history_encoder" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(out / "history_encoder" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vae_trains_and_sets_unit_latent_scale(tmp_path):
    out = train("vae", tmp_path / "vae")
    rows = read_log(out / "loss.jsonl")
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)
    cfg = json.loads((out / "vae" / "config.json").read_text())
    assert cfg["scaling_factor"] > 0 and cfg["scaling_factor"] != 1.0
    # Stage I can start from it.
    s1 = train("stage1", tmp_path / "s1", max_steps=1, vae_weights=str(out))
    assert json.loads((s1 / "vae" / "config.json").read_text())["scaling_factor"] == cfg["scaling_factor"]


def test_resume_gives_the_same_next_loss(tmp_path):
    """LoRA + EMA: the checkpoint holds trainable weights, EMA, optimizer, scheduler and step."""
    over = {"lora_rank": 4, "ema_decay": 0.9, "lr_schedule": "cosine", "lr_total_steps": 4, "warmup_steps": 1}
    full = train("stage1", tmp_path / "full", **over)
    part = tmp_path / "part"
    train("stage1", part, max_steps=2, **over)
    train("stage1", part, **over)  # resume="auto" picks up checkpoints/step_0000002
    a, b = read_log(full / "loss.jsonl"), read_log(part / "loss.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["lr"] for r in a] == [r["lr"] for r in b]
    assert (part / "transformer_lora" / "adapter_model.safetensors").is_file()


def test_omega_is_random_in_count_and_position_and_covers_the_history():
    from framepack_history.training.stage1_frame_query import sample_omega

    t, seen, counts, sets = 12, set(), set(), set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        o = sample_omega(t, gen, 1, 4, 0.25)
        assert o.dtype == torch.long and len(set(o.tolist())) == len(o) and 0 <= o.min() and o.max() < t
        seen.update(o.tolist())
        counts.add(len(o))
        sets.add(tuple(o.tolist()))
    assert seen == set(range(t))  # every position, oldest to newest, gets queried
    assert counts == {1, 2, 3, 4}
    assert len(sets) > 100


def test_stage1_batches_draw_a_different_omega_per_sample(tmp_path):
    """Within one batch, samples query different frames; the encoder input keeps Omega clean."""
    from framepack_history.training.common import step_generator
    from framepack_history.training.modeling import build_backbone, build_encoder, training_preset
    from framepack_history.training.settings import TrainConfig, load_config
    from framepack_history.training.stage1_frame_query import FrameQueryModule, Stage1Task

    from .conftest import CONFIGS

    cfg = load_config(TrainConfig, CONFIGS / "tiny_stage1.toml", {"out": str(tmp_path), "stage1": {"omega_max": 6}})
    preset = training_preset(cfg)
    bb = build_backbone(cfg, preset.model, "cpu")
    task = Stage1Task(cfg, FrameQueryModule(bb, build_encoder(cfg, preset.model, bb), cfg), preset.video.fps)
    items = {"latents": torch.randn(8, 4, 10, 16, 16), "caption": ["camera pans left"] * 8}
    batch = task.make_batch(items, step_generator(0, 0))
    omegas = {tuple(o.tolist()) for o in batch["omega"]}
    assert len(omegas) > 1
    for o, keep in zip(batch["omega"], batch["keep"]):
        assert keep.nonzero().flatten().tolist() == o.tolist()
    assert 0 < float(batch["mask_sigma"].min()) and float(batch["mask_sigma"].max()) < 1


def test_vae_training_refuses_a_weightless_vae(tmp_path):
    import pytest

    from framepack_history.errors import InputError

    over = {"model": {"config": {"vae": {"kind": "space_to_depth", "latent_channels": 12, "spatial_scale": 2}}}}
    with pytest.raises(InputError, match="model.config.vae.kind.*no weights to train"):
        train("vae", tmp_path / "vae", **over)


def test_canvas_positions_train_from_the_camera_track(tmp_path, stage1_run):
    """Stage II with canvas positions reads camera_x from the clips (through the latent cache too)."""
    import pytest

    from framepack_history.errors import InputError

    over = {"model": {"weights": str(stage1_run), "encoder": str(stage1_run / "history_encoder"),
                      "config": {"dit": {"canvas_positions": True, "rope_values": True}}}, "max_steps": 2}
    out = train("stage2", tmp_path / "canvas", data={"cache": str(tmp_path / "cache")}, **over)
    saved = json.loads((out / "transformer" / "config.json").read_text())
    assert saved["canvas_positions"] is True and saved["rope_values"] is True  # switches a loaded model takes
    assert all(math.isfinite(r["loss"]) for r in read_log(out / "loss.jsonl"))

    from framepack_history.config.presets import load_preset
    from framepack_history.generation.loading import load_backbone
    from framepack_history.training.stages import track_of

    bb = load_backbone(load_preset(out / "preset.toml").model)
    assert all(block.rope_values for block in bb.transformer.blocks)
    track = track_of({"camera_x": torch.tensor([[0, 4, 8]])}, bb)  # 32 px views: 4 px = one DiT token
    torch.testing.assert_close(track.cpu(), torch.tensor([[0.0, 1.0, 2.0]]))
    with pytest.raises(InputError, match="camera track"):
        track_of({}, bb)


def test_revisit_weights_count_what_only_memory_has_seen():
    """A pan away and back: only the sections coming back over seen canvas get weight."""
    from framepack_history.training.stage2_autoregressive import revisit_weights

    cx = torch.tensor([[0, 2, 4, 6, 8, 10, 12, 14, 16, 14, 12, 10, 8, 6, 4, 2, 0, 0, 0, 0]])
    w = revisit_weights(cx, view=16, window=2, section=4)
    assert w.shape == (21,)
    assert w[:8].sum() == 0  # panning away: everything entering the view is new
    # split 8: window frames 6-7 show columns 12..29, frames 0..5 saw 0..25; frame 11 (x=10) shows 10, 11
    assert w[8] == 2 and w[10] == 20
    assert w[17:].sum() == 0  # no room for a whole section
    # the same clip twice counts twice; a held camera never needs memory
    assert torch.equal(revisit_weights(cx.repeat(2, 1), 16, 2, 4), 2 * w)
    assert revisit_weights(torch.zeros(1, 20, dtype=torch.long), 16, 2, 4).sum() == 0


def test_memory_terms_train_from_cached_clips(tmp_path, stage1_run):
    """stage2.p_revisit_split reads the clips' camera tracks (cached clips too); p_frame_query mixes in Stage I steps."""
    over = {"model": {"weights": str(stage1_run), "encoder": str(stage1_run / "history_encoder")},
            "stage2": {"p_revisit_split": 1.0, "p_frame_query": 0.5, "window_frames": 1}, "max_steps": 6}
    out = train("stage2", tmp_path / "memory", data={"cache": str(tmp_path / "cache")}, **over)
    log = read_log(out / "loss.jsonl")
    assert len(log) == 6 and all(math.isfinite(r["loss"]) for r in log)
    kinds = {r["frame_query"] for r in log}
    assert kinds == {0.0, 1.0}  # both objectives ran (the step generators are seeded: always the same mix)
    assert all("history_frames" in r for r in log if r["frame_query"] == 0.0)


def test_keyframe_steps_train_and_leave_the_other_draws_alone(tmp_path):
    """stage2.p_keyframe: a share of steps sees a clean future latent of the clip; it is drawn after all else."""
    from framepack_history.training.modeling import build_backbone, build_encoder, training_preset
    from framepack_history.training.settings import TrainConfig, load_config
    from framepack_history.training.stage2_autoregressive import NextSectionModule, Stage2Task

    from .conftest import CONFIGS

    out = train("stage2", tmp_path / "keyframe", stage2={"p_keyframe": 0.5, "keyframe_horizon": 8}, max_steps=6)
    log = read_log(out / "loss.jsonl")
    assert len(log) == 6 and all(math.isfinite(r["loss"]) for r in log)
    assert {r["keyframe"] for r in log} == {0.0, 1.0}  # both kinds of step ran (seeded: always the same mix)

    def batch(**stage2):
        cfg = load_config(TrainConfig, CONFIGS / "tiny_stage2.toml", {"out": str(tmp_path / "b"), "stage2": stage2})
        cfg.stage = "stage2"
        p = training_preset(cfg)
        bb = build_backbone(cfg, p.model, "cpu")
        task = Stage2Task(cfg, NextSectionModule(bb, build_encoder(cfg, p.model, bb), cfg), p.video.fps)
        task.preset = p
        clips = torch.randn(2, bb.geometry.latent_channels, 20, 16, 16, generator=torch.Generator().manual_seed(0))
        return task.make_batch({"latents": clips, "caption": ["camera holds"] * 2}, torch.Generator().manual_seed(4))

    off, on = batch(), batch(p_keyframe=1.0, keyframe_horizon=30)
    assert off["keyframe"] is None and 0 <= on["keyframe"] <= 20 - 1 - on["split"]  # within the clip, past the horizon's cap
    assert on["split"] == off["split"] and on["use_encoder"] == off["use_encoder"]
    assert torch.equal(on["noise"], off["noise"]) and torch.equal(on["sigma"], off["sigma"])
