"""GS-IR's volumes: baked occlusion SH (`recon_occlusion`) and learnable irradiance SH (`IrradianceVolumes`).

The maths of GS-IR (Liang et al., CVPR 2024, sec. 3.3 and the official ``gs-ir`` CUDA extension) in
plain vectorised torch:

* SH on the sphere: `sh_basis` (real, orthonormal), `latlong_directions` (a lat-long grid with exact
  cell solid angles), `sh_project` (integral of f Y dOmega), `sh_evaluate` (sum c Y).
* `normal_aware_trilinear`: trilinear weights over the 8 grid corners around a point, a corner
  counting only if dot(corner - p, n) > 0, renormalised (sum 0 -> eps, i.e. all weights 0), as
  GS-IR's ``sparse_interpolate_coefficients``.
* `sh_reconstruction`: mean over 256 Hammersley GGX samples around a lobe of clamp(sum c Y, 0, 1);
  with roughness 1 GGX's half vectors are cosine-distributed, so this is the cosine-weighted
  visibility V(n) = 1/pi int V(w) (n.w)+ dw (GS-IR's ``SH_reconstruction``). The 256 sample values
  come from 36 basis evaluations per lobe (`lobe_transfer`, exact for degree <= 3 SH).
* `OcclusionVolume` (the baked file, see `save_occlusion_volume` / `load_occlusion_volume`) and
  `recon_occlusion`; `IrradianceVolumes` (64^3 grid of 9 SH coefficients per channel).

Conventions. SH degree here is the largest band index l (sh.py's convention): degree 3 = 4 bands =
16 coefficients (GS-IR's "degree 4", d2 = 16); degree 2 = 9 coefficients (GS-IR's "degree 3").
The basis is 3DGS's (sh.py's constants, signs and order: index l^2 + l + m, with the Condon-Shortley
phase, e.g. Y_1,-1 = -C1 y, Y_10 = C1 z, Y_11 = -C1 x), which is orthonormal on the unit sphere
(tests/gsir/test_volumes.py checks int Y_i Y_j dOmega = delta_ij). Directions are world-space unit
vectors; the grid of a volume has res points per axis at -bound + i * 2 bound / (res - 1) (GS-IR's),
indexed [ix, iy, iz] along world x, y, z.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from lumenkit.common.errors import LumenkitError
from lumenkit.gsir.sh import SH_C0, SH_C1, SH_C2, SH_C3

__all__ = ["IRRADIANCE_SH_DEGREE", "OCCLUSION_FORMAT", "OCCLUSION_SH_DEGREE", "IrradianceVolumes", "OcclusionVolume", "ggx_half_vectors",
           "hammersley", "interpolate_occlusion", "latlong_directions", "load_occlusion_volume", "normal_aware_trilinear",
           "normalise_weights", "recon_occlusion", "sample_lobe_directions", "save_occlusion_volume", "sh_basis", "sh_evaluate",
           "sh_project", "sh_projection_matrix", "sh_reconstruction", "tangent_frames"]

OCCLUSION_SH_DEGREE = 3  # 16 coefficients (GS-IR: degree 4 = bands, d2 = 16)
IRRADIANCE_SH_DEGREE = 2  # 9 coefficients (GS-IR: degree 3)
OCCLUSION_FORMAT = "lumenkit-gsir-occlusion"
WEIGHT_EPS = 1e-4  # GS-IR's EPS for an all-zero weight sum


# ================================================================================ SH on the sphere
def num_coefficients(degree: int) -> int:
    """(degree + 1)^2 coefficients for SH degree 0..3."""
    if not 0 <= int(degree) <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    return (int(degree) + 1) ** 2


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """Real orthonormal SH Y_k(dirs), k = 0..(degree+1)^2 - 1, with sh.py's (3DGS's) constants and signs.

    dirs: [..., 3] unit vectors. Returns [..., (degree + 1)^2]; ``sh_basis(d, D) @ c`` equals
    ``sh.eval_sh(D, c, d)`` for coefficients c [K, C]."""
    num_coefficients(degree)
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * x * z, SH_C2[4] * (xx - yy)]
    if degree >= 3:
        out += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * x * y * z, SH_C3[2] * y * (4 * zz - xx - yy),
                SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy), SH_C3[5] * z * (xx - yy),
                SH_C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, dim=-1)


def latlong_directions(height: int, width: int, *, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """A lat-long grid of the sphere: cell-centre directions [H, W, 3] and exact cell solid angles [H, W] (sr).

    Row i spans polar angle theta in [i, i + 1] * pi / H from +z (world up in lumenkit's scenes),
    column j azimuth phi in [j, j + 1] * 2 pi / W - pi around z; direction (sin t cos p, sin t sin p,
    cos t) at the cell centre; solid angle (cos t0 - cos t1) * 2 pi / W, summing to 4 pi exactly.
    (GS-IR samples nvdiffrec's y-up map at the cells' corners; the SH are world-space either way.)"""
    theta_edges = torch.arange(height + 1, dtype=torch.float64) * (math.pi / height)
    theta = (theta_edges[:-1] + theta_edges[1:]) / 2
    phi = (torch.arange(width, dtype=torch.float64) + 0.5) * (2 * math.pi / width) - math.pi
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    dirs = torch.stack([t.sin() * p.cos(), t.sin() * p.sin(), t.cos()], dim=-1)
    band = torch.cos(theta_edges[:-1]) - torch.cos(theta_edges[1:])  # [H]
    solid_angle = (band[:, None] * (2 * math.pi / width)).expand(height, width)
    return dirs.to(device=device, dtype=dtype), solid_angle.to(device=device, dtype=dtype).contiguous()


def sh_projection_matrix(dirs: Tensor, solid_angle: Tensor, degree: int) -> Tensor:
    """[P, K] matrix M with values [..., P] @ M = the SH coefficients of a function sampled at the
    P = H * W grid cells (dirs [H, W, 3], solid_angle [H, W]): M = Y(dirs) * dOmega."""
    basis = sh_basis(dirs.reshape(-1, 3), degree)
    return basis * solid_angle.reshape(-1, 1)


def sh_project(values: Tensor, dirs: Tensor, solid_angle: Tensor, degree: int) -> Tensor:
    """SH coefficients c_k = sum over cells f Y_k dOmega (the integral int f Y_k dOmega by the midpoint
    rule) of a function sampled on a lat-long grid.

    values: [..., H, W] samples of f at the cell centres ``dirs`` [H, W, 3] (unit); solid_angle [H, W]
    (sr, `latlong_directions`). Returns [..., (degree + 1)^2]."""
    flat = values.reshape(*values.shape[:-2], -1).to(dirs.dtype)
    return flat @ sh_projection_matrix(dirs, solid_angle, degree)


def sh_evaluate(coefficients: Tensor, dirs: Tensor) -> Tensor:
    """f(dirs) = sum_k c_k Y_k(dirs). coefficients: [..., K, C] (K = (degree + 1)^2); dirs: [..., 3]
    unit, broadcast against the coefficients' leading dims. Returns [..., C]."""
    degree = math.isqrt(coefficients.shape[-2]) - 1
    basis = sh_basis(dirs, degree)  # [..., K]
    return (basis[..., :, None] * coefficients).sum(-2)


# ================================================================================ lobe sampling
def radical_inverse_base2(i: int) -> float:
    """Van der Corput radical inverse of a 32-bit integer (bits reversed behind the binary point)."""
    return int(f"{int(i) & 0xFFFFFFFF:032b}"[::-1], 2) / 2.0**32


def hammersley(num_samples: int, *, device=None, dtype=torch.float32) -> Tensor:
    """[S, 2] Hammersley points (i / S, radical_inverse(i)) in [0, 1)^2 (GS-IR's ``Hammersley``)."""
    pts = [(i / num_samples, radical_inverse_base2(i)) for i in range(num_samples)]
    return torch.tensor(pts, dtype=torch.float64).to(device=device, dtype=dtype)


def ggx_half_vectors(xi: Tensor, roughness: float) -> Tensor:
    """Tangent-space GGX half vectors [S, 3] (z = lobe axis) for uniform points xi [S, 2], alpha = roughness^2
    (GS-IR's ``importanceSampleGGX``): phi = 2 pi xi_0, cos t = sqrt((1 - xi_1) / (1 + (alpha^2 - 1) xi_1)).
    roughness 1: cos t = sqrt(1 - xi_1), the cosine-weighted hemisphere."""
    a = float(roughness) ** 2
    phi = 2 * math.pi * xi[:, 0]
    cos_t = torch.sqrt((1 - xi[:, 1]) / (1 + (a * a - 1) * xi[:, 1]))
    sin_t = torch.sqrt((1 - cos_t * cos_t).clamp_min(0))
    return torch.stack([phi.cos() * sin_t, phi.sin() * sin_t, cos_t], dim=-1)


def tangent_frames(lobes: Tensor) -> tuple[Tensor, Tensor]:
    """Tangent and bitangent [N, 3] of unit lobe axes [N, 3] (GS-IR: up = z unless |n_z| >= 0.999, then x)."""
    up = torch.zeros_like(lobes)
    near_pole = lobes[:, 2].abs() >= 0.999
    up[:, 2] = (~near_pole).to(lobes.dtype)
    up[:, 0] = near_pole.to(lobes.dtype)
    tangent = F.normalize(torch.cross(up, lobes, dim=-1), dim=-1)
    return tangent, torch.cross(lobes, tangent, dim=-1)


def sample_lobe_directions(lobes: Tensor, num_samples: int = 256, roughness: float = 1.0) -> Tensor:
    """World directions [N, S, 3]: the S Hammersley GGX half vectors around each unit lobe axis [N, 3]."""
    h = ggx_half_vectors(hammersley(num_samples, device=lobes.device, dtype=lobes.dtype), roughness)  # [S, 3]
    return F.normalize(to_world(h, lobes), dim=-1)


def fibonacci_sphere(n: int, *, dtype=torch.float64) -> Tensor:
    """[n, 3] nearly uniform unit vectors (golden-angle spiral)."""
    i = torch.arange(n, dtype=dtype) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (3 - math.sqrt(5)) * i
    r = torch.sqrt(1 - z * z)
    return torch.stack([r * phi.cos(), r * phi.sin(), z], dim=-1)


@functools.lru_cache(maxsize=16)
def lobe_transfer(degree: int, num_samples: int, roughness: float, num_probes: int = 36) -> tuple[Tensor, Tensor]:
    """Tangent-space probe directions P [M, 3] and the [S, M] matrix T with f(h_s) = sum_m T_sm f(P_m)
    for every f of SH degree <= `degree` (h_s: the S GGX half vectors of `ggx_half_vectors`):
    T = Y(h) pinv(Y(P)). Exact because such f stay such f under rotation, so a lobe's S samples
    cost M basis evaluations per point (float64 CPU tensors, cached: do not modify them)."""
    probes = fibonacci_sphere(num_probes)
    half = ggx_half_vectors(hammersley(num_samples, dtype=torch.float64), roughness)
    return probes, sh_basis(half, degree) @ torch.linalg.pinv(sh_basis(probes, degree))


def to_world(tangent_dirs: Tensor, lobes: Tensor) -> Tensor:
    """[N, M, 3] world directions of tangent-space directions [M, 3] (z = lobe) around unit lobes [N, 3]."""
    t, b = tangent_frames(lobes)
    d = tangent_dirs.to(lobes)
    return t[:, None] * d[None, :, 0:1] + b[:, None] * d[None, :, 1:2] + lobes[:, None] * d[None, :, 2:3]


def sh_reconstruction(coefficients: Tensor, lobes: Tensor, num_samples: int = 256, roughness: float = 1.0,
                      chunk: int = 16384) -> Tensor:
    """GS-IR's SH_reconstruction: mean over S GGX samples w_s around each lobe of clamp(sum_k c_k Y_k(w_s), 0, 1).

    coefficients: [N, K, C]; lobes: [N, 3] (normalised here; an all-zero lobe gives 0, as GS-IR).
    roughness 1 (the default, GS-IR's occlusion) = cosine-weighted samples, so the result estimates
    1/pi int clamp(f, 0, 1)(w) (n.w)+ dw. Returns [N, C] in [0, 1]. The S sample values come from
    36 per lobe by `lobe_transfer` (the same numbers as evaluating the S directions of
    `sample_lobe_directions`, 7x less work); `chunk` lobes at a time."""
    degree = math.isqrt(coefficients.shape[-2]) - 1
    probes, transfer = lobe_transfer(degree, num_samples, roughness)
    transfer = transfer.to(coefficients)
    unit = F.normalize(lobes, dim=-1)
    out = []
    for s in range(0, lobes.shape[0], chunk):
        at_probes = sh_basis(to_world(probes, unit[s : s + chunk]), degree) @ coefficients[s : s + chunk]  # [n, M, C]
        out.append((transfer @ at_probes).clamp(0, 1).mean(1))  # [n, S, C] -> [n, C]
    result = torch.cat(out) if out else coefficients.new_zeros(0, coefficients.shape[-1])
    return torch.where((lobes.norm(dim=-1) > 0)[:, None], result, torch.zeros_like(result))


# ================================================================================ grid interpolation
CORNER_OFFSETS = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])  # [8, 3], GS-IR's 000..111


