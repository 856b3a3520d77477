"""GS-IR stage-1 losses: L1 + D-SSIM on colour, normal consistency, edge-aware normal TV.

All images are [C, H, W] (or [B, C, H, W]) tensors; colours in [0, 1] sRGB as stored in the PNGs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


def _gaussian_1d(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Differentiable mean SSIM as 3DGS's utils/loss_utils.ssim (11x11 Gaussian window, sigma 1.5,
    zero padding 'same', C1 = 0.01^2, C2 = 0.03^2). The separable window is applied as two 1-D
    convolutions to the five statistics at once (same values as the 2-D window, fewer FLOPs)."""
    p = pred[None] if pred.dim() == 3 else pred
    t = target[None] if target.dim() == 3 else target
    c = p.shape[1]
    g = _gaussian_1d(window_size, sigma, p.device, p.dtype)
    k = 5 * c
    pad = window_size // 2
    stats = torch.cat([p, t, p * p, t * t, p * t], 1)
    stats = F.conv2d(stats, g.reshape(1, 1, 1, -1).expand(k, 1, 1, window_size), padding=(0, pad), groups=k)
    stats = F.conv2d(stats, g.reshape(1, 1, -1, 1).expand(k, 1, window_size, 1), padding=(pad, 0), groups=k)
    mu1, mu2, e11, e22, e12 = stats.split(c, 1)
    s11, s22, s12 = e11 - mu1**2, e22 - mu2**2, e12 - mu1 * mu2
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    return m.mean()


def rgb_loss(pred: torch.Tensor, target: torch.Tensor, lambda_dssim: float = 0.2) -> torch.Tensor:
    """3DGS photometric loss (1 - lambda) L1 + lambda (1 - SSIM)."""
    return (1 - lambda_dssim) * l1_loss(pred, target) + lambda_dssim * (1 - ssim(pred, target))


