"""Bursts in and out: readers for image folders / video files, and the ground-truth burst synthesizer.

Frames are NumPy float32 [H, W, 3] as stored (sRGB-encoded, [0, 1]); the pipeline linearises them.

The synthesizer renders procedural scenes at a high temporal rate (`subframes` per burst interval):
the true long exposure is the mean of all sub-frames in linear light (seen by a steady camera at the
base frame's pose: a tripod for foreground blur, a smooth pan following the subject for background
blur); the burst is every `subframes`-th sub-frame seen by the shaking hand-held camera,
under-exposed by `exposure`, with shot and read noise, clipped to [0, 1] and stored sRGB-encoded.
"""
from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from lumenkit.common.config import check, check_choice, check_range, param, read_json
from lumenkit.common.errors import LumenkitError
from lumenkit.common.fileio import atomic_dir, atomic_write_json
from lumenkit.common.images import linear_to_srgb, list_images, read_image, srgb_to_linear, write_image

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".gif")
SCENE_KINDS = ("objects", "lights", "water", "pan", "shake")
SCENE_MODE = {"objects": "foreground", "lights": "foreground", "water": "foreground", "pan": "background", "shake": "foreground"}


# ---------------------------------------------------------------------------------------- reading
def _check_frames(frames: list[np.ndarray], names: list[str], source: str) -> list[np.ndarray]:
    if len(frames) < 2:
        raise LumenkitError(f"{source}: a burst needs at least 2 frames, found {len(frames)}")
    h, w = frames[0].shape[:2]
    for f, n in zip(frames, names):
        if f.shape[:2] != (h, w):
            raise LumenkitError(f"{n}: frame size {f.shape[1]}x{f.shape[0]} differs from the first frame's {w}x{h}")
    out = []
    for f in frames:
        if f.shape[2] == 1:
            f = np.repeat(f, 3, axis=2)
        out.append(np.ascontiguousarray(f[..., :3], dtype=np.float32))
    return out


def read_video(path: str | Path, max_frames: int | None = None) -> list[np.ndarray]:
    """Frames of a video file (imageio + ffmpeg) as float32 [H, W, 3] sRGB in [0, 1]."""
    import imageio.v3 as iio

    path = Path(path)
    frames = []
    try:
        for fr in iio.imiter(path):
            arr = np.asarray(fr)
            scale = 65535.0 if arr.dtype == np.uint16 else 255.0
            arr = arr.astype(np.float32) / scale
            frames.append(arr[..., None] if arr.ndim == 2 else arr)
            if max_frames and len(frames) >= max_frames:
                break
    except Exception as exc:  # imageio raises many types for bad containers
        first = (str(exc).strip().splitlines() or [""])[0]  # ffmpeg appends its whole stderr
        raise LumenkitError(f"{path}: not a readable video ({type(exc).__name__}: {first})") from exc
    return _check_frames(frames, [f"{path} frame {i}" for i in range(len(frames))], str(path))


def read_burst(path: str | Path, max_frames: int | None = None) -> tuple[list[np.ndarray], list[str]]:
    """A burst from a folder of images (PNG/JPEG/TIFF, 8/16-bit, sorted by name) or a video file.

    Returns (frames, names): frames float32 [H, W, 3] sRGB-encoded in [0, 1]. Raises LumenkitError for a
    missing path, unreadable files, fewer than 2 frames or frames of different sizes.
    """
    path = Path(path)
    if not path.exists():
        raise LumenkitError(f"{path}: no such burst folder or video file")
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise LumenkitError(f"{path}: expected a folder of frames or a video ({', '.join(VIDEO_SUFFIXES)})")
        frames = read_video(path, max_frames)
        return frames, [f"{path.name}#{i}" for i in range(len(frames))]
    files = list_images(path, suffixes=(".png", ".jpg", ".jpeg", ".tif", ".tiff"))
    if max_frames:
        files = files[:max_frames]
    frames = [read_image(f, keep_alpha=False) for f in files]
    return _check_frames(frames, [str(f) for f in files], str(path)), [f.name for f in files]


