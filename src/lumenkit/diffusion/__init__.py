"""lumenkit.diffusion: DDPM noise schedules and DDPM / DDIM / PLMS / Euler-ancestral samplers (seed 004).

    from lumenkit.diffusion import NoiseSchedule, sample
    schedule = NoiseSchedule.from_config(kind="linear", num_timesteps=1000, linear_start=0.00085, linear_end=0.012)
    samples, intermediates = sample(model, schedule, sampler="ddim", steps=50, shape=(B, C, H, W))

`SAMPLERS` is the one tuple of sampler names (for CLI choices and validation elsewhere).
"""
from lumenkit.diffusion.samplers import SAMPLER_FUNCTIONS, SAMPLERS, SamplerOptions, resolve_sampler, sample
from lumenkit.diffusion.timesteps import StepPlan, make_step_plan
from lumenkit.diffusion.schedule import NoiseSchedule, make_beta_schedule
from lumenkit.diffusion.timesteps import make_ddim_sampling_parameters, make_ddim_timesteps

__all__ = [
    "NoiseSchedule",
    "sample",
    "make_beta_schedule",
    "make_ddim_timesteps",
    "make_ddim_sampling_parameters",
    "make_step_plan",
    "StepPlan",
    "SAMPLERS",
    "SAMPLER_FUNCTIONS",
    "SamplerOptions",
    "resolve_sampler",
]
