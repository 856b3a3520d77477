"""GS-IR's environment light: a learnable cubemap with GGX-prefiltered specular mips and diffuse
irradiance (the official code's `CubemapLight`, after nvdiffrec), cubemap lookups and lat-long
conversion, in plain torch (CPU and CUDA alike; nvdiffrast not needed).

Conventions
-----------
* A cubemap is a tensor [6, R, R, C] of linear radiance (W sr^-1 m^-2 up to a global scale), faces in
  the OpenGL order +x, -x, +y, -y, +z, -z. Texel (face f, row i, column j) has face coordinates
  sc = 2 (j + 0.5) / R - 1 (column) and tc = 2 (i + 0.5) / R - 1 (row) and direction
  normalize(sc * U_f + tc * V_f + N_f) with (U_f, V_f, N_f) in `FACE_BASIS`: the OpenGL cube-map
  table (glTexImage2D(GL_TEXTURE_CUBE_MAP_*); nvdiffrast's boundary_mode="cube"; nvdiffrec's
  cube_to_dir), e.g. +x: (1, -tc, -sc), +y: (sc, 1, tc), +z: (sc, -tc, 1).
* Lat-long maps are [H, W, C] in Mitsuba 3's `envmap` parameterisation (checked against Mitsuba in
  tests/gsir/test_light.py): local +y is up, the direction of (u, v) in [0, 1]^2 is
  (sin(pi v) sin(2 pi u), cos(pi v), -sin(pi v) cos(2 pi u)), so the centre column u = 0.5 looks
  along +z, u = 0.25 along +x and u = 0 (the left/right edge) along -z; columns are sampled at
  u = (j + 0.5) / W and rows at v = i / (H - 1) (first and last rows on the poles, as Mitsuba's
  bilinear lookup does). nvdiffrec's lat-long maps are the same turned by 180 degrees about +y.
  `to_world` [3, 3] rotates that local frame into the world (world = to_world @ local); lumenkit's
  synthetic scenes use `lumenkit.gsir.data.ENV_TO_WORLD` (local +y -> world +z), as synth.py gives
  Mitsuba.
* Mip levels: 0 is the finest; a fractional level blends the two nearest (trilinear).
* Prefiltering follows the official code (nvdiffrec specular_cubemap): weight (w.R) D_GGX(R.h)
  dOmega / 4 with h = normalize(w + R) (the split-sum lobe with n = v = R), normalised, over
  w.R >= cos(theta_99), theta_99 where the running sum of D(cos theta) over uniform theta reaches 99%
  (the official "99% energy" cut). The weights depend only on geometry, so each level's filter is a
  sparse matrix built once per process and device (~5 s on one CPU core for a 256 light, ~200 MB)
  and reused: `CubemapLight.build_mips` then costs ~0.1 s on one core.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lumenkit.common.errors import LumenkitError

LIGHT_MIN_RES = 16
MIN_ROUGHNESS = 0.08
MAX_ROUGHNESS = 0.5
TILE = 8  # texels per tile side when searching the texel pairs of a GGX lobe

# (U, V, N) per face: direction = sc * U + tc * V + N (OpenGL cube-map faces +x, -x, +y, -y, +z, -z)
FACE_BASIS = torch.tensor([
    [[0, 0, -1], [0, -1, 0], [1, 0, 0]],
    [[0, 0, 1], [0, -1, 0], [-1, 0, 0]],
    [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
    [[1, 0, 0], [0, 0, -1], [0, -1, 0]],
    [[1, 0, 0], [0, -1, 0], [0, 0, 1]],
    [[-1, 0, 0], [0, -1, 0], [0, 0, -1]],
], dtype=torch.float64)


# ============================================================================ cube-face geometry
def _basis(like: Tensor) -> Tensor:
    return FACE_BASIS.to(device=like.device, dtype=like.dtype)


def cube_to_dir(face: Tensor, sc: Tensor, tc: Tensor) -> Tensor:
    """Face index [...] (long) and face coordinates sc, tc [...] in [-1, 1] -> unit directions [..., 3]."""
    b = _basis(sc)[face]  # [..., 3, 3]
    d = sc[..., None] * b[..., 0, :] + tc[..., None] * b[..., 1, :] + b[..., 2, :]
    return d / d.norm(dim=-1, keepdim=True)


def dir_to_cube(dirs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Directions [..., 3] (any length > 0) -> (face [...] long, sc [...], tc [...] in [-1, 1]).

    The face is the one of the major axis (ties go to the lower axis x < y < z)."""
    axis = dirs.abs().argmax(dim=-1)
    major = torch.gather(dirs, -1, axis[..., None])[..., 0]
    face = 2 * axis + (major < 0).long()
    b = _basis(dirs)[face]
    ma = major.abs().clamp_min(1e-12)
    return face, (dirs * b[..., 0, :]).sum(-1) / ma, (dirs * b[..., 1, :]).sum(-1) / ma


