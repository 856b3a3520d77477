"""The gsplat (CUDA) rasterizer backend against the C++ CPU backend, on a GPU machine.

For the trained-object-like scenes of benchmarks/gsir_raster.py (128 and 256 px, 10k to 200k
Gaussians) it renders every GS-IR map with ``backend="cpu"`` and ``backend="cuda"`` and reports
- per map: the largest absolute difference and the share of values that differ by more than 1e-4
  (the issue's "same images to 1e-4"; a few values may differ more where two Gaussians at nearly
  the same depth swap order or a pixel's transmittance lands on the 1e-4 cut-off by rounding);
- per parameter: the relative L2 error ||g_cuda - g_cpu|| / ||g_cpu|| of the gradient of a random
  linear loss on all maps;
- forward / backward ms of both backends on that machine (the GPU with synchronisation; the CPU
  with all its cores).

It needs a CUDA GPU and gsplat; without them it exits with code 2. ``--write`` puts the tables in
BENCHMARKS.md (section gsir-cuda), stamped with the GPU machine.

On the lent GPU machine (torch, ninja, jaxtyping and rich are in its image; gsplat is not), carry
gsplat as a wheel (it is pure Python and compiles its CUDA kernels on first use, a few minutes):
    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps -d .whl gsplat==1.5.3
and run, with ``.whl`` carried:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
    PYTHONPATH=/tmp/site:src python3 benchmarks/gsir_cuda.py --write && cp BENCHMARKS.md $OUT/
then take the gsir-cuda section from the returned BENCHMARKS.md.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gsir_raster import MAPS, bench_camera, object_scene, render_maps, time_frame  # noqa: E402

from lumenkit.gsir._cpu import load_extension  # noqa: E402
from lumenkit.gsir.camera import Camera  # noqa: E402

IMAGE_TOL = 1e-4


def render_with_grads(scene: dict, camera: Camera, backend: str, seed: int = 0) -> tuple[dict, dict]:
    """All maps (on the CPU) and the gradients (on the CPU) of sum_k <w_k, map_k> for random w_k."""
    device = scene["means"].device
    params = {k: v.clone().requires_grad_() for k, v in scene.items()}
    out = dict(zip(MAPS, render_maps(params, camera, backend, torch.ones(3, device=device))))
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(out[k].shape, generator=g, dtype=out[k].dtype).to(device) for k in MAPS]
    sum((out[k] * w).sum() for k, w in zip(MAPS, weights)).backward()
    maps = {k: out[k].detach().cpu() for k in MAPS}
    grads = {k: p.grad.detach().cpu() for k, p in params.items()}
    return maps, grads


def backend_differences(scene: dict, camera: Camera, device: str | torch.device, backend: str = "cuda",
                        baseline: str = "cpu") -> dict:
    """Maps and gradients of `backend` (scene moved to `device`) against `baseline` (scene on the CPU).

    Returns {"maps": {name: {"max_abs", "frac_over_tol"}}, "grads": {param: relative L2 error}}.
    """
    maps_a, grads_a = render_with_grads(scene, camera, baseline)
    moved = {k: v.to(device) for k, v in scene.items()}
    maps_b, grads_b = render_with_grads(moved, camera.to(device), backend)
    maps = {}
    for k in MAPS:
        diff = (maps_b[k] - maps_a[k]).abs()
        maps[k] = {"max_abs": float(diff.max()), "frac_over_tol": float((diff > IMAGE_TOL).float().mean())}
    grads = {k: float((grads_b[k] - grads_a[k]).norm() / grads_a[k].norm().clamp_min(1e-30)) for k in grads_a}
    return {"maps": maps, "grads": grads}


def comparison_table(cases: list[tuple[int, int]], device) -> str:
    from lumenkit.common.bench import markdown_table

    rows = []
    for size, n in cases:
        d = backend_differences(object_scene(n), bench_camera(size), device)
        worst_frac = max(m["frac_over_tol"] for m in d["maps"].values())
        rows.append([f"{size}x{size}", f"{n / 1000:g}k", max(m["max_abs"] for m in d["maps"].values()),
                     f"{100 * worst_frac:.3f}%", *(d["grads"][k] for k in ("means", "quats", "scales", "opacities", "sh",
                                                                         "normals", "albedo"))])
    return markdown_table(["image", "Gaussians", "max abs map difference", f"worst map: values off by > {IMAGE_TOL:g}",
                           "grad rel. error: means", "quats", "scales", "opacities", "SH", "normals", "albedo"], rows,
                          floatfmt="{:.2e}")


def speed_table(cases: list[tuple[int, int]], device) -> str:
    from lumenkit.common.bench import markdown_table

    rows = []
    for size, n in cases:
        scene = object_scene(n)
        cam = bench_camera(size)
        for backend in ("cpu", "cuda"):
            if backend == "cuda":
                scene, cam = {k: v.to(device) for k, v in scene.items()}, cam.to(device)
            r = time_frame(scene, cam, backend, repeat=5)
            rows.append([backend, f"{size}x{size}", f"{n / 1000:g}k", r["forward_ms"], r["backward_ms"],
                         r["forward_ms"] + r["backward_ms"]])
    return markdown_table(["backend", "image", "Gaussians", "forward ms", "backward ms", "fwd+bwd ms"], rows,
                          floatfmt="{:.2f}")


def missing_requirement() -> str | None:
    """What this machine lacks for the comparison (gsplat, a CUDA GPU), or None."""
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return "needs gsplat (pip install 'lumenkit[cuda]'), which is not installed here"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU; torch sees none on this machine"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128 px with 10k Gaussians only")
    ap.add_argument("--write", action="store_true", help="write BENCHMARKS.md section gsir-cuda")
    args = ap.parse_args()
    missing = missing_requirement()
    if missing:
        print(f"benchmarks/gsir_cuda.py: {missing}", file=sys.stderr)
        sys.exit(2)
    load_extension()
    cases = [(128, 10_000)] if args.quick else [(s, n) for s in (128, 256) for n in (10_000, 50_000, 200_000)]
    body = (
        "The C++ CPU backend (`cpu`) and gsplat's rasterize_to_pixels (`cuda`) on the scenes of the gsir-raster "
        "section, every GS-IR map (render, opacity, depth, normal, albedo, roughness, metallic) and the gradient of a "
        "random linear loss on all of them. Map difference over every value of every map; the issue asks for the "
        f"images to match to {IMAGE_TOL:g} (a handful of values may differ more where Gaussians at nearly equal depths "
        "swap order or a pixel's transmittance meets the 1e-4 cut-off within rounding). Gradient error = "
        "||g_cuda - g_cpu|| / ||g_cpu|| per parameter.\n\n"
        + comparison_table(cases, "cuda")
        + f"\n\nSpeed on the same machine (medians of 5; the GPU timed with synchronisation, the CPU backend on "
        f"{torch.get_num_threads()} threads):\n\n"
        + speed_table(cases, "cuda")
    )
    print(body)
    if args.write:
        from lumenkit.common.bench import write_section

        write_section("gsir-cuda", body, title="gsir: the gsplat CUDA backend against the CPU backend")


if __name__ == "__main__":
    main()
