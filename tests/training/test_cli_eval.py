"""The command line: train a stage, evaluate retrieval and revisit; JSON + PNG come out."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from framepack_history.cli.main import main
from tests import waiting

from .conftest import CONFIGS

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_cli_train_stage1(tmp_path):
    out = tmp_path / "s1"
    proc = waiting.run(
        [sys.executable, "-m", "framepack_history", "train", "stage1", "--config", str(CONFIGS / "tiny_stage1.toml"),
         "--max_steps", "2", "--out", str(out)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(ln) for ln in (out / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert (out / "loss.png").is_file() and (out / "history_encoder").is_dir() and (out / "preset.toml").is_file()


def test_cli_rejects_bad_keys_with_one_line(capsys):
    assert main(["train", "stage1", "--config", str(CONFIGS / "tiny_stage1.toml"), "--stage1.omega_min", "9"]) == 2
    assert main(["train", "stage2", "--config", str(CONFIGS / "tiny_stage1.toml")]) == 2
    assert main(["eval", "retrieval", "--config", str(CONFIGS / "tiny_eval.toml")]) == 2  # no models
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)


def test_cli_eval_retrieval_and_revisit(tmp_path, stage1_run, stage2_run, capsys):
    out = tmp_path / "eval"
    models = f'["stage1={stage1_run}", "stage2={stage2_run}"]'
    assert main(["eval", "retrieval", "--config", str(CONFIGS / "tiny_eval.toml"), "--out", str(out), "--models", models]) == 0
    res = json.loads((out / "retrieval.json").read_text())
    for label in ("stage1", "stage2"):
        row = res["models"][label]
        assert {"old", "middle", "recent", "all", "vae"} <= set(row)
        assert row["all"]["psnr"]["n"] == 2 * 3 and row["history_tokens"] > 0
        # the standard error is over clips (their queries share a world), not over the 6 queries
        assert row["all"]["psnr"]["episodes"] == 2 and row["all"]["psnr"]["se"] > 0
        assert 0 < row["all"]["psnr"]["mean"] < 100 and -1 <= row["all"]["ssim"]["mean"] <= 1
    assert (out / "retrieval.png").stat().st_size > 0

    capsys.readouterr()
    assert main(["eval", "revisit", "--config", str(CONFIGS / "tiny_eval.toml"), "--out", str(out),
                 "--models", f'["stage2={stage2_run}"]', "--returns_after", "[1.0]"]) == 0
    res = json.loads((out / "revisit.json").read_text())
    row = res["models"]["stage2"]
    # the terminal gets one line per kind and gap, with the margins the JSON holds
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("stage2 (history guidance 1)") and len(printed) == 3
    tf = row["pan_away_and_back"]["1s"]
    margin = tf["encoder"]["teacher_forced_psnr"]["mean"] - tf["window"]["teacher_forced_psnr"]["mean"]
    assert printed[1].startswith("  pan away and back 1s (2 episodes): teacher-forced")
    m = tf["margin"]["teacher_forced_psnr"]
    assert m["mean"] == pytest.approx(margin) and m["n"] == 2 and m["se"] > 0
    assert f"({margin:+.1f} ± {m['se']:.1f})" in printed[1]  # the margin ± the paired standard error
    e = tf["encoder"]["teacher_forced_psnr"]
    assert e["se"] == pytest.approx(e["std"] / 2**0.5) and f"{e['mean']:.1f} ± {e['se']:.1f} vs" in printed[1]
    for kind in ("pan_away_and_back", "leave_and_return"):
        cell = row[kind]["1s"]
        assert cell["episodes"] == 2
        for mode in ("encoder", "window"):
            assert cell[mode]["teacher_forced_psnr"]["n"] == 2
            assert cell[mode]["free_running_psnr_vs_first_visit"]["n"] >= 1
        # the history-swap diagnostic runs in encoder mode only
        assert cell["encoder"]["teacher_forced_psnr_other_history"]["n"] == 2
        assert "teacher_forced_psnr_other_history" not in cell["window"]
    assert (out / "revisit.png").stat().st_size > 0
    assert row["history_guidance"] == 1.0  # the run's preset

    # history guidance from the command line: encoder mode changes, the window baseline cannot
    assert main(["eval", "revisit", "--config", str(CONFIGS / "tiny_eval.toml"), "--out", str(tmp_path / "hg"),
                 "--models", f'["stage2={stage2_run}"]', "--returns_after", "[1.0]", "--free_running", "false",
                 "--history_guidance", "3.0"]) == 0
    hg = json.loads((tmp_path / "hg" / "revisit.json").read_text())["models"]["stage2"]
    assert hg["history_guidance"] == 3.0
    cell, hcell = row["pan_away_and_back"]["1s"], hg["pan_away_and_back"]["1s"]
    assert hcell["window"]["teacher_forced_psnr"]["mean"] == cell["window"]["teacher_forced_psnr"]["mean"]
    assert hcell["encoder"]["teacher_forced_psnr"]["mean"] != cell["encoder"]["teacher_forced_psnr"]["mean"]


def test_memory_columns_are_what_the_window_does_not_show():
    import numpy as np
    import pytest
    import torch

    from framepack_history.training.revisit import masked_psnr, memory_columns

    cx = np.array([0, 2, 4, 6, 4, 2, 0, 0])  # 8 px views: pan right, then back
    cols = memory_columns(cx, range(4, 8), window=2, view=8)
    # window frames 2-3 show canvas 4..13; coming back to x=4, 2, 0 shows nothing new, then 2 and 4 new columns
    assert cols.sum(1).tolist() == [0, 2, 4, 4]
    assert cols[1, :2].all() and not cols[1, 2:].any()
    assert memory_columns(cx, range(4, 8), window=0, view=8).all()
    truth = torch.zeros(4, 3, 8, 8)
    shown = torch.as_tensor(~cols)[:, None, None, :].expand_as(truth)
    got = torch.where(shown, 1.0, truth)  # wrong only where the window shows the canvas
    assert masked_psnr(got, truth, cols) == pytest.approx(100.0)
    assert masked_psnr(got, truth, ~cols) == pytest.approx(0.0)


def test_revisit_worlds_follow_the_split_and_first():
    from types import SimpleNamespace

    from framepack_history.backbones.toyworld import EVAL_SEED_START
    from framepack_history.config.presets import load_preset
    from framepack_history.training.evaluate import EvalConfig
    from framepack_history.training.revisit import make_episode

    pipe = SimpleNamespace(preset=load_preset("toy-cpu"))
    cfg = EvalConfig(models=["x=y"])
    seeds = {}
    for split, first in (("eval", 0), ("eval", 1000), ("train", 0)):
        cfg.data.split, cfg.data.options = split, {"first": first}
        seeds[split, first] = make_episode(pipe, cfg, "pan_away_and_back", 10.0, 3)[2]
    assert seeds["eval", 0] == EVAL_SEED_START + 3  # held-out worlds by default
    assert seeds["eval", 1000] == EVAL_SEED_START + 1003  # another block of held-out worlds (validation)
    assert seeds["train", 0] == 3


def test_summary_standard_error_counts_episodes_not_queries():
    import torch

    from framepack_history.training.evaluate import mean_se, summary

    vals = [10.0, 12.0, 14.0, 16.0]
    s = summary(vals)
    assert s["se"] == pytest.approx(torch.tensor(vals, dtype=torch.float64).std().item() / 2)
    # two queries per episode: the error is that of the 2 episode means (11 and 15), std 2.83 / sqrt(2) = 2
    g = summary(vals, [0, 0, 1, 1])
    assert g["mean"] == 13.0 and g["n"] == 4 and g["episodes"] == 2 and g["se"] == pytest.approx(2.0)
    assert summary([3.0])["se"] != summary([3.0])["se"]  # one value: no error (NaN), not a fake 0
    assert mean_se(g, 2) == "13.00 ± 2.00" and mean_se(summary([3.0])) == "3.0"
    with pytest.raises(ValueError, match="3 episode ids for 4 values"):
        summary(vals, [0, 0, 1])


def test_a_data_override_keeps_the_eval_configs_held_out_split():
    """``--data.num_videos 4`` with no config file: the eval config's data stays on held-out worlds."""
    from framepack_history.training.evaluate import EvalConfig
    from framepack_history.training.settings import TrainConfig, load_config

    cfg = load_config(EvalConfig, None, {"data.num_videos": 4, "models": ["a=b"]})
    assert (cfg.data.split, cfg.data.num_videos) == ("eval", 4)
    assert load_config(EvalConfig, None, {"data.split": "train"}).data.split == "train"  # given, it is taken
    assert load_config(TrainConfig, None, {"data.num_videos": 4}).data.split == "train"  # a training config's own
