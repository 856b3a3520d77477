"""GS-IR stage-1 losses: L1 + D-SSIM on colour, normal consistency, edge-aware normal TV.

All images are [C, H, W] (or [B, C, H, W]) tensors; colours in [0, 1] sRGB as stored in the PNGs.
"""
from __future__ import annotations

import torch

from lumenkit.common.metrics import ssim_map
from lumenkit.gsir.config import Stage1LossWeights

__all__ = ["Stage1LossWeights", "edge_aware_tv", "l1_loss", "normal_consistency_loss", "rgb_loss", "stage1_loss", "truncated_tv"]


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


def rgb_loss(pred: torch.Tensor, target: torch.Tensor, lambda_dssim: float = 0.2) -> torch.Tensor:
    """3DGS photometric loss (1 - lambda) L1 + lambda (1 - SSIM), SSIM with zero padding as 3DGS's
    utils/loss_utils.ssim (common.metrics.ssim_map)."""
    return (1 - lambda_dssim) * l1_loss(pred, target) + lambda_dssim * (1 - ssim_map(pred, target).mean())


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