def normal_consistency_loss(normal_map: torch.Tensor, normal_from_depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GS-IR: L1 between the rendered normal map [3, H, W] and the normal from depth [3, H, W], over the
    pixels where mask [H, W] (or [1, H, W]) is true. Zero when the mask is empty."""
    m = mask.reshape(mask.shape[-2:]).bool()
    if not bool(m.any()):
        return normal_map.sum() * 0.0
    return (normal_map[:, m] - normal_from_depth[:, m]).abs().mean()


def edge_aware_tv(data: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """GS-IR's normal TV (train.py get_tv_loss, pad 1, step 1): squared forward differences weighted
    by exp(-mean_c |d image_c|), each direction averaged over channels and pixels, the two summed:
    mean((d_y data)^2 * w_y) + mean((d_x data)^2 * w_x).

    data: [C, H, W] (the normal map); image: [3, H, W] (the GT image). Smooth image regions
    (weight ~ 1) penalise normal changes; image edges (weight ~ 0) leave them free. Squared, not L1:
    small normal noise costs little, so the TV smooths without overpowering the consistency term.
    """
    dx = (data[:, :, 1:] - data[:, :, :-1]) ** 2
    dy = (data[:, 1:, :] - data[:, :-1, :]) ** 2
    wx = torch.exp(-(image[:, :, 1:] - image[:, :, :-1]).abs().mean(0, keepdim=True))
    wy = torch.exp(-(image[:, 1:, :] - image[:, :-1, :]).abs().mean(0, keepdim=True))
    return (dy * wy).mean() + (dx * wx).mean()


def truncated_tv(data: torch.Tensor, mask: torch.Tensor, max_step: float, order: int = 1) -> torch.Tensor:
    """L1 total variation that ignores large steps: over the horizontal and vertical runs of order + 1
    neighbours that are all inside mask [H, W], sum the L1 (over the C channels of data [C, H, W]) of
    the order-th difference (order 1: d(x+1) - d(x); order 2: d(x+1) - 2 d(x) + d(x-1)) where it is
    < max_step, divided by the number of mask pixels. Zero when the mask is empty.

    On a normal map, small differences (noise and rounding within a face) are penalised and a
    crease's (> max_step; a unit normal turning by t radians moves by about t in L1 per pixel it is
    spread over) is left free, so faces flatten without their edges being rounded. Order 1 is zero
    only on a constant normal, so it also pulls a curved surface (whose normal turns steadily)
    towards facets; order 2 is zero on any normal that changes linearly across the image, so a
    sphere or a cylinder is left alone while noise is still smoothed."""
    if order not in (1, 2):
        raise ValueError(f"truncated_tv order {order}: expected 1 or 2")
    m = mask.reshape(mask.shape[-2:]).to(data.dtype)
    # order-th difference along x / y, kept where all order + 1 pixels of its run are in the mask
    dx = torch.diff(data, n=order, dim=2).abs().sum(0) * m.unfold(1, order + 1, 1).prod(-1)
    dy = torch.diff(data, n=order, dim=1).abs().sum(0) * m.unfold(0, order + 1, 1).prod(-1)
    dx = dx * (dx.detach() < max_step)
    dy = dy * (dy.detach() < max_step)
    return (dx.sum() + dy.sum()) / m.sum().clamp_min(1)


@dataclass
class Stage1LossWeights:
    """GS-IR stage-1 weights: 0.8 L1 + 0.2 D-SSIM + 1.0 normal consistency + 5.0 normal TV."""

    lambda_dssim: float = 0.2
    lambda_normal: float = 1.0
    lambda_normal_tv: float = 5.0
    # lumenkit additions (0 / False = GS-IR exactly): consistency only where the rendered opacity
    # exceeds this; TV on the unit normal map times the detached opacity
    normal_min_opacity: float = 0.5
    tv_opacity_weighted: bool = True
    # lumenkit addition (0 = GS-IR): the same consistency with the roles swapped, L1 between the
    # normal from the rendered depth (gradient to the geometry) and the detached rendered normal map,
    # so the surface the depth describes flattens towards the smooth learned normals
    lambda_depth_normal: float = 0.0
    # lumenkit addition (0 = GS-IR): mean of each Gaussian's smallest scale (scene units), pushing the
    # Gaussians towards flat discs that lie in the surface (as in GaussianShader / NeuSG)
    lambda_flatten: float = 0.0
    # lumenkit addition (0 = GS-IR): 2DGS's depth distortion, the mean over pixels of
    # 1/2 sum_ij w_i w_j (z_i - z_j)^2 (rasterize's distortion_map, scene units^2): blend weights
    # gather at one depth per pixel instead of spreading through semi-transparent layers
    lambda_distortion: float = 0.0
    # lumenkit addition (0 = GS-IR): truncated_tv of the normal from the rendered depth (gradient to
    # the geometry) inside the consistency mask, steps >= depth_normal_tv_max_step (creases) left free:
    # faces become flat without their edges being rounded. Trains with the depth-normal term.
    # Order 2 penalises the second difference instead, which is zero on curved surfaces too.
    lambda_depth_normal_tv: float = 0.0
    depth_normal_tv_max_step: float = 0.25
    depth_normal_tv_order: int = 1


def stage1_loss(render_pkg: dict, gt_image: torch.Tensor, w: Stage1LossWeights, scales: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Total stage-1 loss and its terms. render_pkg needs render, normal_map (unit), and for the
    normal terms normal_map_from_depth, normal_from_depth_mask; optional normal_map_raw (the blended,
    opacity-weighted normals) and opacity_map (see pipeline.render); distortion_map when
    lambda_distortion > 0 (render with depth_distortion=True); normal_map_from_depth_grad when
    lambda_depth_normal or lambda_depth_normal_tv > 0 (render with depth_normal_grad=True).

    scales: the Gaussians' activated scales [N, 3], needed when lambda_flatten > 0.

    Consistency uses the unit normal map where the depth normal is valid and the rendered opacity is
    > 0.5 (so normalisation never divides by a near-zero blend); the TV acts on the unit normal map
    times the (detached) opacity: empty space counts zero, and the TV cannot be lowered by fading
    Gaussians out (which a TV on the raw blended normals would reward).
    """
    terms = {"rgb": rgb_loss(render_pkg["render"], gt_image, w.lambda_dssim)}
    if w.lambda_normal > 0:
        mask = render_pkg["normal_from_depth_mask"]
        if "opacity_map" in render_pkg and w.normal_min_opacity > 0:
            mask = mask & (render_pkg["opacity_map"].detach()[0] > w.normal_min_opacity)
        terms["normal"] = normal_consistency_loss(render_pkg["normal_map"], render_pkg["normal_map_from_depth"], mask)
        if w.lambda_depth_normal > 0:
            terms["depth_normal"] = normal_consistency_loss(render_pkg["normal_map_from_depth_grad"], render_pkg["normal_map"].detach(), mask)
        if w.lambda_depth_normal_tv > 0:
            terms["depth_normal_tv"] = truncated_tv(render_pkg["normal_map_from_depth_grad"], mask, w.depth_normal_tv_max_step,
                                                     w.depth_normal_tv_order)
    if w.lambda_normal_tv > 0:
        n = render_pkg["normal_map"]
        if "opacity_map" in render_pkg and w.tv_opacity_weighted:
            n = n * render_pkg["opacity_map"].detach()
        terms["normal_tv"] = edge_aware_tv(n, gt_image)
    if w.lambda_distortion > 0:
        terms["distortion"] = render_pkg["distortion_map"].mean()
    if w.lambda_flatten > 0:
        terms["flatten"] = scales.min(dim=1).values.mean()
    total = (terms["rgb"] + w.lambda_flatten * terms.get("flatten", 0.0) + w.lambda_normal * terms.get("normal", 0.0) + w.lambda_normal_tv * terms.get("normal_tv", 0.0)
             + w.lambda_depth_normal * terms.get("depth_normal", 0.0) + w.lambda_distortion * terms.get("distortion", 0.0)
             + w.lambda_depth_normal_tv * terms.get("depth_normal_tv", 0.0))
    return total, {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()}
