"""The GPU benchmarks' tiny CPU dry runs (what ``TINY=1 bash scripts/gpu_checks.sh`` runs), in this process.

The step cache on and off, a skipped step's copies, planned against measured per phase, Stage II steps with a
LoRA and gradient checkpointing, and the Markdown summary the script prints; on a GPU the same code measures.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _script(name: str):
    """A benchmark script as a module (they are scripts, not a package)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # gpu_speed imports gpu_e2e by name, as when it runs as a script
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(monkeypatch, name: str, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    return _script(name).main()


@pytest.fixture(scope="module")
def e2e(tmp_path_factory) -> Path:
    """One tiny run of the image-to-video scenario (step cache on); its output folder."""
    out = tmp_path_factory.mktemp("gpu_checks")
    with pytest.MonkeyPatch.context() as mp:
        assert _run(mp, "gpu_e2e", "--tiny", "--scenarios", "i2v", "--steps", "3", "--seconds", "2",
                    "--json", str(out / "gpu_e2e.json")) == 0
    return out


def test_e2e_measures_skipped_steps_and_phases_against_the_plan(e2e):
    d = json.loads((e2e / "gpu_e2e.json").read_text())
    [on] = d["scenarios"]
    assert (on["scenario"], on["cache"], on["sections"], on["error"]) == ("i2v", "fast", [1, 2], "")
    # some steps skip (the loose threshold; never the first or last of a section), and a skipped step copies
    # less than a computed one
    assert 0 < on["skipped_steps"] <= 2 and on["steps"] == 6 and on["s_per_step"] > 0
    assert on["bytes_per_skipped_step"] < on["bytes_per_computed_step"]
    phases = {(p["phase"], p["section"]) for p in on["phases"]}
    assert {("text_encode", None), ("vae_encode", None), ("denoise", 2), ("vae_decode", 2)} <= phases
    assert all(p["planned_gib"] > 0 and p["measured_gib"] > 0 for p in on["phases"])
    assert d["allowance"]["planned"]["context_mib"] > 0 and "context_mib" not in d["allowance"]  # no CUDA here


def test_the_summary_is_markdown_of_every_figure(e2e, capsys, monkeypatch):
    (e2e / "machine.txt").write_text("no nvidia-smi\ntorch 0\n")
    assert _run(monkeypatch, "gpu_summary", str(e2e)) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| i2v | ")]
    assert len(rows) == 1 + 7  # the scenario row, then its phases (start, and two sections' denoise and decode)
    assert rows[0].count("|") == 12 and "fast" in rows[0] and "/6 |" in rows[0]
    assert "Machine: no nvidia-smi; torch 0" in text
    assert "`gpu_train`: no figures (it did not finish; see gpu_train.log)" in text


def test_gpu_train_runs_stage2_steps_with_a_lora_and_checkpointing(tmp_path, monkeypatch):
    out = tmp_path / "train.json"
    assert _run(monkeypatch, "gpu_train", "--tiny", "--steps", "2", "--no-plan", "--json", str(out)) == 0
    d = json.loads(out.read_text())
    assert d["lora_rank"] == 4 and d["gradient_checkpointing"] and d["trainable_params"] > 0
    assert len(d["losses"]) == 2 and all(math.isfinite(x) for x in d["losses"]) and d["s_per_step"] > 0
    assert 0 < d["split"] < d["latent_frames"] and not d["error"]


def test_unknown_scenarios_and_a_stage1_config_are_refused(monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        _run(monkeypatch, "gpu_e2e", "--tiny", "--scenarios", "i2v,nope")
    assert e.value.code == 2 and "unknown scenario(s) ['nope']" in capsys.readouterr().err
    stage1 = BENCH.parent / "framepack_history" / "training" / "configs" / "hunyuan_stage1.toml"
    with pytest.raises(SystemExit) as e:
        _run(monkeypatch, "gpu_train", "--tiny", "--config", str(stage1))
    assert e.value.code == 2 and "this times Stage II" in capsys.readouterr().err
