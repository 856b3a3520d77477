"""Samplers for eps/x0/v diffusion models: DDPM (ancestral), DDIM, PLMS, Euler ancestral.

k-diffusion style: every sampler is one plain function with one signature,
`sample_<name>(denoiser, x, plan, hooks, opts) -> x`, built from small shared helpers and listed once in
`SAMPLER_FUNCTIONS` (adding a sampler touches that one place; `SAMPLERS` is its tuple of names).
`sample()` is the one public entry point: it validates the settings (`SamplerOptions`), builds the step
plan (timesteps and per-step alphas, precomputed once in float64 as Python floats so the loop never
syncs with the device, `timesteps.make_step_plan`), the denoiser (classifier-free guidance batched into
one model call, parameterization conversion, score corrector) and the hooks (noise source, inpainting,
callback, intermediates, progress bar; both in `denoiser.py`), then runs the chosen sampler.

Conventions (all documented differences to the references are tested in tests/diffusion):
- Timesteps are CompVis' (`make_ddim_timesteps`, +1 shifted). DDIM and PLMS end at a_prev = a[0] for
  the last step (CompVis; diffusers `set_alpha_to_one=False`); DDPM ends at a_prev = 1 (CompVis DDPM and
  diffusers DDPMScheduler); `set_alpha_to_one=` overrides, `use_original_steps=True` walks 0..T-1 with
  CompVis' alphas_cumprod_prev (ends at 1).
- Euler ancestral runs k-diffusion's algorithm on sigma = sqrt((1 - a)/a) at the same discrete
  timesteps as DDIM, ending at sigma = 0 (diffusers EulerAncestralDiscreteScheduler with 'leading'
  spacing uses exactly these sigmas). x_T is a VP-space (unit variance) tensor, as for every sampler:
  it enters sigma space as x_T * sqrt(1 + sigma_max^2) (diffusers' init_noise_sigma; k-diffusion
  multiplies by sigma_max, a 0.5/sigma_max^2 relative difference).
- Noise: every random draw inside the loop is `noise_sampler(like)`; by default
  torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype), drawn
  exactly at the steps where diffusers' schedulers draw (DDIM when sigma > 0, DDPM when its variance is
  > 0, Euler-a when sigma_up > 0), so equal generator states give equal noise.
- img2img (`init`, `strength`): run the last int(strength * S) steps, starting from init noised to the
  level of the first step run (diffusers' img2img). CompVis' img2img script noises to DDIM index t_enc
  but starts decoding at index t_enc - 1: a one-step mismatch we do not copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.diffusion.denoiser import Denoiser, Hooks, ModelFn
from lumenkit.diffusion.schedule import PARAMETERIZATIONS, NoiseSchedule
from lumenkit.diffusion.timesteps import DISCRETIZATIONS, SPACINGS, StepPlan, make_step_plan


# ---------------------------------------------------------------------------------------------- options
def _check_number(name: str, v: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise LumenkitError(f"{name} must be a number, got {v!r}") from None
    bad = not math.isfinite(f) or (lo is not None and (f < lo or (lo_open and f == lo))) or (hi is not None and (f > hi or (hi_open and f == hi)))
    if bad:
        rng = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{')' if hi_open else ']'}"
        raise LumenkitError(f"{name} must be a finite number in {rng}, got {v!r}")
    return f


def _check_choice(name: str, v: Any, choices: Sequence[str]) -> None:
    if v not in choices:
        raise LumenkitError(f"{name} {v!r} unknown (expected one of {', '.join(choices)})")


@dataclass(frozen=True)
class SamplerOptions:
    """Every scalar setting of a sampling run (validated here, once); `sample()` takes each as a keyword.

    eta: DDIM eta (None: 0) / Euler-a ancestral eta (None: 1); PLMS needs 0; DDPM ignores it.
    temperature, noise_dropout: scale / drop the injected noise (CompVis). clip_denoised: clamp pred_x0
    to [-1, 1] (DDIM/DDPM/PLMS). Timesteps: `discretize` "uniform" | "quad", `spacing` "compvis" |
    "leading", `use_original_steps` walks all T steps (DDIM/DDPM/PLMS), `timesteps` (ascending ints)
    overrides them; set_alpha_to_one picks the final alpha (None: True for DDPM and use_original_steps,
    else False as CompVis). parameterization: what the model outputs (eps | x0 | v); guidance_scale: CFG
    scale s. strength: img2img share of the steps run (None: 0.75). log_every_t: intermediates every
    log_every_t steps (None: 100, CompVis); progress: tqdm bar.
    """

    eta: float | None = None
    temperature: float = 1.0
    noise_dropout: float = 0.0
    clip_denoised: bool = False
    discretize: str = "uniform"
    spacing: str = "compvis"
    use_original_steps: bool = False
    timesteps: Sequence[int] | None = None
    set_alpha_to_one: bool | None = None
    parameterization: str = "eps"
    guidance_scale: float = 1.0
    strength: float | None = None
    log_every_t: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen: normalise once)
        if self.eta is not None:
            set_("eta", _check_number("eta", self.eta, lo=0.0))
        set_("temperature", _check_number("temperature", self.temperature, lo=0.0))
        set_("noise_dropout", _check_number("noise_dropout", self.noise_dropout, lo=0.0, hi=1.0, hi_open=True))
        set_("guidance_scale", _check_number("guidance_scale", self.guidance_scale))
        if self.strength is not None:
            set_("strength", _check_number("strength", self.strength, lo=0.0, hi=1.0))
        _check_choice("parameterization", self.parameterization, PARAMETERIZATIONS)
        _check_choice("discretize", self.discretize, DISCRETIZATIONS)
        _check_choice("spacing", self.spacing, SPACINGS)
        lt = self.log_every_t
        if lt is not None and (isinstance(lt, bool) or not isinstance(lt, (int, np.integer)) or lt < 1):
            raise LumenkitError(f"log_every_t must be a positive integer, got {lt!r}")

    def for_sampler(self, sampler: str) -> "SamplerOptions":
        """These options checked against `sampler` (a canonical name), with its default eta filled in."""
        if sampler == "plms" and self.eta not in (None, 0.0):
            raise LumenkitError(f"PLMS is deterministic and needs eta=0 (got eta={self.eta}); use sampler='ddim' for eta > 0")
        if sampler == "euler_a" and self.use_original_steps:
            raise LumenkitError("use_original_steps applies to ddpm/ddim/plms, not euler_a")
        if sampler == "euler_a" and self.clip_denoised:
            raise LumenkitError("clip_denoised is not supported by euler_a")
        eta = (1.0 if sampler == "euler_a" else 0.0) if self.eta is None else self.eta
        final_one = (sampler == "ddpm" or self.use_original_steps) if self.set_alpha_to_one is None else self.set_alpha_to_one
        return replace(self, eta=eta, set_alpha_to_one=bool(final_one))


OPTION_NAMES = tuple(f.name for f in fields(SamplerOptions))


# ---------------------------------------------------------------------------------------------- noise
def _dropout(noise: torch.Tensor, p: float, hooks: Hooks) -> torch.Tensor:
    """Inverted dropout of the noise (CompVis uses F.dropout, i.e. the global RNG): the keep-mask comes from
    a second standard-normal draw of the same noise source, keep where |z| >= q with P(|z| >= q) = 1 - p,
    so the result stays reproducible from the generator / noise_sampler."""
    if p <= 0:
        return noise
    keep = hooks.noise(noise).abs_() >= _normal_quantile((1 + p) / 2)  # P(|z| >= q) = 1 - p, seeded
    return noise * keep / (1.0 - p)


def _normal_quantile(q: float) -> float:
    return math.sqrt(2.0) * torch.erfinv(torch.tensor(2 * q - 1, dtype=torch.float64)).item()


def _add_noise(x: torch.Tensor, std: float, opts: SamplerOptions, hooks: Hooks) -> torch.Tensor:
    """x += std * temperature * noise (in place on a fresh tensor); no draw when std == 0."""
    if std > 0:
        x.add_(_dropout(hooks.noise(x), opts.noise_dropout, hooks), alpha=std * opts.temperature)
    return x


def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """k-diffusion: (sigma_down, sigma_up) of an ancestral step from sigma_from to sigma_to."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(max(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2, 0.0)))
    sigma_down = math.sqrt(max(sigma_to**2 - sigma_up**2, 0.0))
    return sigma_down, sigma_up


