"""The toy world: a procedural place that a small model can learn and that needs memory.

Canvas
    ``view`` px high and ``views_wide * view`` px wide (default six views: 16 x 96 at 16 px views; at least three).
    The background is smooth and low-frequency: bands blended through three colours of
    :data:`BACKGROUND_PALETTE` plus a few soft blobs of a fourth. On it stand 8-12 static landmarks,
    each one colour of :data:`PALETTE` and one of :data:`LANDMARK_SHAPES`, no two alike, 5-8 px across
    per 16 px of view (10-16 px at 32 px views), spread along the whole canvas width, hard-edged, so
    every landmark pixel is exactly a palette colour.
Camera
    A window of the full canvas height and one view wide. It pans by ``pan_px_per_frame`` px per frame
    (default ``view // 8``: 2 px/frame at 16 px, 4 at 32 px; at 4 fps that is one view in 2 s and the
    whole six-view canvas in 10 s, so a pan of 10 s away and 10 s back fits) or holds. At the edges it stops: a pan that would leave the canvas
    holds at the edge. The move from frame ``i`` to ``i + 1`` follows the storyboard entry in force at
    ``t = i / fps`` (:func:`framepack_history.config.storyboard.prompt_at`), so equal pan times away and back
    return exactly to the start x. Without an explicit start, the start x is the world's home x moved
    just enough for the whole storyboard to fit inside the canvas (to the edge it pans away from when
    it cannot fit).
    ``camera jumps left|right`` is a cut to another place: the camera moves half the canvas
    (:attr:`WorldSpec.jump_px`, three views at six wide) at the entry's first frame, then holds. No training
    storyboard has a jump and the DiT never learned the word: the toy backbone reads it as ``camera holds``
    (:func:`model_text`) and takes the jump from the camera track alone.
Sprites
    1-3 per world: a circle, square or triangle, 3-5 px across per 16 px of view, each in its own
    :data:`PALETTE` colour. Each bounces at constant speed (across: 0.25-0.5 px/frame per 16 px of view,
    up and down slower) inside its own stretch of 1-2 views, so it leaves a still view and comes back.
    Sprites depend only on the frame index, never on the camera.
Vocabulary (every word is in the toy backbone's tokenizer)
    camera words: ``camera pans left``, ``camera pans right``, ``camera holds``; an entry with no pan
    holds. Sprite words are descriptive (a world's sprites come from its seed) and are appended to each
    entry unless it already mentions sprites: ``a red circle moves``, ``a red circle and a blue square
    move`` or, for three, ``sprites move`` (always "a", even before "orange"). Colours: red green blue
    yellow cyan magenta white orange; shapes: circle square triangle.
    Captions are storyboards: ``"0s: camera pans right; 10s: camera pans left"``.
Seeds
    Everything derives from one seed (``numpy.random.default_rng``). Training uses :data:`TRAIN_SEEDS`
    (``0 <= seed < 1_000_000``); evaluation uses :data:`EVAL_SEEDS` (``1_000_000 <= seed < 2_000_000``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from framepack_history.config.storyboard import parse_storyboard

EVAL_SEED_START = 1_000_000
TRAIN_SEEDS = range(0, EVAL_SEED_START)
EVAL_SEEDS = range(EVAL_SEED_START, 2 * EVAL_SEED_START)

#: saturated colours of landmarks and sprites (names are tokenizer words)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30), "green": (40, 200, 60), "blue": (40, 80, 255), "yellow": (250, 220, 30),
    "cyan": (30, 220, 230), "magenta": (230, 40, 220), "white": (245, 245, 245), "orange": (255, 140, 20),
}
#: muted colours the background is blended from
BACKGROUND_PALETTE: dict[str, tuple[int, int, int]] = {
    "night": (28, 32, 58), "dusk": (70, 52, 92), "moss": (58, 84, 58), "slate": (72, 86, 104),
    "sand": (140, 118, 84), "clay": (118, 70, 60), "teal": (40, 88, 92), "ash": (100, 100, 96),
}
LANDMARK_SHAPES = ("diamond", "ring", "cross", "pillar", "frame", "hourglass")
SPRITE_SHAPES = ("circle", "square", "triangle")
VOCABULARY = ("camera", "pans", "left", "right", "holds", "a", "and", "sprites", "moves", "move",
              *PALETTE, *SPRITE_SHAPES)
_NAMES, _COLOURS = list(PALETTE), np.array(list(PALETTE.values()), np.uint8)


@dataclass(frozen=True)
class WorldSpec:
    view: int = 32
    views_wide: int = 6
    fps: int = 4
    pan_px_per_frame: int | None = None  # None: view // 8 (2 px/frame at 16 px views)
    n_landmarks: tuple[int, int] = (8, 12)  # inclusive
    n_sprites: tuple[int, int] = (1, 3)  # inclusive

    def __post_init__(self) -> None:
        if self.view < 16 or self.views_wide < 3 or self.fps < 1 or (self.pan_px_per_frame or 1) < 1:
            raise ValueError(f"need view >= 16, views_wide >= 3, fps >= 1, pan_px_per_frame >= 1 (got {self})")
        if not (1 <= self.n_landmarks[0] <= self.n_landmarks[1] <= 12 and 0 <= self.n_sprites[0] <= self.n_sprites[1]):
            raise ValueError(f"bad landmark or sprite counts (got {self})")

    @property
    def pan_speed(self) -> int:
        return self.pan_px_per_frame or max(1, self.view // 8)

    @property
    def width(self) -> int:
        return self.view * self.views_wide

    @property
    def max_x(self) -> int:
        return self.width - self.view

    @property
    def jump_px(self) -> int:
        """How far ``camera jumps left|right`` moves the camera: half the canvas."""
        return self.width // 2

    @property
    def view_pan_seconds(self) -> float:
        """Seconds of panning that move the camera one whole view."""
        return self.view / self.pan_speed / self.fps


@dataclass(frozen=True)
class Landmark:
    colour: str
    shape: str
    cx: float
    cy: float
    size: int  # px across


@dataclass(frozen=True)
class Sprite:
    colour: str
    shape: str
    size: int  # px across
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    phase: tuple[float, float]  # starting distance along each bounce path
    speed: tuple[float, float]  # px per frame

    def at(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centres (x, y) at integer frame indices: constant-speed bounces inside the ranges."""
        out = []
        for (lo, hi), p0, v in zip((self.x_range, self.y_range), self.phase, self.speed):
            span = max(hi - lo, 1e-6)
            p = np.mod(p0 + v * np.asarray(frame, np.float64), 2 * span)
            out.append(lo + np.where(p <= span, p, 2 * span - p))
        return out[0], out[1]


