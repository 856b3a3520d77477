"""Differentiable 3D Gaussian rasterizer with GS-IR's attribute maps (3DGS / GS-IR, seed 000).

One public function, `rasterize`, in the spirit of gsplat's `rasterization`: Gaussians + one camera
-> a dict of per-pixel maps. The pipeline is the one of 3DGS (Kerbl et al. 2023):

1. `project_gaussians` (plain torch, autograd): EWA splatting, 2-D covariance
   ``J W Sigma W^T J^T + 0.3 I`` (low-pass dilation as 3DGS), conic = its inverse, radius =
   ``ceil(3 sqrt(lambda_max))`` pixels, frustum culling (near/far planes, 16x16 tile rectangle).
2. Per-Gaussian channels: colour (SH evaluated in `sh.py`, or given), a constant 1 (its blend is
   the opacity O), view-space depth z, and the optional normal / albedo / roughness / metallic.
3. A blending backend composites the channels front to back per pixel over the depth-sorted
   Gaussians of the pixel's 16x16 tile: ``alpha = min(0.99, o exp(-0.5 d^T conic d))``, Gaussians
   with ``alpha < 1/255`` are skipped, weight = ``alpha * T``, and a pixel stops before the Gaussian
   that would bring its transmittance ``T`` below ``1e-4``.

Backends (steps 1-2 are the same maths everywhere; they differ in who computes them and the blending):
- ``"reference"``: plain torch, dense [N, H*W] with a cumprod over depth; small and obviously correct,
  gradients by autograd (any dtype, float64 gradcheck). Only for small scenes.
- ``"cpu"``: compiled C++/OpenMP extension in ``csrc/``: steps 1-2 fused (``preprocess_cpu.cpp``,
  checked against the torch functions) and the 3DGS-style tile blending, forward and backward
  (``rasterize_cpu.cpp``), float32 and float64. Built on first use by `torch.utils.cpp_extension.load`
  (about a minute) and cached under ``$LUMENKIT_EXT_DIR`` (default
  ``~/.cache/lumenkit/torch_extensions``). Threads: ``torch.set_num_threads``. On a machine shared
  with other jobs, start Python with ``OMP_WAIT_POLICY=PASSIVE`` (spinning OpenMP threads otherwise
  make 2 threads several times slower than 1).
- ``"cuda"``: gsplat's tile intersection + ``rasterize_to_pixels`` on our projected Gaussians with all
  attributes as extra channels (optional extra ``lumenkit[cuda]``).
- ``"auto"``: cuda for GPU tensors (gsplat required), else cpu (reference, with a warning, if the
  extension cannot be built).

Conventions: OpenCV camera (x right, y down, z forward), ``viewmat`` world->camera; pixel (row i,
column j) has its centre at continuous image coordinate (j + 0.5, i + 0.5), the coordinates ``K``
maps to (so ``cx = W / 2`` puts the principal point in the middle of the image, as gsplat).
Depth is view-space z in scene units.
"""
from __future__ import annotations

import fcntl
import hashlib
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from lumenkit.gsir.sh import sh_to_color

TILE = 16
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4
COV2D_DILATION = 0.3
BACKENDS = ("auto", "cpu", "reference", "cuda")

# OpenGL/Blender camera axes (x right, y up, z backward) -> OpenCV (x right, y down, z forward).
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


