"""Metrics against synthetic ground truth: PSNR / SSIM (on the sRGB output) and the trail-gap score,
for the baselines, the full pipeline and its ablations, all rendered from one alignment and one set
of flows per burst.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from lumenkit.common.config import check, param
from lumenkit.common.images import linear_to_srgb
from lumenkit.common.metrics import psnr, ssim
from lumenkit.longexp.align import BACKGROUND_SELECTION, FOREGROUND_SELECTION, select_frames
from lumenkit.longexp.data import SCENE_KINDS, SynthBurst, SynthConfig, synthesize
from lumenkit.longexp.pipeline import LongExpConfig, aligned_average, finish, naive_average, prepare, with_render

@dataclass
class EvalConfig:
    """`lumenkit longexp evaluate` without folders: the synthetic suite (kinds x seeds at width x height)."""

    kinds: tuple[str, ...] = param(("objects", "lights", "water", "pan"), f"scene kinds (of {', '.join(SCENE_KINDS)})")
    seeds: tuple[int, ...] = param((0, 1), "scene seeds")
    width: int = param(320, "frame width (px)")
    height: int = param(240, "frame height (px)")
    json: str | None = param(None, "also write the numbers to this JSON file")
    threads: int = param(1, "torch threads (0: torch's default)")

    def __post_init__(self) -> None:
        self.kinds, self.seeds = tuple(self.kinds), tuple(self.seeds)
        bad = [k for k in self.kinds if k not in SCENE_KINDS]
        check(bool(self.kinds) and not bad, "kinds", ",".join(self.kinds), f"expected a comma list of {', '.join(SCENE_KINDS)}")
        check(len(self.seeds) > 0, "seeds", "", "need one or more seeds")
        SynthConfig(width=self.width, height=self.height)  # the same size checks as synth
        check(isinstance(self.threads, int) and self.threads >= 0, "threads", self.threads, "must be an integer >= 0 (0: torch's default)")


METHODS = ("naive average", "aligned average", "flow straight-line blur", "full pipeline", "full, soft gamma always on (paper)", "no ramp", "no spline", "no soft gamma", "no occlusion check")


def to_display(img: np.ndarray) -> np.ndarray:
    """Linear -> clipped sRGB [0, 1] (what is written to disk)."""
    return np.clip(linear_to_srgb(np.clip(img, 0.0, 1.0)), 0.0, 1.0)


def trail_gap(result: np.ndarray, truth: np.ndarray, static: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the true trail contrast that is missing (0 = no gaps, 1 = no trail at all).

    In linear luminance, inside the trail mask: sum(relu(|T - S| - |R - S|)) / sum(|T - S|), with T the
    truth, S the scene without moving content and R the result. Trails that break between frames
    (dots instead of streaks, gaps mid-trail) leave the contrast of the missing parts unexplained;
    overshoot is not counted (PSNR sees it)."""
    lum = lambda x: np.clip(x, 0, 1).mean(-1)  # noqa: E731
    t, s, r = lum(truth), lum(static), lum(result)
    ct, cr = np.abs(t - s)[mask], np.abs(r - s)[mask]
    tot = float(ct.sum())
    return float(np.clip(ct - cr, 0, None).sum() / tot) if tot > 1e-9 else 0.0


def method_configs(base: LongExpConfig) -> dict[str, LongExpConfig]:
    """The rendered methods: flow straight-line blur (eq. 6 without ramp, soft gamma, occlusion check or
    compositing), the full pipeline and the one-switch-off ablations."""
    return {
        "flow straight-line blur": replace(with_render(base, spline=False, ramp=False, soft_gamma=False, occlusion=False), composite=False),
        "full pipeline": base,
        "full, soft gamma always on (paper)": with_render(base, soft_gamma=True),
        "no ramp": with_render(base, ramp=False),
        "no spline": with_render(base, spline=False),
        "no soft gamma": with_render(base, soft_gamma=False),
        "no occlusion check": with_render(base, occlusion=False),
    }


def evaluate_burst(burst: SynthBurst, base: LongExpConfig | None = None) -> dict[str, dict[str, float]]:
    """Every method on one synthetic burst (all frames: the truth covers the whole burst).

    Returns {method: {psnr, ssim, trail_gap, trail_psnr (PSNR over the truth's trail pixels only)}} plus "_selection": frames the seed's rule would use, and
    "_soft_gamma": whether the full pipeline's soft gamma "auto" switched eq. 9 on."""
    mode = burst.params["mode"]
    base = base or LongExpConfig(mode=mode, select_frames=False, gain=float(burst.params["gain"]))
    prep = prepare(burst.frames, base)
    imgs = {"naive average": naive_average(burst.frames, base.gain), "aligned average": aligned_average(prep, base.gain)}
    sg_used = None
    for name, cfg in method_configs(base).items():
        res = finish(prep, cfg)
        imgs[name] = res.image
        if name == "full pipeline":
            sg_used = res.soft_gamma
    truth_d = to_display(burst.truth)
    out: dict = {}
    for name, img in imgs.items():
        d = to_display(img)
        out[name] = {"psnr": psnr(d, truth_d), "ssim": ssim(d, truth_d), "trail_gap": trail_gap(img, burst.truth, burst.static, burst.trail_mask),
                     "trail_psnr": psnr(d, truth_d, mask=burst.trail_mask)}
    pct, target = FOREGROUND_SELECTION if mode == "foreground" else BACKGROUND_SELECTION
    out["_selection"] = {"frames": select_frames(prep.alignment.lengths, pct, target), "of": len(burst.frames)}
    out["_soft_gamma"] = sg_used
    return out


def evaluate_suite(kinds=("objects", "lights", "water", "pan"), seeds=(0, 1, 2), width: int = 320, height: int = 240, progress: bool = True) -> dict:
    """Synthesize and evaluate every (kind, seed); returns {kind: {method: mean metrics}, ...} and per-run rows."""
    per: dict = {}
    runs = [(k, s) for k in kinds for s in seeds]
    for kind, seed in tqdm(runs, desc="longexp evaluate", disable=not progress):
        b = synthesize(SynthConfig(kind=kind, seed=seed, width=width, height=height))
        per.setdefault(kind, []).append(evaluate_burst(b))
    summary: dict = {}
    for kind, results in per.items():
        summary[kind] = {m: {k: float(np.mean([r[m][k] for r in results])) for k in ("psnr", "ssim", "trail_gap", "trail_psnr")} for m in METHODS}
        summary[kind]["_selection"] = [r["_selection"]["frames"] for r in results]
        summary[kind]["_soft_gamma"] = [r["_soft_gamma"] for r in results]
    return summary


def summary_table(summary: dict) -> tuple[list[str], list[list]]:
    """Headers and rows (scene, method, PSNR, SSIM, trail gap, frames chosen by selection)."""
    headers = ["scene", "method", "PSNR dB", "SSIM", "trail PSNR dB", "trail gap", "frame selection would use", "soft gamma auto"]
    rows = []
    for kind, res in summary.items():
        best_gap = min(res[m]["trail_gap"] for m in METHODS)
        for m in METHODS:
            r = res[m]
            gap = f"{r['trail_gap']:.3f}" + (" (lowest)" if r["trail_gap"] == best_gap else "")
            first = m == METHODS[0]
            auto = ", ".join("on" if v else "off" for v in res.get("_soft_gamma", [])) if first else ""
            rows.append([kind, m, round(r["psnr"], 2), round(r["ssim"], 4), round(r["trail_psnr"], 2), gap, ", ".join(map(str, res["_selection"])) if first else "", auto])
    return headers, rows
