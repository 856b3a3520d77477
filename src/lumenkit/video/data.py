"""The VideoMaker synthetic world: textured sprites moving over backgrounds, with exact ground truth.

No video dataset can be downloaded, so the subjects, their motions and every frame are generated here
(spec videomaker.md, "What lumenkit builds" 3). Everything is a pure function of a few random draws, so
each metric can be measured against truth.

- Identities (subjects): shape x pattern x colours, 2600 of them (:data:`IDENTITIES`, id = index):
  10 shapes (:data:`SHAPES`), 6 patterns (:data:`PATTERNS`), colours from :data:`COLOURS` (t2i's
  palette). ``solid`` has one colour (10 x 8); ``stripes | dots | rings | border`` put a second colour on
  the first (ordered pairs, 10 x 4 x 56); ``checker`` takes each unordered pair once (10 x 28).
- Zero-shot split: a seeded permutation (:data:`SPLIT_SEED`) puts 10 % of the identities (260) in
  ``test`` and the rest (2340) in ``train``; :func:`identity_ids` lists them. Test subjects never occur in
  a ``train`` batch.
- Motions (:data:`MOTIONS`, id = index), each an exact function of the frame index t in [0, F), with
  u = t / (F - 1): ``still`` (stays still); ``left | right | up | down`` (moves ...: the centre travels
  MOVE_TRAVEL * size px over the clip, MOVE_TRAVEL * size / (F - 1) px per frame); ``spins`` (angle +=
  SPIN_DEGREES * u, counter-clockwise on screen); ``grows | shrinks`` (scale * (GROW_SCALES[0] ->
  GROW_SCALES[1]) linearly in u, or back). ``spins`` is never given to a rotation-invariant identity
  (a circle that is solid, ringed or bordered).
- Backgrounds, static within a clip: ``plain``, ``gradient`` (two colours along a random direction),
  ``noise`` (bicubically upsampled coarse value noise), muted colours, drawn per clip.
- Captions: ``"{identity phrase} {motion phrase}"``, e.g. "a red star with blue stripes moves left",
  "a green and yellow checkered hexagon spins", "an orange oval with a cyan border grows".
  :func:`parse_caption` inverts :func:`caption` exactly. :func:`class_caption` names the class only,
  "a star moves left" (VideoMaker trains and is evaluated on these: the identity comes from the reference).

Rendering is inverse-warp point sampling: every pixel's SUPERSAMPLE x SUPERSAMPLE sub-samples are mapped
into the sprite's own frame (u, v) (circumradius 1, v up), where the shape (polygon crossing test or
ellipse) and the pattern are evaluated analytically; the averages give the anti-aliased coverage
(masks, in [0, 1], the exact fraction of sub-samples inside) and the premultiplied sprite colour, composited
over the background. Polygons are centred on their area centroid, so a mask's centroid is the sprite's
position. Colours are sRGB-encoded; tensors are float32 in [-1, 1] (the VAE's range, like lumenkit.t2i).
Coordinates are pixels with the origin at the image's top-left corner (pixel (i, j) covers
[j, j+1) x [i, i+1), its centre is (j + 0.5, i + 0.5)); angles are degrees, counter-clockwise on screen.

The reference image is built as the paper builds it, the subject cut out of one frame (a random frame k)
with its exact alpha matte and pasted onto a plain grey background, shifted by a whole number of pixels
so that the subject sits at the image centre (its pixels are the frame's pixels where the mask is 1).
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lumenkit.common.config import check, check_choice, param
from lumenkit.common.errors import LumenkitError
from lumenkit.t2i.data import COLOURS

FRAMES = 8  # default clip length
SIZE = 64  # default frame size (square, px)
SUPERSAMPLE = 4  # sub-samples per pixel side
SPLIT_SEED = 2412_19645  # arXiv id of VideoMaker: the identity permutation's seed
TEST_FRACTION = 0.1
SPLITS = ("train", "test", "all")

SPRITE_RADIUS = 0.24  # sprite circumradius at scale 1, as a fraction of the frame size
SCALE_JITTER = (0.9, 1.1)  # per-clip scale s0 (uniform)
MOVE_TRAVEL = 0.375  # fraction of the frame size the centre travels over a "moves ..." clip
SPIN_DEGREES = 180.0  # rotation over a "spins" clip, counter-clockwise
GROW_SCALES = (0.7, 1.2)  # scale factor from the first to the last frame of a "grows" clip
MARGIN_PX = 1.0  # the sprite's bounding circle stays this far inside the frame

MOTIONS = ("still", "left", "right", "up", "down", "spins", "grows", "shrinks")
MOTION_PHRASES = {
    "still": "stays still", "left": "moves left", "right": "moves right", "up": "moves up", "down": "moves down",
    "spins": "spins", "grows": "grows", "shrinks": "shrinks",
}
SHAPES = ("circle", "oval", "square", "diamond", "triangle", "pentagon", "hexagon", "star", "cross", "arrow")
PATTERNS = ("solid", "stripes", "dots", "rings", "border", "checker")
BACKGROUND_KINDS = ("plain", "gradient", "noise")
ELLIPSES = {"circle": (0.9, 0.9), "oval": (1.0, 0.55)}  # semi-axes (u, v) in circumradius units


def _regular(n: int, r: float = 1.0, start: float = 90.0) -> np.ndarray:
    t = np.deg2rad(start + np.arange(n) * 360.0 / n)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _centred(vertices: np.ndarray) -> np.ndarray:
    """Move a polygon's area centroid to the origin and scale its farthest vertex to radius 1."""
    x, y = vertices[:, 0], vertices[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    c = np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (6 * area)
    v = vertices - c
    return v / np.hypot(v[:, 0], v[:, 1]).max()


def _star() -> np.ndarray:
    t = np.deg2rad(90.0 + np.arange(10) * 36.0)
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


_W = 0.32  # half width of the cross's arms
POLYGONS: dict[str, np.ndarray] = {  # vertices [K, 2] (u, v), v up
    name: _centred(np.asarray(v, np.float64))
    for name, v in {
        "square": _regular(4, 1.0, 45.0),
        "diamond": [(0, 1), (0.6, 0), (0, -1), (-0.6, 0)],
        "triangle": _regular(3),
        "pentagon": _regular(5),
        "hexagon": _regular(6, 1.0, 0.0),
        "star": _star(),
        "cross": [(_W, 1), (_W, _W), (1, _W), (1, -_W), (_W, -_W), (_W, -1), (-_W, -1), (-_W, -_W), (-1, -_W), (-1, _W), (-_W, _W), (-_W, 1)],
        "arrow": [(-1, 0.25), (0.15, 0.25), (0.15, 0.62), (1, 0), (0.15, -0.62), (0.15, -0.25), (-1, -0.25)],
    }.items()
}


# ------------------------------------------------------------------------------------- identities
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Identity:
    """One subject: its id (index in IDENTITIES), shape, pattern, first colour and second colour (None for solid)."""

    id: int
    shape: str
    pattern: str
    colour: str
    colour2: str | None

    def phrase(self) -> str:
        """The identity's own words: 'a red star with blue stripes', 'a red and blue checkered star', 'a red star'."""
        c, c2, s = self.colour, self.colour2, self.shape
        if self.pattern == "solid":
            return f"{_article(c)} {c} {s}"
        if self.pattern == "checker":
            return f"{_article(c)} {c} and {c2} checkered {s}"
        if self.pattern == "border":
            return f"{_article(c)} {c} {s} with a {c2} border"
        return f"{_article(c)} {c} {s} with {c2} {self.pattern}"

    @property
    def rotation_invariant(self) -> bool:
        """True when spinning leaves the sprite unchanged (so "spins" is never drawn for it)."""
        return self.shape == "circle" and self.pattern in ("solid", "rings", "border")

    @property
    def split(self) -> str:
        return "test" if self.id in _TEST_IDS else "train"


def _all_identities() -> tuple[Identity, ...]:
    out: list[Identity] = []
    names = list(COLOURS)
    for shape, pattern in itertools.product(SHAPES, PATTERNS):
        if pattern == "solid":
            pairs = [(c, None) for c in names]
        elif pattern == "checker":
            pairs = list(itertools.combinations(names, 2))
        else:
            pairs = list(itertools.permutations(names, 2))
        out += [Identity(len(out) + i, shape, pattern, c, c2) for i, (c, c2) in enumerate(pairs)]
    return tuple(out)


IDENTITIES = _all_identities()
_perm = np.random.default_rng(SPLIT_SEED).permutation(len(IDENTITIES))
_TEST_IDS = frozenset(int(i) for i in _perm[: int(round(TEST_FRACTION * len(IDENTITIES)))])
_SPLIT_IDS = {
    "test": np.array(sorted(_TEST_IDS), np.int64),
    "train": np.array(sorted(set(range(len(IDENTITIES))) - _TEST_IDS), np.int64),
    "all": np.arange(len(IDENTITIES), dtype=np.int64),
}
_BY_PHRASE = {i.phrase(): i for i in IDENTITIES}


def _check_split(split: str) -> None:
    check_choice("split", split, SPLITS)


def identity_ids(split: str = "all") -> np.ndarray:
    """Sorted int64 ids of a split: train 2340, test 260 (never in training: zero-shot), all 2600."""
    _check_split(split)
    return _SPLIT_IDS[split].copy()


def identities(split: str = "all") -> list[Identity]:
    return [IDENTITIES[int(i)] for i in identity_ids(split)]


def caption(identity: Identity, motion: str) -> str:
    """'a red star with blue stripes moves left'."""
    return f"{identity.phrase()} {MOTION_PHRASES[motion]}"


def class_caption(identity: Identity, motion: str) -> str:
    """The class-level caption: 'a star moves left' (the subject's shape only, as the paper's prompts
    name a class, "a man", and leave the identity to the reference image)."""
    return f"{_article(identity.shape)} {identity.shape} {MOTION_PHRASES[motion]}"


CAPTION_MODES = {"class": class_caption, "full": caption}


def parse_caption(text: str) -> tuple[Identity, str]:
    """Inverse of caption(): (identity, motion name); LumenkitError for text outside the grammar."""
    t = " ".join(text.strip().lower().split())
    for motion, ph in MOTION_PHRASES.items():
        if t.endswith(" " + ph) and t[: -len(ph) - 1] in _BY_PHRASE:
            return _BY_PHRASE[t[: -len(ph) - 1]], motion
    raise LumenkitError(f"caption {text!r} is not in the video grammar ('a red star with blue stripes moves left')")


def caption_vocabulary() -> list[str]:
    """Every word a caption can use (for a tokenizer)."""
    words = {"a", "an", "and", "with", "checkered", "border", *COLOURS, *SHAPES, *PATTERNS}
    for ph in MOTION_PHRASES.values():
        words.update(ph.split())
    return sorted(words - {"solid", "checker"})


# ----------------------------------------------------------------------------------------- clips
@dataclass
class Background:
    """A static background: kind, its colours [K, 3] in [0, 1] (plain 1, gradient 2, noise a coarse
    [n, n, 3] grid flattened) and the gradient's direction in degrees (0 = left to right)."""

    kind: str
    colours: np.ndarray
    angle: float = 0.0

    def to_json(self) -> dict:
        return {"kind": self.kind, "colours": np.round(self.colours, 6).tolist(), "angle": self.angle}


@dataclass
class ClipSpec:
    """Everything one clip is rendered from: identity, motion, frame count and size, the sprite's first
    position (x, y) px, per-clip scale s0 and first angle (deg), the background, the reference frame k and
    the reference's plain grey level in [0, 1]."""

    identity_id: int
    motion: str
    frames: int
    size: int
    start: tuple[float, float]
    scale0: float
    angle0: float
    background: Background
    reference_frame: int = 0
    reference_grey: float = 1.0

    @property
    def identity(self) -> Identity:
        return IDENTITIES[self.identity_id]

    def caption(self, mode: str = "full") -> str:
        """The clip's caption: "full" names the identity ('a red star with blue stripes moves left'),
        "class" its shape only ('a star moves left')."""
        return CAPTION_MODES[mode](self.identity, self.motion)

    def trajectory(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The exact per-frame transform: positions [F, 2] (x, y) px of the sprite's centroid, scales [F]
        (circumradius = scale * SPRITE_RADIUS * size px) and angles [F] degrees counter-clockwise."""
        n = self.frames
        u = np.arange(n, dtype=np.float64) / max(n - 1, 1)
        travel = MOVE_TRAVEL * self.size * u
        x = np.full(n, float(self.start[0]))
        y = np.full(n, float(self.start[1]))
        scale = np.full(n, float(self.scale0))
        angle = np.full(n, float(self.angle0))
        m = self.motion
        if m == "left":
            x = x - travel
        elif m == "right":
            x = x + travel
        elif m == "up":
            y = y - travel
        elif m == "down":
            y = y + travel
        elif m == "spins":
            angle = angle + SPIN_DEGREES * u
        elif m in ("grows", "shrinks"):
            lo, hi = GROW_SCALES if m == "grows" else GROW_SCALES[::-1]
            scale = scale * (lo + (hi - lo) * u)
        return np.stack([x, y], 1), scale, angle

    def to_json(self) -> dict:
        pos, scale, angle = self.trajectory()
        ident = self.identity
        return {
            "text": self.caption(), "identity_id": ident.id, "split": ident.split, "shape": ident.shape,
            "pattern": ident.pattern, "colour": ident.colour, "colour2": ident.colour2, "motion": self.motion,
            "motion_id": MOTIONS.index(self.motion), "frames": self.frames, "size": self.size,
            "positions": np.round(pos, 6).tolist(), "scales": np.round(scale, 6).tolist(), "angles": np.round(angle, 6).tolist(),
            "background": self.background.to_json(), "reference_frame": self.reference_frame, "reference_grey": self.reference_grey,
        }


def check_clip_shape(frames: int, size: int) -> None:
    """frames in [1, 64] and size a multiple of 8 in [32, 256] (the VAE downsamples by 8); ConfigError naming the flag."""
    check(isinstance(frames, (int, np.integer)) and 1 <= frames <= 64, "frames", frames, "must be an integer in [1, 64]")
    check(isinstance(size, (int, np.integer)) and 32 <= size <= 256 and size % 8 == 0, "size", size,
          "must be a multiple of 8 in [32, 256]")


def _muted(rng: np.random.Generator, k: int) -> np.ndarray:
    """k muted colours [k, 3] in [0, 1]: a grey level plus a small tint."""
    grey = rng.uniform(0.12, 0.92, size=(k, 1))
    return np.clip(grey + rng.uniform(-0.15, 0.15, size=(k, 3)), 0.0, 1.0)


def sample_background(rng: np.random.Generator) -> Background:
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    if kind == "plain":
        return Background(kind, _muted(rng, 1))
    if kind == "gradient":
        return Background(kind, _muted(rng, 2), float(rng.uniform(0.0, 360.0)))
    n = int(rng.integers(3, 9))
    base = _muted(rng, 1)
    return Background(kind, np.clip(base + rng.uniform(-0.25, 0.25, size=(n * n, 3)), 0.0, 1.0))


def _max_scale_factor(motion: str) -> float:
    return max(GROW_SCALES) if motion in ("grows", "shrinks") else 1.0


def sample_clip(rng: np.random.Generator, identity_id: int, motion: str | None = None,
                frames: int = FRAMES, size: int = SIZE) -> ClipSpec:
    """A random clip of one identity: motion (None: uniform over the motions it allows), placement that
    keeps the whole sprite inside the frame on every frame, background, reference frame and grey."""
    ident = IDENTITIES[int(identity_id)]
    allowed = [m for m in MOTIONS if not (m == "spins" and ident.rotation_invariant)]
    if motion is None:
        motion = allowed[int(rng.integers(len(allowed)))]
    check_choice("motion", motion, MOTIONS)
    s0 = float(rng.uniform(*SCALE_JITTER))
    b = SPRITE_RADIUS * size * s0 * _max_scale_factor(motion) + MARGIN_PX  # bounding-circle radius
    travel = MOVE_TRAVEL * size
    lo = np.array([b, b])
    hi = np.array([size - b, size - b])
    axis, sign = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}.get(motion, (0, 0))
    if sign < 0:
        lo[axis] += travel
    elif sign > 0:
        hi[axis] -= travel
    start = rng.uniform(lo, hi)
    angle0 = float(rng.uniform(0.0, 360.0))
    bg = sample_background(rng)
    k = int(rng.integers(frames))
    grey = float(rng.uniform(0.1, 0.95))
    return ClipSpec(int(identity_id), motion, int(frames), int(size), (float(start[0]), float(start[1])), s0, angle0, bg, k, grey)


def sample_clips(rng: np.random.Generator, n: int, split: str = "train", frames: int = FRAMES, size: int = SIZE) -> list[ClipSpec]:
    """n random clips whose identities are drawn uniformly from a split."""
    _check_split(split)
    check_clip_shape(frames, size)
    ids = _SPLIT_IDS[split]
    return [sample_clip(rng, int(ids[int(rng.integers(len(ids)))]), None, frames, size) for _ in range(n)]


# ------------------------------------------------------------------------------------- rendering
def _inside_polygon(vertices: np.ndarray, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Crossing-number point-in-polygon test, vectorised over all sample points (one pass per edge)."""
    inside = torch.zeros(u.shape, dtype=torch.bool)
    k = len(vertices)
    for i in range(k):
        x1, y1 = vertices[i]
        x2, y2 = vertices[(i + 1) % k]
        if y1 == y2:
            continue
        crosses = (v < y1) != (v < y2)
        x_at = x1 + (v - y1) * ((x2 - x1) / (y2 - y1))
        inside ^= crosses & (u < x_at)
    return inside


def shape_inside(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bool mask of sprite-frame points (u, v) (circumradius 1, v up) inside `shape`."""
    if shape in ELLIPSES:
        a, b = ELLIPSES[shape]
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return _inside_polygon(POLYGONS[shape], u, v)


def pattern_second(ident: Identity, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bool: where the pattern shows the second colour (sprite frame, so it moves, turns and scales with the sprite)."""
    p = ident.pattern
    if p == "solid":
        return torch.zeros(u.shape, dtype=torch.bool)
    if p == "stripes":
        return torch.frac(u / 0.5 + 100.25) < 0.45
    if p == "dots":
        du, dv = torch.frac(u / 0.55 + 100.5) - 0.5, torch.frac(v / 0.55 + 100.5) - 0.5
        return du * du + dv * dv <= (0.19 / 0.55) ** 2
    if p == "rings":
        return torch.frac(torch.sqrt(u * u + v * v) / 0.42) >= 0.5
    if p == "border":
        return ~shape_inside(ident.shape, u / 0.66, v / 0.66)
    if p == "checker":
        return (torch.floor(u / 0.5) + torch.floor(v / 0.5)).remainder(2) == 1
    raise LumenkitError(f"unknown pattern {p!r}")


def render_sprite_layer(ident: Identity, positions: np.ndarray, scales: np.ndarray, angles: np.ndarray,
                        size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Premultiplied sprite colour [F, 3, H, W] and coverage [F, 1, H, W], both in [0, 1] (sRGB-encoded
    colour), for per-frame positions [F, 2] px, scales [F] and angles [F] deg: inverse-warp sampling at
    SUPERSAMPLE^2 points per pixel, in one window of the same size per frame around the sprite."""
    n, ss = len(positions), SUPERSAMPLE
    radius = np.asarray(scales, np.float64) * SPRITE_RADIUS * size
    reach = float(radius.max()) + 1.0
    win = int(np.ceil(2 * reach)) + 1  # window side, px
    origin = np.floor(np.asarray(positions, np.float64) - reach).astype(np.int64)  # [F, 2] window corner (x, y)
    offs = (np.arange(win * ss) + 0.5) / ss
    dx = (origin[:, :1] + offs[None] - positions[:, :1]) / radius[:, None]  # [F, win*ss], sprite units
    dy = (positions[:, 1:] - origin[:, 1:] - offs[None]) / radius[:, None]  # up is +v
    th = np.deg2rad(np.asarray(angles, np.float64))[:, None]
    t = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    u = t(np.cos(th) * dx)[:, None, :] + t(np.sin(th) * dy)[:, :, None]  # [F, win*ss (y), win*ss (x)]
    v = t(np.cos(th) * dy)[:, :, None] - t(np.sin(th) * dx)[:, None, :]
    inside = shape_inside(ident.shape, u, v)
    c1 = torch.tensor(COLOURS[ident.colour], dtype=torch.float32) / 255.0
    c2 = torch.tensor(COLOURS[ident.colour2 or ident.colour], dtype=torch.float32) / 255.0
    second = pattern_second(ident, u, v).unsqueeze(1)
    colour = F.avg_pool2d(torch.where(second, c2.view(1, 3, 1, 1), c1.view(1, 3, 1, 1)) * inside.unsqueeze(1), ss)
    cover = F.avg_pool2d(inside.unsqueeze(1).float(), ss)
    pad = win + 1  # windows may reach past the frame: paste into a padded canvas, then crop
    canvas = torch.zeros(n, 4, size + 2 * pad, size + 2 * pad)
    for f in range(n):  # one paste per frame
        x, y = origin[f] + pad
        canvas[f, :3, y : y + win, x : x + win] = colour[f]
        canvas[f, 3:, y : y + win, x : x + win] = cover[f]
    canvas = canvas[:, :, pad : pad + size, pad : pad + size]
    return canvas[:, :3].contiguous(), canvas[:, 3:].contiguous()


def render_background(bg: Background, size: int) -> torch.Tensor:
    """[3, H, W] in [0, 1]."""
    cols = torch.from_numpy(np.asarray(bg.colours, np.float32))
    if bg.kind == "plain":
        return cols[0].view(3, 1, 1).expand(3, size, size).clone()
    if bg.kind == "gradient":
        p = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
        a = np.deg2rad(bg.angle)
        t = (p.view(1, -1) * float(np.cos(a)) + p.view(-1, 1) * float(np.sin(a))) / np.sqrt(0.5) + 0.5
        t = t.clamp(0, 1).unsqueeze(0)
        return cols[0].view(3, 1, 1) * (1 - t) + cols[1].view(3, 1, 1) * t
    n = int(round(np.sqrt(len(cols))))
    grid = cols.view(n, n, 3).permute(2, 0, 1).unsqueeze(0)
    return F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)[0].clamp(0, 1)


def _reference_shift(spec: ClipSpec, positions: np.ndarray) -> tuple[int, int]:
    x, y = positions[spec.reference_frame]
    return int(np.round(spec.size / 2 - x)), int(np.round(spec.size / 2 - y))


@dataclass
class VideoBatch:
    """A batch of B clips of F frames at H = W = size px. Tensors are on the CPU.

    videos [B, F, 3, H, W] float32 in [-1, 1] (sRGB-encoded); masks [B, F, 1, H, W] anti-aliased subject
    coverage in [0, 1]; backgrounds [B, 3, H, W] in [-1, 1] (static; frame = sprite + background * (1 - mask)
    in [0, 1] units); references [B, 3, H, W] in [-1, 1]: the subject cut out of frame reference_frames[b]
    onto a plain grey, shifted by reference_shifts[b] = (dx, dy) whole pixels to the centre;
    reference_masks [B, 1, H, W]; positions [B, F, 2] (x, y) px; scales [B, F] (circumradius = scale *
    SPRITE_RADIUS * size px); angles [B, F] deg counter-clockwise; identity_ids, motion_ids,
    reference_frames int64 [B]; reference_shifts int64 [B, 2]; captions; specs (what it was rendered from).
    """

    videos: torch.Tensor
    masks: torch.Tensor
    backgrounds: torch.Tensor
    references: torch.Tensor
    reference_masks: torch.Tensor
    positions: torch.Tensor
    scales: torch.Tensor
    angles: torch.Tensor
    identity_ids: torch.Tensor
    motion_ids: torch.Tensor
    reference_frames: torch.Tensor
    reference_shifts: torch.Tensor
    captions: list[str] = field(default_factory=list)
    specs: list[ClipSpec] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.captions)

    def to(self, device: torch.device | str) -> "VideoBatch":
        """The same batch with every tensor on `device`."""
        kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return VideoBatch(**kw)


def render_clips(specs: Sequence[ClipSpec]) -> VideoBatch:
    """Render clip specs (all of one frame count and size) -> VideoBatch. Pure function of the specs."""
    if not specs:
        raise LumenkitError("render_clips: no clips")
    frames, size = specs[0].frames, specs[0].size
    if any((s.frames, s.size) != (frames, size) for s in specs):
        raise LumenkitError("render_clips: every clip of a batch needs the same frames and size")
    out: dict[str, list] = {k: [] for k in ("videos", "masks", "backgrounds", "references", "reference_masks", "positions", "scales", "angles", "shifts")}
    for spec in specs:
        pos, scale, angle = spec.trajectory()
        layer, cover = render_sprite_layer(spec.identity, pos, scale, angle, spec.size)
        bg = render_background(spec.background, spec.size)
        k = spec.reference_frame
        dx, dy = _reference_shift(spec, pos)
        ref_layer = torch.roll(layer[k], (dy, dx), dims=(1, 2))  # zero outside the sprite: nothing wraps
        ref_mask = torch.roll(cover[k], (dy, dx), dims=(1, 2))
        ref = ref_layer + spec.reference_grey * (1 - ref_mask)
        out["videos"].append(layer + bg * (1 - cover))
        out["masks"].append(cover)
        out["backgrounds"].append(bg)
        out["references"].append(ref)
        out["reference_masks"].append(ref_mask)
        out["positions"].append(torch.from_numpy(pos))
        out["scales"].append(torch.from_numpy(scale))
        out["angles"].append(torch.from_numpy(angle))
        out["shifts"].append((dx, dy))
    stack = lambda k: torch.stack(out[k])  # noqa: E731
    return VideoBatch(
        videos=stack("videos").mul(2).sub(1), masks=stack("masks"), backgrounds=stack("backgrounds").mul(2).sub(1),
        references=stack("references").mul(2).sub(1), reference_masks=stack("reference_masks"),
        positions=stack("positions").float(), scales=stack("scales").float(), angles=stack("angles").float(),
        identity_ids=torch.tensor([s.identity_id for s in specs], dtype=torch.long),
        motion_ids=torch.tensor([MOTIONS.index(s.motion) for s in specs], dtype=torch.long),
        reference_frames=torch.tensor([s.reference_frame for s in specs], dtype=torch.long),
        reference_shifts=torch.tensor(out["shifts"], dtype=torch.long),
        captions=[s.caption() for s in specs], specs=list(specs),
    )


def make_batch(rng: np.random.Generator, n: int, split: str = "train", frames: int = FRAMES, size: int = SIZE,
               rows: slice | None = None) -> VideoBatch:
    """n random clips of a split, rendered in memory; call as make_batch(batch_rng(seed, step), ...) so a
    step's batch is a pure function of (seed, step). `rows` renders only those rows of the n drawn (every
    clip is drawn first, so rows of one batch match the full batch's: for distributed micro-batches)."""
    check(isinstance(n, (int, np.integer)) and n >= 1, "batch_size", n, "must be a positive integer")
    specs = sample_clips(rng, int(n), split, frames, size)
    return render_clips(specs[rows] if rows is not None else specs)


def render_sprites(ids: Sequence[int], size: int = SIZE, scale: float = 1.0, angle: float = 0.0,
                   grey: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each identity's canonical sprite, centred, at `scale` and `angle` deg on a plain grey -> images
    [N, 3, H, W] in [-1, 1] and masks [N, 1, H, W] (the ground truth for subject-fidelity metrics)."""
    check_clip_shape(1, size)
    bg = Background("plain", np.full((1, 3), grey))
    specs = [ClipSpec(int(i), "still", 1, size, (size / 2, size / 2), scale, angle, bg, 0, grey) for i in ids]
    b = render_clips(specs)
    return b.videos[:, 0], b.masks[:, 0]


# ----------------------------------------------------------------------------------------- files
@dataclass
class DataConfig:
    """`lumenkit video data`: synthetic clips as PNG folders plus metadata.jsonl (write_dataset)."""

    out: str = param(help="output folder", short="-o")
    n: int = param(64, "number of clips")
    seed: int = param(0, "seed of the clips (batch k of 16 is drawn from (seed, k))")
    split: str = param("all", "identities to draw from (test = the zero-shot subjects never seen in training)", choices=SPLITS)
    frames: int = param(FRAMES, "frames per clip")
    size: int = param(SIZE, "frame size in pixels (square, multiple of 8)")

    def __post_init__(self) -> None:
        check(isinstance(self.n, int) and self.n >= 1, "n", self.n, "must be a positive number of clips")
        check(isinstance(self.seed, int) and 0 <= self.seed < 2**32, "seed", self.seed, "must be in [0, 2^32 - 1]")
        _check_split(self.split)
        check_clip_shape(self.frames, self.size)


def write_dataset(cfg: DataConfig, chunk: int = 16) -> Path:
    """Write cfg.n clips: OUT/<clip>/frame_<t>.png, mask_<t>.png (coverage as grey), reference.png and
    strip.png (frames side by side, the reference last); OUT/metadata.jsonl, one line per clip (its
    folder, caption, identity, split, motion, exact positions/scales/angles, background, reference).
    Clips of chunk k are make_batch(batch_rng(cfg.seed, k), chunk, ...). Returns metadata.jsonl's path."""
    from tqdm import tqdm

    from lumenkit.common.fileio import atomic_write_text
    from lumenkit.common.images import write_image
    from lumenkit.common.train_loop import batch_rng

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    width, fw = max(5, len(str(cfg.n - 1))), max(2, len(str(cfg.frames - 1)))
    img = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()  # noqa: E731
    lines = []
    with tqdm(total=cfg.n, desc="video data", unit="clip") as bar:
        for k in range(0, (cfg.n + chunk - 1) // chunk):
            m = min(chunk, cfg.n - k * chunk)
            b = make_batch(batch_rng(cfg.seed, k), m, cfg.split, cfg.frames, cfg.size)
            for j in range(m):
                name = f"{k * chunk + j:0{width}d}"
                folder = out / name
                text = b.captions[j]
                for t in range(cfg.frames):
                    write_image(folder / f"frame_{t:0{fw}d}.png", img(b.videos[j, t]), metadata={"caption": text})
                    write_image(folder / f"mask_{t:0{fw}d}.png", (b.masks[j, t, 0] * 255).round().byte().numpy())
                write_image(folder / "reference.png", img(b.references[j]), metadata={"caption": text})
                strip = torch.cat([*b.videos[j], b.references[j]], dim=2)
                write_image(folder / "strip.png", img(strip), metadata={"caption": text})
                row = b.specs[j].to_json()
                row["reference_shift"] = b.reference_shifts[j].tolist()
                lines.append(json.dumps({"clip": name, **row}))
                bar.update(1)
    meta = out / "metadata.jsonl"
    atomic_write_text(meta, "\n".join(lines) + "\n")
    return meta
