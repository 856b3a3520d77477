"""CubemapLight and the cubemap helpers against independent truth: the OpenGL face table, exact solid
angles, constant and linear environments, the analytic GGX lobe, Mitsuba's envmap lookup, seam
continuity, and the .hdr reader's round trip and errors."""
import math

import cv2
import numpy as np
import pytest
import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.gsir import light as Lt

torch.set_num_threads(1)
ENV_TO_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # lumenkit.gsir.data's


def _unit(v):
    v = torch.as_tensor(v, dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True)


def _random_dirs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return _unit(torch.randn(n, 3, generator=g, dtype=torch.float64)).float()


def _smooth_env(d):
    """A smooth positive radiance field of direction [..., 3] -> [..., 3]."""
    x, y, z = d.unbind(-1)
    return torch.stack([1.5 + x + 0.5 * y * z, 1.2 + 0.8 * y - 0.3 * x * x, 1.0 + 0.6 * z + 0.4 * x * y], -1)


# ---------------------------------------------------------------------------- face geometry
def test_opengl_face_table():
    """OpenGL spec, cube-map face selection: +x: (sc, tc) = (-rz, -ry) / |rx|; +y: (rx, rz) / |ry|;
    -z: (-rx, -ry) / |rz|; (s, t) = ((sc + 1) / 2, (tc + 1) / 2), t down the rows."""
    dirs = torch.tensor([[1.0, 0.2, -0.5], [0.3, 1.0, -0.4], [0.1, -0.6, -1.0], [-1.0, 0.25, 0.5], [0.5, -1.0, 0.2], [0.2, 0.3, 1.0]])
    face, sc, tc = Lt.dir_to_cube(dirs)
    assert face.tolist() == [0, 2, 5, 1, 3, 4]
    expect = torch.tensor([[0.5, -0.2], [0.3, -0.4], [-0.1, 0.6], [0.5, -0.25], [0.5, -0.2], [0.2, -0.3]])
    assert torch.allclose(torch.stack([sc, tc], -1), expect, atol=1e-6)
    back = Lt.cube_to_dir(face, sc, tc)
    assert torch.allclose(back, dirs / dirs.norm(dim=-1, keepdim=True), atol=1e-6)
    # texel (row 0, column 0) of +x is the corner (1, 1, 1) side: sc = tc = -1
    d = Lt.cube_texel_directions(64)[0, 0, 0]
    assert (d > 0).all() and torch.allclose(d, _unit([1.0, 1.0, 1.0]).float(), atol=0.03)


def test_solid_angles_sum_to_4pi():
    for res in (1, 7, 16, 64):
        omega = Lt.cube_texel_solid_angles(res, dtype=torch.float64)
        assert omega.min() > 0 and abs(omega.sum().item() - 4 * math.pi) < 1e-9
    # one texel covering a whole face: 4 pi / 6; a small centre texel: ~ its area (2 / R)^2
    assert abs(Lt.cube_texel_solid_angles(1)[0, 0, 0].item() - 4 * math.pi / 6) < 1e-6
    assert abs(Lt.cube_texel_solid_angles(512)[0, 256, 256].item() / (2 / 512) ** 2 - 1) < 1e-4


# ---------------------------------------------------------------------------- lookups
def test_lookup_at_texel_centres_returns_texels():
    cube = torch.rand(6, 8, 8, 3)
    assert torch.allclose(Lt.cube_lookup(cube, Lt.cube_texel_directions(8)), cube, atol=1e-5)


def _edge_straddles(eps=1e-4, n=200, seed=1):
    """Pairs of directions just either side of each of the 12 cube edges: ([12 n, 3], [12 n, 3])."""
    g = torch.Generator().manual_seed(seed)
    a, b = [], []
    for i in range(3):
        for j in range(i + 1, 3):
            k = 3 - i - j
            for si in (-1.0, 1.0):
                for sj in (-1.0, 1.0):
                    p = torch.zeros(n, 3)
                    p[:, i], p[:, j] = si, sj
                    p[:, k] = torch.rand(n, generator=g) * 1.96 - 0.98
                    q1, q2 = p.clone(), p.clone()
                    q1[:, i] *= 1 - eps  # onto the face of axis j
                    q2[:, j] *= 1 - eps  # onto the face of axis i
                    a.append(q1), b.append(q2)
    return torch.cat(a), torch.cat(b)


