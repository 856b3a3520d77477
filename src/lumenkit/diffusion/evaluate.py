"""Quality vs number of steps on the Gaussian-mixture toy: the analogue of DDIM paper Table 1.

Each cell is the sliced-Wasserstein distance (exact, against the mixture itself) of samples drawn with
the mixture's exact eps-predictor, averaged over seeds. `sw_floor` is the same distance for fresh
samples from the mixture: the finite-sample floor no sampler can beat.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from lumenkit.common.config import check, check_range, param
from lumenkit.diffusion.pipeline import ToyConfig, run_toy
from lumenkit.diffusion.samplers import SAMPLERS

DEFAULT_STEPS = (10, 20, 50, 100, 1000)
DEFAULT_ETAS = (0.0, 0.2, 0.5, 1.0)
DEFAULT_EXTRA = ("plms", "euler_a", "ddpm")


@dataclass
class EvalConfig:
    """`lumenkit diffusion evaluate`: the table's columns (steps), DDIM rows (etas), extra sampler rows,
    samples per cell and the seeds averaged. The schedule comes from a ToyConfig (the toy's flags)."""

    steps: tuple[int, ...] = param(DEFAULT_STEPS[:-1], "S values (columns)")
    etas: tuple[float, ...] = param(DEFAULT_ETAS, "DDIM eta values (rows)")
    samplers: tuple[str, ...] = param(DEFAULT_EXTRA, f"extra sampler rows at their default eta ('' for none; of {', '.join(SAMPLERS)})")
    n: int = param(4000, "samples per cell")
    seeds: tuple[int, ...] = param((0,), "seeds (cells are averaged)")

    def __post_init__(self) -> None:
        self.steps, self.etas, self.samplers, self.seeds = tuple(self.steps), tuple(self.etas), tuple(self.samplers), tuple(self.seeds)
        text = lambda v: ",".join(map(str, v))  # noqa: E731
        check(len(self.steps) > 0 and all(isinstance(S, int) and S >= 1 for S in self.steps), "steps", text(self.steps), "need one or more integers >= 1")
        for eta in self.etas:
            check_range("etas", eta, 0.0)
        bad = [s for s in self.samplers if s not in SAMPLERS]
        check(not bad, "samplers", text(self.samplers), f"unknown {', '.join(bad)} (known: {', '.join(SAMPLERS)})")
        check(len(self.etas) + len(self.samplers) > 0, "samplers", text(self.samplers), "no rows: give --etas or --samplers")
        check(isinstance(self.n, int) and self.n >= 10, "n", self.n, "must be an integer >= 10")
        check(len(self.seeds) > 0, "seeds", text(self.seeds), "need one or more seeds")


def sw_table(
    steps: Sequence[int] = DEFAULT_STEPS,
    etas: Sequence[float] = DEFAULT_ETAS,
    extra: Sequence[str] = DEFAULT_EXTRA,
    n: int = 4000,
    seeds: Sequence[int] = (0,),
    base: ToyConfig | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """Rows: DDIM at each eta, then each extra sampler (its default eta); columns: steps.
    Returns {'headers', 'rows' (formatted), 'cells': {label: {S: {'sw', 'cov_rel_err', ...}}}, 'sw_floor'}."""
    base = base or ToyConfig()
    configs = [(f"DDIM eta={eta:g}", "ddim", float(eta)) for eta in etas] + [(_label(s), s, None) for s in extra]
    cells: dict[str, dict[int, dict]] = {}
    floors = []
    total = len(configs) * len(steps) * len(seeds)
    done = 0
    for label, sampler, eta in configs:
        cells[label] = {}
        for S in steps:
            runs = []
            for seed in seeds:
                cfg = replace(base, sampler=sampler, steps=int(S), eta=eta, n=n, seed=int(seed))
                runs.append(run_toy(cfg, device).metrics)
                done += 1
                if progress:
                    print(f"[evaluate] {done}/{total} {label} S={S} seed={seed}: SW={runs[-1]['sw']:.4f}", flush=True)
            floors += [r["sw_floor"] for r in runs]
            cells[label][int(S)] = {
                k: statistics.fmean(r[k] for r in runs) for k in ("sw", "weight_err", "mean_err", "cov_rel_err", "seconds", "model_calls")
            }
            cells[label][int(S)]["sw_sd"] = statistics.stdev([r["sw"] for r in runs]) if len(runs) > 1 else float("nan")
    headers = ["sampler"] + [f"S={S}" for S in steps]
    rows = [[label] + [cells[label][int(S)]["sw"] for S in steps] for label in cells]
    floor_sd = statistics.stdev(floors) if len(floors) > 1 else float("nan")
    return {"headers": headers, "rows": rows, "cells": cells, "sw_floor": statistics.fmean(floors), "sw_floor_sd": floor_sd,
            "n": n, "seeds": list(seeds)}


def _label(sampler: str) -> str:
    return {"plms": "PLMS", "euler_a": "Euler-a (eta=1)", "ddpm": "DDPM (ancestral)"}.get(sampler, sampler)