# ---------------------------------------------------------------------------------------- synthesis
@dataclass
class SynthConfig:
    """A procedural scene (`lumenkit longexp synth`). Sizes in pixels, times in burst intervals (frame i is at t = i)."""

    kind: str = param("objects", "scene kind", choices=SCENE_KINDS)
    width: int = param(320, "frame width (px)")
    height: int = param(240, "frame height (px)")
    frames: int = param(8, "burst frames")
    subframes: int = param(32, "sub-frames per burst interval for the truth (temporal supersampling)")
    exposure: float = param(0.5, "burst under-exposure (linear gain) relative to the truth")
    read_noise: float = param(0.002, "std of additive sensor noise (linear units)")
    shot_noise: float = param(0.0004, "shot-noise variance per unit signal (Poisson-like)")
    shake_px: float = param(2.5, "hand-held shake amplitude (px at this size)")
    shake_deg: float = param(0.4, "hand-held shake rotation amplitude (degrees)")
    seed: int = param(0, "scene and noise seed")
    bit_depth: Literal[8, 16] = param(16, "bit depth of the burst PNGs", flag="bit-depth")

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, SCENE_KINDS)
        for name in ("width", "height"):
            v = getattr(self, name)
            check(isinstance(v, int) and 32 <= v <= 16384, name, v, "must be an integer in [32, 16384]")
        check(isinstance(self.frames, int) and 2 <= self.frames <= 1000, "frames", self.frames, "must be an integer in [2, 1000]")
        check(isinstance(self.subframes, int) and 1 <= self.subframes <= 4096, "subframes", self.subframes, "must be an integer in [1, 4096]")
        check_range("exposure", self.exposure, 0.0, 16.0, lo_open=True)
        for name in ("read_noise", "shot_noise", "shake_px", "shake_deg"):
            check_range(name, getattr(self, name), 0.0)
        check_choice("bit-depth", self.bit_depth, (8, 16))