# ---------------------------------------------------------------------------------------------- samplers
def _ddim_coefficients(plan: StepPlan, sigmas: np.ndarray) -> dict[str, list[float]]:
    """Per-step floats of DDIM eq. 12 and its fused form x_prev = cx x + ce eps (+ sigma noise)."""
    sa, s1a, sap = np.sqrt(plan.a), np.sqrt(1.0 - plan.a), np.sqrt(plan.a_prev)
    dirc = np.sqrt(np.clip(1.0 - plan.a_prev - sigmas**2, 0.0, None))
    return dict(sa=sa.tolist(), s1a=s1a.tolist(), sap=sap.tolist(), dir=dirc.tolist(),
                cx=(sap / sa).tolist(), ce=(dirc - sap * s1a / sa).tolist(), sigma=sigmas.tolist())


def _ddim_update(x: torch.Tensor, e: torch.Tensor, k: int, c: dict, clip: bool, need_x0: bool):
    """One DDIM eq. 12 update without noise -> (x_prev, pred_x0 or None)."""
    if clip or need_x0:
        pred_x0 = torch.sub(x, e, alpha=c["s1a"][k]).div_(c["sa"][k])
        if clip:
            pred_x0.clamp_(-1.0, 1.0)
        return torch.add(pred_x0 * c["sap"][k], e, alpha=c["dir"][k]), pred_x0
    return torch.add(e * c["ce"][k], x, alpha=c["cx"][k]), None


