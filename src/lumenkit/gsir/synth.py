"""Ground-truth scenes rendered with Mitsuba 3 (`lumenkit gsir synth`); the only module that imports mitsuba.

Procedural objects of primitives with textured albedo / roughness / metallic (`make_object`) under
procedural HDR environment maps (`make_envmap`) or a user's lat-long .hdr/.exr maps (`load_envmap`), path traced (`render_rgba`), with exact ground-truth
maps from an AOV pass at the pixel centres (`gt_maps`). Conventions (cameras, envmap directions,
depth scale) are data.py's, which reads what this writes. mitsuba is the optional extra
``lumenkit[synth]``.

Layout written by `synthesize_scene`, NeRF-synthetic style::

    DIR/transforms_train.json, transforms_test.json   camera_angle_x, frames[{file_path, transform_matrix}]
    DIR/train/r_000.png ...                           RGBA, rendered under the training envmap
    DIR/test/r_000.png                                RGBA
    DIR/test/r_000_albedo.png       sRGB-encoded base colour, alpha = mask
    DIR/test/r_000_normal.png       world-space normal as (n + 1) / 2, alpha = mask
    DIR/test/r_000_depth.png        16-bit z-depth (camera axis), metadata depth_scale (units/step)
    DIR/test/r_000_mask.png         object mask
    DIR/test/r_000_roughness.png    linear roughness in [0, 1]; _metallic.png likewise
    DIR/test/r_000_rgba_<env>.png   the same view relit under environment map <env>
    DIR/envmaps/<env>.hdr           every environment map used (a file's map named by its stem)
    DIR/scene.json                  generator settings (object, envmaps by name, envmap_files, seed, spp, bound)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lumenkit.common.errors import LumenkitError
from lumenkit.common.fileio import atomic_write_json
from lumenkit.gsir.camera import look_at_blender
from lumenkit.gsir.config import ENVMAPS, OBJECTS, SynthConfig, envmap_name
from lumenkit.gsir.data import DEPTH_SCALE, ENV_TO_WORLD, GT_KEYS, envmap_directions

__all__ = ["AOV_SPEC", "ENVMAPS", "OBJECTS", "Part", "SynthConfig", "build_scene", "gt_maps", "load_envmap", "make_envmap", "make_object", "orbit_poses",
           "render_aov", "render_rgba", "scene_poses", "synthesize_scene"]

BLENDER_TO_MITSUBA = np.diag([-1.0, 1.0, -1.0, 1.0])  # c2w_gl @ this = Mitsuba sensor to_world


# ====================================================================================== cameras
def orbit_poses(n: int, radius: float, rng: np.random.Generator, elev_range=(-15.0, 70.0), spiral: bool = False) -> list[np.ndarray]:
    """n camera poses on a sphere around the origin: random (train) or a rising spiral (test)."""
    poses = []
    for i in range(n):
        if spiral:
            az = 2 * math.pi * (i / max(n, 1)) * 2.0 + 0.3
            el = math.radians(elev_range[0] + (elev_range[1] - elev_range[0]) * (0.5 - 0.5 * math.cos(2 * math.pi * i / max(n, 1))))
        else:
            az = rng.uniform(0, 2 * math.pi)
            s = rng.uniform(math.sin(math.radians(elev_range[0])), math.sin(math.radians(elev_range[1])))
            el = math.asin(s)
        eye = radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        poses.append(look_at_blender(eye))
    return poses


def scene_poses(cfg) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(train, test) camera-to-world poses (OpenGL/Blender convention) of a synthesized scene: random on
    the sphere for training, a rising spiral for testing; seeded by cfg.seed (a SynthConfig)."""
    rng = np.random.default_rng(cfg.seed)
    train = orbit_poses(cfg.n_train, cfg.radius, rng)
    return train, orbit_poses(cfg.n_test, cfg.radius, rng, elev_range=(0.0, 60.0), spiral=True)