def normal_aware_trilinear(points: Tensor, normals: Tensor, bound: float, res: int) -> tuple[Tensor, Tensor]:
    """The 8 grid corners around each point and their normal-aware trilinear weights (GS-IR's
    ``sparse_interpolate_coefficients`` / irradiance trilinear kernel).

    points [N, 3], normals [N, 3] world; grid of res^3 points spanning [-bound, bound]^3. The grid
    coordinate (p + bound) / spacing is clamped to [0, res - 1]; a corner's weight is its trilinear
    weight if dot(corner - p, n) > 0, else 0 (corners behind the surface do not count).
    Returns corners [N, 8, 3] long (indices clamped to res - 1) and raw weights [N, 8]; normalise
    with `normalise_weights` after masking invalid corners."""
    spacing = 2.0 * bound / (res - 1)
    coord = ((points + bound) / spacing).clamp(0, res - 1)
    base = coord.floor()
    frac = coord - base
    offsets = CORNER_OFFSETS.to(points.device)
    corner_pos = (base[:, None] + offsets) * spacing - bound  # [N, 8, 3] (unclamped positions, as GS-IR)
    in_front = ((corner_pos - points[:, None]) * normals[:, None]).sum(-1) > 0
    trilinear = torch.where(offsets.bool(), frac[:, None], 1 - frac[:, None]).prod(-1)  # [N, 8]
    corners = (base.long()[:, None] + offsets).clamp_max(res - 1)
    return corners, trilinear * in_front.to(trilinear.dtype)


