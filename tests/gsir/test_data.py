"""Scene generator and readers: camera conventions against Mitsuba, layout, GT maps, clear errors."""
import json
import math

import numpy as np
import pytest
import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.gsir import camera as C
from lumenkit.gsir import data as D
from lumenkit.gsir import synth as S
from lumenkit.gsir.camera import Camera


def _centroid_of_bright_sphere(point, c2w, fov, W, H):
    mi = S._mi()
    scene = mi.load_dict({
        "type": "scene",
        "integrator": {"type": "path", "max_depth": 2},
        "ball": {"type": "sphere", "center": list(map(float, point)), "radius": 0.03,
                 "emitter": {"type": "area", "radiance": {"type": "rgb", "value": 10.0}}},
    })
    img = S.render_rgba(scene, c2w, fov, W, H, spp=64)
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
    c2w = C.look_at_blender(np.array([2.5, -3.0, 1.6]), target=np.array([0.1, 0.2, 0.0]))
    got = _centroid_of_bright_sphere(point, c2w, fov, W, H)
    ours = C.project_points(np.array([point]), c2w, fov, W, H)[0]
    assert np.abs(got - ours).max() < 0.25, (got, ours)
    # the rasterizer's Camera built from the same json values projects identically
    cam = Camera.from_fov(c2w, fov, W, H)
    uv = cam.project(torch.tensor([point], dtype=torch.float32))[0].numpy()
    assert np.abs(uv - ours).max() < 1e-3
    f = 0.5 * W / math.tan(0.5 * fov)
    assert torch.allclose(cam.K, torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], dtype=torch.float32))
    # one constructor for arrays and tensors, and the one View.camera uses
    cam2 = Camera.from_fov(torch.tensor(c2w), fov, W, H)
    assert torch.equal(cam2.viewmat, cam.viewmat) and torch.equal(cam2.K, cam.K)


def test_envmap_directions_match_mitsuba_envmap():
    """The world direction we attach to an envmap pixel is where Mitsuba looks it up: a scene
    lit only by one bright envmap texel seen through a mirror-free camera ray along that direction."""
    mi = S._mi()
    Hh = 16
    env = np.zeros((Hh, 2 * Hh, 3), np.float32)
    r, c = 5, 9
    env[r, c] = 1.0
    dirs = D.envmap_directions(Hh)
    scene = mi.load_dict({"type": "scene", "integrator": {"type": "path"}, "env": S._env_dict(env)})
    emitter = scene.emitters()[0]
    si = mi.SurfaceInteraction3f()
    for (rr, cc), expect in (((r, c), 1.0), ((r + 3, c), 0.0)):
        d = dirs[rr, cc]
        si.wi = mi.Vector3f(*(-d))  # eval takes the direction pointing away from the emitter
        val = np.array(emitter.eval(si))
        assert (val.max() > 0.5) == (expect > 0.5), (rr, cc, val)


def test_synth_layout_and_ground_truth(tmp_path):
    cfg = S.SynthConfig(resolution=32, n_train=3, n_test=2, spp=4, relight_envmaps=("studio",))
    S.synthesize_scene(tmp_path, cfg, progress=False)
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
    K = C.intrinsics(v.fov_x, 32, 32)
    vm = C.viewmat_from_blender(v.c2w)
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
    S.synthesize_scene(tmp_path, S.SynthConfig(resolution=16, n_train=1, n_test=1, spp=2, relight_envmaps=()), progress=False)
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
        S.synthesize_scene(tmp_path, S.SynthConfig(object="teapot"), progress=False)
    with pytest.raises(LumenkitError, match="environment map"):
        S.synthesize_scene(tmp_path, S.SynthConfig(relight_envmaps=("mars",)), progress=False)


