"""The toy world: determinism, camera that follows the storyboard, revisits that match, dataset items."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from framepack_history.backbones.toyworld import (
    EVAL_SEEDS,
    PALETTE,
    TRAIN_SEEDS,
    VOCABULARY,
    ToyWorldDataset,
    World,
    WorldSpec,
    camera_action,
    camera_jump,
    leave_and_return,
    model_text,
    pan_away_and_back,
    random_storyboard,
    start_frame,
)
from framepack_history.config.storyboard import parse_storyboard


def test_same_seed_same_world_and_episode():
    a, b = World.from_seed(7), World.from_seed(7)
    assert np.array_equal(a.canvas, b.canvas) and a.sprites == b.sprites and a.home_x == b.home_x
    board = "0s: camera pans right; 3s: camera holds"
    ea, eb = a.render(board, 6), b.render(board, 6)
    assert np.array_equal(ea.frames, eb.frames) and np.array_equal(ea.camera_x, eb.camera_x) and ea.caption == eb.caption
    r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
    assert [random_storyboard(r1, 10) for _ in range(5)] == [random_storyboard(r2, 10) for _ in range(5)]


def test_different_seeds_differ():
    canvases = [World.from_seed(s).canvas for s in range(5)]
    assert all(not np.array_equal(canvases[0], c) for c in canvases[1:])


@pytest.mark.parametrize("spec", [WorldSpec(), WorldSpec(view=64, fps=8), WorldSpec(views_wide=3, fps=2)])
def test_canvas_frames_and_landmarks(spec):
    w = World.from_seed(11, spec)
    assert w.canvas.shape == (spec.view, spec.width, 3) and w.canvas.dtype == np.uint8
    assert spec.width >= 3 * spec.view and spec.pan_speed == max(1, spec.view // 8)
    assert 8 <= len(w.landmarks) <= 12 and 1 <= len(w.sprites) <= 3
    assert len({(lm.colour, lm.shape) for lm in w.landmarks}) == len(w.landmarks)
    assert all(5 * spec.view / 16 <= lm.size <= 8 * spec.view / 16 for lm in w.landmarks)
    pixels = w.canvas[w.landmark_mask]
    palette = np.array(list(PALETTE.values()), np.uint8)
    assert len(pixels) > 0 and (pixels[:, None, :] == palette[None]).all(-1).any(-1).all()
    ep = w.render("0s: camera pans left", 3)
    assert ep.frames.shape == (3 * spec.fps, spec.view, spec.view, 3) and ep.frames.dtype == np.uint8
    assert ep.camera_x.shape == (3 * spec.fps,) and ep.sprite_mask.shape == ep.frames.shape[:3]
    assert w.view_at(0, 5).shape == w.background_view(spec.max_x).shape == (spec.view, spec.view, 3)


def test_spec_rejects_narrow_canvas():
    with pytest.raises(ValueError):
        WorldSpec(views_wide=2)


def test_camera_follows_storyboard_and_returns():
    w = World.from_seed(5)
    k = 5 * w.spec.fps
    ep = w.render("0s: camera pans right; 5s: camera pans left", 2 * k / w.spec.fps + 1)
    steps = np.diff(ep.camera_x)
    assert (steps[:k] == w.spec.pan_speed).all() and (steps[k : 2 * k] == -w.spec.pan_speed).all()
    assert ep.camera_x[0] == ep.camera_x[2 * k] and ep.camera_x[k] == ep.camera_x[0] + k * w.spec.pan_speed
    # the static view is the same; where no sprite covers either frame, so are the pixels
    x0 = int(ep.camera_x[0])
    assert np.array_equal(w.background_view(x0), w.background_view(int(ep.camera_x[2 * k])))
    free = ~(ep.sprite_mask[0] | ep.sprite_mask[2 * k])
    assert free.mean() > 0.5 and np.array_equal(ep.frames[0][free], ep.frames[2 * k][free])
    assert np.array_equal(ep.frames[0][~ep.sprite_mask[0]], w.background_view(x0)[~ep.sprite_mask[0]])
    assert np.array_equal(ep.frames[7], w.view_at(int(ep.camera_x[7]), 7))
    assert (w.render("0s: camera holds", 4, start_x=10).camera_x == 10).all()


def test_a_jump_moves_half_the_canvas_once_then_holds():
    """``camera jumps right|left``: the first frame of its entry is half a canvas away, the rest hold there."""
    spec = WorldSpec(view=16, fps=4)
    w = World(1_000_000, spec)
    board = "0s: camera holds; 2s: camera jumps right; 4s: camera jumps left; 5s: camera pans right"
    xs = w.camera_path(board, 6, start_x=10)
    assert spec.jump_px == 48
    # frame i + 1 follows the entry in force at i / fps: frame 9 is the first after 2 s, frame 17 after 4 s
    assert (xs[:9] == 10).all() and (xs[9:17] == 58).all() and (xs[17:21] == 10).all()
    np.testing.assert_array_equal(xs[20:], 10 + 2 * np.arange(len(xs) - 20))  # a pan after the jump back
    # without a start, the start is fitted so the jump stays inside the canvas
    assert w.camera_path("0s: camera holds; 1s: camera jumps right", 3)[0] <= spec.max_x - spec.jump_px
    assert camera_jump("Camera jumps LEFT") == -1 and camera_action("camera jumps right") == 0
    # the DiT reads a jump as a hold; every other text is left as it is
    assert model_text("camera jumps right and a red circle moves") == "camera holds and a red circle moves"
    assert model_text("Camera pans right") == "Camera pans right"


def test_a_storyboard_cut_with_a_jump_is_a_new_shot_at_another_place(tiny_toy_preset):
    """``[cut] camera jumps right``: the mark becomes the cut entry, the jump stays the entry's camera words,
    and the cut's section is the first whose frames show the other place."""
    from framepack_history.config.memory import check_memory, cut_section
    from framepack_history.config.storyboard import split_cuts

    text, cuts = split_cuts("0s: camera holds; 2s: [cut] camera jumps right; 4s: [cut] camera jumps left")
    assert text == "0s: camera holds; 2s: camera jumps right; 4s: camera jumps left" and cuts == [2.0, 4.0]
    v = tiny_toy_preset.video
    plan = check_memory([{"op": "cut", "time": t} for t in cuts], 6.0, tiny_toy_preset, "encoder")
    xs = World(1_000_000, WorldSpec(view=v.width, fps=v.fps)).camera_path(text, 6 + 1 / v.fps, start_x=0)
    for k in sorted(plan.cuts):  # section k holds world frames k * F + 1 .. (k + 1) * F
        assert k == cut_section(2.0 if k == min(plan.cuts) else 4.0, tiny_toy_preset)
        before, shot = xs[k * v.section_frames], xs[k * v.section_frames + 1 : (k + 1) * v.section_frames + 1]
        assert (shot == shot[0]).all() and abs(int(shot[0]) - int(before)) == WorldSpec(view=v.width).jump_px


