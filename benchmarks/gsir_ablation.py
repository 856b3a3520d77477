"""GS-IR stage 1: what each lumenkit normal option adds, one at a time on top of the previous ones.

    .venv/bin/python benchmarks/gsir_ablation.py [--iterations 3000] [--parallel 2] [--fresh]

Same scene, init, schedule and seed as benchmarks/gsir.py; every row is one training (one torch
thread, --parallel of them at a time) evaluated on all test views: PSNR / SSIM and the rendered
normal's MAE in degrees over the GT foreground, with its flat / crease / silhouette breakdown.
A row whose result file in --out was made with the same training config is not trained again
(--fresh retrains every row); the table says which rows were reused.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gsir import LUMENKIT_FLAGS, evaluate_model  # noqa: E402

from lumenkit.common.bench import markdown_table, write_section  # noqa: E402
from lumenkit.gsir.data import read_scene  # noqa: E402
from lumenkit.gsir.losses import Stage1LossWeights  # noqa: E402
from lumenkit.gsir.train import Stage1Config, training  # noqa: E402

# cumulative: each row adds one option to the row above
ROWS = [
    ("GS-IR stage 1", {}),
    ("+ depth-normal geometry term (0.05)", {"lambda_depth_normal": 0.05}),
    ("+ unfiltered depth normal", {"unfiltered_depth_normal": True}),
    ("+ back-face culled normals", {"cull_backfacing_normals": True}),
    ("+ planar depth", {"planar_depth": True}),
    ("+ crease-aware depth normal", {"crease_aware_depth_normal": True}),
    ("+ densify threshold 0.0001 (3DGS 0.0002)", {"densify_grad_threshold": 0.0001}),
    ("+ geometry term from iteration 10000 of 30000 (was 15000)", {"depth_normal_from_iter": 10_000}),
    ("+ normal consistency 3 (GS-IR 1)", {"lambda_normal": 3.0}),
    ("+ normal TV 0.1", {"lambda_normal_tv": 0.1}),
    ("+ depth distortion 1 from iteration 15000 of 30000", {"lambda_distortion": 1.0, "distortion_from_iter": 15_000}),
    ("+ depth-normal TV 0.02, steps < 0.25 (creases free)", {"lambda_depth_normal_tv": 0.02, "depth_normal_tv_max_step": 0.25}),
    ("+ that TV on the second difference (curved faces free)", {"depth_normal_tv_order": 2}),
]
LOSS_WEIGHTS = ("lambda_normal_tv", "lambda_depth_normal", "lambda_normal", "lambda_distortion", "lambda_depth_normal_tv", "depth_normal_tv_max_step",
                "depth_normal_tv_order")


def row_config(index: int, iterations: int, num_points: int, normal_tv: float) -> Stage1Config:
    opts: dict = {}
    for _, extra in ROWS[: index + 1]:
        opts.update(extra)
    w = Stage1LossWeights(**{"lambda_normal_tv": normal_tv, "lambda_depth_normal": 0.0, **{k: opts.pop(k) for k in LOSS_WEIGHTS if k in opts}})
    fields = {k: opts.pop(k) for k in ("densify_grad_threshold", "depth_normal_from_iter", "distortion_from_iter") if k in opts}
    fields.update({LUMENKIT_FLAGS[f][0]: LUMENKIT_FLAGS[f][1] for f in opts})
    return Stage1Config(iterations=iterations, num_points=num_points, losses=w, seed=0, **fields)


def config_key(cfg: Stage1Config) -> str:
    """The training config as canonical JSON (what decides whether a stored row result can be reused)."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def same_config(stored: dict, current: dict, defaults: dict) -> bool:
    """True if a stored config (JSON dict) equals the current one, where a setting the stored one lacks
    (added to Stage1Config after that run) counts as equal when the current value is its default."""
    for k, v in current.items():
        if isinstance(v, dict):
            if not same_config(stored.get(k, {}), v, defaults[k]):
                return False
        elif k in stored:
            if stored[k] != v:
                return False
        elif v != defaults[k]:
            return False
    return True


