"""The procedural "shapes" world: seeded 64x64 RGB images with captions made from their attributes.

Every image is drawn from known attributes (ground truth for every claim the evaluation makes):

- shape       circle | square | triangle | star
- colour      red | green | blue | yellow | purple | orange | cyan | pink   (object colour)
- size        small | large
- position    left | right | top | bottom | centre
- background  white | black | gray

Caption grammar (one object): ``"a {size} {colour} {shape} {where} on a {background} background"``
with ``where`` in {"on the left", "on the right", "at the top", "at the bottom", "in the centre"};
two objects: ``"a small red circle on the left and a large blue star on the right on a white background"``.
:func:`parse_caption` inverts :func:`caption` exactly.

Held-out split: the colour+shape pairs in :data:`HELDOUT_PAIRS` never occur in the ``train`` split;
all combinations containing them form the ``heldout`` split (compositional generalisation).

Images are rendered with OpenCV at 4x supersampling and area-downsampled (anti-aliased edges), with a
small seeded jitter of centre (+-2 px), size (+-8 %) and rotation (+-8 degrees). Pixel values are
sRGB-encoded; tensors returned for training are [B, 3, 64, 64] float32 in [-1, 1].
"""
from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from lumenkit.common.errors import LumenkitError

RESOLUTION = 64
SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 215, 40),
    "purple": (140, 60, 190),
    "orange": (250, 140, 30),
    "cyan": (40, 205, 215),
    "pink": (245, 125, 185),
}
SIZES: dict[str, float] = {"small": 9.0, "large": 16.0}  # circumradius in pixels at 64x64
POSITIONS: dict[str, tuple[float, float]] = {  # object centre (x, y) in pixels at 64x64
    "left": (18.0, 32.0),
    "right": (46.0, 32.0),
    "top": (32.0, 18.0),
    "bottom": (32.0, 46.0),
    "centre": (32.0, 32.0),
}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
# colour+shape pairs never shown in training (one per shape, one per colour)
HELDOUT_PAIRS = frozenset({("red", "star"), ("green", "triangle"), ("blue", "circle"), ("yellow", "square")})

ATTRIBUTE_NAMES = ("shape", "colour", "size", "position", "background")
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
    "background": tuple(BACKGROUNDS),
}
SPLITS = ("train", "heldout", "all")


@dataclass(frozen=True)
class ShapeObject:
    """One object: its shape, colour, size and position names."""

    shape: str
    colour: str
    size: str
    position: str

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {POSITION_PHRASES[self.position]}"


@dataclass(frozen=True)
class Scene:
    """One image: one or two objects on a background. Two objects never share a position."""

    objects: tuple[ShapeObject, ...]
    background: str

    def caption(self) -> str:
        return " and ".join(o.phrase() for o in self.objects) + f" on a {self.background} background"

    @property
    def heldout(self) -> bool:
        """True when any object's colour+shape pair is held out of training."""
        return any((o.colour, o.shape) in HELDOUT_PAIRS for o in self.objects)

    def labels(self) -> dict[str, int]:
        """Class indices of the first object (and background), for the attribute oracle."""
        o = self.objects[0]
        return {
            "shape": SHAPES.index(o.shape),
            "colour": ATTRIBUTE_VALUES["colour"].index(o.colour),
            "size": ATTRIBUTE_VALUES["size"].index(o.size),
            "position": ATTRIBUTE_VALUES["position"].index(o.position),
            "background": ATTRIBUTE_VALUES["background"].index(self.background),
        }

    def to_json(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects], "background": self.background}

    @staticmethod
    def from_json(d: dict) -> "Scene":
        return Scene(tuple(ShapeObject(**o) for o in d["objects"]), d["background"])


def caption(scene: Scene) -> str:
    return scene.caption()


def parse_caption(text: str) -> Scene:
    """Inverse of Scene.caption(); raises LumenkitError on a caption outside the grammar."""
    words = text.strip().lower().split()
    bad = LumenkitError(f"caption {text!r} is not in the shapes grammar ('a small red circle on the left on a white background')")
    if len(words) < 4 or words[-4:-2] != ["on", "a"] or words[-1] != "background" or words[-2] not in BACKGROUNDS:
        raise bad
    background = words[-2]
    body = " ".join(words[:-4])
    objects = []
    for part in body.split(" and "):
        w = part.split()
        if len(w) < 6 or w[0] != "a":
            raise bad
        size, colour, shape, where = w[1], w[2], w[3], " ".join(w[4:])
        pos = next((p for p, ph in POSITION_PHRASES.items() if ph == where), None)
        if size not in SIZES or colour not in COLOURS or shape not in SHAPES or pos is None:
            raise bad
        objects.append(ShapeObject(shape, colour, size, pos))
    if not 1 <= len(objects) <= 2:
        raise bad
    return Scene(tuple(objects), background)


def all_scenes(split: str = "all") -> list[Scene]:
    """Every single-object scene of a split, in a fixed order (train: 840, heldout: 120, all: 960)."""
    if split not in SPLITS:
        raise LumenkitError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    out = []
    for shape, colour, size, pos, bg in itertools.product(SHAPES, COLOURS, SIZES, POSITIONS, BACKGROUNDS):
        s = Scene((ShapeObject(shape, colour, size, pos),), bg)
        if split == "all" or (split == "heldout") == s.heldout:
            out.append(s)
    return out


def caption_vocabulary() -> list[str]:
    """Every word a caption of the grammar can use (for the tokenizer)."""
    words = {"a", "and", "on", "background"}
    for ph in POSITION_PHRASES.values():
        words.update(ph.split())
    for values in ATTRIBUTE_VALUES.values():
        words.update(values)
    return sorted(words)


