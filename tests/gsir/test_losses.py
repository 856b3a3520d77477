"""Stage-1 losses against hand-computed values."""
import math

import pytest
import torch

from lumenkit.common.metrics import ssim_map
from lumenkit.gsir.losses import Stage1LossWeights, edge_aware_tv, l1_loss, normal_consistency_loss, rgb_loss, stage1_loss, truncated_tv


def test_l1_and_rgb_loss_identical_images():
    x = torch.rand(3, 20, 20)
    assert float(l1_loss(x, x)) == 0.0
    assert abs(float(rgb_loss(x, x))) < 1e-6
    assert math.isclose(float(l1_loss(x, x + 0.25)), 0.25, rel_tol=1e-5)


def test_normal_consistency_masked_l1():
    n = torch.zeros(3, 2, 2)
    d = torch.zeros(3, 2, 2)
    n[:, 0, 0] = torch.tensor([0.0, 0.0, 1.0])
    d[:, 0, 0] = torch.tensor([0.0, 1.0, 0.0])  # |diff| sums to 2 over 3 channels
    n[:, 1, 1] = torch.tensor([1.0, 0.0, 0.0])
    d[:, 1, 1] = torch.tensor([1.0, 0.0, 0.0])  # exact
    n[:, 0, 1] = 5.0  # outside the mask: ignored
    mask = torch.tensor([[True, False], [False, True]])
    assert math.isclose(float(normal_consistency_loss(n, d, mask)), 2.0 / 6.0, rel_tol=1e-6)
    assert float(normal_consistency_loss(n, d, torch.zeros(2, 2, dtype=torch.bool))) == 0.0


def test_edge_aware_tv_hand_values():
    """GS-IR's get_tv_loss: mean squared differences (over channels and pixels), y term + x term."""
    data = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])
    flat = torch.zeros(3, 2, 2)
    # dx^2: 1, 4 -> mean 2.5; dy^2: 4, 9 -> mean 6.5; weights 1
    assert math.isclose(float(edge_aware_tv(data, flat)), 9.0, rel_tol=1e-6)
    edge = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).expand(3, 2, 2)  # vertical edge: x weights e^-1
    assert math.isclose(float(edge_aware_tv(data, edge)), 2.5 * math.exp(-1) + 6.5, rel_tol=1e-6)
    two = torch.stack([data[0], torch.zeros(2, 2)])  # a constant channel halves the channel mean
    assert math.isclose(float(edge_aware_tv(two, flat)), 4.5, rel_tol=1e-6)


