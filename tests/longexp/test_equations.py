"""Each equation of the long-exposure renderer against a hand-checkable case."""
import math

import numpy as np
import pytest
import torch

from lumenkit.longexp.composite import m_flow
from lumenkit.longexp.motion import PairMotion, sweep_lines
from lumenkit.longexp.render import (
    RenderConfig,
    accumulate_pass,
    extrapolate_endpoint,
    hermite,
    instantaneous_flow,
    render_blur,
    soft_gamma,
)


def stripes(h, w, period, shift=0.0):
    """[3, h, w] vertical sine stripes I(x) = 0.5 + 0.4 sin(2 pi (x - shift) / period)."""
    x = torch.arange(w, dtype=torch.float32) - shift
    row = 0.5 + 0.4 * torch.sin(2 * math.pi * x / period)
    return row.expand(3, h, w).clone()


def box_analytic(w, period, v):
    """Mean of I over [x - v, x] in closed form, [w]."""
    x = torch.arange(w, dtype=torch.float64)
    k = 2 * math.pi / period
    return 0.5 + 0.4 * (torch.cos(k * (x - v)) - torch.cos(k * x)) / (k * v)


@pytest.mark.parametrize("spline", [False, True])
@pytest.mark.parametrize("ramp", [True, False])
def test_eq6_constant_velocity_stripe_is_box_blur(spline, ramp):
    h, w, period, v = 8, 160, 40.0, 10.0
    f0 = stripes(h, w, period)
    f1 = stripes(h, w, period, shift=v)  # content moved by +v px
    da = torch.zeros(2, h, w)
    da[0] = -v  # frame k gathered backwards along the motion
    db = torch.zeros(2, h, w)
    db[0] = v  # frame k+1 gathered forwards
    half = torch.full((1, h, w), 0.5)
    cfg = RenderConfig(spline=spline, ramp=ramp, soft_gamma=False, step=0.25, n_max=129)
    out = render_blur([f0, f1], [PairMotion(da, db, half, half.clone())], cfg)
    ref = box_analytic(w, period, v)
    sl = slice(20, w - 20)
    err = (out[0, 4, sl].double() - ref[sl]).abs().max()
    assert err < 5e-3, err
    # and it is really blurred: far from the sharp frame
    assert (out[0, 4, sl] - f0[0, 4, sl]).abs().max() > 0.1


def test_ramp_pass_weights_favour_near_samples():
    # a pass along a line over a step edge: the ramp weights samples near the pixel more
    h, w = 4, 64
    img = torch.zeros(1, h, w)
    img[..., :32] = 1.0  # left half bright
    d = torch.zeros(2, h, w)
    d[0] = -16.0
    flat = accumulate_pass(img, d, ramp=False, step=0.25, n_max=129)
    ramp = accumulate_pass(img, d, ramp=True, step=0.25, n_max=129)
    # at x = 40 the path covers [24, 40]; the ramp puts less weight on the far (bright) samples
    assert abs(float(flat[0, 0, 40]) - 7.5 / 16) < 0.01  # bilinear edge at x = 31.5: 7.5 of 16 px bright
    assert float(ramp[0, 0, 40]) < float(flat[0, 0, 40]) - 0.1


def test_hermite_interpolates_endpoints_and_tangents():
    g = torch.Generator().manual_seed(0)
    p0, p1, m0, m1 = (torch.randn(2, 5, generator=g) for _ in range(4))
    for t, p, m in ((0.0, p0, m0), (1.0, p1, m1)):
        rho, drho = hermite(p0, p1, m0, m1, torch.tensor(t))
        assert torch.allclose(rho, p, atol=1e-6) and torch.allclose(drho, m, atol=1e-6)
    # tangents equal to the chord: a straight line at uniform speed
    t = torch.linspace(0, 1, 7)[None, :, None]
    rho, _ = hermite(p0[:, None], p1[:, None], (p1 - p0)[:, None], (p1 - p0)[:, None], t)
    assert torch.allclose(rho, p0[:, None] + t * (p1 - p0)[:, None], atol=1e-6)