def ddim_sigmas(plan: StepPlan, eta: float) -> np.ndarray:
    """DDIM eq. 16: sigma = eta sqrt((1 - a_prev)/(1 - a) (1 - a/a_prev)) per step."""
    return eta * np.sqrt(np.clip((1 - plan.a_prev) / (1 - plan.a) * (1 - plan.a / plan.a_prev), 0.0, None))


def sample_ddim(denoiser: Denoiser, x: torch.Tensor, plan: StepPlan, hooks: Hooks, opts: SamplerOptions) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12 with sigma of eq. 16), CompVis p_sample_ddim."""
    c = _ddim_coefficients(plan, ddim_sigmas(plan, opts.eta))
    for k in hooks.steps():
        x = hooks.inpaint(x, c["sa"][k], c["s1a"][k])
        e = denoiser(x, k)
        x_new, pred_x0 = _ddim_update(x, e, k, c, opts.clip_denoised, hooks.wants_x0(k))
        x_new = _add_noise(x_new, c["sigma"][k], opts, hooks)
        hooks.record(k, x_new, pred_x0)
        x = x_new
    return x


def sample_plms(denoiser: Denoiser, x: torch.Tensor, plan: StepPlan, hooks: Hooks, opts: SamplerOptions) -> torch.Tensor:
    """PLMS (Liu et al. 2022, PNDM), CompVis plms.py: the first step is a pseudo improved-Euler step
    (eps averaged with eps at the predicted x_prev, one extra model call), then Adams-Bashforth of order
    2/3/4 on the eps history ((3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24), eta = 0."""
    c = _ddim_coefficients(plan, np.zeros(len(plan)))
    clip_denoised = opts.clip_denoised
    old: list[torch.Tensor] = []
    for k in hooks.steps():
        x = hooks.inpaint(x, c["sa"][k], c["s1a"][k])
        e = denoiser(x, k)
        if not old:
            x_pred, _ = _ddim_update(x, e, k, c, clip_denoised, False)
            e_next = denoiser(x_pred, min(k + 1, len(plan) - 1))
            e_prime = torch.add(e, e_next).mul_(0.5)
        elif len(old) == 1:
            e_prime = torch.sub(e * 1.5, old[-1], alpha=0.5)
        elif len(old) == 2:
            e_prime = (e * (23 / 12)).add_(old[-1], alpha=-16 / 12).add_(old[-2], alpha=5 / 12)
        else:
            e_prime = (e * (55 / 24)).add_(old[-1], alpha=-59 / 24).add_(old[-2], alpha=37 / 24).add_(old[-3], alpha=-9 / 24)
        x_new, pred_x0 = _ddim_update(x, e_prime, k, c, clip_denoised, hooks.wants_x0(k))
        old.append(e)
        if len(old) >= 4:
            old.pop(0)
        hooks.record(k, x_new, pred_x0)
        x = x_new
    return x


def sample_ddpm(denoiser: Denoiser, x: torch.Tensor, plan: StepPlan, hooks: Hooks, opts: SamplerOptions) -> torch.Tensor:
    """Ancestral DDPM (Ho et al. 2020, Alg. 2 with the posterior of eq. 6-7) on the plan's (possibly
    strided) steps: beta_k = 1 - a/a_prev, mean = coef1 x0 + coef2 x_t, std = sqrt(max(var, 1e-20)) as
    CompVis p_sample / diffusers DDPMScheduler (variance 'fixed_small', mixed with beta by plan.v_posterior)."""
    a, ap, v_posterior, clip_denoised = plan.a, plan.a_prev, plan.v_posterior, opts.clip_denoised
    beta = 1.0 - a / ap
    var = (1 - v_posterior) * (1.0 - ap) / (1.0 - a) * beta + v_posterior * beta
    std = np.where(var > 0, np.sqrt(np.maximum(var, 1e-20)), 0.0)
    coef1 = np.sqrt(ap) * beta / (1.0 - a)
    coef2 = np.sqrt(1.0 - beta) * (1.0 - ap) / (1.0 - a)
    sa, s1a = np.sqrt(a), np.sqrt(1.0 - a)
    cx, ce = (coef2 + coef1 / sa).tolist(), (-coef1 * s1a / sa).tolist()
    coef1, coef2, std, sa_l, s1a_l = coef1.tolist(), coef2.tolist(), std.tolist(), sa.tolist(), s1a.tolist()
    for k in hooks.steps():
        x = hooks.inpaint(x, sa_l[k], s1a_l[k])
        e = denoiser(x, k)
        if clip_denoised or hooks.wants_x0(k):
            pred_x0 = torch.sub(x, e, alpha=s1a_l[k]).div_(sa_l[k])
            if clip_denoised:
                pred_x0.clamp_(-1.0, 1.0)
            x_new = torch.add(pred_x0 * coef1[k], x, alpha=coef2[k])
        else:
            pred_x0 = None
            x_new = torch.add(e * ce[k], x, alpha=cx[k])
        x_new = _add_noise(x_new, std[k], opts, hooks)
        hooks.record(k, x_new, pred_x0)
        x = x_new
    return x


def sample_euler_ancestral(denoiser: Denoiser, x: torch.Tensor, plan: StepPlan, hooks: Hooks, opts: SamplerOptions) -> torch.Tensor:
    """Euler ancestral (k-diffusion `sample_euler_ancestral`, Karras et al. 2022 sigma view) on
    sigma = sqrt((1 - a)/a) at the plan's timesteps, ending at sigma = 0. x is VP space in and out; the
    model sees x_sigma / sqrt(1 + sigma^2) (diffusers scale_model_input). The ODE direction
    d = (x - denoised)/sigma is exactly the model's eps, so a step is x += (sigma_down - sigma) eps."""
    sig = plan.sigmas.tolist()
    n = len(sig)
    nxt = sig[1:] + [0.0]
    steps = [get_ancestral_step(sig[k], nxt[k], opts.eta) for k in range(n)]
    s_in = [1.0 / math.sqrt(1.0 + s * s) for s in sig]
    x = x * math.sqrt(1.0 + sig[0] ** 2)
    for k in hooks.steps():
        x = hooks.inpaint(x, 1.0, sig[k])
        e = denoiser(x * s_in[k], k)
        sigma_down, sigma_up = steps[k]
        x_new = torch.add(x, e, alpha=sigma_down - sig[k])
        x_new = _add_noise(x_new, sigma_up, opts, hooks)
        if hooks.wants_x0(k):
            x_old = x
            hooks.record(k, x_new / math.sqrt(1.0 + nxt[k] ** 2), lambda: torch.sub(x_old, e, alpha=sig[k]))
        x = x_new
    return x