def normalise_weights(weights: Tensor, eps: float = WEIGHT_EPS) -> Tensor:
    """weights [N, 8] / their sum per row (a zero sum is replaced by eps: all weights stay 0)."""
    total = weights.sum(-1, keepdim=True)
    return weights / torch.where(total == 0, torch.full_like(total, eps), total)


def flat_index(corners: Tensor, res: int) -> Tensor:
    """[..., 3] grid indices (ix, iy, iz) -> flat index ix res^2 + iy res + iz."""
    return (corners[..., 0] * res + corners[..., 1]) * res + corners[..., 2]


# ================================================================================ occlusion
@dataclass
class OcclusionVolume:
    """Baked occlusion SH (GS-IR's occlusion_volumes).

    ids [R, R, R] int32: row of ``coefficients`` for each grid point (-1: no coefficients; the bake's
    dilation leaves none); coefficients [M, K, 1] float32: SH (degree ``degree``, K = (degree + 1)^2)
    of the visibility (1 visible, 0 occluded) seen from each baked grid point; bound: the grid spans
    [-bound, bound]^3 (scene units); threshold: the occlusion distance used in the bake (scene units)."""

    ids: Tensor
    coefficients: Tensor
    bound: float
    degree: int = OCCLUSION_SH_DEGREE
    threshold: float = 0.25

    @property
    def res(self) -> int:
        return int(self.ids.shape[0])

    def to(self, device) -> "OcclusionVolume":
        return OcclusionVolume(self.ids.to(device), self.coefficients.to(device), self.bound, self.degree, self.threshold)


