"""GS-IR's rasterizer details around the normals that pipeline.render reproduces:
- the normal from depth is computed on the 3x3 median-filtered depth (kornia.filters.median_blur);
- the normal-map gradient is zeroed on the image border pixels (backward.cu "Skip the edge normal")."""
import inspect
import math

import numpy as np
import pytest
import torch

from lumenkit.gsir.gaussians import GaussianModel
from lumenkit.gsir.geometry import normals_from_depth
from lumenkit.gsir.pipeline import median_blur3, normal_from_depth, render, zero_border
from lumenkit.gsir.camera import Camera

from .test_geometry import look_at_gl


def test_median_blur3_matches_kornia():
    kornia = pytest.importorskip("kornia")
    g = torch.Generator().manual_seed(0)
    d = torch.rand(1, 23, 31, generator=g) * 3
    d[:, 5:9, 7:12] = 0  # invalid hole, as background depth
    d[0, 0, :] = 0
    # GS-IR's kornia (< 0.8) padded with zeros; newer kornia defaults to border_type="reflect"
    kw = {"border_type": "constant"} if "border_type" in inspect.signature(kornia.filters.median_blur).parameters else {}
    ref = kornia.filters.median_blur(d[None], (3, 3), **kw)[0]
    assert torch.equal(median_blur3(d), ref)
    assert torch.equal(median_blur3(d[0]), ref[0])


def test_depth_normal_is_computed_on_the_median_filtered_depth():
    cam = Camera.from_fov(look_at_gl((0.0, -3.0, 0.0)), math.radians(40.0), 32, 24)
    depth = torch.full((1, 24, 32), 3.0)
    depth[0, 12, 16] = 2.5  # an isolated spike: the median removes it, the plain depth normal does not
    plain = normals_from_depth(depth, cam)["normal_map_from_depth"]
    med = normal_from_depth(depth, cam)["normal_map_from_depth"]
    assert torch.equal(med, normals_from_depth(median_blur3(depth), cam)["normal_map_from_depth"])
    assert torch.equal(normal_from_depth(depth, cam, median=False)["normal_map_from_depth"], plain)
    # a fronto-parallel plane at z = 3: world normal (0, -1, 0) towards the camera, spike gone after the median
    assert torch.allclose(med[:, 12, 16], torch.tensor([0.0, -1.0, 0.0]), atol=1e-5)
    assert not torch.allclose(plain[:, 12, 16], torch.tensor([0.0, -1.0, 0.0]), atol=1e-2)


def test_zero_border():
    g = torch.ones(3, 5, 6)
    z = zero_border(g)
    assert z[:, 1:-1, 1:-1].eq(1).all() and z.sum() == 3 * 3 * 4
    assert g.eq(1).all()  # input untouched


