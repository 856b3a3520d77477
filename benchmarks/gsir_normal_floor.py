"""How much of the GS-IR normal MAE at 128 px is the metric's own floor.

    .venv/bin/python benchmarks/gsir_normal_floor.py [--views N] [--supersample S]

The ground-truth normal of a test view is Mitsuba's shading normal through each pixel centre. A renderer
that integrates over the pixel (as Gaussian splatting does) can at best produce the footprint-mean normal.
This renders the benchmark scene's test views S x S supersampled, averages the normals over each pixel's
footprint (foreground samples, normalised) and reports its MAE against the pixel-centre GT, in the same
pixel classes as the gsir section (silhouette band, creases, flat). No training involved.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lumenkit.common.bench import markdown_table, write_section  # noqa: E402
from lumenkit.gsir.evaluate import normal_mae, normal_mae_breakdown, pooled_breakdown  # noqa: E402
from lumenkit.gsir.synth import AOV_SPEC, SynthConfig, build_scene, gt_maps, make_object, scene_poses  # noqa: E402


def footprint_floor(cfg: SynthConfig, views: int, s: int) -> tuple[float, dict[str, tuple[float, float]]]:
    """(mean fg MAE over views, {class: (MAE, share of fg)}) of the footprint-mean vs pixel-centre GT normal."""
    parts = make_object(cfg.object, cfg.seed)
    test_poses = scene_poses(cfg)[1]
    aov = build_scene(parts, None, aovs=AOV_SPEC)
    mat = build_scene(parts, None, aovs="alb:albedo,dd:depth", material_pass=True)
    w = int(cfg.resolution)
    breakdowns, maes = [], []
    for c2w in test_poses[:: max(1, len(test_poses) // views)][:views]:
        lo = gt_maps(aov, mat, c2w, cfg.camera_angle_x, w, w)
        hi = gt_maps(aov, mat, c2w, cfg.camera_angle_x, w * s, w * s)
        n = hi["normal"].reshape(w, s, w, s, 3).sum((1, 3))
        n = n / np.clip(np.linalg.norm(n, axis=-1, keepdims=True), 1e-8, None)
        maes.append(normal_mae(n, lo["normal"], lo["mask"])["masked"])
        breakdowns.append(normal_mae_breakdown(n, lo["normal"], lo["mask"]))
    return float(np.mean(maes)), pooled_breakdown(breakdowns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=20)
    ap.add_argument("--supersample", type=int, default=4)
    args = ap.parse_args()
    cfg = SynthConfig(resolution=128, n_train=100, n_test=200, spp=64, relight_envmaps=())
    fg, classes = footprint_floor(cfg, args.views, args.supersample)
    order = ("flat", "crease", "silhouette")
    table = markdown_table(["normal", "fg MAE (deg)", "flat faces", "creases", "silhouette band"],
                           [["pixel-footprint mean of the GT", round(fg, 2)] + [f"{classes[k][0]:.1f} ({100 * classes[k][1]:.0f}%)" for k in order]])
    body = (
        f"Scene: the gsir benchmark's '{cfg.object}' at {cfg.resolution} px, {args.views} of its {cfg.n_test} test views. The GT normal is "
        f"Mitsuba's shading normal through each pixel centre; the best a pixel-integrating renderer can give is the mean over the "
        f"pixel's footprint ({args.supersample}x{args.supersample} supersampled, foreground samples, normalised). Its error against the GT is "
        f"the metric's floor at this resolution; everything above it in the gsir section is the model's.\n\n{table}\n"
    )
    print(body)
    write_section("gsir-normal-floor", body, title="gsir: the normal metric's resolution floor at 128 px")


if __name__ == "__main__":
    main()
