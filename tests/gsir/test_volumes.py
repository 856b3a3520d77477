"""volumes.py against closed forms: SH basis, projection / reconstruction of a half-space visibility,
GGX lobe sampling, recon_occlusion's cosine-weighted visibility, normal-aware trilinear weights,
irradiance volumes, and the occlusion file's errors.

The half-space V(w) = 1 where w.z > 0 is zonal; with Y_l0 = sqrt((2l+1)/(4 pi)) P_l(cos t) its
coefficients are c_l0 = 2 pi sqrt((2l+1)/(4 pi)) int_0^1 P_l(t) dt:
    c00 = sqrt(pi), c10 = sqrt(3 pi) / 2, c20 = 0, c30 = -sqrt(7 pi) / 8, all m != 0 zero,
so its degree-3 series is f(t) = 1/2 + 3/4 t - 7/16 P3(t). A half-space of normal a has
c_lm = sqrt(4 pi / (2l + 1)) c_l0 Y_lm(a) (the rotation of a zonal function). Its cosine-weighted
visibility for a normal at angle theta from a is (1 + cos theta) / 2 (the sky-view factor).
"""
import math

import pytest
import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.gsir import volumes as V
from lumenkit.gsir.sh import eval_sh

torch.set_num_threads(1)
Y00 = 0.5 / math.sqrt(math.pi)
HALF_SPACE_ZONAL = (math.sqrt(math.pi), math.sqrt(3 * math.pi) / 2, 0.0, -math.sqrt(7 * math.pi) / 8)
BAND = torch.tensor([0, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3])


def half_space_coefficients(axis: torch.Tensor) -> torch.Tensor:
    """[16] closed-form SH of V(w) = [w.axis > 0] (module docstring)."""
    zonal = torch.tensor(HALF_SPACE_ZONAL, dtype=torch.float64)[BAND]
    return zonal * torch.sqrt(4 * math.pi / (2 * BAND + 1).double()) * V.sh_basis(axis.double(), 3)


def truncated_half_space(t: torch.Tensor) -> torch.Tensor:
    """The degree-3 SH series of the half-space at cos(angle to its axis) = t."""
    return 0.5 + 0.75 * t - 7.0 / 16.0 * (5 * t**3 - 3 * t) / 2


def unit(v) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True)


def test_basis_is_sh_py_and_orthonormal():
    dirs = unit(torch.randn(50, 3, generator=torch.Generator().manual_seed(0)))
    coeffs = torch.randn(16, 2, dtype=torch.float64)
    assert torch.allclose(V.sh_basis(dirs, 3) @ coeffs, eval_sh(3, coeffs, dirs), atol=1e-12)
    d, sa = V.latlong_directions(128, 256, dtype=torch.float64)
    assert float(sa.sum()) == pytest.approx(4 * math.pi, abs=1e-12)
    Y = V.sh_basis(d.reshape(-1, 3), 3)
    gram = (Y * sa.reshape(-1, 1)).T @ Y
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=5e-4)  # midpoint rule at 128 x 256


def test_half_space_projection_matches_closed_form():
    d, sa = V.latlong_directions(64, 128, dtype=torch.float64)
    up = V.sh_project((d[..., 2] > 0).double(), d, sa, 3)
    assert torch.allclose(up, half_space_coefficients(torch.tensor([0.0, 0.0, 1.0])), atol=1e-3)  # equator on a row edge
    axis = unit([0.3, -0.5, 0.8])
    tilted = V.sh_project(((d * axis).sum(-1) > 0).double(), d, sa, 3)
    assert torch.allclose(tilted, half_space_coefficients(axis), atol=1e-2)  # boundary cuts cells: O(cell) error


def test_reconstruction_of_half_space_and_constant():
    d, sa = V.latlong_directions(64, 128, dtype=torch.float64)
    coeffs = V.sh_project((d[..., 2] > 0).double(), d, sa, 3)[:, None]
    dirs = unit(torch.randn(200, 3, generator=torch.Generator().manual_seed(1)))
    assert torch.allclose(V.sh_evaluate(coeffs, dirs)[:, 0], truncated_half_space(dirs[:, 2]), atol=2e-3)
    const = V.sh_project(torch.ones(64, 128, dtype=torch.float64), d, sa, 3)
    assert const[0] == pytest.approx(math.sqrt(4 * math.pi), abs=1e-12)
    assert const[1:].abs().max() < 1e-3  # Y_20's midpoint-rule error at 64 rows; the others vanish by symmetry
    assert torch.allclose(V.sh_evaluate(const[:, None], dirs), torch.ones(200, 1, dtype=torch.float64), atol=1e-3)


