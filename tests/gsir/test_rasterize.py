"""The Gaussian rasterizer: C++ CPU backend vs plain-torch reference (values and gradients), float64
gradcheck, a single Gaussian against its closed-form footprint, early termination, culling, SH."""
import math
import subprocess
import sys

import pytest
import torch

from lumenkit.gsir._cpu import extension_dir, load_extension
from lumenkit.gsir._torch_impl import project_gaussians
from lumenkit.gsir.camera import Camera
from lumenkit.gsir.rasterize import rasterize
from lumenkit.gsir.sh import rgb_to_sh0, sh_to_color

MAPS = ("render", "opacity_map", "depth_map", "normal_map", "albedo_map", "roughness_map", "metallic_map")


@pytest.fixture(scope="module")
def ext():
    return load_extension()  # built once per session (cached on disk afterwards)


def test_extension_loads_past_a_stale_build_lock(ext):
    """A build killed midway leaves torch's lock file behind; the next load must not wait on it forever."""
    stale = extension_dir() / "lock"
    stale.touch()
    code = "from lumenkit.gsir._cpu import load_extension; load_extension(); print('loaded')"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        stale.unlink(missing_ok=True)
        pytest.fail("load_extension() hung on a stale torch build lock")
    assert out.returncode == 0 and out.stdout.strip() == "loaded", out.stderr[-2000:]
    assert not stale.exists()


def front_camera(width, height, dist=4.0, fov_deg=40.0, dtype=torch.float32):
    c2w = torch.eye(4)
    c2w[2, 3] = dist  # OpenGL camera on +z looking at the origin
    cam = Camera.from_fov(c2w, math.radians(fov_deg), width, height)
    return Camera(cam.viewmat.to(dtype), cam.K.to(dtype), width, height)


def random_scene(n, seed, dtype=torch.float32, spread=0.6, size=(0.03, 0.25)):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g, dtype=dtype)  # noqa: E731
    return {
        "means": (torch.randn(n, 3, generator=g, dtype=dtype) * spread),
        "quats": torch.randn(n, 4, generator=g, dtype=dtype),
        "scales": size[0] + (size[1] - size[0]) * r(n, 3),
        "opacities": 0.05 + 0.9 * r(n),
        "colors": r(n, 3),
        "normals": torch.randn(n, 3, generator=g, dtype=dtype),
        "albedo": r(n, 3),
        "roughness": r(n, 1),
        "metallic": r(n, 1),
    }


def render(scene, cam, backend, **kw):
    params = {k: v.clone().requires_grad_() for k, v in scene.items()}
    out = rasterize(params["means"], params["quats"], params["scales"], params["opacities"], cam,
                    colors=params["colors"], normals=params["normals"], albedo=params["albedo"],
                    roughness=params["roughness"], metallic=params["metallic"], backend=backend, **kw)
    return params, out


def weighted_loss(out, seed=1):
    g = torch.Generator().manual_seed(seed)
    return sum((out[k] * torch.randn(out[k].shape, generator=g, dtype=out[k].dtype)).sum() for k in MAPS)


@pytest.mark.parametrize(
    "seed,n,size,kw",
    [
        (0, 40, (48, 40), {}),
        (1, 80, (40, 36), {"bg": torch.tensor([0.3, 0.6, 0.9])}),  # many overlapping Gaussians
        (2, 60, (50, 34), {"inference": True, "bg": torch.tensor([1.0, 1.0, 1.0])}),
        (3, 50, (33, 47), {"argmax_depth": True}),
        (4, 60, (44, 38), {"planar_depth": True}),
    ],
)
def test_cpu_matches_reference(ext, seed, n, size, kw):
    scene = random_scene(n, seed)
    cam = front_camera(*size)
    p_ref, o_ref = render(scene, cam, "reference", **kw)
    p_cpu, o_cpu = render(scene, cam, "cpu", **kw)
    assert o_ref["opacity_map"].max() > 0.9  # the scene covers the image densely
    for k in MAPS:
        assert torch.allclose(o_cpu[k], o_ref[k], atol=2e-5, rtol=1e-5), (k, (o_cpu[k] - o_ref[k]).abs().max())
    assert torch.equal(o_cpu["radii"], o_ref["radii"])
    weighted_loss(o_ref).backward()
    weighted_loss(o_cpu).backward()
    grads = {k: (p_ref[k].grad, p_cpu[k].grad) for k in scene}
    grads["viewspace_points"] = (o_ref["viewspace_points"].grad, o_cpu["viewspace_points"].grad)
    for k, (a, b) in grads.items():
        scale = a.abs().max().clamp_min(1e-3)
        assert ((a - b).abs().max() / scale) < 2e-4, (k, (a - b).abs().max(), scale)


