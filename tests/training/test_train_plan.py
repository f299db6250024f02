"""The training memory plan: rows move the right way with each setting; the shipped configs fit their cards."""

from __future__ import annotations

from pathlib import Path

import pytest

from framepack_history.cli.main import main
from framepack_history.errors import InputError
from framepack_history.training.plan import CARDS, plan_training
from framepack_history.training.settings import TrainConfig, check_train_config, load_config
from tests.conftest import TINY_HUNYUAN

CONFIGS = Path(__file__).resolve().parents[2] / "framepack_history" / "training" / "configs"
BASE = {"preset": str(TINY_HUNYUAN), "data.frames": 41, "gradient_checkpointing": True, "lora_rank": 4,
        "weights_dtype": "bfloat16", "mixed_precision": "bf16", "batch_size": 1}


def tiny(stage: str = "stage2", **over) -> TrainConfig:
    return check_train_config(load_config(TrainConfig, None, {**BASE, "stage": stage, **over}))


def row(p, name: str) -> int:
    return next(r.device for r in p.rows if r.name.startswith(name))


@pytest.fixture(scope="module")
def base():
    return plan_training(tiny())


def test_a_higher_lora_rank_costs_more_trainable_state(base):
    big = plan_training(tiny(lora_rank=16))
    assert row(big, "LoRA rank 16") > row(base, "LoRA rank 4") > 0
    assert big.flops_per_sample > base.flops_per_sample
    assert big.device_total > base.device_total


def test_gradient_checkpointing_trades_activations_for_a_recompute(base):
    off = plan_training(tiny(gradient_checkpointing=False))
    assert row(off, "activations") > row(base, "activations")
    assert off.flops_per_sample < base.flops_per_sample  # no second forward
    assert off.passes == 1 and base.passes == 2


def test_fsdp_divides_the_frozen_weights_and_the_trainable_state(base):
    four = plan_training(tiny(), gpus=4)
    assert four.fsdp
    assert row(four, "DiT frozen blocks (shard)") < row(base, "DiT frozen blocks")
    assert row(four, "LoRA") < row(base, "LoRA")
    assert row(four, "DiT all-gathered blocks") > 0
    assert row(four, "activations") == row(base, "activations")  # every GPU runs its own micro-batch


def test_float8_storage_halves_the_frozen_blocks(base):
    f8 = plan_training(tiny(), weights_storage="float8_e4m3fn")
    assert row(f8, "DiT frozen blocks") * 2 == pytest.approx(row(base, "DiT frozen blocks"), rel=0.02)
    assert row(f8, "LoRA") == row(base, "LoRA")


def test_longer_clips_mean_more_history_tokens_and_activations(base):
    long = plan_training(tiny(**{"data.frames": 81}))
    assert long.seq.history > base.seq.history
    assert row(long, "activations") > row(base, "activations")
    assert long.flops_per_sample > base.flops_per_sample


def test_prepared_data_leaves_the_encoders_in_the_load_peak_alone(base):
    prep = plan_training(tiny(**{"data.kind": "prepared"}))
    assert row(base, "text encoder (LLaMA)") > 0 and row(prep, "text encoder (LLaMA)") == 0
    assert prep.device_total < base.device_total
    assert prep.load_peak == base.load_peak > row(base, "DiT frozen blocks") + row(base, "text encoder (LLaMA)")


def test_stage1_queries_fewer_frames_than_a_section():
    p = plan_training(tiny("stage1", **{"stage1.omega_max": 2}))
    q = plan_training(tiny("stage1", **{"stage1.omega_max": 4}))
    assert p.seq.noisy < q.seq.noisy and p.seq.context == q.seq.context