def test_the_toy_track_follows_a_jump_like_the_world(tiny_toy_preset):
    """The canvas-position toy's camera track jumps where the world's camera does, section by section."""
    from framepack_history.generation.loading import load_backbone

    tiny_toy_preset.model.config["dit"]["canvas_positions"] = True
    bb = load_backbone(tiny_toy_preset.model)
    board = parse_storyboard("0s: camera holds; 1s: camera jumps right; 2s: camera pans left")
    steps = torch.cat([bb.camera_steps(board, first, 4, 8, 32) for first in (0, 4, 8, 12, 16, 20)])
    xs = World(1_000_000, WorldSpec(view=32, fps=8)).camera_path("0s: camera holds; 1s: camera jumps right; "
                                                                "2s: camera pans left", 25 / 8, start_x=0)
    unit = bb.geometry.spatial_scale * bb.geometry.patch_size[2]
    torch.testing.assert_close(torch.cumsum(steps, 0), torch.as_tensor((xs[1:] - xs[0]) / unit, dtype=torch.float32))
    assert float(steps[8]) == WorldSpec(view=32).jump_px / unit and float(steps[9:16].abs().sum()) == 0
    # the DiT reads the jump's entry as a hold (it never learned the word)
    ids = lambda text: bb.encode_text(text).tensors["text_ids"]  # noqa: E731
    assert torch.equal(ids("camera jumps right"), ids("camera holds"))
    assert not torch.equal(ids("camera pans right"), ids("camera holds"))


