"""The split-sum BRDF LUT against independent truth: direct quadrature of the integral it tabulates,
the roughness -> 0 closed form, Lazarov's analytic fit, energy conservation, and its own generator."""
import math

import numpy as np
import pytest
import torch

from lumenkit.gsir import brdf as B

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lut():
    return B.load_brdf_lut()


def _quadrature(nov: float, roughness: float, n: int = 800) -> tuple[float, float]:
    """(A, B) by a midpoint rule over the hemisphere of light directions (no importance sampling):
    A = int f/F (1 - Fc) cos dw, B = int f/F Fc cos dw, f = D G F / (4 NoL NoV)."""
    a2, k = roughness**4, roughness**2 / 2
    theta = (np.arange(n) + 0.5) / n * np.pi / 2
    phi = (np.arange(2 * n) + 0.5) / (2 * n) * 2 * np.pi
    t, p = np.meshgrid(theta, phi, indexing="ij")
    light = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1)
    view = np.array([math.sqrt(1 - nov * nov), 0.0, nov])
    h = light + view
    h /= np.linalg.norm(h, axis=-1, keepdims=True)
    noh, voh, nol = h[..., 2], h @ view, light[..., 2]
    d = a2 / (np.pi * (noh**2 * (a2 - 1) + 1) ** 2)
    g = (nov / (nov * (1 - k) + k)) * (nol / (nol * (1 - k) + k))
    f_cos = d * g / (4 * nov)
    fc = (1 - voh) ** 5
    dw = np.sin(t) * (np.pi / 2 / n) * (np.pi / n)
    return float((f_cos * (1 - fc) * dw).sum()), float((f_cos * fc * dw).sum())


def test_lut_shape_and_layout(lut):
    assert lut.shape == (256, 256, 2) and lut.dtype == torch.float32
    # NoV along dim 0: at roughness ~0 the Fresnel weight B = (1 - NoV)^5 falls along dim 0 only
    assert lut[0, 0, 1] > 0.9 and lut[-1, 0, 1] < 1e-3 and lut[0, -1, 1] < lut[0, 0, 1]


@pytest.mark.parametrize("i,j", [(255, 255), (128, 128), (51, 77), (230, 56), (20, 200), (20, 60)])
def test_lut_matches_direct_quadrature(lut, i, j):
    """Importance sampling (4096 Hammersley points) vs a midpoint rule: measured max difference 1.7e-3."""
    nov, rough = (i + 0.5) / 256, (j + 0.5) / 256
    a, b = _quadrature(nov, rough)
    assert abs(lut[i, j, 0].item() - a) < 3e-3 and abs(lut[i, j, 1].item() - b) < 3e-3, (lut[i, j], a, b)


def test_lut_smooth_limit_is_schlick_fresnel(lut):
    """roughness -> 0: h = n, G = 1, so A = 1 - (1 - NoV)^5 and B = (1 - NoV)^5 (measured error 1.9e-3
    at roughness 1/512)."""
    nov = B.lut_coordinates(256).float()
    expect = torch.stack([1 - (1 - nov) ** 5, (1 - nov) ** 5], -1)
    assert (lut[:, 0] - expect).abs().max() < 3e-3


def test_lut_against_lazarov_fit(lut):
    """Lazarov's fit is coarse: measured mean |LUT - fit| = 0.035 over both channels (A 0.055,
    B 0.014), max 0.31 (grazing NoV). A transposed table scores 0.14, swapped channels 0.63."""
    c = B.lut_coordinates(256).float()
    err = (lut - B.env_brdf_approx(c[:, None], c[None, :])).abs()
    assert err.mean() < 0.04
    assert err[..., 0].mean() < 0.06 and err[..., 1].mean() < 0.02
    assert err.max() < 0.35


def test_lut_energy_at_most_one(lut):
    assert lut.min() >= 0.0
    assert (lut.sum(-1) <= 1.0 + 1e-3).all()


def test_shipped_asset_is_what_the_generator_computes(lut):
    coords = B.lut_coordinates(16).float()
    fresh = B.compute_brdf_lut(16, 4096)
    nov, rough = torch.meshgrid(coords, coords, indexing="ij")
    assert (B.lookup_brdf_lut(nov, rough, lut) - fresh).abs().max() < 2e-3


def test_lookup_is_bilinear_and_clamped():
    lut = torch.arange(4 * 4 * 2, dtype=torch.float32).reshape(4, 4, 2)
    centre = B.lookup_brdf_lut(torch.tensor([0.375]), torch.tensor([0.625]), lut)  # texel (1, 2)
    assert torch.allclose(centre, lut[1, 2][None])
    mid = B.lookup_brdf_lut(torch.tensor(0.5), torch.tensor(0.5), lut)  # between texels 1 and 2 on both axes
    assert torch.allclose(mid, lut[1:3, 1:3].reshape(-1, 2).mean(0))
    assert torch.allclose(B.lookup_brdf_lut(torch.tensor(0.0), torch.tensor(1.0), lut), lut[0, 3])
    x = torch.rand(3, 5, requires_grad=True)
    out = B.lookup_brdf_lut(x, torch.full((3, 5), 0.3), lut)
    assert out.shape == (3, 5, 2)
    out.sum().backward()
    assert x.grad.abs().sum() > 0


def test_hammersley_points():
    pts = B.hammersley(4)
    assert torch.allclose(pts, torch.tensor([[0.0, 0.0], [0.25, 0.5], [0.5, 0.25], [0.75, 0.75]], dtype=torch.float64))
