"""Speed of the GS-IR Gaussian rasterizer (`lumenkit.gsir.rasterize`) on this machine.

Forward and backward milliseconds per frame at 128 and 256 px with 10k, 50k and 200k Gaussians, for
the C++/OpenMP ``cpu`` backend and (small cases only, it is dense) the plain-torch ``reference``
backend. Each frame is a full GS-IR stage-1 call: EWA projection + degree-3 SH colour (torch), and
blending of 13 channels (rgb, opacity, depth, normal, albedo, roughness, metallic); backward is
the gradient of a random linear function of every map w.r.t. all Gaussian parameters.

The scene imitates a trained object: Gaussians near a unit sphere (log-uniform scales 0.005..0.04,
opacities uniform in (0.05, 1)) seen from 4 units away with a 40 degree field of view.

`raster_speed_table()` returns the markdown table (benchmarks/gsir.py puts it in BENCHMARKS.md);
run this file directly to print it (``--quick``: one small case).
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from lumenkit.gsir.rasterize import Camera, load_extension, rasterize


def object_scene(n: int, seed: int = 0, dtype=torch.float32) -> dict:
    """n Gaussians shaped like a trained object near the unit sphere (see module docstring)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n, 3, generator=g, dtype=dtype)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    means = dirs * (1.0 + 0.05 * torch.randn(n, 1, generator=g, dtype=dtype))
    log_s = torch.empty(n, 3, dtype=dtype).uniform_(math.log(0.005), math.log(0.04), generator=g)
    return {
        "means": means,
        "quats": torch.randn(n, 4, generator=g, dtype=dtype),
        "scales": log_s.exp(),
        "opacities": torch.empty(n, dtype=dtype).uniform_(0.05, 1.0, generator=g),
        "sh": 0.3 * torch.randn(n, 16, 3, generator=g, dtype=dtype),
        "normals": dirs.clone(),
        "albedo": torch.rand(n, 3, generator=g, dtype=dtype),
        "roughness": torch.rand(n, 1, generator=g, dtype=dtype),
        "metallic": torch.rand(n, 1, generator=g, dtype=dtype),
    }


def bench_camera(size: int) -> Camera:
    """Camera 4 units away on the +z axis (OpenGL c2w), looking at the origin, fov 40 degrees."""
    c2w = torch.eye(4)
    c2w[2, 3] = 4.0
    return Camera.from_fov(c2w, math.radians(40.0), size, size)


def time_frame(scene: dict, camera: Camera, backend: str, repeat: int = 3) -> tuple[float, float]:
    """Median (forward ms, backward ms) of a full rasterize call and its backward."""
    params = {k: v.clone().requires_grad_() for k, v in scene.items()}
    g = torch.Generator().manual_seed(1)
    weights = None
    fwd, bwd = [], []
    for it in range(repeat + 1):
        for p in params.values():
            p.grad = None
        t0 = time.perf_counter()
        out = rasterize(params["means"], params["quats"], params["scales"], params["opacities"], camera, sh=params["sh"],
                        normals=params["normals"], albedo=params["albedo"], roughness=params["roughness"],
                        metallic=params["metallic"], bg=torch.ones(3), backend=backend)
        t1 = time.perf_counter()
        maps = [out[k] for k in ("render", "opacity_map", "depth_map", "normal_map", "albedo_map", "roughness_map", "metallic_map")]
        if weights is None:
            weights = [torch.randn(m.shape, generator=g) for m in maps]
        loss = sum((m * w).sum() for m, w in zip(maps, weights))
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        if it > 0:  # first run is warm-up
            fwd.append(t1 - t0)
            bwd.append(t3 - t2)
    return 1e3 * sorted(fwd)[len(fwd) // 2], 1e3 * sorted(bwd)[len(bwd) // 2]


def raster_speed_rows(quick: bool = False) -> list[list]:
    load_extension()
    cases = [(128, 10_000)] if quick else [(s, n) for s in (128, 256) for n in (10_000, 50_000, 200_000)]
    rows = []
    for size, n in cases:
        scene = object_scene(n)
        cam = bench_camera(size)
        backends = ["cpu"] + (["reference"] if size * size * n <= 128 * 128 * 10_000 else [])
        for be in backends:
            f, b = time_frame(scene, cam, be, repeat=1 if be == "reference" else 3)
            rows.append([be, f"{size}x{size}", f"{n // 1000}k", f, b, f + b])
    return rows


def raster_speed_table(quick: bool = False) -> str:
    """Markdown table: backend, resolution, #Gaussians, forward / backward / total ms per frame."""
    from lumenkit.common.bench import markdown_table

    rows = raster_speed_rows(quick)
    table = markdown_table(["backend", "image", "Gaussians", "forward ms", "backward ms", "fwd+bwd ms"], rows, floatfmt="{:.1f}")
    note = (
        f"\n\nGS-IR rasterizer, {torch.get_num_threads()} torch/OpenMP threads; a frame = projection + degree-3 SH + 13 blended "
        "channels (rgb, opacity, depth, normal, albedo, roughness, metallic); backward of a random linear loss on all maps. "
        "Reference = dense plain torch (only the smallest case). Target: cpu fwd+bwd <= 100 ms at 128 px with 50k Gaussians."
    )
    return table + note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small case")
    args = ap.parse_args()
    print(raster_speed_table(args.quick))


if __name__ == "__main__":
    main()