def test_stage1_total_matches_weights():
    torch.manual_seed(0)
    pkg = {
        "render": torch.rand(3, 16, 16),
        "normal_map": torch.nn.functional.normalize(torch.randn(3, 16, 16), dim=0),
        "normal_map_from_depth": torch.nn.functional.normalize(torch.randn(3, 16, 16), dim=0),
        "normal_from_depth_mask": torch.rand(16, 16) > 0.5,
    }
    gt = torch.rand(3, 16, 16)
    w = Stage1LossWeights()
    total, terms = stage1_loss(pkg, gt, w)
    expect = 0.8 * float(l1_loss(pkg["render"], gt)) + 0.2 * (1 - float(ssim_map(pkg["render"], gt).mean())) + terms["normal"] + 5.0 * terms["normal_tv"]
    assert math.isclose(float(total), expect, rel_tol=1e-5)
    total0, terms0 = stage1_loss(pkg, gt, Stage1LossWeights(lambda_normal=0, lambda_normal_tv=0))
    assert set(terms0) == {"rgb"} and math.isclose(float(total0), terms["rgb"], rel_tol=1e-6)
    # lumenkit additions: depth-normal term (roles swapped) and flatten (mean smallest scale)
    pkg["normal_map_from_depth_grad"] = pkg["normal_map_from_depth"].clone().requires_grad_(True)
    scales = torch.tensor([[0.1, 0.02, 0.3], [0.05, 0.2, 0.4]], requires_grad=True)
    total2, terms2 = stage1_loss(pkg, gt, Stage1LossWeights(lambda_depth_normal=0.5, lambda_flatten=2.0), scales)
    assert math.isclose(terms2["depth_normal"], terms["normal"], rel_tol=1e-6)  # L1 is symmetric
    assert math.isclose(terms2["flatten"], 0.035, rel_tol=1e-6)
    assert math.isclose(float(total2.detach()), expect + 0.5 * terms["normal"] + 2.0 * 0.035, rel_tol=1e-5)
    total2.backward()
    assert pkg["normal_map_from_depth_grad"].grad.abs().sum() > 0
    assert torch.allclose(scales.grad, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))  # 2.0 * d mean / d min
    # depth distortion: the mean of the rendered distortion map, only when the weight is on and the map is there
    pkg["distortion_map"] = torch.rand(1, 16, 16)
    total3, terms3 = stage1_loss(pkg, gt, Stage1LossWeights(lambda_distortion=0.7))
    assert math.isclose(terms3["distortion"], float(pkg["distortion_map"].mean()), rel_tol=1e-6)
    assert math.isclose(float(total3), expect + 0.7 * terms3["distortion"], rel_tol=1e-5)
    assert "distortion" not in stage1_loss(pkg, gt, w)[1]
    # depth-normal TV: truncated_tv of the depth normal inside the consistency mask (depth normal valid, opacity > 0.5)
    pkg["opacity_map"] = torch.rand(1, 16, 16)
    pkg["normal_map_from_depth_grad"].grad = None
    total4, terms4 = stage1_loss(pkg, gt, Stage1LossWeights(lambda_depth_normal_tv=0.3, depth_normal_tv_max_step=0.5))
    mask = pkg["normal_from_depth_mask"] & (pkg["opacity_map"][0] > 0.5)
    tv = float(truncated_tv(pkg["normal_map_from_depth"], mask, 0.5))
    assert tv > 0 and math.isclose(terms4["depth_normal_tv"], tv, rel_tol=1e-6)
    total4.backward()
    assert pkg["normal_map_from_depth_grad"].grad.abs().sum() > 0
    terms5 = stage1_loss(pkg, gt, Stage1LossWeights(lambda_depth_normal_tv=0.3, depth_normal_tv_max_step=10.0, depth_normal_tv_order=2))[1]
    tv2 = float(truncated_tv(pkg["normal_map_from_depth"], mask, 10.0, order=2))
    assert tv2 > 0 and tv2 != tv and math.isclose(terms5["depth_normal_tv"], tv2, rel_tol=1e-6)


def _truncated_tv_loops(data, mask, max_step, order=1):
    """truncated_tv written stencil by stencil: pairs (-1, +1) for order 1, triples (+1, -2, +1) for order 2,
    along x and along y, counted only where every pixel of the stencil is in the mask."""
    stencil = {1: ((0, -1), (1, 1)), 2: ((-1, 1), (0, -2), (1, 1))}[order]
    C, H, W = data.shape
    total = 0.0
    for y in range(H):
        for x in range(W):
            for dy, dx in ((0, 1), (1, 0)):
                taps = [(y + k * dy, x + k * dx, w) for k, w in stencil]
                if all(0 <= ty < H and 0 <= tx < W and mask[ty, tx] for ty, tx, _ in taps):
                    diff = sum(abs(sum(w * float(data[c, ty, tx]) for ty, tx, w in taps)) for c in range(C))
                    total += diff if diff < max_step else 0.0
    return total / max(int(mask.sum()), 1)


def test_truncated_tv_pairwise_and_creases():
    torch.manual_seed(2)
    data = torch.randn(3, 7, 9) * 0.2
    mask = torch.rand(7, 9) > 0.3
    for max_step in (0.1, 0.4, 10.0):
        assert math.isclose(float(truncated_tv(data, mask, max_step)), _truncated_tv_loops(data, mask, max_step), rel_tol=1e-5)
    # two flat faces meeting at a 90-degree crease: the crease's step (L1 2.0) is free, the TV is 0
    faces = torch.zeros(3, 6, 8)
    faces[2, :, :4] = 1.0
    faces[0, :, 4:] = 1.0
    full = torch.ones(6, 8, dtype=torch.bool)
    assert float(truncated_tv(faces, full, 0.25)) == 0.0
    assert math.isclose(float(truncated_tv(faces, full, 2.5)), 6 * 2.0 / 48, rel_tol=1e-6)  # untruncated: 6 rows x one step of 2
    # a small tilt of one pixel is penalised, its gradient pulls it back towards its neighbours
    bumpy = faces.clone().requires_grad_(True)
    with torch.no_grad():
        bumpy[0, 2, 1] = 0.1
    truncated_tv(bumpy, full, 0.25).backward()
    assert bumpy.grad[0, 2, 1] > 0
    assert float(truncated_tv(data, torch.zeros(7, 9, dtype=torch.bool), 0.25)) == 0.0


