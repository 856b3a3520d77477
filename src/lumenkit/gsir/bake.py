"""GS-IR's occlusion baking (official ``baking.py``): SH visibility at grid points around the Gaussians.

    lumenkit gsir bake -m OUT [--checkpoint OUT/chkpntN.pth] [--preset unbounded] [--bound 1.5 --occlu_res 128 --occlusion 0.25]

`bake_occlusion`, step by step (GS-IR, sec. 3.3 "Baking-based occlusion"):

1. `valid_grid_mask`: an occlu_res^3 grid over [-bound, bound]^3 (points -bound + i * 2 bound /
   (res - 1)); the 8 grid points around each Gaussian centre are valid (indices clamped to the grid,
   as GS-IR, so Gaussians outside the bound mark border points); `consecutive_ids` numbers them.
2. `render_cube_depths`: from each valid point, 6 cube faces (90 degree pinhole cameras, face_res^2)
   through `rasterize`; Euclidean depth = view z x the pixel's ray length, zeroed where the opacity
   is < 0.5 (GS-IR: "filter out the floater"). Gaussians nearer than ``near`` = 0.2 view depth are
   culled, as by GS-IR's 3DGS rasterizer (``in_frustum``: p_view.z <= 0.2): the occluders are the
   geometry between that near plane and the occlusion distance (the surface a grid point sits on
   is not one of them; nearer, the EWA splat of a Gaussian beside the camera would cover whole
   faces). Only Gaussians within ``valid`` (L-inf, scene units) of the point are rendered (GS-IR's
   --valid crop, default 1.5; 0 = all).
3. The faces are merged into a latlong_res x 2 latlong_res lat-long map (nearest cube texel, as
   GS-IR's nvdiffrast lookup); visible = depth >= occlusion or depth == 0; the visibility is projected
   onto SH of degree 3 (16 coefficients) with the cells' solid angles (`volumes.sh_project`).
4. `dilate_ids`: grid points without coefficients take the id of a nearest baked point in
   6-neighbour steps (what GS-IR's dialate_occlusion_ids converges to).

Batching: `rasterize` takes one camera per call, so the 6 faces of each point are 6 calls, each
given only the Gaussians its frustum can show (`face_frustum_masks`, a conservative cull that
leaves the maps unchanged); the lat-long merge and the SH projection run on `batch` points at once.
The result is a `volumes.OcclusionVolume`, saved by `volumes.save_occlusion_volume` as
OUT/occlusion_volumes.safetensors (GS-IR: occlusion_volumes.pth) and read by
`volumes.load_occlusion_volume` (both importable from here too).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lumenkit.common.config import check, check_choice, check_range, param
from lumenkit.common.errors import LumenkitError
from lumenkit.gsir.camera import Camera
from lumenkit.gsir.config import BACKENDS, Backend
from lumenkit.gsir.volumes import (OCCLUSION_SH_DEGREE, OcclusionVolume, latlong_directions, load_occlusion_volume,
                                   save_occlusion_volume, sh_projection_matrix)

__all__ = ["BAKE_PRESETS", "OCCLUSION_FILE", "BakeConfig", "BakeResult", "bake_occlusion", "bake_to_file", "consecutive_ids",
           "cube_rig", "dilate_ids", "face_frustum_masks", "load_occlusion_volume", "pack_splats", "render_cube_depths",
           "save_occlusion_volume", "valid_grid_mask"]

OCCLUSION_FILE = "occlusion_volumes.safetensors"
OPACITY_CUTOFF = 0.5  # GS-IR: depth_map * (opacity_map > 0.5)


@dataclass
class BakeConfig:
    """Settings of `lumenkit gsir bake` (defaults: GS-IR's flags for synthetic scenes; see BAKE_PRESETS)."""

    bound: float = param(1.5, "the occlusion grid spans [-bound, bound]^3 (scene units)")
    occlu_res: int = param(128, "grid points per axis")
    occlusion: float = param(0.25, "occlusion threshold: geometry nearer than this (scene units) occludes")
    face_res: int = param(256, "cube face resolution in px")
    latlong_res: int = param(256, "lat-long visibility map height in px (width 2x; even)")
    near: float = param(0.2, "Gaussians nearer than this view depth (scene units) are not rendered (GS-IR's 3DGS rasterizer culls z <= 0.2)")
    valid: float = param(1.5, "render only Gaussians within this L-inf distance of the grid point (GS-IR --valid; 0 = all)")
    batch: int = param(64, "grid points merged and projected per batch")
    backend: Backend = param("auto", "rasterizer backend (auto: cuda for GPU tensors, else the C++ cpu backend)")

    def __post_init__(self) -> None:
        check_range("bound", self.bound, 0, lo_open=True)
        check_range("occlu_res", self.occlu_res, 2)
        check_range("occlusion", self.occlusion, 0, lo_open=True)
        check_range("face_res", self.face_res, 2)
        check_range("latlong_res", self.latlong_res, 2)
        check(self.latlong_res % 2 == 0, "latlong_res", self.latlong_res, "must be even (the equator on a row edge)")
        check_range("near", self.near, 0, lo_open=True)
        check(self.near < self.occlusion, "near", self.near, f"must be below --occlusion {self.occlusion} (nearer geometry is not rendered)")
        check_range("valid", self.valid, 0)
        check_range("batch", self.batch, 1)
        check_choice("backend", self.backend, BACKENDS)


BAKE_PRESETS: dict[str, BakeConfig] = {
    "synthetic": BakeConfig(),  # GS-IR README: --bound 1.5 --occlu_res 128 --occlusion 0.25
    "unbounded": BakeConfig(bound=16.0, occlu_res=256, occlusion=0.4),  # real (Mip-NeRF 360) scenes
}


@dataclass
class BakeResult:
    """The baked volume and the run's numbers: points (baked grid points), seconds (rendering +
    projection), points_per_s, renders (cube faces rendered), grid (occlu_res), face_res."""

    volume: OcclusionVolume
    stats: dict


# ================================================================================ grid
def grid_spacing(bound: float, res: int) -> float:
    return 2.0 * bound / (res - 1)


def valid_grid_mask(xyz: Tensor, bound: float, res: int) -> Tensor:
    """[R, R, R] bool: the 8 grid points around each Gaussian centre xyz [N, 3] (GS-IR: cell index
    floor((p + bound) / spacing) and +1, each clamped to [0, R - 1]; non-finite centres ignored)."""
    xyz = xyz[torch.isfinite(xyz).all(-1)]
    base = torch.floor((xyz + bound) / grid_spacing(bound, res)).clamp(-1, res).long()
    mask = torch.zeros(res, res, res, dtype=torch.bool, device=xyz.device)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                idx = (base + torch.tensor([dx, dy, dz], device=xyz.device)).clamp(0, res - 1)
                mask[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return mask


def consecutive_ids(mask: Tensor) -> Tensor:
    """[R, R, R] int32: 0..M-1 over the True cells in C order (x slowest, as GS-IR's torch.where), -1 elsewhere."""
    ids = torch.full(mask.shape, -1, dtype=torch.int32, device=mask.device)
    ids[mask] = torch.arange(int(mask.sum()), dtype=torch.int32, device=mask.device)
    return ids


def grid_positions(ids: Tensor, bound: float) -> Tensor:
    """[M, 3] world positions of the grid points numbered 0..M-1 in ids [R, R, R]."""
    cells = torch.nonzero(ids >= 0)  # C order = id order
    return cells.to(torch.float32) * grid_spacing(bound, ids.shape[0]) - bound


def dilate_ids(ids: Tensor) -> Tensor:
    """Fill every -1 cell of ids [R, R, R] with the id of a nearest valid cell in 6-neighbour steps
    (L1 distance): the fixed point of GS-IR's dialate_occlusion_ids, which copies a valid
    6-neighbour's id into each empty cell pass after pass (ties may pick another equally near cell).
    One exact taxicab distance transform (scipy.ndimage, seconds at 256^3) instead of up to R passes
    over the grid. No valid cell at all is a LumenkitError."""
    from scipy import ndimage

    if not bool((ids >= 0).any()):
        raise LumenkitError("bake: no grid point holds coefficients (no Gaussians inside --bound?)")
    grid = ids.cpu().numpy()
    nearest = ndimage.distance_transform_cdt(grid < 0, metric="taxicab", return_distances=False, return_indices=True)
    return torch.from_numpy(grid[nearest[0], nearest[1], nearest[2]]).to(ids.device)


# ================================================================================ cube faces
def face_rotations() -> Tensor:
    """[6, 3, 3] world -> camera rotations (OpenCV: x right, y down, z forward) of the cube faces
    looking along +x, -x, +y, -y, +z, -z (rows: the camera axes in world coordinates)."""
    faces = []
    for axis in range(3):
        for sign in (1.0, -1.0):
            forward = torch.zeros(3)
            forward[axis] = sign
            down = torch.tensor([0.0, 0.0, -1.0]) if axis != 2 else torch.tensor([0.0, sign, 0.0])
            right = torch.linalg.cross(down, forward)
            faces.append(torch.stack([right, down, forward]))
    return torch.stack(faces)


@dataclass
class CubeRig:
    """The 6 cube cameras' rotations [6, 3, 3], intrinsics K [3, 3] (90 degree FOV, face_res px),
    each pixel's ray length per unit view z [R, R], and the lat-long lookup [H * W] into the
    flattened faces [6 * R * R] (nearest texel)."""

    rotations: Tensor
    K: Tensor
    face_res: int
    ray_length: Tensor
    latlong_lookup: Tensor
    near: float = 0.2

    def camera(self, face: int, position: Tensor) -> Camera:
        """The Camera of cube face `face` at world position [3]."""
        R = self.rotations[face].to(position)
        viewmat = torch.eye(4, dtype=position.dtype, device=position.device)
        viewmat[:3, :3] = R
        viewmat[:3, 3] = -R @ position
        return Camera(viewmat, self.K.to(position), self.face_res, self.face_res, near=self.near)


def cube_rig(face_res: int, latlong_dirs: Tensor, near: float = 0.2) -> CubeRig:
    """The cube cameras (near plane `near`, scene units) and the lookup from lat-long directions
    [H, W, 3] to their face texels."""
    rotations = face_rotations().to(latlong_dirs)
    f = c = face_res / 2.0  # tan(45 deg) = 1
    K = torch.tensor([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]], dtype=latlong_dirs.dtype)
    centres = (torch.arange(face_res, dtype=latlong_dirs.dtype) + 0.5 - c) / f
    ray_length = torch.sqrt(1 + centres[None, :] ** 2 + centres[:, None] ** 2)  # [row, col]
    cam = torch.einsum("fij,pj->fpi", rotations, latlong_dirs.reshape(-1, 3))  # [6, P, 3]
    face = cam[..., 2].argmax(0)  # the face whose forward axis is closest
    local = cam[face, torch.arange(face.shape[0])]  # [P, 3]
    col = torch.floor(f * local[:, 0] / local[:, 2] + c).long().clamp(0, face_res - 1)
    row = torch.floor(f * local[:, 1] / local[:, 2] + c).long().clamp(0, face_res - 1)
    lookup = (face * face_res + row) * face_res + col
    return CubeRig(rotations, K, face_res, ray_length, lookup.to(latlong_dirs.device), near)


FRUSTUM_SLACK = 1.3  # tan of the cone kept around each 90 degree face (3DGS's 1.3 x frustum guard band)
SPLAT_REACH = 6.0  # Gaussians whose centre lies this many sigma outside the slack cone cannot reach a pixel


def pack_splats(gaussians) -> Tensor:
    """[N, 11] detached activated geometry: means (world) | quats wxyz | scales | opacity, from a
    GaussianModel or a dict with means [N, 3], quats [N, 4], scales [N, 3], opacities [N]
    (one tensor, so that a face's subset is one indexing)."""
    if isinstance(gaussians, dict):
        parts = [gaussians[k] for k in ("means", "quats", "scales")] + [gaussians["opacities"].reshape(-1, 1)]
    else:
        parts = [gaussians.xyz, gaussians.quats, gaussians.scales, gaussians.opacities.reshape(-1, 1)]
    return torch.cat([p.detach().float() for p in parts], dim=1)


def face_frustum_masks(packed: Tensor, position: Tensor, rig: CubeRig, valid: float = 0.0) -> Tensor:
    """[6, N] bool: the Gaussians (packed [N, 11]) each cube face at position [3] renders.

    valid > 0: only those within L-inf distance `valid` of the point (GS-IR's --valid crop, which
    changes the maps). Then a conservative frustum cull that does not: centre beyond the near plane
    (the rasterizer's own cut) and within 1.3 x the face's half-width + 6 sigma_max laterally; the
    rasterizer gives the others no pixel (their EWA footprint, 3 sigma of the 2-D covariance with
    the Jacobian clamped at 1.3 x the field of view, stays off screen), so culling only saves work."""
    rel = packed[:, :3] - position
    cam = torch.einsum("fij,nj->fni", rig.rotations.to(rel), rel)  # [6, N, 3]
    z = cam[..., 2]
    lateral = FRUSTUM_SLACK * z + SPLAT_REACH * packed[:, 7:10].amax(-1)
    keep = (z > rig.near) & (cam[..., 0].abs() <= lateral) & (cam[..., 1].abs() <= lateral)
    return keep & (rel.abs() < valid).all(-1) if valid > 0 else keep


@torch.no_grad()
def render_cube_depths(packed: Tensor, position: Tensor, rig: CubeRig, backend: str = "auto", valid: float = 0.0,
                       cull: bool = True) -> Tensor:
    """[6, R, R] Euclidean depth (scene units) seen from world position [3] on the 6 cube faces, 0 where
    the rendered opacity is < 0.5 or nothing is hit. packed: `pack_splats` [N, 11]; valid: GS-IR's
    crop (0 = all Gaussians); cull=False renders every (cropped) Gaussian on every face (same maps,
    for checking `face_frustum_masks`)."""
    from lumenkit.gsir.rasterize import rasterize

    masks = face_frustum_masks(packed, position, rig, valid) if cull else None
    if masks is None and valid > 0:
        packed = packed[((packed[:, :3] - position).abs() < valid).all(-1)]
    faces = []
    for face in range(6):
        s = packed if masks is None else packed[masks[face]]
        out = rasterize(s[:, :3], s[:, 3:7], s[:, 7:10], s[:, 10], rig.camera(face, position), colors=s.new_zeros(s.shape[0], 3),
                        backend=backend)
        depth = out["depth_map"][0] * rig.ray_length.to(position)
        faces.append(torch.where(out["opacity_map"][0] >= OPACITY_CUTOFF, depth, torch.zeros_like(depth)))
    return torch.stack(faces)


# ================================================================================ the bake
def visibility_sh(packed: Tensor, positions: Tensor, rig: CubeRig, projection: Tensor, cfg: "BakeConfig", backend: str,
                  on_point=None) -> Tensor:
    """[M, K, 1] SH of the 0/1 visibility seen from each grid point positions [M, 3]: cube depths ->
    lat-long map (rig.latlong_lookup) -> visible = depth >= cfg.occlusion or depth == 0 -> @ projection
    [H * W, K] (`volumes.sh_projection_matrix`), cfg.batch points at a time; on_point(1) after each
    point's cube."""
    coefficients = torch.zeros(positions.shape[0], projection.shape[1], 1, device=positions.device)
    for first in range(0, positions.shape[0], cfg.batch):
        batch = positions[first : first + cfg.batch]
        cubes = torch.empty(batch.shape[0], 6, rig.face_res, rig.face_res, device=batch.device)
        for i, p in enumerate(batch):
            cubes[i] = render_cube_depths(packed, p, rig, backend, cfg.valid)
            if on_point is not None:
                on_point(1)
        depth = cubes.reshape(batch.shape[0], -1)[:, rig.latlong_lookup]  # [B, H*W]
        visible = ((depth >= cfg.occlusion) | (depth == 0)).to(projection.dtype)
        coefficients[first : first + batch.shape[0], :, 0] = visible @ projection
    return coefficients


@torch.no_grad()
def bake_occlusion(gaussians, cfg: BakeConfig | None = None, *, progress: bool = True, **overrides) -> BakeResult:
    """Bake GS-IR's occlusion volume of a GaussianModel (or a dict means/quats/scales/opacities).

    cfg: BakeConfig (default: the synthetic preset); keyword overrides replace its fields
    (``bake_occlusion(g, occlu_res=32, face_res=64)``). Runs on the Gaussians' device. Returns a
    BakeResult: the dilated OcclusionVolume (ids [R, R, R], coefficients [M, 16, 1] of the 0/1
    visibility) and stats (points, seconds, points_per_s, renders, grid, face_res)."""
    from tqdm import tqdm

    from lumenkit.gsir.rasterize import resolve_backend

    cfg = dataclasses.replace(cfg or BakeConfig(), **overrides)
    packed = pack_splats(gaussians)
    if packed.shape[0] == 0:
        raise LumenkitError("bake: the model has no Gaussians")
    device = packed.device
    backend = resolve_backend(cfg.backend, device)
    ids = consecutive_ids(valid_grid_mask(packed[:, :3], cfg.bound, cfg.occlu_res))
    positions = grid_positions(ids, cfg.bound).to(device)
    dirs, solid_angle = latlong_directions(cfg.latlong_res, 2 * cfg.latlong_res, device=device)
    rig = cube_rig(cfg.face_res, dirs, cfg.near)
    projection = sh_projection_matrix(dirs, solid_angle, OCCLUSION_SH_DEGREE)  # [H*W, 16]

    bar = tqdm(total=positions.shape[0], desc=f"bake {cfg.occlu_res}^3 grid, {cfg.face_res}px faces", unit="pt", disable=not progress)
    start = time.perf_counter()
    coefficients = visibility_sh(packed, positions, rig, projection, cfg, backend, on_point=bar.update)
    seconds = time.perf_counter() - start
    bar.close()
    volume = OcclusionVolume(dilate_ids(ids), coefficients.cpu(), cfg.bound, OCCLUSION_SH_DEGREE, cfg.occlusion)
    n = positions.shape[0]
    stats = {"points": n, "seconds": seconds, "points_per_s": n / max(seconds, 1e-9), "renders": 6 * n,
             "grid": cfg.occlu_res, "face_res": cfg.face_res}
    return BakeResult(volume.to("cpu"), stats)


def bake_to_file(gaussians, out_path: str | Path, cfg: BakeConfig | None = None, *, progress: bool = True,
                 source: str = "") -> BakeResult:
    """`bake_occlusion`, then write the volume atomically to out_path (metadata: the settings, the
    source checkpoint, points/s)."""
    cfg = cfg or BakeConfig()
    result = bake_occlusion(gaussians, cfg, progress=progress)
    meta = {"bake_config": json.dumps(dataclasses.asdict(cfg)), "checkpoint": str(source),
            "points_per_s": f"{result.stats['points_per_s']:.3f}"}
    save_occlusion_volume(out_path, result.volume, metadata=meta)
    return result

