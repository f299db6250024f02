"""Presets load and validate with errors that name the field; storyboards parse."""

from __future__ import annotations

import pytest

from framepack_history.config.presets import available_presets, load_preset
from framepack_history.config.storyboard import parse_storyboard, prompt_at
from framepack_history.errors import InputError

SHIPPED = ["toy-cpu", "rtx4070-12gb", "rtx4090-24gb", "h100-80gb"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_presets_load(name):
    assert name in available_presets()
    p = load_preset(name)
    assert p.name == name and p.video.max_seconds > 0 and p.model.encoder_rate in p.model.encoder_rates


@pytest.mark.parametrize(
    "body,field",
    [
        ("[video]\nfps = 'abc'\n", "video.fps"),
        ("[video]\nwidth = -2\n", "video.width"),
        ("[video]\nwidth = 33\n", "video.width"),
        ("[sampling]\nsampler = 'ddpm'\n", "sampling.sampler"),
        ("[history]\nmode = 'forget'\n", "history.mode"),
        ("[history]\nguidance = -0.5\n", "history.guidance"),
        ("[model]\nencoder_rate = '4x4'\n", "model.encoder_rate"),
        ("[model]\nbackbone = 'sora'\n", "model.backbone"),
        ("[video]\nframes_per_second = 8\n", "video.frames_per_second"),
        ("[hardware]\ndtype = 'int3'\n", "hardware.dtype"),
        ("video = 3\n", "video"),
    ],
)
def test_bad_preset_names_the_field(tmp_path, body, field):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    with pytest.raises(InputError) as e:
        load_preset(p)
    assert e.value.field == "--preset" and field in e.value.message


def test_unknown_and_malformed_presets(tmp_path):
    with pytest.raises(InputError, match="unknown preset 'nope'.*toy-cpu"):
        load_preset("nope")
    p = tmp_path / "broken.toml"
    p.write_text("[video\nfps=")
    with pytest.raises(InputError, match="not valid TOML"):
        load_preset(p)


def test_storyboard_parsing():
    assert parse_storyboard("a cat") == [(0.0, "a cat")]
    board = parse_storyboard("0s: a woman walks into a kitchen; 12s: she pets a cat")
    assert board == [(0.0, "a woman walks into a kitchen"), (12.0, "she pets a cat")]
    assert parse_storyboard("0s: a\n2.5s: b") == [(0.0, "a"), (2.5, "b")]
    assert prompt_at(board, 0) == prompt_at(board, 11.9) == "a woman walks into a kitchen"
    assert prompt_at(board, 12) == "she pets a cat"
    assert parse_storyboard("a\x00b\x07c") == [(0.0, "a b c")]


@pytest.mark.parametrize("bad", ["0s: a; 0s: b", "0s: a; 5s:", "5x: hello", "0s: a; 3s: b; 2s: c", "-3s: a"])
def test_malformed_storyboards(bad):
    with pytest.raises(InputError) as e:
        parse_storyboard(bad)
    assert e.value.field == "--prompt"