def test_cpu_float64_matches_reference_to_rounding(ext):
    scene = random_scene(50, 7, dtype=torch.float64)
    cam = front_camera(40, 32, dtype=torch.float64)
    p_ref, o_ref = render(scene, cam, "reference", bg=torch.tensor([0.2, 0.1, 0.5]))
    p_cpu, o_cpu = render(scene, cam, "cpu", bg=torch.tensor([0.2, 0.1, 0.5]))
    for k in MAPS:
        assert torch.allclose(o_cpu[k], o_ref[k], atol=1e-12)
    weighted_loss(o_ref).backward()
    weighted_loss(o_cpu).backward()
    for k in scene:
        assert torch.allclose(p_cpu[k].grad, p_ref[k].grad, atol=1e-10, rtol=1e-9), k


@pytest.mark.parametrize("planar_depth", [False, True])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(ext, backend, planar_depth):
    """Finite differences of the whole pipeline (projection + blending) on a tiny single-tile image."""
    scene = random_scene(4, 3, dtype=torch.float64, spread=0.3, size=(0.2, 0.4))
    scene["opacities"] = torch.tensor([0.5, 0.6, 0.7, 0.4], dtype=torch.float64)
    cam = front_camera(12, 10, dtype=torch.float64)
    keys = ["means", "quats", "scales", "opacities", "colors", "normals"]
    proj = torch.randn(4, 7 * 10 * 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def f(means, quats, scales, opacities, colors, normals):
        out = rasterize(means, quats, scales, opacities, cam, colors=colors, normals=normals,
                        bg=torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), backend=backend, planar_depth=planar_depth)
        # the normal map is differentiated w.r.t. the normals only (GS-IR: attribute maps do not move
        # the geometry; test_normal_frames checks that), so it is checked at the fixed scene geometry
        fixed = (scene[k] for k in keys[:4])
        out_n = rasterize(*fixed, cam, colors=scene["colors"], normals=normals, backend=backend)
        maps = torch.cat([out["render"], out["depth_map"], out_n["normal_map"]]).flatten()
        return proj @ maps  # 4 random projections of every pixel of every map (4 backward passes)

    inputs = tuple(scene[k].clone().requires_grad_() for k in keys)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_single_gaussian_closed_form_footprint(ext):
    """opacity_map = o exp(-0.5 d^T S^-1 d) at pixel centres (j + 0.5, i + 0.5) with the EWA covariance
    S = J Sigma J^T + 0.3 I, J the Jacobian of the pinhole projection (here by autograd)."""
    dtype = torch.float64
    cam = front_camera(64, 48, dtype=dtype)
    mean = torch.tensor([0.21, -0.13, 0.4], dtype=dtype)
    quat = torch.tensor([0.9, 0.2, -0.3, 0.1], dtype=dtype)
    scale = torch.tensor([0.15, 0.05, 0.08], dtype=dtype)
    o, color, bg = 0.3, torch.tensor([0.9, 0.4, 0.1], dtype=dtype), torch.tensor([0.0, 0.5, 1.0], dtype=dtype)

    def proj(x):
        return cam.project(x)

    Jp = torch.autograd.functional.jacobian(proj, mean)  # [2, 3]
    q = quat / quat.norm()
    w, x, y, z = q
    R = torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]], dtype=dtype)
    Sigma = R @ torch.diag(scale**2) @ R.T
    S2 = Jp @ Sigma @ Jp.T + 0.3 * torch.eye(2, dtype=dtype)
    m2 = proj(mean)
    v, u = torch.meshgrid(torch.arange(48, dtype=dtype) + 0.5, torch.arange(64, dtype=dtype) + 0.5, indexing="ij")
    d = torch.stack([u - m2[0], v - m2[1]], -1)
    alpha = o * torch.exp(-0.5 * torch.einsum("hwi,ij,hwj->hw", d, torch.linalg.inv(S2), d))
    expected = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))
    depth = (cam.viewmat[:3, :3] @ mean + cam.viewmat[:3, 3])[2]
    for backend in ("reference", "cpu"):
        out = rasterize(mean[None], quat[None], scale[None], torch.tensor([o], dtype=dtype), cam,
                        colors=color[None], bg=bg, backend=backend)
        assert torch.allclose(out["opacity_map"][0], expected, atol=1e-12), backend
        assert torch.allclose(out["render"], color[:, None, None] * expected + (1 - expected) * bg[:, None, None], atol=1e-12)
        covered = expected > 1e-4
        assert torch.allclose(out["depth_map"][0][covered], depth.expand(int(covered.sum())), atol=1e-12)
        assert (out["depth_map"][0][~covered] == 0).all()
        assert out["radii"][0] == math.ceil(3 * math.sqrt(torch.linalg.eigvalsh(S2).max().item()))