def test_lookup_is_seamless_across_face_edges():
    cube = torch.rand(6, 16, 16, 3)
    a, b = _edge_straddles()
    fa, fb = Lt.dir_to_cube(a)[0], Lt.dir_to_cube(b)[0]
    assert (fa != fb).all()  # the two sides really are on different faces
    gap = (Lt.cube_lookup(cube, a) - Lt.cube_lookup(cube, b)).abs().max()
    assert gap < 5e-3  # measured 1.5e-3 (slope x 1e-4 step); clamping at each face's own edge: 0.95
    corner = _unit([[1.0, 1.0, 1.0 - 1e-5], [1.0, 1.0 - 1e-5, 1.0], [1.0 - 1e-5, 1.0, 1.0]]).float()
    values = Lt.cube_lookup(cube, corner)
    assert (values - values[0]).abs().max() < 5e-3


def test_lookup_of_linear_field_is_close_and_continuous():
    """A smooth field sampled at texel centres is reproduced between them (within the
    bilinear error on the curved grid), including next to edges and corners."""
    res = 32
    field = _smooth_env(Lt.cube_texel_directions(res))
    d = _random_dirs(4000)
    err = (Lt.cube_lookup(field, d) - _smooth_env(d)).abs().max()
    assert err < 1e-2  # measured 6.5e-3 at 32^2 texels, values ~1-2


def test_mip_lookup_is_trilinear_with_bias():
    mips = [torch.full((6, 8, 8, 1), 1.0), torch.full((6, 4, 4, 1), 3.0), torch.full((6, 2, 2, 1), 7.0)]
    d = _random_dirs(5)
    lookup = lambda lvl, bias=0.0: Lt.cube_lookup_mip(mips, d, torch.full((5,), lvl), bias)[:, 0]  # noqa: E731
    assert torch.allclose(lookup(0.0), torch.ones(5))
    assert torch.allclose(lookup(0.5), torch.full((5,), 2.0))
    assert torch.allclose(lookup(1.25), torch.full((5,), 4.0))
    assert torch.allclose(lookup(0.25, bias=1.0), torch.full((5,), 4.0))
    assert torch.allclose(lookup(9.0), torch.full((5,), 7.0)) and torch.allclose(lookup(-1.0), torch.ones(5))


# ---------------------------------------------------------------------------- light
def test_get_mip_formula():
    light = Lt.CubemapLight(64)  # levels 64, 32, 16: L = 3
    r = torch.tensor([0.0, 0.08, 0.29, 0.5, 0.75, 1.0])
    assert torch.allclose(light.get_mip(r), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.5, 2.0]))
    assert Lt.mip_roughness(5) == pytest.approx([0.08, 0.22, 0.36, 0.5, 1.0])
    with pytest.raises(ValueError):
        Lt.CubemapLight(48)


def test_constant_environment_stays_constant_on_every_level():
    light = Lt.CubemapLight(64)
    with torch.no_grad():
        light.base.fill_(0.7)
    light.build_mips()
    assert [m.shape[1] for m in light.specular] == [64, 32, 16] and light.diffuse.shape == (6, 16, 16, 3)
    for mip in light.specular:
        assert (mip - 0.7).abs().max() < 1e-5
    # irradiance: sum of max(n.w, 0) dOmega over 16^2 texels is pi to 1.5e-4 (horizon texels)
    assert (light.diffuse - 0.7).abs().max() < 0.7 * 3e-4
    d = _random_dirs(100)
    assert (light.prefiltered(d, torch.rand(100, 1)) - 0.7).abs().max() < 1e-5
    assert (light.irradiance(d) - 0.7).abs().max() < 0.7 * 3e-4


def test_diffuse_irradiance_of_a_linear_environment():
    """L(w) = 1 + w_y: E(n) = int L max(n.w, 0) dw / pi = 1 + (2 / 3) n_y (closed form).
    Measured max error 1.6e-4 at 16^2 texels."""
    res = 16
    dirs = Lt.cube_texel_directions(res)
    cube = (1.0 + dirs[..., 1:2]).expand(6, res, res, 3)
    expect = 1.0 + 2.0 / 3.0 * dirs[..., 1:2]
    assert (Lt.diffuse_irradiance(cube) - expect).abs().max() < 1e-3


