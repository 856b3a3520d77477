"""The CUDA backend: gsplat's tile intersection and ``rasterize_to_pixels`` on Gaussians projected by
`_torch_impl.project_gaussians`, every attribute an extra channel (optional extra ``lumenkit[cuda]``)."""
from __future__ import annotations

import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.gsir._cpu import blend_cpu
from lumenkit.gsir._torch_impl import TILE


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


def blend_cuda(means2d, conics, opacities, channels, order, rects, width, height, want_argmax=False, *, depths, radii):
    """gsplat blending (CUDA) of our projected Gaussians, every attribute an extra channel.

    gsplat intersects tiles from the same means2d and radii (its rectangle rule equals ours except
    when mean + r falls exactly on a tile border) and sorts by the same depths. Known differences from
    the CPU kernel: gsplat clamps alpha at 0.999 (not 0.99) and stops when T <= 1e-4 (not < 1e-4).
    argmax_depth runs the CPU kernel (gsplat has no equivalent).
    """
    try:
        from gsplat import isect_offset_encode, isect_tiles, rasterize_to_pixels
    except ImportError:  # pragma: no cover - needs gsplat
        raise LumenkitError("--backend cuda needs gsplat (pip install 'lumenkit[cuda]')") from None
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
        _, argmax = blend_cpu(*cpu, order.cpu(), rects.cpu(), width, height, True)
        argmax = argmax.to(means2d.device)
    return out, argmax