def test_early_termination_and_alpha_threshold(ext):
    """Fronto-parallel Gaussians stacked on one pixel centre, alpha 0.95 each: T = 0.05^k, and the
    4th (T would be 6.25e-6 < 1e-4) and everything behind it are dropped. o < 1/255 never counts."""
    dtype = torch.float64
    cam = front_camera(16, 16, dtype=dtype)
    K = cam.K
    zs = torch.tensor([3.0, 3.5, 4.0, 4.5, 5.0], dtype=dtype)
    # camera at z=+4 looking down -z: view depth z_view = 4 - z_world; put the means on pixel (8, 8)'s ray.
    u = 8.5
    xs = (u - K[0, 2]) / K[0, 0] * zs
    ys = -(u - K[1, 2]) / K[1, 1] * zs  # OpenGL world y is up, OpenCV camera y is down
    means = torch.stack([xs, ys, 4.0 - zs], -1)
    means = torch.cat([torch.tensor([[0.0, 0.0, 4.0 - 2.0]], dtype=dtype), means])  # a faint one in front
    n = means.shape[0]
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=dtype).repeat(n, 1)
    scales = torch.full((n, 3), 0.01, dtype=dtype)
    opac = torch.tensor([0.003] + [0.95] * 5, dtype=dtype)
    colors = torch.eye(3, dtype=dtype).repeat(2, 1)[:n]
    colors[0] = torch.tensor([1.0, 1.0, 1.0], dtype=dtype)
    for backend in ("reference", "cpu"):
        out = rasterize(means, quats, scales, opac, cam, colors=colors, backend=backend, argmax_depth=True)
        proj = project_gaussians(means, quats, scales, cam)
        assert torch.allclose(proj.means2d[1:], torch.tensor([8.5, 8.5], dtype=dtype).expand(5, 2), atol=1e-9)
        a = 0.95  # power = 0 at the pixel centre
        w = torch.tensor([a, a * (1 - a), a * (1 - a) ** 2], dtype=dtype)
        expected = (w[:, None] * colors[1:4]).sum(0)
        assert torch.allclose(out["render"][:, 8, 8], expected, atol=1e-12), backend
        assert torch.allclose(out["opacity_map"][0, 8, 8], w.sum().reshape(()), atol=1e-12)
        assert torch.allclose(out["depth_map"][0, 8, 8], zs[0], atol=1e-12)  # argmax: the front one


def test_culling_behind_camera_and_off_screen(ext):
    cam = front_camera(32, 32)
    means = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 6.0], [30.0, 0.0, 0.0]])  # visible, behind, far off-screen
    out = rasterize(means, torch.tensor([[1.0, 0, 0, 0]]).repeat(3, 1), torch.full((3, 3), 0.1),
                    torch.full((3,), 0.8), cam, colors=torch.ones(3, 3), backend="cpu")
    assert out["visibility_filter"].tolist() == [True, False, False]
    assert out["radii"][0] > 0 and (out["radii"][1:] == 0).all()


def test_sh_degree0_matches_colors(ext):
    scene = random_scene(30, 5)
    cam = front_camera(32, 24)
    sh = torch.zeros(30, 16, 3)
    sh[:, 0] = rgb_to_sh0(scene["colors"])
    args = (scene["means"], scene["quats"], scene["scales"], scene["opacities"], cam)
    a = rasterize(*args, colors=scene["colors"], backend="cpu")["render"]
    b = rasterize(*args, sh=sh, sh_degree=3, backend="cpu")["render"]
    c = rasterize(*args, sh=sh[:, :1], backend="cpu")["render"]
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, c, atol=1e-6)