@dataclass
class Episode:
    frames: np.ndarray  # uint8 [F, H, W, 3]
    camera_x: np.ndarray  # int64 [F], left edge of the view on the canvas
    caption: str
    sprite_mask: np.ndarray  # bool [F, H, W]: pixels covered by a sprite
    fps: int

    @property
    def seconds(self) -> float:
        return len(self.frames) / self.fps


_SHAPES = {  # (dx, dy, r) -> mask; dx, dy are offsets of pixel centres
    "circle": lambda dx, dy, r: np.hypot(dx, dy) <= r,
    "square": lambda dx, dy, r: np.maximum(abs(dx), abs(dy)) <= r,
    "triangle": lambda dx, dy, r: (abs(dy) <= r) & (abs(dx) <= (dy + r) / 2),  # apex up
    "diamond": lambda dx, dy, r: abs(dx) + abs(dy) <= r,
    "ring": lambda dx, dy, r: (np.hypot(dx, dy) <= r) & (np.hypot(dx, dy) >= r / 2),
    "cross": lambda dx, dy, r: (np.maximum(abs(dx), abs(dy)) <= r) & (np.minimum(abs(dx), abs(dy)) <= r / 3),
    "pillar": lambda dx, dy, r: (abs(dx) <= r / 2) & (abs(dy) <= r),
    "frame": lambda dx, dy, r: (np.maximum(abs(dx), abs(dy)) <= r) & (np.maximum(abs(dx), abs(dy)) >= r / 2),
    "hourglass": lambda dx, dy, r: (abs(dy) <= r) & (abs(dx) <= abs(dy)),
}


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, size: float) -> np.ndarray:
    """Hard-edged mask of a shape ``size`` px across centred at (0, 0)."""
    return _SHAPES[shape](dx, dy, size / 2)


