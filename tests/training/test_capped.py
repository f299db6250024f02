"""Capped histories in training: the layouts, tokens and positions a job with ``history.max_tokens`` holds."""

from __future__ import annotations

import math

import pytest
import torch

from framepack_history.history.merge import cap_groups
from framepack_history.history.state import HistoryState
from framepack_history.training.capped import cap_layout, capped_history
from framepack_history.training.common import read_log
from tests.history.test_encoder import make_encoder

from .conftest import train

TOKENS_PER_GROUP = 16  # make_encoder("2x2x2") on 16x16 latents, patch 2: a 4x4 grid per token frame


def _history(frames: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents with a long, nearly still stretch (what the similar rule merges first) and a camera track."""
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(1, 4, frames, 16, 16, generator=g)
    lat[:, :, frames // 4 : 3 * frames // 4] = lat[:, :, frames // 4 : frames // 4 + 1] + 0.05 * torch.randn(
        1, 4, 3 * frames // 4 - frames // 4, 16, 16, generator=g)
    track = torch.cumsum(torch.rand(frames, generator=g), 0)
    return lat, track


@pytest.mark.parametrize("rule", ["similar", "oldest"])
@pytest.mark.parametrize("frames", [1, 7, 61, 96])  # 1: shorter than a group
def test_training_lays_out_and_encodes_capped_histories_as_the_generator(rule, frames):
    enc = make_encoder("2x2x2")
    cap = 10 * TOKENS_PER_GROUP
    lats, tracks = zip(*(_history(frames, seed) for seed in (1, 2)))
    x, track = torch.cat(lats), torch.stack(tracks)
    with torch.no_grad():
        tokens, pos = capped_history(enc, x, track, cap_groups(cap, TOKENS_PER_GROUP), rule)
    for i in range(2):  # each sample as a job holds it after appending its frames (in uneven pieces)
        state = HistoryState(enc, max_tokens=cap, merge=rule)
        for a, b in ((0, min(5, frames)), (min(5, frames), frames)):
            if b > a:
                state.append(x[i : i + 1, :, a:b], track[i, a:b])
        want_tokens, want_pos = state.tokens()
        assert tokens.shape[1] == want_tokens.shape[1] <= cap
        torch.testing.assert_close(tokens[i : i + 1], want_tokens, atol=1e-5, rtol=1e-5)
        assert torch.equal(pos[i], want_pos)


def test_the_similar_rule_keeps_a_view_seen_once_and_merges_the_still_stretch():
    lat, _ = _history(96, seed=3)
    budget = cap_groups(31 * TOKENS_PER_GROUP, TOKENS_PER_GROUP)  # 30 groups: the newest 15 never merge
    similar = cap_layout(lat[0], 2, budget, "similar")
    oldest = cap_layout(lat[0], 2, budget, "oldest")
    assert len(similar) == len(oldest) == budget
    # 48 groups: 12 distinct, 24 nearly still, 12 distinct; 18 merges among the older 33. Oldest merges the
    # first groups, similar the still run (and nothing else).
    assert oldest[0][1] > 1
    assert similar[:12] == [(i, 1) for i in range(12)] and max(n for f, n in similar if 12 <= f < 36) > 8
    assert sum(n for _, n in similar) == sum(n for _, n in oldest) == 48


def test_stage2_trains_on_capped_histories(tmp_path, stage1_run):
    """stage2.p_capped: every step's history capped (next sections and frame queries); the run trains and exports."""
    over = {"model": {"weights": str(stage1_run), "encoder": str(stage1_run / "history_encoder")},
            "stage2": {"p_capped": 1.0, "capped_tokens": [160], "p_frame_query": 0.5, "window_frames": 1,
                       "p_window_mode": 0.0},
            "data": {"frames": 48}, "max_steps": 4}
    out = train("stage2", tmp_path / "capped", **over)
    log = read_log(out / "loss.jsonl")
    assert len(log) == 4 and all(math.isfinite(r["loss"]) for r in log)
    assert (out / "history_encoder").is_dir()


def test_a_training_cap_generation_would_refuse_is_an_input_error():
    """A cap below the least a job may use (nine groups) is refused when training meets it, naming the key."""
    from types import SimpleNamespace

    from framepack_history.errors import InputError
    from framepack_history.training.modeling import FlowModule

    enc = make_encoder("2x2x2")
    module = FlowModule.__new__(FlowModule)
    torch.nn.Module.__init__(module)
    module.encoder = enc
    module._refs = (SimpleNamespace(name="toy"), SimpleNamespace(stage2=SimpleNamespace(merge="similar")))
    x = torch.randn(1, 4, 40, 16, 16)
    with pytest.raises(InputError) as e:
        module.history(x, None, cap=8 * TOKENS_PER_GROUP)
    assert e.value.field == "stage2.capped_tokens" and "at least 144" in e.value.message
    tokens, pos = module.history(x, None, cap=10 * TOKENS_PER_GROUP)
    assert tokens.shape[1] == 9 * TOKENS_PER_GROUP and pos.shape == (9 * TOKENS_PER_GROUP, 3)  # one group kept free


@pytest.mark.parametrize("over,key", [({"p_capped": 1.5}, "stage2.p_capped"),
                                      ({"capped_tokens": [0]}, "stage2.capped_tokens"),
                                      ({"merge": "newest"}, "stage2.merge")])
def test_bad_capped_settings_name_their_key(over, key):
    from framepack_history.errors import InputError
    from framepack_history.training.settings import TrainConfig, check_train_config, load_config

    from .conftest import CONFIGS

    cfg = load_config(TrainConfig, CONFIGS / "tiny_stage2.toml", {"stage2": over})
    with pytest.raises(InputError) as e:
        check_train_config(cfg)
    assert e.value.field == key