@dataclass
class Camera:
    """A pinhole camera, OpenCV convention.

    viewmat: [4, 4] world -> camera (x right, y down, z forward); K: [3, 3] intrinsics in pixels
    (pixel centres at j + 0.5); width, height in pixels; near/far clip planes on view-space z.
    """

    viewmat: Tensor
    K: Tensor
    width: int
    height: int
    near: float = 0.01
    far: float = 100.0

    @property
    def camera_center(self) -> Tensor:
        """[3] camera position in world coordinates (-R^T t)."""
        R, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -R.T @ t

    @property
    def c2w(self) -> Tensor:
        """[4, 4] camera -> world, OpenCV axes."""
        return torch.linalg.inv(self.viewmat)

    @property
    def fov_x(self) -> float:
        """Horizontal field of view in radians."""
        return 2.0 * math.atan(self.width / (2.0 * float(self.K[0, 0])))

    @property
    def fov_y(self) -> float:
        """Vertical field of view in radians."""
        return 2.0 * math.atan(self.height / (2.0 * float(self.K[1, 1])))

    @classmethod
    def from_fov(cls, c2w_opengl: Tensor, fov_x: float, width: int, height: int, *, fov_y: float | None = None,
                 near: float = 0.01, far: float = 100.0) -> "Camera":
        """Camera from a Blender/NeRF-synthetic camera-to-world matrix (OpenGL axes) and fov in radians.

        c2w_opengl: [4, 4] (``transform_matrix`` of transforms_*.json); fov_x: ``camera_angle_x``
        (radians); fov_y defaults to square pixels (fy = fx). Principal point at the image centre.
        """
        c2w = torch.as_tensor(c2w_opengl, dtype=torch.float64) @ _GL_TO_CV
        viewmat = torch.linalg.inv(c2w).float()
        fx = 0.5 * width / math.tan(0.5 * fov_x)
        fy = fx if fov_y is None else 0.5 * height / math.tan(0.5 * fov_y)
        K = torch.tensor([[fx, 0.0, width / 2.0], [0.0, fy, height / 2.0], [0.0, 0.0, 1.0]])
        return cls(viewmat=viewmat, K=K, width=int(width), height=int(height), near=near, far=far)

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "Camera":
        return Camera(self.viewmat.to(device, dtype), self.K.to(device, dtype), self.width, self.height, self.near, self.far)

    def project(self, points: Tensor) -> Tensor:
        """World points [..., 3] -> pixel coordinates [..., 2] (continuous, centres at j + 0.5)."""
        p = points @ self.viewmat[:3, :3].T.to(points) + self.viewmat[:3, 3].to(points)
        uv = p[..., :2] / p[..., 2:3]
        K = self.K.to(points)
        return torch.stack([K[0, 0] * uv[..., 0] + K[0, 2], K[1, 1] * uv[..., 1] + K[1, 2]], dim=-1)


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


_EXT = None
_CSRC = Path(__file__).parent / "csrc"


def extension_dir() -> Path:
    """Build/cache folder of the C++ extension: $LUMENKIT_EXT_DIR or ~/.cache/lumenkit/torch_extensions,
    one subfolder per torch version and source folder (two checkouts sharing one folder would make
    ninja rebuild on every switch, as the sources' paths differ)."""
    root = os.environ.get("LUMENKIT_EXT_DIR") or str(Path.home() / ".cache" / "lumenkit" / "torch_extensions")
    source_key = hashlib.sha1(str(_CSRC.resolve()).encode()).hexdigest()[:8]
    return Path(root) / f"gsir_cpu_torch{torch.__version__.replace('+', '_')}_{source_key}"



def load_extension():
    """Build on first use (about a minute; cached, rebuilt when the source changes) and load the
    C++/OpenMP rasterizer in ``csrc/rasterize_cpu.cpp``."""
    global _EXT
    if _EXT is None:
        from torch.utils.cpp_extension import load

        build_dir = extension_dir()
        build_dir.mkdir(parents=True, exist_ok=True)
        # rasterize_cpu.cpp #includes the other sources: hash them all so any edit triggers a rebuild
        digest = hashlib.sha1(b"".join(f.read_bytes() for f in sorted(_CSRC.glob("*.cpp")))).hexdigest()[:12]
        if not any(build_dir.glob("lumenkit_gsir_cpu*.so")):
            print(f"lumenkit.gsir: building the C++ rasterizer in {build_dir} (first use, about a minute)", file=sys.stderr)
        with open(build_dir / "lumenkit.flock", "w") as flock:
            # torch's own build lock is a plain file that a killed build leaves behind, after which every
            # later load waits forever. An flock is dropped by the kernel when its process dies: holding it,
            # no other lumenkit process is building here, so a leftover torch lock file is stale.
            fcntl.flock(flock, fcntl.LOCK_EX)
            (build_dir / "lock").unlink(missing_ok=True)
            _EXT = load(
                name="lumenkit_gsir_cpu",
                sources=[str(_CSRC / "rasterize_cpu.cpp")],
                extra_cflags=["-O3", "-fopenmp", f"-DLUMENKIT_CSRC_HASH={digest}"],
                extra_ldflags=["-fopenmp"],
                build_directory=str(build_dir),
                verbose=False,
            )
    return _EXT