def _nearest_texel(dirs: Tensor, res: int) -> Tensor:
    """Flat index (face * R + row) * R + column [...] of the texel containing each direction [..., 3]."""
    face, s, t = dir_to_cube(dirs)
    col = ((s + 1) * 0.5 * res).floor().long().clamp(0, res - 1)
    row = ((t + 1) * 0.5 * res).floor().long().clamp(0, res - 1)
    return (face * res + row) * res + col


def texel_centres(res: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """Face coordinates [res] of texel centres, 2 (k + 0.5) / res - 1."""
    return (torch.arange(res, device=device, dtype=dtype) + 0.5) * (2.0 / res) - 1.0


def cube_texel_directions(res: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """Unit directions [6, res, res, 3] of all texel centres."""
    c = texel_centres(res, device, torch.float64)
    tc, sc = torch.meshgrid(c, c, indexing="ij")
    face = torch.arange(6, device=device)[:, None, None].expand(6, res, res)
    return cube_to_dir(face, sc.expand(6, res, res), tc.expand(6, res, res)).to(dtype)


def cube_texel_solid_angles(res: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """Exact solid angles [6, res, res] (steradians) of the texels; they sum to 4 pi.

    A face rectangle [x0, x1] x [y0, y1] on the plane at distance 1 subtends F(x1, y1) - F(x0, y1)
    - F(x1, y0) + F(x0, y0) with F(x, y) = atan2(x y, sqrt(x^2 + y^2 + 1))."""
    e = torch.linspace(-1.0, 1.0, res + 1, device=device, dtype=torch.float64)
    y, x = torch.meshgrid(e, e, indexing="ij")
    f = torch.atan2(x * y, torch.sqrt(x * x + y * y + 1.0))
    omega = f[1:, 1:] - f[1:, :-1] - f[:-1, 1:] + f[:-1, :-1]
    return omega.expand(6, res, res).to(dtype)


# ============================================================================ seamless lookups
@functools.lru_cache(maxsize=32)
def _padding_taps(res: int, device: str = "cpu") -> tuple[Tensor, Tensor]:
    """Where the 1-texel border of each face comes from: (texel [6, R+2, R+2, 3], weight [.., 3]).

    Index into the flat [6 R R] cube. Interior texels copy themselves; a border texel copies the
    neighbouring face's edge texel at the same position along the shared edge; a border corner
    averages the three texels that meet at the cube's corner."""
    c = (torch.arange(-1, res + 1, dtype=torch.float64) + 0.5) * (2.0 / res) - 1.0
    tc, sc = torch.meshgrid(c, c, indexing="ij")
    edge = (sc.abs() > 1) ^ (tc.abs() > 1)
    texel = torch.zeros(6, res + 2, res + 2, 3, dtype=torch.int64)
    weight = torch.zeros(6, res + 2, res + 2, 3, dtype=torch.float64)
    for f in range(6):
        u, v, n = FACE_BASIS[f]
        p = sc.clamp(-1, 1)[..., None] * u + tc.clamp(-1, 1)[..., None] * v + n  # on the cube's surface
        own_axis = int(n.abs().argmax())
        for axis in range(3):
            nudged = p.clone()
            nudged[..., axis] *= 1.0 + 1e-4  # make `axis` the major one
            texel[f, ..., axis] = _nearest_texel(nudged, res)
            on_plane = (p[..., axis].abs() - 1.0).abs() < 1e-9
            weight[f, ..., axis] = (on_plane & ~(edge & (axis == own_axis))).double()
    return texel.to(device), (weight / weight.sum(-1, keepdim=True)).to(device)


def pad_cube(cube: Tensor) -> Tensor:
    """[6, R, R, C] -> [6, R + 2, R + 2, C] with each face's border filled from its neighbours."""
    res, channels = cube.shape[1], cube.shape[-1]
    texel, weight = _padding_taps(res, str(cube.device))
    flat = cube.reshape(-1, channels)
    taps = flat[texel]  # [6, R+2, R+2, 3, C]
    return (taps * weight.to(cube)[..., None]).sum(-2)


def _bilinear(padded: Tensor, face: Tensor, sc: Tensor, tc: Tensor) -> Tensor:
    """Bilinear sample of padded faces [6, R+2, R+2, C] at (face, sc, tc) [...] -> [..., C]."""
    size, channels = padded.shape[1], padded.shape[-1]
    res = size - 2
    x = (sc.clamp(-1, 1) + 1) * (0.5 * res) + 0.5  # padded texel k sits at x = k
    y = (tc.clamp(-1, 1) + 1) * (0.5 * res) + 0.5
    x0, y0 = x.floor().clamp(0, res), y.floor().clamp(0, res)
    fx, fy = (x - x0)[..., None].to(padded), (y - y0)[..., None].to(padded)
    base = face * size * size + y0.long() * size + x0.long()
    flat = padded.reshape(-1, channels)
    t00, t01, t10, t11 = (flat[base + off] for off in (0, 1, size, size + 1))
    return (t00 * (1 - fx) + t01 * fx) * (1 - fy) + (t10 * (1 - fx) + t11 * fx) * fy


def cube_lookup(cube: Tensor, dirs: Tensor) -> Tensor:
    """Bilinear, seamless lookup of cube [6, R, R, C] in directions [..., 3] -> [..., C].

    Filtering across a face edge uses the neighbouring face's texels (as nvdiffrast's
    boundary_mode="cube"), so values are continuous over the whole sphere. Differentiable in both."""
    face, sc, tc = dir_to_cube(dirs)
    return _bilinear(pad_cube(cube), face, sc, tc)


def cube_lookup_mip(mips: Sequence[Tensor], dirs: Tensor, level: Tensor | float, bias: Tensor | float = 0.0) -> Tensor:
    """Trilinear lookup in a mip chain [[6, R_k, R_k, C] for k = 0..L-1] -> [..., C].

    level + bias [...] (broadcast against dirs[..., 0]; mip levels, 0 = finest) is clamped to
    [0, L - 1]; each level is sampled bilinearly and seamlessly, neighbouring levels are blended
    linearly (nvdiffrast's filter_mode="linear-mipmap-linear" with mip_level_bias)."""
    face, sc, tc = dir_to_cube(dirs)
    level = torch.as_tensor(level, device=dirs.device, dtype=dirs.dtype) + bias
    level = level.expand(dirs.shape[:-1]).clamp(0, len(mips) - 1)
    out = None
    for k, mip in enumerate(mips):
        w = (1.0 - (level - k).abs()).clamp_min(0.0)[..., None]
        if k > 0 and not bool((w > 0).any()):
            continue
        term = w * _bilinear(pad_cube(mip), face, sc, tc)
        out = term if out is None else out + term
    return out


# ============================================================================ mips and filtering
def downsample_cube(cube: Tensor) -> Tensor:
    """2x2 average pooling of every face: [6, R, R, C] -> [6, R / 2, R / 2, C]."""
    f, r, _, c = cube.shape
    return cube.reshape(f, r // 2, 2, r // 2, 2, c).mean(dim=(2, 4))


def mip_chain(base: Tensor, min_res: int = LIGHT_MIN_RES) -> list[Tensor]:
    """[base, base / 2, ..., min_res] by repeated 2x2 average pooling (nvdiffrec's cubemap_mip)."""
    mips = [base]
    while mips[-1].shape[1] > min_res:
        mips.append(downsample_cube(mips[-1]))
    return mips


def mip_roughness(levels: int) -> list[float]:
    """GGX roughness each specular level is prefiltered with: linearly MIN..MAX_ROUGHNESS over
    levels 0..L-2, 1.0 for the last (GS-IR/nvdiffrec build_mips)."""
    span = max(levels - 2, 1)
    return [MIN_ROUGHNESS + (MAX_ROUGHNESS - MIN_ROUGHNESS) * k / span for k in range(levels - 1)] + [1.0]


def roughness_to_mip(roughness: Tensor, levels: int) -> Tensor:
    """Fractional mip level [...] for roughness [...] (GS-IR get_mip): (clamp(r, 0.08, 0.5) - 0.08)
    / 0.42 * (L - 2) for r < 0.5, else (clamp(r, 0.5, 1) - 0.5) / 0.5 + L - 2."""
    low = (roughness.clamp(MIN_ROUGHNESS, MAX_ROUGHNESS) - MIN_ROUGHNESS) / (MAX_ROUGHNESS - MIN_ROUGHNESS) * (levels - 2)
    high = (roughness.clamp(MAX_ROUGHNESS, 1.0) - MAX_ROUGHNESS) / (1.0 - MAX_ROUGHNESS) + levels - 2
    return torch.where(roughness < MAX_ROUGHNESS, low, high)


def ggx_ndf(alpha: float | Tensor, cos_h: Tensor) -> Tensor:
    """GGX / Trowbridge-Reitz D(h) = alpha^2 / (pi ((n.h)^2 (alpha^2 - 1) + 1)^2), per steradian."""
    a2 = alpha * alpha
    c = cos_h.clamp(0.0, 1.0)
    d = c * c * (a2 - 1.0) + 1.0
    return a2 / (math.pi * d * d)


def ggx_lobe_cutoff(roughness: float, cutoff: float = 0.99) -> float:
    """cos of the widest angle between w and R the prefilter keeps, as GS-IR/nvdiffrec define it:
    theta where the running sum of D(cos theta) over theta uniform in [0, pi/2] reaches `cutoff`
    of its total (a cut on the D profile, not on the filter's solid-angle-weighted energy)."""
    theta = np.linspace(0.0, np.pi / 2, 1_000_000)
    cdf = np.cumsum(ggx_ndf(roughness**2, torch.from_numpy(np.cos(theta))).numpy())
    return float(np.cos(theta[np.argmax(cdf >= cdf[-1] * cutoff)]))


def ggx_lobe_weight(cos_wr: Tensor, alpha: float) -> Tensor:
    """Prefilter kernel k(w, R) = (w.R)+ D_GGX(R.h) / 4 with h = normalize(w + R) (so
    R.h = sqrt((1 + w.R) / 2)): the split-sum lobe with n = v = R (Karis 2013; nvdiffrec's
    specular_cubemap). Multiply by dOmega and normalise to get filter weights."""
    cos_h = torch.sqrt(((1.0 + cos_wr) * 0.5).clamp_min(0.0))
    return cos_wr.clamp_min(0.0) * ggx_ndf(alpha, cos_h) / 4.0


@dataclass(frozen=True)
class LobeFilter:
    """The GGX prefilter of one level as sparse data, using the cube's symmetry: the rotation Q_f that
    takes face f onto face 0 maps texels onto texels, so only face 0's rows are stored.

    kernel: [R^2, 6 R^2] sparse CSR, k(w.R) (`ggx_lobe_weight`) from face-0 texels R to all texels w
    within the cutoff cone; face_perm: [6, 6 R^2] texel of Q_f^-1 w for every w (row 0 = identity);
    solid_angle: [6 R^2] steradians; inv_norm: [R^2] = 1 / sum_w k dOmega (the same on every face)."""

    kernel: Tensor
    face_perm: Tensor
    solid_angle: Tensor
    inv_norm: Tensor

    def kernel_matmul(self, z: Tensor) -> Tensor:
        """K @ z for the full symmetric [6 R^2, 6 R^2] kernel K and z [6 R^2, C] -> [6 R^2, C]."""
        rows, channels = self.kernel.shape[0], z.shape[-1]
        rotated = z[self.face_perm].permute(1, 0, 2).reshape(-1, 6 * channels)  # [6 R^2, 6 C]
        out = self.kernel @ rotated  # [R^2, 6 C]
        return out.reshape(rows, 6, channels).permute(1, 0, 2).reshape(-1, channels)

    def __call__(self, x: Tensor) -> Tensor:
        """Normalised filtering of texel values x [6 R^2, C] (float32) -> [6 R^2, C]; differentiable."""
        return _SymmetricFilter.apply(x, self)


class _SymmetricFilter(torch.autograd.Function):
    """y = inv_norm * K (solid_angle * x); since K^T = K the backward is solid_angle * K (inv_norm * g)."""

    @staticmethod
    def forward(ctx, x: Tensor, lobe: LobeFilter) -> Tensor:
        ctx.lobe = lobe
        return lobe.inv_norm.repeat(6)[:, None] * lobe.kernel_matmul(lobe.solid_angle[:, None] * x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        lobe = ctx.lobe
        return lobe.solid_angle[:, None] * lobe.kernel_matmul(lobe.inv_norm.repeat(6)[:, None] * grad), None


def _face_rotation_perms(res: int, device) -> Tensor:
    """[6, 6 R^2]: for face f, the texel Q_f^-1 w of every texel w, Q_f = B_0^T B_f (rows U, V, N of
    FACE_BASIS; all faces share one handedness, so Q_f is a proper rotation, a signed permutation)."""
    dirs = cube_texel_directions(res, device, torch.float64).reshape(-1, 3)
    basis = FACE_BASIS.to(device)
    return torch.stack([_nearest_texel(dirs @ (basis[0].T @ basis[f]), res) for f in range(6)])


def _tiles(res: int, device) -> tuple[Tensor, Tensor]:
    """Texel directions grouped in TILE x TILE tiles: (dirs [T, TILE^2, 3], flat texel index [T, TILE^2]),
    tiles ordered face by face."""
    tile = min(TILE, res)
    n = res // tile
    index = torch.arange(6 * res * res, device=device).reshape(6, n, tile, n, tile)
    index = index.permute(0, 1, 3, 2, 4).reshape(6 * n * n, tile * tile)
    return cube_texel_directions(res, device).reshape(-1, 3)[index], index


def _candidate_tile_pairs(out_tiles: Tensor, src_tiles: Tensor, cos_cut: float) -> Tensor:
    """[P, 2] pairs (a, b) of an output tile and a source tile that may hold texels within the cutoff
    angle of each other (bounding cones: centre direction and the widest texel angle from it)."""
    def cone(tiles: Tensor) -> tuple[Tensor, Tensor]:
        centre = tiles.mean(1)
        centre = centre / centre.norm(dim=-1, keepdim=True)
        return centre, torch.acos((tiles * centre[:, None]).sum(-1).clamp(-1, 1).min(1).values)

    (ca, ra), (cb, rb) = cone(out_tiles), cone(src_tiles)
    gap = torch.acos((ca @ cb.T).clamp(-1, 1)) - ra[:, None] - rb[None, :]
    return (gap <= math.acos(cos_cut) + 1e-4).nonzero()


@functools.lru_cache(maxsize=16)
def _ggx_lobe_filter_cached(res: int, roughness: float, cutoff: float, device: str) -> LobeFilter:
    cos_cut, alpha = ggx_lobe_cutoff(roughness, cutoff), roughness * roughness
    tile_dirs, tile_index = _tiles(res, device)
    face0_tiles = tile_dirs.shape[0] // 6
    pairs = _candidate_tile_pairs(tile_dirs[:face0_tiles], tile_dirs, cos_cut)
    rows, cols, vals = [], [], []
    for start in range(0, len(pairs), 1024):  # 1024 tile pairs of TILE^2 x TILE^2 texels at a time
        a, b = pairs[start:start + 1024].unbind(-1)
        cos = torch.bmm(tile_dirs[a], tile_dirs[b].transpose(1, 2))
        p, i, j = (cos >= cos_cut).nonzero(as_tuple=True)
        rows.append(tile_index[a[p], i])
        cols.append(tile_index[b[p], j])
        vals.append(ggx_lobe_weight(cos[p, i, j], alpha))
    n_rows, n = res * res, 6 * res * res
    row, col, val = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    order = torch.argsort(row * n + col)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=device)
    crow[1:] = torch.bincount(row, minlength=n_rows).cumsum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        kernel = torch.sparse_csr_tensor(crow.int(), col[order].int(), val[order], (n_rows, n))
    omega = cube_texel_solid_angles(res, device).reshape(-1)
    return LobeFilter(kernel, _face_rotation_perms(res, device), omega, 1.0 / (kernel @ omega[:, None])[:, 0])


def ggx_lobe_filter(res: int, roughness: float, cutoff: float = 0.99, device: torch.device | str = "cpu") -> LobeFilter:
    """The sparse GGX prefilter of a [6, res, res] cubemap, built once per (res, roughness, cutoff,
    device) and cached. Texel pairs are found by culling TILE x TILE tiles against the cutoff cone
    and then tested exactly, in chunks. Memory: 8 bytes per kept pair of face 0 (about 3.5M / 12.6M /
    6.5M / 1.7M / 0.2M pairs for the 256 / 128 / 64 / 32 / 16 levels of a 256 light, ~200 MB in all)."""
    return _ggx_lobe_filter_cached(int(res), float(roughness), float(cutoff), str(torch.device(device)))


def prefilter_specular(cube: Tensor, roughness: float, cutoff: float = 0.99) -> Tensor:
    """GGX-prefiltered radiance [6, R, R, C] (float32) of cube [6, R, R, C], for one roughness:
    out(R) = sum_w L(w) k(w, R) dOmega(w) / sum_w k(w, R) dOmega(w) over w.R >= `ggx_lobe_cutoff`,
    k = `ggx_lobe_weight` (the split-sum prefilter, Karis 2013 / nvdiffrec specular_cubemap).
    Differentiable in cube."""
    res, channels = cube.shape[1], cube.shape[-1]
    lobe = ggx_lobe_filter(res, roughness, cutoff, cube.device)
    return lobe(cube.reshape(-1, channels).float()).reshape(cube.shape)


@functools.lru_cache(maxsize=8)
def _irradiance_weights(res: int, device: str) -> Tensor:
    dirs = cube_texel_directions(res, device).reshape(-1, 3)
    omega = cube_texel_solid_angles(res, device).reshape(-1)
    return (dirs @ dirs.T).clamp_min(0.0) * omega[None, :] / math.pi


def diffuse_irradiance(cube: Tensor) -> Tensor:
    """Diffuse light E(n) = sum_w L(w) max(n.w, 0) dOmega(w) / pi at every texel direction n
    (irradiance / pi, in radiance units: a constant environment L gives L): [6, r, r, C] -> [6, r, r, C].
    Dense over all texel pairs, so meant for the LIGHT_MIN_RES level (r <= 32). Differentiable."""
    res, channels = cube.shape[1], cube.shape[-1]
    if res > 32:
        raise ValueError(f"diffuse_irradiance is dense in (6 r^2)^2; use a mip of <= 32 texels, not {res}")
    weights = _irradiance_weights(res, str(cube.device)).to(cube.dtype)
    return (weights @ cube.reshape(-1, channels)).reshape(cube.shape)


# ============================================================================ the learnable light
class CubemapLight(nn.Module):
    """GS-IR's learnable environment light (official `CubemapLight`, after nvdiffrec).

    base: nn.Parameter [6, R, R, 3] linear radiance, initialised to rand * init_scale + init_bias
    (GS-IR: 0.5, 0.25). `build_mips()` (call after each optimiser step) derives
    `specular`: list of [6, R_k, R_k, 3] for R_k = R, R/2, ..., 16 (GGX-prefiltered, `mip_roughness`) and
    `diffuse`: [6, 16, 16, 3] irradiance / pi of the 16^2 mip. Only `base` is in the state dict.
    R must be 16 * 2^k with k >= 1 (k >= 2, R >= 64, for the reference spacing of roughness levels)."""

    def __init__(self, base_res: int = 256, init_scale: float = 0.5, init_bias: float = 0.25, cutoff: float = 0.99):
        super().__init__()
        k = int(round(math.log2(max(base_res, 1) / LIGHT_MIN_RES)))
        if base_res < 2 * LIGHT_MIN_RES or base_res != LIGHT_MIN_RES * 2**k:
            raise ValueError(f"base_res must be {LIGHT_MIN_RES} * 2^k with k >= 1, got {base_res}")
        self.base = nn.Parameter(torch.rand(6, base_res, base_res, 3) * init_scale + init_bias)
        self.cutoff = cutoff
        self.specular: list[Tensor] = []
        self.diffuse: Tensor | None = None

    @property
    def levels(self) -> int:
        """Number of specular mip levels L."""
        return int(math.log2(self.base.shape[1] // LIGHT_MIN_RES)) + 1

    def build_mips(self) -> None:
        """Mip chain by 2x2 average pooling, diffuse irradiance from the smallest level, and every level
        GGX-prefiltered with its `mip_roughness`. Differentiable in `base`."""
        mips = mip_chain(self.base)
        self.diffuse = diffuse_irradiance(mips[-1])
        self.specular = [prefilter_specular(m, r, self.cutoff) for m, r in zip(mips, mip_roughness(len(mips)))]

    def get_mip(self, roughness: Tensor) -> Tensor:
        """Fractional specular mip level [...] for roughness [...] (see `roughness_to_mip`)."""
        return roughness_to_mip(roughness, self.levels)

    def irradiance(self, normals: Tensor) -> Tensor:
        """Diffuse light [..., 3] (irradiance / pi) for unit normals [..., 3]; needs build_mips()."""
        if self.diffuse is None:
            raise RuntimeError("CubemapLight.build_mips() must run before lookups")
        return cube_lookup(self.diffuse, normals)

    def prefiltered(self, dirs: Tensor, roughness: Tensor) -> Tensor:
        """Prefiltered specular radiance [..., 3] along reflected directions [..., 3] for roughness
        [..., 1] or [...] (trilinear over the mips at get_mip(roughness)); needs build_mips()."""
        if not self.specular:
            raise RuntimeError("CubemapLight.build_mips() must run before lookups")
        r = roughness[..., 0] if roughness.dim() == dirs.dim() else roughness
        return cube_lookup_mip(self.specular, dirs, self.get_mip(r))

    @torch.no_grad()
    def clamp_(self, min: float = 0.0, max: float | None = None) -> None:
        """Keep the base radiance in [min, max] (GS-IR: >= 0 after every optimiser step)."""
        self.base.clamp_(min=min, max=max)


# ============================================================================ lat-long maps
def _rotation(to_world, like: Tensor) -> Tensor | None:
    return None if to_world is None else torch.as_tensor(np.asarray(to_world, dtype=np.float64)).to(like)


def latlong_directions(height: int, width: int | None = None, to_world=None, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """Directions [H, W, 3] of lat-long pixel (i, j): Mitsuba's u = (j + 0.5) / W, v = i / (H - 1),
    rotated by to_world [3, 3] (None = the map's own frame, +y up)."""
    width = width or 2 * height
    u = (torch.arange(width, device=device, dtype=torch.float64) + 0.5) / width
    v = torch.arange(height, device=device, dtype=torch.float64) / (height - 1)
    theta, phi = torch.meshgrid(v * math.pi, u * 2 * math.pi, indexing="ij")
    local = torch.stack([theta.sin() * phi.sin(), theta.cos(), -theta.sin() * phi.cos()], dim=-1)
    rot = _rotation(to_world, local)
    return (local if rot is None else local @ rot.T).to(dtype)


def sample_latlong(latlong: Tensor, dirs: Tensor, to_world=None) -> Tensor:
    """Bilinear sample of a lat-long map [H, W, C] in world directions [..., 3] -> [..., C]
    (Mitsuba's envmap lookup: wraps in longitude, rows on the poles; to_world as in `latlong_directions`)."""
    height, width, channels = latlong.shape
    rot = _rotation(to_world, dirs)
    local = dirs if rot is None else dirs @ rot  # to_world^T d, row-vector form
    local = local / local.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z = local.unbind(-1)
    u = torch.remainder(torch.atan2(x, -z) / (2 * math.pi), 1.0)
    px = u * width - 0.5
    py = torch.acos(y.clamp(-1, 1)) / math.pi * (height - 1)
    x0, y0 = px.floor(), py.floor().clamp(0, height - 2)
    fx, fy = (px - x0)[..., None].to(latlong), (py - y0)[..., None].to(latlong)
    c0, c1 = torch.remainder(x0.long(), width), torch.remainder(x0.long() + 1, width)
    r0 = y0.long() * width
    flat = latlong.reshape(-1, channels)
    t00, t01, t10, t11 = flat[r0 + c0], flat[r0 + c1], flat[r0 + width + c0], flat[r0 + width + c1]
    return (t00 * (1 - fx) + t01 * fx) * (1 - fy) + (t10 * (1 - fx) + t11 * fx) * fy


def latlong_to_cubemap(latlong: Tensor, res: int, to_world=None) -> Tensor:
    """Lat-long map [H, W, C] -> cubemap [6, res, res, C]: every texel centre's direction is looked up
    bilinearly in the map (`sample_latlong`; no prefiltering, so give a map not much larger than 4 res wide)."""
    return sample_latlong(latlong, cube_texel_directions(res, latlong.device, latlong.dtype), to_world)


def cubemap_to_latlong(cube: Tensor, height: int = 512, width: int | None = None, to_world=None) -> Tensor:
    """Cubemap [6, R, R, C] -> lat-long map [height, width (2 height), C] in Mitsuba's parameterisation
    (for GS-IR's env TV loss at 512 x 1024 and for viewing). Differentiable in cube."""
    dirs = latlong_directions(height, width, to_world, cube.device, cube.dtype)
    return cube_lookup(cube, dirs)


# ============================================================================ Radiance .hdr
RADIANCE_MAGIC = (b"#?RADIANCE", b"#?RGBE")


def read_radiance_hdr(path: str | Path) -> np.ndarray:
    """A Radiance .hdr file -> float32 [H, W, 3] linear RGB radiance.

    Raises LumenkitError (one line naming the file) when the file is missing, is not Radiance
    (no '#?RADIANCE' / '#?RGBE' magic), cannot be decoded, or holds NaN/inf pixels."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise LumenkitError(f"{path}: no such .hdr file")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head.startswith(RADIANCE_MAGIC):
        raise LumenkitError(f"{path}: not a Radiance .hdr file (it does not start with '#?RADIANCE' or '#?RGBE')")
    img = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR)
    if img is None:
        raise LumenkitError(f"{path}: Radiance header but the pixels cannot be decoded")
    img = np.ascontiguousarray(img[..., ::-1], dtype=np.float32)
    bad = ~np.isfinite(img).all(axis=-1)
    if bad.any():
        raise LumenkitError(f"{path}: {int(bad.sum())} of {bad.size} pixels are NaN or infinite")
    return img