def test_single_texel_light_gives_the_analytic_ggx_lobe():
    """One bright texel w0: the prefiltered value at R is k(w0.R) dOmega(w0) / int_cap k dOmega with
    k = (w.R) D_GGX(R.h) / 4, h = normalize(w + R), for R within the cutoff cone (0 outside).
    The normaliser is integrated here in 1D; the shape is checked over all lobe texels."""
    res, rough = 64, 0.3
    alpha2 = rough**4
    cube = torch.zeros(6, res, res, 3)
    src = (4, 30, 33)  # +z face, near its centre
    cube[src] = 1.0
    out = Lt.prefilter_specular(cube, rough)[..., 0].double()
    dirs = Lt.cube_texel_directions(res, dtype=torch.float64)
    w0 = dirs[src]
    cos_wr = (dirs * w0).sum(-1)
    cos_h = torch.sqrt((1 + cos_wr) / 2)
    kernel = lambda c, ch: c * alpha2 / (math.pi * (ch**2 * (alpha2 - 1) + 1) ** 2) / 4  # noqa: E731
    cos_cut = Lt.ggx_lobe_cutoff(rough)
    theta = np.linspace(0, math.acos(cos_cut), 20001)
    ct = np.cos(theta)
    norm = np.trapezoid(kernel(ct, np.sqrt((1 + ct) / 2)) * 2 * np.pi * np.sin(theta), theta)
    omega = Lt.cube_texel_solid_angles(res, dtype=torch.float64)[src]
    expect = torch.where(cos_wr >= cos_cut, kernel(cos_wr, cos_h) * omega / norm, torch.zeros_like(cos_wr))
    inside = expect > 0
    assert inside.sum() > 300  # a lobe spanning many texels (363)
    assert torch.equal(out > 0, inside)
    rel = (out[inside] - expect[inside]).abs() / expect[inside]
    assert rel.max() < 0.01, rel.max()  # measured 0.3%; D at w.R instead of R.h: 225%


def test_sparse_prefilter_equals_dense_reference_with_gradients():
    """The sparse, face-symmetric filter against the plain dense sum over all texel pairs (res 16,
    every face and edge), forward and backward."""
    res, rough = 16, 0.5
    dirs = Lt.cube_texel_directions(res).reshape(-1, 3)
    omega = Lt.cube_texel_solid_angles(res).reshape(-1)
    cos = dirs @ dirs.T
    k = Lt.ggx_lobe_weight(cos, rough**2) * (cos >= Lt.ggx_lobe_cutoff(rough))
    dense = (k * omega) / (k @ omega)[:, None]
    x = torch.rand(6 * res * res, 3, requires_grad=True)
    g = torch.rand(6 * res * res, 3)
    (Lt.prefilter_specular(x.reshape(6, res, res, 3), rough).reshape(-1, 3) * g).sum().backward()
    sparse_grad, x.grad = x.grad.clone(), None
    ((dense @ x) * g).sum().backward()
    assert torch.allclose(Lt.prefilter_specular(x.detach().reshape(6, res, res, 3), rough).reshape(-1, 3), dense @ x.detach(), atol=1e-5)
    assert torch.allclose(sparse_grad, x.grad, atol=1e-5)


def test_light_is_learnable_and_clamped():
    light = Lt.CubemapLight(32)
    light.build_mips()
    d = _random_dirs(64)
    loss = light.prefiltered(d, torch.rand(64)).sum() + light.irradiance(d).sum()
    loss.backward()
    assert light.base.grad is not None and light.base.grad.abs().sum() > 0
    with torch.no_grad():
        light.base.sub_(1.0)
    light.clamp_()
    assert light.base.min() >= 0
    assert set(light.state_dict()) == {"base"}


# ---------------------------------------------------------------------------- lat-long
def test_latlong_lookup_matches_mitsuba_envmap():
    """Our lat-long parameterisation (and ENV_TO_WORLD rotation) is Mitsuba 3's envmap lookup."""
    mi = pytest.importorskip("mitsuba")
    mi.set_variant("scalar_rgb")
    rng = np.random.default_rng(0)
    env = rng.uniform(0.1, 1.0, (8, 16, 3)).astype(np.float32)
    m = np.eye(4)
    m[:3, :3] = ENV_TO_WORLD
    emitter = mi.load_dict({"type": "envmap", "bitmap": mi.Bitmap(env), "to_world": mi.ScalarTransform4f(m.tolist())})
    dirs = _random_dirs(300, seed=3)
    ours = Lt.sample_latlong(torch.from_numpy(env), dirs, to_world=ENV_TO_WORLD)
    si = mi.SurfaceInteraction3f()
    for d, value in zip(dirs.numpy(), ours.numpy()):
        si.wi = mi.Vector3f(*(-d.astype(float)))  # eval takes the direction pointing away from the emitter
        assert np.allclose(np.array(emitter.eval(si)), value, atol=1e-4)