def _both_layouts(root, n_train=2, n_test=2, size=12):
    """A folder with NeRF transforms_*.json (no GT normals named) and TensoIR train_XXX / test_XXX views
    (test views with normal.png), as the TensoIR-synthetic download has."""
    from lumenkit.common.images import write_image

    rng = np.random.default_rng(0)
    fov = 0.69
    frames = {"train": [], "test": []}
    normals = []
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            c2w = C.look_at_blender(np.array([4.0 * math.cos(i + 0.3 * (split == "test")), 4.0 * math.sin(i), 1.0]))
            rgba = np.concatenate([rng.random((size, size, 3)), np.ones((size, size, 1))], -1)
            write_image(root / split / f"r_{i}.png", rgba)
            frames[split].append({"file_path": f"./{split}/r_{i}", "transform_matrix": c2w.tolist()})
            d = root / f"{split}_{i:03d}"
            write_image(d / "rgba.png", rgba)
            (d / "metadata.json").write_text(json.dumps({"cam_angle_x": fov, "cam_transform_mat": ",".join(map(str, c2w.reshape(-1))),
                                                         "imw": size, "imh": size, "envmap": "sky"}))
            if split == "test":
                n = rng.standard_normal((size, size, 3))
                n /= np.linalg.norm(n, axis=-1, keepdims=True)
                write_image(d / "normal.png", np.concatenate([(n + 1) / 2, np.ones((size, size, 1))], -1), bit_depth=16)
                normals.append(n)
    for split in frames:
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": fov, "frames": frames[split]}))
    return normals


def test_layout_with_both_nerf_and_tensoir_files(tmp_path, capsys):
    """auto takes the TensoIR layout where only its test views carry GT normals; --layout forces one;
    `gsir eval normal` then finds the normals (it failed with 'carry no GT normal maps' before)."""
    from lumenkit.cli import main
    from lumenkit.common.images import write_image

    root = tmp_path / "scene"
    normals = _both_layouts(root)
    auto = D.read_scene(root)
    assert auto.layout == "tensoir" and "only the TensoIR test views carry GT normals" in auto.layout_note
    assert [v.name for v in auto.test] == ["test_000", "test_001"] and all("normal" in v.gt_paths for v in auto.test)
    np.testing.assert_allclose(D.load_gt(auto.test[1], "normal"), normals[1], atol=1e-4)
    nerf = D.read_scene(root, layout="nerf")
    assert nerf.layout == "nerf" and len(nerf.test) == 2 and not any("normal" in v.gt_paths for v in nerf.test)
    # the two layouts describe the same cameras
    torch.testing.assert_close(nerf.train[1].camera().viewmat, auto.train[1].camera().viewmat)
    # eval normal on renders whose normals are the GT: 0 degrees
    renders = tmp_path / "renders"
    for i, n in enumerate(normals):
        write_image(renders / "normal" / f"{i:05d}.png", (n + 1) / 2, bit_depth=16)
    model = tmp_path / "model"

    def run(*extra):
        with pytest.raises(SystemExit) as e:
            main(["gsir", "eval", "normal", "-m", str(model), "-s", str(root), "--output_dir", str(renders), *extra])
        return e.value.code

    assert run() == 0
    assert "tensoir layout" in capsys.readouterr().out
    assert json.loads((model / "results_normal.json").read_text())["mae_masked_deg"] < 0.05
    assert run("--layout", "nerf") == 2
    assert "nerf layout's test views carry no GT normal maps" in capsys.readouterr().err
    with pytest.raises(LumenkitError, match="--layout tensoir"):
        D.read_scene(tmp_path / "renders", layout="tensoir")