# ---------------------------------------------------------------------------------------------- registry
SamplerFn = Callable[[Denoiser, torch.Tensor, StepPlan, Hooks, SamplerOptions], torch.Tensor]

# The one list of samplers: name -> function (every other list of sampler names derives from it).
SAMPLER_FUNCTIONS: dict[str, SamplerFn] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "plms": sample_plms,
    "euler_a": sample_euler_ancestral,
}
SAMPLERS: tuple[str, ...] = tuple(SAMPLER_FUNCTIONS)
_ALIASES = {"euler_ancestral": "euler_a", "k_euler_a": "euler_a", "k_euler_ancestral": "euler_a", "ancestral": "ddpm"}


def resolve_sampler(name: str) -> str:
    """The canonical name of a sampler (aliases such as 'euler_ancestral' accepted); LumenkitError if unknown."""
    canon = _ALIASES.get(name, name) if isinstance(name, str) else name
    if canon not in SAMPLER_FUNCTIONS:
        raise LumenkitError(f"sampler {name!r} unknown (expected one of {', '.join(SAMPLERS)})")
    return canon


# ---------------------------------------------------------------------------------------------- entry point
def _device_of(*cands: Any) -> torch.device | None:
    for c in cands:
        if isinstance(c, torch.Tensor):
            return c.device
        if isinstance(c, torch.Generator):
            return torch.device(c.device)
    return None