def test_sh_view_dependence_degree1():
    """Degree 1 (3DGS sign convention): colour = C0 dc - C1 (y s1 - z s2 + x s3) + 0.5, clamped at 0,
    with the unit direction from the camera centre to the point."""
    sh = torch.zeros(2, 4, 3)
    sh[:, 3, 0] = 1.0  # x lobe on red
    sh[:, 3, 1] = 2.0  # stronger x lobe on green (clamps on the +x side)
    means = torch.tensor([[3.0, 0.0, 0.0], [-2.0, 0.0, 0.0]])
    col = sh_to_color(sh, means, torch.tensor([0.0, 0.0, 0.0]), 1)
    c1 = 0.4886025119029199
    expected = torch.tensor([[0.5 - c1, 0.0, 0.5], [0.5 + c1, 0.5 + 2 * c1, 0.5]])
    assert torch.allclose(col, expected, atol=1e-6)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_fused_cpu_preprocess_matches_torch(ext, degree):
    """The C++ projection + SH (values and float64 gradients) against `project_gaussians` + `sh_to_color`,
    with Gaussians outside the field of view (clamped Jacobian), behind the camera and SH clamped at 0."""
    from lumenkit.gsir._cpu import preprocess_cpu

    dtype = torch.float64
    g = torch.Generator().manual_seed(degree)
    n = 200
    cam = front_camera(40, 30, dtype=dtype)
    inputs = {
        "means": torch.randn(n, 3, generator=g, dtype=dtype) * torch.tensor([2.5, 2.0, 1.5], dtype=dtype),
        "quats": torch.randn(n, 4, generator=g, dtype=dtype),
        "scales": torch.rand(n, 3, generator=g, dtype=dtype) * 0.3 + 0.01,
        "sh": torch.randn(n, 16, 3, generator=g, dtype=dtype) * 0.5,
    }
    outs = {}
    for impl in ("torch", "cpp"):
        p = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        if impl == "torch":
            proj = project_gaussians(p["means"], p["quats"], p["scales"], cam)
            col = sh_to_color(p["sh"], p["means"], cam.camera_center, degree)
        else:
            proj, col = preprocess_cpu(p["means"], p["quats"], p["scales"], cam, p["sh"], degree)
        vis = (proj.radii > 0).to(dtype)
        w = torch.Generator().manual_seed(9)
        loss = sum(((t * vis.reshape(-1, *[1] * (t.dim() - 1))) * torch.randn(t.shape, generator=w, dtype=dtype)).sum()
                   for t in (proj.means2d, proj.conics, proj.depths, col))
        loss.backward()
        outs[impl] = (proj, col, {k: v.grad for k, v in p.items()})
    (pt, ct, gt), (pc, cc, gc) = outs["torch"], outs["cpp"]
    assert torch.equal(pt.radii, pc.radii) and torch.equal(pt.rects, pc.rects)
    vis = pt.radii > 0
    assert 20 < int(vis.sum()) < n  # some culled, some visible
    for a, b in ((pt.means2d, pc.means2d), (pt.conics, pc.conics), (pt.depths, pc.depths), (ct, cc)):
        assert torch.allclose(a[vis], b[vis], atol=1e-10, rtol=1e-10)
    assert (ct == 0).any() or degree == 0  # some SH colours clamped
    for k in inputs:
        assert torch.allclose(gt[k], gc[k], atol=1e-9, rtol=1e-8), (k, (gt[k] - gc[k]).abs().max())


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("n", [0, 2])
def test_empty_or_all_culled_scene_renders_background(ext, backend, n):
    cam = front_camera(32, 24)
    means = torch.tensor([[0.0, 0.0, 10.0]]).repeat(n, 1).requires_grad_()  # behind the camera
    out = rasterize(means, torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), torch.full((n, 3), 0.1), torch.full((n,), 0.5),
                    cam, colors=torch.rand(n, 3), bg=torch.tensor([0.1, 0.2, 0.3]), backend=backend, argmax_depth=True)
    assert torch.allclose(out["render"], torch.tensor([0.1, 0.2, 0.3])[:, None, None].expand(3, 24, 32))
    assert (out["depth_map"] == 0).all() and (out["opacity_map"] == 0).all()
    (out["render"].sum() + out["depth_map"].sum()).backward()
    assert n == 0 or (means.grad == 0).all()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_depth_distortion_matches_pairwise_sum(ext, backend):
    """distortion_map = 1/2 sum_ij w_i w_j (z_i - z_j)^2, checked against the per-pixel weights w_i
    (each Gaussian's one-hot channel blended alone) and the centre depths, summed pair by pair; and its
    gradient w.r.t. the means against the same brute-force sum through the reference blend."""
    scene = random_scene(30, 7, dtype=torch.float64)
    cam = front_camera(24, 20, dtype=torch.float64)
    params, out = render(scene, cam, backend, depth_distortion=True)
    from lumenkit.gsir._torch_impl import blend_reference, depth_order

    def brute(means):
        proj = project_gaussians(means, params["quats"], params["scales"], cam)
        eye = torch.eye(means.shape[0], dtype=means.dtype)
        order = depth_order(proj.depths, proj.radii)
        w, _ = blend_reference(proj.means2d, proj.conics, params["opacities"], eye, order, proj.rects, 24, 20)  # [N, H, W]
        dz = proj.depths[:, None] - proj.depths[None, :]
        return 0.5 * torch.einsum("ihw,jhw,ij->hw", w, w, dz * dz)[None]

    means = params["means"].detach().clone().requires_grad_()
    expected = brute(means)
    assert float(expected.detach().max()) > 1e-3  # overlapping Gaussians at different depths
    torch.testing.assert_close(out["distortion_map"], expected.detach(), rtol=1e-6, atol=1e-9)
    g = torch.Generator().manual_seed(3)
    weights = torch.rand(expected.shape, generator=g, dtype=torch.float64)
    (grad_expected,) = torch.autograd.grad((expected * weights).sum(), means)
    (grad,) = torch.autograd.grad((out["distortion_map"] * weights).sum(), params["means"])
    torch.testing.assert_close(grad, grad_expected, rtol=1e-5, atol=1e-8)