# ====================================================================================== env maps
def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def make_envmap(name: str, height: int = 64, seed: int = 0) -> np.ndarray:
    """Procedural HDR environment map [H, 2H, 3] linear radiance.

    sky: blue gradient + warm sun; sunset: orange horizon, low red sun; studio: dark room with three
    coloured area lights; dusk: purple gradient + cool moon; overcast: soft grey dome, no sun.
    """
    if name not in ENVMAPS:
        raise LumenkitError(f"environment map {name!r}: expected one of {', '.join(ENVMAPS)}")
    rng = np.random.default_rng(seed + ENVMAPS.index(name) * 1009)
    d = envmap_directions(height)
    z = d[..., 2:3]
    up_t = np.clip(z, 0, 1)
    ground = np.array([0.18, 0.16, 0.14])

    def grad(horizon, zenith, gnd=ground, power=0.6):
        sky = np.asarray(horizon) * (1 - up_t**power) + np.asarray(zenith) * up_t**power
        return np.where(z >= 0, sky, np.asarray(gnd) * (1 - 0.5 * np.clip(-z, 0, 1)))

    def disk(direction, radius_deg, rgb, soft=1.0):
        c = np.cos(np.radians(radius_deg))
        cosang = d @ _unit(direction)
        w = np.clip((cosang - c) / (1 - c) * 4 * soft, 0, 1)
        return w[..., None] * np.asarray(rgb)

    def area(direction, half_deg, rgb):
        # a soft square-ish patch around `direction`
        cosang = d @ _unit(direction)
        w = 1.0 / (1.0 + np.exp(np.clip(-(cosang - np.cos(np.radians(half_deg))) * 400.0, -50, 50)))
        return w[..., None] * np.asarray(rgb)

    az = rng.uniform(0, 2 * np.pi)
    if name == "sky":
        env = grad([0.9, 0.95, 1.0], [0.25, 0.45, 0.9]) + disk([np.cos(az), np.sin(az), 1.2], 4.0, [30.0, 27.0, 22.0])
    elif name == "sunset":
        env = grad([1.4, 0.6, 0.25], [0.2, 0.25, 0.5], [0.1, 0.07, 0.06], power=0.35) + disk([np.cos(az), np.sin(az), 0.15], 5.0, [25.0, 9.0, 3.0])
    elif name == "studio":
        env = grad([0.05, 0.05, 0.05], [0.08, 0.08, 0.08], [0.03, 0.03, 0.03])
        for k, rgb in enumerate(([6.0, 1.5, 1.2], [1.2, 5.0, 1.5], [1.5, 2.0, 7.0])):
            a = az + k * 2 * np.pi / 3
            env = env + area([np.cos(a), np.sin(a), 0.6 + 0.3 * k], 14.0, rgb)
    elif name == "dusk":
        env = grad([0.5, 0.3, 0.55], [0.06, 0.05, 0.2], [0.05, 0.04, 0.06]) + disk([np.cos(az), np.sin(az), 0.8], 5.0, [6.0, 8.0, 12.0])
    else:  # overcast
        env = grad([1.0, 1.0, 1.0], [0.7, 0.72, 0.75], [0.3, 0.3, 0.3], power=1.0)
    return env.astype(np.float32)


