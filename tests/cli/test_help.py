"""``--help`` works for every subcommand: exit status 0 and real help, never "needs a value"."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from framepack_history.cli.main import build_parser, main
from tests import waiting

ROOT = Path(__file__).resolve().parents[2]


def subcommands() -> list[list[str]]:
    """Every subcommand of the CLI, with each choice of a first positional (train vae|stage1|stage2 ...)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, parser in sub.choices.items():
        first = next((a for a in parser._actions if not a.option_strings and a.choices), None)
        out += [[name, c] for c in first.choices] if first else [[name]]
    return out


def test_every_subcommand_is_listed():
    names = {argv[0] for argv in subcommands()}
    assert {"generate", "resume", "inspect", "train", "eval", "plan", "download"} <= names
    assert ["train", "stage1"] in subcommands() and ["eval", "revisit"] in subcommands()


@pytest.mark.parametrize("argv", subcommands(), ids=" ".join)
def test_help_exits_0_with_usage(argv, capsys):
    try:
        code = main([*argv, "--help"])
    except SystemExit as e:  # argparse's own help exits
        code = e.code
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.startswith("usage: python -m framepack_history " + argv[0]), out.out[:200]
    assert "needs a value" not in out.err
    if argv[0] in ("train", "eval"):  # the config keys a --key value may set
        assert "--seed 0" in out.out and "--data.kind 'toyworld'" in out.out


def test_help_in_a_real_process():
    for cmd in (["-m", "framepack_history", "train", "stage1", "--help"], ["app.py", "--help"]):
        r = waiting.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, check=False)
        assert r.returncode == 0 and r.stdout.startswith("usage:"), (cmd, r.stdout[:300], r.stderr[-500:])