def test_instantaneous_flow_eq7():
    a = torch.tensor([[3.0, 0.0, 2.0, 1.0], [0.0, 2.0, 0.0, 0.0]])
    b = torch.tensor([[3.0, 2.0, 0.0, -1.0], [0.0, 0.0, 4.0, 1e-3]])
    d = instantaneous_flow(a, b)
    assert torch.allclose(d[:, 0], torch.tensor([3.0, 0.0]), atol=1e-5)  # straight: delta = D
    # perpendicular, equal lengths 2: direction (1, 1)/sqrt2, magnitude 2 * (pi/2) / sin(pi/2)
    assert torch.allclose(d[:, 1], torch.tensor([1.0, 1.0]) / math.sqrt(2) * math.pi, atol=1e-4)
    # perpendicular, lengths 2 and 4: harmonic mean 8/3
    assert abs(float(d[:, 2].norm()) - 8 / 3 * math.pi / 2) < 1e-4
    # theta > pi/2 gets the fall-off factor 1 - (2 theta / pi - 1)^4, the arc factor times sin theta
    # (render.instantaneous_flow: continuous at reversals); here theta ~ pi, nearly a full reversal
    th = math.acos(float((a[:, 3] @ b[:, 3]) / (a[:, 3].norm() * b[:, 3].norm())))
    hm = 2 * float(a[:, 3].norm() * b[:, 3].norm()) / float(a[:, 3].norm() + b[:, 3].norm())
    expect = hm * th * (1 - (2 * th / math.pi - 1) ** 4)
    assert abs(float(d[:, 3].norm()) - expect) < 1e-5 and float(d[:, 3].norm()) < 1e-2


def test_instantaneous_flow_is_continuous():
    """eq. 7 as a function of the angle: unchanged up to pi/2, continuous at pi/2, fading to 0 at a
    full reversal, and Lipschitz there: a 1e-3 px change of D- moves delta by O(1e-3) px. (Taken
    literally, (theta / sin theta) x fall-off tends to 8, with the direction of the cancelling sum
    D+ + D- undefined: the tangent of a reversing track turned by up to 180 degrees at ~8x its length
    under float32 rounding or cv2's 1/32-px lookups, the GPU/CPU render mismatch.)"""
    r = 3.0
    th = torch.linspace(0.0, math.pi, 20001, dtype=torch.float64)
    a = torch.stack([torch.full_like(th, r), torch.zeros_like(th)])
    b = torch.stack([r * torch.cos(th), r * torch.sin(th)])
    mag = instantaneous_flow(a, b).norm(dim=0)
    lit = r * torch.where(th < 1e-4, torch.ones_like(th), th / torch.sin(th))  # the literal arc factor
    acute = th <= math.pi / 2
    assert torch.allclose(mag[acute], lit[acute], rtol=1e-9)  # theta <= pi/2: exactly eq. 7
    # Lipschitz in theta, |d mag / d theta| <= 8 r (its slope at the reversal): no jump anywhere
    assert float(mag.diff().abs().max()) < 8.5 * r * float(th[1] - th[0])
    assert float(mag[-1]) < 1e-9 and float(mag[-2]) < 1e-2  # fades to 0 at the reversal
    # near a reversal a tiny perturbation of one vector changes delta by about as much (not 10^4 x)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 4000, generator=g, dtype=torch.float64) * 4
    b = -a * (1 + 0.2 * torch.rand(4000, generator=g, dtype=torch.float64)) + 0.05 * torch.randn(2, 4000, generator=g, dtype=torch.float64)
    e = 1e-3 * torch.randn(2, 4000, generator=g, dtype=torch.float64)
    change = (instantaneous_flow(a, b + e) - instantaneous_flow(a, b)).norm(dim=0)
    assert float(change.max()) < 0.05, float(change.max())


def test_endpoint_extrapolation_reflects_and_clamps():
    # straight uniform track A, B, C -> D continues it
    a, b, c = torch.tensor([[0.0], [0.0]]), torch.tensor([[1.0], [0.0]]), torch.tensor([[2.0], [0.0]])
    assert torch.allclose(extrapolate_endpoint(c, b, a), torch.tensor([[3.0], [0.0]]))
    # turning track keeps its curvature (D mirrors A about the bisector of BC) and |CD| <= |BC|
    a, b, c = torch.tensor([[0.0], [0.0]]), torch.tensor([[1.0], [1.0]]), torch.tensor([[2.0], [1.0]])
    d = extrapolate_endpoint(c, b, a)
    assert torch.allclose(d, torch.tensor([[3.0], [0.0]]) - (torch.tensor([[3.0], [0.0]]) - c) * (1 - 1 / math.sqrt(2)), atol=1e-5)
    assert float((d - c).norm()) <= float((c - b).norm()) + 1e-6
    # two-frame burst: straight continuation
    assert torch.allclose(extrapolate_endpoint(c, b, None), torch.tensor([[3.0], [1.0]]))


def test_soft_gamma_inverts():
    v = torch.linspace(0, 1, 1001, dtype=torch.float64)
    assert torch.allclose(soft_gamma(soft_gamma(v, 3.0), 1 / 3.0), v, atol=1e-12)
    assert torch.allclose(soft_gamma(soft_gamma(v, 1 / 3.0), 3.0), v, atol=1e-12)
    assert float(soft_gamma(torch.tensor(0.5), 3.0)) == pytest.approx(0.25)  # 0.5 / (0.5 + 0.5 * 3)


