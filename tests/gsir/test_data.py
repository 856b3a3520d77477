"""Scene generator and readers: camera conventions against Mitsuba, layout, GT maps, clear errors."""
import json
import math

import numpy as np
import pytest
import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.gsir import data as D


def _centroid_of_bright_sphere(point, c2w, fov, W, H):
    mi = D._mi()
    scene = mi.load_dict({
        "type": "scene",
        "integrator": {"type": "path", "max_depth": 2},
        "ball": {"type": "sphere", "center": list(map(float, point)), "radius": 0.03,
                 "emitter": {"type": "area", "radiance": {"type": "rgb", "value": 10.0}}},
    })
    img = D.render_rgba(scene, c2w, fov, W, H, spp=64)
    lum = img[..., :3].sum(-1)
    assert lum.max() > 0, "sphere not visible"
    ys, xs = np.mgrid[0:H, 0:W]
    w = lum / lum.sum()
    return np.array([(w * (xs + 0.5)).sum(), (w * (ys + 0.5)).sum()])


@pytest.mark.parametrize("point", [(0.4, -0.3, 0.2), (-0.6, 0.5, -0.4)])
def test_camera_convention_matches_mitsuba(point):
    """A small emitter at a known world point appears in the Mitsuba render exactly where our
    Blender c2w -> OpenCV Camera projection puts it (sub-pixel), for a non-square image."""
    W, H, fov = 96, 64, 0.69
    c2w = D.look_at_blender(np.array([2.5, -3.0, 1.6]), target=np.array([0.1, 0.2, 0.0]))
    got = _centroid_of_bright_sphere(point, c2w, fov, W, H)
    ours = D.project_points(np.array([point]), c2w, fov, W, H)[0]
    assert np.abs(got - ours).max() < 0.25, (got, ours)
    # the rasterizer's Camera built from the same json values projects identically
    cam = D.camera_from_blender(c2w, fov, W, H)
    uv = cam.project(torch.tensor([point], dtype=torch.float32))[0].numpy()
    assert np.abs(uv - ours).max() < 1e-3
    # and agrees with Camera.from_fov (the rasterizer's own NeRF-synthetic constructor)
    from lumenkit.gsir.rasterize import Camera

    cam2 = Camera.from_fov(torch.tensor(c2w), fov, W, H)
    assert torch.allclose(cam2.viewmat, cam.viewmat, atol=1e-5) and torch.allclose(cam2.K, cam.K, atol=1e-4)


def test_envmap_directions_match_mitsuba_envmap():
    """The world direction we attach to an envmap pixel is where Mitsuba looks it up: a scene
    lit only by one bright envmap texel seen through a mirror-free camera ray along that direction."""
    mi = D._mi()
    Hh = 16
    env = np.zeros((Hh, 2 * Hh, 3), np.float32)
    r, c = 5, 9
    env[r, c] = 1.0
    dirs = D.envmap_directions(Hh)
    scene = mi.load_dict({"type": "scene", "integrator": {"type": "path"}, "env": D._env_dict(env)})
    emitter = scene.emitters()[0]
    si = mi.SurfaceInteraction3f()
    for (rr, cc), expect in (((r, c), 1.0), ((r + 3, c), 0.0)):
        d = dirs[rr, cc]
        si.wi = mi.Vector3f(*(-d))  # eval takes the direction pointing away from the emitter
        val = np.array(emitter.eval(si))
        assert (val.max() > 0.5) == (expect > 0.5), (rr, cc, val)


