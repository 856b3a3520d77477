"""Schedules and DDIM parameters against CompVis' code (the seed, transcribed in numpy below) and
diffusers' schedulers."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from lumenkit.common.errors import LumenkitError
from lumenkit.diffusion import NoiseSchedule, make_beta_schedule, make_ddim_sampling_parameters, make_ddim_timesteps


def compvis_register_schedule(betas, v_posterior=0.0):
    """The seed's register_schedule, numpy, float64 (before its float32 cast)."""
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    pv = (1 - v_posterior) * betas * (1.0 - ac_prev) / (1.0 - ac) + v_posterior * betas
    with np.errstate(divide="ignore"):  # lvlb at t = 0 divides by the zero posterior variance (CompVis then copies entry 1)
        lvlb = betas**2 / (2 * pv * alphas * (1 - ac))
    return dict(
        alphas_cumprod=ac, alphas_cumprod_prev=ac_prev, sqrt_alphas_cumprod=np.sqrt(ac),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac), log_one_minus_alphas_cumprod=np.log(1.0 - ac),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac), sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1),
        posterior_variance=pv, posterior_log_variance_clipped=np.log(np.maximum(pv, 1e-20)),
        posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        lvlb_eps=lvlb,
    )


@pytest.mark.parametrize("kind,diffusers_name", [("linear", "scaled_linear"), ("sqrt_linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_betas_match_diffusers(kind, diffusers_name):
    ours = make_beta_schedule(kind, 1000, 0.00085, 0.012)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule=diffusers_name).betas
    assert ours.dtype == torch.float64
    assert torch.allclose(ours.float(), ref, rtol=1e-5, atol=1e-7)


def test_linear_is_sqrt_space_and_sqrt_schedule():
    b = make_beta_schedule("linear", 10, 1e-4, 2e-2)
    assert torch.allclose(b.sqrt(), torch.linspace(1e-2, math.sqrt(2e-2), 10, dtype=torch.float64))
    s = make_beta_schedule("sqrt", 10, 1e-4, 2e-2)
    assert torch.allclose(s**2, torch.linspace(1e-4, 2e-2, 10, dtype=torch.float64))
    c = make_beta_schedule("cosine", 1000)
    assert c.max() <= 0.999 and c.min() >= 0


@pytest.mark.parametrize("v_posterior", [0.0, 0.3])
def test_register_schedule_buffers(v_posterior):
    sched = NoiseSchedule.from_config(kind="linear", linear_start=0.00085, linear_end=0.012, v_posterior=v_posterior)
    ref = compvis_register_schedule(sched.betas.numpy(), v_posterior)
    for name, val in ref.items():
        ours = sched.lvlb_weights("eps")[1:] if name == "lvlb_eps" else getattr(sched, name)
        val = val[1:] if name == "lvlb_eps" else val
        assert np.allclose(ours.numpy(), val, rtol=1e-12, atol=0), name
    w = sched.lvlb_weights("eps")
    assert w[0] == w[1]
    assert torch.allclose(sched.lvlb_weights("x0")[1:], 0.5 * sched.alphas_cumprod[1:].sqrt() / (2.0 - sched.alphas_cumprod[1:]))


def test_schedule_is_immutable_cpu_and_casts_lazily():
    sched = NoiseSchedule.stable_diffusion()
    with pytest.raises(dataclasses.FrozenInstanceError):
        sched.betas = torch.zeros(3)
    assert sched.alphas_cumprod.device.type == "cpu" and sched.alphas_cumprod.dtype == torch.float64
    b32 = sched.buffer("alphas_cumprod", "cpu", torch.float32)
    assert b32.dtype == torch.float32 and b32 is sched.buffer("alphas_cumprod", "cpu", torch.float32)
    # CompVis casts float64 -> float32; a float32 cumprod (diffusers) differs by ~1e-6 relative
    d = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    assert torch.allclose(b32, d.alphas_cumprod, rtol=1e-5)


def test_q_sample_and_parameterization_conversions():
    sched = NoiseSchedule.stable_diffusion()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    xt = sched.q_sample(x0, t, noise)
    d = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    assert torch.allclose(xt.float(), d.add_noise(x0.float(), noise.float(), t), atol=1e-5)
    v = sched.get_v(x0, noise, t)
    assert torch.allclose(v.float(), d.get_velocity(x0.float(), noise.float(), t), atol=1e-5)
    assert torch.allclose(sched.predict_x0_from_eps(xt, t, noise), x0, atol=1e-9)
    assert torch.allclose(sched.predict_eps_from_x0(xt, t, x0)[1:], noise[1:], atol=1e-7)
    assert torch.allclose(sched.predict_x0_from_v(xt, t, v), x0, atol=1e-12)
    assert torch.allclose(sched.predict_eps_from_v(xt, t, v), noise, atol=1e-12)
    for p, target in (("eps", noise), ("x0", x0), ("v", v)):
        assert torch.equal(sched.training_target(x0, noise, t, p), target)
        assert torch.allclose(sched.eps_from_output(target, xt, t, p)[1:], noise[1:], atol=1e-7)
    # q_sample moments: mean sqrt(a) x0, std sqrt(1 - a)
    x0c = torch.full((20000, 1), 2.0, dtype=torch.float64)
    tt = torch.full((20000,), 300)
    s = sched.q_sample(x0c, tt, generator=g)
    a = sched.alphas_cumprod[300]
    assert abs(s.mean() - 2 * a.sqrt()) < 0.02 and abs(s.std() - (1 - a).sqrt()) < 0.02


def test_q_posterior_matches_diffusers_ddpm_mean():
    sched = NoiseSchedule.stable_diffusion()
    g = torch.Generator().manual_seed(1)
    x0, xt = torch.randn(2, 4, generator=g, dtype=torch.float64), torch.randn(2, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([5, 5])
    mean, var, logvar = sched.q_posterior(x0, xt, t)
    a, ap, b = sched.alphas_cumprod[5], sched.alphas_cumprod[4], sched.betas[5]
    assert torch.allclose(mean, (ap.sqrt() * b * x0 + (1 - b).sqrt() * (1 - ap) * xt) / (1 - a))
    assert torch.allclose(var.reshape(-1), torch.full((2,), float(b * (1 - ap) / (1 - a)), dtype=torch.float64))
    assert torch.allclose(logvar.exp(), var)


def test_ddim_timesteps_seed_and_compvis():
    assert make_ddim_timesteps("uniform", 50, 1000).tolist() == list(range(1, 1000, 20))  # seed: [1, 21, ..., 981]
    q = make_ddim_timesteps("quad", 10, 1000)
    assert q.tolist() == (((np.linspace(0, np.sqrt(800), 10)) ** 2).astype(int) + 1).tolist()
    assert make_ddim_timesteps("uniform", 1, 1000).tolist() == [1]
    full = make_ddim_timesteps("uniform", 1000, 1000)  # +1 would run off the end: left unshifted
    assert full.tolist() == list(range(1000))
    d = DDIMScheduler(num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    for S in (10, 25, 50, 37):
        d.set_timesteps(S)
        assert make_ddim_timesteps("uniform", S, 1000, spacing="leading").tolist() == d.timesteps.numpy()[::-1].tolist()


def test_ddim_sampling_parameters_match_seed_and_diffusers_variance():
    sched = NoiseSchedule.stable_diffusion()
    ts = make_ddim_timesteps("uniform", 50, 1000)
    ac = sched.alphas_cumprod.numpy()
    for eta in (0.0, 0.5, 1.0):
        sig, a, ap = make_ddim_sampling_parameters(sched.alphas_cumprod, ts, eta)
        assert np.array_equal(a, ac[ts]) and np.array_equal(ap, np.asarray([ac[0]] + ac[ts[:-1]].tolist()))
        assert np.allclose(sig, eta * np.sqrt((1 - ap) / (1 - a) * (1 - a / ap)), rtol=1e-12)
    d = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      steps_offset=1, set_alpha_to_one=False, clip_sample=False)
    d.set_timesteps(50)
    sig, _, _ = make_ddim_sampling_parameters(sched.alphas_cumprod, ts, 1.0)
    ref = [float(d._get_variance(int(t), int(t) - 20)) ** 0.5 for t in ts]
    assert np.allclose(sig, ref, rtol=1e-4)


@pytest.mark.parametrize("call", [
    lambda: make_beta_schedule("exponential", 1000),
    lambda: make_beta_schedule("linear", 0),
    lambda: NoiseSchedule.from_betas([0.1, 1.5]),
    lambda: NoiseSchedule.from_config(v_posterior=2.0),
    lambda: make_ddim_timesteps("uniform", 1001, 1000),
    lambda: make_ddim_timesteps("cubic", 10, 1000),
    lambda: make_ddim_timesteps("uniform", 0, 1000),
    lambda: make_ddim_timesteps("uniform", 10, 1000, spacing="trailing"),
    lambda: make_ddim_sampling_parameters(np.linspace(0.99, 0.01, 1000), np.array([1, 21]), -0.1),
    lambda: NoiseSchedule.stable_diffusion().lvlb_weights("mu"),
    lambda: NoiseSchedule.stable_diffusion().q_sample(torch.zeros(1, 2), torch.tensor([1000])),
])
def test_bad_arguments_raise_lumenkit_error(call):
    with pytest.raises(LumenkitError):
        call()