def camera_action(text: str) -> int:
    """+1 for "pans right", -1 for "pans left", 0 otherwise (holds)."""
    m = re.search(r"\bpans?\s+(left|right)\b", text.lower())
    return 0 if m is None else (1 if m.group(1) == "right" else -1)


_JUMP = re.compile(r"\bjumps?\s+(left|right)\b")


def camera_jump(text: str) -> int:
    """+1 for "jumps right", -1 for "jumps left", 0 otherwise."""
    m = _JUMP.search(text.lower())
    return 0 if m is None else (1 if m.group(1) == "right" else -1)


def model_text(text: str) -> str:
    """The words the toy DiT reads for ``text``: a jump as a hold (the camera track carries the jump itself)."""
    return _JUMP.sub("holds", text.lower()) if _JUMP.search(text.lower()) else text


def _entry_index(board: list[tuple[float, str]], t: float) -> int:
    """The index of the entry in force at ``t`` (as :func:`prompt_at` picks it)."""
    i = 0
    for k, (start, _) in enumerate(board):
        if start <= t + 1e-9:
            i = k
    return i


def camera_moves(board: list[tuple[float, str]], first_frame: int, n: int, fps: int, spec: WorldSpec) -> list[int]:
    """The camera's move in px from frame ``first_frame + k`` to the next, ``k < n``, before the canvas edges.

    The entry in force at the frame's time decides: a pan moves ``spec.pan_speed`` every frame; a jump
    moves ``spec.jump_px`` once, at the entry's first frame, and holds after it.
    """
    out = []
    for f in range(first_frame, first_frame + n):
        i = _entry_index(board, f / fps)
        text = board[i][1]
        jump = camera_jump(text)
        if jump:
            out.append(jump * spec.jump_px if f == 0 or _entry_index(board, (f - 1) / fps) != i else 0)
        else:
            out.append(camera_action(text) * spec.pan_speed)
    return out


def _board(entries: list[tuple[float, str]]) -> str:
    return "; ".join(f"{t:g}s: {text}" for t, text in entries)


