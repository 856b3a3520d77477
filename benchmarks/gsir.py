"""GS-IR stage 1 vs plain 3DGS on the default synthetic scene (Mitsuba 'blocks', 128 px).

    .venv/bin/python benchmarks/gsir.py [--iterations N] [--num_points N] [--quick]

The defaults are the gsir section of BENCHMARKS.md (three 6000-iteration trainings side by side,
30-minute budget each). Three methods share data, init, schedule and seed: plain 3DGS (0.8 L1 +
0.2 D-SSIM only), GS-IR stage 1 (+ normal consistency 1.0 and edge-aware normal TV, --normal_tv),
and GS-IR stage 1 with lumenkit's geometry options (the --geo_* weights and the boolean options,
each on by default, --no-<option> to drop one). Reported on all test views: novel-view PSNR / SSIM,
normal MAE in degrees of the rendered normal map and of the normal from the rendered depth
(foreground = GT mask; and GS-IR's all-pixel protocol with background (0, 0, 1)), training
iterations / s, #Gaussians. --raster_table adds rasterizer timings taken during the trainings
(benchmarks/gsir_raster.py times it alone). --quick: tiny scene, few iterations, no BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lumenkit.common.bench import markdown_table, write_section  # noqa: E402
from lumenkit.common.metrics import psnr, ssim  # noqa: E402
from lumenkit.gsir.data import load_gt, read_scene  # noqa: E402
from lumenkit.gsir.evaluate import normal_mae, normal_mae_breakdown, pooled_breakdown  # noqa: E402
from lumenkit.gsir.losses import Stage1LossWeights  # noqa: E402
from lumenkit.gsir.pipeline import render  # noqa: E402
from lumenkit.gsir.synth import SynthConfig, synthesize_scene  # noqa: E402
from lumenkit.gsir.train import Stage1Config, training  # noqa: E402


@torch.no_grad()
def evaluate_model(gaussians, scene, device) -> dict:
    """Mean test metrics (see module docstring)."""
    bg = torch.tensor(scene.background, device=device)
    rows = []
    breakdowns = []
    for v in scene.test:
        pkg = render(gaussians, v.camera(device), bg, inference=True)
        img = pkg["render"].clamp(0, 1)
        gt_n, mask = load_gt(v, "normal"), load_gt(v, "mask")
        pred = pkg["normal_map"].permute(1, 2, 0).cpu().numpy()
        nm = normal_mae(pred, gt_n, mask)
        nd = normal_mae(pkg["normal_map_from_depth"].permute(1, 2, 0).cpu().numpy(), gt_n, mask)
        rows.append([psnr(img, v.image), ssim(img, v.image), nm["masked"], nm["gsir"], nd["masked"], nd["gsir"]])
        breakdowns.append(normal_mae_breakdown(pred, gt_n, mask))
    r = np.nanmean(np.array(rows, dtype=np.float64), axis=0)
    out = dict(zip(("psnr", "ssim", "mae_normal_fg", "mae_normal_gsir", "mae_depthnormal_fg", "mae_depthnormal_gsir"), map(float, r)))
    for k, (mae, frac) in pooled_breakdown(breakdowns).items():  # extra diagnostic: where the fg error is
        out[f"mae_{k}"], out[f"frac_{k}"] = mae, frac
    return out


METHODS = {"gsir": "GS-IR stage 1", "gsir_geo": "GS-IR stage 1 + depth-normal geometry term (lumenkit)", "3dgs": "3DGS (no normal losses)"}


LUMENKIT_FLAGS = {  # benchmark flag (on by default, --no-<flag> turns it off) -> (Stage1Config field, value when on, words for the row name)
    "unfiltered_depth_normal": ("depth_median", False, "unfiltered depth normal"),
    "cull_backfacing_normals": ("cull_backfacing_normals", True, "back-face culled normals"),
    "planar_depth": ("planar_depth", True, "planar depth"),
    "crease_aware_depth_normal": ("crease_aware_depth_normal", True, "crease-aware depth normal"),
}


DEFAULT_DENSIFY_GRAD = Stage1Config().densify_grad_threshold


def geo_settings(args) -> tuple[dict, dict]:
    """(Stage1LossWeights kwargs, Stage1Config kwargs) of the gsir_geo method from the --geo_* options,
    the --depth_normal weight and the boolean LUMENKIT_FLAGS."""
    losses = {"lambda_normal": args.geo_lambda_normal, "lambda_normal_tv": args.normal_tv if args.geo_normal_tv is None else args.geo_normal_tv,
              "lambda_depth_normal": args.depth_normal, "lambda_distortion": args.geo_lambda_distortion,
              "lambda_depth_normal_tv": args.geo_lambda_depth_normal_tv, "depth_normal_tv_max_step": args.geo_depth_normal_tv_max_step,
              "depth_normal_tv_order": args.geo_depth_normal_tv_order}
    fields = {LUMENKIT_FLAGS[f][0]: LUMENKIT_FLAGS[f][1] for f in LUMENKIT_FLAGS if getattr(args, f)}
    fields.update(densify_grad_threshold=args.geo_densify_grad_threshold, depth_normal_from_iter=args.geo_depth_normal_from_iter,
                  distortion_from_iter=args.geo_distortion_from_iter)
    return losses, fields


def geo_extras(args) -> list[str]:
    """Short names of the lumenkit options and weights the gsir_geo method adds to the geometry term."""
    extras = [words for f, (_, _, words) in LUMENKIT_FLAGS.items() if getattr(args, f)]
    if args.geo_densify_grad_threshold != DEFAULT_DENSIFY_GRAD:
        extras.append(f"densify threshold {args.geo_densify_grad_threshold:g}")
    if args.geo_lambda_normal != Stage1LossWeights().lambda_normal:
        extras.append(f"normal consistency {args.geo_lambda_normal:g}")
    if args.geo_normal_tv is not None:
        extras.append(f"normal TV {args.geo_normal_tv:g}")
    if args.geo_lambda_distortion > 0:
        extras.append(f"depth distortion {args.geo_lambda_distortion:g}")
    if args.geo_lambda_depth_normal_tv > 0:
        order = "second-order " if args.geo_depth_normal_tv_order == 2 else ""
        extras.append(f"{order}depth-normal TV {args.geo_lambda_depth_normal_tv:g} (steps < {args.geo_depth_normal_tv_max_step:g})")
    return extras


def method_label(tag: str, args) -> str:
    """The gsir_geo row's name says which lumenkit additions and weights it trains with."""
    extras = geo_extras(args)
    if tag != "gsir_geo" or not extras:
        return METHODS[tag]
    return "GS-IR stage 1 + " + ", ".join(["depth-normal geometry term"] + extras) + " (lumenkit)"


