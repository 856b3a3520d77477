"""Quality vs number of steps on the Gaussian-mixture toy: the analogue of DDIM paper Table 1.

Each cell is the sliced-Wasserstein distance (exact, against the mixture itself) of samples drawn with
the mixture's exact eps-predictor, averaged over seeds. `sw_floor` is the same distance for fresh
samples from the mixture: the finite-sample floor no sampler can beat.
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Sequence

import torch

from lumenkit.diffusion.pipeline import ToyConfig, run_toy

DEFAULT_STEPS = (10, 20, 50, 100, 1000)
DEFAULT_ETAS = (0.0, 0.2, 0.5, 1.0)
DEFAULT_EXTRA = ("plms", "euler_a", "ddpm")


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