class World:
    """One procedural world: a static canvas (background + landmarks), sprites and a home x."""

    def __init__(self, seed: int, spec: WorldSpec | None = None) -> None:
        self.seed, self.spec = int(seed), spec or WorldSpec()
        rng = np.random.default_rng(self.seed)
        s, H, W = self.spec, self.spec.view, self.spec.width
        y, x = np.mgrid[0:H, 0:W].astype(np.float64) + 0.5
        # background: vertical bands bent by a few slow waves, blended through three colours, plus soft blobs
        names = rng.choice(len(BACKGROUND_PALETTE), 4, replace=False)
        bg = np.array(list(BACKGROUND_PALETTE.values()), np.float64)[names]
        wave = sum(w * np.sin(2 * np.pi * (fx * x / W + fy * y / H) + ph) for w, fx, fy, ph in zip(
            rng.uniform(0.5, 1.0, 3), rng.uniform(0.5, 3.5, 3), rng.uniform(-0.5, 0.5, 3), rng.uniform(0, 2 * np.pi, 3)))
        u = np.clip(0.55 * y / H + 0.45 * (0.5 + 0.25 * wave), 0, 1)[..., None] * 2
        canvas = np.where(u < 1, bg[0] + (bg[1] - bg[0]) * u, bg[1] + (bg[2] - bg[1]) * (u - 1))
        for _ in range(int(rng.integers(3, 6))):
            bx, by = rng.uniform(0, W), rng.uniform(0, H)
            sx, sy = rng.uniform(0.3, 0.6, 2) * s.view
            g = 0.6 * np.exp(-((x - bx) ** 2 / (2 * sx**2) + (y - by) ** 2 / (2 * sy**2)))[..., None]
            canvas = canvas * (1 - g) + bg[3] * g
        canvas = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
        # landmarks: one per slot along the width, alternating upper/lower half, unique (colour, shape)
        n = int(rng.integers(s.n_landmarks[0], s.n_landmarks[1] + 1))
        colours = np.concatenate([rng.permutation(len(PALETTE)), rng.permutation(len(PALETTE))])[:n]
        used: set[tuple[int, int]] = set()
        self.landmarks: list[Landmark] = []
        self.landmark_mask = np.zeros((H, W), bool)
        for i, c in enumerate(colours):
            shape = int(rng.integers(len(LANDMARK_SHAPES)))
            while (int(c), shape) in used:
                shape = (shape + 1) % len(LANDMARK_SHAPES)
            used.add((int(c), shape))
            size = int(round(rng.integers(5, 9) * s.view / 16))
            r = size / 2
            cx = (i + rng.uniform(0.25, 0.75)) * W / n
            cy = rng.uniform(r, H / 2) if i % 2 == 0 else rng.uniform(H / 2, H - r)
            lm = Landmark(_NAMES[c], LANDMARK_SHAPES[shape], float(cx), float(cy), size)
            m = shape_mask(lm.shape, x - cx, y - cy, size)
            canvas[m] = _COLOURS[c]
            self.landmark_mask |= m
            self.landmarks.append(lm)
        self.canvas = canvas
        # sprites: each bounces inside its own stretch of the canvas
        self.sprites: list[Sprite] = []
        unit, k = s.view / 16, int(rng.integers(s.n_sprites[0], s.n_sprites[1] + 1))
        for c in rng.choice(len(PALETTE), k, replace=k > len(PALETTE)):  # distinct colours
            size = int(round(rng.integers(3, 6) * unit))
            span = rng.uniform(1.0, 2.0) * s.view
            lo = rng.uniform(size / 2, W - size / 2 - span)
            yr = (size / 2, H - size / 2)
            self.sprites.append(Sprite(
                _NAMES[int(c)], SPRITE_SHAPES[int(rng.integers(3))], size,
                (float(lo), float(lo + span)), yr, (float(rng.uniform(0, 2 * span)), float(rng.uniform(0, 2 * (yr[1] - yr[0])))),
                (float(rng.uniform(0.25, 0.5) * unit), float(rng.uniform(0.05, 0.15) * unit))))
        self.home_x = int(rng.integers(0, s.max_x + 1))

    @classmethod
    def from_seed(cls, seed: int, spec: WorldSpec | None = None) -> "World":
        return cls(seed, spec)

    # ------------------------------------------------------------ describing
    def sprite_phrase(self) -> str:
        """"a red circle moves", "a red circle and a blue square move", "sprites move" (three) or ""."""
        names = [f"a {sp.colour} {sp.shape}" for sp in self.sprites]
        if len(names) > 2:
            return "sprites move"
        return " and ".join(names) + (" moves" if len(names) == 1 else " move") if names else ""

    def caption(self, storyboard: str) -> str:
        """The storyboard in canonical form with this world's sprite words added to every entry."""
        phrase = self.sprite_phrase()
        out = []
        for t, text in parse_storyboard(storyboard):
            mentions = re.search(r"\bsprites?\b|" + "|".join(SPRITE_SHAPES), text.lower())
            out.append((t, f"{text} and {phrase}" if phrase and not mentions else text))
        return _board(out)

    # -------------------------------------------------------------- the camera
    def camera_path(self, storyboard: str, seconds: float, start_x: int | None = None) -> np.ndarray:
        """Camera x for every frame of ``seconds`` of the storyboard (int64 [F])."""
        s, board = self.spec, parse_storyboard(storyboard)
        n = max(1, int(round(seconds * s.fps)))
        moves = np.array(camera_moves(board, 0, n - 1, s.fps, s), np.int64)
        if start_x is None:
            free = np.concatenate([[0], np.cumsum(moves)])
            lo, hi = -int(free.min()), s.max_x - int(free.max())
            start_x = min(max(self.home_x, lo), hi) if lo <= hi else min(max(lo, 0), s.max_x)
        if not 0 <= start_x <= s.max_x:
            raise ValueError(f"start_x must be in [0, {s.max_x}] (got {start_x})")
        xs = np.empty(n, np.int64)
        xs[0] = start_x
        for i, m in enumerate(moves):
            xs[i + 1] = min(max(xs[i] + m, 0), s.max_x)
        return xs

    # --------------------------------------------------------------- drawing
    def _views(self, camera_x: np.ndarray, frame: np.ndarray, sprites: bool = True) -> tuple[np.ndarray, np.ndarray]:
        V, H = self.spec.view, self.spec.view
        cols = camera_x[:, None] + np.arange(V)[None, :]  # [F, V]
        frames = np.ascontiguousarray(self.canvas[:, cols].transpose(1, 0, 2, 3))  # [F, H, V, 3]
        mask = np.zeros(frames.shape[:3], bool)
        if sprites:
            X = cols[:, None, :] + 0.5
            Y = np.arange(H, dtype=np.float64)[None, :, None] + 0.5
            for sp in self.sprites:
                cx, cy = sp.at(frame)
                m = shape_mask(sp.shape, X - cx[:, None, None], Y - cy[:, None, None], sp.size)
                frames[m] = PALETTE[sp.colour]
                mask |= m
        return frames, mask

    def render(self, storyboard: str, seconds: float, start_x: int | None = None, describe_sprites: bool = True) -> Episode:
        """Frames of ``seconds`` of this world following the storyboard's camera words."""
        xs = self.camera_path(storyboard, seconds, start_x)
        frames, mask = self._views(xs, np.arange(len(xs)))
        caption = self.caption(storyboard) if describe_sprites else _board(parse_storyboard(storyboard))
        return Episode(frames, xs, caption, mask, self.spec.fps)

    def view_at(self, x: int, frame_index: int = 0) -> np.ndarray:
        """The true view (uint8 [H, W, 3]) with the camera at ``x`` and the sprites at ``frame_index``."""
        return self._views(self._check_x(x), np.array([frame_index]))[0][0]

    def background_view(self, x: int) -> np.ndarray:
        """The static part of the view at ``x``: background and landmarks, no sprites."""
        return self._views(self._check_x(x), np.array([0]), sprites=False)[0][0]

    def _check_x(self, x: int) -> np.ndarray:
        if not 0 <= int(x) <= self.spec.max_x:
            raise ValueError(f"x must be in [0, {self.spec.max_x}] (got {x})")
        return np.array([int(x)], np.int64)


