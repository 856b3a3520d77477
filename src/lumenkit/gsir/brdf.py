"""The split-sum environment BRDF of GS-IR's stage 2 (Karis 2013, "Real Shading in Unreal Engine 4").

Split-sum: the specular image-based lighting integral is approximated by prefiltered radiance times
    integral f_GGX cos dw = F0 * A(NoV, roughness) + B(NoV, roughness),
and (A, B) are tabulated once, by GGX importance sampling, in a [256, 256, 2] LUT.

Conventions (Karis 2013, which the GS-IR / nvdiffrec shading follows)
--------------------------------------------------------------------
* roughness is the perceptual roughness r in [0, 1]; the GGX width is alpha = r^2.
* Geometry term: separable Smith with Schlick's G1(x) = x / (x (1 - k) + k) and k = alpha / 2
  (Karis' choice for image-based lighting, not the (r + 1)^2 / 8 of analytic lights).
* Fresnel: Schlick, Fc = (1 - VoH)^5; A = mean((1 - Fc) G_vis), B = mean(Fc G_vis) with
  G_vis = G VoH / (NoH NoV) over samples H ~ D(H) NoH (Hammersley points).
* LUT layout: ``lut[i, j] = (A, B)`` at NoV = (i + 0.5) / 256, roughness = (j + 0.5) / 256 (texel
  centres); `lookup_brdf_lut` interpolates bilinearly and clamps at the borders (as nvdiffrast's
  texture(..., boundary_mode="clamp") does for GS-IR's table). Dimensionless, linear.

The table ships as ``assets/brdf_lut.safetensors`` (`write_brdf_lut` regenerates it:
``python -m lumenkit.gsir.brdf``); `env_brdf_approx` is Lazarov's analytic fit (Karis 2014, "Physically
Based Shading on Mobile") for cross-checking it.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

LUT_RES = 256
LUT_SAMPLES = 4096  # per LUT texel when the shipped asset was made
LUT_PATH = Path(__file__).parent / "assets" / "brdf_lut.safetensors"


def hammersley(n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> Tensor:
    """The 2D Hammersley point set [n, 2] in [0, 1): (i / n, radical inverse of i in base 2)."""
    i = torch.arange(n, device=device, dtype=torch.int64)
    bits = torch.zeros_like(i, dtype=dtype)
    scale = 0.5
    for b in range(max(1, (n - 1).bit_length())):
        bits = bits + ((i >> b) & 1).to(dtype) * scale
        scale *= 0.5
    return torch.stack([i.to(dtype) / n, bits], dim=-1)


def sample_ggx_half_vectors(xi: Tensor, alpha: Tensor) -> Tensor:
    """GGX importance sampling of half vectors, pdf D(h) (n.h), in the tangent frame (normal = +z).

    xi: [S, 2] uniform points; alpha: [...] GGX width (roughness^2). Returns unit vectors [..., S, 3].
    cos(theta_h) = sqrt((1 - xi_1) / (1 + (alpha^2 - 1) xi_1)), phi = 2 pi xi_0 (Karis 2013).
    """
    a2 = (alpha * alpha)[..., None]
    u, v = xi[:, 0], xi[:, 1]
    cos_t = torch.sqrt((1.0 - v) / (1.0 + (a2 - 1.0) * v))
    sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp_min(0.0))
    phi = 2.0 * torch.pi * u
    return torch.stack([sin_t * torch.cos(phi), sin_t * torch.sin(phi), cos_t], dim=-1)


def smith_schlick_g(nov: Tensor, nol: Tensor, roughness: Tensor) -> Tensor:
    """Separable Smith-Schlick geometry term G = G1(NoV) G1(NoL), k = alpha / 2 = roughness^2 / 2 (IBL)."""
    k = roughness * roughness / 2.0

    def g1(x: Tensor) -> Tensor:
        return x / (x * (1.0 - k) + k)

    return g1(nov) * g1(nol)


def split_sum_terms(nov: Tensor, roughness: Tensor, samples: int = 1024) -> Tensor:
    """(A, B) [..., 2] of the split-sum environment BRDF by GGX importance sampling (Karis 2013).

    nov: [...] cosine between normal and view in (0, 1]; roughness: [...] perceptual roughness in [0, 1],
    broadcastable to nov. Computed in the dtype of nov (use float64 for tables).
    """
    nov, roughness = torch.broadcast_tensors(nov, roughness)
    h = sample_ggx_half_vectors(hammersley(samples, nov.device, nov.dtype), roughness * roughness)
    view = torch.stack([torch.sqrt((1.0 - nov * nov).clamp_min(0.0)), torch.zeros_like(nov), nov], dim=-1)
    voh = (view[..., None, :] * h).sum(-1)  # [..., S]
    nol = 2.0 * voh * h[..., 2] - nov[..., None]  # z of L = 2 (v.h) h - v
    noh = h[..., 2]
    nov_s, r_s = nov[..., None], roughness[..., None]
    g_vis = smith_schlick_g(nov_s, nol.clamp_min(0.0), r_s) * voh.clamp_min(0.0) / (noh * nov_s)
    g_vis = torch.where(nol > 0.0, g_vis, torch.zeros_like(g_vis))
    fc = (1.0 - voh.clamp(0.0, 1.0)) ** 5
    return torch.stack([((1.0 - fc) * g_vis).mean(-1), (fc * g_vis).mean(-1)], dim=-1)


def lut_coordinates(res: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> Tensor:
    """Texel-centre coordinates [res] = (i + 0.5) / res used on both LUT axes."""
    return (torch.arange(res, device=device, dtype=dtype) + 0.5) / res


def compute_brdf_lut(res: int = LUT_RES, samples: int = LUT_SAMPLES, device: torch.device | str = "cpu",
                     rows_per_chunk: int = 16) -> Tensor:
    """The split-sum LUT [res, res, 2] float32: lut[i, j] = (A, B) at NoV_i, roughness_j (texel centres).

    Computed in float64, `rows_per_chunk` NoV rows at a time (memory ~ rows * res * samples * 8 bytes * ~10).
    """
    coords = lut_coordinates(res, device)
    chunks = [split_sum_terms(coords[i:i + rows_per_chunk, None], coords[None, :], samples)
              for i in range(0, res, rows_per_chunk)]
    return torch.cat(chunks, dim=0).float()


def write_brdf_lut(path: str | Path = LUT_PATH, res: int = LUT_RES, samples: int = LUT_SAMPLES) -> Path:
    """Compute the LUT and store it as safetensors (key "lut", [res, res, 2] float32) at `path`."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lut": compute_brdf_lut(res, samples).contiguous()}, str(path),
              metadata={"samples": str(samples), "layout": "[NoV, roughness, (A, B)], texel centres (i + 0.5) / res",
                        "model": "GGX, Smith-Schlick k = roughness^2 / 2, Schlick Fresnel (Karis 2013)"})
    return path