def _check_call(model: Any, schedule: Any, steps: Any, opts: SamplerOptions) -> None:
    if not isinstance(schedule, NoiseSchedule):
        raise LumenkitError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    if not callable(model):
        raise LumenkitError("model must be callable as model(x, t, cond)")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise LumenkitError(f"steps must be a positive integer, got {steps!r}")
    if steps > schedule.num_timesteps and not opts.use_original_steps and opts.timesteps is None:
        raise LumenkitError(f"steps={steps} exceeds the schedule's {schedule.num_timesteps} training timesteps")


def _sample_shape(shape: Sequence[int] | None, x_T: torch.Tensor | None, init: torch.Tensor | None) -> tuple[int, ...]:
    """The sample shape (B, ...) from init, x_T or shape, which must agree."""
    if init is not None:
        shape_ = tuple(init.shape)
    elif x_T is not None:
        shape_ = tuple(x_T.shape)
    elif shape is not None:
        shape_ = tuple(int(s) for s in shape)
    else:
        raise LumenkitError("give shape=(B, ...), x_T, or init (img2img)")
    if len(shape_) < 1 or any(s < 1 for s in shape_):
        raise LumenkitError(f"shape must be (B, ...) with positive sizes, got {shape_}")
    if shape is not None and tuple(int(s) for s in shape) != shape_:
        raise LumenkitError(f"shape {tuple(shape)} does not match x_T/init shape {shape_}")
    if x_T is not None and tuple(x_T.shape) != shape_:
        raise LumenkitError(f"x_T shape {tuple(x_T.shape)} does not match init shape {shape_}")
    return shape_


def _inpaint_inputs(x0: torch.Tensor | None, mask: torch.Tensor | None, shape: tuple[int, ...], dev: torch.device, dt: torch.dtype):
    """(x0, mask) on the sampling device and dtype, checked against the sample shape; (None, None) without a mask."""
    if mask is None:
        return None, None  # CompVis: x0 only matters together with a mask
    if x0 is None:
        raise LumenkitError("mask needs x0 (the known image/latent to keep where mask == 1)")
    x0, mask = x0.to(dev, dt), mask.to(dev, dt)
    if tuple(x0.shape) != shape:
        raise LumenkitError(f"x0 shape {tuple(x0.shape)} does not match sample shape {shape}")
    try:
        torch.broadcast_shapes(mask.shape, shape)
    except RuntimeError:
        raise LumenkitError(f"mask shape {tuple(mask.shape)} does not broadcast to sample shape {shape}") from None
    return x0, mask


