"""Speed settings from the command line: the kernel and weight storage reach the sidecar; bad ones exit 2."""

from __future__ import annotations

import json

from tests.cli.test_cli import cli, run_main
from tests.conftest import TINY_HUNYUAN, TINY_TOY


def test_attention_and_float8_are_named_in_the_sidecar(tmp_path):
    """A real process: what it prints on stderr is all of it (no kernel noise from the libraries' loggers)."""
    out = tmp_path / "v.mp4"
    r = cli("generate", "--preset", str(TINY_HUNYUAN), "--prompt", "a cat", "--seconds", "0.5", "--out", str(out),
            "--attention", "_native_math", "--weights-dtype", "float8_e4m3fn", "--quiet")
    assert r.returncode == 0, r.stderr
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["speed"] == {"attention": "_native_math", "weights_dtype": "float8_e4m3fn", "compiled_blocks": 0}
    assert side["preset"]["hardware"]["weights_dtype"] == "float8_e4m3fn"
    assert not any(k in r.stderr.lower() for k in ("flash", "sage", "xformers", "experimental"))  # no kernel noise


def test_default_kernel_on_cpu_is_sdpa(tmp_path, capsys):
    out = tmp_path / "v.mp4"
    code, _, err = run_main(capsys, "generate", "--preset", str(TINY_TOY), "--prompt", "camera pans left", "--seconds", "0.5",
                            "--out", str(out), "--quiet")
    assert code == 0, err
    assert json.loads(out.with_suffix(".json").read_text())["speed"]["attention"] == "native"


def test_a_kernel_that_is_not_installed_is_an_input_error(tmp_path, capsys):
    code, _, err = run_main(capsys, "generate", "--preset", str(TINY_TOY), "--prompt", "x", "--attention", "sage", "--out",
                            str(tmp_path / "v.mp4"))
    assert code == 2
    assert "--attention" in err and "'sage'" in err and "auto" in err
    code, _, err = run_main(capsys, "generate", "--preset", str(TINY_TOY), "--prompt", "x", "--attention", "warp9", "--out",
                            str(tmp_path / "v.mp4"))
    assert code == 2 and "unknown attention backend 'warp9'" in err
