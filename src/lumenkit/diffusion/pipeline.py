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

from lumenkit.common.errors import LumenkitError
from lumenkit.common.seed import make_generator
from lumenkit.diffusion.data import (GaussianMixture2D, MixtureOracle, fit_mixture, mixture_errors, sliced_wasserstein,
                                     sliced_wasserstein_to_mixture)
from lumenkit.diffusion.samplers import SAMPLERS, _ALIASES, sample
from lumenkit.diffusion.schedule import NoiseSchedule


@dataclass
class ToyConfig:
    """Defaults: the DDPM / DDIM papers' schedule (betas linear in beta 1e-4..0.02, T = 1000; CompVis
    calls it "sqrt_linear"), DDIM 20 steps, eta 0. (SD's schedule ends at a_T = 0.0047, far enough from
    N(0, I) that the deterministic samplers keep a visible prior mismatch; this one ends at 4e-5.)"""

    sampler: str = "ddim"
    steps: int = 20
    eta: float | None = None
    n: int = 4000
    seed: int = 0
    schedule: str = "sqrt_linear"
    num_timesteps: int = 1000
    linear_start: float = 1e-4
    linear_end: float = 2e-2
    discretize: str = "uniform"
    spacing: str = "compvis"
    parameterization: str = "eps"
    dtype: str = "float64"
    sw_projections: int = 128

    def make_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_config(kind=self.schedule, num_timesteps=self.num_timesteps,
                                         linear_start=self.linear_start, linear_end=self.linear_end)


@dataclass
class ToyResult:
    samples: torch.Tensor  # [n, 2] float64 CPU
    target: GaussianMixture2D  # the mixture at the sampler's final noise level
    metrics: dict = field(default_factory=dict)


def final_alpha(schedule: NoiseSchedule, sampler: str) -> float:
    """alpha-bar at which `sampler` ends with its default conventions (see module docstring)."""
    sampler = _ALIASES.get(sampler, sampler)
    return 1.0 if sampler in ("ddpm", "euler_a") else float(schedule.alphas_cumprod[0])


def run_toy(cfg: ToyConfig, device: torch.device | str = "cpu", mixture: GaussianMixture2D | None = None,
            schedule: NoiseSchedule | None = None) -> ToyResult:
    """Sample cfg.n points with the exact oracle; metrics: sliced-Wasserstein to fresh target data (and
    the same distance between two fresh draws: the finite-sample floor), EM-fit component errors."""
    if cfg.n < 10:
        raise LumenkitError(f"--n must be at least 10, got {cfg.n}")
    dtype = {"float32": torch.float32, "float64": torch.float64}.get(cfg.dtype)
    if dtype is None:
        raise LumenkitError(f"--dtype must be float32 or float64, got {cfg.dtype!r}")
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
        "sampler": _ALIASES.get(cfg.sampler, cfg.sampler),
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


__all__ = ["ToyConfig", "ToyResult", "run_toy", "plot_toy", "write_metrics", "final_alpha", "SAMPLERS"]
