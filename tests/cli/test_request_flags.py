"""``generate``'s request flags come from the field table, with the names, defaults and help they always had."""

from __future__ import annotations

import argparse

from framepack_history.cli.main import _request, build_parser
from framepack_history.config.fields import FIELDS
from framepack_history.config.request import GenerationRequest

#: every flag ``generate`` had before the table (none may go)
OLD_FLAGS = ["--preset", "--prompt", "--image", "--continue-video", "--start-frame", "--history", "--window-frames",
             "--history-guidance", "--encoder-rate", "--max-history-tokens", "--history-merge", "--seconds", "--seed",
             "--steps", "--guidance", "--cfg", "--shift", "--sampler", "--device", "--out", "--quiet", "--lora",
             "--no-loras", "--job-dir", "--cache", "--attention", "--weights-dtype"]


def _generate() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["generate"]


def test_every_table_flag_is_a_generate_flag_as_the_table_says():
    actions = {s: a for a in _generate()._actions for s in a.option_strings}
    assert set(OLD_FLAGS) <= set(actions)
    for row in FIELDS:
        if not row.cli:
            assert row.flag not in actions
            continue
        action = actions[row.flag]
        assert action.default == row.default and action.help == row.help, row.flag
        assert tuple(action.choices or ()) == (row.choices if row.cli_choices else ()), row.flag


def test_old_defaults_and_choices_hold():
    args = _generate().parse_args([])
    assert (args.prompt, args.seconds, args.seed, args.preset, args.lora, args.no_loras) == ("", 5.0, 0, "toy-cpu", None, False)
    actions = {s: a for a in _generate()._actions for s in a.option_strings}
    assert actions["--history"].choices == ("encoder", "window", "none")
    assert actions["--history-merge"].choices == ("similar", "oldest") and actions["--sampler"].choices == ("euler", "unipc")
    assert actions["--cache"].choices is None  # refused by the request, naming --cache
    assert actions["--max-history-tokens"].metavar == "N" and actions["--lora"].metavar == "FILE[:WEIGHT]"


def test_flags_become_the_request():
    argv = ["--prompt", "a", "--seconds", "2", "--seed", "7", "--history", "window", "--window-frames", "3",
            "--history-guidance", "1.5", "--max-history-tokens", "40", "--history-merge", "oldest", "--steps", "4",
            "--guidance", "2", "--cfg", "1.5", "--shift", "3", "--sampler", "unipc", "--cache", "fast",
            "--start-frame", "world", "--lora", "x.safetensors:0.5", "--lora", "y.safetensors"]
    assert _request(_generate().parse_args(argv)) == GenerationRequest(
        prompt="a", seconds=2.0, seed=7, history_mode="window", window_frames=3, history_guidance=1.5,
        max_history_tokens=40, history_merge="oldest", steps=4, guidance=2.0, cfg=1.5, shift=3.0, sampler="unipc",
        cache="fast", start_frame="world",
        loras=[{"name": "x.safetensors", "weight": 0.5}, {"name": "y.safetensors", "weight": 1.0}])
    assert _request(_generate().parse_args([])) == GenerationRequest()
    assert _request(_generate().parse_args(["--no-loras", "--lora", "x.safetensors"])).loras == []