def test_second_order_truncated_tv_spares_curved_surfaces():
    torch.manual_seed(3)
    data = torch.randn(3, 7, 9) * 0.2
    mask = torch.rand(7, 9) > 0.25
    for max_step in (0.1, 0.4, 10.0):
        assert math.isclose(float(truncated_tv(data, mask, max_step, order=2)), _truncated_tv_loops(data, mask, max_step, order=2), rel_tol=1e-5)
    full = torch.ones(6, 8, dtype=torch.bool)
    # a normal that turns steadily across the image (a cylinder seen from the side, to first order):
    # the first difference is constant and penalised, the second difference is exactly zero
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(8.0), indexing="ij")
    ramp = torch.stack([0.05 * xs, 0.03 * ys, torch.ones(6, 8)])
    assert math.isclose(float(truncated_tv(ramp, full, 0.25)), (6 * 7 * 0.05 + 5 * 8 * 0.03) / 48, rel_tol=1e-5)
    assert float(truncated_tv(ramp, full, 0.25, order=2)) < 1e-6
    # the unit normal of an orthographic sphere: x, y are linear in the pixel, z nearly so inside
    # the rim, so order 2 costs it 10x less than order 1 (20x here)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    r2 = xs**2 + ys**2
    sphere = torch.stack([xs, ys, (1 - r2).clamp_min(0).sqrt()])
    disc = r2 < 0.9
    assert float(truncated_tv(sphere, disc, 0.25, order=2)) < 0.1 * float(truncated_tv(sphere, disc, 0.25))
    # a 90-degree crease between two flat faces: second differences of L1 2 beside it, left free
    faces = torch.zeros(3, 6, 8)
    faces[2, :, :4] = 1.0
    faces[0, :, 4:] = 1.0
    assert float(truncated_tv(faces, full, 0.25, order=2)) == 0.0
    assert math.isclose(float(truncated_tv(faces, full, 2.5, order=2)), 6 * 2 * 2.0 / 48, rel_tol=1e-6)
    # a one-pixel bump is penalised and pulled back; an empty mask costs nothing
    bumpy = faces.clone().requires_grad_(True)
    with torch.no_grad():
        bumpy[0, 2, 1] = 0.1
    truncated_tv(bumpy, full, 0.25, order=2).backward()
    assert bumpy.grad[0, 2, 1] > 0
    assert float(truncated_tv(data, torch.zeros(7, 9, dtype=torch.bool), 0.25, order=2)) == 0.0
    with pytest.raises(ValueError, match="order 3"):
        truncated_tv(data, mask, 0.25, order=3)


def test_stage1_opacity_gating_and_gsir_exact_mode():
    """Default: consistency only where the rendered opacity > 0.5 and TV on n * O; with
    normal_min_opacity=0 and tv_opacity_weighted=False the terms are GS-IR's literal ones."""
    torch.manual_seed(1)
    n = torch.nn.functional.normalize(torch.randn(3, 16, 16), dim=0)
    nd = torch.nn.functional.normalize(torch.randn(3, 16, 16), dim=0)
    dmask = torch.rand(16, 16) > 0.3
    op = torch.rand(1, 16, 16)
    pkg = {"render": torch.rand(3, 16, 16), "normal_map": n, "normal_map_from_depth": nd, "normal_from_depth_mask": dmask, "opacity_map": op}
    gt = torch.rand(3, 16, 16)
    _, t = stage1_loss(pkg, gt, Stage1LossWeights())
    assert math.isclose(t["normal"], float(normal_consistency_loss(n, nd, dmask & (op[0] > 0.5))), rel_tol=1e-6)
    assert math.isclose(t["normal_tv"], float(edge_aware_tv(n * op, gt)), rel_tol=1e-6)
    _, g = stage1_loss(pkg, gt, Stage1LossWeights(normal_min_opacity=0.0, tv_opacity_weighted=False))
    assert math.isclose(g["normal"], float(normal_consistency_loss(n, nd, dmask)), rel_tol=1e-6)
    assert math.isclose(g["normal_tv"], float(edge_aware_tv(n, gt)), rel_tol=1e-6)
    assert not math.isclose(g["normal"], t["normal"], rel_tol=1e-3)