class _BlendCPU(torch.autograd.Function):
    """Autograd wrapper of the C++ forward / backward (3DGS's renderCUDA pair, on the CPU)."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, channels, order, rects, width, height, want_argmax, n_alpha=None):
        ext = load_extension()
        m, c, o, ch = (t.detach().contiguous() for t in (means2d, conics, opacities, channels))
        out, final_T, n_contrib, argmax, offsets, ids, gstart, by_gauss = ext.blend_forward(
            m, c, o, ch, order, rects, width, height, want_argmax
        )
        ctx.save_for_backward(m, c, o, ch, offsets, ids, final_T, n_contrib, order, gstart, by_gauss)
        ctx.size = (width, height)
        ctx.n_alpha = ch.shape[1] if n_alpha is None else max(1, min(int(n_alpha), ch.shape[1]))
        ctx.mark_non_differentiable(argmax)
        return out, argmax

    @staticmethod
    def backward(ctx, grad_out, _grad_argmax):
        m, c, o, ch, offsets, ids, final_T, n_contrib, order, gstart, by_gauss = ctx.saved_tensors
        W, H = ctx.size
        # channels past n_alpha: gradient to the channel values only (GS-IR's PBR maps), in the same pass
        g_m, g_c, g_o, g_ch = load_extension().blend_backward(
            m, c, o, ch, offsets, ids, W, H, final_T, n_contrib, grad_out.contiguous(), order, gstart, by_gauss, ctx.n_alpha
        )
        return g_m, g_c, g_o, g_ch, None, None, None, None, None, None


class _PreprocessCPU(torch.autograd.Function):
    """Autograd wrapper of the fused C++ projection + SH colour (same maths as `project_gaussians`
    and `sh_to_color`)."""

    @staticmethod
    def forward(ctx, means, quats, scales, sh, degree, camera):
        ext = load_extension()
        m, q, sc = (t.detach().contiguous() for t in (means, quats, scales))
        shd = sh.detach().contiguous() if sh is not None else m.new_zeros(0)
        campos = camera.camera_center.to(m)
        args = (campos, camera.viewmat.detach(), camera.K.detach(), camera.width, camera.height, camera.near, camera.far)
        means2d, conics, depths, radii, rects, colors = ext.preprocess_forward(m, q, sc, shd, degree, *args)
        ctx.save_for_backward(m, q, sc, shd, radii)
        ctx.args, ctx.degree, ctx.has_sh = args, degree, sh is not None
        ctx.mark_non_differentiable(radii, rects)
        return means2d, conics, depths, radii, rects, colors

    @staticmethod
    def backward(ctx, g_m2d, g_con, g_dep, _g_radii, _g_rects, g_col):
        m, q, sc, shd, radii = ctx.saved_tensors
        z = lambda g, like: torch.zeros_like(like) if g is None else g  # noqa: E731
        g_col = z(g_col, m.new_zeros(m.shape[0], 3)) if ctx.has_sh else m.new_zeros(0)
        d_m, d_q, d_s, d_sh = load_extension().preprocess_backward(
            m, q, sc, shd, ctx.degree, *ctx.args, radii, z(g_m2d, m[:, :2]), z(g_con, m), z(g_dep, m[:, 0]), g_col
        )
        return d_m, d_q, d_s, (d_sh if ctx.has_sh else None), None, None


def preprocess_cpu(means: Tensor, quats: Tensor, scales: Tensor, camera: Camera, sh: Tensor | None = None,
                   sh_degree: int = 0) -> tuple[Projected, Tensor | None]:
    """`project_gaussians` (+ `sh_to_color` when sh is given) fused in C++ (CPU tensors, float32/64).
    Returns (Projected, colors [N, 3] or None)."""
    means2d, conics, depths, radii, rects, colors = _PreprocessCPU.apply(means, quats, scales, sh, sh_degree, camera)
    return Projected(means2d, conics, depths, radii, rects), (colors if sh is not None else None)


def _blend_cpu(means2d, conics, opacities, channels, order, rects, width, height, want_argmax=False, n_alpha=None):
    """C++/OpenMP blending (float32 or float64 CPU tensors). n_alpha: only the first n_alpha channels
    back-propagate to means2d / conics / opacities (default: all)."""
    out, argmax = _BlendCPU.apply(means2d, conics, opacities, channels, order, rects, width, height, want_argmax, n_alpha)
    return out, (argmax if want_argmax else None)


def _gsplat_radii_2d(isect_tiles) -> bool:
    """Does this gsplat's isect_tiles take radii [..., N, 2] (1.5+) rather than [..., N]?"""
    import inspect

    try:
        src = inspect.getsource(isect_tiles)
        line = next(ln for ln in src.splitlines() if ln.strip().startswith("radii"))
        return ", 2]" in line
    except (OSError, TypeError, StopIteration):
        from importlib.metadata import PackageNotFoundError, version

        try:
            major, minor = (int(v) for v in version("gsplat").split(".")[:2])
        except (PackageNotFoundError, ValueError):
            return True
        return (major, minor) >= (1, 5)


