"""The one sampling interface: edge cases (S = 1, S = T, S not dividing T, quad + eta, batch 1 and
large, float32/float64), conditioning and guidance, inpainting, img2img, hooks, determinism, and
clear LumenkitErrors for bad arguments."""
import math

import pytest
import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.diffusion import NoiseSchedule, make_ddim_sampling_parameters, make_ddim_timesteps, sample
from lumenkit.diffusion.samplers import SAMPLERS

SCHED = NoiseSchedule.stable_diffusion()
AC = SCHED.alphas_cumprod


def model(x, t, cond=None):
    a = AC.to(device=x.device, dtype=x.dtype)[t.long()].reshape(-1, *([1] * (x.dim() - 1)))
    out = (1 - a).sqrt() * x / (a * 0.25 + 1 - a) + 0.05 * torch.sin(3 * x)
    if cond is not None:
        c = cond["y"] if isinstance(cond, dict) else cond
        out = out + 0.1 * c.reshape(-1, *([1] * (x.dim() - 1)))
    return out


def xT(shape=(2, 3, 4, 4), dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def manual_ddim(x, ts, eta=0.0, noises=None):
    """DDIM eq. 12, written out from the seed's p_sample_ddim with make_ddim_sampling_parameters."""
    sig, a, ap = make_ddim_sampling_parameters(AC, ts, eta)
    x = x.double()
    for k, i in enumerate(reversed(range(len(ts)))):
        e = model(x, torch.full((x.shape[0],), int(ts[i])))
        pred_x0 = (x - math.sqrt(1 - a[i]) * e) / math.sqrt(a[i])
        x = math.sqrt(ap[i]) * pred_x0 + math.sqrt(1 - ap[i] - sig[i] ** 2) * e
        if sig[i] > 0:
            x = x + sig[i] * noises[k]
    return x


@pytest.mark.parametrize("S,method", [(1, "uniform"), (7, "uniform"), (30, "uniform"), (1000, "uniform"), (15, "quad")])
def test_ddim_edge_step_counts_match_the_written_out_equations(S, method):
    ts = make_ddim_timesteps(method, S, 1000)
    x = xT(dtype=torch.float64)
    ours, _ = sample(model, SCHED, "ddim", S, x_T=x, discretize=method, progress=False)
    assert torch.allclose(ours, manual_ddim(x, ts), atol=1e-9)
    assert torch.isfinite(ours).all()


def test_quad_spacing_with_eta():
    S, eta = 12, 0.7
    ts = make_ddim_timesteps("quad", S, 1000)
    x = xT(dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    noises = [torch.randn(x.shape, generator=g, dtype=torch.float64) for _ in range(S)]
    it = iter(noises)
    ours, _ = sample(model, SCHED, "ddim", S, x_T=x, eta=eta, discretize="quad", noise_sampler=lambda like: next(it), progress=False)
    assert torch.allclose(ours, manual_ddim(x, ts, eta, noises), atol=1e-9)


def gaussian_oracle(x, t, cond=None):
    """The exact eps-predictor for data ~ N(0, 0.25 I): eps = sqrt(1 - a) x / (0.25 a + 1 - a)."""
    a = AC.to(device=x.device, dtype=x.dtype)[t.long()].reshape(-1, *([1] * (x.dim() - 1)))
    return (1 - a).sqrt() * x / (a * 0.25 + 1 - a)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_one_step_equals_the_closed_form(sampler):
    """S = 1 (CompVis timestep 1): DDPM and Euler-a go to clean data, x = pred_x0 = (x - sqrt(1 - a) e) / sqrt(a);
    DDIM to alpha-bar a[0]; PLMS the same DDIM step with e averaged over two calls at the same timestep."""
    x = xT((3, 2, 2, 2), torch.float64)
    calls = []
    out, _ = sample(lambda x_, t, c: (calls.append(int(t[0])), model(x_, t, c))[1], SCHED, sampler, 1, x_T=x,
                    generator=torch.Generator().manual_seed(0), progress=False)
    a, a0 = float(AC[1]), float(AC[0])
    e = model(x, torch.full((3,), 1))
    x0 = (x - math.sqrt(1 - a) * e) / math.sqrt(a)
    if sampler == "plms":
        x_pred = math.sqrt(a0) * x0 + math.sqrt(1 - a0) * e
        e = (e + model(x_pred, torch.full((3,), 1))) / 2
        x0 = (x - math.sqrt(1 - a) * e) / math.sqrt(a)
    want = x0 if sampler in ("ddpm", "euler_a") else math.sqrt(a0) * x0 + math.sqrt(1 - a0) * e
    assert calls == ([1, 1] if sampler == "plms" else [1])
    assert torch.allclose(out, want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_step_of_the_chain_reproduces_a_gaussian(sampler):
    """S = T (every timestep 0..999, unshifted): with the exact oracle of N(0, 0.25), each sampler's
    samples have variance 0.25 (the probability-flow ODE maps N(0, 1) onto the data exactly, and the
    ancestral samplers are exact DDPM chains). 20000 values: the sample variance's sd is 0.0025."""
    calls = []
    out, inter = sample(lambda x_, t, c: (calls.append(int(t[0])), gaussian_oracle(x_, t))[1], SCHED, sampler, 1000,
                        shape=(5000, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64, progress=False)
    assert calls[:2] == [999, 998] and calls[-1] == 0 and len(calls) == 1000 + (sampler == "plms")
    assert abs(float(out.var()) - 0.25) < 0.012, float(out.var())
    assert abs(float(out.mean())) < 0.01
    assert len(inter["x_inter"]) == 1 + 10 + 1  # x_T, every 100th countdown index, and the first step


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_batch_rows_are_independent_and_dtypes(sampler):
    """A row's sample does not depend on the batch it is in (batch 1 vs 64); float32 tracks float64."""
    big = xT((64, 2, 3, 3), torch.float64, seed=4)
    kw = dict(progress=False, eta=0.0 if sampler in ("ddim", "euler_a", "plms") else None)
    out64, _ = sample(model, SCHED, sampler, 20, x_T=big, **kw, generator=torch.Generator().manual_seed(0))
    assert out64.dtype == torch.float64
    if sampler != "ddpm":  # deterministic samplers: row 5 alone equals row 5 in the batch
        one, _ = sample(model, SCHED, sampler, 20, x_T=big[5:6], **kw)
        assert torch.allclose(one, out64[5:6], atol=1e-12)
        out32, _ = sample(model, SCHED, sampler, 20, x_T=big.float(), **kw)
        assert out32.dtype == torch.float32
        assert (out32.double() - out64).abs().max() < 1e-4


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_same_samples(sampler):
    runs = [sample(model, SCHED, sampler, 10, shape=(2, 3, 4, 4), generator=torch.Generator().manual_seed(7), progress=False)[0] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other, _ = sample(model, SCHED, sampler, 10, shape=(2, 3, 4, 4), generator=torch.Generator().manual_seed(8), progress=False)
    assert not torch.equal(runs[0], other)


def test_guidance_dict_cond_and_scale_one_single_call():
    x = xT()
    cond, uncond = {"y": torch.tensor([1.0, 2.0])}, {"y": torch.zeros(2)}
    seen = []

    def m(x_, t, c):
        seen.append((x_.shape[0], t.shape[0], c["y"].shape[0] if c is not None else None))
        return model(x_, t, c)

    g, _ = sample(m, SCHED, "plms", 5, x_T=x, cond=cond, uncond=uncond, guidance_scale=3.0, progress=False)
    assert all(s == (4, 4, 4) for s in seen)
    seen.clear()
    one, _ = sample(m, SCHED, "plms", 5, x_T=x, cond=cond, uncond=uncond, guidance_scale=1.0, progress=False)
    assert all(s == (2, 2, 2) for s in seen)
    plain, _ = sample(model, SCHED, "plms", 5, x_T=x, cond=cond, progress=False)
    assert torch.equal(one, plain)
    # the guided eps is eps_u + s (eps_c - eps_u): with this model, a shift of 0.1 * s * cond
    u, _ = sample(model, SCHED, "ddim", 1, x_T=x, cond=uncond, progress=False)
    g1, _ = sample(model, SCHED, "ddim", 1, x_T=x, cond=cond, uncond=uncond, guidance_scale=3.0, progress=False)
    c1, _ = sample(model, SCHED, "ddim", 1, x_T=x, cond=cond, progress=False)
    assert torch.allclose(g1 - u, 3.0 * (c1 - u), atol=1e-5)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_inpainting_keeps_known_region(sampler):
    """mask == 1 keeps x0 (re-noised each step, so the last step's output there is x0 up to the last noise level)."""
    x0 = torch.full((2, 1, 4, 4), 0.7)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1
    out, _ = sample(model, SCHED, sampler, 25, shape=(2, 1, 4, 4), x0=x0, mask=mask, generator=torch.Generator().manual_seed(0), progress=False)
    assert (out[..., :2] - 0.7).abs().max() < 0.15
    free, _ = sample(model, SCHED, sampler, 25, shape=(2, 1, 4, 4), generator=torch.Generator().manual_seed(0), progress=False)
    assert (free[..., :2] - 0.7).abs().max() > 0.3


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_img2img_strength(sampler):
    init = torch.full((2, 1, 4, 4), 0.5)
    same, _ = sample(model, SCHED, sampler, 20, init=init, strength=0.0, progress=False)
    assert torch.equal(same, init)
    steps = []
    out, _ = sample(model, SCHED, sampler, 20, init=init, strength=0.5, callback=lambda d: steps.append(d["t"]),
                    generator=torch.Generator().manual_seed(0), progress=False)
    assert steps == list(range(451, 0, -50))  # S = 20: 951, 901, ..., 1; strength 0.5 runs the last 10
    weak, _ = sample(model, SCHED, sampler, 20, init=init, strength=0.1, generator=torch.Generator().manual_seed(0), progress=False)
    assert (weak - init).abs().mean() < (out - init).abs().mean()


def test_callback_intermediates_and_score_corrector():
    seen = []
    out, inter = sample(model, SCHED, "ddim", 50, x_T=xT(), callback=seen.append, log_every_t=10, progress=False)
    assert [d["i"] for d in seen] == list(range(50)) and seen[0]["t"] == 981 and seen[-1]["t"] == 1
    assert torch.equal(seen[-1]["x"], out)
    # CompVis: x_T, then every step whose countdown index % log_every_t == 0, plus the first step
    assert len(inter["x_inter"]) == 1 + 1 + 5 and len(inter["pred_x0"]) == 7

    class Corrector:
        def modify_score(self, model_, e_t, x, t, c, scale=0.0):
            return e_t * (1 + scale)

    base, _ = sample(model, SCHED, "ddim", 10, x_T=xT(), progress=False)
    same, _ = sample(model, SCHED, "ddim", 10, x_T=xT(), score_corrector=Corrector(), corrector_kwargs={"scale": 0.0}, progress=False)
    diff, _ = sample(model, SCHED, "ddim", 10, x_T=xT(), score_corrector=Corrector(), corrector_kwargs={"scale": 0.5}, progress=False)
    assert torch.equal(base, same) and not torch.allclose(base, diff)


def test_temperature_and_noise_dropout():
    kw = dict(x_T=xT(), eta=1.0, progress=False)
    cold, _ = sample(model, SCHED, "ddim", 20, temperature=0.0, generator=torch.Generator().manual_seed(0), **kw)
    det, _ = sample(model, SCHED, "ddim", 20, x_T=xT(), eta=1.0, noise_sampler=lambda like: torch.zeros_like(like), progress=False)
    assert torch.allclose(cold, det)
    a, _ = sample(model, SCHED, "ddim", 20, noise_dropout=0.5, generator=torch.Generator().manual_seed(0), **kw)
    b, _ = sample(model, SCHED, "ddim", 20, noise_dropout=0.5, generator=torch.Generator().manual_seed(0), **kw)
    c, _ = sample(model, SCHED, "ddim", 20, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_use_original_steps_walks_the_full_chain():
    calls = []
    sample(lambda x, t, c: (calls.append(int(t[0])), model(x, t, c))[1], SCHED, "ddim", 50, x_T=xT(), use_original_steps=True, progress=False)
    assert calls == list(range(999, -1, -1))


@pytest.mark.cuda
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_cuda_matches_cpu(sampler):
    x = xT()
    cpu, _ = sample(model, SCHED, sampler, 20, x_T=x, generator=torch.Generator().manual_seed(0), progress=False)
    gpu, _ = sample(model, SCHED, sampler, 20, x_T=x.cuda(), generator=torch.Generator().manual_seed(0), progress=False)
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().max() < 1e-4


@pytest.mark.parametrize("kwargs,match", [
    (dict(sampler="heun"), "sampler"),
    (dict(steps=1001), "exceeds"),
    (dict(steps=0), "steps"),
    (dict(eta=-0.1), "eta"),
    (dict(sampler="plms", eta=0.5), "PLMS"),
    (dict(discretize="cubic"), "discretize"),
    (dict(spacing="trailing"), "spacing"),
    (dict(parameterization="mu"), "parameterization"),
    (dict(noise_dropout=1.0), "noise_dropout"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(shape=None), "shape"),
    (dict(shape=(2, 3, 4, 5), x_T=torch.zeros(2, 3, 4, 4)), "does not match"),
    (dict(mask=torch.ones(2, 3, 4, 4)), "x0"),
    (dict(mask=torch.ones(3, 4), x0=torch.zeros(2, 3, 4, 4)), "broadcast"),
    (dict(strength=0.5), "init"),
    (dict(init=torch.zeros(2, 3, 4, 4), strength=1.5, x_T=None, shape=None), "strength"),
    (dict(uncond=torch.zeros(2), guidance_scale=5.0), "cond"),
    (dict(cond=torch.ones(2), uncond={"y": torch.zeros(2)}, guidance_scale=5.0), "uncond"),
    (dict(parameterization="v", score_corrector=lambda *a: a[1]), "score_corrector"),
    (dict(log_every_t=0), "log_every_t"),
    (dict(timesteps=[5, 3]), "timesteps"),
])
def test_bad_arguments_raise_lumenkit_error(kwargs, match):
    args = dict(sampler="ddim", steps=10, shape=(2, 3, 4, 4), x_T=None)
    args.update(kwargs)
    if args.get("shape") is None and args.get("x_T") is None and "init" not in args:
        args.pop("shape")
    with pytest.raises(LumenkitError, match=match):
        sample(model, SCHED, progress=False, **args)


def test_bad_schedule_and_model():
    with pytest.raises(LumenkitError, match="NoiseSchedule"):
        sample(model, "linear", shape=(1, 2))
    with pytest.raises(LumenkitError, match="model returned shape"):
        sample(lambda x, t, c: x[:, :1], SCHED, shape=(1, 2, 2), progress=False)


def test_options_dataclass_equals_keywords_and_rejects_unknown_settings():
    from lumenkit.diffusion import SamplerOptions

    kw = dict(eta=0.4, temperature=0.8, noise_dropout=0.2, discretize="quad", log_every_t=3)
    a, ia = sample(model, SCHED, "ddim", 12, x_T=xT(), generator=torch.Generator().manual_seed(5), progress=False, **kw)
    b, ib = sample(model, SCHED, "ddim", 12, x_T=xT(), generator=torch.Generator().manual_seed(5), options=SamplerOptions(progress=False, **kw))
    assert torch.equal(a, b) and len(ia["x_inter"]) == len(ib["x_inter"])
    # keywords win over options
    c, _ = sample(model, SCHED, "ddim", 12, x_T=xT(), options=SamplerOptions(eta=0.4, progress=False), eta=0.0)
    d, _ = sample(model, SCHED, "ddim", 12, x_T=xT(), progress=False)
    assert torch.equal(c, d)
    with pytest.raises(TypeError, match="unexpected keyword argument 'etta'"):
        sample(model, SCHED, "ddim", 12, x_T=xT(), etta=0.1)
    with pytest.raises(LumenkitError, match="eta"):
        SamplerOptions(eta=float("inf"))
    assert SamplerOptions().for_sampler("euler_a").eta == 1.0 and SamplerOptions().for_sampler("ddim").eta == 0.0
    assert SamplerOptions().for_sampler("ddpm").set_alpha_to_one and not SamplerOptions().for_sampler("ddim").set_alpha_to_one


def test_one_sampler_list_with_one_signature():
    """SAMPLERS is the registry's names; every sampler function runs from the same five arguments."""
    import inspect

    from lumenkit.diffusion import SAMPLER_FUNCTIONS, SamplerOptions, resolve_sampler
    from lumenkit.diffusion.denoiser import Denoiser, Hooks
    from lumenkit.diffusion.timesteps import make_step_plan

    assert SAMPLERS == tuple(SAMPLER_FUNCTIONS) == ("ddpm", "ddim", "plms", "euler_a")
    assert {tuple(inspect.signature(f).parameters) for f in SAMPLER_FUNCTIONS.values()} == {("denoiser", "x", "plan", "hooks", "opts")}
    assert resolve_sampler("euler_ancestral") == "euler_a"
    with pytest.raises(LumenkitError, match="heun"):
        resolve_sampler("heun")
    # calling a sampler function directly gives what sample() gives
    plan = make_step_plan(SCHED, 10)
    x = xT()
    for name, fn in SAMPLER_FUNCTIONS.items():
        opts = SamplerOptions().for_sampler(name)
        plan = make_step_plan(SCHED, 10, set_alpha_to_one=opts.set_alpha_to_one)
        noise = lambda like: torch.zeros_like(like)  # noqa: E731
        hooks = Hooks(len(plan), noise=noise, progress=False, timesteps=plan.timesteps)
        direct = fn(Denoiser(model, plan, x.shape[0], x.device), x, plan, hooks, opts)
        via, _ = sample(model, SCHED, name, 10, x_T=x, noise_sampler=noise, progress=False)
        assert torch.equal(direct, via), name
