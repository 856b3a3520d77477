"""The toy run: sample a 2-D Gaussian mixture with its exact eps-predictor and measure the result.

The target of a sampler is the mixture at the noise level where that sampler ends: DDIM and PLMS end
at alpha-bar a[0] (CompVis' convention, +1 shifted steps), DDPM and Euler-a at 1 (clean data). For the
SD schedule a[0] = 0.99915, i.e. noise of std 0.029 is still in the DDIM output; comparing with the
correspondingly noised mixture keeps the measurement exact.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lumenkit.common.config import check, check_choice, check_range, param
from lumenkit.common.errors import LumenkitError
from lumenkit.common.seed import make_generator
from lumenkit.diffusion.data import (GaussianMixture2D, MixtureOracle, fit_mixture, mixture_errors, sliced_wasserstein,
                                     sliced_wasserstein_to_mixture)
from lumenkit.diffusion.samplers import SAMPLERS, resolve_sampler, sample
from lumenkit.diffusion.schedule import PARAMETERIZATIONS, SCHEDULES, NoiseSchedule
from lumenkit.diffusion.timesteps import DISCRETIZATIONS, SPACINGS


@dataclass
class ScheduleConfig:
    """The noise schedule and its DDIM timesteps (CompVis `register_schedule` / `make_ddim_timesteps`).
    Defaults: the DDPM / DDIM papers' schedule, betas linear in beta 1e-4..0.02, T = 1000 (CompVis calls
    it "sqrt_linear")."""

    schedule: str = param("sqrt_linear", "beta schedule: linear (CompVis sqrt-space, SD), sqrt_linear (DDPM paper), cosine, sqrt",
                          choices=SCHEDULES)
    num_timesteps: int = param(1000, "training timesteps T", flag="timesteps")
    linear_start: float = param(1e-4, "first beta", flag="linear-start")
    linear_end: float = param(2e-2, "last beta", flag="linear-end")
    discretize: str = param("uniform", "DDIM timestep discretization", choices=DISCRETIZATIONS)
    spacing: str = param("compvis", "uniform spacing: CompVis range(0,T,T//S)+1 or diffusers 'leading'", choices=SPACINGS)

    def __post_init__(self) -> None:
        check_choice("schedule", self.schedule, SCHEDULES)
        check(isinstance(self.num_timesteps, int) and self.num_timesteps >= 1, "timesteps", self.num_timesteps, "must be an integer >= 1")
        check_range("linear-start", self.linear_start, 0.0, 1.0, lo_open=True)
        check_range("linear-end", self.linear_end, 0.0, 1.0, lo_open=True)
        check(self.linear_end >= self.linear_start, "linear-end", self.linear_end, f"must be >= --linear-start {self.linear_start}")
        check_choice("discretize", self.discretize, DISCRETIZATIONS)
        check_choice("spacing", self.spacing, SPACINGS)

    def make_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_config(kind=self.schedule, num_timesteps=self.num_timesteps,
                                         linear_start=self.linear_start, linear_end=self.linear_end)

    def check_steps(self, name: str, steps: int) -> None:
        """--name steps must be an integer in [1, T]."""
        ok = isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= self.num_timesteps
        check(ok, name, steps, f"must be an integer in [1, {self.num_timesteps}] (the schedule's training timesteps)")


@dataclass
class ToyConfig(ScheduleConfig):
    """`lumenkit diffusion toy`: DDIM 20 steps, eta 0 by default, on ScheduleConfig's schedule. (SD's
    schedule ends at a_T = 0.0047, far enough from N(0, I) that the deterministic samplers keep a visible
    prior mismatch; this one ends at 4e-5.)"""

    sampler: str = param("ddim", "sampler", choices=SAMPLERS)
    steps: int = param(20, "sampling steps S")
    eta: float | None = param(None, "DDIM eta (default 0) / Euler-a eta (default 1); PLMS needs 0, DDPM ignores it")
    n: int = param(4000, "number of samples")
    seed: int = param(0, "seed of x_T and the sampler's noise")
    parameterization: str = param("eps", "what the oracle model outputs", choices=PARAMETERIZATIONS)
    dtype: str = param("float64", "sampling dtype", choices=("float32", "float64"))
    sw_projections: int = param(128, "random projections of the sliced-Wasserstein distance", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            canon = resolve_sampler(self.sampler)
        except LumenkitError:
            check_choice("sampler", self.sampler, SAMPLERS)
        self.check_steps("steps", self.steps)
        if self.eta is not None:
            check_range("eta", self.eta, 0.0)
            check(canon != "plms" or self.eta == 0, "eta", self.eta, "PLMS is deterministic and needs eta 0 (use --sampler ddim for eta > 0)")
        check(isinstance(self.n, int) and self.n >= 10, "n", self.n, "must be an integer >= 10")
        check_choice("parameterization", self.parameterization, PARAMETERIZATIONS)
        check_choice("dtype", self.dtype, ("float32", "float64"))
        check(self.sw_projections >= 1, "sw_projections", self.sw_projections, "must be >= 1")


@dataclass
class TimestepsConfig(ScheduleConfig):
    """`lumenkit diffusion timesteps`: the seed's verbose DDIM output, on SD's schedule by default."""

    schedule: str = param("linear", "beta schedule: linear (CompVis sqrt-space, SD), sqrt_linear (DDPM paper), cosine, sqrt",
                          choices=SCHEDULES)
    linear_start: float = param(0.00085, "first beta (SD)", flag="linear-start")
    linear_end: float = param(0.012, "last beta (SD)", flag="linear-end")
    steps: int = param(50, "DDIM steps S")
    eta: float = param(0.0, "DDIM eta (sigma scale, DDIM eq. 16)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_steps("steps", self.steps)
        check_range("eta", self.eta, 0.0)


@dataclass
class ToyResult:
    samples: torch.Tensor  # [n, 2] float64 CPU
    target: GaussianMixture2D  # the mixture at the sampler's final noise level
    metrics: dict = field(default_factory=dict)


def final_alpha(schedule: NoiseSchedule, sampler: str) -> float:
    """alpha-bar at which `sampler` ends with its default conventions (see module docstring)."""
    return 1.0 if resolve_sampler(sampler) in ("ddpm", "euler_a") else float(schedule.alphas_cumprod[0])


def run_toy(cfg: ToyConfig, device: torch.device | str = "cpu", mixture: GaussianMixture2D | None = None,
            schedule: NoiseSchedule | None = None) -> ToyResult:
    """Sample cfg.n points with the exact oracle; metrics: sliced-Wasserstein to fresh target data (and
    the same distance between two fresh draws: the finite-sample floor), EM-fit component errors."""
    dtype = {"float32": torch.float32, "float64": torch.float64}[cfg.dtype]  # validated by ToyConfig
    mixture = mixture or GaussianMixture2D.default()
    schedule = schedule or cfg.make_schedule()
    model = MixtureOracle(mixture, schedule, cfg.parameterization)
    device = torch.device(device)
    gen = make_generator(cfg.seed, device)
    t0 = time.perf_counter()
    x, _ = sample(model, schedule, cfg.sampler, cfg.steps, shape=(cfg.n, 2), eta=cfg.eta, generator=gen,
                  parameterization=cfg.parameterization, discretize=cfg.discretize, spacing=cfg.spacing,
                  progress=False, dtype=dtype, device=device)
    seconds = time.perf_counter() - t0
    x = x.double().cpu()
    target = mixture.noised(final_alpha(schedule, cfg.sampler))
    g = torch.Generator().manual_seed(10_000 + cfg.seed)
    fresh, fresh2 = target.sample(cfg.n, g), target.sample(cfg.n, g)
    errs = mixture_errors(fit_mixture(x, target), target)
    floor = mixture_errors(fit_mixture(fresh, target), target)
    metrics = {
        "sampler": resolve_sampler(cfg.sampler),
        "steps": cfg.steps,
        "eta": cfg.eta,
        "model_calls": model.calls,
        "n": cfg.n,
        "sw": sliced_wasserstein_to_mixture(x, target, cfg.sw_projections),
        "sw_floor": sliced_wasserstein_to_mixture(fresh, target, cfg.sw_projections),
        "sw_vs_fresh": sliced_wasserstein(x, fresh2, cfg.sw_projections),
        **errs,
        **{f"{k}_floor": v for k, v in floor.items()},
        "final_alpha_cumprod": final_alpha(schedule, cfg.sampler),
        "seconds": seconds,
        "config": asdict(cfg),
    }
    return ToyResult(x, target, metrics)


def plot_toy(result: ToyResult, path: Path | str, title: str = "", lim: float = 2.0) -> Path:
    """Scatter of the samples over contours of the true (target) density; PNG via matplotlib Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lumenkit.common.fileio import atomic_path

    path = Path(path)
    g = torch.linspace(-lim, lim, 200, dtype=torch.float64)
    X, Y = torch.meshgrid(g, g, indexing="xy")
    logp = result.target.log_prob(torch.stack([X.reshape(-1), Y.reshape(-1)], -1)).reshape(X.shape)
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=100)
    ax.contour(X.numpy(), Y.numpy(), logp.exp().numpy(), levels=8, cmap="viridis", linewidths=0.8)
    s = result.samples.numpy()
    ax.scatter(s[:, 0], s[:, 1], s=1.5, c="crimson", alpha=0.35, linewidths=0)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title or f"{result.metrics.get('sampler')} S={result.metrics.get('steps')}  SW={result.metrics.get('sw', float('nan')):.4f}", fontsize=9)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_metrics(metrics: dict, path: Path | str) -> Path:
    from lumenkit.common.fileio import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return path


__all__ = ["ScheduleConfig", "ToyConfig", "TimestepsConfig", "ToyResult", "run_toy", "plot_toy", "write_metrics", "final_alpha", "SAMPLERS"]