def _blend_cuda(means2d, conics, opacities, channels, order, rects, width, height, want_argmax=False, *, depths, radii):
    """gsplat blending (CUDA) of our projected Gaussians, every attribute an extra channel.

    gsplat intersects tiles from the same means2d and radii (its rectangle rule equals ours except
    when mean + r falls exactly on a tile border) and sorts by the same depths. Known differences from
    the CPU kernel: gsplat clamps alpha at 0.999 (not 0.99) and stops when T <= 1e-4 (not < 1e-4).
    argmax_depth runs the CPU kernel (gsplat has no equivalent).
    """
    try:
        from gsplat import isect_offset_encode, isect_tiles, rasterize_to_pixels
    except ImportError as exc:  # pragma: no cover - needs gsplat
        raise RuntimeError("backend='cuda' needs gsplat (pip install 'lumenkit[cuda]')") from exc
    tw, th = (width + TILE - 1) // TILE, (height + TILE - 1) // TILE
    r = radii.to(torch.int32)[None]
    if _gsplat_radii_2d(isect_tiles):  # gsplat >= 1.5: per-axis radii [..., N, 2]
        r = torch.stack([r, r], dim=-1)
    m2d, dep = means2d[None].contiguous(), depths.detach()[None].contiguous()
    _, isect_ids, flatten_ids = isect_tiles(m2d, r, dep, TILE, tw, th)
    offsets = isect_offset_encode(isect_ids, 1, tw, th)
    colors, _alphas = rasterize_to_pixels(
        m2d, conics[None].contiguous(), channels[None].contiguous(), opacities[None].contiguous(),
        width, height, TILE, offsets, flatten_ids,
    )
    out = colors[0].permute(2, 0, 1)
    argmax = None
    if want_argmax:
        cpu = [t.detach().cpu() for t in (means2d, conics, opacities, channels)]
        _, argmax = _blend_cpu(*cpu, order.cpu(), rects.cpu(), width, height, True)
        argmax = argmax.to(means2d.device)
    return out, argmax


