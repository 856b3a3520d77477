"""GS-IR evaluation: novel-view PSNR/SSIM and normal MAE (degrees) against ground truth.

Protocols (reported with every number):
* nvs: PSNR and SSIM (Gaussian 11x11, common.metrics) of renders vs GT composited on the training
  background, averaged over test views, sRGB [0, 1]. No LPIPS (no pretrained nets offline).
* normal: mean angular error in degrees between rendered world normals and GT world normals,
  (a) "masked": over GT foreground pixels only; (b) "gsir": GS-IR's normal_eval.py protocol, over ALL
  pixels with the background set to (0, 0, 1) on both sides (dilutes the error by the background).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lumenkit.common.errors import LumenkitError
from lumenkit.common.fileio import atomic_write_json


def angular_error_deg(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-pixel angle in degrees between [H, W, 3] normal fields (zero vectors give 90 deg)."""
    p = pred / np.clip(np.linalg.norm(pred, axis=-1, keepdims=True), 1e-8, None)
    g = gt / np.clip(np.linalg.norm(gt, axis=-1, keepdims=True), 1e-8, None)
    return np.degrees(np.arccos(np.clip((p * g).sum(-1), -1.0, 1.0)))


def normal_mae(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """{'masked': MAE over mask, 'gsir': MAE over all pixels with background (0, 0, 1) on both sides}."""
    mask = mask.astype(bool)
    err = angular_error_deg(pred, gt)
    bgn = np.array([0.0, 0.0, 1.0], np.float32)
    p2 = np.where(mask[..., None], pred, bgn)
    g2 = np.where(mask[..., None], gt, bgn)
    return {"masked": float(err[mask].mean()) if mask.any() else float("nan"), "gsir": float(angular_error_deg(p2, g2).mean())}


def fg_pixel_classes(gt: np.ndarray, mask: np.ndarray, band: int = 2, crease_deg: float = 20.0) -> dict[str, np.ndarray]:
    """Split the GT foreground [H, W] into disjoint diagnostic classes (bool [H, W] each):
    'silhouette' = within `band` pixels of the background (outside the mask erosion by a
    (2 band + 1)^2 square); 'crease' = the rest where the GT normal [H, W, 3] turns by more than
    `crease_deg` degrees to some pixel of its 3x3 neighbourhood (edges between faces); 'flat' = the rest."""
    from scipy.ndimage import binary_erosion

    mask = mask.astype(bool)
    inner = binary_erosion(mask, np.ones((2 * band + 1, 2 * band + 1), bool), border_value=0)
    H, W = mask.shape
    gp = np.pad(gt, ((1, 1), (1, 1), (0, 0)), mode="edge")
    cos_min = np.ones((H, W), np.float32)
    for dy in range(3):
        for dx in range(3):
            cos_min = np.minimum(cos_min, (gp[dy:dy + H, dx:dx + W] * gt).sum(-1))
    crease = inner & (cos_min < np.cos(np.radians(crease_deg)))
    return {"silhouette": mask & ~inner, "crease": crease, "flat": inner & ~crease}


def normal_mae_breakdown(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict[str, tuple[float, int]]:
    """{class: (sum of angular errors in degrees, pixel count)} over fg_pixel_classes (sums, so that
    the caller can pool pixels over views)."""
    err = angular_error_deg(pred, gt)
    return {k: (float(err[m].sum()), int(m.sum())) for k, m in fg_pixel_classes(gt, mask).items()}


def pooled_breakdown(breakdowns) -> dict[str, tuple[float, float]]:
    """Pool normal_mae_breakdown results of several views: {class: (MAE in degrees over all its pixels,
    share of all foreground pixels)}."""
    sums: dict[str, list[float]] = {}
    for b in breakdowns:
        for k, (err_sum, n) in b.items():
            acc = sums.setdefault(k, [0.0, 0])
            acc[0] += err_sum
            acc[1] += n
    n_fg = sum(n for _, n in sums.values())
    return {k: (e / max(n, 1), n / max(n_fg, 1)) for k, (e, n) in sums.items()}


def find_render_dir(model_path: str | Path, split: str = "test") -> Path:
    """The newest <model>/<split>/ours_<iteration> folder written by `lumenkit gsir render`."""
    base = Path(model_path) / split
    dirs = [d for d in base.glob("ours_*") if d.is_dir()] if base.is_dir() else []
    if not dirs:
        raise LumenkitError(f"-m {model_path}: no {split}/ours_<iteration> renders; run `lumenkit gsir render -m {model_path} -s DATA --skip_train` first")
    return max(dirs, key=lambda d: int(re.sub(r"\D", "", d.name) or -1))


def _files(folder: Path) -> list[Path]:
    from lumenkit.common.images import list_images

    if not folder.is_dir():
        raise LumenkitError(f"{folder}: missing (render output incomplete; re-run `lumenkit gsir render`)")
    return list_images(folder, (".png",))


def eval_nvs(render_dir: Path) -> dict:
    """PSNR / SSIM of render_dir/renders vs render_dir/gt (same file names)."""
    from lumenkit.common.images import read_image
    from lumenkit.common.metrics import psnr, ssim

    per = {}
    for f in _files(render_dir / "renders"):
        g = render_dir / "gt" / f.name
        if not g.is_file():
            raise LumenkitError(f"{g}: ground truth missing for {f}")
        a, b = read_image(f, keep_alpha=False), read_image(g, keep_alpha=False)
        per[f.name] = {"psnr": psnr(a, b), "ssim": ssim(a, b)}
    if not per:
        raise LumenkitError(f"{render_dir / 'renders'}: no renders")
    return {
        "protocol": "PSNR/SSIM (Gaussian 11x11) on sRGB [0,1], GT composited on the training background; no LPIPS",
        "psnr": float(np.mean([v["psnr"] for v in per.values()])),
        "ssim": float(np.mean([v["ssim"] for v in per.values()])),
        "views": len(per),
        "per_view": per,
    }


def read_normal_png(path: Path) -> np.ndarray:
    from lumenkit.common.images import read_image

    img = read_image(path)
    n = img[..., :3] * 2 - 1
    zero = (img[..., :3] == 0).all(-1)
    n[zero] = 0
    return n


def eval_normal(render_dir: Path, test_views) -> dict:
    """Normal MAE (degrees) of render_dir/normal/NNNNN.png vs the test views' GT normal maps."""
    from lumenkit.gsir.data import load_gt

    files = _files(render_dir / "normal")
    if len(files) != len(test_views):
        raise LumenkitError(f"{render_dir / 'normal'}: {len(files)} normal maps for {len(test_views)} test views (render with the same -s DATA)")
    per = {}
    for f, v in zip(files, test_views):
        gt = load_gt(v, "normal")
        mask = load_gt(v, "mask") if "mask" in v.gt_paths else np.linalg.norm(gt, axis=-1) > 0.5
        pred = read_normal_png(f)
        if pred.shape != gt.shape:
            raise LumenkitError(f"{f}: size {pred.shape[:2]} differs from GT {gt.shape[:2]} (render at the data's resolution)")
        per[f.name] = normal_mae(pred, gt, mask)
    return {
        "protocol": "mean angular error in degrees; masked = GT foreground only; gsir = all pixels, background (0,0,1) on both sides",
        "mae_masked_deg": float(np.nanmean([v["masked"] for v in per.values()])),
        "mae_gsir_deg": float(np.mean([v["gsir"] for v in per.values()])),
        "views": len(per),
        "per_view": per,
    }


def write_results(model_path: Path, name: str, results: dict) -> Path:
    path = Path(model_path) / f"results_{name}.json"
    atomic_write_json(path, results)
    return path


def surface_distance_local(shape: str, p: np.ndarray) -> np.ndarray:
    """Distance-like residual [...] of local points p [..., 3] to a Mitsuba primitive in its own frame
    (sphere: unit at the origin; cube: [-1, 1]^3; cylinder: radius 1, z in [0, 1], open; disk / rectangle:
    radius 1 / [-1, 1]^2 at z = 0). Local units (the parts' to_world may scale)."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    if shape == "sphere":
        return np.abs(np.linalg.norm(p, axis=-1) - 1)
    if shape == "cube":
        return np.abs(np.abs(p).max(-1) - 1)
    r = np.hypot(x, y)
    if shape == "cylinder":
        return np.abs(r - 1) + np.clip(-z, 0, None) + np.clip(z - 1, 0, None)
    if shape == "disk":
        return np.abs(z) + np.clip(r - 1, 0, None)
    if shape == "rectangle":
        return np.abs(z) + np.clip(np.abs(x) - 1, 0, None) + np.clip(np.abs(y) - 1, 0, None)
    raise ValueError(f"unknown shape {shape!r}")


def part_labels(parts, points: np.ndarray, normals: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Which primitive each GT surface point belongs to: [H, W] int, -1 outside mask, else 2 i for
    part i, or 2 i + 1 for the inner side of an open cylinder (the GT normal [H, W, 3], which faces the
    camera, points towards its axis). parts: lumenkit.gsir.data.Part list; points [H, W, 3] world."""
    d = []
    for part in parts:
        inv = np.linalg.inv(part.to_world)
        local = points @ inv[:3, :3].T + inv[:3, 3]
        d.append(surface_distance_local(part.shape, local))
    idx = np.argmin(np.stack(d), axis=0)
    labels = 2 * idx
    for i, part in enumerate(parts):
        if part.shape != "cylinder":
            continue
        axis = part.to_world[:3, 2] / np.linalg.norm(part.to_world[:3, 2])
        rel = points - part.to_world[:3, 3]
        radial = rel - (rel @ axis)[..., None] * axis
        inner = (idx == i) & ((normals * radial).sum(-1) < 0)
        labels[inner] = 2 * i + 1
    return np.where(mask.astype(bool), labels, -1)