@functools.lru_cache(maxsize=8)
def _load_brdf_lut_cached(path: str, device: str) -> Tensor:
    from safetensors.torch import load_file

    from lumenkit.common.errors import LumenkitError

    if not Path(path).is_file():
        raise LumenkitError(f"{path}: BRDF LUT missing; regenerate it with `python -m lumenkit.gsir.brdf`")
    return load_file(path, device=device)["lut"]


def load_brdf_lut(device: torch.device | str = "cpu", path: str | Path = LUT_PATH) -> Tensor:
    """The shipped split-sum LUT [256, 256, 2] float32 on `device` (read once per device, then cached)."""
    return _load_brdf_lut_cached(str(path), str(torch.device(device)))


def lookup_brdf_lut(nov: Tensor, roughness: Tensor, lut: Tensor | None = None) -> Tensor:
    """fg = (A, B) [..., 2] at (NoV, roughness), bilinear between texel centres, clamped at the borders.

    nov, roughness: [...] (broadcastable) in [0, 1]; lut: [R, R, 2] (default: the shipped table on
    nov's device). Differentiable in nov and roughness (grid_sample).
    """
    lut = load_brdf_lut(nov.device) if lut is None else lut
    nov, roughness = torch.broadcast_tensors(nov, roughness)
    shape = nov.shape
    # grid_sample: x indexes the width axis (roughness, lut dim 1), y the height axis (NoV, lut dim 0)
    grid = torch.stack([roughness.reshape(-1), nov.reshape(-1)], dim=-1).to(lut.dtype) * 2.0 - 1.0
    image = lut.permute(2, 0, 1)[None]  # [1, 2, R_nov, R_rough]
    fg = F.grid_sample(image, grid[None, None], mode="bilinear", padding_mode="border", align_corners=False)
    return fg[0, :, 0].T.reshape(*shape, 2)


def env_brdf_approx(nov: Tensor, roughness: Tensor) -> Tensor:
    """Lazarov's analytic fit of (A, B) [..., 2] (Karis 2014, EnvBRDFApprox), a cross-check of the LUT.

    nov, roughness: [...] broadcastable, in [0, 1].
    """
    c0 = torch.tensor([-1.0, -0.0275, -0.572, 0.022], dtype=nov.dtype, device=nov.device)
    c1 = torch.tensor([1.0, 0.0425, 1.04, -0.04], dtype=nov.dtype, device=nov.device)
    nov, roughness = torch.broadcast_tensors(nov, roughness)
    r = roughness[..., None] * c0 + c1
    a004 = torch.minimum(r[..., 0] * r[..., 0], torch.exp2(-9.28 * nov)) * r[..., 0] + r[..., 1]
    return torch.stack([-1.04 * a004 + r[..., 2], 1.04 * a004 + r[..., 3]], dim=-1)


if __name__ == "__main__":
    print(write_brdf_lut())