def test_hammersley_and_cosine_lobe_samples():
    xi = V.hammersley(8, dtype=torch.float64)
    assert xi[:, 0].tolist() == [i / 8 for i in range(8)]
    assert xi[:, 1].tolist() == [0.0, 0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875]
    lobes = unit([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.6, 0.0, 0.8]])
    w = V.sample_lobe_directions(lobes, 256, roughness=1.0)  # cosine-weighted: E[cos] = 2/3, E[cos^2] = 1/2
    cos = (w * lobes[:, None]).sum(-1)
    assert torch.allclose(w.norm(dim=-1), torch.ones(3, 256, dtype=torch.float64), atol=1e-12)
    assert (cos > 0).all()
    assert torch.allclose(cos.mean(1), torch.full((3,), 2 / 3, dtype=torch.float64), atol=2e-3)
    assert torch.allclose((cos**2).mean(1), torch.full((3,), 0.5, dtype=torch.float64), atol=2e-3)
    sharp = (V.sample_lobe_directions(lobes, 256, roughness=0.3) * lobes[:, None]).sum(-1)
    assert (sharp.mean(1) > 0.95).all()  # GGX alpha = 0.09 hugs the lobe


def test_sh_reconstruction_matches_direct_sample_evaluation():
    """The probe transfer gives the same per-sample values as evaluating the SH at every GGX sample."""
    g = torch.Generator().manual_seed(6)
    coeffs = torch.randn(300, 16, 2, generator=g, dtype=torch.float64) * 0.5
    lobes = unit(torch.randn(300, 3, generator=g))
    lobes[0] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)  # the tangent frame's pole case
    for roughness in (1.0, 0.5):
        w = V.sample_lobe_directions(lobes, 256, roughness)
        direct = (V.sh_basis(w, 3) @ coeffs).clamp(0, 1).mean(1)
        assert torch.allclose(V.sh_reconstruction(coeffs, lobes, 256, roughness, chunk=128), direct, atol=1e-10)


def cosine_weighted_truth(theta: float, n_fine: int = 512) -> float:
    """1/pi int clamp(f(w.z), 0, 1) (n.w)+ dw by a fine lat-long quadrature around n (independent of
    the sampler), n at angle theta from z, f = truncated_half_space."""
    d, sa = V.latlong_directions(n_fine, 2 * n_fine, dtype=torch.float64)
    n = torch.tensor([math.sin(theta), 0.0, math.cos(theta)], dtype=torch.float64)
    f = truncated_half_space(d[..., 2]).clamp(0, 1)
    return float((f * (d @ n).clamp_min(0) * sa).sum() / math.pi)


def constant_volume(coeffs: torch.Tensor, res: int = 4, bound: float = 1.0) -> V.OcclusionVolume:
    return V.OcclusionVolume(torch.zeros(res, res, res, dtype=torch.int32), coeffs.float().reshape(1, 16, 1), bound, 3, 0.25)


def test_recon_occlusion_of_half_space_volume():
    """Every cell holds the half-space's SH: V(theta) vs the sampler-free quadrature (clamp included)
    within 5e-3, and vs the closed form (1 + cos theta) / 2 within 0.05 (the gap is the clamp of the
    degree-3 series' ringing to [0, 1]: unclamped, bands 2 and 3 vanish under the cosine lobe and
    the closed form is exact)."""
    vol = constant_volume(half_space_coefficients(torch.tensor([0.0, 0.0, 1.0])))
    thetas = torch.linspace(0, math.pi, 9, dtype=torch.float64)
    normals = torch.stack([thetas.sin(), torch.zeros_like(thetas), thetas.cos()], -1).float()
    got = V.recon_occlusion(torch.zeros(9, 3), normals, vol)[:, 0].double()
    quad = torch.tensor([cosine_weighted_truth(float(t)) for t in thetas], dtype=torch.float64)
    assert torch.allclose(got, quad, atol=5e-3), (got, quad)
    assert torch.allclose(got, (1 + thetas.cos()) / 2, atol=0.05)
    assert (got[1:] < got[:-1]).all()  # turning away from the open half-space only loses visibility


def test_recon_occlusion_constants_and_missing_normals():
    ones = constant_volume(torch.tensor([math.sqrt(4 * math.pi)] + [0.0] * 15))
    normals = unit(torch.randn(20, 3, generator=torch.Generator().manual_seed(2))).float()
    pts = torch.rand(20, 3, generator=torch.Generator().manual_seed(3)) * 2 - 1
    assert torch.allclose(V.recon_occlusion(pts, normals, ones), torch.ones(20, 1), atol=1e-6)
    assert V.recon_occlusion(torch.zeros(1, 3), torch.zeros(1, 3), ones).item() == 0.0  # no surface
    zeros = constant_volume(torch.zeros(16))
    assert V.recon_occlusion(pts, normals, zeros).abs().max() == 0.0


def split_volume() -> V.OcclusionVolume:
    """res 3 over [-1, 1]^3 (spacing 1): cells with x index 0 hold 'occluded' (0), the others 'visible' (1)."""
    ids = torch.ones(3, 3, 3, dtype=torch.int32)
    ids[0] = 0
    coeffs = torch.zeros(2, 16, 1)
    coeffs[1, 0, 0] = math.sqrt(4 * math.pi)
    return V.OcclusionVolume(ids, coeffs, 1.0, 3, 0.25)


