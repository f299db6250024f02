"""The fast toy recipe's configs: valid, chained leg to leg, and what scripts/train_toy_fast.sh runs."""

from __future__ import annotations

import re
from pathlib import Path

from framepack_history.training.settings import TrainConfig, check_train_config, find_path, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "framepack_history" / "training" / "configs"


def test_fast_recipe_configs_are_valid_and_chained_as_the_script_runs_them():
    script = (ROOT / "scripts" / "train_toy_fast.sh").read_text()
    runs = re.findall(r"train (stage[12]) --config \$C/(\S+)\.toml", script)
    assert runs == [("stage1", "toy_fast_stage1"), ("stage2", "toy_fast_stage2")]
    s1, s2 = (check_train_config(load_config(TrainConfig, CONFIGS / f"{name}.toml")) for _, name in runs)
    assert (s1.stage, s2.stage) == ("stage1", "stage2")
    assert s1.model == {"weights": "", "encoder": "", "config": {"dit": {"canvas_positions": True}}}
    assert s2.model["weights"] == s1.out and s2.model["encoder"] == f"{s1.out}/history_encoder"
    assert s2.model["config"]["dit"]["canvas_positions"] is True
    c2 = s2.stage2
    assert (c2.p_frame_query, c2.p_revisit_split, c2.p_window_mode, c2.window_frames) == (0.4, 0.6, 0.25, 2)
    assert 0 < c2.p_keyframe < 1 and s2.lr_schedule == "cosine" and s2.data.frames == 96
    # Stage I shares the old recipe's clip cache (same clips, same fingerprint); the outputs are its own.
    old = load_config(TrainConfig, CONFIGS / "toy_stage1.toml")
    assert s1.data == old.data and s1.out != old.out and find_path(s2.data.cache) != find_path(old.data.cache)
