"""GS-IR: inverse rendering with 3D Gaussian splatting (seed 000).

Layout (gsplat's shape): `camera` (Camera and its constructor from NeRF/TensoIR poses), `rasterize`
(the public `rasterize(...)`; backends in `_torch_impl` (reference), `_cpu` (C++), `_gsplat` (CUDA)),
`sh` (SH colour), `geometry` (`depth_to_normal`, `normals_from_depth`), `config` (every stage's
settings, also the CLI flags), `data` (scene readers), `synth` (the Mitsuba ground-truth generator),
`gaussians`, `losses`, `pipeline` (render), `train`, `evaluate`, `cli`.
Import from the submodules (``from lumenkit.gsir.rasterize import Camera, rasterize``); the package
re-exports nothing so that ``lumenkit.gsir.rasterize`` stays the module.
"""
