"""Noise schedules of DDPM as in CompVis latent-diffusion (`make_beta_schedule`, `register_schedule`).

Everything is computed once in float64 on the CPU (as CompVis does before casting) and kept there;
`NoiseSchedule.buffer(name, device, dtype)` hands out cast/moved copies lazily (cached), so nothing is
ever forced onto CUDA.

Notation (DDPM paper, Ho et al. 2020): beta_t, alpha_t = 1 - beta_t, a_t = alpha-bar_t = prod alpha,
x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps (eq. 4). v-prediction (Salimans & Ho 2022, SD 2.x):
v = sqrt(a_t) eps - sqrt(1 - a_t) x_0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from lumenkit.common.errors import LumenkitError

SCHEDULES = ("linear", "cosine", "sqrt_linear", "sqrt", "scaled_linear")
PARAMETERIZATIONS = ("eps", "x0", "v")


def make_beta_schedule(
    schedule: str,
    n_timestep: int,
    linear_start: float = 1e-4,
    linear_end: float = 2e-2,
    cosine_s: float = 8e-3,
) -> torch.Tensor:
    """Betas [T] float64, exactly CompVis `make_beta_schedule` (seed 004).

    - "linear" (CompVis; = diffusers "scaled_linear", accepted as an alias): linspace in sqrt(beta), squared.
    - "cosine": Nichol & Dhariwal 2021 eq. 17 with offset s = cosine_s, betas clipped to [0, 0.999].
    - "sqrt_linear" (= diffusers "linear"): linspace in beta.
    - "sqrt": sqrt of linspace in beta.
    """
    if not isinstance(n_timestep, (int, np.integer)) or n_timestep < 1:
        raise LumenkitError(f"num_timesteps must be a positive integer, got {n_timestep!r}")
    if schedule in ("linear", "scaled_linear"):
        betas = torch.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=torch.float64) ** 2
    elif schedule == "cosine":
        steps = torch.arange(n_timestep + 1, dtype=torch.float64) / n_timestep + cosine_s
        alphas = torch.cos(steps / (1 + cosine_s) * math.pi / 2).pow(2)
        alphas = alphas / alphas[0]
        betas = (1 - alphas[1:] / alphas[:-1]).clamp(0.0, 0.999)
    elif schedule == "sqrt_linear":
        betas = torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64)
    elif schedule == "sqrt":
        betas = torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64) ** 0.5
    else:
        raise LumenkitError(f"beta schedule {schedule!r} unknown (expected one of {', '.join(SCHEDULES)}, or given betas)")
    return betas


def _check_betas(betas: torch.Tensor) -> torch.Tensor:
    betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().reshape(-1).clone()
    if betas.numel() < 1:
        raise LumenkitError("given betas are empty")
    if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas >= 1).any():
        raise LumenkitError("given betas must be finite and lie in (0, 1)")
    return betas


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A DDPM noise schedule and every derived buffer of CompVis `register_schedule` ([T] float64, CPU).

    Build with `NoiseSchedule.from_config(kind=..., num_timesteps=...)` or `NoiseSchedule.from_betas(betas)`.
    Immutable: fields are read-only; `buffer(name, device, dtype)` returns a cached cast/moved copy.
    """

    betas: torch.Tensor
    v_posterior: float = 0.0
    kind: str = "given"
    alphas: torch.Tensor = field(init=False, repr=False)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)
    alphas_cumprod_prev: torch.Tensor = field(init=False, repr=False)
    sqrt_alphas_cumprod: torch.Tensor = field(init=False, repr=False)
    sqrt_one_minus_alphas_cumprod: torch.Tensor = field(init=False, repr=False)
    log_one_minus_alphas_cumprod: torch.Tensor = field(init=False, repr=False)
    sqrt_recip_alphas_cumprod: torch.Tensor = field(init=False, repr=False)
    sqrt_recipm1_alphas_cumprod: torch.Tensor = field(init=False, repr=False)
    posterior_variance: torch.Tensor = field(init=False, repr=False)
    posterior_log_variance_clipped: torch.Tensor = field(init=False, repr=False)
    posterior_mean_coef1: torch.Tensor = field(init=False, repr=False)
    posterior_mean_coef2: torch.Tensor = field(init=False, repr=False)
    sigmas: torch.Tensor = field(init=False, repr=False)
    _cache: dict = field(init=False, repr=False, default_factory=dict)

    BUFFERS = (
        "betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
        "posterior_mean_coef1", "posterior_mean_coef2", "sigmas",
    )

    def __post_init__(self) -> None:
        betas = _check_betas(self.betas)
        if not (0.0 <= float(self.v_posterior) <= 1.0):
            raise LumenkitError(f"v_posterior must lie in [0, 1], got {self.v_posterior}")
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        v = float(self.v_posterior)
        # DDPM eq. 7; CompVis mixes in v_posterior * beta (v=0: beta-tilde, v=1: beta).
        post_var = (1 - v) * betas * (1.0 - ac_prev) / (1.0 - ac) + v * betas
        derived = dict(
            betas=betas,
            alphas=alphas,
            alphas_cumprod=ac,
            alphas_cumprod_prev=ac_prev,
            sqrt_alphas_cumprod=ac.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1.0 - ac).sqrt(),
            log_one_minus_alphas_cumprod=(1.0 - ac).log(),
            sqrt_recip_alphas_cumprod=(1.0 / ac).sqrt(),
            sqrt_recipm1_alphas_cumprod=(1.0 / ac - 1).sqrt(),
            posterior_variance=post_var,
            # the posterior variance is 0 at t = 0: CompVis clips the log at 1e-20
            posterior_log_variance_clipped=post_var.clamp(min=1e-20).log(),
            posterior_mean_coef1=betas * ac_prev.sqrt() / (1.0 - ac),
            posterior_mean_coef2=(1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
            # k-diffusion / Karras et al. sigma of the variance-exploding view: x/sqrt(a) = x0 + sigma eps
            sigmas=((1.0 - ac) / ac).sqrt(),
        )
        for name, value in derived.items():
            value.requires_grad_(False)
            object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(
        cls,
        kind: str = "linear",
        num_timesteps: int = 1000,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
        given_betas: Sequence[float] | torch.Tensor | np.ndarray | None = None,
        v_posterior: float = 0.0,
    ) -> "NoiseSchedule":
        """CompVis `register_schedule` arguments (defaults are CompVis' DDPM defaults; SD uses
        kind="linear", linear_start=0.00085, linear_end=0.012, 1000 steps)."""
        if given_betas is not None:
            return cls(betas=torch.as_tensor(np.asarray(given_betas), dtype=torch.float64), v_posterior=v_posterior, kind="given")
        betas = make_beta_schedule(kind, num_timesteps, linear_start=linear_start, linear_end=linear_end, cosine_s=cosine_s)
        return cls(betas=betas, v_posterior=v_posterior, kind="linear" if kind == "scaled_linear" else kind)

    @classmethod
    def from_betas(cls, betas: Sequence[float] | torch.Tensor | np.ndarray, v_posterior: float = 0.0) -> "NoiseSchedule":
        return cls.from_config(given_betas=betas, v_posterior=v_posterior)

    @classmethod
    def stable_diffusion(cls) -> "NoiseSchedule":
        """SD 1.x / 2.x: CompVis "linear" 0.00085..0.012, 1000 steps (= diffusers scaled_linear)."""
        return cls.from_config(kind="linear", num_timesteps=1000, linear_start=0.00085, linear_end=0.012)

    # ------------------------------------------------------------------ access
    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def __len__(self) -> int:
        return self.num_timesteps

    def buffer(self, name: str, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Buffer `name` ([T]) cast to `dtype` (CompVis keeps float32) on `device`, cached per (name, device, dtype)."""
        if name not in self.BUFFERS:
            raise LumenkitError(f"unknown schedule buffer {name!r} (known: {', '.join(self.BUFFERS)})")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        key = (name, str(dev), dtype)
        if key not in self._cache:
            self._cache[key] = getattr(self, name).to(dtype=dtype).to(dev)
        return self._cache[key]

    def lvlb_weights(self, parameterization: str = "eps") -> torch.Tensor:
        """[T] float64 variational-bound weights of CompVis ddpm.py.

        eps: beta^2 / (2 sigma_post^2 alpha (1 - a)); x0: CompVis' expression reproduced as written,
        0.5 sqrt(a) / (2 * 1 - a) (sic); v: ones (CompVis SD 2.x). Entry 0 is copied from entry 1,
        because the posterior variance is 0 at t = 0.
        """
        if parameterization == "eps":
            w = self.betas**2 / (2 * self.posterior_variance * self.alphas * (1 - self.alphas_cumprod))
        elif parameterization == "x0":
            w = 0.5 * self.alphas_cumprod.sqrt() / (2.0 * 1 - self.alphas_cumprod)
        elif parameterization == "v":
            w = torch.ones_like(self.betas)
        else:
            raise LumenkitError(f"parameterization {parameterization!r} unknown (expected eps, x0 or v)")
        w = w.clone()
        if w.numel() > 1:
            w[0] = w[1]
        return w

    # ------------------------------------------------------------------ forward process and conversions
    def _coef(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Gather buffer[t] for t [B] and shape it [B, 1, ..., 1] to broadcast over `like` [B, ...]."""
        t = torch.as_tensor(t, device=like.device)
        if t.dtype.is_floating_point:
            raise LumenkitError("timesteps t must be integer tensors (LongTensor [B])")
        if (t < 0).any() or (t >= self.num_timesteps).any():
            raise LumenkitError(f"timesteps must lie in [0, {self.num_timesteps - 1}]")
        vals = self.buffer(name, like.device, torch.float64 if like.dtype == torch.float64 else torch.float32)[t.long()]
        return vals.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Forward noising x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise (DDPM eq. 4); x0 [B, ...], t [B] long."""
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=generator.device if generator is not None else x0.device).to(x0.device)
        return self._coef("sqrt_alphas_cumprod", t, x0) * x0 + self._coef("sqrt_one_minus_alphas_cumprod", t, x0) * noise

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 = sqrt(1/a) x_t - sqrt(1/a - 1) eps (CompVis predict_start_from_noise)."""
        return self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - self._coef("sqrt_recipm1_alphas_cumprod", t, x_t) * eps

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """eps = (sqrt(1/a) x_t - x0) / sqrt(1/a - 1)."""
        return (self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / self._coef("sqrt_recipm1_alphas_cumprod", t, x_t)

    def predict_x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x0 = sqrt(a) x_t - sqrt(1 - a) v (CompVis predict_start_from_z_and_v)."""
        return self._coef("sqrt_alphas_cumprod", t, x_t) * x_t - self._coef("sqrt_one_minus_alphas_cumprod", t, x_t) * v

    def predict_eps_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """eps = sqrt(a) v + sqrt(1 - a) x_t (CompVis predict_eps_from_z_and_v)."""
        return self._coef("sqrt_alphas_cumprod", t, x_t) * v + self._coef("sqrt_one_minus_alphas_cumprod", t, x_t) * x_t

    def get_v(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022 sec. 4; CompVis get_v)."""
        return self._coef("sqrt_alphas_cumprod", t, x0) * noise - self._coef("sqrt_one_minus_alphas_cumprod", t, x0) * x0

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, parameterization: str = "eps") -> torch.Tensor:
        """What the network regresses on for x_t = q_sample(x0, t, noise): eps, x0, or v."""
        if parameterization == "eps":
            return noise
        if parameterization == "x0":
            return x0
        if parameterization == "v":
            return self.get_v(x0, noise, t)
        raise LumenkitError(f"parameterization {parameterization!r} unknown (expected eps, x0 or v)")

    def eps_from_output(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, parameterization: str = "eps") -> torch.Tensor:
        """Turn a model output of any parameterization into the eps prediction."""
        if parameterization == "eps":
            return out
        if parameterization == "x0":
            return self.predict_eps_from_x0(x_t, t, out)
        if parameterization == "v":
            return self.predict_eps_from_v(x_t, t, out)
        raise LumenkitError(f"parameterization {parameterization!r} unknown (expected eps, x0 or v)")

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0) (DDPM eq. 6-7)."""
        mean = self._coef("posterior_mean_coef1", t, x_t) * x0 + self._coef("posterior_mean_coef2", t, x_t) * x_t
        return mean, self._coef("posterior_variance", t, x_t), self._coef("posterior_log_variance_clipped", t, x_t)
