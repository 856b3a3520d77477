"""Rendering a GaussianModel (GS-IR's gaussian_renderer.render) and writing test-view outputs.

`render` returns GS-IR's render_pkg: render [3, H, W] (colour + T * bg), opacity_map [1, H, W],
depth_map [1, H, W] (camera z, weighted D / O), normal_map [3, H, W] (world, normalised),
normal_map_from_depth [3, H, W] (world, from depth), normal_from_depth_mask [H, W] bool,
albedo_map [3, H, W], roughness_map / metallic_map [1, H, W], viewspace_points, visibility_filter, radii.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lumenkit.gsir.gaussians import GaussianModel


def render(gaussians: GaussianModel, camera, bg: torch.Tensor, *, backend: str = "auto", argmax_depth: bool = False, inference: bool = False,
           with_depth_normal: bool = True, depth_median: bool = True, skip_border_normal_grad: bool = True,
           depth_normal_grad: bool = False, depth_normal_side_rule: str = "depth", depth_distortion: bool = False) -> dict:
    """Rasterize every Gaussian attribute for one camera; add the normal from depth and its masks.

    As GS-IR: the normal from depth is computed on the 3x3 median-filtered depth (``depth_median``,
    its rasterizer's ``kornia.filters.median_blur(depth, (3, 3))``), and the gradient of the normal
    map is zeroed on the image border pixels (``skip_border_normal_grad``, its backward.cu "Skip the
    edge normal", where the depth normal does not exist either).

    depth_normal_grad (lumenkit addition, not GS-IR): also return ``normal_map_from_depth_grad``, the
    same depth normal with its graph to the rendered depth kept, for a loss that moves the geometry.
    depth_normal_side_rule: geometry.depth_to_normal's side_rule ("depth" = GS-IR, "curvature").
    depth_distortion: also return distortion_map [1, H, W] (rasterize's, lumenkit addition)."""
    from lumenkit.gsir.rasterize import rasterize

    out = rasterize(
        gaussians.xyz,
        gaussians.quats,
        gaussians.scales,
        gaussians.opacities,
        camera,
        sh=gaussians.sh,
        sh_degree=gaussians.active_sh_degree,
        normals=gaussians.view_normals(camera.camera_center.to(gaussians.xyz)),
        albedo=gaussians.albedo,
        roughness=gaussians.roughness,
        metallic=gaussians.metallic,
        bg=bg,
        backend=backend,
        argmax_depth=argmax_depth,
        inference=inference,
        planar_depth=gaussians.planar_depth,
        depth_distortion=depth_distortion,
    )
    pkg = dict(out)
    if skip_border_normal_grad and out["normal_map"].requires_grad:
        out["normal_map"].register_hook(zero_border)
    pkg["normal_map_raw"] = out["normal_map"]
    pkg["normal_map"] = F.normalize(out["normal_map"], dim=0, eps=1e-8)
    if with_depth_normal:
        pkg.update(normal_from_depth(out["depth_map"], camera, median=depth_median, grad=depth_normal_grad,
                                     side_rule=depth_normal_side_rule))
    return pkg


def zero_border(grad: torch.Tensor) -> torch.Tensor:
    """[C, H, W] gradient with the outermost row / column set to zero (GS-IR's edge-normal skip)."""
    g = grad.clone()
    g[..., 0, :] = 0
    g[..., -1, :] = 0
    g[..., :, 0] = 0
    g[..., :, -1] = 0
    return g


def median_blur3(x: torch.Tensor) -> torch.Tensor:
    """3x3 median of a [1, H, W] (or [H, W]) map with zero padding, as kornia.filters.median_blur(x, (3, 3))
    (torch.median: the lower of the two middle values never arises with 9 samples)."""
    shape = x.shape
    x2 = x.reshape(1, 1, *shape[-2:])
    patches = torch.nn.functional.unfold(x2, 3, padding=1)  # [1, 9, H*W]
    return patches.median(dim=1).values.reshape(shape)


def normal_from_depth(depth_map: torch.Tensor, camera, median: bool = True, grad: bool = False, side_rule: str = "depth") -> dict:
    """GS-IR: normal_map_from_depth [3, H, W] (detached, as GS-IR's CUDA op has no backward: the
    normals learn from depth, not the reverse), normal_from_depth_mask [H, W], mask_from_depth [1, H, W].
    median: compute it from the 3x3 median-filtered depth, as GS-IR's rasterizer does.
    grad: add normal_map_from_depth_grad [3, H, W], the same values differentiable w.r.t. depth_map."""
    from lumenkit.gsir.geometry import normals_from_depth

    d = depth_map if grad else depth_map.detach()
    res = normals_from_depth(median_blur3(d) if median else d, camera, side_rule=side_rule)
    out = {k: v.detach() for k, v in res.items()}
    if grad:
        out["normal_map_from_depth_grad"] = res["normal_map_from_depth"]
    return out


def normal_to_rgb(n: torch.Tensor) -> np.ndarray:
    """[3, H, W] unit normals -> [H, W, 3] colour (n + 1) / 2 (0 stays black where no normal)."""
    valid = (n != 0).any(0, keepdim=True)
    return (((n + 1) / 2) * valid).permute(1, 2, 0).clamp(0, 1).cpu().numpy()


def to_hwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def render_set(gaussians: GaussianModel, views, out_dir: Path, bg: torch.Tensor, device, backend: str = "auto", progress: bool = True) -> Path:
    """3DGS render.py layout: out_dir/{renders,gt,normal,normal_from_depth,depth,albedo,roughness,metallic,opacity}/NNNNN.png.

    Normals are 16-bit PNGs of (n + 1) / 2 with alpha = rendered opacity > 0.5 masked; depth 16-bit with
    metadata depth_scale (scene units per step). Written into a hidden sibling folder that replaces
    out_dir only when every view is done, so an interrupted render leaves no half-filled ours_<N>.
    """
    from tqdm import tqdm

    final = Path(out_dir)
    partial, old = final.parent / f".{final.name}.partial", final.parent / f".{final.name}.old"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for i, view in enumerate(tqdm(views, desc=f"render {final.parent.name}", disable=not progress)):
            _write_view(gaussians, view, partial, f"{i:05d}.png", bg, device, backend)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _write_view(gaussians: GaussianModel, view, out_dir: Path, name: str, bg: torch.Tensor, device, backend: str) -> None:
    """One view's maps into out_dir/<map>/name (render_set's layout)."""
    from lumenkit.common.images import write_image
    from lumenkit.gsir.data import DEPTH_SCALE

    cam = view.camera(device)
    pkg = render(gaussians, cam, bg, backend=backend, inference=True)
    write_image(out_dir / "renders" / name, to_hwc(pkg["render"]))
    write_image(out_dir / "gt" / name, to_hwc(view.image))
    write_image(out_dir / "normal" / name, normal_to_rgb(pkg["normal_map"]), bit_depth=16)
    write_image(out_dir / "normal_from_depth" / name, normal_to_rgb(pkg["normal_map_from_depth"]), bit_depth=16)
    d = pkg["depth_map"][0].cpu().numpy()
    write_image(out_dir / "depth" / name, np.clip(np.round(d / DEPTH_SCALE), 0, 65535).astype(np.uint16)[..., None], metadata={"depth_scale": str(DEPTH_SCALE)})
    write_image(out_dir / "albedo" / name, to_hwc(pkg["albedo_map"]))
    write_image(out_dir / "roughness" / name, to_hwc(pkg["roughness_map"]))
    write_image(out_dir / "metallic" / name, to_hwc(pkg["metallic_map"]))
    write_image(out_dir / "opacity" / name, to_hwc(pkg["opacity_map"]))
