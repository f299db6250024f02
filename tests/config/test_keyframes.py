"""Keyframes in the request: the storyboard's ``[image]`` entries, the ``--keyframe`` list, and their refusals."""

from __future__ import annotations

import re

import pytest

from framepack_history.config.fields import row_of
from framepack_history.config.presets import load_preset
from framepack_history.config.request import GenerationRequest, keyframe_field
from framepack_history.config.storyboard import parse_keyframe_arg, parse_storyboard, split_keyframes, with_entries
from framepack_history.errors import InputError
from tests.conftest import TINY_TOY

ISSUE = "0s: [start.png] she stands at the door; 8s: [door_open.png] the door opens; 15s: [garden.png] she walks into the garden"


@pytest.fixture(scope="module")
def toy():
    return load_preset(TINY_TOY)


def _refusal(request: GenerationRequest, preset) -> InputError:
    with pytest.raises(InputError) as e:
        request.validate(preset)
    return e.value


def test_the_storyboard_names_images_at_the_start_of_entries():
    text, images = split_keyframes(ISSUE)
    assert text == "0s: she stands at the door; 8s: the door opens; 15s: she walks into the garden"
    assert [(t, name) for t, name, _ in images] == [(0.0, "start.png"), (8.0, "door_open.png"), (15.0, "garden.png")]
    assert images[1][2] == "keyframe at 8s ([door_open.png])"


def test_an_entry_with_only_an_image_keeps_the_prompt_before_it():
    text, images = split_keyframes("0s: she waits; 8s: [door.png]; 10s~2s: [x.JPG] she runs")
    assert text == "0s: she waits; 10s~2s: she runs"  # the blend stays with its text
    assert [(t, n) for t, n, _ in images] == [(8.0, "door.png"), (10.0, "x.JPG")]
    assert parse_storyboard(text)[1].blend == 2.0


def test_brackets_that_name_no_image_are_prompt_text():
    assert split_keyframes("0s: [cinematic] a man walks; 4s: [door] opens") == ("0s: [cinematic] a man walks; 4s: [door] opens", [])
    assert split_keyframes("[start.png] a man walks") == ("a man walks", [(0.0, "start.png", "keyframe at 0s ([start.png])")])
    with pytest.raises(InputError, match=r"keyframe at 4s \(\[a.png\]\): one image per storyboard entry"):
        split_keyframes("0s: a; 4s: [a.png] [b.png] c")


def test_validate_moves_the_images_into_keyframes_and_the_0s_one_to_the_start_image(toy):
    r = GenerationRequest(prompt=ISSUE, seconds=16, keyframes=[{"time": 12, "image": "k.png"}])
    board = r.validate(toy)
    assert r.image == "start.png" and "[" not in r.prompt
    assert r.keyframes == [{"time": 8.0, "image": "door_open.png"}, {"time": 12.0, "image": "k.png"},
                           {"time": 15.0, "image": "garden.png"}]  # sorted by time
    assert keyframe_field(r, r.keyframes[0]) == "--prompt" and keyframe_field(r, r.keyframes[1]) == "--keyframe"
    assert board == [(0.0, "she stands at the door"), (8.0, "the door opens"), (15.0, "she walks into the garden")]
    again = r.validate(toy)  # a second check (the CLI's, then admission's) finds it normalised
    assert again == board and len(r.keyframes) == 3 and r.image == "start.png"


