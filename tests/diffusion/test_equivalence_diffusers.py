"""Full sampling loops against diffusers' schedulers (the field's reference), configured as Stable
Diffusion uses them: scaled_linear 0.00085..0.012 (= CompVis "linear"), steps_offset=1,
set_alpha_to_one=False, clip_sample=False, 'leading' spacing. Same deterministic model, same x_T and
the same noise (our samplers draw from the generator exactly where diffusers does, so two generators
with the same seed give the same noise; the explicit noise_sampler hook is tested too)."""
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerAncestralDiscreteScheduler, PNDMScheduler

from lumenkit.diffusion import NoiseSchedule, make_ddim_timesteps, sample

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          steps_offset=1, timestep_spacing="leading")
SCHED = NoiseSchedule.from_config(kind="linear", num_timesteps=1000, linear_start=0.00085, linear_end=0.012)
AC = SCHED.alphas_cumprod
TOL = 1e-5


def model(x, t, cond=None):
    """A smooth, deterministic, t-dependent eps model that keeps samples O(1): the exact eps of
    N(0, 0.25 I) data plus a nonlinear term (and a conditioning shift when cond is given)."""
    a = AC.to(x.dtype)[t.long()].reshape(-1, *([1] * (x.dim() - 1)))
    out = (1 - a).sqrt() * x / (a * 0.25 + 1 - a) + 0.05 * torch.sin(3 * x)
    if cond is not None:
        out = out + 0.1 * cond.reshape(-1, *([1] * (x.dim() - 1)))
    return out


def x_T(shape=(2, 4, 8, 8), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def run_diffusers(sched, xT, seed=1, eta=None, cond=None, uncond=None, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = xT.clone() * sched.init_noise_sigma
    B = x.shape[0]
    for t in sched.timesteps:
        xin = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        tt = t.long().expand(B)
        if uncond is not None:
            e_u, e_c = model(torch.cat([xin, xin]), torch.cat([tt, tt]), torch.cat([uncond, cond])).chunk(2)
            e = e_u + scale * (e_c - e_u)
        else:
            e = model(xin, tt, cond)
        kw = {"eta": eta} if eta is not None else {}
        if not isinstance(sched, PNDMScheduler):
            kw["generator"] = g
        x = sched.step(e, t, x, **kw).prev_sample
    return x


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(eta):
    s = DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=False)
    s.set_timesteps(50)
    xT = x_T()
    ref = run_diffusers(s, xT, eta=eta)
    ours, _ = sample(model, SCHED, "ddim", 50, x_T=xT, eta=eta, generator=torch.Generator().manual_seed(1), progress=False)
    assert (ours - ref).abs().max() < TOL
    assert ref.abs().mean() > 0.1  # a meaningful, non-degenerate output


def test_ddim_noise_sampler_hook_equals_generator():
    s = DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=False)
    s.set_timesteps(20)
    xT = x_T()
    g = torch.Generator().manual_seed(5)
    noises = [torch.randn(xT.shape, generator=g) for _ in range(20)]
    x = xT.clone()
    for t, n in zip(s.timesteps, noises):
        x = s.step(model(x, t.expand(2)), t, x, eta=1.0, variance_noise=n).prev_sample
    it = iter(noises)
    ours, _ = sample(model, SCHED, "ddim", 20, x_T=xT, eta=1.0, noise_sampler=lambda like: next(it), progress=False)
    assert (ours - x).abs().max() < TOL


def test_ddim_cfg_batched_matches_diffusers_pipeline_loop():
    s = DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=False)
    s.set_timesteps(25)
    xT = x_T()
    cond, uncond = torch.tensor([1.0, -2.0]), torch.zeros(2)
    ref = run_diffusers(s, xT, eta=0.0, cond=cond, uncond=uncond, scale=7.5)
    calls = []

    def counting_model(x, t, c):
        calls.append(x.shape[0])
        return model(x, t, c)

    ours, _ = sample(counting_model, SCHED, "ddim", 25, x_T=xT, cond=cond, uncond=uncond, guidance_scale=7.5, progress=False)
    assert (ours - ref).abs().max() < TOL
    assert calls == [4] * 25  # cond and uncond batched into one call per step


