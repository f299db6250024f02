"""Two processes through accelerate (gloo on the CPU): DDP keeps the ranks' weights identical."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

from framepack_history.training.common import read_log
from tests import waiting

from .conftest import CONFIGS

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerate() -> str | None:
    """The accelerate CLI of this interpreter's environment (a venv run without activation has it beside python)."""
    beside = Path(sys.executable).parent / "accelerate"
    return str(beside) if beside.is_file() else shutil.which("accelerate")


def two_rank_stage1(out: Path, *args: str) -> list[dict]:
    """Stage I (``tiny_stage1.toml`` and ``args``) for 2 steps in two DDP processes on the CPU; checks both ranks
    ran and ended with identical weights, and returns the loss log."""
    # `accelerate launch --cpu` starts a single process; multi-process CPU runs go through the
    # multi-GPU launcher (torchrun) with ACCELERATE_USE_CPU, which selects gloo.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [_accelerate(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "framepack_history", "train", "stage1", "--config", str(CONFIGS / "tiny_stage1.toml"),
           *args, "--out", str(out), "--max_steps", "2", "--checksum_weights", "true"]
    # as long as the ranks keep working; two ranks waiting on each other use no CPU (and a cap ends a spin)
    proc = waiting.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, limit_s=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sums = sorted((out / "checksums").glob("rank*.txt"))
    assert [p.name for p in sums] == ["rank0.txt", "rank1.txt"]  # really two ranks
    assert sums[0].read_text() == sums[1].read_text()
    return read_log(out / "loss.jsonl")


@pytest.mark.skipif(_accelerate() is None, reason="accelerate CLI not installed")
def test_two_process_stage1_ranks_hold_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    rows = two_rank_stage1(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert (out / "history_encoder").is_dir() and (out / "checkpoints" / "step_0000002").is_dir()