def sample_scenes(rng: np.random.Generator, n: int, split: str = "train", two_objects: float = 0.0) -> list[Scene]:
    """n random scenes of a split; with probability `two_objects` a scene gets a second object.

    Two-object scenes draw both objects from the split's colour+shape pairs (train: no held-out pair;
    heldout: the first object's pair is held out) at different positions.
    """
    pool = all_scenes(split)
    train_pool = all_scenes("train") if split != "train" else pool
    idx = rng.integers(0, len(pool), size=n)
    scenes = []
    for i in idx:
        s = pool[int(i)]
        if two_objects > 0 and rng.random() < two_objects:
            while True:
                o2 = train_pool[int(rng.integers(0, len(train_pool)))].objects[0]
                if o2.position != s.objects[0].position:
                    break
            s = Scene((s.objects[0], o2), s.background)
        scenes.append(s)
    return scenes


# ------------------------------------------------------------------------------------ rendering
def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Vertices [K, 2] (x, y) of a square/triangle/star with circumradius r, rotated by angle (radians)."""
    if shape == "square":
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        rad = np.full(4, r * 0.92)
    elif shape == "triangle":
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        rad = np.full(3, r * 1.05)
        cy = cy + r * 0.2  # centre the triangle's bounding box
    elif shape == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r * 1.08, r * 0.45)
    else:
        raise LumenkitError(f"unknown shape {shape!r}")
    t = t + angle
    return np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], axis=1)


def render_scene(scene: Scene, rng: np.random.Generator | None = None, resolution: int = RESOLUTION) -> np.ndarray:
    """Draw one scene -> uint8 [H, W, 3] sRGB. `rng` gives the jitter (None: no jitter)."""
    ss = SUPERSAMPLE
    big = resolution * ss
    scale = resolution / RESOLUTION * ss
    canvas = np.empty((big, big, 3), np.uint8)
    canvas[:] = BACKGROUNDS[scene.background]
    import cv2

    shift = 4  # fixed-point sub-pixel bits for cv2 drawing
    for o in scene.objects:
        cx, cy = POSITIONS[o.position]
        r = SIZES[o.size]
        angle = 0.0
        if rng is not None:
            cx += rng.uniform(-2, 2)
            cy += rng.uniform(-2, 2)
            r *= rng.uniform(0.92, 1.08)
            angle = np.deg2rad(rng.uniform(-8, 8))
        colour = tuple(int(c) for c in COLOURS[o.colour])
        if o.shape == "circle":
            centre = (int(round(cx * scale * (1 << shift))), int(round(cy * scale * (1 << shift))))
            cv2.circle(canvas, centre, int(round(r * 0.95 * scale * (1 << shift))), colour, -1, cv2.LINE_AA, shift)
        else:
            pts = np.round(_polygon(o.shape, cx, cy, r, angle) * scale * (1 << shift)).astype(np.int32)
            cv2.fillPoly(canvas, [pts], colour, cv2.LINE_AA, shift)
    return cv2.resize(canvas, (resolution, resolution), interpolation=cv2.INTER_AREA)


def render_batch(scenes: Sequence[Scene], rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw scenes -> uint8 [N, 64, 64, 3] sRGB."""
    if not scenes:
        return np.zeros((0, RESOLUTION, RESOLUTION, 3), np.uint8)
    return np.stack([render_scene(s, rng) for s in scenes])


def to_tensor(images: np.ndarray):
    """uint8 [N, H, W, 3] -> float32 tensor [N, 3, H, W] in [-1, 1]."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x) -> np.ndarray:
    """Tensor [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def labels_tensor(scenes: Sequence[Scene]):
    """Oracle targets: dict attribute -> long tensor [N] of class indices (first object)."""
    import torch

    labs = [s.labels() for s in scenes]
    return {k: torch.tensor([l[k] for l in labs], dtype=torch.long) for k in ATTRIBUTE_NAMES}


@dataclass
class Batch:
    images: "object"  # torch.Tensor [B, 3, 64, 64] in [-1, 1]
    captions: list[str]
    scenes: list[Scene]


def make_batch(rng: np.random.Generator, n: int, split: str = "train", two_objects: float = 0.0) -> Batch:
    """n fresh random (image, caption) pairs of a split, rendered in memory."""
    scenes = sample_scenes(rng, n, split, two_objects)
    return Batch(to_tensor(render_batch(scenes, rng)), [s.caption() for s in scenes], scenes)


def stream(seed: int, batch_size: int, split: str = "train", two_objects: float = 0.0) -> Iterator[Batch]:
    """Endless seeded stream of training batches (no files needed)."""
    rng = np.random.default_rng(seed)
    while True:
        yield make_batch(rng, batch_size, split, two_objects)


def write_dataset(out: str | Path, n: int, seed: int = 0, split: str = "all", two_objects: float = 0.0) -> Path:
    """Write n PNGs (caption in their metadata) plus metadata.jsonl (file, caption, attributes, split).

    Returns the path of metadata.jsonl.
    """
    from tqdm import tqdm

    from lumenkit.common.fileio import atomic_write_text
    from lumenkit.common.images import write_image

    if n <= 0:
        raise LumenkitError(f"--n {n}: must be a positive number of images")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scenes = sample_scenes(rng, n, split, two_objects)
    lines = []
    width = max(5, len(str(n - 1)))
    for i, s in enumerate(tqdm(scenes, desc="shapes data", unit="img")):
        img = render_scene(s, rng)
        name = f"{i:0{width}d}.png"
        write_image(out / name, img, metadata={"caption": s.caption()})
        lines.append(json.dumps({"file_name": name, "text": s.caption(), "split": "heldout" if s.heldout else "train", **s.to_json()}))
    meta = out / "metadata.jsonl"
    atomic_write_text(meta, "\n".join(lines) + "\n")
    return meta