def interpolate_occlusion(volume: OcclusionVolume, points: Tensor, normals: Tensor) -> Tensor:
    """[N, K, 1] normal-aware trilinear mix of the coefficients at the 8 corners around each point
    (corners with id -1 count as behind the surface)."""
    corners, weights = normal_aware_trilinear(points, normals, volume.bound, volume.res)
    ids = volume.ids.reshape(-1).long()[flat_index(corners, volume.res)]  # [N, 8]
    weights = normalise_weights(weights * (ids >= 0).to(weights.dtype))
    coeffs = volume.coefficients.to(points.dtype)[ids.clamp_min(0)]  # [N, 8, K, 1]
    return (weights[..., None, None] * coeffs).sum(1)


@torch.no_grad()
def recon_occlusion(points: Tensor, normals: Tensor, volume: OcclusionVolume, num_samples: int = 256, chunk: int = 16384) -> Tensor:
    """GS-IR's recon_occlusion: cosine-weighted visibility V [N, 1] in [0, 1] of surface points.

    points [N, 3] world (scene units), normals [N, 3] world unit (zero = no surface -> 0). The point is
    shifted by bound / res along its normal (GS-IR's half grid step), the volume's SH are mixed by
    `interpolate_occlusion` and reconstructed by `sh_reconstruction` (GGX roughness 1 = cosine
    lobe, Hammersley samples, each clamped to [0, 1], averaged); `chunk` points at a time."""
    volume = volume.to(points.device)
    out = []
    for s in range(0, points.shape[0], chunk):
        p, n = points[s : s + chunk], normals[s : s + chunk]
        coeffs = interpolate_occlusion(volume, p + n * (volume.bound / volume.res), n)  # [n, K, 1]
        out.append(sh_reconstruction(coeffs, n, num_samples=num_samples, roughness=1.0, chunk=chunk))
    return torch.cat(out) if out else points.new_zeros(0, 1)


