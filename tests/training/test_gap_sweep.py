"""The gap sweep on the shipped toy, tiny (2 worlds, gaps of 2 s and 12 s, one sampling step, a tight cap):
the return frame, the cap in both histories, the paired margin, shards merging into one run's table, and a resume."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from framepack_history.cli.main import main
from framepack_history.config.paths import PRESET_DIR
from framepack_history.errors import InputError
from framepack_history.training.evaluate import EvalConfig, load_run
from framepack_history.training.gap_sweep import KIND, merge_runs, run_gaps, table_lines
from framepack_history.training.revisit import encode_like_pipeline, history_of, make_episode
from framepack_history.training.settings import DataConfig

CAP = 36  # the least cap at 16x16 (9 groups of 4 tokens): a 12 s history holds more
GAPS = [2.0, 12.0]


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """The shipped toy with a cap a 12 s gap passes."""
    text = (PRESET_DIR / "toy-cpu.toml").read_text()
    assert "max_tokens = 240" in text
    path = tmp_path_factory.mktemp("preset") / "toy-capped.toml"
    path.write_text(text.replace("max_tokens = 240", f"max_tokens = {CAP}"))
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """Sections this small run fastest on one thread (more spin against each other on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg_for(preset, worlds: int, first: int = 0, steps: int = 1) -> EvalConfig:
    return EvalConfig(models=[f"toy={preset}"], steps=steps, gaps=GAPS,
                      data=DataConfig(split="eval", num_videos=worlds, options={"first": first}))


def test_gap_sweep(tmp_path, preset, capsys):
    # one run over both worlds, from the command line
    out = tmp_path / "all"
    assert main(["eval", "gaps", "--out", str(out), "--models", f'["toy={preset}"]', "--steps", "1",
                 "--gaps", "[2.0, 12.0]", "--data.num_videos", "2", "--data.split", "eval"]) == 0
    printed = capsys.readouterr().out
    whole = json.loads((out / "gaps.json").read_text())
    run = whole["models"]["toy"]
    assert run["settings"]["max_tokens"] == CAP and run["settings"]["steps"] == 1
    assert len(run["worlds"]) == 2 and list(run["table"]) == ["2s", "12s"]

    pipe = load_run(preset)
    fps, s = pipe.preset.video.fps, pipe.preset.video.section_frames
    cfg = cfg_for(preset, 2)
    for i, (seed, world) in enumerate(sorted(run["worlds"].items(), key=lambda kv: int(kv[0]))):
        for gap in GAPS:
            cell = world[f"{gap:g}s"]
            # the return: the first frame back at the start view is frame gap * fps, in the scored section
            ep, k, ep_seed = make_episode(pipe, cfg, KIND, gap, i)
            ret = cell["return_frame"]
            assert str(ep_seed) == seed and ret == gap * fps
            assert ep.camera_x[ret] == ep.camera_x[0] and ep.camera_x[ret - 1] != ep.camera_x[0]
            assert cell["section"] == [1 + k * s, 1 + (k + 1) * s] and cell["section"][0] <= ret < cell["section"][1]
            # the cap holds in both histories; at 12 s it binds (the same frames uncapped hold more)
            uncapped = history_of(pipe, ep, encode_like_pipeline(pipe, ep.frames, k), "encoder").num_tokens
            for key in ("teacher_forced_history_tokens", "free_running_history_tokens"):
                assert 0 < cell["encoder"][key] <= CAP
                assert cell["window"][key] == 0
            if gap == 12.0:
                assert uncapped > CAP and cell["encoder"]["teacher_forced_history_tokens"] < uncapped
            else:
                assert cell["encoder"]["teacher_forced_history_tokens"] == uncapped

    # the margin is the mean of the per-world differences, its ± their standard error
    for gap in ("2s", "12s"):
        for metric in ("teacher_forced_psnr", "free_running_psnr_vs_first_visit"):
            d = np.array([w[gap]["encoder"][metric] - w[gap]["window"][metric] for w in run["worlds"].values()])
            m = run["table"][gap]["margin"][metric]
            assert m["n"] == 2 and m["mean"] == pytest.approx(d.mean())
            assert m["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(2))
            assert f"{m['mean']:+.2f} ± {m['se']:.2f}" in printed

    # two shards of one world each merge into the one run's table
    shards = [run_gaps(cfg_for(preset, 1, first), tmp_path / f"shard{first}.json") for first in (0, 1)]
    merged = merge_runs(shards)["models"]["toy"]
    assert merged["worlds"] == run["worlds"] and merged["table"] == run["table"]
    assert table_lines(merge_runs(shards)) == table_lines(whole)
    # a killed run resumes: the first shard's file, asked for both worlds, scores only the second
    done = []
    resumed = run_gaps(cfg_for(preset, 2), tmp_path / "shard0.json", lambda label, n: done.append(n))
    assert done[0] == 2 and resumed["models"]["toy"]["table"] == run["table"]
    # a shard of other settings is refused, by the merge and by a resume
    other = copy.deepcopy(shards[1])
    other["models"]["toy"]["settings"]["steps"] = 2
    with pytest.raises(InputError) as e:
        merge_runs([shards[0], other])
    assert e.value.field == "merge"
    with pytest.raises(InputError) as e:
        run_gaps(cfg_for(preset, 1, 1, steps=2), tmp_path / "shard1.json")
    assert e.value.field == "out"
