"""Samplers for eps/x0/v diffusion models: DDPM (ancestral), DDIM, PLMS, Euler ancestral.

k-diffusion style: every sampler is one plain function `sample_<name>(denoiser, x, plan, ..., hooks=...)`
built from small shared helpers; `sample()` is the one public entry point that validates arguments,
builds the step plan (timesteps and per-step alphas, precomputed once in float64 as Python floats so the
loop never syncs with the device), the denoiser (classifier-free guidance batched into one model call,
parameterization conversion, score corrector) and the hooks (noise source, inpainting, callback,
intermediates, progress bar), then runs the chosen sampler.

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
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.diffusion.schedule import PARAMETERIZATIONS, NoiseSchedule
from lumenkit.diffusion.timesteps import DISCRETIZATIONS, SPACINGS, make_ddim_timesteps

SAMPLERS = ("ddpm", "ddim", "plms", "euler_a")
_ALIASES = {"euler_ancestral": "euler_a", "k_euler_a": "euler_a", "k_euler_ancestral": "euler_a", "ancestral": "ddpm"}

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


# ---------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class StepPlan:
    """Per-step schedule in sampling order (row 0 = noisiest), float64 numpy [n].

    timesteps: model timesteps (descending); a: alphas_cumprod at them; a_prev: the alpha-bar each step
    moves to (a[k+1] for k < n-1, and the final alpha for the last step).
    """

    timesteps: np.ndarray
    a: np.ndarray
    a_prev: np.ndarray

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def tail(self, n: int) -> "StepPlan":
        """The last n steps (img2img)."""
        return StepPlan(self.timesteps[len(self) - n :], self.a[len(self) - n :], self.a_prev[len(self) - n :])

    @property
    def sigmas(self) -> np.ndarray:
        """k-diffusion sigma = sqrt((1 - a)/a) at each step's timestep [n]."""
        return np.sqrt((1.0 - self.a) / self.a)


def make_step_plan(
    schedule: NoiseSchedule,
    steps: int,
    *,
    discretize: str = "uniform",
    spacing: str = "compvis",
    use_original_steps: bool = False,
    timesteps: Sequence[int] | None = None,
    set_alpha_to_one: bool = False,
) -> StepPlan:
    """Timesteps + per-step alphas. `timesteps` (ascending ints) overrides discretize/spacing;
    `use_original_steps` walks every training step 0..T-1 (CompVis ddim_use_original_steps)."""
    T = schedule.num_timesteps
    if timesteps is not None:
        ts = np.asarray(timesteps, dtype=np.int64).reshape(-1)
        if ts.size < 1 or (ts < 0).any() or (ts >= T).any() or (np.diff(ts) < 0).any():
            raise LumenkitError(f"timesteps must be a non-empty ascending sequence of ints in [0, {T - 1}]")
    elif use_original_steps:
        ts = np.arange(T, dtype=np.int64)
    else:
        ts = make_ddim_timesteps(discretize, steps, T, spacing=spacing)
    ac = schedule.alphas_cumprod.numpy()
    final = 1.0 if set_alpha_to_one else float(ac[0])
    a = ac[ts]
    a_prev = np.concatenate([[final], ac[ts[:-1]]])
    return StepPlan(ts[::-1].copy(), a[::-1].copy(), a_prev[::-1].copy())


# ---------------------------------------------------------------------------------------------- helpers
def _cat_cond(uncond: Any, cond: Any) -> Any:
    """torch.cat([uncond, cond]) for a tensor, or per entry for a dict / list of tensors (CompVis c_crossattn)."""
    if isinstance(cond, torch.Tensor):
        if not isinstance(uncond, torch.Tensor):
            raise LumenkitError("uncond must have the same structure as cond (a tensor here)")
        return torch.cat([uncond, cond])
    if isinstance(cond, dict):
        if not isinstance(uncond, dict) or set(uncond) != set(cond):
            raise LumenkitError(f"uncond must be a dict with the same keys as cond ({sorted(cond)})")
        return {k: _cat_cond(uncond[k], cond[k]) for k in cond}
    if isinstance(cond, (list, tuple)):
        if not isinstance(uncond, (list, tuple)) or len(uncond) != len(cond):
            raise LumenkitError("uncond must be a list of the same length as cond")
        return [_cat_cond(u, c) for u, c in zip(uncond, cond)]
    raise LumenkitError(f"cond must be a tensor, a dict or a list of tensors for guidance, got {type(cond).__name__}")