_BLENDERS = {"reference": blend_reference, "cpu": _blend_cpu}


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> 'cuda' for GPU tensors (gsplat required), else 'cpu' (the C++ extension; 'reference'
    with a warning if it cannot be built)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if device.type != "cpu":
        try:
            import gsplat  # noqa: F401

            return "cuda"
        except ImportError as exc:
            raise RuntimeError(
                f"rasterize: tensors are on {device} but gsplat is not installed (pip install 'lumenkit[cuda]'); "
                "install it or render on the CPU (--device cpu)"
            ) from exc
    try:
        load_extension()
        return "cpu"
    except Exception as exc:  # pragma: no cover - only without a compiler
        warnings.warn(f"lumenkit.gsir: C++ rasterizer unavailable ({exc}); using the slow reference backend")
        return "reference"


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    camera: Camera,
    *,
    colors: Tensor | None = None,
    sh: Tensor | None = None,
    sh_degree: int | None = None,
    normals: Tensor | None = None,
    albedo: Tensor | None = None,
    roughness: Tensor | None = None,
    metallic: Tensor | None = None,
    bg: Tensor | None = None,
    backend: str = "auto",
    argmax_depth: bool = False,
    inference: bool = False,
    planar_depth: bool = False,
    depth_distortion: bool = False,
) -> dict[str, Tensor]:
    """Render N Gaussians from one camera with GS-IR's attribute maps.

    Inputs (world space, all on one device, float32 or float64):
      means [N, 3]; quats [N, 4] wxyz (need not be normalised); scales [N, 3] activated (> 0);
      opacities [N] in (0, 1) (activated); camera: `Camera`.
      Colour: ``sh`` [N, K, 3] with ``sh_degree`` (default: the largest the K coefficients allow;
      view direction from the camera centre, 3DGS's +0.5 and clamp at 0) or ``colors`` [N, 3]
      (linear RGB, used as is). One of the two is required.
      Optional per-Gaussian attributes blended like colour: normals [N, 3] (world, blended as given,
      not renormalised), albedo [N, 3], roughness [N, 1], metallic [N, 1]. As in GS-IR's rasterizer
      ("PBR: do not contribute to the alpha/opacity"), their maps back-propagate to the attributes
      only, never to the means / covariances / opacities: a normal loss must move the normals, not
      the geometry (which it would otherwise fight, costing 3DGS's photometric quality).
      bg [3] background colour (default black).
      argmax_depth: depth_map is the view-space z of the Gaussian with the largest weight at each pixel
      (0 where none) instead of the expected depth. inference: roughness_map += T (background rough).
      planar_depth (lumenkit addition; GS-IR blends centre depths): each Gaussian contributes the depth
      of its own plane at the pixel (`depth_planes`), not its centre depth.
      depth_distortion (lumenkit addition, 2DGS / Mip-NeRF 360's distortion loss): also return
      distortion_map [1, H, W] = 1/2 sum_ij w_i w_j (z_i - z_j)^2 over the centre depths (scene units^2),
      computed as O sum w z^2 - (sum w z)^2 from two extra blended channels (z taken relative to the
      mean visible depth, to keep float32 cancellation small); it differentiates w.r.t. the geometry.

    Returns a dict:
      render [3, H, W] = sum w c + T bg; opacity_map [1, H, W] = O = sum w = 1 - T;
      depth_map [1, H, W] = (sum w z) / O (0 where O <= 1e-6, as GS-IR), or the argmax depth;
      normal_map / albedo_map [3, H, W], roughness_map / metallic_map [1, H, W] - present only for the
      attributes that were given (omitted otherwise);
      viewspace_points [N, 2] zero leaf tensor added to the projected means: after backward its
      ``.grad`` is dL/d(means2D) in pixels (3DGS measures it in NDC, i.e. x W/2, H/2: use
      `viewspace_grad_norm` for 3DGS's densification threshold); visibility_filter [N] bool (radii > 0);
      radii [N] int32 (pixels, 0 = culled); means2d [N, 2] and depths [N] (detached, for inspection).
    """
    N = means.shape[0]
    W, H = camera.width, camera.height
    backend = resolve_backend(backend, means.device)
    for name, t, shape in (("means", means, (N, 3)), ("quats", quats, (N, 4)), ("scales", scales, (N, 3))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")

    if sh is None and colors is None:
        raise ValueError("rasterize needs `colors` [N, 3] or `sh` [N, K, 3]")
    if sh is not None and sh_degree is None:
        sh_degree = int(math.isqrt(sh.shape[1])) - 1
    if backend == "cpu":  # fused C++ projection + SH
        proj, color = preprocess_cpu(means, quats, scales, camera.to(means.device, means.dtype), sh, sh_degree or 0)
    else:
        proj = project_gaussians(means, quats, scales, camera)
        color = sh_to_color(sh, means, camera.camera_center.to(means), sh_degree) if sh is not None else None
    if color is None:
        color = colors
    viewspace_points = torch.zeros((N, 2), dtype=means.dtype, device=means.device, requires_grad=True)
    means2d = proj.means2d + viewspace_points

    if planar_depth:
        names: list[tuple[str, int]] = [("rgb", 3), ("opacity", 1), ("depth", 3)]
        chans = [color.to(means.dtype), torch.ones_like(proj.depths)[:, None], depth_planes(means, quats, scales, camera, proj.means2d)]
    else:
        names = [("rgb", 3), ("opacity", 1), ("depth", 1)]
        chans = [color.to(means.dtype), torch.ones_like(proj.depths)[:, None], proj.depths[:, None]]
    if depth_distortion:
        visible = proj.radii > 0  # culled Gaussians may carry any depth (behind the camera, inf)
        z_vis = torch.where(visible, proj.depths.detach(), torch.zeros_like(proj.depths))
        z_ref = z_vis.sum() / visible.sum().clamp_min(1).to(means.dtype)  # no host sync
        z = torch.where(visible, proj.depths - z_ref, torch.zeros_like(proj.depths))
        names += [("z_moment1", 1), ("z_moment2", 1)]
        chans += [z[:, None], (z * z)[:, None]]
    n_alpha = sum(k for _, k in names)  # rgb, opacity, depth (and moments) move the geometry; attributes do not
    for name, t, k in (("normal", normals, 3), ("albedo", albedo, 3), ("roughness", roughness, 1), ("metallic", metallic, 1)):
        if t is not None:
            t = t.reshape(N, k).to(means.dtype)
            names.append((name, k))
            chans.append(t)
    channels = torch.cat(chans, dim=1).contiguous()

    order = depth_order(proj.depths, proj.radii)
    opac = opacities.reshape(N).to(means.dtype)
    if backend == "cpu":
        out, argmax = _blend_cpu(means2d, proj.conics, opac, channels, order, proj.rects, W, H, argmax_depth, n_alpha)
    else:
        kw = {"depths": proj.depths, "radii": proj.radii} if backend == "cuda" else {}
        blender = _blend_cuda if backend == "cuda" else _BLENDERS[backend]
        geo = (means2d, proj.conics, opac)
        if channels.shape[1] > n_alpha and torch.is_grad_enabled():  # attributes on detached geometry
            out, argmax = blender(*geo, channels[:, :n_alpha], order, proj.rects, W, H, argmax_depth, **kw)
            attr, _ = blender(*(t.detach() for t in geo), channels[:, n_alpha:], order, proj.rects, W, H, False, **kw)
            out = torch.cat([out, attr], dim=0)
        else:
            out, argmax = blender(*geo, channels, order, proj.rects, W, H, argmax_depth, **kw)

    maps: dict[str, Tensor] = {}
    start = 0
    for name, k in names:
        maps[name] = out[start : start + k]
        start += k
    O = maps["opacity"]
    T = 1.0 - O
    if planar_depth:  # sum w (a + pu (u - cx) + pv (v - cy)) from the three blended plane channels
        K = camera.K.to(means)
        u = torch.arange(W, device=means.device, dtype=means.dtype) + 0.5 - K[0, 2]
        v = torch.arange(H, device=means.device, dtype=means.dtype) + 0.5 - K[1, 2]
        d = maps["depth"]
        maps["depth"] = d[0:1] + d[1:2] * u[None, None, :] + d[2:3] * v[None, :, None]
    render = maps["rgb"]
    if bg is not None:
        render = render + T * bg.to(render).reshape(3, 1, 1)
    if argmax_depth:
        if N == 0:
            depth_map = torch.zeros_like(O)
        else:
            safe = argmax.clamp_min(0)
            depth_map = torch.where(argmax >= 0, proj.depths[safe], torch.zeros_like(proj.depths[safe]))[None]
    else:
        depth_map = torch.where(O > 1e-6, maps["depth"] / O.clamp_min(1e-6), torch.zeros_like(O))  # as GS-IR
    result = {
        "render": render,
        "opacity_map": O,
        "depth_map": depth_map,
        "viewspace_points": viewspace_points,
        "visibility_filter": proj.radii > 0,
        "radii": proj.radii,
        "means2d": proj.means2d.detach(),
        "depths": proj.depths.detach(),
    }
    if depth_distortion:
        result["distortion_map"] = (O * maps["z_moment2"] - maps["z_moment1"] ** 2).clamp_min(0.0)
    for name in ("normal", "albedo", "roughness", "metallic"):
        if name in maps:
            result[f"{name}_map"] = maps[name] + T if (name == "roughness" and inference) else maps[name]
    return result


def viewspace_grad_norm(viewspace_points: Tensor, camera: Camera) -> Tensor:
    """[N] norm of the view-space positional gradient in 3DGS's NDC units (pixel grad x (W/2, H/2)),
    the quantity 3DGS compares with ``densify_grad_threshold`` (2e-4). Zeros if there is no grad."""
    g = viewspace_points.grad
    if g is None:
        return torch.zeros(viewspace_points.shape[0], device=viewspace_points.device)
    scale = torch.tensor([camera.width / 2.0, camera.height / 2.0], dtype=g.dtype, device=g.device)
    return (g[:, :2] * scale).norm(dim=-1)