def test_synth_layout_and_ground_truth(tmp_path):
    cfg = D.SynthConfig(resolution=32, n_train=3, n_test=2, spp=4, relight_envmaps=("studio",))
    D.synthesize_scene(tmp_path, cfg, progress=False)
    meta = json.loads((tmp_path / "transforms_test.json").read_text())
    assert math.isclose(meta["camera_angle_x"], cfg.camera_angle_x)
    assert len(meta["frames"]) == 2 and np.asarray(meta["frames"][0]["transform_matrix"]).shape == (4, 4)
    assert (tmp_path / "envmaps" / "sky.hdr").is_file() and (tmp_path / "envmaps" / "studio.hdr").is_file()
    scene = D.read_scene(tmp_path)
    assert len(scene.train) == 3 and len(scene.test) == 2
    v = scene.test[0]
    assert v.image.shape == (3, 32, 32) and set(v.relit_paths) == {"studio"}
    mask = D.load_gt(v, "mask")
    n = D.load_gt(v, "normal")
    depth = D.load_gt(v, "depth")
    alpha = v.alpha[0].numpy()
    assert mask.any() and (~mask).any()
    # mask agrees with the path-traced coverage away from edges
    assert np.mean(mask == (alpha > 0.5)) > 0.9
    # unit normals inside, facing the camera; depth positive inside, 0 outside
    assert np.allclose(np.linalg.norm(n[mask], axis=-1), 1, atol=0.02)
    assert (depth[mask] > 1.0).all() and (depth[~mask] == 0).all()
    # GT depth back-projects onto the object: points lie in the object's bound
    K = D.intrinsics(v.fov_x, 32, 32)
    vm = D.viewmat_from_blender(v.c2w)
    ys, xs = np.nonzero(mask)
    pc = np.stack([(xs + 0.5 - K[0, 2]) / K[0, 0], (ys + 0.5 - K[1, 2]) / K[1, 1], np.ones_like(xs, float)], -1) * depth[ys, xs, None]
    pw = (pc - vm[:3, 3]) @ vm[:3, :3]
    assert np.abs(pw).max() < 1.3
    # normals face the camera
    eye = v.c2w[:3, 3]
    assert ((n[ys, xs] * (eye - pw)).sum(-1) > -1e-3).mean() > 0.98
    rough = D.load_gt(v, "roughness")
    assert rough[mask].min() > 0.1 and rough[~mask].max() == 0


def test_white_background_composite(tmp_path):
    D.synthesize_scene(tmp_path, D.SynthConfig(resolution=16, n_train=1, n_test=1, spp=2, relight_envmaps=()), progress=False)
    black = D.read_scene(tmp_path).train[0]
    white = D.read_scene(tmp_path, white_background=True).train[0]
    bgpix = black.alpha[0] == 0
    assert bgpix.any()
    assert torch.all(black.image[:, bgpix] == 0) and torch.all(white.image[:, bgpix] == 1)


def test_bad_scene_folders(tmp_path):
    with pytest.raises(LumenkitError, match="no such folder"):
        D.read_scene(tmp_path / "nope")
    with pytest.raises(LumenkitError, match="not a NeRF-synthetic"):
        D.read_scene(tmp_path)
    (tmp_path / "transforms_train.json").write_text("{not json")
    with pytest.raises(LumenkitError, match="not valid JSON"):
        D.read_scene(tmp_path)
    (tmp_path / "transforms_train.json").write_text(json.dumps({"frames": []}))
    with pytest.raises(LumenkitError, match="camera_angle_x"):
        D.read_scene(tmp_path)
    (tmp_path / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": [{"file_path": "./train/r_0", "transform_matrix": np.eye(4).tolist()}]}))
    with pytest.raises(LumenkitError, match="does not exist"):
        D.read_scene(tmp_path)
    (tmp_path / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": [{"file_path": "./train/r_0", "transform_matrix": [[1, 0], [0, 1]]}]}))
    with pytest.raises(LumenkitError, match="4x4"):
        D.read_scene(tmp_path)


def test_bad_synth_options(tmp_path):
    with pytest.raises(LumenkitError, match="--object"):
        D.synthesize_scene(tmp_path, D.SynthConfig(object="teapot"), progress=False)
    with pytest.raises(LumenkitError, match="environment map"):
        D.synthesize_scene(tmp_path, D.SynthConfig(relight_envmaps=("mars",)), progress=False)