def test_ddpm_matches_diffusers():
    s = DDPMScheduler(**SD, clip_sample=False)
    s.set_timesteps(50)
    xT = x_T()
    ref = run_diffusers(s, xT)
    ours, _ = sample(model, SCHED, "ddpm", 50, x_T=xT, generator=torch.Generator().manual_seed(1), progress=False)
    assert (ours - ref).abs().max() < TOL


def test_ddpm_full_chain_matches_diffusers_1000_steps():
    """CompVis p_sample_loop (all T steps, ends at alpha-bar 1) = diffusers DDPM with 1000 inference steps
    (steps_offset=0: with SD's offset of 1 diffusers would index timestep 1000). Over 1000 float32
    steps the two roundings drift apart by ~2e-5, so the exact identity is checked in float64, with
    diffusers given our float64 schedule (its own is float32); the float32 loop agrees to 1e-4."""
    s = DDPMScheduler(**{**SD, "steps_offset": 0}, clip_sample=False)
    s.set_timesteps(1000)
    xT = x_T((1, 2, 4, 4))
    ref32 = run_diffusers(s, xT)
    ours32, _ = sample(model, SCHED, "ddpm", 1000, x_T=xT, use_original_steps=True, generator=torch.Generator().manual_seed(1), progress=False)
    assert (ours32 - ref32).abs().max() < 1e-4
    s.alphas_cumprod, s.alphas, s.betas = AC.clone(), SCHED.alphas.clone(), SCHED.betas.clone()
    s.one = torch.tensor(1.0, dtype=torch.float64)
    xT64 = xT.double()
    g = torch.Generator().manual_seed(1)
    x = xT64.clone()
    for t in s.timesteps:
        n = torch.randn(x.shape, generator=g, dtype=torch.float64) if t > 0 else None
        x = s.step(model(x, t.expand(1)), t, x, generator=None).prev_sample if n is None else _ddpm_step_with_noise(s, x, t, n)
    g2 = torch.Generator().manual_seed(1)
    ours64, _ = sample(model, SCHED, "ddpm", 1000, x_T=xT64, use_original_steps=True, generator=g2, progress=False)
    assert (ours64 - x).abs().max() < 1e-10


def _ddpm_step_with_noise(s, x, t, noise):
    """diffusers DDPMScheduler.step with its randn replaced by `noise` (it has no variance_noise argument)."""
    import diffusers.schedulers.scheduling_ddpm as mod

    orig = mod.randn_tensor
    mod.randn_tensor = lambda *a, **k: noise
    try:
        return s.step(model(x, t.expand(x.shape[0])), t, x).prev_sample
    finally:
        mod.randn_tensor = orig


def test_plms_matches_pndm_skip_prk():
    s = PNDMScheduler(**SD, skip_prk_steps=True, set_alpha_to_one=False)
    s.set_timesteps(50)
    xT = x_T()
    ref = run_diffusers(s, xT)
    calls = []

    def counting_model(x, t, c):
        calls.append(int(t[0]))
        return model(x, t, c)

    ours, _ = sample(counting_model, SCHED, "plms", 50, x_T=xT, progress=False)
    assert (ours - ref).abs().max() < TOL
    # CompVis: S + 1 model calls, the second at the first step's target timestep
    assert len(calls) == 51 and calls[:3] == [981, 961, 961]


def test_euler_ancestral_matches_diffusers_leading():
    s = EulerAncestralDiscreteScheduler(**SD)
    s.set_timesteps(30)
    xT = x_T()
    ref = run_diffusers(s, xT)
    ours, _ = sample(model, SCHED, "euler_a", 30, x_T=xT, spacing="leading", generator=torch.Generator().manual_seed(1), progress=False)
    assert (ours - ref).abs().max() < TOL