def run_method(tag: str, scene, iterations: int, num_points: int, out: Path, args) -> dict:
    """Train one method and evaluate it; returns the metrics row as a dict. The --geo_* options, the
    boolean LUMENKIT_FLAGS and --depth_normal apply to the gsir_geo method only (`geo_settings`)."""
    extra: dict = {}
    if tag == "3dgs":
        w = Stage1LossWeights(lambda_normal=0.0, lambda_normal_tv=0.0, lambda_depth_normal=0.0)
    elif tag == "gsir_geo":
        losses, extra = geo_settings(args)
        w = Stage1LossWeights(**losses)
    else:
        w = Stage1LossWeights(lambda_normal_tv=args.normal_tv)
    cfg = Stage1Config(iterations=iterations, num_points=num_points, losses=w, seed=0, **extra)
    res = training(scene, out / f"model_{tag}", cfg, torch.device("cpu"), progress=True, log_every=5, max_seconds=args.max_minutes * 60)
    m = evaluate_model(res["gaussians"], scene, torch.device("cpu"))
    m.update(its_per_s=res["its_per_s"], minutes=res["seconds"] / 60, num_gaussians=res["num_gaussians"], iterations=res["iterations"])
    print(f"[bench gsir] {method_label(tag, args)}: {m}", flush=True)
    return m


