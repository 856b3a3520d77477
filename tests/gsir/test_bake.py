"""bake.py: the grid, the dilation, the cube rig, Euclidean depth, a bake of a known occluder
against ray casting, and `lumenkit gsir bake` end to end with its bad inputs."""
import math

import pytest
import torch

from lumenkit.cli import main
from lumenkit.common.errors import LumenkitError
from lumenkit.gsir import bake as B
from lumenkit.gsir.volumes import latlong_directions, load_occlusion_volume, recon_occlusion

torch.set_num_threads(1)
BACKEND = "cpu"  # the C++ backend (checked against the reference by test_rasterize*)
Y00 = 0.5 / math.sqrt(math.pi)


def splats(means, scales, opacity):
    n = means.shape[0]
    return {"means": means, "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1), "scales": scales,
            "opacities": torch.full((n,), float(opacity)) if not torch.is_tensor(opacity) else opacity}


def test_valid_grid_mask_marks_the_8_corners():
    mask = B.valid_grid_mask(torch.tensor([[0.1, -0.3, 0.55], [5.0, 5.0, 5.0]]), bound=1.0, res=5)  # spacing 0.5
    expect = {(i, j, k) for i in (2, 3) for j in (1, 2) for k in (3, 4)} | {(4, 4, 4)}  # outside: the clamped corner
    assert {tuple(c) for c in torch.nonzero(mask).tolist()} == expect
    ids = B.consecutive_ids(mask)
    assert sorted(ids[mask].tolist()) == list(range(9)) and (ids[~mask] == -1).all()
    pos = B.grid_positions(ids, 1.0)
    assert pos[0].tolist() == [0.0, -0.5, 0.5] and pos[-1].tolist() == [1.0, 1.0, 1.0]


def test_dilation_fills_holes_from_the_nearest_cells():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(7, 7, 7, generator=g) < 0.04
    ids = B.consecutive_ids(mask)
    filled = B.dilate_ids(ids)
    assert (filled >= 0).all()
    assert torch.equal(filled[mask], ids[mask])  # baked cells keep their own coefficients
    cells = torch.stack(torch.meshgrid(*[torch.arange(7)] * 3, indexing="ij"), -1).reshape(-1, 3)
    sources = torch.nonzero(mask)
    l1 = (cells[:, None] - sources[None]).abs().sum(-1)  # 6-neighbour steps
    got = l1[torch.arange(cells.shape[0]), filled.reshape(-1).long()]
    assert torch.equal(got, l1.min(1).values)  # every cell took the id of a nearest baked cell
    with pytest.raises(LumenkitError, match="no grid point"):
        B.dilate_ids(torch.full((3, 3, 3), -1, dtype=torch.int32))


def test_cube_rig_faces_and_lookup():
    R = B.face_rotations()
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(6, 3, 3), atol=1e-6)
    assert torch.allclose(torch.linalg.det(R), torch.ones(6))
    assert torch.equal(R[:, 2].abs().sum(0), torch.full((3,), 2.0))  # forward axes: +-x, +-y, +-z
    dirs, _ = latlong_directions(32, 64)
    rig = B.cube_rig(16, dirs)
    face, rest = rig.latlong_lookup // 256, rig.latlong_lookup % 256
    row, col = rest // 16, rest % 16
    centres = (torch.stack([col, row], -1).float() + 0.5 - 8) / 8
    camera_rays = torch.cat([centres, torch.ones(centres.shape[0], 1)], -1)
    ray = torch.einsum("pji,pj->pi", R[face], camera_rays)  # R^T (x, y, 1): the texel's world direction
    ray = ray / ray.norm(dim=-1, keepdim=True)
    cos = (ray * dirs.reshape(-1, 3)).sum(-1)
    assert cos.min() > math.cos(math.radians(8.0))  # each lat-long cell reads the texel it falls in (90/16 deg texels)
    assert set(face.tolist()) == set(range(6))


