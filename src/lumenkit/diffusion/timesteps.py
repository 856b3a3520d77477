"""DDIM timestep selection and sampling parameters (CompVis ldm/modules/diffusionmodules/util.py, seed 004).

Two spacings of the uniform discretisation are offered:

- ``"compvis"`` (default; what the seed and CompVis do): c = T // S, range(0, T, c) + 1. When S does not
  divide T this yields len(range(0, T, c)) steps, possibly more than S (S=30, T=1000: 31 steps 1..991).
- ``"leading"`` (diffusers' ``timestep_spacing="leading"`` with ``steps_offset=1``, as Stable Diffusion
  configures it): arange(S) * (T // S) + 1, always exactly S steps (S=30: 1..958).

Both agree whenever S divides T. The +1 shift ("to get the final alpha values right") would index
past the end of the schedule when T // S == 1 (S > T/2, e.g. S = T); then, and only then, the steps are
left unshifted (0..T-1) so that sampling at S = T works instead of failing as CompVis does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from lumenkit.common.errors import LumenkitError

if TYPE_CHECKING:
    from lumenkit.diffusion.schedule import NoiseSchedule

DISCRETIZATIONS = ("uniform", "quad")
SPACINGS = ("compvis", "leading")


def make_ddim_timesteps(
    ddim_discr_method: str,
    num_ddim_timesteps: int,
    num_ddpm_timesteps: int,
    spacing: str = "compvis",
    verbose: bool = False,
) -> np.ndarray:
    """Ascending int64 timesteps [S'] in [0, T-1] for DDIM-style sampling (S' = S except compvis/uniform
    with S not dividing T). `uniform` (see module docstring) or `quad`: (linspace(0, sqrt(0.8 T), S))^2
    as int, then +1."""
    S, T = num_ddim_timesteps, num_ddpm_timesteps
    if not isinstance(S, (int, np.integer)) or isinstance(S, bool) or S < 1:
        raise LumenkitError(f"steps must be a positive integer, got {S!r}")
    if not isinstance(T, (int, np.integer)) or T < 1:
        raise LumenkitError(f"num_timesteps must be a positive integer, got {T!r}")
    if S > T:
        raise LumenkitError(f"steps={S} exceeds the schedule's {T} training timesteps")
    if spacing not in SPACINGS:
        raise LumenkitError(f"spacing {spacing!r} unknown (expected one of {', '.join(SPACINGS)})")
    if ddim_discr_method == "uniform":
        c = T // S
        if spacing == "compvis":
            ts = np.asarray(list(range(0, T, c)), dtype=np.int64)
        else:
            ts = (np.arange(0, S) * c).round().astype(np.int64)
    elif ddim_discr_method == "quad":
        ts = ((np.linspace(0, np.sqrt(T * 0.8), S)) ** 2).astype(np.int64)
    else:
        raise LumenkitError(f"DDIM discretization {ddim_discr_method!r} unknown (expected uniform or quad)")
    steps_out = ts + 1
    if steps_out[-1] >= T:  # only when T // S == 1: the shift would run off the schedule
        steps_out = ts
    if verbose:
        print(f"Selected timesteps for ddim sampler: {steps_out}")
    return steps_out


def make_ddim_sampling_parameters(
    alphacums: np.ndarray | torch.Tensor, ddim_timesteps: np.ndarray, eta: float, verbose: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sigmas, alphas, alphas_prev), float64 [S], as CompVis: alphas = a[ts], alphas_prev = [a[0]] + a[ts[:-1]],
    sigma = eta sqrt((1 - a_prev)/(1 - a) (1 - a/a_prev)) (DDIM paper eq. 16)."""
    if eta is None or not np.isfinite(eta) or eta < 0:
        raise LumenkitError(f"eta must be a finite number >= 0, got {eta!r}")
    ac = alphacums.detach().cpu().double().numpy() if isinstance(alphacums, torch.Tensor) else np.asarray(alphacums, dtype=np.float64)
    ts = np.asarray(ddim_timesteps, dtype=np.int64)
    alphas = ac[ts]
    alphas_prev = np.asarray([ac[0]] + ac[ts[:-1]].tolist(), dtype=np.float64)
    # clamp: duplicated quad steps give a == a_prev, where round-off may go a hair negative
    sigmas = eta * np.sqrt(np.clip((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev), 0.0, None))
    if verbose:
        print(f"Selected alphas for ddim sampler: a_t: {alphas}; a_(t-1): {alphas_prev}")
        print(f"For the chosen value of eta, which is {eta}, this results in the following sigma_t schedule for ddim sampler {sigmas}")
    return sigmas, alphas, alphas_prev


# ---------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class StepPlan:
    """Per-step schedule in sampling order (row 0 = noisiest), float64 numpy [n].

    timesteps: model timesteps (descending); a: alphas_cumprod at them; a_prev: the alpha-bar each step
    moves to (a[k+1] for k < n-1, and the final alpha for the last step); v_posterior: the schedule's
    mix of DDPM posterior variance and beta (CompVis, read by the DDPM sampler).
    """

    timesteps: np.ndarray
    a: np.ndarray
    a_prev: np.ndarray
    v_posterior: float = 0.0

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def tail(self, n: int) -> "StepPlan":
        """The last n steps (img2img)."""
        k = len(self) - n
        return StepPlan(self.timesteps[k:], self.a[k:], self.a_prev[k:], self.v_posterior)

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
    return StepPlan(ts[::-1].copy(), a[::-1].copy(), a_prev[::-1].copy(), float(schedule.v_posterior))
