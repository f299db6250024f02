"""The request's field table covers every request field, and resolve() is the resolution jobs have always had."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from framepack_history.config.fields import (
    FIELDS,
    PAGE_LABELS,
    SETTING_FIELDS,
    Settings,
    page_label,
    resolve,
    row_of,
)
from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted([*(ROOT / "framepack_history" / "presets").glob("*.toml"), *(ROOT / "tests" / "presets").glob("*.toml")])
#: what the page called each field before the table (its error messages must not change)
OLD_PAGE_LABELS = {"--prompt": "Prompt or storyboard", "--seconds": "Length (seconds)", "--seed": "Seed", "--shift": "Shift",
                   "--history": "History", "--history-guidance": "History guidance",
                   "--max-history-tokens": "History-token cap", "--history-merge": "Cap merges", "--image": "Start image",
                   "--steps": "Steps", "--guidance": "Guidance", "--window-frames": "Sliding-window frames",
                   "--cache": "Step cache", "--start-frame": "Start frame"}


def _old_option(request: GenerationRequest, preset, name: str):
    """How the pipeline resolved a setting before ``resolve`` (``Pipeline.option``), with its callers' conversions."""
    value = getattr(request, name)
    if value is None:
        section, key = {"history_mode": ("history", "mode"), "window_frames": ("history", "window_frames"),
                        "history_guidance": ("history", "guidance"), "history_merge": ("history", "merge"),
                        "max_history_tokens": ("history", "max_tokens")}.get(name, ("sampling", name))
        value = getattr(getattr(preset, section), key)
    convert = {"window_frames": int, "history_guidance": float, "steps": int, "guidance": float, "cfg": float,
               "max_history_tokens": lambda v: int(v or 0), "shift": lambda v: None if v is None else float(v)}
    return convert.get(name, lambda v: v)(value)


REQUESTS = [
    GenerationRequest(),
    GenerationRequest(steps=3, guidance=2, cfg=1.5, shift=3, history_mode="window", window_frames=2, history_guidance=1.5,
                      max_history_tokens=10, history_merge="oldest", cache="fast", sampler="unipc"),
    GenerationRequest(steps=1, history_mode="none", max_history_tokens=0, cache="off"),
    GenerationRequest(shift=7.0, history_guidance=0, history_merge="similar", loras=[{"name": "a.safetensors", "weight": 0.5}]),
]


def test_every_request_field_has_one_row():
    names = [f.name for f in dataclasses.fields(GenerationRequest)]
    assert sorted(row.name for row in FIELDS) == sorted(names)
    for key in ("flag", "api"):
        given = [getattr(row, key) for row in FIELDS if getattr(row, key) is not None]
        assert len(given) == len(set(given)), f"two rows share a {key}"


def test_settings_are_the_fields_with_a_preset_default():
    assert {f.name for f in dataclasses.fields(Settings)} - {"from_request"} == {row.name for row in SETTING_FIELDS}
    preset = load_preset("toy-cpu")
    for row in SETTING_FIELDS:
        row.preset_value(preset)  # every preset key names a preset field


def test_page_labels_keep_the_pages_names():
    assert {k: PAGE_LABELS[k] for k in OLD_PAGE_LABELS} == OLD_PAGE_LABELS
    assert page_label("--max-history-tokens") == "History-token cap" and page_label("weights") == "weights"
    assert row_of("history_merge").flag == "--history-merge" and row_of("image").api == "start_image"


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_resolve_is_the_old_resolution_for_every_preset(path):
    preset = load_preset(path)
    for request in REQUESTS:
        settings = resolve(request, preset)
        for row in SETTING_FIELDS:
            if row.name == "loras":
                continue
            old, new = _old_option(request, preset, row.name), getattr(settings, row.name)
            assert old == new and type(old) is type(new), (path.name, row.name, old, new)
        assert settings.from_request == {row.name for row in SETTING_FIELDS if getattr(request, row.name) is not None}


def test_resolve_takes_the_requests_loras_else_the_presets():
    preset = load_preset(ROOT / "tests" / "presets" / "tiny-toy.toml")
    preset.loras = ["style.safetensors:0.5", "other.safetensors"]
    assert resolve(GenerationRequest(), preset).loras == ({"name": "style.safetensors", "weight": 0.5},
                                                           {"name": "other.safetensors", "weight": 1.0})
    assert resolve(GenerationRequest(loras=[]), preset).loras == ()
    mine = resolve(GenerationRequest(loras=[{"name": "x.safetensors", "weight": 2}]), preset)
    assert mine.loras == ({"name": "x.safetensors", "weight": 2.0},) and "loras" in mine.from_request


def test_an_error_names_where_a_setting_came_from():
    preset = load_preset("toy-cpu")
    assert resolve(GenerationRequest(max_history_tokens=9), preset).field_name("max_history_tokens") == "--max-history-tokens"
    assert resolve(GenerationRequest(), preset).field_name("max_history_tokens") == "history.max_tokens"


def test_settings_are_json_ready():
    import json

    data = resolve(REQUESTS[1], load_preset("toy-cpu")).to_dict()
    assert json.loads(json.dumps(data)) == data and data["history_merge"] == "oldest" and "steps" in data["from_request"]
