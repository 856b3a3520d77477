"""Plain-torch rasterizer maths (3DGS, Kerbl et al. 2023): EWA projection, tile rectangles, depth
order, per-Gaussian depth planes, and the dense reference blending (the ``"reference"`` backend).

Everything here is differentiable by autograd and works in any dtype (float64 gradcheck); the C++
backend (`_cpu`) fuses the same projection maths and is checked against these functions, and the
gsplat backend (`_gsplat`) blends Gaussians projected here. The public entry point is
`lumenkit.gsir.rasterize.rasterize`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lumenkit.gsir.camera import Camera

TILE = 16
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4
COV2D_DILATION = 0.3


class Projected(NamedTuple):
    """Result of `project_gaussians` (N Gaussians).

    means2d [N, 2] pixels; conics [N, 3] (a, b, c) of the inverse 2-D covariance
    (power = -0.5 (a dx^2 + c dy^2) - b dx dy); depths [N] view-space z; radii [N] int32 (0 = culled);
    rects [N, 4] int32 tile rectangle (x0, x1, y0, y1), half-open, in 16-pixel tiles.
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    radii: Tensor
    rects: Tensor


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[N, 4] wxyz quaternions (any norm) -> [N, 3, 3] rotation matrices (3DGS build_rotation).

    Computed on contiguous per-component rows (elementwise ops on strided [N, 4] columns are ~3x
    slower on CPU); the result is a view of a [9, N] row-major block, so ``.reshape(N, 9).T`` gives
    those rows back without a copy."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.movedim(-1, 0).contiguous()
    rows = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ])
    return rows.movedim(0, -1).reshape(*q.shape[:-1], 3, 3)


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """Sigma = R S S^T R^T, [N, 3, 3] from quats [N, 4] wxyz and scales [N, 3] (activated)."""
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(means: Tensor, quats: Tensor, scales: Tensor, camera: Camera) -> Projected:
    """EWA projection of 3-D Gaussians (3DGS `preprocessCUDA` / `computeCov2D`), differentiable.

    means [N, 3] world, quats [N, 4] wxyz, scales [N, 3] > 0. See `Projected` for the outputs.
    Culled Gaussians (behind near / beyond far, degenerate 2-D covariance, or no tile on screen)
    get radius 0 and finite placeholder values.
    """
    W, H = camera.width, camera.height
    R = camera.viewmat[:3, :3].to(means)
    t = camera.viewmat[:3, 3].to(means)
    K = camera.K.to(means)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]

    p = means @ R.T + t
    z = p[:, 2]
    in_frustum = (z > camera.near) & (z < camera.far)
    zs = torch.where(in_frustum, z, torch.ones_like(z))
    # Clamp the Jacobian's evaluation point like 3DGS / gsplat (1.3 x the half field of view).
    tan_fovx, tan_fovy = 0.5 * W / fx, 0.5 * H / fy
    lim_xp, lim_xn = (W - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_yp, lim_yn = (H - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = zs * torch.minimum(torch.maximum(p[:, 0] / zs, -lim_xn), lim_xp)
    ty = zs * torch.minimum(torch.maximum(p[:, 1] / zs, -lim_yn), lim_yp)
    zeros = torch.zeros_like(zs)
    J = torch.stack(
        [fx / zs, zeros, -fx * tx / zs**2, zeros, fy / zs, -fy * ty / zs**2], dim=-1
    ).reshape(-1, 2, 3)
    T = J @ R  # [N, 2, 3]
    cov2d = T @ covariance_3d(quats, scales) @ T.transpose(-1, -2)
    a = cov2d[:, 0, 0] + COV2D_DILATION
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + COV2D_DILATION
    det = a * c - b * b
    ok = in_frustum & (det > 0)
    det_s = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_s, -b / det_s, a / det_s], dim=-1)
    means2d = torch.stack([fx * p[:, 0] / zs + cx, fy * p[:, 1] / zs + cy], dim=-1)

    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt(torch.clamp_min(mid * mid - det, 0.1))
        radii = torch.ceil(3.0 * torch.sqrt(lam))
        radii = torch.where(ok & torch.isfinite(radii), radii, torch.zeros_like(radii))
        rects = tile_rects(means2d.detach(), radii, W, H)
        on_screen = (rects[:, 1] > rects[:, 0]) & (rects[:, 3] > rects[:, 2])
        radii = torch.where(on_screen, radii, torch.zeros_like(radii)).to(torch.int32)
        rects = torch.where((radii > 0)[:, None], rects, torch.zeros_like(rects))
    return Projected(means2d, conics, z, radii, rects)