def test_euler_ancestral_sigma_interpolation_is_a_documented_small_difference():
    """With 'linspace' spacing diffusers evaluates sigma at fractional t by linear interpolation in
    sigma; k-diffusion interpolates log sigma. Both are 'Euler-a'; the sigmas differ by < 1 % relative
    (they agree exactly at integer t, which is what our sampler and diffusers' 'leading' use)."""
    s = EulerAncestralDiscreteScheduler(**{**SD, "timestep_spacing": "linspace"})
    s.set_timesteps(30)
    t = s.timesteps.double().numpy()
    sig = ((1 - AC) / AC).sqrt().numpy()
    lin = np.interp(t, np.arange(1000), sig)
    logi = np.exp(np.interp(t, np.arange(1000), np.log(sig)))
    rel = np.abs(lin - logi) / logi
    assert np.allclose(s.sigmas[:-1].double().numpy(), lin, rtol=1e-4)  # float32 vs float64 schedule
    assert 0 < rel.max() < 0.01
    frac = t != np.round(t)
    assert (rel[~frac] < 1e-12).all() and (rel[frac] > 0).any()


def test_compvis_vs_leading_spacing_documented_difference():
    """S = 30 does not divide 1000: CompVis walks range(0, 1000, 33) + 1 (31 steps, 1..991), diffusers
    'leading' arange(30) * 33 + 1 (30 steps, 1..958). Both are offered; compvis is the default."""
    cv = make_ddim_timesteps("uniform", 30, 1000)
    ld = make_ddim_timesteps("uniform", 30, 1000, spacing="leading")
    assert len(cv) == 31 and cv[0] == 1 and cv[-1] == 991
    assert len(ld) == 30 and ld[-1] == 958
    s = DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=False)
    s.set_timesteps(30)
    assert np.array_equal(s.timesteps.numpy()[::-1], ld)
    xT = x_T()
    ref = run_diffusers(s, xT, eta=0.0)
    ours_leading, _ = sample(model, SCHED, "ddim", 30, x_T=xT, spacing="leading", progress=False)
    ours_compvis, _ = sample(model, SCHED, "ddim", 30, x_T=xT, progress=False)
    assert (ours_leading - ref).abs().max() < TOL
    assert (ours_compvis - ref).abs().max() > 1e-3


def test_diffusers_published_ddim_value():
    """diffusers tests/schedulers/test_scheduler_ddim.py::test_full_loop_no_noise: linear betas
    1e-4..0.02 (CompVis 'sqrt_linear'), clip_sample=True, set_alpha_to_one=True, steps_offset=0,
    10 steps, eta 0, model(x, t) = x t / (t + 1), dummy_sample_deter -> sum |x| = 172.0067, mean 0.223967."""
    B, C, H, W = 4, 3, 8, 8
    n = B * C * H * W
    deter = (torch.arange(n).reshape(C, H, W, B) / n).permute(3, 0, 1, 2)

    def dummy_model(x, t, cond=None):
        t = t.reshape(-1, 1, 1, 1).to(x.dtype)
        return x * t / (t + 1)

    sched = NoiseSchedule.from_config(kind="sqrt_linear", num_timesteps=1000, linear_start=1e-4, linear_end=0.02)
    out, _ = sample(dummy_model, sched, "ddim", 10, x_T=deter, eta=0.0, timesteps=np.arange(10) * 100,
                    set_alpha_to_one=True, clip_denoised=True, progress=False)
    assert abs(out.abs().sum().item() - 172.0067) < 1e-2
    assert abs(out.abs().mean().item() - 0.223967) < 1e-3


def test_euler_ancestral_eta1_is_ddpm_ancestral():
    """Closed form: with sigma_down = sigma_next^2/sigma and sigma_up^2 = sigma_next^2 (sigma^2 - sigma_next^2)/sigma^2,
    an Euler-ancestral step is x0 + (sigma_next/sigma)^2 (x - x0) + sigma_up z: exactly DDPM's posterior
    q(x_prev | x_t, x0) in the variance-exploding coordinates. Same steps + same noise => same samples."""
    xT = x_T().double()
    kw = dict(x_T=xT, progress=False)
    e, _ = sample(model, SCHED, "euler_a", 25, generator=torch.Generator().manual_seed(3), **kw)
    d, _ = sample(model, SCHED, "ddpm", 25, generator=torch.Generator().manual_seed(3), **kw)
    assert (e - d).abs().max() < 1e-9