class Denoiser:
    """eps(x_t, step k) from the user's model: CFG batched into one call, parameterization -> eps,
    score corrector. Timestep tensors for every step are built once ([n, B] or [n, 2B] long)."""

    def __init__(
        self,
        model: ModelFn,
        plan: StepPlan,
        batch: int,
        device: torch.device,
        *,
        cond: Any = None,
        uncond: Any = None,
        guidance_scale: float = 1.0,
        parameterization: str = "eps",
        score_corrector: Any = None,
        corrector_kwargs: dict | None = None,
    ):
        self.model = model
        self.cfg = uncond is not None and guidance_scale != 1.0
        self.scale = float(guidance_scale)
        self.cond = cond
        self.c_in = _cat_cond(uncond, cond) if self.cfg else cond
        reps = 2 if self.cfg else 1
        n = len(plan)
        ts = torch.as_tensor(plan.timesteps, dtype=torch.long).to(device)
        self.t_in = ts.view(n, 1).expand(n, reps * batch).contiguous()
        self.t_single = self.t_in[:, :batch] if self.cfg else self.t_in
        self.sqrt_a = np.sqrt(plan.a).tolist()
        self.sqrt_1ma = np.sqrt(1.0 - plan.a).tolist()
        self.parameterization = parameterization
        self.score_corrector = score_corrector
        self.corrector_kwargs = corrector_kwargs or {}

    def __call__(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """x [B, ...] in VP space at step k's timestep -> eps [B, ...]."""
        if self.cfg:
            out = self.model(torch.cat([x, x]), self.t_in[k], self.c_in)
            out_u, out_c = out.chunk(2)
            out = torch.lerp(out_u, out_c, self.scale)  # out_u + s (out_c - out_u); linear, so before conversion
        else:
            out = self.model(x, self.t_in[k], self.cond)
        if out.shape != x.shape:
            raise LumenkitError(f"model returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        if self.parameterization == "x0":  # eps = (x - sqrt(a) x0) / sqrt(1 - a)
            out = (x - out * self.sqrt_a[k]) / self.sqrt_1ma[k]
        elif self.parameterization == "v":  # eps = sqrt(a) v + sqrt(1 - a) x
            out = torch.add(out * self.sqrt_a[k], x, alpha=self.sqrt_1ma[k])
        if self.score_corrector is not None:
            sc = self.score_corrector
            fn = sc.modify_score if hasattr(sc, "modify_score") else sc
            out = fn(self.model, out, x, self.t_single[k], self.cond, **self.corrector_kwargs)
        return out


class Hooks:
    """What every sampler shares: the noise source, inpainting, callback, intermediates, progress bar."""

    def __init__(
        self,
        n: int,
        *,
        noise: Callable[[torch.Tensor], torch.Tensor],
        x0: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        callback: Callable[[dict], Any] | None = None,
        log_every_t: int = 100,
        progress: bool = True,
        desc: str = "sampling",
        timesteps: np.ndarray | None = None,
    ):
        self.n = n
        self.noise = noise
        self.x0 = x0
        self.mask = mask
        self.callback = callback
        self.log_every_t = max(int(log_every_t), 1)
        self.progress = progress
        self.desc = desc
        self.timesteps = timesteps.tolist() if timesteps is not None else list(range(n))
        self.intermediates: dict[str, list[torch.Tensor]] = {"x_inter": [], "pred_x0": []}

    def steps(self):
        if not self.progress:
            return range(self.n)
        from tqdm.auto import tqdm

        return tqdm(range(self.n), desc=self.desc, total=self.n, leave=False)

    def _logged(self, k: int) -> bool:
        index = self.n - k - 1  # CompVis: index counts down to 0
        return index % self.log_every_t == 0 or index == self.n - 1

    def wants_x0(self, k: int) -> bool:
        """Whether step k must materialise pred_x0 (callback or logged step)."""
        return self.callback is not None or self._logged(k)

    def record(self, k: int, x: torch.Tensor, pred_x0: Callable[[], torch.Tensor] | torch.Tensor | None) -> None:
        if not self.wants_x0(k):
            return
        p = pred_x0() if callable(pred_x0) else pred_x0
        if self._logged(k):
            self.intermediates["x_inter"].append(x)
            self.intermediates["pred_x0"].append(p)
        if self.callback is not None:
            self.callback({"x": x, "i": k, "t": self.timesteps[k], "denoised": p})

    def inpaint(self, x: torch.Tensor, scale: float, noise_scale: float) -> torch.Tensor:
        """CompVis: img = q_sample(x0, t) * mask + (1 - mask) * img (mask == 1 keeps x0, re-noised)."""
        if self.mask is None:
            return x
        known = torch.add(self.x0 * scale, self.noise(self.x0), alpha=noise_scale)
        return known * self.mask + (1.0 - self.mask) * x


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


def _add_noise(x: torch.Tensor, std: float, temperature: float, noise_dropout: float, hooks: Hooks) -> torch.Tensor:
    """x += std * temperature * noise (in place on a fresh tensor); no draw when std == 0."""
    if std > 0:
        x.add_(_dropout(hooks.noise(x), noise_dropout, hooks), alpha=std * temperature)
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


def sample_ddim(
    denoiser: Denoiser, x: torch.Tensor, plan: StepPlan, *, hooks: Hooks, eta: float = 0.0,
    temperature: float = 1.0, noise_dropout: float = 0.0, clip_denoised: bool = False,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12 with sigma of eq. 16), CompVis p_sample_ddim."""
    c = _ddim_coefficients(plan, ddim_sigmas(plan, eta))
    for k in hooks.steps():
        x = hooks.inpaint(x, c["sa"][k], c["s1a"][k])
        e = denoiser(x, k)
        x_new, pred_x0 = _ddim_update(x, e, k, c, clip_denoised, hooks.wants_x0(k))
        x_new = _add_noise(x_new, c["sigma"][k], temperature, noise_dropout, hooks)
        hooks.record(k, x_new, pred_x0)
        x = x_new
    return x


def sample_plms(
    denoiser: Denoiser, x: torch.Tensor, plan: StepPlan, *, hooks: Hooks, clip_denoised: bool = False
) -> torch.Tensor:
    """PLMS (Liu et al. 2022, PNDM), CompVis plms.py: the first step is a pseudo improved-Euler step
    (eps averaged with eps at the predicted x_prev, one extra model call), then Adams-Bashforth of order
    2/3/4 on the eps history ((3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24), eta = 0."""
    c = _ddim_coefficients(plan, np.zeros(len(plan)))
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


def sample_ddpm(
    denoiser: Denoiser, x: torch.Tensor, plan: StepPlan, *, hooks: Hooks, temperature: float = 1.0,
    noise_dropout: float = 0.0, clip_denoised: bool = False, v_posterior: float = 0.0,
) -> torch.Tensor:
    """Ancestral DDPM (Ho et al. 2020, Alg. 2 with the posterior of eq. 6-7) on the plan's (possibly
    strided) steps: beta_k = 1 - a/a_prev, mean = coef1 x0 + coef2 x_t, std = sqrt(max(var, 1e-20)) as
    CompVis p_sample / diffusers DDPMScheduler (variance 'fixed_small', mixed with beta by v_posterior)."""
    a, ap = plan.a, plan.a_prev
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
        x_new = _add_noise(x_new, std[k], temperature, noise_dropout, hooks)
        hooks.record(k, x_new, pred_x0)
        x = x_new
    return x


def sample_euler_ancestral(
    denoiser: Denoiser, x: torch.Tensor, plan: StepPlan, *, hooks: Hooks, eta: float = 1.0,
    temperature: float = 1.0, noise_dropout: float = 0.0,
) -> torch.Tensor:
    """Euler ancestral (k-diffusion `sample_euler_ancestral`, Karras et al. 2022 sigma view) on
    sigma = sqrt((1 - a)/a) at the plan's timesteps, ending at sigma = 0. x is VP space in and out; the
    model sees x_sigma / sqrt(1 + sigma^2) (diffusers scale_model_input). The ODE direction
    d = (x - denoised)/sigma is exactly the model's eps, so a step is x += (sigma_down - sigma) eps."""
    sig = plan.sigmas.tolist()
    n = len(sig)
    nxt = sig[1:] + [0.0]
    steps = [get_ancestral_step(sig[k], nxt[k], eta) for k in range(n)]
    s_in = [1.0 / math.sqrt(1.0 + s * s) for s in sig]
    x = x * math.sqrt(1.0 + sig[0] ** 2)
    for k in hooks.steps():
        x = hooks.inpaint(x, 1.0, sig[k])
        e = denoiser(x * s_in[k], k)
        sigma_down, sigma_up = steps[k]
        x_new = torch.add(x, e, alpha=sigma_down - sig[k])
        x_new = _add_noise(x_new, sigma_up, temperature, noise_dropout, hooks)
        if hooks.wants_x0(k):
            x_old = x
            hooks.record(k, x_new / math.sqrt(1.0 + nxt[k] ** 2), lambda: torch.sub(x_old, e, alpha=sig[k]))
        x = x_new
    return x


# ---------------------------------------------------------------------------------------------- entry point
def _device_of(*cands: Any) -> torch.device | None:
    for c in cands:
        if isinstance(c, torch.Tensor):
            return c.device
        if isinstance(c, torch.Generator):
            return torch.device(c.device)
    return None


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


@torch.no_grad()
def sample(
    model: ModelFn,
    schedule: NoiseSchedule,
    sampler: str = "ddim",
    steps: int = 50,
    shape: Sequence[int] | None = None,
    x_T: torch.Tensor | None = None,
    cond: Any = None,
    uncond: Any = None,
    guidance_scale: float = 1.0,
    eta: float | None = None,
    temperature: float = 1.0,
    noise_dropout: float = 0.0,
    generator: torch.Generator | None = None,
    init: torch.Tensor | None = None,
    strength: float | None = None,
    x0: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    callback: Callable[[dict], Any] | None = None,
    log_every_t: int | None = None,
    score_corrector: Any = None,
    corrector_kwargs: dict | None = None,
    parameterization: str = "eps",
    discretize: str = "uniform",
    spacing: str = "compvis",
    use_original_steps: bool = False,
    progress: bool = True,
    dtype: torch.dtype | None = None,
    *,
    timesteps: Sequence[int] | None = None,
    set_alpha_to_one: bool | None = None,
    clip_denoised: bool = False,
    noise_sampler: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    """Draw samples from a diffusion model. Returns (samples [B, ...], intermediates).

    model(x [B, ...], t LongTensor [B], cond) -> eps (or x0 / v per `parameterization`).
    sampler: "ddpm" (ancestral) | "ddim" | "plms" | "euler_a" (Euler ancestral).
    steps: S sampling steps (CompVis timesteps, see `make_ddim_timesteps`; `spacing` "compvis" default or
    "leading"; `discretize` "uniform" | "quad"); `use_original_steps` walks all T steps (DDIM/DDPM/PLMS);
    `timesteps` (ascending ints) overrides both.
    shape (B, ...) or x_T [B, ...] (VP-space start noise; drawn from `generator` when absent).
    cond / uncond / guidance_scale: classifier-free guidance eps = eps_u + s (eps_c - eps_u), both halves in
    one model call (x, t and cond concatenated [uncond, cond]); cond may be a tensor, dict or list of tensors.
    eta: DDIM eta (default 0) / Euler-a ancestral eta (default 1); PLMS needs 0; DDPM ignores it.
    temperature, noise_dropout: scale / drop the injected noise (CompVis).
    init [B, ...] + strength in [0, 1] (default 0.75): img2img, run the last int(strength S) steps from init
    noised to that level. x0 + mask: inpainting, where mask == 1 keeps x0 re-noised to the current step.
    callback({'x', 'i', 't', 'denoised'}) after each step; intermediates {'x_inter', 'pred_x0'} every
    log_every_t steps (default 100, CompVis) plus the first and last; score_corrector.modify_score(model,
    eps, x, t, cond, **corrector_kwargs) (or a callable with that signature) edits eps.
    clip_denoised clamps pred_x0 to [-1, 1] (DDIM/DDPM/PLMS); set_alpha_to_one picks the final alpha
    (default: False for DDIM/PLMS as CompVis, True for DDPM and use_original_steps).
    noise_sampler(like) -> standard normal tensor shaped like `like`: replaces every draw inside the loop
    (and the img2img start noise); x_T itself comes from `generator`.
    Device: `device`, else that of x_T / init / x0 / generator, else CPU; dtype: `dtype`, else x_T's, else float32.
    """
    sampler = _ALIASES.get(sampler, sampler)
    if sampler not in SAMPLERS:
        raise LumenkitError(f"sampler {sampler!r} unknown (expected one of {', '.join(SAMPLERS)})")
    if not isinstance(schedule, NoiseSchedule):
        raise LumenkitError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    if not callable(model):
        raise LumenkitError("model must be callable as model(x, t, cond)")
    if parameterization not in PARAMETERIZATIONS:
        raise LumenkitError(f"parameterization {parameterization!r} unknown (expected one of {', '.join(PARAMETERIZATIONS)})")
    if discretize not in DISCRETIZATIONS:
        raise LumenkitError(f"discretize {discretize!r} unknown (expected one of {', '.join(DISCRETIZATIONS)})")
    if spacing not in SPACINGS:
        raise LumenkitError(f"spacing {spacing!r} unknown (expected one of {', '.join(SPACINGS)})")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise LumenkitError(f"steps must be a positive integer, got {steps!r}")
    if steps > schedule.num_timesteps and not use_original_steps and timesteps is None:
        raise LumenkitError(f"steps={steps} exceeds the schedule's {schedule.num_timesteps} training timesteps")
    if eta is not None:
        eta = _check_number("eta", eta, lo=0.0)
    if sampler == "plms" and eta not in (None, 0.0):
        raise LumenkitError(f"PLMS is deterministic and needs eta=0 (got eta={eta}); use sampler='ddim' for eta > 0")
    if sampler == "euler_a" and use_original_steps:
        raise LumenkitError("use_original_steps applies to ddpm/ddim/plms, not euler_a")
    if sampler == "euler_a" and clip_denoised:
        raise LumenkitError("clip_denoised is not supported by euler_a")
    eta = (1.0 if sampler == "euler_a" else 0.0) if eta is None else eta
    temperature = _check_number("temperature", temperature, lo=0.0)
    noise_dropout = _check_number("noise_dropout", noise_dropout, lo=0.0, hi=1.0, hi_open=True)
    guidance_scale = _check_number("guidance_scale", guidance_scale)
    if uncond is not None and cond is None and guidance_scale != 1.0:
        raise LumenkitError("uncond (unconditional conditioning) needs cond for classifier-free guidance")
    if score_corrector is not None and parameterization != "eps":
        raise LumenkitError("score_corrector needs parameterization='eps' (as CompVis)")
    if log_every_t is not None and (isinstance(log_every_t, bool) or not isinstance(log_every_t, (int, np.integer)) or log_every_t < 1):
        raise LumenkitError(f"log_every_t must be a positive integer, got {log_every_t!r}")
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

    # --- start tensor
    if init is not None:
        init = init.to(dev, dt)
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
    if mask is not None:
        if x0 is None:
            raise LumenkitError("mask needs x0 (the known image/latent to keep where mask == 1)")
        x0 = x0.to(dev, dt)
        mask = mask.to(dev, dt)
        if tuple(x0.shape) != shape_:
            raise LumenkitError(f"x0 shape {tuple(x0.shape)} does not match sample shape {shape_}")
        try:
            torch.broadcast_shapes(mask.shape, shape_)
        except RuntimeError:
            raise LumenkitError(f"mask shape {tuple(mask.shape)} does not broadcast to sample shape {shape_}") from None
    elif x0 is not None:
        x0 = None  # CompVis: x0 only matters together with a mask

    if set_alpha_to_one is None:
        set_alpha_to_one = sampler == "ddpm" or use_original_steps
    plan = make_step_plan(schedule, steps, discretize=discretize, spacing=spacing, use_original_steps=use_original_steps,
                          timesteps=timesteps, set_alpha_to_one=set_alpha_to_one)

    if init is not None:
        strength = 0.75 if strength is None else _check_number("strength", strength, lo=0.0, hi=1.0)
        n_run = min(int(strength * len(plan)), len(plan))
        if n_run == 0:
            return init.clone(), {"x_inter": [init], "pred_x0": [init]}
        plan = plan.tail(n_run)
        a0 = float(plan.a[0])
        x = torch.add(init * math.sqrt(a0), noise(init), alpha=math.sqrt(1.0 - a0))
    else:
        if strength is not None:
            raise LumenkitError("strength needs init (the image/latent to start from)")
        if x_T is None:
            x = torch.randn(shape_, generator=generator, device=gen_dev or dev, dtype=dt).to(dev)
        else:
            x = x_T.to(dev, dt)

    denoiser = Denoiser(model, plan, shape_[0], dev, cond=cond, uncond=uncond, guidance_scale=guidance_scale,
                        parameterization=parameterization, score_corrector=score_corrector, corrector_kwargs=corrector_kwargs)
    hooks = Hooks(len(plan), noise=noise, x0=x0, mask=mask, callback=callback, log_every_t=log_every_t or 100,
                  progress=progress, desc=f"{sampler} sampler", timesteps=plan.timesteps)
    hooks.intermediates = {"x_inter": [x], "pred_x0": [x]}
    if sampler == "ddim":
        out = sample_ddim(denoiser, x, plan, hooks=hooks, eta=eta, temperature=temperature, noise_dropout=noise_dropout, clip_denoised=clip_denoised)
    elif sampler == "plms":
        out = sample_plms(denoiser, x, plan, hooks=hooks, clip_denoised=clip_denoised)
    elif sampler == "ddpm":
        out = sample_ddpm(denoiser, x, plan, hooks=hooks, temperature=temperature, noise_dropout=noise_dropout,
                          clip_denoised=clip_denoised, v_posterior=schedule.v_posterior)
    else:
        out = sample_euler_ancestral(denoiser, x, plan, hooks=hooks, eta=eta, temperature=temperature, noise_dropout=noise_dropout)
    return out, hooks.intermediates
