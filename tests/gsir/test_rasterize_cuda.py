"""The gsplat (CUDA) backend: glue checked on CPU with a stand-in gsplat module, and the real thing
against the CPU backend when a GPU and gsplat are present (marked cuda, skipped otherwise)."""
import math
import sys
import types

import pytest
import torch

from lumenkit.gsir._cpu import load_extension
from lumenkit.gsir._torch_impl import blend_reference, tile_rects
from lumenkit.gsir.camera import Camera
from lumenkit.gsir.rasterize import rasterize


def front_camera(width, height, device="cpu"):
    c2w = torch.eye(4)
    c2w[2, 3] = 4.0
    cam = Camera.from_fov(c2w, math.radians(40.0), width, height)
    return cam.to(device)


def scene(n, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    s = {
        "means": torch.randn(n, 3, generator=g) * 0.6,
        "quats": torch.randn(n, 4, generator=g),
        "scales": 0.03 + 0.2 * torch.rand(n, 3, generator=g),
        "opacities": 0.05 + 0.85 * torch.rand(n, generator=g),  # <= 0.9: alpha never reaches gsplat's/our clamp
        "colors": torch.rand(n, 3, generator=g),
        "normals": torch.randn(n, 3, generator=g),
        "albedo": torch.rand(n, 3, generator=g),
        "roughness": torch.rand(n, 1, generator=g),
        "metallic": torch.rand(n, 1, generator=g),
    }
    return {k: v.to(device) for k, v in s.items()}


def run(s, cam, backend, **kw):
    p = {k: v.clone().requires_grad_() for k, v in s.items()}
    out = rasterize(p["means"], p["quats"], p["scales"], p["opacities"], cam, colors=p["colors"], normals=p["normals"],
                    albedo=p["albedo"], roughness=p["roughness"], metallic=p["metallic"], backend=backend, **kw)
    return p, out


def fake_gsplat(radii_2d: bool) -> types.ModuleType:
    """A CPU stand-in with gsplat's call signatures (isect_tiles / isect_offset_encode / rasterize_to_pixels)."""
    mod = types.ModuleType("gsplat")
    state = {}

    if radii_2d:  # gsplat >= 1.5 (the backend reads the radii line of the signature)
        def isect_tiles(
            means2d,  # [..., N, 2]
            radii,  # [..., N, 2]
            depths, tile_size, tile_width, tile_height, sort=True, packed=False,
        ):
            assert radii.shape == (*means2d.shape[:-1], 2)
            state["radii"] = radii[..., 0]
            return _isect(means2d, depths)
    else:
        def isect_tiles(
            means2d,  # [C, N, 2]
            radii,  # [C, N]
            depths, tile_size, tile_width, tile_height, sort=True, packed=False,
        ):
            assert radii.shape == means2d.shape[:-1]
            state["radii"] = radii
            return _isect(means2d, depths)

    def _isect(means2d, depths):
        vis = torch.nonzero(state["radii"][0] > 0).flatten()
        order = vis[torch.argsort(depths[0, vis], stable=True)]
        return None, order, order

    def isect_offset_encode(isect_ids, n_images, tile_width, tile_height):
        return isect_ids

    def rasterize_to_pixels(means2d, conics, colors, opacities, width, height, tile_size, offsets, flatten_ids):
        assert means2d.dim() == 3 and colors.dim() == 3 and opacities.dim() == 2
        rects = tile_rects(means2d[0].detach(), state["radii"][0], width, height)
        out, _ = blend_reference(means2d[0], conics[0], opacities[0], colors[0], flatten_ids, rects, width, height)
        return out.permute(1, 2, 0)[None], None

    mod.isect_tiles, mod.isect_offset_encode, mod.rasterize_to_pixels = isect_tiles, isect_offset_encode, rasterize_to_pixels
    return mod


@pytest.mark.parametrize("radii_2d,planar_depth", [(False, False), (True, False), (True, True)])
def test_cuda_glue_with_stand_in_gsplat(monkeypatch, radii_2d, planar_depth):
    monkeypatch.setitem(sys.modules, "gsplat", fake_gsplat(radii_2d))
    s = scene(40, 0)
    cam = front_camera(40, 32)
    p_ref, o_ref = run(s, cam, "reference", bg=torch.tensor([0.2, 0.4, 0.6]), inference=True, planar_depth=planar_depth)
    p_cu, o_cu = run(s, cam, "cuda", bg=torch.tensor([0.2, 0.4, 0.6]), inference=True, planar_depth=planar_depth)
    for k in ("render", "opacity_map", "depth_map", "normal_map", "albedo_map", "roughness_map", "metallic_map"):
        assert torch.allclose(o_cu[k], o_ref[k], atol=1e-6), k
    (o_ref["render"].sum() + o_ref["depth_map"].sum()).backward()
    (o_cu["render"].sum() + o_cu["depth_map"].sum()).backward()
    assert torch.allclose(o_cu["viewspace_points"].grad, o_ref["viewspace_points"].grad, atol=1e-5)
    assert torch.allclose(p_cu["means"].grad, p_ref["means"].grad, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("planar_depth", [False, True])
def test_cuda_matches_cpu(planar_depth):
    """gsplat on the GPU vs the C++ CPU backend: images to 1e-4, gradients close."""
    pytest.importorskip("gsplat")
    load_extension()
    s = scene(3000, 1)
    cam = front_camera(128, 96)
    p_cpu, o_cpu = run(s, cam, "cpu", bg=torch.tensor([1.0, 1.0, 1.0]), planar_depth=planar_depth)
    p_cu, o_cu = run({k: v.cuda() for k, v in s.items()}, front_camera(128, 96, "cuda"), "cuda",
                     bg=torch.tensor([1.0, 1.0, 1.0], device="cuda"), planar_depth=planar_depth)
    for k in ("render", "opacity_map", "depth_map", "normal_map", "albedo_map", "roughness_map", "metallic_map"):
        a, b = o_cpu[k], o_cu[k].cpu()
        frac_bad = ((a - b).abs() > 1e-4).float().mean().item()
        assert frac_bad < 1e-3, (k, frac_bad, (a - b).abs().max().item())
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 96, 128, generator=g)
    (o_cpu["render"] * w).sum().backward()
    (o_cu["render"] * w.cuda()).sum().backward()
    for k in ("means", "opacities", "colors", "scales"):
        a, b = p_cpu[k].grad, p_cu[k].grad.cpu()
        rel = (a - b).norm() / a.norm()
        assert rel < 1e-2, (k, rel.item())


def _gsir_cuda_benchmark():
    """benchmarks/gsir_cuda.py as a module (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gsir_cuda.py"
    spec = importlib.util.spec_from_file_location("gsir_cuda_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cuda_benchmark_comparison_with_stand_in_gsplat(monkeypatch):
    """benchmarks/gsir_cuda.py's comparison, run on CPU tensors through the stand-in gsplat: the glue
    matches the C++ backend, and a gsplat that loses one Gaussian's tile entries is caught."""
    bench = _gsir_cuda_benchmark()
    load_extension()
    scene_, cam = bench.object_scene(400, seed=3), bench.bench_camera(32)
    monkeypatch.setitem(sys.modules, "gsplat", fake_gsplat(radii_2d=True))
    good = bench.backend_differences(scene_, cam, "cpu")
    assert set(good["maps"]) == set(bench.MAPS)
    assert all(m["max_abs"] < 1e-5 and m["frac_over_tol"] == 0.0 for m in good["maps"].values()), good["maps"]
    assert all(err < 1e-4 for err in good["grads"].values()), good["grads"]

    lossy = fake_gsplat(radii_2d=True)
    isect = lossy.isect_tiles

    def isect_dropping_the_front_gaussian(*args, **kw):
        a, order, _ = isect(*args, **kw)
        return a, order[1:], order[1:]

    lossy.isect_tiles = isect_dropping_the_front_gaussian
    monkeypatch.setitem(sys.modules, "gsplat", lossy)
    bad = bench.backend_differences(scene_, cam, "cpu")
    assert max(m["max_abs"] for m in bad["maps"].values()) > 1e-2
    assert max(m["frac_over_tol"] for m in bad["maps"].values()) > 0
    assert bad["grads"]["means"] > 1e-3


def test_cuda_benchmark_without_gpu_exits_2():
    import subprocess
    from pathlib import Path

    bench = _gsir_cuda_benchmark()
    if bench.missing_requirement() is None:
        pytest.skip("this machine has a GPU and gsplat")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gsir_cuda.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"benchmarks/gsir_cuda.py: {bench.missing_requirement()}"