def test_cube_depths_are_euclidean_and_cut_below_half_opacity():
    """A dense opaque wall at x = 0.5 seen from the origin: the +x face's depth is 0.5 x the ray length."""
    g = torch.arange(-1.2, 1.2001, 0.03)
    y, z = torch.meshgrid(g, g, indexing="ij")
    wall = torch.stack([torch.full_like(y, 0.5), y, z], -1).reshape(-1, 3)
    s = splats(wall, torch.tensor([[0.002, 0.03, 0.03]]).repeat(wall.shape[0], 1), 0.99)
    dirs, _ = latlong_directions(16, 32)
    rig = B.cube_rig(32, dirs)
    depth = B.render_cube_depths(B.pack_splats(s), torch.zeros(3), rig, BACKEND)
    inner = depth[0, 4:-4, 4:-4]
    assert torch.allclose(inner, 0.5 * rig.ray_length[4:-4, 4:-4], rtol=0.02)
    assert depth[1].abs().max() == 0  # nothing behind
    one = lambda opacity: B.pack_splats(splats(torch.tensor([[0.5, 0.0, 0.0]]), torch.tensor([[0.002, 2.0, 2.0]]), opacity))  # noqa: E731
    assert B.render_cube_depths(one(0.45), torch.zeros(3), rig, BACKEND).abs().max() == 0  # opacity < 0.5 everywhere: no occluder
    opaque = B.render_cube_depths(one(0.9), torch.zeros(3), rig, BACKEND)[0]
    assert opaque[16, 16] == pytest.approx(0.5 * float(rig.ray_length[16, 16]), rel=1e-4)


# ------------------------------------------------------------------------------ a known occluder
DISC_Z, DISC_R, THR, NEAR = 0.35, 0.5, 0.4, 0.2


def disc_scene():
    """A flat opaque disc (radius 0.5 at z = 0.35, Gaussians 0.015 wide every 0.02) and three faint
    markers (opacity 0.3 < 0.5, nearer than the near plane to their own grid points) that make grid
    points under the disc, away from it and above it valid without occluding anything."""
    g = torch.arange(-DISC_R, DISC_R + 1e-9, 0.02)
    x, y = torch.meshgrid(g, g, indexing="ij")
    inside = x**2 + y**2 <= DISC_R**2
    disc = torch.stack([x[inside], y[inside], torch.full_like(x[inside], DISC_Z)], -1)
    markers = torch.tensor([[0.05, 0.05, 0.05], [0.95, 0.05, 0.05], [0.05, 0.05, 0.65]])
    n, m = disc.shape[0], markers.shape[0]
    scales = torch.cat([torch.tensor([[0.015, 0.015, 0.002]]).repeat(n, 1), torch.full((m, 3), 0.005)])
    return splats(torch.cat([disc, markers]), scales, torch.cat([torch.full((n,), 0.99), torch.full((m,), 0.3)]))


def ray_cast_occluded_sr(p, thr, latlong=32):
    """Occluded solid angle (sr) at p by geometry alone: directions whose ray meets the disc at a
    distance < thr, beyond the near plane of the cube face it falls in."""
    d, sa = latlong_directions(latlong, 2 * latlong, dtype=torch.float64)
    w = d.reshape(-1, 3)
    view_z_per_unit = (w @ B.face_rotations().double()[:, 2].T).amax(1)
    t = (DISC_Z - p[2]) / w[:, 2]
    on_disc = (p[0] + t * w[:, 0]) ** 2 + (p[1] + t * w[:, 1]) ** 2 <= DISC_R**2
    hit = (t > 0) & on_disc & (t * view_z_per_unit > NEAR) & (t < thr)
    return float((sa.reshape(-1) * hit).sum())


@pytest.fixture(scope="module")
def disc_bake():
    return B.bake_occlusion(disc_scene(), bound=1.0, occlu_res=21, occlusion=THR, near=NEAR, face_res=64, latlong_res=32,
                            backend=BACKEND, progress=False)


def coefficients_at(volume, p):
    i = [round((v + volume.bound) / (2 * volume.bound / (volume.res - 1))) for v in p]
    return volume.coefficients[volume.ids[i[0], i[1], i[2]], :, 0]