def main() -> None:
    import json
    import subprocess

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    # defaults = the configuration of the gsir section in BENCHMARKS.md, so that `make bench` reproduces it
    ap.add_argument("--iterations", type=int, default=6000)
    ap.add_argument("--num_points", type=int, default=10_000)
    ap.add_argument("--max_minutes", type=float, default=30.0, help="training time budget per method (the issue's 30-minute CPU run)")
    ap.add_argument("--data", default=str(ROOT / "outputs" / "gsir_bench" / "blocks128"))
    ap.add_argument("--out", default=str(ROOT / "outputs" / "gsir_bench"))
    ap.add_argument("--raster_table", action="store_true", help="also time the rasterizer while the trainings run (see gsir_raster.py for clean timings)")
    ap.add_argument("--normal_tv", type=float, default=0.3, help="normal TV weight of the GS-IR rows (GS-IR's default 5.0 oversmooths at 128 px)")
    ap.add_argument("--depth_normal", type=float, default=0.05, help="lambda_depth_normal of the gsir_geo method")
    for flag, (field, _, words) in LUMENKIT_FLAGS.items():
        ap.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=True,
                        help=f"the gsir_geo method trains with {words} (Stage1Config.{field})")
    ap.add_argument("--geo_densify_grad_threshold", type=float, default=0.0001,
                    help="densify_grad_threshold of the gsir_geo method (3DGS: 0.0002; lower = more Gaussians, slower)")
    ap.add_argument("--geo_normal_tv", type=float, default=0.1, help="normal TV weight of the gsir_geo method")
    ap.add_argument("--geo_lambda_normal", type=float, default=3.0,
                    help="normal consistency weight of the gsir_geo method (GS-IR: 1)")
    ap.add_argument("--geo_depth_normal_from_iter", type=int, default=10_000,
                    help="first iteration of the gsir_geo geometry term, of 30000 (scaled like the 3DGS schedule)")
    ap.add_argument("--geo_lambda_distortion", type=float, default=1.0, help="depth distortion weight of the gsir_geo method (0 = off)")
    ap.add_argument("--geo_distortion_from_iter", type=int, default=15_000,
                    help="first iteration of the gsir_geo distortion term, of 30000 (scaled; 15000 = after densification)")
    ap.add_argument("--geo_lambda_depth_normal_tv", type=float, default=0.02,
                    help="truncated L1 TV of the depth normal (moves the geometry) of the gsir_geo method (0 = off)")
    ap.add_argument("--geo_depth_normal_tv_max_step", type=float, default=0.25,
                    help="largest neighbour step of the depth normal (L1 of the unit-normal difference) that the TV smooths")
    ap.add_argument("--geo_depth_normal_tv_order", type=int, default=2, choices=(1, 2),
                    help="difference the depth-normal TV penalises: 1 (first; flattens faces, facets curved ones) or 2 (second; spares curved faces)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--load_note", default="", help="what else was running on the machine (printed in the section text)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out) / ("quick" if args.quick else "full")
    if args.quick:
        data = out / "scene"
        cfg_s = SynthConfig(resolution=48, n_train=16, n_test=4, spp=8, relight_envmaps=())
        iterations, num_points = 60, 1000
    else:
        data = Path(args.data)
        cfg_s = SynthConfig(resolution=128, n_train=100, n_test=200, spp=64, relight_envmaps=())
        iterations, num_points = args.iterations, args.num_points
    if args.worker:  # child process: one method, one thread (the two methods share the 2 cores)
        torch.set_num_threads(1)
        m = run_method(args.worker, read_scene(data), iterations, num_points, out, args)
        (out / f"result_{args.worker}.json").write_text(json.dumps(m))
        return
    t0 = time.perf_counter()
    if not (data / "transforms_test.json").is_file():
        synthesize_scene(data, cfg_s)
    synth_s = time.perf_counter() - t0
    scene = read_scene(data)
    out.mkdir(parents=True, exist_ok=True)
    # the two trainings run side by side (one process each); the raster timing runs meanwhile here
    import os

    load_start = os.getloadavg()[0]
    procs = {}
    tags = [t for t in args.methods.split(",") if t]
    if not tags or any(t not in METHODS for t in tags):
        raise SystemExit(f"--methods {args.methods!r}: choose from {','.join(METHODS)}")
    for tag in tags:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", tag]  # the worker parses the same options
        procs[tag] = subprocess.Popen(cmd, stdout=open(out / f"log_{tag}.txt", "w"), stderr=subprocess.STDOUT)
    raster = "\n(Rasterizer speed: see the gsir-raster section; not re-measured during this run.)\n"
    if args.raster_table:
        try:
            from gsir_raster import raster_speed_table

            raster = "\n### Rasterizer speed (from benchmarks/gsir_raster.py, measured while the two trainings ran)\n\n" + raster_speed_table(quick=args.quick) + "\n"
        except ImportError as exc:
            raster = f"\n(rasterizer speed table unavailable: {exc})\n"
    load_mid = os.getloadavg()[0]
    loads = [load_start, load_mid]
    while any(p.poll() is None for p in procs.values()):  # sample the load while the trainings run
        time.sleep(20)
        loads.append(os.getloadavg()[0])
    rows, diag_rows = [], []
    for tag, p in procs.items():
        if p.wait() != 0:
            raise SystemExit(f"benchmark worker {tag} failed: see {out / f'log_{tag}.txt'}")
        m = json.loads((out / f"result_{tag}.json").read_text())
        label = method_label(tag, args)
        rows.append([label, m["psnr"], m["ssim"], m["mae_normal_fg"], m["mae_normal_gsir"], m["mae_depthnormal_fg"], m["mae_depthnormal_gsir"],
                     m["iterations"], m["its_per_s"], m["minutes"], m["num_gaussians"]])
        diag_rows.append([label] + [f"{m[f'mae_{k}']:.1f} ({100 * m[f'frac_{k}']:.0f}%)" for k in ("flat", "crease", "silhouette")])
    table = markdown_table(
        ["method", "PSNR (dB)", "SSIM", "normal MAE fg (deg)", "normal MAE GS-IR protocol (deg)", "depth-normal MAE fg (deg)",
         "depth-normal MAE GS-IR protocol (deg)", "iterations", "train it/s", "train minutes", "#Gaussians"],
        rows,
    )
    diag_table = markdown_table(["method", "flat faces", "creases", "silhouette band"], diag_rows)
    sc = Stage1Config(iterations=iterations).scaled()
    sc_geo = Stage1Config(iterations=iterations, **geo_settings(args)[1]).scaled()
    geo_options = bool(geo_extras(args))
    w = Stage1LossWeights(lambda_normal_tv=args.normal_tv)
    v0 = scene.test[0]
    body = (
        f"Scene: Mitsuba path-traced '{cfg_s.object}' ({v0.width} px, {len(scene.train)} train / {len(scene.test)} test views, "
        f"{cfg_s.spp} spp, black background); synthesis {synth_s:.0f} s (0 = cached). Stage 1 planned for {iterations} iterations "
        f"(stopped early at the time budget of {args.max_minutes:g} min if slower) from {num_points} random Gaussians in +-1.3; 3DGS "
        f"schedule scaled by iterations/30000: densify from {sc.densify_from_iter} to {sc.densify_until_iter} every "
        f"{sc.densification_interval}, opacity reset every {sc.opacity_reset_interval}, SH degree up every {sc.sh_up_interval}; "
        f"rasterizer backend 'auto' (C++ CPU). The {len(tags)} methods train at the same time, one process each, one torch thread each. "
        f"GS-IR stage 1 loss: 0.8 L1 + 0.2 D-SSIM + {w.lambda_normal:g} x normal consistency (L1, rendered unit normal vs "
        "normal from the 3x3 median-filtered rendered depth, inside GS-IR's normal_from_depth_mask"
        + (f" and where the rendered opacity > {w.normal_min_opacity:g}" if w.normal_min_opacity > 0 else "")
        + f") + {w.lambda_normal_tv:g} x edge-aware normal TV"
        + (" on the unit normal map times the detached opacity" if w.tv_opacity_weighted else "")
        + (f" (GS-IR's default --normal_tv is {Stage1LossWeights().lambda_normal_tv:g})" if w.lambda_normal_tv != Stage1LossWeights().lambda_normal_tv else "")
        + "; normal gradients reach the per-Gaussian normals only (not the geometry) and skip the image-border pixels, "
        "as GS-IR's rasterizer. "
        + (f"The lumenkit geometry term adds {args.depth_normal:g} x the same consistency with the roles swapped (normal from the "
           "rendered depth, with its gradient to the Gaussians' positions, scales, rotations and opacities, vs the detached "
           f"rendered normal map) from iteration {sc_geo.depth_normal_from_iter}"
           + (", after densification ends (earlier, its view-space gradients would also drive densification)"
              if sc_geo.depth_normal_from_iter >= sc_geo.densify_until_iter else
              f", before densification ends at {sc_geo.densify_until_iter} (so its view-space gradients also drive densification)")
           + (". Its other lumenkit options: " + "; ".join([words for on, words in (
               (args.unfiltered_depth_normal, "every depth normal in training comes from the unfiltered rendered depth (GS-IR filters "
                "it 3x3 with a median, which rounds the creases)"),
               (args.cull_backfacing_normals, "its normal map (in training and in every metric) leaves out the Gaussians whose "
                "normal faces away from the camera (GS-IR blends them all; they show only through partial coverage, at "
                "silhouettes and creases)"),
               (args.planar_depth, "each Gaussian adds the depth of its own plane at the pixel to the depth map, not its centre "
                "depth (rasterize(planar_depth=True), as RaDe-GS / PGSR; GS-IR blends centre depths)"),
               (args.geo_densify_grad_threshold != DEFAULT_DENSIFY_GRAD, f"it densifies at a view-space gradient threshold of "
                f"{args.geo_densify_grad_threshold:g} (3DGS: {DEFAULT_DENSIFY_GRAD:g}), which buys more Gaussians with its time budget"),
               (args.geo_lambda_normal != Stage1LossWeights().lambda_normal, f"normal consistency weight {args.geo_lambda_normal:g}"),
               (args.geo_normal_tv is not None, f"normal TV weight {args.geo_normal_tv:g} (the GS-IR row: {args.normal_tv:g})"),
               (args.crease_aware_depth_normal, "the depth normal differentiates, per axis, towards the side with the smaller "
                "second difference of depth (GS-IR: the smaller depth step), so that at a crease it stays on the pixel's own face"),
               (args.geo_lambda_distortion > 0, f"{args.geo_lambda_distortion:g} x 2DGS's depth distortion (mean over pixels of "
                f"1/2 sum_ij w_i w_j (z_i - z_j)^2, centre depths in scene units) from iteration {sc_geo.distortion_from_iter}"),
               (args.geo_lambda_depth_normal_tv > 0, f"{args.geo_lambda_depth_normal_tv:g} x an L1 TV of "
                + ("the depth normal" if args.geo_depth_normal_tv_order == 1 else
                   "the second difference n(x+1) - 2 n(x) + n(x-1) of the depth normal")
                + " (with its gradient to the geometry, inside the consistency mask, with the geometry term) that leaves out "
                + (f"neighbour steps of {args.geo_depth_normal_tv_max_step:g} or more (L1 of the unit-normal difference; a turn "
                   "of 10 to 14 deg per pixel): faces flatten, creases stay sharp (losses.truncated_tv)"
                   if args.geo_depth_normal_tv_order == 1 else
                   f"values of {args.geo_depth_normal_tv_max_step:g} or more: zero on flat faces and on steadily curved ones, "
                   "so faces flatten and the ball stays round, creases stay sharp (losses.truncated_tv(order=2))")),
           ) if on]) if geo_options else "")
           + ". " if "gsir_geo" in tags else "")
        + 
        "Metrics on all test views: PSNR/SSIM (Gaussian 11x11) in sRGB, no LPIPS; normal MAE = mean angle to the GT "
        "world normal, 'fg' over GT foreground pixels, 'GS-IR protocol' over all pixels with background (0,0,1) on both sides; "
        "'depth-normal' = normal from the 3x3 median-filtered rendered depth (depth_to_normal; filtered for every method), the only normal plain 3DGS has. "
        f"The machine (2 cores) is shared with other jobs{': ' + args.load_note if args.load_note else ''}; 1-minute load average "
        f"{load_start:.1f} at the start, {min(loads):.1f} to {max(loads):.1f} (mean {np.mean(loads):.1f}) while training, "
        f"{os.getloadavg()[0]:.1f} at the end (our {len(tags)} trainings alone make {len(tags)}), so iterations/s are pessimistic by an unknown factor.\n\n"
        f"Targets (issue 5): PSNR >= 30 dB and normal MAE <= 8 deg at 128 px within a 30-minute CPU run.\n\n{table}\n\n"
        "Where the rendered-normal error is (extra diagnostic, not the target metric): MAE in degrees over the GT foreground "
        "pixels of each class, pooled over all test views (share of the foreground in brackets); silhouette band = within 2 px "
        "of the background, creases = the rest where the GT normal turns > 20 deg within the 3x3 neighbourhood, flat = the rest "
        "(faces, including the curved sphere/cylinder surfaces).\n\n"
        f"{diag_table}\n{raster}"
    )
    print(body)
    if not args.quick:
        write_section("gsir", body, title="gsir: GS-IR stage 1 vs 3DGS, 128 px synthetic scene")


if __name__ == "__main__":
    main()