def test_m_flow_thresholds_at_a_and_b():
    mag = np.full(1000, 100.0)
    mag[:500] = np.linspace(0, 99, 500)  # 99th percentile is 100
    mag[:5] = [15.9, 16.0, 24.0, 32.0, 40.0]
    m = m_flow(mag)
    assert m[0] == 0.0 and m[1] == 0.0 and m[2] == pytest.approx(0.5) and m[3] == pytest.approx(1.0) and m[4] == 1.0
    assert not m_flow(np.zeros((4, 4))).any()


def test_sweep_lines_reach_the_content():
    h, w = 5, 40
    flow = torch.zeros(2, h, w)
    flow[0, 2, 10] = 12.0  # one light at x = 10 moving +12 px
    lines = sweep_lines(flow)
    for x in range(10, 23):
        assert torch.allclose(lines[:, 2, x], torch.tensor([-12.0, 0.0])), x
    assert lines[:, 2, 25].abs().max() == 0 and lines[:, 1, 15].abs().max() == 0


@pytest.mark.cuda
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_render_cuda_matches_cpu(seed):
    """The torch grid_sample path (GPU) against the cv2.remap path (CPU), curved motion, default config.

    Smooth burst, bound G / 32 with G the largest neighbour difference of the frames: cv2 rounds each
    lookup coordinate to 1/32 px (see test_render_paths). The first version of this test used white
    noise frames (G ~ 1, so G / 32 ~ 0.03 is allowed by quantisation alone) with a 0.02 threshold, and
    failed at 0.056 on an H200 for a second reason: eq. 7 was discontinuous at reversing tracks. The
    float64 render must match float64 on the CPU (both grid_sample) to rounding."""
    from .test_render_paths import max_step, smooth_burst, to

    frames, motions = smooth_burst(seed)
    cpu = render_blur(frames, motions, RenderConfig())
    dev = torch.device("cuda")
    gpu = render_blur([f.to(dev) for f in frames], to(motions, device=dev), RenderConfig())
    err = float((gpu.cpu() - cpu).abs().max())
    assert err <= max_step(frames) / 32, (err, max_step(frames) / 32)
    cpu64 = render_blur([f.double() for f in frames], to(motions, dtype=torch.float64), RenderConfig())
    gpu64 = render_blur([f.double().to(dev) for f in frames], to(motions, dtype=torch.float64, device=dev), RenderConfig())
    assert float((gpu64.cpu() - cpu64).abs().max()) < 1e-6


def test_bilinear_lookup_matches_grid_sample():
    from lumenkit.longexp.render import bilinear

    g = torch.Generator().manual_seed(2)
    img = torch.rand(3, 30, 40, generator=g)
    pos = torch.stack([torch.rand(500, generator=g) * 46 - 3, torch.rand(500, generator=g) * 36 - 3])  # some outside
    ref = torch.nn.functional.grid_sample(
        img[None], torch.stack([pos[0] / 39 * 2 - 1, pos[1] / 29 * 2 - 1], -1)[None, None], mode="bilinear", padding_mode="border", align_corners=True
    )[0, :, 0]
    assert (bilinear(img, pos) - ref).abs().max() < 2e-2  # cv2.remap interpolates with 1/32-px weights


def test_occlusion_check_keeps_the_background_under_a_passing_object():
    """A swept line reaches a moving object across static background: with the content's own motion
    (PairMotion.own_*), background samples on the line are not the content that passes over the pixel,
    so the pixel keeps its own background for that part of the interval instead of a smear of others."""
    h, w, v = 3, 48, 20.0
    img = torch.zeros(1, h, w)
    img[..., 10:14] = 1.0  # object, 4 px wide, moving +20 px
    img[..., 29:32] = 0.8  # bright static background around x = 30
    flow = torch.zeros(2, h, w)
    flow[0, :, 10:14] = v
    lines = sweep_lines(flow)
    assert float(lines[0, 1, 30]) == -v  # the line at x = 30 reaches back to the object
    kw = dict(ramp=False, step=0.25, n_max=129)
    smear = float(accumulate_pass(img, lines, **kw)[0, 1, 30])
    occl = float(accumulate_pass(img, lines, own=-flow, **kw)[0, 1, 30])
    # the object covers x = 30 for ~4/20 of the interval; the background is 0.8 the rest of the time
    expected = 0.2 * 1.0 + 0.8 * 0.8
    assert abs(occl - expected) < 0.05, (occl, expected)
    assert abs(smear - expected) > 0.3, smear  # without the check: the dark background in between