@pytest.mark.parametrize("p", [(0.0, 0.0, 0.0), (0.1, 0.1, 0.1), (0.0, 0.0, 0.1), (0.0, 0.0, 0.6), (0.1, 0.1, 0.7),
                               (0.9, 0.0, 0.0), (1.0, 0.1, 0.1)])
def test_bake_occludes_where_the_disc_is(disc_bake, p):
    """Occluded solid angle 4 pi - c00 / Y00 within the ray-cast values for thresholds 0.4 -+ 0.05
    (+- 0.05 sr): a splat's depth is that of its centre, so an opaque disc of 0.015-wide Gaussians
    reads up to ~0.04 nearer than the plane at grazing rays). Under the disc the visibility's z
    coefficient is negative, above it positive, away from it the point sees everything."""
    c = coefficients_at(disc_bake.volume, p)
    occluded = 4 * math.pi - float(c[0]) / Y00
    lo, hi = ray_cast_occluded_sr(p, THR - 0.05), ray_cast_occluded_sr(p, THR + 0.05)
    assert lo - 0.05 <= occluded <= hi + 0.05, (p, lo, occluded, hi)
    if p[0] > 0.5:
        assert occluded < 0.05 and abs(float(c[2])) < 0.02
    else:
        assert occluded > 0.5 and (float(c[2]) < -0.2 if p[2] < DISC_Z else float(c[2]) > 0.2)


def test_bake_recon_and_stats(disc_bake):
    st = disc_bake.stats
    assert st["points"] == int((disc_bake.volume.coefficients.shape[0])) and st["renders"] == 6 * st["points"]
    assert st["points_per_s"] > 0 and (disc_bake.volume.ids >= 0).all()
    # each query's shifted point has its in-front corners on baked (not dilated) grid points
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [0.0, 0.0, 0.7], [0.0, 0.0, 0.1]])
    normals = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    vis = recon_occlusion(pts, normals, disc_bake.volume)[:, 0]
    assert vis[0] < 0.5 and vis[2] < 0.5  # facing the disc from below / above
    assert vis[1] > 0.97 and vis[3] > 0.95  # away from it / facing away (the degree-3 series rings a little)


def test_bake_config_checks():
    assert B.BAKE_PRESETS["unbounded"].bound == 16.0 and B.BAKE_PRESETS["unbounded"].occlu_res == 256
    assert B.BAKE_PRESETS["unbounded"].occlusion == 0.4
    for kw, flag in (({"occlu_res": 1}, "--occlu_res 1"), ({"latlong_res": 15}, "--latlong_res 15"), ({"near": 0.3}, "--near 0.3"),
                     ({"bound": 0.0}, "--bound 0.0"), ({"backend": "gpu"}, "--backend 'gpu'")):
        with pytest.raises(LumenkitError, match=flag.replace("(", r"\(")):
            B.BakeConfig(**kw)
    with pytest.raises(LumenkitError, match="no Gaussians"):
        B.bake_occlusion(splats(torch.zeros(0, 3), torch.zeros(0, 3), 0.5), progress=False)


