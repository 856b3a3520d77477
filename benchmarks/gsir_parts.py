"""Where the normal error of the gsir benchmark's models lies, per primitive of the synthetic object.

    .venv/bin/python benchmarks/gsir_parts.py [--every 1]

Re-evaluates the final checkpoints that benchmarks/gsir.py wrote (outputs/gsir_bench/full/model_<method>)
on the test views: each GT foreground pixel is assigned to the primitive its GT surface point lies on
(`evaluate.part_labels`; an open cylinder's inner side is its own row), and the rendered-normal MAE is
pooled per primitive. Writes the gsir-parts section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gsir import METHODS  # noqa: E402

from lumenkit.common.bench import markdown_table, write_section  # noqa: E402
from lumenkit.gsir.data import load_gt, read_scene  # noqa: E402
from lumenkit.gsir.evaluate import angular_error_deg, part_labels  # noqa: E402
from lumenkit.gsir.geometry import backproject_depth  # noqa: E402
from lumenkit.gsir.pipeline import render  # noqa: E402
from lumenkit.gsir.synth import make_object  # noqa: E402
from lumenkit.gsir.train import load_model  # noqa: E402


# readable names of the primitives, in make_object's order (others: the shape's name)
PART_NAMES = {"blocks": ["slab", "pillar", "pillar", "lintel", "metal ball", "cup wall", "cup bottom"],
              "cup": ["cup wall", "cup bottom", "metal ball", "base slab"]}


def gt_points(view) -> np.ndarray:
    """[H, W, 3] world positions of the GT depth."""
    cam = view.camera("cpu")
    P = backproject_depth(torch.from_numpy(load_gt(view, "depth")).double(), cam).reshape(3, -1)
    R, t = cam.viewmat[:3, :3].double(), cam.viewmat[:3, 3:4].double()
    return (R.T @ (P - t)).T.reshape(view.height, view.width, 3).numpy()


def latest_checkpoint(model_dir: Path) -> Path:
    """The checkpoint named in the method's result file (its final iteration)."""
    tag = model_dir.name.removeprefix("model_")
    res = json.loads((model_dir.parent / f"result_{tag}.json").read_text())
    return model_dir / f"chkpnt{res['iterations']}.pth"


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT / "outputs" / "gsir_bench" / "blocks128"))
    ap.add_argument("--runs", default=str(ROOT / "outputs" / "gsir_bench" / "full"), help="benchmarks/gsir.py's output folder")
    ap.add_argument("--every", type=int, default=1, help="use every k-th test view")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if not any((Path(args.runs) / f"result_{t}.json").is_file() for t in METHODS):
        raise SystemExit(f"gsir_parts: no trained models in {args.runs}: run benchmarks/gsir.py first "
                         "(make bench runs it before this script)")
    scene = read_scene(args.data)
    meta = json.loads((Path(args.data) / "scene.json").read_text())
    parts = make_object(meta["object"], meta["seed"])
    names = {}
    for i, p in enumerate(parts):
        name = PART_NAMES.get(meta["object"], [])[i] if i < len(PART_NAMES.get(meta["object"], [])) else p.shape
        names[2 * i] = f"{i}: {name} ({p.shape}" + (", outer side)" if p.shape == "cylinder" else ")")
        names[2 * i + 1] = f"{i}: {name} ({p.shape}, inner side)"
    views = scene.test[:: args.every]
    gt_normals = [load_gt(v, "normal") for v in views]  # read once, used by every method
    labels = [part_labels(parts, gt_points(v), n, load_gt(v, "mask")) for v, n in zip(views, gt_normals)]
    tags = [t for t in METHODS if (Path(args.runs) / f"result_{t}.json").is_file()]
    sums = {t: {} for t in tags}
    for tag in tags:
        ckpt = latest_checkpoint(Path(args.runs) / f"model_{tag}")
        g, it, _ = load_model(ckpt, "cpu")
        for v, lab, gt_n in zip(views, labels, gt_normals):
            pkg = render(g, v.camera("cpu"), torch.zeros(3), inference=True, with_depth_normal=False)
            err = angular_error_deg(pkg["normal_map"].permute(1, 2, 0).numpy(), gt_n)
            for k in np.unique(lab[lab >= 0]):
                acc = sums[tag].setdefault(int(k), [0.0, 0])
                acc[0] += float(err[lab == k].sum())
                acc[1] += int((lab == k).sum())
        print(f"[gsir parts] {tag} ({ckpt.name}) done", flush=True)
    keys = sorted(sums[tags[0]])
    n_fg = sum(n for _, n in sums[tags[0]].values())
    rows = []
    for k in keys:
        share = sums[tags[0]][k][1] / n_fg
        row = [names[k], f"{100 * share:.1f}%"]
        for t in tags:
            s, n = sums[t][k]
            row += [f"{s / n:.1f}", f"{s / n_fg:.2f}"]
        rows.append(row)
    rows.append(["all", "100%"] + [x for t in tags for x in (f"{sum(s for s, _ in sums[t].values()) / n_fg:.2f}", "")])
    header = ["primitive", "share of fg pixels"] + [h for t in tags for h in (f"{METHODS[t]}: MAE (deg)", "of the fg MAE (deg)")]
    body = (
        f"The final checkpoints of the gsir section's run ({args.runs}), re-rendered on {len(views)} test views of '{meta['object']}'. "
        "Each GT foreground pixel belongs to the primitive its GT surface point lies on (numbered as in "
        f"`lumenkit.gsir.data.make_object('{meta['object']}')`); an open cylinder's inner side (GT normal towards its axis) is its own row. 'of the fg MAE' = the part's share x its MAE: the rows add "
        "up to the fg normal MAE.\n\n" + markdown_table(header, rows)
    )
    print(body)
    write_section("gsir-parts", body, title="gsir: normal error per primitive of the benchmark object")


if __name__ == "__main__":
    main()