def save_occlusion_volume(path: str | Path, volume: OcclusionVolume, metadata: dict[str, str] | None = None) -> Path:
    """Write {occlusion_ids, occlusion_coefficients, bound, degree, occlusion_threshold} as safetensors,
    atomically (temporary file + rename). degree is sh.py's (3 = 16 coefficients); metadata strings
    (e.g. the bake settings) are kept in the header beside format = lumenkit-gsir-occlusion."""
    from lumenkit.common.fileio import save_state_dict

    tensors = {
        "occlusion_ids": volume.ids.to(torch.int32),
        "occlusion_coefficients": volume.coefficients.to(torch.float32),
        "bound": torch.tensor(float(volume.bound), dtype=torch.float64),
        "degree": torch.tensor(int(volume.degree), dtype=torch.int32),
        "occlusion_threshold": torch.tensor(float(volume.threshold), dtype=torch.float64),
    }
    return save_state_dict(path, tensors, metadata={"format": OCCLUSION_FORMAT, **(metadata or {})})


def load_occlusion_volume(path: str | Path, device="cpu") -> OcclusionVolume:
    """Read a baked occlusion_volumes.safetensors; a missing, corrupt or inconsistent file is a
    one-line LumenkitError naming the file and what is wrong."""
    from lumenkit.common.fileio import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise LumenkitError(f"{path}: no occlusion volume (run `lumenkit gsir bake -m <model>` first)")
    if path.suffix != ".safetensors":
        raise LumenkitError(f"{path}: occlusion volumes are .safetensors files (lumenkit gsir bake writes occlusion_volumes.safetensors)")
    state = load_state_dict(path, map_location=device)
    missing = [k for k in ("occlusion_ids", "occlusion_coefficients", "bound", "degree", "occlusion_threshold") if k not in state]
    if missing:
        raise LumenkitError(f"{path}: not a lumenkit occlusion volume (missing {', '.join(missing)})")
    return _checked_volume(path, state)