# ------------------------------------------------------------------------------ the CLI
def _run(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A stage-1 checkpoint of 300 Gaussians on a small sphere (no training needed to bake it)."""
    from lumenkit.gsir.config import Stage1Config
    from lumenkit.gsir.gaussians import GaussianModel
    from lumenkit.gsir.train import save_checkpoint

    m = tmp_path_factory.mktemp("gsir_bake") / "model"
    pts = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    pts = 0.5 * pts / pts.norm(dim=-1, keepdim=True)
    g = GaussianModel(3)
    g.create_from_points(pts, torch.rand(300, 3), 1.0)
    save_checkpoint(m / "chkpnt7.pth", g, 7, Stage1Config(iterations=7))
    return m


def test_cli_bake_end_to_end(tiny_model, capsys):
    argv = ["gsir", "bake", "-m", str(tiny_model), "--bound", "1.0", "--occlu_res", "6", "--face_res", "16", "--latlong_res", "16",
            "--occlusion", "0.6", "--backend", BACKEND, "--device", "cpu", "--quiet"]
    assert _run(argv) == 0
    out = capsys.readouterr().out
    assert "points/s" in out and "chkpnt7.pth" in out
    vol = load_occlusion_volume(tiny_model / B.OCCLUSION_FILE)
    assert vol.res == 6 and vol.bound == 1.0 and vol.threshold == 0.6 and vol.coefficients.shape[1:] == (16, 1)
    assert (vol.ids >= 0).all()
    from lumenkit.common.fileio import read_safetensors_metadata

    meta = read_safetensors_metadata(tiny_model / B.OCCLUSION_FILE)
    assert meta["format"] == "lumenkit-gsir-occlusion" and '"occlu_res": 6' in meta["bake_config"]


def test_cli_bake_preset_and_flags():
    import dataclasses

    from lumenkit.cli import build_parser
    from lumenkit.common.config import config_from_args

    args = build_parser().parse_args(["gsir", "bake", "-m", "out", "--preset", "unbounded", "--occlu_res", "64"])
    cfg = config_from_args(B.BakeConfig, args, base=dataclasses.asdict(B.BAKE_PRESETS[args.preset]))
    assert (cfg.bound, cfg.occlu_res, cfg.occlusion) == (16.0, 64, 0.4)


def test_cli_bake_bad_inputs_one_line_exit_2(tiny_model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    cases = [
        (["-m", str(tmp_path / "empty")], "no stage-1 checkpoint"),
        (["-m", str(tmp_path / "never_trained")], "no stage-1 checkpoint"),
        (["-m", str(tmp_path / "empty"), "--checkpoint", str(tmp_path / "corrupt.pth")], "cannot be loaded as a safe checkpoint"),
        (["-m", str(tiny_model), "--occlu_res", "1"], "--occlu_res 1: must be >= 2"),
        (["-m", str(tiny_model), "--occlusion", "0.1"], "--near 0.2: must be below --occlusion 0.1"),
        (["-m", str(tiny_model), "--latlong_res", "15"], "--latlong_res 15"),
        (["-m", str(tiny_model), "--preset", "indoor"], "invalid choice"),
        (["-m", str(tiny_model), "--backend", "cuda", "--device", "cpu"], "--backend cuda"),
    ]
    before = sorted(p.name for p in tiny_model.iterdir())
    for extra, expect in cases:
        code = _run(["gsir", "bake", *extra, "--quiet"])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (extra, err)
        assert expect in lines[0], (extra, lines[0])
    assert sorted(p.name for p in tiny_model.iterdir()) == before
    assert not (tmp_path / "empty" / B.OCCLUSION_FILE).exists()


def test_face_cull_leaves_the_cube_unchanged():
    """Random Gaussians of all sizes around the camera: rendering each face with only the culled
    subset gives the same depth maps as rendering every Gaussian."""
    g = torch.Generator().manual_seed(5)
    n = 3000
    s = splats(torch.rand(n, 3, generator=g) * 2 - 1, torch.exp(torch.rand(n, 3, generator=g) * 3 - 5.5), 0.9)
    s["quats"] = torch.randn(n, 4, generator=g)
    s["opacities"] = torch.rand(n, generator=g) * 0.98 + 0.01
    packed = B.pack_splats(s)
    dirs, _ = latlong_directions(16, 32)
    for face_res in (16, 48):
        rig = B.cube_rig(face_res, dirs)
        for pos, valid in ((torch.zeros(3), 0.0), (torch.tensor([0.3, -0.2, 0.5]), 0.0), (torch.tensor([0.3, -0.2, 0.5]), 0.7)):
            culled = B.render_cube_depths(packed, pos, rig, BACKEND, valid)
            full = B.render_cube_depths(packed, pos, rig, BACKEND, valid, cull=False)
            assert torch.allclose(culled, full, atol=1e-5), (culled - full).abs().max()
            assert B.face_frustum_masks(packed, pos, rig).float().mean() < 0.5