def test_normal_aware_interpolation():
    vol = split_volume()
    p = torch.tensor([[-0.5, 0.0, 0.0]] * 3)
    n = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    vis = V.recon_occlusion(p, n, vol)[:, 0]
    # +x: only the x = 0 corners are in front (visible); -x: only x = -1 (occluded); +y: half each along x
    assert vis.tolist() == pytest.approx([1.0, 0.0, 0.5], abs=1e-5)
    corners, w = V.normal_aware_trilinear(torch.tensor([[0.2, 0.3, -0.4]]), torch.tensor([[0.0, 0.0, 1.0]]), 1.0, 3)
    expect = torch.tensor([(0.8 if i == 0 else 0.2) * (0.7 if j == 0 else 0.3) * (0.6 if k == 1 else 0.0)
                           for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    assert torch.allclose(w[0], expect, atol=1e-6)  # corners at z = -1 lie behind the normal
    assert (corners[0, :, 0] == torch.tensor([1] * 4 + [2] * 4)).all() and (corners[0, :, 2] == torch.tensor([0, 1] * 4)).all()
    assert torch.allclose(V.normalise_weights(w).sum(-1), torch.ones(1))
    assert V.normalise_weights(torch.zeros(1, 8)).abs().max() == 0  # nothing in front: eps, all zero


def test_invalid_cells_do_not_count():
    vol = split_volume()
    vol.ids[1:] = -1  # the visible side has no coefficients
    vis = V.recon_occlusion(torch.tensor([[-0.5, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]]), vol)
    assert vis.item() == pytest.approx(0.0, abs=1e-6)


def test_irradiance_volumes_linear_function_and_gradients():
    iv = V.IrradianceVolumes(bound=1.0, grid_res=8)
    assert iv.coefficients.shape == (8, 8, 8, 9, 3)
    a, b = torch.tensor([0.5, 1.0, 2.0]), torch.tensor([0.25, 0.5, 1.0])  # E(n) = a + b n_z per channel
    with torch.no_grad():
        iv.coefficients[..., 0, :] = a * math.sqrt(4 * math.pi)
        iv.coefficients[..., 2, :] = b / 0.4886025119029199
    g = torch.Generator().manual_seed(4)
    pts, normals = torch.rand(30, 3, generator=g) * 2 - 1, unit(torch.randn(30, 3, generator=g)).float()
    got = iv.query_irradiance(pts, normals)
    assert got.shape == (30, 3)
    assert torch.allclose(got, a + b * normals[:, 2:3], atol=1e-5)
    with torch.no_grad():
        iv.coefficients.zero_()
        iv.coefficients[..., 0, :] = -1.0
    assert iv(pts, normals).abs().max() == 0  # clamped >= 0
    with torch.no_grad():
        iv.coefficients.zero_()
    iv.query_irradiance(torch.tensor([[0.05, 0.05, 0.05]]), torch.tensor([[0.0, 0.0, 1.0]])).sum().backward()
    touched = iv.coefficients.grad.abs().sum((-1, -2)) > 0
    assert 1 <= int(touched.sum()) <= 4  # only corners in front of the normal (the z-upper face of the cell)


def test_occlusion_file_round_trip_and_errors(tmp_path):
    vol = split_volume()
    path = V.save_occlusion_volume(tmp_path / "occlusion_volumes.safetensors", vol, metadata={"note": "test"})
    back = V.load_occlusion_volume(path)
    assert torch.equal(back.ids, vol.ids) and torch.equal(back.coefficients, vol.coefficients)
    assert (back.bound, back.degree, back.threshold) == (1.0, 3, 0.25)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    from safetensors.torch import save_file

    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    save_file({"occlusion_ids": torch.zeros(2, 2, 2, dtype=torch.int32)}, str(tmp_path / "partial.safetensors"))
    save_file({"occlusion_ids": torch.zeros(2, 2, 2, dtype=torch.int32), "occlusion_coefficients": torch.zeros(1, 9, 1),
               "bound": torch.tensor(1.0), "degree": torch.tensor(3), "occlusion_threshold": torch.tensor(0.25)},
              str(tmp_path / "shape.safetensors"))
    save_file({"occlusion_ids": torch.full((2, 2, 2), 5, dtype=torch.int32), "occlusion_coefficients": torch.zeros(1, 16, 1),
               "bound": torch.tensor(1.0), "degree": torch.tensor(3), "occlusion_threshold": torch.tensor(0.25)},
              str(tmp_path / "ids.safetensors"))
    cases = {"missing.safetensors": "run `lumenkit gsir bake", "junk.safetensors": "not a valid safetensors file",
             "partial.safetensors": "missing occlusion_coefficients", "shape.safetensors": "[M, (degree + 1)^2, 1]",
             "ids.safetensors": "outside the 1 coefficient rows"}
    (tmp_path / "volume.pth").write_bytes(b"x")
    cases["volume.pth"] = ".safetensors files"
    for name, expect in cases.items():
        with pytest.raises(LumenkitError) as e:
            V.load_occlusion_volume(tmp_path / name)
        assert expect in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
