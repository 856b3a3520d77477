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

Backends (steps 1-2 are the same maths everywhere; they differ in who computes them and the blending),
one module each, as gsplat's ``rendering.py`` / ``cuda/_torch_impl.py``:
- ``"reference"`` (`_torch_impl`): plain torch, dense [N, H*W] with a cumprod over depth; small and
  obviously correct, gradients by autograd (any dtype, float64 gradcheck). Only for small scenes.
- ``"cpu"`` (`_cpu`): compiled C++/OpenMP extension in ``csrc/``: steps 1-2 fused
  (``preprocess_cpu.cpp``, checked against the torch functions) and the 3DGS-style tile blending,
  forward and backward (``rasterize_cpu.cpp``), float32 and float64. Built on first use by
  `torch.utils.cpp_extension.load` (about a minute) and cached under ``$LUMENKIT_EXT_DIR`` (default
  ``~/.cache/lumenkit/torch_extensions``). Threads: ``torch.set_num_threads``. On a machine shared
  with other jobs, start Python with ``OMP_WAIT_POLICY=PASSIVE`` (spinning OpenMP threads otherwise
  make 2 threads several times slower than 1).
- ``"cuda"`` (`_gsplat`): gsplat's tile intersection + ``rasterize_to_pixels`` on our projected
  Gaussians with all attributes as extra channels (optional extra ``lumenkit[cuda]``).
- ``"auto"``: cuda for GPU tensors (gsplat required), else cpu (reference, with a warning, if the
  extension cannot be built).

Conventions: OpenCV camera (x right, y down, z forward), ``viewmat`` world->camera; pixel (row i,
column j) has its centre at continuous image coordinate (j + 0.5, i + 0.5), the coordinates ``K``
maps to (so ``cx = W / 2`` puts the principal point in the middle of the image, as gsplat).
Depth is view-space z in scene units.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from lumenkit.common.config import check_choice
from lumenkit.common.errors import LumenkitError
from lumenkit.gsir._cpu import blend_cpu, load_extension, preprocess_cpu
from lumenkit.gsir._gsplat import blend_cuda
from lumenkit.gsir._torch_impl import blend_reference, depth_order, depth_planes, project_gaussians
from lumenkit.gsir.camera import Camera
from lumenkit.gsir.config import BACKENDS
from lumenkit.gsir.sh import sh_to_color

__all__ = ["BACKENDS", "Camera", "check_backend", "rasterize", "resolve_backend"]

_BLENDERS = {"reference": blend_reference, "cpu": blend_cpu}


def _has_gsplat() -> bool:
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> 'cuda' for GPU tensors (gsplat required), else 'cpu' (the C++ extension; 'reference'
    with a warning if it cannot be built). An unknown name or a missing gsplat is a LumenkitError."""
    check_choice("backend", backend, BACKENDS)
    if backend == "cuda" and not _has_gsplat():
        raise LumenkitError("--backend cuda needs gsplat (pip install 'lumenkit[cuda]')")
    if backend != "auto":
        return backend
    if device.type != "cpu":
        if not _has_gsplat():
            raise LumenkitError(f"rasterize: tensors are on {device} but gsplat is not installed (pip install 'lumenkit[cuda]'); "
                                "install it or render on the CPU (--device cpu)")
        return "cuda"
    try:
        load_extension()
        return "cpu"
    except Exception as exc:  # pragma: no cover - only without a compiler
        warnings.warn(f"lumenkit.gsir: C++ rasterizer unavailable ({exc}); using the slow reference backend")
        return "reference"


def check_backend(backend: str, device: torch.device) -> str:
    """What a command checks before it writes anything: the backend resolves for `device`, and
    'cuda' runs on a CUDA device (gsplat cannot blend CPU tensors)."""
    resolved = resolve_backend(backend, torch.device(device))
    if resolved == "cuda" and torch.device(device).type != "cuda":
        raise LumenkitError(f"--backend cuda: gsplat rasterizes on the GPU; use --device cuda (got --device {torch.device(device).type})")
    return resolved


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
      ``.grad`` is dL/d(means2D) in pixels (3DGS measures it in NDC, i.e. x W/2, H/2, the unit of
      its densification threshold: see train._ndc_grad); visibility_filter [N] bool (radii > 0);
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
        out, argmax = blend_cpu(means2d, proj.conics, opac, channels, order, proj.rects, W, H, argmax_depth, n_alpha)
    else:
        kw = {"depths": proj.depths, "radii": proj.radii} if backend == "cuda" else {}
        blender = blend_cuda if backend == "cuda" else _BLENDERS[backend]
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