@dataclass
class SynthBurst:
    """A synthetic burst with its truth. frames: sRGB float [H, W, 3]; truth: linear [H, W, 3] in [0, 1]."""

    frames: list[np.ndarray]
    truth: np.ndarray
    trail_mask: np.ndarray  # bool [H, W]: pixels crossed by moving content in the truth
    static: np.ndarray  # linear [H, W, 3]: the truth without moving content
    params: dict = field(default_factory=dict)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, octaves=(4, 8, 16, 48)) -> np.ndarray:
    """Multi-octave value noise in [0, 1], [H, W]."""
    acc = np.zeros((h, w), np.float32)
    tot = 0.0
    for i, o in enumerate(octaves):
        small = rng.random((max(2, h // o), max(2, w // o))).astype(np.float32)
        acc += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * (0.5**i)
        tot += 0.5**i
    acc /= tot
    return (acc - acc.min()) / max(float(acc.max() - acc.min()), 1e-6)


def _texture(rng: np.random.Generator, h: int, w: int, n_rects: int) -> np.ndarray:
    """Textured background (linear radiance [H, W, 3]): coloured noise plus rectangles with corners."""
    base = np.stack([_smooth_noise(rng, h, w) for _ in range(3)], -1)
    img = 0.08 + 0.5 * (0.6 * base + 0.4 * base.mean(-1, keepdims=True))
    for _ in range(n_rects):
        x0, y0 = rng.integers(0, w - 8), rng.integers(0, h - 8)
        rw, rh = rng.integers(6, max(8, w // 10)), rng.integers(6, max(8, h // 10))
        col = rng.uniform(0.03, 0.7, 3).astype(np.float32)
        img[y0 : y0 + rh, x0 : x0 + rw] = col
    fine = _smooth_noise(rng, h, w, octaves=(2, 3))[..., None]
    return np.clip(img * (0.85 + 0.3 * fine), 0.0, 1.0).astype(np.float32)


def _shake(rng: np.random.Generator, amp: float, n: int = 3) -> dict:
    """Random smooth signal parameters (sum of sinusoids over the burst)."""
    return {"amp": [float(a) for a in rng.normal(0, amp / np.sqrt(n), n)], "freq": [float(f) for f in rng.uniform(0.15, 0.6, n)], "phase": [float(p) for p in rng.uniform(0, 2 * np.pi, n)]}


def _eval_signal(sig: dict, t: float) -> float:
    return float(sum(a * np.sin(2 * np.pi * f * t + p) for a, f, p in zip(sig["amp"], sig["freq"], sig["phase"])))


def _camera_matrix(cfg: SynthConfig, prm: dict, t: float, shake_t: float, follow: bool = False) -> np.ndarray:
    """2x3 affine world -> image at time t (pan path at t, shake at time shake_t).

    follow: the ideal panning camera of the truth also follows the subject's wobble exactly (the
    subject stays where it is in the base frame)."""
    pan = prm["pan_speed"] * t
    dx = _eval_signal(prm["shake_x"], shake_t)
    dy = _eval_signal(prm["shake_y"], shake_t)
    ang = _eval_signal(prm["shake_r"], shake_t)
    cx, cy = cfg.width / 2, cfg.height / 2
    m = cv2.getRotationMatrix2D((cx + prm["margin"] + pan, cy + prm["margin"]), ang, 1.0)
    m[0, 2] += -prm["margin"] - pan + dx
    m[1, 2] += -prm["margin"] + dy
    if follow and prm["pan_speed"] > 0 and prm["objects"]:
        o = prm["objects"][0]
        m[0, 2] -= o["wob"] * (np.sin(o["wf"] * t + o["wp"]) - np.sin(o["wp"]))
        m[1, 2] -= o["wob"] * (np.cos(o["wf"] * t + o["wp"]) - np.cos(o["wp"]))
    return m


def _object_pos(obj: dict, t: float) -> tuple[float, float]:
    """World position of an object at time t: a curved path (quadratic + sinusoid)."""
    x = obj["x0"] + obj["vx"] * t + obj["ax"] * t * t + obj["wob"] * np.sin(obj["wf"] * t + obj["wp"])
    y = obj["y0"] + obj["vy"] * t + obj["ay"] * t * t + obj["wob"] * np.cos(obj["wf"] * t + obj["wp"])
    return float(x), float(y)


def _make_params(cfg: SynthConfig, rng: np.random.Generator) -> dict:
    w, h, T = cfg.width, cfg.height, cfg.frames - 1
    diag = float(np.hypot(w, h))
    prm: dict = {"margin": int(0.1 * max(w, h)) + 8, "pan_speed": 0.0, "objects": [], "water": None}
    prm["shake_x"] = _shake(rng, cfg.shake_px)
    prm["shake_y"] = _shake(rng, cfg.shake_px)
    prm["shake_r"] = _shake(rng, cfg.shake_deg)
    m = prm["margin"]
    kind = cfg.kind
    if kind in ("objects", "lights"):
        n = 3 if kind == "objects" else 4
        for i in range(n):
            length = diag * rng.uniform(0.3, 0.45)  # path length over the burst
            ang = rng.uniform(0, 2 * np.pi)
            vx, vy = length / T * np.cos(ang), length / T * np.sin(ang)
            cx, cy = m + w * rng.uniform(0.3, 0.7), m + h * rng.uniform(0.3, 0.7)
            curv = rng.uniform(0.25, 0.5) * length / T**2 * rng.choice([-1, 1])
            obj = {
                "x0": cx - vx * T / 2, "y0": cy - vy * T / 2, "vx": vx, "vy": vy,
                "ax": -np.sin(ang) * curv, "ay": np.cos(ang) * curv,
                "wob": 0.0, "wf": 0.0, "wp": 0.0,
                "radius": float(rng.uniform(0.045, 0.06) * min(w, h)) if kind == "objects" else float(rng.uniform(0.014, 0.02) * min(w, h)),
                "color": [float(c) for c in (rng.permutation([1.0, rng.uniform(0.5, 0.9), 0.1]) if kind == "objects" else rng.uniform(0.6, 1.0, 3) * rng.uniform(5.0, 8.0))],
                "stripes": float(rng.uniform(0.5, 0.8)) if kind == "objects" else 0.0,
            }
            if kind == "objects" and i > 0:  # strongly curved: circular motion, ~30 degrees per interval
                rad = float(rng.uniform(0.17, 0.22) * min(w, h))
                obj.update(vx=0.0, vy=0.0, ax=0.0, ay=0.0, wob=rad, wf=float(rng.uniform(0.45, 0.6) * rng.choice([-1, 1])), wp=float(rng.uniform(0, 2 * np.pi)),
                           x0=m + w * rng.uniform(0.3, 0.7), y0=m + h * rng.uniform(0.35, 0.65))
            prm["objects"].append({k: (float(v) if isinstance(v, (np.floating, float, int)) else v) for k, v in obj.items()})
    elif kind == "water":
        prm["water"] = {"top": float(h * rng.uniform(0.45, 0.6)) + m, "speed": float(diag * 0.05 * rng.uniform(0.8, 1.2)), "wave": float(rng.uniform(3, 6)), "seed": int(rng.integers(1 << 30))}
    elif kind == "pan":
        prm["pan_speed"] = float(diag * rng.uniform(0.05, 0.07))
        r = 0.14 * min(w, h)
        prm["objects"].append({
            "x0": m + w / 2, "y0": m + h * 0.5, "vx": prm["pan_speed"], "vy": 0.0, "ax": 0.0, "ay": 0.0,
            "wob": float(0.02 * min(w, h)), "wf": 1.3, "wp": float(rng.uniform(0, 6.28)),
            "radius": float(r), "color": [float(c) for c in rng.uniform(0.3, 0.9, 3)], "stripes": 0.3, "pattern": "texture", "tex_seed": int(rng.integers(1 << 30)),
        })
    return prm


@functools.lru_cache(maxsize=8)
def _object_texture(seed: int, size: int) -> np.ndarray:
    """A non-periodic texture [size, size, 3] in [0, 1] with blocks (corners for KLT)."""
    rng = np.random.default_rng(seed)
    t = np.stack([_smooth_noise(rng, size, size, octaves=(3, 6, 12)) for _ in range(3)], -1)
    for _ in range(12):
        x0, y0 = rng.integers(0, size - 4, 2)
        t[y0 : y0 + rng.integers(3, max(4, size // 5)), x0 : x0 + rng.integers(3, max(4, size // 5))] = rng.uniform(0, 1, 3)
    return t.astype(np.float32)


def _draw_objects(img: np.ndarray, cover: np.ndarray, prm: dict, cam: np.ndarray, t: float) -> None:
    """Paint the moving objects (soft-edged striped discs / lights) into img [H, W, 3] in place."""
    h, w = img.shape[:2]
    rot = np.arctan2(cam[1, 0], cam[0, 0])
    for obj in prm["objects"]:
        wx, wy = _object_pos(obj, t)
        px, py = cam @ np.array([wx, wy, 1.0])
        r = obj["radius"]
        x0, x1 = int(max(0, np.floor(px - r - 2))), int(min(w, np.ceil(px + r + 2)))
        y0, y1 = int(max(0, np.floor(py - r - 2))), int(min(h, np.ceil(py + r + 2)))
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xx + 0.5 - px, yy + 0.5 - py
        d = np.sqrt(dx * dx + dy * dy)
        alpha = np.clip(r - d + 0.5, 0.0, 1.0)[..., None]
        col = np.array(obj["color"], np.float32)
        u = dx * np.cos(rot) + dy * np.sin(rot)  # object-local coordinates (rotate with the camera)
        v = -dx * np.sin(rot) + dy * np.cos(rot)
        if obj.get("pattern") == "texture":  # random texture with corners (panning subject)
            tex = _object_texture(int(obj["tex_seed"]), int(np.ceil(2 * r + 4)))
            mx, my = (u + r + 2).astype(np.float32), (v + r + 2).astype(np.float32)
            pat = cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            col = col[None, None] * (0.1 + 1.1 * pat)
        elif obj["stripes"] > 0:  # shaded ball with two spots: no periodic texture (flow is unambiguous)
            shade = 1.0 - 0.55 * np.clip(((u + 0.3 * r) ** 2 + (v + 0.3 * r) ** 2) / (1.4 * r) ** 2, 0, 1)
            spot = np.exp(-((u - 0.35 * r) ** 2 + (v - 0.2 * r) ** 2) / (0.18 * r) ** 2) - 0.8 * np.exp(-((u + 0.3 * r) ** 2 + (v - 0.45 * r) ** 2) / (0.15 * r) ** 2)
            col = np.clip(col[None, None] * shade[..., None] + 0.5 * spot[..., None], 0, None)
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - alpha) + alpha * col
        cover[y0:y1, x0:x1] = np.maximum(cover[y0:y1, x0:x1], alpha[..., 0])


def _render(cfg: SynthConfig, prm: dict, world: np.ndarray, water_tex: np.ndarray | None, t: float, shake_t: float, with_objects: bool = True, follow: bool = False):
    """One sub-frame in linear radiance [H, W, 3] and its moving-content coverage [H, W]."""
    cam = _camera_matrix(cfg, prm, t, shake_t, follow)
    wimg = world
    cover = np.zeros((cfg.height, cfg.width), np.float32)
    if water_tex is not None and with_objects:
        wt = prm["water"]
        hh, ww = world.shape[:2]
        yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
        depth = np.clip((yy - wt["top"]) / (hh - wt["top"]), 0, 1)
        mx = (xx - wt["speed"] * t * (0.6 + 0.8 * depth) + wt["wave"] * np.sin(yy / 9.0 + 1.7 * t)) % ww
        my = yy + 0.5 * wt["wave"] * np.sin(xx / 13.0 - 2.1 * t)
        flow = cv2.remap(water_tex, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        sel = (yy >= wt["top"])[..., None]
        wimg = np.where(sel, flow, world)
        cover_w = cv2.warpAffine(sel[..., 0].astype(np.float32), cam, (cfg.width, cfg.height), flags=cv2.INTER_LINEAR)
        cover = np.maximum(cover, cover_w)
    img = cv2.warpAffine(wimg, cam, (cfg.width, cfg.height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if with_objects:
        _draw_objects(img, cover, prm, cam, t)
    return img, cover


def synthesize(cfg: SynthConfig) -> SynthBurst:
    """Render a burst and its true long exposure (see the module docstring). Seeded by cfg.seed."""
    rng = np.random.default_rng(cfg.seed)
    prm = _make_params(cfg, rng)
    m = prm["margin"]
    ww = cfg.width + 2 * m + int(np.ceil(prm["pan_speed"] * (cfg.frames - 1)))
    hh = cfg.height + 2 * m
    world = _texture(rng, hh, ww, n_rects=max(8, (ww * hh) // 2500))
    if cfg.kind == "lights":
        world = world * 0.12
    elif cfg.kind == "objects":  # muted street-like background, bright moving objects
        world = 0.05 + world * 0.4
    water_tex = None
    if cfg.kind == "water":
        water_tex = np.clip(_texture(rng, hh, ww, 0) * np.array([0.5, 0.8, 1.1], np.float32), 0, 1)
        water_tex = water_tex + 0.6 * np.clip(_smooth_noise(rng, hh, ww, octaves=(2, 4)) - 0.75, 0, None)[..., None]
    n_sub = (cfg.frames - 1) * cfg.subframes + 1
    acc = np.zeros((cfg.height, cfg.width, 3), np.float64)
    cov = np.zeros((cfg.height, cfg.width), np.float32)
    frames = []
    for j in range(n_sub):
        t = j / cfg.subframes
        truth_img, c = _render(cfg, prm, world, water_tex, t, shake_t=0.0, follow=True)
        acc += truth_img
        cov = np.maximum(cov, c)
        if j % cfg.subframes == 0:
            frames.append(_expose(cfg, rng, _render(cfg, prm, world, water_tex, t, shake_t=t)[0]))
    truth = np.clip(acc / n_sub, 0.0, 1.0).astype(np.float32)
    static = np.clip(_render(cfg, prm, world, None, 0.0, 0.0, with_objects=False)[0], 0, 1)
    if cfg.kind == "pan":  # background streaks are the content the blur must produce
        cov = np.ones_like(cov)
    params = {"config": asdict(cfg), "mode": SCENE_MODE[cfg.kind], "scene": prm, "n_subframes": n_sub, "gain": 1.0 / cfg.exposure}
    return SynthBurst(frames=frames, truth=truth, trail_mask=cov > 0.05, static=static, params=params)


def _expose(cfg: SynthConfig, rng: np.random.Generator, radiance: np.ndarray) -> np.ndarray:
    """Linear radiance -> one under-exposed noisy clipped sRGB-encoded burst frame, quantised."""
    sig = radiance * cfg.exposure
    noisy = sig + rng.normal(0, 1, sig.shape).astype(np.float32) * np.sqrt(cfg.read_noise**2 + cfg.shot_noise * np.clip(sig, 0, None))
    enc = linear_to_srgb(np.clip(noisy, 0.0, 1.0).astype(np.float32))
    levels = 255.0 if cfg.bit_depth == 8 else 65535.0
    return (np.round(enc * levels) / levels).astype(np.float32)


def write_synth(burst: SynthBurst, out: str | Path) -> Path:
    """Write out/burst/frame_XXX.png, out/truth.png (16-bit sRGB), out/static.png, out/trail_mask.png, out/scene.json.

    The burst folder is written aside and renamed into place (no stale frames of an earlier, longer burst
    stay behind); a burst folder holding files synth does not write is refused, not replaced."""
    out = Path(out)
    bd = burst.params["config"]["bit_depth"]
    old = out / "burst"
    if old.is_dir():
        foreign = sorted(p.name for p in old.iterdir() if not _FRAME_NAME.fullmatch(p.name))
        if foreign:
            raise LumenkitError(f"{old}: holds files that `longexp synth` did not write ({', '.join(foreign[:3])}); choose another -o")
    with atomic_dir(old) as tmp:
        for i, f in enumerate(burst.frames):
            write_image(tmp / f"frame_{i:03d}.png", f, bit_depth=bd)
    write_image(out / "truth.png", linear_to_srgb(burst.truth), bit_depth=16)
    write_image(out / "static.png", linear_to_srgb(burst.static), bit_depth=16)
    write_image(out / "trail_mask.png", burst.trail_mask.astype(np.float32), bit_depth=8)
    atomic_write_json(out / "scene.json", burst.params, indent=1, default=float)
    return out


_FRAME_NAME = re.compile(r"frame_\d{3,}\.png")


def read_synth(folder: str | Path) -> SynthBurst:
    """Read what write_synth wrote (truth and static back in linear light)."""
    folder = Path(folder)
    if not (folder / "scene.json").is_file():
        raise LumenkitError(f"{folder}: not a synthetic burst folder (no scene.json; make one with `lumenkit longexp synth`)")
    frames, _ = read_burst(folder / "burst")
    params = read_json(folder / "scene.json", what="scene file")
    truth = srgb_to_linear(read_image(folder / "truth.png", keep_alpha=False))
    static = srgb_to_linear(read_image(folder / "static.png", keep_alpha=False))
    mask = read_image(folder / "trail_mask.png")[..., 0] > 0.5
    return SynthBurst(frames=frames, truth=truth, trail_mask=mask, static=static, params=params)