def has_result(out: Path, index: int, cfg: Stage1Config) -> bool:
    f = out / f"result_{index}.json"
    if not f.is_file():
        return False
    stored = json.loads(f.read_text()).get("config")
    defaults = json.loads(config_key(Stage1Config()))
    return stored is not None and same_config(json.loads(stored), json.loads(config_key(cfg)), defaults)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--num_points", type=int, default=10_000)
    ap.add_argument("--normal_tv", type=float, default=0.3)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--data", default=str(ROOT / "outputs" / "gsir_bench" / "blocks128"))
    ap.add_argument("--out", default=str(ROOT / "outputs" / "gsir_bench" / "ablation"))
    ap.add_argument("--fresh", action="store_true", help="retrain every row (default: reuse results made with the same config)")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    if not (Path(args.data) / "transforms_test.json").is_file():
        raise SystemExit(f"--data {args.data}: no scene there; run benchmarks/gsir.py first (it synthesizes the scene)")
    if args.worker is not None:
        torch.set_num_threads(1)
        scene = read_scene(args.data)
        cfg = row_config(args.worker, args.iterations, args.num_points, args.normal_tv)
        res = training(scene, out / f"model_{args.worker}", cfg, torch.device("cpu"), progress=False)
        m = evaluate_model(res["gaussians"], scene, torch.device("cpu"))
        m.update(its_per_s=res["its_per_s"], num_gaussians=res["num_gaussians"], config=config_key(cfg))
        (out / f"result_{args.worker}.json").write_text(json.dumps(m))
        return
    out.mkdir(parents=True, exist_ok=True)
    t0, load_start = time.perf_counter(), os.getloadavg()[0]
    reused = [] if args.fresh else [i for i in range(len(ROWS)) if has_result(out, i, row_config(i, args.iterations, args.num_points, args.normal_tv))]
    pending, running = [i for i in range(len(ROWS)) if i not in reused], {}
    while pending or running:
        while pending and len(running) < args.parallel:
            i = pending.pop(0)
            cmd = [sys.executable, __file__, "--worker", str(i), "--iterations", str(args.iterations), "--num_points", str(args.num_points),
                   "--normal_tv", str(args.normal_tv), "--data", args.data, "--out", str(out)]
            running[i] = subprocess.Popen(cmd, stdout=open(out / f"log_{i}.txt", "w"), stderr=subprocess.STDOUT)
        time.sleep(5)
        for i, p in list(running.items()):
            if p.poll() is not None:
                if p.returncode != 0:
                    raise SystemExit(f"ablation worker {i} failed: see {out / f'log_{i}.txt'}")
                del running[i]
    rows = []
    for i, (name, _) in enumerate(ROWS):
        m = json.loads((out / f"result_{i}.json").read_text())
        rows.append([name + (" (reused)" if i in reused else ""), m["psnr"], m["ssim"], m["mae_normal_fg"], f"{m['mae_flat']:.1f}", f"{m['mae_crease']:.1f}", f"{m['mae_silhouette']:.1f}",
                     m["its_per_s"], m["num_gaussians"]])
    table = markdown_table(["lumenkit options (cumulative)", "PSNR (dB)", "SSIM", "normal MAE fg (deg)", "flat faces", "creases", "silhouette band",
                            "train it/s", "#Gaussians"], rows)
    body = (
        f"Scene and metrics as in the gsir section (benchmarks/gsir.py); {args.iterations} iterations from {args.num_points} random "
        f"Gaussians, normal TV {args.normal_tv:g} unless a row changes it, seed 0; each row adds one option to the row above (all are off "
        f"by default, i.e. GS-IR). {len(ROWS) - len(reused)} trainings, {args.parallel} at a time, one torch thread each, "
        f"{(time.perf_counter() - t0) / 60:.0f} min in all"
        + (f" ('reused': the row's result from an earlier run of this script with the same training config; --fresh retrains it)" if reused else "")
        + f"; "
        f"1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end. Class columns: normal MAE "
        "(deg) over the GT foreground pixels of each class (see the gsir section).\n\n" + table
    )
    print(body)
    write_section("gsir-ablation", body, title="gsir: what each lumenkit normal option adds (stage 1, short runs)")


if __name__ == "__main__":
    main()