def _checked_volume(path: Path, state: dict) -> OcclusionVolume:
    ids, coeffs = state["occlusion_ids"], state["occlusion_coefficients"]
    degree = int(state["degree"])
    r = ids.shape[0] if ids.dim() == 3 else -1
    if ids.dim() != 3 or tuple(ids.shape) != (r, r, r) or r < 2 or ids.dtype not in (torch.int32, torch.int64):
        raise LumenkitError(f"{path}: occlusion_ids must be an integer [R, R, R] grid with R >= 2, got {ids.dtype} {list(ids.shape)}")
    if not 0 <= degree <= 3 or coeffs.dim() != 3 or coeffs.shape[1:] != (num_coefficients(degree), 1):
        raise LumenkitError(f"{path}: occlusion_coefficients must be [M, (degree + 1)^2, 1] for degree {degree}, got {list(coeffs.shape)}")
    if ids.numel() and (int(ids.max()) >= coeffs.shape[0] or int(ids.min()) < -1):
        raise LumenkitError(f"{path}: occlusion_ids point outside the {coeffs.shape[0]} coefficient rows")
    bound, threshold = float(state["bound"]), float(state["occlusion_threshold"])
    if not (math.isfinite(bound) and bound > 0) or not torch.isfinite(coeffs).all():
        raise LumenkitError(f"{path}: bound {bound} must be > 0 and the coefficients finite")
    return OcclusionVolume(ids.to(torch.int32), coeffs.float(), bound, degree, threshold)


# ================================================================================ irradiance
class IrradianceVolumes(torch.nn.Module):
    """GS-IR's learnable irradiance volumes: SH coefficients [R, R, R, K, C] on a res^3 grid over
    [-bound, bound]^3 (default 64^3, degree 2 = 3 bands = 9 coefficients, RGB), initialised to 0
    as GS-IR. `query_irradiance` differentiates w.r.t. the coefficients."""

    def __init__(self, bound: float = 1.5, grid_res: int = 64, degree: int = IRRADIANCE_SH_DEGREE, channels: int = 3):
        super().__init__()
        if grid_res < 2:
            raise ValueError(f"IrradianceVolumes: grid_res must be >= 2, got {grid_res}")
        self.bound, self.grid_res, self.degree, self.channels = float(bound), int(grid_res), int(degree), int(channels)
        k = num_coefficients(degree)
        self.coefficients = torch.nn.Parameter(torch.zeros(grid_res, grid_res, grid_res, k, channels))

    def query_irradiance(self, points: Tensor, normals: Tensor) -> Tensor:
        """Irradiance [N, C] (linear, >= 0) at points [N, 3] with unit normals [N, 3] (world): the
        normal-aware trilinear mix of the 8 corners' coefficients, then sum_k c_k Y_k(n), clamped >= 0."""
        corners, weights = normal_aware_trilinear(points, normals, self.bound, self.grid_res)
        weights = normalise_weights(weights).to(self.coefficients.dtype)
        flat = self.coefficients.reshape(-1, *self.coefficients.shape[3:])  # [R^3, K, C]
        mixed = (weights[..., None, None] * flat[flat_index(corners, self.grid_res)]).sum(1)  # [N, K, C]
        return sh_evaluate(mixed, F.normalize(normals, dim=-1).to(mixed.dtype)).clamp_min(0.0)

    def forward(self, points: Tensor, normals: Tensor) -> Tensor:
        return self.query_irradiance(points, normals)