@pytest.mark.parametrize(("kwargs", "field", "message"), [
    ({"prompt": "0s: a; 8s: [door.png] b", "seconds": 5}, "--prompt", r"keyframe at 8s \(\[door.png\]\) is outside the video \(0 to 5s\)"),
    ({"prompt": "a", "keyframes": [{"time": -1, "image": "a.png"}]}, "--keyframe", r"keyframe at -1s \(\[a.png\]\) is outside the video"),
    ({"prompt": "0s: a; 2s: [b.png] x", "keyframes": [{"time": 2.0, "image": "c.png"}]}, "--prompt",
     r"keyframe at 2s \(\[b.png\]\): keyframe at 2s \(\[c.png\]\) is at the same time"),
    ({"prompt": "0s: [a.png] x", "image": "s.png"}, "--prompt", r"keyframe at 0s \(\[a.png\]\) is the start image; .* \(--image\)"),
    ({"prompt": "a", "keyframes": [{"time": 0, "image": "a.png"}], "continue_video": "v.mp4"}, "--keyframe",
     r"keyframe at 0s \(\[a.png\]\) would be a start image"),
    ({"prompt": "a", "keyframes": [{"time": "8", "image": "a.png"}]}, "--keyframe", r"keyframe 1: its time must be a number"),
    ({"prompt": "a", "keyframes": [{"time": 1, "picture": "a.png"}]}, "--keyframe", r"keyframe 1 must be \{time, image\}"),
])
def test_bad_keyframes_are_refused_naming_the_entry_and_the_field(toy, kwargs, field, message):
    e = _refusal(GenerationRequest(**kwargs), toy)
    assert e.field == field
    assert re.search(message, e.message), e.message


def test_forward_loops_refuse_keyframes_naming_the_original_model_presets():
    f1 = load_preset("rtx4090-24gb")
    for request, field in ((GenerationRequest(prompt="0s: a; 2s: [b.png] x"), "--prompt"),
                           (GenerationRequest(prompt="a", keyframes=[{"time": 2, "image": "b.png"}]), "--keyframe")):
        e = _refusal(request, f1)
        assert e.field == field and e.message.startswith("keyframe at 2s ([b.png]): keyframes need the original model")
        for name in ("framepack-original-12gb", "framepack-original-24gb", "framepack-original-80gb"):
            assert name in e.message
    # the end image's refusal names the same presets
    end = _refusal(GenerationRequest(prompt="a", image="s.png", end_image="e.png"), f1)
    assert "framepack-original-12gb, framepack-original-24gb or framepack-original-80gb" in end.message
    original = GenerationRequest(prompt="a", image="s.png", keyframes=[{"time": 2, "image": "b.png"}])
    original.validate(load_preset("framepack-original-24gb"))
    assert original.keyframes == [{"time": 2.0, "image": "b.png"}]


def test_a_keyframe_on_the_end_images_frame_is_refused():
    original = load_preset("framepack-original-24gb")
    e = _refusal(GenerationRequest(prompt="a", image="s.png", end_image="e.png", seconds=5,
                                   keyframes=[{"time": 5, "image": "k.png"}]), original)
    assert e.field == "--keyframe" and "as the end image (--end-image) is" in e.message


def test_the_command_line_form_and_the_page_rows():
    assert parse_keyframe_arg("8:door.png") == {"time": 8.0, "image": "door.png"}
    assert parse_keyframe_arg("8.5s:C:\\door.png") == {"time": 8.5, "image": "C:\\door.png"}
    with pytest.raises(InputError, match="write TIME:IMAGE"):
        parse_keyframe_arg("door.png")
    assert with_entries("a woman", [(8, "the door opens"), (3.5, "she turns")]) == \
        "0s: a woman; 3.5s: she turns; 8s: the door opens"
    with pytest.raises(InputError, match="keyframe at 8s: the storyboard has an entry at 8s already"):
        with_entries("0s: a; 8s: b", [(8, "c")])
    row = row_of("keyframes")
    assert (row.flag, row.api, row.label, row.preset) == ("--keyframe", "keyframe_images", "Keyframes", None)


def test_a_refused_request_is_left_as_it_was(toy):
    """A 0 s keyframe becomes the start image only when the whole list passes."""
    r = GenerationRequest(prompt="0s: [a.png] x; 1s: y", seconds=2, keyframes=[{"time": 3, "image": "b.png"}])
    _refusal(r, toy)
    assert r.image is None and r.prompt == "0s: [a.png] x; 1s: y" and r.keyframes == [{"time": 3, "image": "b.png"}]