def test_the_card_table_on_the_command_line(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(f'stage = "stage2"\npreset = "{TINY_HUNYUAN}"\nlora_rank = 4\nweights_dtype = "bfloat16"\n'
                   'gradient_checkpointing = true\n[data]\nframes = 41\n')
    assert main(["plan", "--train", str(cfg), "--gpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "total per GPU" in out and "FLOPs:" in out and "FSDP" in out
    for card in CARDS:
        line = next(ln for ln in out.splitlines() if ln.startswith(card.name))
        assert "fits" in line  # a tiny model fits every card


def test_a_bad_config_path_is_exit_2_with_a_clear_message(capsys):
    assert main(["plan", "--train", "no/such/config.toml"]) == 2
    err = capsys.readouterr().err
    assert "--train" in err and "no such file" in err and "config.toml" in err


def test_a_streamed_config_is_planned_streamed():
    deeper = {"model": {"config": {"num_layers": 2, "num_single_layers": 3}}}  # five blocks: two on the device
    base = plan_training(tiny(**deeper))
    streamed = plan_training(tiny(stream_blocks=True, **deeper))
    assert streamed.streaming and not base.streaming
    blocks = next(r for r in streamed.rows if r.name == "DiT streamed blocks")
    resident = next(r for r in base.rows if r.name == "DiT frozen blocks")
    assert blocks.host == resident.device == streamed.block_bytes  # every block pinned on the host
    assert 0 < blocks.device < resident.device and blocks.streamable == 0  # two blocks on the device
    assert streamed.device_total == base.streamed_total  # what the lever promised
    assert streamed.load_peak == row(base, "DiT stem") + row(base, "text encoder (LLaMA)") + sum(
        row(base, n) for n in ("text encoder 2", "image encoder", "VAE"))  # the blocks load to the host
    prep = plan_training(tiny(stream_blocks=True, **deeper, **{"data.kind": "prepared"}))
    assert prep.load_peak == row(base, "DiT stem")  # prepared data: no encoder is ever loaded
    assert row(prep, "activations") == row(base, "activations")
    assert plan_training(tiny(stream_blocks=True, **deeper), gpus=2).fsdp is False  # several GPUs: DDP, each streams its own
    with pytest.raises(InputError, match="stream_blocks"):
        plan_training(tiny(stream_blocks=True, **deeper), gpus=2, fsdp=True)


# (config, GPUs, card GiB, F1 sections after the start frame)
SHIPPED = [("hunyuan_stage1_1x80gb.toml", 1, 80, 16), ("hunyuan_stage2_1x80gb.toml", 1, 80, 16),
           ("hunyuan_stage1_8x80gb.toml", 8, 80, 16), ("hunyuan_stage2_8x80gb.toml", 8, 80, 16),
           ("hunyuan_stage1_1x24gb.toml", 1, 24, 16), ("hunyuan_stage2_1x24gb.toml", 1, 24, 9)]


@pytest.mark.parametrize(("name", "gpus", "gib", "sections"), SHIPPED)
def test_each_shipped_config_fits_the_card_it_is_written_for(name, gpus, gib, sections):
    cfg = check_train_config(load_config(TrainConfig, CONFIGS / name))
    p = plan_training(cfg, gpus)
    card = next(c for c in CARDS if c.gib == gib)
    assert p.verdict(card) == "fits", f"{name}: {p.device_total / 2**30:.1f} GiB per GPU"
    assert cfg.data.frames == 1 + sections * 36  # whole F1 sections of 36 frames after the start frame
    assert p.fsdp == (gpus > 1)
    assert p.streaming == cfg.stream_blocks == (gib == 24)
    if p.streaming:  # two blocks of 60 on the card; every block copied twice a micro-batch; nothing big loads
        assert cfg.data.kind == "prepared" and p.load_peak < 2**30
        assert p.streamed_bytes_per_step == p.block_bytes * 2 * cfg.grad_accum
        smaller = next(c for c in CARDS if c.gib > gib)
        assert p.verdict(smaller) == "fits"
    elif gpus == 1:  # streaming would keep two blocks of 60 on the card, and copy every block twice a micro-batch
        assert p.streamed_total < p.device_total - 20 * 2**30
        assert p.streamed_bytes_per_step == p.block_bytes * 2 * cfg.grad_accum