@torch.no_grad()
def sample(
    model: ModelFn,
    schedule: NoiseSchedule,
    sampler: str = "ddim",
    steps: int = 50,
    shape: Sequence[int] | None = None,
    *,
    x_T: torch.Tensor | None = None,
    cond: Any = None,
    uncond: Any = None,
    init: torch.Tensor | None = None,
    x0: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: Callable[[torch.Tensor], torch.Tensor] | None = None,
    callback: Callable[[dict], Any] | None = None,
    score_corrector: Any = None,
    corrector_kwargs: dict | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    options: SamplerOptions | None = None,
    **settings: Any,
) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    """Draw samples from a diffusion model. Returns (samples [B, ...], intermediates).

    model(x [B, ...], t LongTensor [B], cond) -> eps (or x0 / v per `parameterization`).
    sampler: one of SAMPLERS, "ddpm" (ancestral) | "ddim" | "plms" | "euler_a" (Euler ancestral).
    steps: S sampling steps (CompVis timesteps, see `make_ddim_timesteps`).
    shape (B, ...) or x_T [B, ...] (VP-space start noise; drawn from `generator` when absent).
    cond / uncond (+ guidance_scale): classifier-free guidance eps = eps_u + s (eps_c - eps_u), both halves in
    one model call (x, t and cond concatenated [uncond, cond]); cond may be a tensor, dict or list of tensors.
    init [B, ...] (+ strength in [0, 1], default 0.75): img2img, run the last int(strength S) steps from init
    noised to that level. x0 + mask: inpainting, where mask == 1 keeps x0 re-noised to the current step.
    callback({'x', 'i', 't', 'denoised'}) after each step; intermediates {'x_inter', 'pred_x0'} every
    log_every_t steps plus the first and last; score_corrector.modify_score(model, eps, x, t, cond,
    **corrector_kwargs) (or a callable with that signature) edits eps.
    noise_sampler(like) -> standard normal tensor shaped like `like`: replaces every draw inside the loop
    (and the img2img start noise); x_T itself comes from `generator`.
    Device: `device`, else that of x_T / init / x0 / generator, else CPU; dtype: `dtype`, else x_T's, else float32.
    Scalar settings, as keywords or as `options=SamplerOptions(...)` (keywords win): eta, temperature,
    noise_dropout, clip_denoised, discretize, spacing, use_original_steps, timesteps, set_alpha_to_one,
    parameterization, guidance_scale, strength, log_every_t, progress (see SamplerOptions).
    """
    unknown = sorted(set(settings) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(f"sample() got an unexpected keyword argument {unknown[0]!r}")
    sampler = resolve_sampler(sampler)
    base = options if options is not None else SamplerOptions()
    if not isinstance(base, SamplerOptions):
        raise LumenkitError(f"options must be a SamplerOptions, got {type(base).__name__}")
    opts = (replace(base, **settings) if settings else base).for_sampler(sampler)
    _check_call(model, schedule, steps, opts)
    if uncond is not None and cond is None and opts.guidance_scale != 1.0:
        raise LumenkitError("uncond (unconditional conditioning) needs cond for classifier-free guidance")
    if score_corrector is not None and opts.parameterization != "eps":
        raise LumenkitError("score_corrector needs parameterization='eps' (as CompVis)")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise LumenkitError(f"generator must be a torch.Generator, got {type(generator).__name__}")

    dev = torch.device(device) if device is not None else (_device_of(x_T, init, x0, generator) or torch.device("cpu"))
    dt = dtype or (x_T.dtype if x_T is not None else init.dtype if init is not None and init.is_floating_point() else torch.float32)
    if not dt.is_floating_point:
        raise LumenkitError(f"dtype must be floating point, got {dt}")
    gen_dev = torch.device(generator.device) if generator is not None else None

    def default_noise(like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=generator, device=gen_dev or like.device, dtype=like.dtype).to(like.device)

    noise = noise_sampler or default_noise
    if init is not None:
        init = init.to(dev, dt)
    shape_ = _sample_shape(shape, x_T, init)
    x0, mask = _inpaint_inputs(x0, mask, shape_, dev, dt)
    plan = make_step_plan(schedule, steps, discretize=opts.discretize, spacing=opts.spacing, use_original_steps=opts.use_original_steps,
                          timesteps=opts.timesteps, set_alpha_to_one=opts.set_alpha_to_one)

    if init is not None:
        strength = 0.75 if opts.strength is None else opts.strength
        n_run = min(int(strength * len(plan)), len(plan))
        if n_run == 0:
            return init.clone(), {"x_inter": [init], "pred_x0": [init]}
        plan = plan.tail(n_run)
        a0 = float(plan.a[0])
        x = torch.add(init * math.sqrt(a0), noise(init), alpha=math.sqrt(1.0 - a0))
    elif opts.strength is not None:
        raise LumenkitError("strength needs init (the image/latent to start from)")
    elif x_T is None:
        x = torch.randn(shape_, generator=generator, device=gen_dev or dev, dtype=dt).to(dev)
    else:
        x = x_T.to(dev, dt)

    denoiser = Denoiser(model, plan, shape_[0], dev, cond=cond, uncond=uncond, guidance_scale=opts.guidance_scale,
                        parameterization=opts.parameterization, score_corrector=score_corrector, corrector_kwargs=corrector_kwargs)
    hooks = Hooks(len(plan), noise=noise, x0=x0, mask=mask, callback=callback, log_every_t=opts.log_every_t or 100,
                  progress=opts.progress, desc=f"{sampler} sampler", timesteps=plan.timesteps)
    hooks.intermediates = {"x_inter": [x], "pred_x0": [x]}
    return SAMPLER_FUNCTIONS[sampler](denoiser, x, plan, hooks, opts), hooks.intermediates


__all__ = ["sample", "SamplerOptions", "SAMPLERS", "SAMPLER_FUNCTIONS", "resolve_sampler", "StepPlan", "make_step_plan",
           "sample_ddim", "sample_plms", "sample_ddpm", "sample_euler_ancestral", "get_ancestral_step", "ddim_sigmas"]
