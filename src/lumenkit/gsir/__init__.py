"""GS-IR: inverse rendering with 3D Gaussian splatting (seed 000).

Rasterizer: `lumenkit.gsir.rasterize` (`Camera`, `rasterize(...)`), SH colour: `lumenkit.gsir.sh`,
depth -> normal: `lumenkit.gsir.geometry` (`depth_to_normal`, `normals_from_depth`).
Import from the submodules (``from lumenkit.gsir.rasterize import Camera, rasterize``); the package
re-exports nothing so that ``lumenkit.gsir.rasterize`` stays the module.
"""
