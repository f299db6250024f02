"""``benchmarks/gpu_train.py --config 24gb``: the 1x24 GB config's Stage II steps with the frozen blocks streamed.

On the CPU (``--tiny``) the blocks stream through a simulated device, as in the trainer: every block is copied
in for its forward and again for its checkpointed recompute, so a step copies twice the blocks' bytes.
"""

from __future__ import annotations

import json
import math

import pytest

from .test_gpu_benchmarks import _run


def test_the_24gb_config_streams_every_block_twice_a_step(tmp_path, monkeypatch, capsys):
    out = tmp_path / "gpu_train.json"
    assert _run(monkeypatch, "gpu_train", "--tiny", "--config", "24gb", "--steps", "2", "--no-plan",
                "--json", str(out)) == 0
    d = json.loads(out.read_text())
    assert d["config"].endswith("hunyuan_stage2_1x24gb.toml") and d["streamed"] and d["gradient_checkpointing"]
    assert d["streamed_block_bytes"] > 0 and d["copied_bytes_per_step"] == 2 * d["streamed_block_bytes"]
    assert len(d["losses"]) == 2 and all(math.isfinite(x) for x in d["losses"]) and not d["error"]
    capsys.readouterr()
    assert _run(monkeypatch, "gpu_summary", str(tmp_path)) == 0
    assert "MiB copied to the device per step." in capsys.readouterr().out


def test_the_default_config_is_resident_and_an_unknown_name_is_refused(tmp_path, monkeypatch, capsys):
    out = tmp_path / "train.json"
    assert _run(monkeypatch, "gpu_train", "--tiny", "--steps", "1", "--no-plan", "--json", str(out)) == 0
    d = json.loads(out.read_text())
    assert d["config"].endswith("hunyuan_stage2.toml") and not d["streamed"] and d["copied_bytes_per_step"] is None
    with pytest.raises(SystemExit) as e:
        _run(monkeypatch, "gpu_train", "--tiny", "--config", "12gb")
    assert e.value.code == 2 and "neither 80gb nor 24gb nor a config file" in capsys.readouterr().err
