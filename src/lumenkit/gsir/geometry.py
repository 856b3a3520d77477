"""Normals from a depth map, as GS-IR's ``depthmapToNormalCUDA`` (seed 000, stage 1), vectorised in torch.

Per pixel (x, y) of a view-space z-depth map:
1. border pixels (x = 0, x = W - 1, y = 0, y = H - 1) get no normal;
2. pixels with depth < 0.01 are invalid and get no normal;
3. a pixel gets no normal if any pixel of its +-2 neighbourhood (5 x 5 window, pixels inside the
   image) is invalid;
4. the pixel and its left/right/up/down neighbours are back-projected to camera space
   (X = (u - cx) / fx * z, Y = (v - cy) / fy * z, Z = z at pixel centres u = x + 0.5, v = y + 0.5);
5. per axis, the finite difference is taken towards the neighbour whose depth differs less from the
   centre's (ddx = right - centre or centre - left; ddy = down - centre or centre - up);
6. n = normalize(cross(ddx, ddy)), oriented towards the camera (for OpenCV axes, x right and y down,
   that is cross(ddy, ddx)), then rotated to world space with the view matrix's rotation
   (n_world = R^T n_cam). Output [3, H, W], zeros where no normal was computed.

`normals_from_depth` adds GS-IR's two masks: ``mask_from_depth`` ([1, H, W], true where the normal is
all zero, i.e. to be replaced by ``normal_bg``) and ``normal_from_depth_mask`` ([H, W], true where all
three channels of the (replaced) normal map are non-zero, GS-IR's literal rule: a valid normal with
an exactly zero component is excluded too).

GS-IR's CUDA op has no backward, so its normal-consistency loss only moves the rendered normal map;
this torch version is differentiable, pass ``depth.detach()`` to reproduce GS-IR.

lumenkit option ``side_rule="curvature"`` (not GS-IR): step 5 picks, per axis, the side whose second
difference is smaller (|z(x+2) - 2 z(x+1) + z(x)| vs |z(x) - 2 z(x-1) + z(x-2)|), i.e. the side on which the
surface continues linearly. At a crease of two planes the depth is continuous, so GS-IR's smaller-step
rule often differentiates across the crease; the curvature rule stays on the pixel's own face (on GT
depth of the benchmark scene: crease pixels 13.6 -> 3.6 degrees, flat faces 1.1 -> 1.1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lumenkit.gsir.camera import Camera

MIN_DEPTH = 0.01


def backproject_depth(depth: Tensor, camera: Camera) -> Tensor:
    """View-space z-depth [H, W] -> camera-space points [3, H, W] (OpenCV axes, pixel centres x + 0.5)."""
    H, W = depth.shape[-2:]
    K = camera.K.to(depth)
    u = torch.arange(W, device=depth.device, dtype=depth.dtype) + 0.5
    v = torch.arange(H, device=depth.device, dtype=depth.dtype) + 0.5
    x = ((u - K[0, 2]) / K[0, 0])[None, :] * depth
    y = ((v - K[1, 2]) / K[1, 1])[:, None] * depth
    return torch.stack([x, y, depth], dim=0)


def valid_normal_pixels(depth: Tensor, min_depth: float = MIN_DEPTH) -> Tensor:
    """[H, W] bool: not a border pixel, depth >= min_depth, and no invalid depth within +-2 pixels."""
    H, W = depth.shape[-2:]
    invalid = (depth < min_depth).to(depth.dtype)
    near_invalid = F.max_pool2d(invalid[None, None], kernel_size=5, stride=1, padding=2)[0, 0] > 0
    border = torch.zeros(H, W, dtype=torch.bool, device=depth.device)
    border[0, :] = border[-1, :] = True
    border[:, 0] = border[:, -1] = True
    return ~near_invalid & ~border


SIDE_RULES = ("depth", "curvature")


def depth_to_normal(depth: Tensor, camera: Camera, min_depth: float = MIN_DEPTH, side_rule: str = "depth") -> Tensor:
    """World-space unit normals [3, H, W] from a view-space z-depth map [1, H, W] or [H, W] (see module doc).

    side_rule: "depth" (GS-IR: the neighbour with the smaller depth step) or "curvature" (the side with
    the smaller second difference). Pixels without a normal are zero. Differentiable w.r.t. depth.
    """
    d = depth.reshape(depth.shape[-2:])
    if d.shape != (camera.height, camera.width):
        raise ValueError(f"depth is {tuple(d.shape)}, camera is {camera.height}x{camera.width}")
    P = backproject_depth(d, camera)  # [3, H, W]
    Pp = F.pad(P[None], (1, 1, 1, 1), mode="replicate")[0]
    dp = F.pad(d[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    left, right = Pp[:, 1:-1, :-2], Pp[:, 1:-1, 2:]
    up, down = Pp[:, :-2, 1:-1], Pp[:, 2:, 1:-1]
    d_left, d_right = dp[1:-1, :-2], dp[1:-1, 2:]
    d_up, d_down = dp[:-2, 1:-1], dp[2:, 1:-1]
    if side_rule == "depth":
        use_right = (d_right - d).abs() < (d_left - d).abs()
        use_down = (d_down - d).abs() < (d_up - d).abs()
    elif side_rule == "curvature":
        d2 = F.pad(d[None, None], (2, 2, 2, 2), mode="replicate")[0, 0]
        H, W = d.shape
        d_right2, d_left2 = d2[2:2 + H, 4:], d2[2:2 + H, :W]
        d_down2, d_up2 = d2[4:, 2:2 + W], d2[:H, 2:2 + W]
        use_right = (d_right2 - 2 * d_right + d).abs() < (d - 2 * d_left + d_left2).abs()
        use_down = (d_down2 - 2 * d_down + d).abs() < (d - 2 * d_up + d_up2).abs()
    else:
        raise ValueError(f"side_rule {side_rule!r}: expected one of {SIDE_RULES}")
    ddx = torch.where(use_right[None], right - P, P - left)
    ddy = torch.where(use_down[None], down - P, P - up)
    n = torch.cross(ddy, ddx, dim=0)  # faces the camera in OpenCV axes (y down)
    valid = valid_normal_pixels(d, min_depth)
    norm = n.norm(dim=0, keepdim=True)
    valid = valid & (norm[0] > 0)
    n = n / torch.where(valid[None], norm, torch.ones_like(norm))
    R = camera.viewmat[:3, :3].to(n)
    n_world = torch.einsum("ji,jhw->ihw", R, n)  # R^T n
    return torch.where(valid[None], n_world, torch.zeros_like(n_world))


def normals_from_depth(depth: Tensor, camera: Camera, normal_bg: Tensor | None = None,
                       min_depth: float = MIN_DEPTH, side_rule: str = "depth") -> dict[str, Tensor]:
    """GS-IR's depth-normal outputs.

    Returns normal_map_from_depth [3, H, W] (all-zero normals replaced by normal_bg [3], default
    zeros), mask_from_depth [1, H, W] bool (true = the normal was all zero and was replaced) and
    normal_from_depth_mask [H, W] bool (true = all three channels non-zero).
    """
    n = depth_to_normal(depth, camera, min_depth, side_rule)
    mask_from_depth = (n == 0).all(dim=0, keepdim=True)
    if normal_bg is not None:
        n = torch.where(mask_from_depth, normal_bg.to(n).reshape(3, 1, 1), n)
    return {
        "normal_map_from_depth": n,
        "mask_from_depth": mask_from_depth,
        "normal_from_depth_mask": (n != 0).all(dim=0),
    }
