"""Speed of the GS-IR Gaussian rasterizer (`lumenkit.gsir.rasterize`) on this machine.

Forward and backward milliseconds per frame at 128 and 256 px with 10k, 50k and 200k Gaussians, for
the C++/OpenMP ``cpu`` backend with 1 and 2 threads, and, at a size where its dense [N, H*W] tensors
fit in memory (64 px, 2k Gaussians), the plain-torch ``reference`` backend beside the cpu one. Each
frame is a full GS-IR stage-1 call: projection + degree-3 SH colour, and blending of 13 channels
(rgb, opacity, depth, normal, albedo, roughness, metallic); backward is the gradient of a random
linear function of every map w.r.t. all Gaussian parameters. Wall-clock and process CPU time (summed
over threads) are both reported: on a shared machine the wall clock includes waiting for other jobs.

The scene imitates a trained object: Gaussians near a unit sphere (log-uniform scales 0.005..0.04,
opacities uniform in (0.05, 1)) seen from 4 units away with a 40 degree field of view.

`raster_speed_table()` returns the markdown table (benchmarks/gsir.py puts it in BENCHMARKS.md). It
measures in a child process started with OMP_WAIT_POLICY=PASSIVE: with the default (spinning) policy,
OpenMP threads on an oversubscribed machine burn their time slices waiting at barriers and 2 threads
run several times slower than 1. Run this file directly to print the table (``--quick``: small cases).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp (see docstring)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from lumenkit.gsir._cpu import load_extension  # noqa: E402
from lumenkit.gsir.camera import Camera  # noqa: E402
from lumenkit.gsir.rasterize import rasterize  # noqa: E402


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


MAPS = ("render", "opacity_map", "depth_map", "normal_map", "albedo_map", "roughness_map", "metallic_map")


def render_maps(params: dict, camera: Camera, backend: str, bg: torch.Tensor) -> list[torch.Tensor]:
    """The MAPS of one rasterize call on an `object_scene` dict (degree-3 SH colour, every attribute)."""
    out = rasterize(params["means"], params["quats"], params["scales"], params["opacities"], camera, sh=params["sh"],
                    normals=params["normals"], albedo=params["albedo"], roughness=params["roughness"],
                    metallic=params["metallic"], bg=bg, backend=backend)
    return [out[k] for k in MAPS]


def time_frame(scene: dict, camera: Camera, backend: str, repeat: int = 3) -> dict:
    """Median forward / backward wall ms and CPU ms of a full rasterize call and its backward.

    The scene's device decides where it runs; on a GPU each phase ends with a synchronize, so the
    wall times are the kernels' and not just their launches.
    """
    device = scene["means"].device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    params = {k: v.clone().requires_grad_() for k, v in scene.items()}
    g = torch.Generator().manual_seed(1)
    bg = torch.ones(3, device=device)
    weights = None
    runs = []
    for it in range(repeat + 1):
        for p in params.values():
            p.grad = None
        sync()
        w0, c0 = time.perf_counter(), time.process_time()
        maps = render_maps(params, camera, backend, bg)
        if weights is None:
            weights = [torch.randn(m.shape, generator=g).to(device) for m in maps]
        loss = sum((m * w).sum() for m, w in zip(maps, weights))
        sync()
        w1, c1 = time.perf_counter(), time.process_time()
        loss.backward()
        sync()
        w2, c2 = time.perf_counter(), time.process_time()
        if it > 0:  # the first run is a warm-up
            runs.append((w1 - w0, w2 - w1, (c1 - c0) + (c2 - c1)))
    runs.sort(key=lambda r: r[0] + r[1])
    f, b, c = runs[len(runs) // 2]
    return {"forward_ms": 1e3 * f, "backward_ms": 1e3 * b, "cpu_ms": 1e3 * c}


def raster_speed_rows(quick: bool = False) -> list[dict]:
    """Measure in this process (see `raster_speed_table` for the recommended child process)."""
    load_extension()
    sizes = [(64, 2_000)] + ([(128, 10_000)] if quick else [(s, n) for s in (128, 256) for n in (10_000, 50_000, 200_000)])
    rows = []
    for size, n in sizes:
        scene = object_scene(n)
        cam = bench_camera(size)
        configs = [("reference", 1), ("cpu", 1)] if size == 64 else [("cpu", 1), ("cpu", 2)]
        for backend, threads in configs:
            torch.set_num_threads(threads)
            r = time_frame(scene, cam, backend, repeat=1 if backend == "reference" else 3)
            rows.append({"backend": backend, "size": size, "gaussians": n, "threads": threads, **r})
    return rows


def raster_speed_table(quick: bool = False, child: bool = True) -> str:
    """Markdown table: backend, image, #Gaussians, threads, forward / backward / total wall ms, CPU ms.

    child=True measures in a fresh interpreter with OMP_WAIT_POLICY=PASSIVE (robust on a shared machine).
    """
    if child:
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--json"] + (["--quick"] if quick else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        rows = json.loads(proc.stdout.strip().splitlines()[-1])
    else:
        rows = raster_speed_rows(quick)
    from lumenkit.common.bench import markdown_table

    table = markdown_table(
        ["backend", "image", "Gaussians", "threads", "forward ms", "backward ms", "fwd+bwd ms", "CPU ms (all threads)"],
        [[r["backend"], f"{r['size']}x{r['size']}", f"{r['gaussians'] / 1000:g}k", r["threads"], r["forward_ms"],
          r["backward_ms"], r["forward_ms"] + r["backward_ms"], r["cpu_ms"]] for r in rows],
        floatfmt="{:.1f}",
    )
    load = os.getloadavg()[0]
    note = (
        "\n\nGS-IR rasterizer speed (wall-clock medians; a frame = projection + degree-3 SH + 13 blended channels: "
        "rgb, opacity, depth, normal, albedo, roughness, metallic; backward = gradient of a random linear loss on all "
        "maps w.r.t. all Gaussian parameters). `reference` = the dense plain-torch backend, only at a size where it fits "
        "in memory. CPU ms = process CPU time of forward+backward summed over threads, a load-independent measure of the "
        f"work. Measured with OMP_WAIT_POLICY=PASSIVE; 1-minute load average {load:.1f} on {os.cpu_count()} cores when "
        "the table was written (other jobs were sharing the CPU if that exceeds the core count, which inflates wall times). "
        "Target: cpu fwd+bwd <= 100 ms at 128 px with 50k Gaussians on 2 cores."
    )
    return table + note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small cases only")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON (used by raster_speed_table)")
    ap.add_argument("--write", action="store_true",
                    help="write the table as its own BENCHMARKS.md section 'gsir-raster' (run it on an idle machine)")
    args = ap.parse_args()
    if args.json:
        print(json.dumps(raster_speed_rows(args.quick)))
    elif args.write:
        from lumenkit.common.bench import write_section

        table = raster_speed_table(args.quick, child=True)
        write_section("gsir-raster", table, title="gsir: rasterizer speed alone (no training running)")
        print(table)
    else:
        print(raster_speed_table(args.quick, child=False))


if __name__ == "__main__":
    main()
