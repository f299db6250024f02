"""Tiny training runs shared by the training tests (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "framepack_history" / "training" / "configs"


def train(stage: str, out: Path, **over):
    """Run one stage in-process from its tiny config plus overrides; returns the output folder."""
    from framepack_history.training.settings import TrainConfig, check_train_config, load_config

    cfg = load_config(TrainConfig, CONFIGS / f"tiny_{stage}.toml", {"out": str(out), **over})
    cfg.stage = stage
    check_train_config(cfg)
    if stage == "vae":
        from framepack_history.training.vae import main
    elif stage == "stage1":
        from framepack_history.training.stage1_frame_query import main
    else:
        from framepack_history.training.stage2_autoregressive import main
    return main(cfg)


@pytest.fixture(scope="session")
def stage1_run(tmp_path_factory) -> Path:
    return train("stage1", tmp_path_factory.mktemp("runs") / "stage1")


@pytest.fixture(scope="session")
def stage2_run(tmp_path_factory, stage1_run) -> Path:
    return train("stage2", tmp_path_factory.mktemp("runs") / "stage2",
                 model={"weights": str(stage1_run), "encoder": str(stage1_run / "history_encoder")})
