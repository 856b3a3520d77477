"""Real spherical harmonics colour, exactly as 3DGS (`utils/sh_utils.py`, degrees 0..3).

`eval_sh` evaluates view-dependent colour from SH coefficients; `rgb_to_sh0` / `sh0_to_rgb` convert
between a plain colour and the degree-0 coefficient (3DGS: colour = SH_C0 * dc + 0.5).
Everything is plain torch, so autograd gives the gradients.
"""
from __future__ import annotations

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    """Number of coefficients K = (degree + 1)^2 for degree 0..3."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    return (degree + 1) ** 2


def eval_sh(degree: int, sh: Tensor, dirs: Tensor) -> Tensor:
    """Evaluate real SH (3DGS constants and sign conventions).

    sh: [..., K, C] coefficients with K >= (degree + 1)^2 (extra ones ignored);
    dirs: [..., 3] unit view directions (from the camera centre to the point).
    Returns [..., C] (without the +0.5 offset; see `sh_to_color`).
    """
    k = num_sh_bases(degree)
    if sh.shape[-2] < k:
        raise ValueError(f"sh has {sh.shape[-2]} coefficients, degree {degree} needs {k}")
    # unbind (not slicing): one backward node instead of a zero-filled [..., K, C] tensor per coefficient
    s = sh[..., :k, :].unbind(-2)
    result = SH_C0 * s[0]
    if degree == 0:
        return result
    x, y, z = (c[..., None] for c in dirs.unbind(-1))
    result = result - SH_C1 * y * s[1] + SH_C1 * z * s[2] - SH_C1 * x * s[3]
    if degree == 1:
        return result
    xx, yy, zz = x * x, y * y, z * z
    xy, yz, xz = x * y, y * z, x * z
    result = (
        result
        + SH_C2[0] * xy * s[4]
        + SH_C2[1] * yz * s[5]
        + SH_C2[2] * (2.0 * zz - xx - yy) * s[6]
        + SH_C2[3] * xz * s[7]
        + SH_C2[4] * (xx - yy) * s[8]
    )
    if degree == 2:
        return result
    return (
        result
        + SH_C3[0] * y * (3 * xx - yy) * s[9]
        + SH_C3[1] * xy * z * s[10]
        + SH_C3[2] * y * (4 * zz - xx - yy) * s[11]
        + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * s[12]
        + SH_C3[4] * x * (4 * zz - xx - yy) * s[13]
        + SH_C3[5] * z * (xx - yy) * s[14]
        + SH_C3[6] * x * (xx - 3 * yy) * s[15]
    )


def sh_to_color(sh: Tensor, means: Tensor, camera_center: Tensor, degree: int) -> Tensor:
    """View-dependent colour as 3DGS: clamp_min(eval_sh(dir) + 0.5, 0).

    sh: [N, K, 3]; means: [N, 3] world; camera_center: [3] world. Returns [N, 3] (linear, >= 0).
    """
    dirs = means - camera_center.to(means)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.clamp_min(eval_sh(degree, sh, dirs) + 0.5, 0.0)


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """Colour [..., 3] -> degree-0 coefficient [..., 3] (3DGS RGB2SH)."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    """Degree-0 coefficient [..., 3] -> colour [..., 3] (3DGS SH2RGB)."""
    return sh0 * SH_C0 + 0.5
