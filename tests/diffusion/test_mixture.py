"""Closed form: the mixture oracle is the exact score, and every sampler driven by it reproduces the
mixture (weights, means, covariances) with a sliced-Wasserstein distance that falls as steps grow."""
import math

import pytest
import torch

from lumenkit.diffusion import NoiseSchedule, sample
from lumenkit.diffusion.data import (GaussianMixture2D, MixtureOracle, fit_mixture, mixture_errors, sliced_wasserstein,
                                     sliced_wasserstein_to_mixture)
from lumenkit.diffusion.pipeline import ToyConfig, run_toy

MIX = GaussianMixture2D.default()
SCHED = NoiseSchedule.from_config(kind="sqrt_linear", linear_start=1e-4, linear_end=0.02)


def test_oracle_is_exact_score_of_noised_mixture():
    """eps*(x, t) = -sqrt(1 - a) grad log q_t(x), with q_t checked by autograd of an independent density
    (torch.distributions), at several t, including per-row different t."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64) * 1.5
    model = MixtureOracle(MIX, SCHED)
    for tv in (0, 10, 200, 999):
        t = torch.full((64,), tv)
        a = float(SCHED.alphas_cumprod[tv])
        comp = torch.distributions.MultivariateNormal(math.sqrt(a) * MIX.means, a * MIX.covs + (1 - a) * torch.eye(2, dtype=torch.float64))
        q = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(MIX.weights), comp)
        xr = x.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(q.log_prob(xr).sum(), xr)
        assert torch.allclose(model(x, t), -math.sqrt(1 - a) * score, atol=1e-9)
    t_mixed = torch.randint(0, 1000, (64,), generator=g)
    e_mixed = model(x, t_mixed)
    for i in range(0, 64, 13):
        assert torch.allclose(e_mixed[i], model(x[i : i + 1], t_mixed[i : i + 1])[0], atol=1e-12)
    # x0 and v outputs are the Tweedie posterior mean and its v
    t = torch.full((64,), 300)
    eps, x0 = model(x, t), MixtureOracle(MIX, SCHED, "x0")(x, t)
    assert torch.allclose(SCHED.predict_x0_from_eps(x, t, eps), x0, atol=1e-10)
    assert torch.allclose(SCHED.predict_eps_from_v(x, t, MixtureOracle(MIX, SCHED, "v")(x, t)), eps, atol=1e-10)


def test_mixture_sampling_and_fit_recover_truth():
    g = torch.Generator().manual_seed(3)
    x, labels = MIX.sample(10000, g, return_labels=True)
    freq = torch.bincount(labels, minlength=MIX.K).double() / 10000
    assert (freq - MIX.weights).abs().max() < 0.015
    errs = mixture_errors(fit_mixture(x, MIX), MIX)
    assert errs["weight_err"] < 0.02 and errs["mean_err"] < 0.03 and errs["cov_rel_err"] < 0.12
    # SW: ~0 against itself, small floor for fresh data, large for a wrong distribution
    y = MIX.sample(10000, g)
    assert sliced_wasserstein(x, x) < 1e-12
    assert sliced_wasserstein_to_mixture(x, MIX) < 0.03
    assert sliced_wasserstein(x, y) < 0.05
    assert abs(sliced_wasserstein(x, y[:7000]) - sliced_wasserstein(x, y)) < 0.02  # unequal sizes via quantiles
    wrong = GaussianMixture2D(MIX.weights, MIX.means * 0.8, MIX.covs)
    assert sliced_wasserstein_to_mixture(x, wrong) > 5 * sliced_wasserstein_to_mixture(x, MIX)


# steps chosen so that each sampler's discretisation error is below the finite-sample noise of n = 4000
RECOVERY = [("ddim", 200, 0.0), ("ddim", 200, 0.5), ("plms", 100, None), ("ddpm", 500, None), ("euler_a", 500, None)]


@pytest.mark.parametrize("sampler,steps,eta", RECOVERY)
def test_every_sampler_reproduces_the_mixture(sampler, steps, eta):
    """Tolerances (n = 4000): |w - w*| < 0.03, |mu - mu*| < 0.05, cov Frobenius rel. err < 0.25 (the
    fresh-data floor is 0.009 / 0.014 / 0.07), sliced W2 < 2.5x the fresh-data floor."""
    m = run_toy(ToyConfig(sampler=sampler, steps=steps, eta=eta, n=4000, seed=1)).metrics
    assert m["weight_err"] < 0.03, m
    assert m["mean_err"] < 0.05, m
    assert m["cov_rel_err"] < 0.25, m
    assert m["sw"] < 2.5 * m["sw_floor"], m


@pytest.mark.parametrize("sampler,eta,steps", [("ddim", 0.0, (2, 5, 10, 25)), ("ddim", 1.0, (5, 10, 25, 100)), ("plms", None, (2, 4, 8)), ("euler_a", None, (5, 10, 25, 100))])
def test_sliced_wasserstein_falls_with_steps(sampler, eta, steps):
    sws = [run_toy(ToyConfig(sampler=sampler, steps=S, eta=eta, n=3000, seed=1)).metrics["sw"] for S in steps]
    assert all(b < a for a, b in zip(sws, sws[1:])), sws


def test_oracle_parameterizations_give_the_same_samples():
    xT = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    outs = {p: sample(MixtureOracle(MIX, SCHED, p), SCHED, "ddim", 20, x_T=xT, parameterization=p, progress=False)[0] for p in ("eps", "x0", "v")}
    assert torch.allclose(outs["eps"], outs["x0"], atol=1e-8)
    assert torch.allclose(outs["eps"], outs["v"], atol=1e-8)