def test_camera_stops_at_the_edges_and_storyboards_fit():
    w = World.from_seed(2)
    ep = w.render("0s: camera pans right", 30, start_x=0)
    assert ep.camera_x.max() == w.spec.max_x and ep.camera_x[-1] == w.spec.max_x and ep.camera_x.min() == 0
    ep = w.render(pan_away_and_back(20), 40)  # longer than the canvas: stops at the edge, still comes back
    assert ep.camera_x[0] == 0 and ep.camera_x.max() == w.spec.max_x and ep.camera_x[-1] == 0
    gap = 10
    ep = w.render(leave_and_return(gap, w.spec), gap + 2)
    i = gap * w.spec.fps
    assert abs(ep.camera_x[i // 2] - ep.camera_x[0]) >= w.spec.view and ep.camera_x[i] == ep.camera_x[0]
    assert (ep.camera_x[i:] == ep.camera_x[0]).all()
    assert camera_action("camera pans left and a red circle moves") == -1 and camera_action("sprites move") == 0


def test_random_storyboards_return_often_and_use_the_vocabulary():
    rng, spec = np.random.default_rng(0), WorldSpec()
    cap = spec.max_x / spec.pan_speed / spec.fps
    w = World.from_seed(1)
    returns = {0.6: 0, 0.0: 0}
    for i in range(160):
        p = 0.6 if i < 100 else 0.0
        board = random_storyboard(rng, 10, p, cap)
        parse_storyboard(board)
        xs = w.camera_path(board, 10)
        expected = [spec.pan_speed * abs(camera_action(t)) for t in _actions(board, len(xs) - 1, spec.fps)]
        assert np.array_equal(np.abs(np.diff(xs)), expected)  # every pan fits: no stop at an edge
        returns[p] += any(xs[j] == xs[i] and (xs[i:j] != xs[i]).any() for i in range(len(xs)) for j in range(i + 1, len(xs)))
    assert 45 <= returns[0.6] <= 75 and returns[0.0] == 0
    known = set(VOCABULARY)
    for s in range(20):
        for _, text in parse_storyboard(World.from_seed(s).caption(board)):
            assert set(re.findall(r"[a-z]+", text)) <= known
    toy = Path(__file__).resolve().parents[2] / "framepack_history" / "backbones" / "toy.py"
    tree = ast.parse(toy.read_text())
    vocab = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "DEFAULT_VOCAB")
    assert known <= set(vocab)


def _actions(board: str, n: int, fps: int) -> list[str]:
    from framepack_history.config.storyboard import prompt_at

    entries = parse_storyboard(board)
    return [prompt_at(entries, i / fps) for i in range(n)]


def test_start_frame_matches_render():
    spec = WorldSpec(view=64)
    board = "0s: camera pans left"
    assert np.array_equal(start_frame(9, spec, board, 5), World.from_seed(9, spec).render(board, 5).frames[0])
    assert start_frame(9, spec).shape == (64, 64, 3)


def test_dataset_items_and_seed_split():
    assert TRAIN_SEEDS.stop <= EVAL_SEEDS.start and not set(TRAIN_SEEDS[-3:]) & set(EVAL_SEEDS[:3])
    train = ToyWorldDataset("train", 4, episode_seconds=5, fps=4)
    held = ToyWorldDataset("eval", 4, episode_seconds=5, fps=4)
    assert not set(train.seeds) & set(held.seeds) and max(train.seeds) < min(held.seeds) == EVAL_SEEDS.start
    item = train[1]
    assert item["video"].shape == (3, 20, 32, 32) and item["video"].dtype == torch.float32
    assert -1.0 <= item["video"].min() and item["video"].max() <= 1.0 and item["video"].std() > 0.1
    assert item["camera_x"].dtype == torch.long and item["camera_x"].shape == (20,)
    assert item["seed"] == 1 and isinstance(item["caption"], str) and item["caption"].startswith("0s: camera")
    assert torch.equal(train[1]["video"], item["video"]) and held[0]["seed"] == EVAL_SEEDS.start
    with pytest.raises(ValueError):
        ToyWorldDataset("train", 10, first=len(TRAIN_SEEDS) - 5)