def tile_rects(means2d: Tensor, radii: Tensor, width: int, height: int) -> Tensor:
    """[N, 4] int32 half-open tile ranges (x0, x1, y0, y1) of the 16x16 tiles that the square
    [mean - r, mean + r] touches, clamped to the image's tile grid. Empty for r = 0."""
    gx, gy = (width + TILE - 1) // TILE, (height + TILE - 1) // TILE
    r = radii.to(means2d.dtype)
    m = means2d.nan_to_num(0.0, 1e9, -1e9).clamp(-1e9, 1e9)
    x0 = torch.floor((m[:, 0] - r) / TILE).clamp(0, gx)
    x1 = (torch.floor((m[:, 0] + r) / TILE) + 1).clamp(0, gx)
    y0 = torch.floor((m[:, 1] - r) / TILE).clamp(0, gy)
    y1 = (torch.floor((m[:, 1] + r) / TILE) + 1).clamp(0, gy)
    rect = torch.stack([x0, x1, y0, y1], dim=-1).to(torch.int32)
    return torch.where((radii > 0)[:, None], rect, torch.zeros_like(rect))


def depth_order(depths: Tensor, radii: Tensor) -> Tensor:
    """Indices [M] of the visible Gaussians (radii > 0) sorted front to back (stable: ties by index)."""
    vis = torch.nonzero(radii > 0).flatten()
    order = torch.argsort(depths.detach()[vis], stable=True)
    return vis[order]


def depth_planes(means: Tensor, quats: Tensor, scales: Tensor, camera: Camera, means2d: Tensor, max_slope: float = 10.0) -> Tensor:
    """[N, 3] per-Gaussian screen-space depth planes (a, pu, pv): z(u, v) = a + pu (u - cx) + pv (v - cy),
    u, v in pixels, z view-space depth.

    The plane is the Gaussian's conditional mean of z given camera x, y (for a flat Gaussian, the
    plane it lies in: z - z0 = g . ([x, y] - [x0, y0]), g = Sigma_zxy Sigma_xy^-1 in camera space),
    intersected with the pixel rays and linearised at the projected centre means2d [N, 2]. Blended
    like a colour, it gives each pixel the depth of the surfaces it sees instead of the Gaussians'
    centre depths (as RaDe-GS / PGSR), so the depth normal of a tilted face is flat. The camera-space
    slope |g| is capped at max_slope (84 deg from facing) so edge-on Gaussians cannot make spikes."""
    # all per-Gaussian quantities as contiguous [N] rows: ~3x faster on CPU than strided [N, k] columns
    N = means.shape[0]
    R = camera.viewmat[:3, :3].to(means)
    K = camera.K.to(means)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    p = R @ means.T + camera.viewmat[:3, 3:4].to(means)  # [3, N] camera space
    z = p[2].clamp_min(camera.near)
    rot = quat_to_rotmat(quats).reshape(N, 9).T  # world rotation, row-major entries [9, N]
    mx, my, mz = (R @ rot.reshape(3, 3 * N)).reshape(3, 3, N) * scales.T[None]  # camera-space Sigma = M M^T, rows [3, N]
    sxx, sxy, syy = (mx * mx).sum(0), (mx * my).sum(0), (my * my).sum(0)
    sxz, syz = (mx * mz).sum(0), (my * mz).sum(0)
    ridge = 1e-6 * (sxx + syy).clamp_min(1e-20)
    sxx, syy = sxx + ridge, syy + ridge
    det = sxx * syy - sxy * sxy
    gx, gy = (syy * sxz - sxy * syz) / det, (sxx * syz - sxy * sxz) / det  # Sigma_xy^-1 Sigma_xy,z
    cap = max_slope / torch.sqrt(gx * gx + gy * gy).clamp_min(max_slope)
    gx, gy = gx * cap, gy * cap
    denom = (1.0 - (gx * p[0] + gy * p[1]) / z).clamp_min(0.1)  # 1 - g . (centre ray slope)
    pu = z * gx / (denom * fx)
    pv = z * gy / (denom * fy)
    a = p[2] - pu * (means2d[:, 0] - cx) - pv * (means2d[:, 1] - cy)
    return torch.stack([a, pu, pv], dim=-1)


