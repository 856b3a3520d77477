"""GS-IR: inverse rendering with 3D Gaussian splatting (seed 000).

Rasterizer: `lumenkit.gsir.rasterize` (`Camera`, `rasterize`), SH colour: `lumenkit.gsir.sh`,
depth -> normal: `lumenkit.gsir.geometry`.
"""
from lumenkit.gsir.geometry import depth_to_normal, normals_from_depth
from lumenkit.gsir.rasterize import Camera, rasterize

__all__ = ["Camera", "rasterize", "depth_to_normal", "normals_from_depth"]
