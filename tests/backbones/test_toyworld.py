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
    leave_and_return,
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