# ----------------------------------------------------------------------------------------------
# Blending backends. Signature: (means2d [N,2], conics [N,3], opacities [N], channels [N,C],
# order [M] front-to-back visible ids, rects [N,4], W, H, want_argmax) ->
# (out [C, H, W], argmax [H, W] int64 index of the max-weight Gaussian or -1, or None).
# ----------------------------------------------------------------------------------------------


def pixel_centers(width: int, height: int, device=None, dtype=torch.float32) -> Tensor:
    """[H*W, 2] (x, y) pixel-centre coordinates (j + 0.5, i + 0.5), row-major."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype) + 0.5,
        torch.arange(width, device=device, dtype=dtype) + 0.5,
        indexing="ij",
    )
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1)


def blend_reference(means2d: Tensor, conics: Tensor, opacities: Tensor, channels: Tensor, order: Tensor,
                    rects: Tensor, width: int, height: int, want_argmax: bool = False):
    """Dense plain-torch front-to-back blending (memory O(M * H * W)); autograd for gradients."""
    C = channels.shape[1]
    if order.numel() == 0:
        out = channels.new_zeros(C, height, width) + 0.0 * channels.sum()
        return out, (torch.full((height, width), -1, dtype=torch.long, device=channels.device) if want_argmax else None)
    pix = pixel_centers(width, height, channels.device, means2d.dtype)
    m, con, o = means2d[order], conics[order], opacities[order]
    rect = rects[order]
    d = m[:, None, :] - pix[None, :, :]  # [M, P, 2] mean - pixel, as 3DGS
    dx, dy = d[..., 0], d[..., 1]
    power = -0.5 * (con[:, 0:1] * dx * dx + con[:, 2:3] * dy * dy) - con[:, 1:2] * dx * dy
    alpha = torch.clamp(o[:, None] * torch.exp(power), max=ALPHA_MAX)
    tx = (torch.arange(width, device=channels.device) // TILE).repeat(height)
    ty = (torch.arange(height, device=channels.device) // TILE).repeat_interleave(width)
    in_tile = (
        (tx[None] >= rect[:, 0:1]) & (tx[None] < rect[:, 1:2]) & (ty[None] >= rect[:, 2:3]) & (ty[None] < rect[:, 3:4])
    )
    keep = in_tile & (power <= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    T_after = torch.cumprod(1.0 - alpha, dim=0)
    T_before = torch.cat([torch.ones_like(T_after[:1]), T_after[:-1]], dim=0)
    included = T_after >= T_MIN  # a prefix per pixel: T only decreases
    w = torch.where(included, alpha * T_before, torch.zeros_like(alpha))  # [M, P]
    out = (w.T @ channels[order]).T.reshape(C, height, width)
    argmax = None
    if want_argmax:
        with torch.no_grad():
            wmax, idx = w.max(dim=0)
            argmax = torch.where(wmax > 0, order[idx], torch.full_like(idx, -1)).reshape(height, width)
    return out, argmax
