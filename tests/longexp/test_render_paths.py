"""The two sampling paths of lumenkit.longexp.render agree: cv2.remap (CPU float32) and grid_sample
(CUDA, or any float64 tensor -- which is how the second path is exercised here without a GPU).

Tolerances: cv2.remap's INTER_LINEAR rounds each coordinate to the nearest 1/32 px, i.e. it returns the
exact bilinear value at a point at most 1/64 px off per axis. The bilinear interpolant's slope along an
axis is at most the largest neighbour difference G of the image along it, so one lookup is off by at
most (G_x + G_y) / 64 <= G / 32 with G = max(G_x, G_y); a weighted mean of lookups (every pass of the
renderer) keeps that bound. On a smooth image G is small, so a coordinate-convention or border error
(which is O(G x 0.5 px) or more) cannot hide below it."""
import pytest
import torch
import torch.nn.functional as F

from lumenkit.longexp.motion import PairMotion
from lumenkit.longexp.render import RenderConfig, bilinear, pixel_grid, render_blur

H, W = 48, 64


def max_step(imgs) -> float:
    """G: the largest absolute difference between horizontal or vertical neighbours."""
    return max(max(float(f.diff(dim=-1).abs().max()), float(f.diff(dim=-2).abs().max())) for f in imgs)


def smooth_burst(seed: int, h: int = H, w: int = W, amp: float = 4.0):
    """3 smooth frames (bicubic-upsampled 6x8 noise) and 2 smooth, curved PairMotion (amp px)."""
    g = torch.Generator().manual_seed(seed)

    def up(t):
        return F.interpolate(t[None], size=(h, w), mode="bicubic", align_corners=False)[0]

    frames = [up(torch.rand(3, 6, 8, generator=g)).clamp(0, 1) for _ in range(3)]
    motions = []
    for _ in range(2):
        da, db = up(torch.randn(2, 6, 8, generator=g) * amp), up(torch.randn(2, 6, 8, generator=g) * amp)
        motions.append(PairMotion(da, db, torch.full((1, h, w), 0.5), torch.full((1, h, w), 0.5)))
    return frames, motions


def to(motions, **kw):
    return [PairMotion(*(t.to(**kw) for t in (m.delta_a, m.delta_b, m.weight_a, m.weight_b))) for m in motions]


# ------------------------------------------------------------------------------------ one warp
RAMP = (0.013, -0.021, 0.5)  # I(x, y) = a x + b y + c


def ramp_image(dtype, h=40, w=60):
    a, b, c = RAMP
    x = pixel_grid(h, w, dtype=torch.float64)
    return (a * x[0] + b * x[1] + c).expand(3, h, w).to(dtype), x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["cv2", "grid_sample"])
@pytest.mark.parametrize("shift", [(0.3, 0.0), (0.0, 0.7), (0.37, -0.41), (-0.5, 0.5), (2.25, -1.75), (0.03, 0.01)])
def test_one_warp_shifts_a_linear_ramp_exactly(dtype, shift):
    """Pixel centres at integer positions, x = column: a constant sub-pixel shift of a linear ramp is
    the ramp at the shifted positions, exactly (no half-pixel offset, no axis swap, no scaling)."""
    a, b, c = RAMP
    img, x = ramp_image(dtype)
    pos = x + torch.tensor(shift, dtype=torch.float64).view(2, 1, 1)
    exact = a * pos[0] + b * pos[1] + c
    out = bilinear(img, pos.to(dtype)).double()
    inner = (slice(None), slice(3, -3), slice(3, -3))  # away from the border (shifts < 3 px)
    err = float((out - exact).abs()[inner].max())
    # cv2: coordinates to the nearest 1/32 px -> (|a| + |b|) / 64 (+ float32 rounding); torch: exact
    tol = (abs(a) + abs(b)) / 64 + 1e-6 if dtype == torch.float32 else 1e-12
    assert err <= tol, (err, tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["cv2", "grid_sample"])
def test_one_warp_clamps_to_the_border_pixel(dtype):
    """Outside the image both paths return the ramp at the position clamped to [0, w-1] x [0, h-1]."""
    a, b, c = RAMP
    img, _ = ramp_image(dtype, 30, 40)
    g = torch.Generator().manual_seed(3)
    pos = torch.stack([torch.rand(2000, generator=g, dtype=torch.float64) * 120 - 40, torch.rand(2000, generator=g, dtype=torch.float64) * 90 - 30])
    cl = torch.stack([pos[0].clamp(0, 39), pos[1].clamp(0, 29)])
    exact = a * cl[0] + b * cl[1] + c
    err = float((bilinear(img, pos.to(dtype)).double() - exact).abs().max())
    tol = (abs(a) + abs(b)) / 64 + 1e-6 if dtype == torch.float32 else 1e-12
    assert err <= tol, (err, tol)


def test_one_warp_paths_agree_on_a_smooth_image():
    frames, _ = smooth_burst(7)
    img = frames[0]
    g = torch.Generator().manual_seed(4)
    pos = torch.stack([torch.rand(5000, generator=g) * (W + 10) - 5, torch.rand(5000, generator=g) * (H + 10) - 5])
    err = float((bilinear(img, pos).double() - bilinear(img.double(), pos.double())).abs().max())
    assert err <= max_step([img]) / 32, (err, max_step([img]) / 32)


# ------------------------------------------------------------------------------------ render_blur
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spline", [False, True])
@pytest.mark.parametrize("soft_gamma", [False, True])
def test_render_blur_paths_agree_on_a_smooth_burst(seed, spline, soft_gamma):
    """float32 (cv2.remap) against float64 (grid_sample), the whole render with curved motion.

    Bound G / 32 (see the module docstring). Straight lines measure ~0.1 of it; spline paths ~0.3-0.7
    (their tangent fields are looked up with cv2 too). Before eq. 7 was made continuous at reversals
    (theta -> pi), the spline render differed by up to ~10x this bound (0.057 on seed 2). With soft
    gamma the bound is not strict (encode, mean, decode), but the errors cancel to the same size
    (measured <= 0.66 G / 32 over seeds 0-5), so the same bound is kept."""
    frames, motions = smooth_burst(seed)
    cfg = RenderConfig(spline=spline, soft_gamma=soft_gamma)
    cpu = render_blur(frames, motions, cfg)
    ref = render_blur([f.double() for f in frames], to(motions, dtype=torch.float64), cfg)
    err = float((cpu.double() - ref).abs().max())
    tol = max_step(frames) / 32
    assert err <= tol, (err, tol)