def _model(n=400, seed=0):
    m = GaussianModel(0)
    m.create_random(n, 0.8, 1.0, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        m.params["scaling"] += 1.0  # big enough to cover the image borders
        m.params["opacity"].fill_(0.0)
        m.params["normal"].copy_(torch.randn(n, 3, generator=torch.Generator().manual_seed(seed + 1)))
    return m


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_normal_gradient_skips_border_pixels(backend):
    cam = Camera.from_fov(look_at_gl((0.5, -3.0, 1.0)), math.radians(40.0), 20, 16)
    H, W = 16, 20
    border = torch.ones(H, W, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    w = torch.randn(3, H, W, generator=torch.Generator().manual_seed(3))

    def normal_grad(weight, skip):
        m = _model()
        pkg = render(m, cam, torch.zeros(3), backend=backend, with_depth_normal=False, skip_border_normal_grad=skip)
        (pkg["normal_map"] * weight).sum().backward()
        return m.params["normal"].grad.clone(), m.params["xyz"].grad

    g_on, xyz_grad = normal_grad(w * border, True)
    g_off, _ = normal_grad(w * border, False)
    assert g_on.abs().max() == 0  # a loss on border pixels only does not move the normals
    assert g_off.abs().max() > 0  # ... while it would without the skip: the test can fail
    assert xyz_grad is None or xyz_grad.abs().max() == 0  # normals never move the geometry
    gi_on, _ = normal_grad(w * ~border, True)
    gi_off, _ = normal_grad(w * ~border, False)
    assert torch.allclose(gi_on, gi_off, atol=1e-6)  # interior pixels are unaffected


def test_fg_pixel_classes_on_a_box_edge():
    from lumenkit.gsir.evaluate import fg_pixel_classes, normal_mae_breakdown

    H, W = 20, 24
    mask = np.zeros((H, W), bool)
    mask[2:18, 3:21] = True
    gt = np.zeros((H, W, 3), np.float32)
    gt[mask] = (0, 0, 1)
    gt[2:18, 12:21] = (1, 0, 0)  # second face: a 90 degree crease between columns 11 and 12
    c = fg_pixel_classes(gt, mask)
    assert not (c["silhouette"] & c["crease"]).any() and not (c["crease"] & c["flat"]).any()
    assert ((c["silhouette"] | c["crease"] | c["flat"]) == mask).all()
    assert c["silhouette"][2, 10] and c["silhouette"][3, 5] and not c["silhouette"][4, 5]
    assert c["crease"][8, 11] and c["crease"][8, 12] and not c["crease"][8, 10] and not c["crease"][8, 13]
    # errors: 30 degrees on the crease pixels only
    pred = gt.copy()
    t = np.radians(30)
    pred[c["crease"]] = np.where(gt[c["crease"]][:, :1] > 0.5, [[np.cos(t), np.sin(t), 0]], [[0, np.sin(t), np.cos(t)]])
    b = normal_mae_breakdown(pred, gt, mask)
    assert b["crease"][1] == c["crease"].sum() and abs(b["crease"][0] / b["crease"][1] - 30) < 1e-3
    assert b["flat"][0] < 1e-3 and b["silhouette"][0] < 1e-3


def _bumpy_sheet(seed=0):
    """A sheet of flat, opaque Gaussians in the plane y = 0 with random bumps in y (the camera's depth
    axis), per-Gaussian normals (0, -1, 0) already right."""
    g = torch.Generator().manual_seed(seed)
    xs, zs = torch.meshgrid(torch.linspace(-1.2, 1.2, 17), torch.linspace(-0.9, 0.9, 13), indexing="ij")
    pts = torch.stack([xs.flatten(), torch.randn(xs.numel(), generator=g) * 0.06, zs.flatten()], -1)
    m = GaussianModel(0)
    m.create_from_points(pts, torch.rand(len(pts), 3, generator=g), 1.0)
    with torch.no_grad():
        m.params["scaling"].copy_(torch.log(torch.tensor([0.12, 0.01, 0.12])).expand_as(m.params["scaling"]))
        m.params["opacity"].fill_(4.0)
        m.params["normal"].copy_(torch.tensor([0.0, -1.0, 0.0]).expand_as(m.params["normal"]))
    return m


def test_depth_normal_term_flattens_the_geometry_and_gsir_term_does_not_move_it():
    """GS-IR's consistency (depth normal detached) gives the positions no gradient; the lumenkit
    depth-normal term (normal_map_from_depth_grad vs the detached normal map) flattens a bumpy sheet."""
    from lumenkit.gsir.losses import normal_consistency_loss

    # slightly oblique: a normal with an exactly zero component is outside GS-IR's mask
    cam = Camera.from_fov(look_at_gl((0.3, -3.0, 0.4)), math.radians(45.0), 40, 30)
    m = _bumpy_sheet()
    pkg = render(m, cam, torch.zeros(3), backend="cpu", depth_normal_grad=True)
    mask = pkg["normal_from_depth_mask"]
    normal_consistency_loss(pkg["normal_map"], pkg["normal_map_from_depth"], mask).backward()
    assert m.params["xyz"].grad is None or m.params["xyz"].grad.abs().max() == 0
    assert torch.equal(pkg["normal_map_from_depth_grad"].detach(), pkg["normal_map_from_depth"])

    inner = (m.xyz[:, 0].abs() < 0.8) & (m.xyz[:, 2].abs() < 0.6)  # Gaussians well inside the view
    y0 = m.xyz.detach()[inner, 1].std()
    opt = torch.optim.Adam([m.params["xyz"]], lr=0.01)
    losses = []
    for _ in range(60):
        pkg = render(m, cam, torch.zeros(3), backend="cpu", depth_normal_grad=True)
        loss = normal_consistency_loss(pkg["normal_map_from_depth_grad"], pkg["normal_map"].detach(), pkg["normal_from_depth_mask"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    y1 = m.xyz.detach()[inner, 1].std()
    # the normal map is the true plane normal everywhere, so the loss is the depth normal's error
    assert losses[-1] < 0.3 * losses[0], losses
    assert y1 < 0.8 * y0, (float(y0), float(y1))  # by moving the Gaussians towards the plane


def test_pooled_breakdown_weights_views_by_pixels():
    from lumenkit.gsir.evaluate import pooled_breakdown

    views = [{"flat": (10.0, 5), "crease": (30.0, 1)}, {"flat": (2.0, 1), "crease": (90.0, 3)}]
    pooled = pooled_breakdown(views)
    assert pooled["flat"] == pytest.approx((12.0 / 6, 6 / 10))  # not the mean of per-view MAEs (2.0, 2.0)
    assert pooled["crease"] == pytest.approx((120.0 / 4, 4 / 10))