def load_envmap(envmap: str, height: int, seed: int = 0) -> np.ndarray:
    """[height, 2 height, 3] linear radiance: the procedural map of that name (make_envmap), or a lat-long
    .hdr/.exr file (read_hdr: finite, >= 0, 2:1) resampled with cv2.INTER_AREA when its height differs."""
    if envmap in ENVMAPS:
        return make_envmap(envmap, height, seed)
    from lumenkit.common.images import read_hdr

    env = read_hdr(envmap, latlong=True)
    if env.shape[0] != height:
        import cv2

        env = cv2.resize(env, (2 * height, height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(env, dtype=np.float32)


# ====================================================================================== objects
def _texture(kind: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A procedural albedo texture [size, size, 3] in linear RGB (0.05..0.9)."""
    c1, c2 = rng.uniform(0.1, 0.85, 3), rng.uniform(0.1, 0.85, 3)
    y, x = np.mgrid[0:size, 0:size] / size
    if kind == "checker":
        m = ((np.floor(x * 8) + np.floor(y * 8)) % 2)[..., None]
    elif kind == "stripes":
        m = (0.5 + 0.5 * np.sin(2 * np.pi * 6 * (x + 0.3 * y)))[..., None]
    else:  # blobs: smooth random field
        f = np.zeros((size, size))
        for _ in range(6):
            cx, cy, s = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.2)
            f += np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s)))
        m = np.clip(f / f.max(), 0, 1)[..., None]
    return (c1 * (1 - m) + c2 * m).astype(np.float32)


@dataclass
class Part:
    """One primitive of a procedural object: a Mitsuba shape with a principled material."""

    shape: str  # sphere | cube | cylinder | disk | rectangle
    to_world: np.ndarray  # [4, 4]
    albedo: Any  # [3] linear rgb or [h, w, 3] texture
    roughness: float
    metallic: float


def _T(translate=(0, 0, 0), scale=(1, 1, 1), rot_z_deg: float = 0.0, rot_x_deg: float = 0.0) -> np.ndarray:
    s = np.diag([*np.broadcast_to(np.asarray(scale, float), (3,)), 1.0])
    a, b = np.radians(rot_z_deg), np.radians(rot_x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0, 0], [np.sin(a), np.cos(a), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    rx = np.array([[1, 0, 0, 0], [0, np.cos(b), -np.sin(b), 0], [0, np.sin(b), np.cos(b), 0], [0, 0, 0, 1]])
    t = np.eye(4)
    t[:3, 3] = translate
    return t @ rz @ rx @ s


def make_object(name: str, seed: int = 0) -> list[Part]:
    """Procedural object built from primitives, inside [-1.2, 1.2]^3 (z up).

    blocks: an arch of three boxes (a concave tunnel), a glossy metal ball on it and an open cup
    beside it; cup: an open cylinder with a ball inside (strong self-occlusion); spheres: three balls
    of different materials on a striped slab.
    """
    if name not in OBJECTS:
        raise LumenkitError(f"--object {name!r}: expected one of {', '.join(OBJECTS)}")
    rng = np.random.default_rng(seed)
    tex = lambda k: _texture(k, rng)  # noqa: E731
    if name == "blocks":
        return [
            Part("cube", _T((0, 0, -0.75), (1.05, 0.85, 0.12)), tex("stripes"), 0.7, 0.0),  # slab
            Part("cube", _T((-0.45, 0.25, -0.28), (0.16, 0.35, 0.35), rot_z_deg=10), tex("checker"), 0.5, 0.0),  # pillar
            Part("cube", _T((0.45, 0.25, -0.28), (0.16, 0.35, 0.35), rot_z_deg=10), tex("checker"), 0.5, 0.0),  # pillar
            Part("cube", _T((0.0, 0.25, 0.2), (0.66, 0.38, 0.13), rot_z_deg=10), tex("blobs"), 0.35, 0.0),  # lintel
            Part("sphere", _T((0.05, 0.3, 0.63), 0.3), [0.9, 0.7, 0.35], 0.25, 0.9),  # metal ball
            Part("cylinder", _T((0.2, -0.5, -0.63), (0.28, 0.28, 0.5)), tex("blobs"), 0.6, 0.0),  # cup wall
            Part("disk", _T((0.2, -0.5, -0.62), 0.28), [0.7, 0.2, 0.15], 0.6, 0.0),  # cup bottom
        ]
    if name == "cup":
        return [
            Part("cylinder", _T((0, 0, -0.7), (0.7, 0.7, 1.2)), tex("checker"), 0.45, 0.0),
            Part("disk", _T((0, 0, -0.69), 0.7), tex("stripes"), 0.6, 0.0),
            Part("sphere", _T((0.15, 0.1, -0.35), 0.33), [0.8, 0.8, 0.85], 0.2, 1.0),
            Part("cube", _T((0, 0, -0.8), (0.9, 0.9, 0.1)), tex("blobs"), 0.8, 0.0),
        ]
    return [
        Part("cube", _T((0, 0, -0.7), (1.1, 1.1, 0.1)), tex("stripes"), 0.8, 0.0),
        Part("sphere", _T((-0.5, -0.3, -0.25), 0.35), tex("checker"), 0.5, 0.0),
        Part("sphere", _T((0.45, -0.2, -0.25), 0.35), [0.95, 0.93, 0.88], 0.15, 1.0),
        Part("sphere", _T((0.0, 0.5, -0.2), 0.4), tex("blobs"), 0.3, 0.3),
    ]


# ============================================================================== Mitsuba rendering
def _mi():
    import mitsuba as mi

    if mi.variant() != "scalar_rgb":
        mi.set_variant("scalar_rgb")
    return mi


def _shape_dicts(parts: list[Part], material_pass: bool = False) -> dict:
    """Mitsuba shape dicts. material_pass: base_color := (roughness, metallic, 0) for the AOV pass."""
    mi = _mi()
    out = {}
    for i, p in enumerate(parts):
        if material_pass:
            color = {"type": "rgb", "value": [p.roughness, p.metallic, 0.0]}
        elif np.ndim(p.albedo) == 3:
            color = {"type": "bitmap", "bitmap": mi.Bitmap(np.ascontiguousarray(p.albedo, dtype=np.float32)), "raw": True}
        else:
            color = {"type": "rgb", "value": list(map(float, p.albedo))}
        bsdf = {"type": "principled", "base_color": color, "roughness": float(p.roughness), "metallic": float(p.metallic)}
        out[f"part{i:02d}"] = {
            "type": p.shape,
            "to_world": mi.ScalarTransform4f(p.to_world.tolist()),
            "bsdf": {"type": "twosided", "bsdf": bsdf},
        }
    return out


def _env_dict(env: np.ndarray) -> dict:
    mi = _mi()
    m = np.eye(4)
    m[:3, :3] = ENV_TO_WORLD
    return {"type": "envmap", "bitmap": mi.Bitmap(np.ascontiguousarray(env, dtype=np.float32)), "to_world": mi.ScalarTransform4f(m.tolist())}


def _sensor(c2w_gl: np.ndarray, fov_x: float, width: int, height: int, spp: int, aov: bool) -> dict:
    mi = _mi()
    to_world = np.asarray(c2w_gl, float) @ BLENDER_TO_MITSUBA
    sampler = {"type": "stratified", "sample_count": 1, "jitter": False} if aov else {"type": "independent", "sample_count": int(spp)}
    film = {"type": "hdrfilm", "width": int(width), "height": int(height), "pixel_format": "rgba"}
    if aov:
        film["rfilter"] = {"type": "box"}
    else:
        film["rfilter"] = {"type": "gaussian"}
    return {
        "type": "perspective",
        "fov": math.degrees(fov_x),
        "fov_axis": "x",
        "near_clip": 0.01,
        "far_clip": 100.0,
        "to_world": mi.ScalarTransform4f(to_world.tolist()),
        "film": film,
        "sampler": sampler,
    }


def build_scene(parts: list[Part], env: np.ndarray | None, *, max_depth: int = 8, aovs: str | None = None, material_pass: bool = False, extra: dict | None = None):
    """A Mitsuba scene (path tracer with hidden emitters, or the AOV integrator) without a sensor."""
    mi = _mi()
    d: dict[str, Any] = {"type": "scene"}
    d["integrator"] = {"type": "aov", "aovs": aovs} if aovs else {"type": "path", "max_depth": int(max_depth), "hide_emitters": True}
    d.update(_shape_dicts(parts, material_pass))
    if env is not None:
        d["env"] = _env_dict(env)
    if extra:
        d.update(extra)
    return mi.load_dict(d)


def render_rgba(scene, c2w_gl, fov_x: float, width: int, height: int, spp: int, seed: int = 0) -> np.ndarray:
    """Path-traced linear RGBA [H, W, 4] (premultiplied by coverage, as Mitsuba develops it)."""
    mi = _mi()
    sensor = mi.load_dict(_sensor(c2w_gl, fov_x, width, height, spp, aov=False))
    return np.array(mi.render(scene, sensor=sensor, seed=int(seed)), dtype=np.float32)


def render_aov(scene, c2w_gl, fov_x: float, width: int, height: int) -> np.ndarray:
    """One ray through each pixel centre; channels as the scene's AOV integrator lists them."""
    mi = _mi()
    sensor = mi.load_dict(_sensor(c2w_gl, fov_x, width, height, 1, aov=True))
    return np.array(mi.render(scene, sensor=sensor), dtype=np.float32)


AOV_SPEC = "alb:albedo,pos:position,nrm:sh_normal,dd:depth"


def gt_maps(scene_aov, scene_mat, c2w_gl, fov_x: float, width: int, height: int) -> dict[str, np.ndarray]:
    """Ground-truth maps at pixel centres: albedo [H,W,3] linear, normal [H,W,3] world (facing the
    camera, 0 outside), depth [H,W] z-depth along the camera axis, mask [H,W] bool, roughness, metallic."""
    a = render_aov(scene_aov, c2w_gl, fov_x, width, height)
    m = render_aov(scene_mat, c2w_gl, fov_x, width, height)
    alb, pos, nrm, dist = a[..., 0:3], a[..., 3:6], a[..., 6:9], a[..., 9]
    mask = dist > 0
    c2w = np.asarray(c2w_gl, float)
    eye, fwd = c2w[:3, 3], -c2w[:3, 2]
    rel = pos - eye
    depth = np.where(mask, rel @ fwd, 0.0)
    facing = np.sign(np.sum(nrm * -rel, -1, keepdims=True))
    facing[facing == 0] = 1
    nrm = nrm * facing
    nrm = nrm / np.clip(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-8, None)
    nrm[~mask] = 0
    alb[~mask] = 0
    return {
        "albedo": alb,
        "normal": nrm.astype(np.float32),
        "depth": depth.astype(np.float32),
        "mask": mask,
        "roughness": np.where(mask, m[..., 0], 0).astype(np.float32),
        "metallic": np.where(mask, m[..., 1], 0).astype(np.float32),
    }


def rgba_to_png_values(rgba_lin: np.ndarray) -> np.ndarray:
    """Premultiplied linear RGBA -> straight-alpha sRGB RGBA in [0, 1] (what the PNGs store)."""
    from lumenkit.common.images import linear_to_srgb

    a = np.clip(rgba_lin[..., 3:4], 0, 1)
    rgb = np.where(a > 1e-4, rgba_lin[..., :3] / np.clip(a, 1e-4, None), 0.0)
    return np.concatenate([np.clip(linear_to_srgb(np.clip(rgb, 0, None)), 0, 1), a], -1).astype(np.float32)


def _frame(path: str, c2w: np.ndarray, extra: dict | None = None) -> dict:
    f = {"file_path": path, "transform_matrix": np.asarray(c2w).tolist()}
    if extra:
        f.update(extra)
    return f


def synthesize_scene(out: str | Path, cfg: SynthConfig = SynthConfig(), progress: bool = True) -> Path:
    """Render a ground-truth scene (see module docstring for the layout). Returns the folder.

    Path traced with Mitsuba 3 `scalar_rgb` (global illumination, max_depth bounces), seeded. cfg is
    validated when it is built (SynthConfig.__post_init__), before anything is written; the
    transforms_*.json files come last, so an interrupted run leaves no folder that reads as a scene.
    """
    from tqdm import tqdm

    from lumenkit.common.images import write_hdr, write_image

    out = Path(out)
    W = H = int(cfg.resolution)
    fov = cfg.camera_angle_x
    parts = make_object(cfg.object, cfg.seed)
    # every map read (and a user's file checked) before the first write
    envs = {envmap_name(e): load_envmap(e, cfg.env_resolution, cfg.seed) for e in (cfg.envmap, *cfg.relight_envmaps)}
    main_env, relit = envmap_name(cfg.envmap), list(dict.fromkeys(map(envmap_name, cfg.relight_envmaps)))
    out.mkdir(parents=True, exist_ok=True)
    for name, env in envs.items():
        write_hdr(out / "envmaps" / f"{name}.hdr", env)
    train_poses, test_poses = scene_poses(cfg)
    main_scene = build_scene(parts, envs[main_env], max_depth=cfg.max_depth)
    relit_scenes = {n: build_scene(parts, envs[n], max_depth=cfg.max_depth) for n in relit}
    aov_scene = build_scene(parts, None, aovs=AOV_SPEC)
    mat_scene = build_scene(parts, None, aovs="alb:albedo,dd:depth", material_pass=True)
    total = cfg.n_train + cfg.n_test * (1 + len(relit))
    bar = tqdm(total=total, desc=f"synth {cfg.object} {W}px {cfg.spp}spp", unit="img", disable=not progress)
    frames_train = []
    for i, c2w in enumerate(train_poses):
        rel = f"./train/r_{i:03d}"
        img = render_rgba(main_scene, c2w, fov, W, H, cfg.spp, seed=cfg.seed * 100003 + i)
        write_image(out / f"{rel}.png", rgba_to_png_values(img))
        frames_train.append(_frame(rel, c2w))
        bar.update(1)
    frames_test = []
    for i, c2w in enumerate(test_poses):
        rel = f"./test/r_{i:03d}"
        img = render_rgba(main_scene, c2w, fov, W, H, cfg.spp, seed=cfg.seed * 100003 + 50000 + i)
        write_image(out / f"{rel}.png", rgba_to_png_values(img))
        bar.update(1)
        extra: dict[str, Any] = {"envmap": main_env}
        for name, sc in relit_scenes.items():
            img = render_rgba(sc, c2w, fov, W, H, cfg.spp, seed=cfg.seed * 100003 + 70000 + i)
            write_image(out / f"{rel}_rgba_{name}.png", rgba_to_png_values(img))
            bar.update(1)
        _write_gt(out, rel, gt_maps(aov_scene, mat_scene, c2w, fov, W, H))
        extra.update({f"{k}_path": f"{rel}_{k}" for k in GT_KEYS})
        extra["relit_paths"] = {name: f"{rel}_rgba_{name}" for name in relit}
        frames_test.append(_frame(rel, c2w, extra))
    bar.close()
    atomic_write_json(out / "transforms_train.json", {"camera_angle_x": fov, "frames": frames_train})
    atomic_write_json(out / "transforms_test.json", {"camera_angle_x": fov, "frames": frames_test})
    meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}
    meta.update({"envmap": main_env, "relight_envmaps": relit,
                 "envmap_files": {envmap_name(e): str(Path(e).resolve()) for e in (cfg.envmap, *cfg.relight_envmaps) if e not in ENVMAPS}})
    meta.update({"generator": "lumenkit gsir synth (Mitsuba 3 scalar_rgb path tracer)", "bound": 1.5, "env_to_world": ENV_TO_WORLD.tolist(), "depth_scale": DEPTH_SCALE})
    atomic_write_json(out / "scene.json", meta)
    return out


def _write_gt(out: Path, rel: str, gt: dict[str, np.ndarray]) -> None:
    from lumenkit.common.images import linear_to_srgb, write_image

    a = gt["mask"].astype(np.float32)[..., None]
    write_image(out / f"{rel}_albedo.png", np.concatenate([linear_to_srgb(np.clip(gt["albedo"], 0, 1)), a], -1))
    write_image(out / f"{rel}_normal.png", np.concatenate([(gt["normal"] + 1) / 2 * a, a], -1), bit_depth=16)
    depth16 = np.clip(np.round(gt["depth"] / DEPTH_SCALE), 0, 65535).astype(np.uint16)
    write_image(out / f"{rel}_depth.png", depth16[..., None], metadata={"depth_scale": str(DEPTH_SCALE)})
    write_image(out / f"{rel}_mask.png", a)
    write_image(out / f"{rel}_roughness.png", gt["roughness"][..., None])
    write_image(out / f"{rel}_metallic.png", gt["metallic"][..., None])