def _reference_latlong_sample(img: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Bilinear lat-long sample written independently (scipy map_coordinates, wrapped in longitude),
    Mitsuba's mapping: column = u W - 0.5 with u = atan2(x, -z) / 2 pi, row = acos(y) / pi (H - 1)."""
    from scipy.ndimage import map_coordinates

    h, w, _ = img.shape
    u = np.mod(np.arctan2(dirs[:, 0], -dirs[:, 2]) / (2 * np.pi), 1.0)
    v = np.arccos(np.clip(dirs[:, 1], -1, 1)) / np.pi
    padded = np.concatenate([img[:, -1:], img, img[:, :1]], axis=1).astype(np.float64)
    coords = np.stack([v * (h - 1), u * w - 0.5 + 1])
    return np.stack([map_coordinates(padded[..., c], coords, order=1, mode="nearest") for c in range(img.shape[2])], -1)


def test_latlong_to_cubemap_against_direct_latlong_lookup():
    """A smooth map (64 x 128) converted to a 64^2 cubemap and looked up at random directions vs
    sampling the map directly: measured max error 3.1e-3 (values ~1-2; two bilinear steps)."""
    h = 64
    latlong = _smooth_env(Lt.latlong_directions(h, dtype=torch.float64)).float()
    cube = Lt.latlong_to_cubemap(latlong, 64)
    assert cube.shape == (6, 64, 64, 3)
    dirs = _random_dirs(5000, seed=5)
    direct = _reference_latlong_sample(latlong.numpy(), dirs.numpy())
    assert np.abs(Lt.sample_latlong(latlong, dirs).numpy() - direct).max() < 1e-5
    assert np.abs(Lt.cube_lookup(cube, dirs).numpy() - direct).max() < 1e-2
    # and with a rotation: the world direction to_world @ local sees the map's local direction
    rotated = Lt.latlong_to_cubemap(latlong, 64, to_world=ENV_TO_WORLD)
    world = dirs @ torch.from_numpy(ENV_TO_WORLD.T).float()
    assert torch.allclose(Lt.cube_lookup(rotated, world), Lt.cube_lookup(cube, dirs), atol=1e-2)


def test_cubemap_to_latlong_round_trip():
    cube = _smooth_env(Lt.cube_texel_directions(32))
    latlong = Lt.cubemap_to_latlong(cube)
    assert latlong.shape == (512, 1024, 3)
    expect = _smooth_env(Lt.latlong_directions(512))
    assert (latlong - expect).abs().max() < 1e-2
    back = Lt.latlong_to_cubemap(latlong, 32)
    assert (back - cube).abs().max() < 1e-2


# ---------------------------------------------------------------------------- .hdr reader
def test_hdr_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.uniform(0.01, 50.0, (6, 10, 3)).astype(np.float32)
    img[0, 0] = [5.0, 0.5, 0.05]  # distinct channels: catches a BGR/RGB swap
    path = tmp_path / "env.hdr"
    assert cv2.imwrite(str(path), img[..., ::-1].copy())  # cv2 writes BGR
    read = Lt.read_radiance_hdr(path)
    assert read.dtype == np.float32 and read.shape == (6, 10, 3)
    # RGBE: 8 mantissa bits per channel under one shared exponent, so errors scale with the brightest channel
    assert (np.abs(read - img) <= img.max(-1, keepdims=True) / 128).all()


def test_hdr_reader_refuses_bad_input(tmp_path, monkeypatch):
    with pytest.raises(LumenkitError, match="missing.hdr"):
        Lt.read_radiance_hdr(tmp_path / "missing.hdr")
    png = tmp_path / "fake.hdr"
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((4, 4, 3), np.uint8))
    png.write_bytes((tmp_path / "x.png").read_bytes())
    with pytest.raises(LumenkitError, match="fake.hdr.*not a Radiance"):
        Lt.read_radiance_hdr(png)
    good = tmp_path / "nan.hdr"
    cv2.imwrite(str(good), np.ones((4, 8, 3), np.float32))
    bad = np.ones((4, 8, 3), np.float32)
    bad[1, 2, 0], bad[2, 3, 1] = np.nan, np.inf  # RGBE cannot store these: a decoder returning them
    monkeypatch.setattr(cv2, "imread", lambda *args: bad.copy())
    with pytest.raises(LumenkitError, match=r"nan.hdr: 2 of 32 pixels are NaN or infinite"):
        Lt.read_radiance_hdr(good)