def test_envmap_from_a_file_renders_as_the_procedural_map(tmp_path):
    """`--envmap FILE`: the procedural sky written with write_hdr (.exr, float32: the same radiance) and passed
    by path renders the same training and test images as `--envmap sky`; so does the sky at twice the size
    with each pixel repeated 2x2, which INTER_AREA averages back to the same map exactly. A .hdr relight map is
    written to envmaps/<stem>.hdr as read and names the relit views; scene.json names every map by its name."""
    from lumenkit.common.images import read_hdr, read_image, write_hdr

    kw = dict(resolution=16, n_train=1, n_test=1, spp=4, env_resolution=16, relight_envmaps=())
    S.synthesize_scene(tmp_path / "ref", S.SynthConfig(**kw), progress=False)
    sky = S.make_envmap("sky", 16, 0)
    same = write_hdr(tmp_path / "maps" / "sky.exr", sky)
    big = write_hdr(tmp_path / "maps" / "big.exr", np.repeat(np.repeat(sky, 2, 0), 2, 1))
    rgb = np.array([2.0, 1.0, 0.5], np.float32)  # exact in RGBE; a constant map resamples to the same constant
    other = write_hdr(tmp_path / "maps" / "mine.hdr", np.broadcast_to(rgb, (8, 16, 3)))
    for envmap in (same, big):
        out = tmp_path / envmap.stem
        S.synthesize_scene(out, S.SynthConfig(**{**kw, "envmap": str(envmap), "relight_envmaps": (str(other),)}), progress=False)
        for f in ("train/r_000.png", "test/r_000.png", "test/r_000_normal.png"):
            assert (out / f).read_bytes() == (tmp_path / "ref" / f).read_bytes(), (envmap.name, f)
        np.testing.assert_array_equal(read_hdr(out / "envmaps" / f"{envmap.stem}.hdr"), read_hdr(tmp_path / "ref" / "envmaps" / "sky.hdr"))
        np.testing.assert_array_equal(read_hdr(out / "envmaps" / "mine.hdr"), np.broadcast_to(rgb, (16, 32, 3)))  # 8 px -> env_resolution
        meta = json.loads((out / "scene.json").read_text())
        assert (meta["envmap"], meta["relight_envmaps"]) == (envmap.stem, ["mine"])
        assert meta["envmap_files"] == {envmap.stem: str(envmap.resolve()), "mine": str(other.resolve())}
        v = D.read_scene(out).test[0]
        assert set(v.relit_paths) == {"mine"} and read_image(out / "test" / "r_000_rgba_mine.png").shape == (16, 16, 4)


def test_envmap_file_errors(tmp_path):
    from lumenkit.common.config import ConfigError
    from lumenkit.common.images import write_hdr

    with pytest.raises(ConfigError, match=r"^--envmap '.*nope\.hdr': no such file$"):
        S.SynthConfig(envmap=str(tmp_path / "nope.hdr"))
    (tmp_path / "map.png").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"^--envmap '.*map\.png': unknown environment map; expected one of sky, .* or a lat-long .hdr/.exr file"):
        S.SynthConfig(envmap=str(tmp_path / "map.png"))
    with pytest.raises(ConfigError, match=r"^--relight '.*gone\.exr': no such file"):
        S.SynthConfig(relight_envmaps=("studio", str(tmp_path / "gone.exr")))
    a = write_hdr(tmp_path / "a" / "sunset.hdr", S.make_envmap("sky", 8))
    with pytest.raises(ConfigError, match=r"^--relight 'sunset': named 'sunset' like '.*sunset\.hdr'"):
        S.SynthConfig(envmap=str(a), relight_envmaps=("sunset",))
    assert S.SynthConfig(envmap=str(a), relight_envmaps=(str(a), "studio")).envmap == str(a)  # the same file twice is one map
    # a map with NaN is refused before anything is written
    env = S.make_envmap("sky", 8)
    env[2, 3, 1] = np.nan
    cfg = S.SynthConfig(resolution=8, n_train=1, n_test=1, spp=1, envmap=str(write_hdr(tmp_path / "nan.exr", env)), relight_envmaps=())
    with pytest.raises(LumenkitError, match=r"nan\.exr: 1 of 128 pixels are not finite radiance >= 0 \(1 NaN\)"):
        S.synthesize_scene(tmp_path / "out", cfg, progress=False)
    assert not (tmp_path / "out").exists()