# ------------------------------------------------------------- storyboards
def pan_away_and_back(seconds_each_way: float, direction: str = "right") -> str:
    """Pan one way, then back for as long; the camera is at its start view at ``2 * seconds_each_way`` and holds."""
    s, back = seconds_each_way, "left" if direction == "right" else "right"
    return _board([(0.0, f"camera pans {direction}"), (s, f"camera pans {back}"), (2 * s, "camera holds")])


def leave_and_return(gap_seconds: float, spec: WorldSpec | None = None, direction: str = "right") -> str:
    """Pan one whole view away (or half the gap, if shorter), hold, and be back at the start view at ``gap_seconds``."""
    spec = spec or WorldSpec()
    away = min(spec.view_pan_seconds, gap_seconds / 2)
    back = "left" if direction == "right" else "right"
    entries = [(0.0, f"camera pans {direction}")]
    if gap_seconds - 2 * away > 1e-9:
        entries.append((away, "camera holds"))
    entries += [(gap_seconds - away, f"camera pans {back}"), (gap_seconds, "camera holds")]
    return _board(entries)


def random_storyboard(rng: np.random.Generator, seconds: float, p_return: float = 0.6,
                      max_pan_seconds: float | None = None) -> str:
    """A training storyboard on whole seconds; with probability ``p_return`` it pans away and back.

    Returning boards: optional hold, pan away ``a`` s, optional hold, pan back ``a`` s, hold. The others
    pan one way only, between holds, so they never show a view twice. ``max_pan_seconds`` caps the span
    of the path (the canvas width in pan time), so that a pan never runs into the edge of the canvas.
    """
    total = max(1, int(math.floor(seconds)))
    cap = math.inf if max_pan_seconds is None else max(1, int(math.floor(max_pan_seconds)))
    words = {-1: "camera pans left", 0: "camera holds", 1: "camera pans right"}
    steps: list[tuple[int, int]] = []  # (action, duration)
    if total >= 2 and rng.random() < p_return:
        d = int(rng.choice([-1, 1]))
        a = int(rng.integers(1, min(total // 2, cap) + 1))
        lead = int(rng.integers(0, total - 2 * a + 1)) if rng.random() < 0.3 else 0
        hold = int(rng.integers(0, total - 2 * a - lead + 1))
        steps = [(0, lead), (d, a), (0, hold), (-d, a), (0, total - 2 * a - lead - hold)]
    else:  # one direction only, with holds: nothing is seen twice
        d, t, panned = int(rng.choice([-1, 1])), 0, 0
        while t < total:
            act = d if panned < cap and rng.random() < 0.6 else 0
            dur = min(int(rng.integers(1, max(1, total // 2) + 1)), total - t, cap - panned if act else total)
            panned, t = panned + (dur if act else 0), t + dur
            steps.append((act, dur))
    entries: list[tuple[float, str]] = []
    for t, (d, dur) in zip(np.cumsum([0] + [dur for _, dur in steps]).tolist(), steps):
        if dur > 0 and (not entries or entries[-1][1] != words[d]):
            entries.append((float(t), words[d]))
    return _board(entries)


def start_frame(seed: int, spec: WorldSpec | None = None, storyboard: str | None = None, seconds: float = 0.0) -> np.ndarray:
    """The first view of world ``seed`` (uint8 [H, W, 3]): at its home x, or where ``render`` would start the storyboard."""
    world = World.from_seed(seed, spec)
    x = world.home_x if storyboard is None else int(world.camera_path(storyboard, seconds)[0])
    return world.view_at(x, 0)


# ------------------------------------------------------------------ dataset
class ToyWorldDataset(torch.utils.data.Dataset):
    """Episodes of toy worlds, item ``i`` from seed ``split_start + first + i``.

    Items: ``video`` float [3, F, H, W] in [-1, 1], ``caption`` str, ``camera_x`` LongTensor [F], ``seed`` int.
    """

    def __init__(self, split: str = "train", size: int = 10_000, *, first: int = 0, spec: WorldSpec | None = None,
                 episode_seconds: float = 10.0, fps: int | None = None, p_return: float = 0.6) -> None:
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval' (got {split!r})")
        pool = TRAIN_SEEDS if split == "train" else EVAL_SEEDS
        if size < 1 or first < 0 or first + size > len(pool):
            raise ValueError(f"seeds {first}..{first + size} do not fit the {split} split ({len(pool)} seeds)")
        spec = spec or WorldSpec()
        self.spec = dataclasses.replace(spec, fps=fps) if fps is not None else spec
        self.seeds = range(pool.start + first, pool.start + first + size)
        self.episode_seconds, self.p_return = episode_seconds, p_return

    def __len__(self) -> int:
        return len(self.seeds)

    def episode(self, i: int) -> Episode:
        """The episode of item ``i``: world ``seed``, storyboard drawn from ``default_rng([seed, 1])``."""
        s, seed = self.spec, self.seeds[i]
        cap = s.max_x / s.pan_speed / s.fps  # the canvas width in pan time
        board = random_storyboard(np.random.default_rng([seed, 1]), self.episode_seconds, self.p_return, cap)
        return World.from_seed(seed, s).render(board, self.episode_seconds)

    def __getitem__(self, i: int) -> dict:
        ep = self.episode(i)
        video = torch.from_numpy(ep.frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0
        return {"video": video, "caption": ep.caption, "camera_x": torch.from_numpy(ep.camera_x), "seed": self.seeds[i]}
