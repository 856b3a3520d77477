"""GS-IR stage 1 (initial stage): 3DGS training with GS-IR's normal losses.

    lumenkit gsir train -m OUT -s DATA --iterations 30000 --eval [--start_checkpoint OUT/chkpntN.pth]

One run is described by `Stage1Config` (defaults = 3DGS / GS-IR's), printed at start and saved as
OUT/config.json. Checkpoints OUT/chkpnt<N>.pth are safe state dicts (tensors and plain containers,
loadable with torch.load(weights_only=True)) written atomically; --start_checkpoint resumes exactly
(parameters, Adam moments, densification statistics, SH degree, iteration).

`schedule="auto"` (default) scales every iteration-valued setting (densify_from_iter,
densify_until_iter, densification_interval, opacity_reset_interval, sh_up_interval,
position_lr_max_steps) by iterations / 30000 so that a short CPU run follows the shape of the
paper's 30k-iteration schedule; `schedule="paper"` keeps them as given.
"""
from __future__ import annotations

import dataclasses
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.common.fileio import atomic_path, atomic_write_json
from lumenkit.common.metrics import psnr
from lumenkit.gsir.config import PAPER_ITERATIONS, Stage1Config
from lumenkit.gsir.gaussians import GaussianModel
from lumenkit.gsir.losses import stage1_loss

__all__ = ["PAPER_ITERATIONS", "Stage1Config", "evaluate_views", "latest_checkpoint", "load_checkpoint", "load_model", "resolution_scale",
           "save_checkpoint", "training", "view_index"]


def resolution_scale(resolution: int, width: int) -> float:
    """3DGS -r/--resolution: 1, 2, 4, 8 = downscale factor; -1 = native; other = target width in px."""
    if resolution in (-1, 0, 1):
        return 1.0
    if resolution in (2, 4, 8):
        return float(resolution)
    if resolution < 0:
        raise LumenkitError(f"--resolution {resolution}: use -1, 1, 2, 4, 8 or a target width in pixels")
    return width / float(resolution)


def save_checkpoint(path: Path, gaussians: GaussianModel, iteration: int, cfg: Stage1Config) -> Path:
    """Atomic chkpnt<N>.pth: {'format', 'iteration', 'gaussians' (state dict incl. Adam), 'config'}."""
    state = {"format": "lumenkit-gsir-stage1", "iteration": int(iteration), "gaussians": gaussians.state_dict(), "config": json.loads(json.dumps(cfg.to_dict()))}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """torch.load(weights_only=True) of a chkpnt<N>.pth, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise LumenkitError(f"--start_checkpoint/--checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise LumenkitError(f"{path}: cannot be loaded as a safe checkpoint (weights_only=True): {_load_failure(path, exc)}") from None
    if not isinstance(state, dict) or state.get("format") != "lumenkit-gsir-stage1":
        raise LumenkitError(f"{path}: not a lumenkit gsir checkpoint (no 'format': 'lumenkit-gsir-stage1')")
    return state


def _load_failure(path: Path, exc: Exception) -> str:
    """Why torch.load(weights_only=True) failed, in a few words (torch's message also suggests
    weights_only=False, which is no advice for a file of unknown origin)."""
    if not zipfile.is_zipfile(path):
        return "not a torch.save file (truncated, corrupt or another format)"
    msg = str(exc)
    if "WeightsUnpickler error:" in msg:
        return msg.split("WeightsUnpickler error:", 1)[1].strip().split("\n")[0].split(". ")[0]
    return (msg.strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]


def latest_checkpoint(model_path: Path) -> Path | None:
    cks = sorted(model_path.glob("chkpnt*.pth"), key=lambda p: int("".join(c for c in p.stem if c.isdigit()) or -1))
    return cks[-1] if cks else None


def load_model(path: str | Path, device) -> tuple[GaussianModel, int, dict]:
    """A GaussianModel from a checkpoint (no optimizer), its iteration and config dict."""
    state = load_checkpoint(path, device)
    g = GaussianModel(int(state["gaussians"]["max_sh_degree"]), device)
    g.load_state_dict(state["gaussians"])
    return g, int(state["iteration"]), state.get("config", {})


def training(
    scene,
    model_path: str | Path,
    cfg: Stage1Config,
    device: torch.device,
    start_checkpoint: str | Path | None = None,
    progress: bool = True,
    log_every: int = 10,
    max_seconds: float | None = None,
) -> dict:
    """Run stage 1 on a SceneData; returns {'iterations', 'seconds', 'its_per_s', 'num_gaussians',
    'train_psnr' (last 10% mean), 'test': {...} at test iterations}. max_seconds: stop early (and
    checkpoint) once training has run that long; 'iterations' then says where it stopped."""
    from tqdm import tqdm

    from lumenkit.common.seed import make_generator, seed_everything
    from lumenkit.gsir.pipeline import render

    model_path = Path(model_path)
    run = cfg.scaled()
    seed_everything(run.seed)
    gaussians = GaussianModel(run.sh_degree, device, run.cull_backfacing_normals, run.planar_depth)
    first_iter = 0
    if start_checkpoint:  # read and checked before anything is written
        state = load_checkpoint(start_checkpoint, device)
        first_iter = int(state["iteration"])
        if first_iter >= run.iterations:
            raise LumenkitError(f"--start_checkpoint {start_checkpoint} is at iteration {first_iter} >= --iterations {run.iterations}: nothing to do")
        gaussians.load_state_dict(state["gaussians"], run.optim)
        # the flags of this run win over the checkpoint's (the same ones on an exact resume)
        gaussians.cull_backfacing_normals, gaussians.planar_depth = run.cull_backfacing_normals, run.planar_depth
    print("[gsir train] config:\n" + json.dumps(run.to_dict(), indent=2))
    model_path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(model_path / "config.json", run.to_dict())
    if not start_checkpoint:
        gaussians.create_random(run.num_points, run.init_bound, scene.extent, make_generator(run.seed))
        gaussians.training_setup(run.optim)

    bg = torch.tensor([1.0, 1.0, 1.0] if run.white_background else [0.0, 0.0, 0.0], device=device)
    images = [v.image.to(device) for v in scene.train]
    cameras = [v.camera(device) for v in scene.train]
    # the loss weights with the late-starting terms (depth normal, distortion) switched on or off
    weights_by_phase = {(dn, dist): dataclasses.replace(run.losses, lambda_depth_normal=run.losses.lambda_depth_normal * dn,
                                                       lambda_depth_normal_tv=run.losses.lambda_depth_normal_tv * dn,
                                                       lambda_distortion=run.losses.lambda_distortion * dist)
                        for dn in (False, True) for dist in (False, True)}
    ema_loss, ema_psnr, psnr_hist = None, None, []
    ckpts = set(run.checkpoint_iterations) | {run.iterations}
    t0 = time.perf_counter()
    bar = tqdm(range(first_iter + 1, run.iterations + 1), desc="gsir stage 1", disable=not progress, initial=first_iter, total=run.iterations)
    test_log: dict[int, dict] = {}
    for it in bar:
        gaussians.update_learning_rate(it)
        if it % run.sh_up_interval == 0:
            gaussians.oneup_sh_degree()
        idx = view_index(it, len(images), run.seed)
        torch.manual_seed(run.seed * 1_000_003 + it)  # split noise / random bg: exact on resume
        gt = images[idx]
        cur_bg = torch.rand(3, device=device) if run.random_background else bg
        if run.random_background:
            a = scene.train[idx].alpha.to(device)
            gt = gt + (1 - a) * (cur_bg - bg)[:, None, None]  # re-composite over the random colour
        need_dn = run.losses.lambda_normal > 0
        dn_on = need_dn and max(run.losses.lambda_depth_normal, run.losses.lambda_depth_normal_tv) > 0 and it >= run.depth_normal_from_iter
        dist_on = run.losses.lambda_distortion > 0 and it >= run.distortion_from_iter
        pkg = render(gaussians, cameras[idx], cur_bg, backend=run.backend, with_depth_normal=need_dn, depth_distortion=dist_on,
                     depth_median=run.depth_median, skip_border_normal_grad=run.skip_border_normal_grad, depth_normal_grad=dn_on,
                     depth_normal_side_rule="curvature" if run.crease_aware_depth_normal else "depth")
        weights = weights_by_phase[(dn_on, dist_on)]
        loss, terms = stage1_loss(pkg, gt, weights, gaussians.scales if run.losses.lambda_flatten > 0 else None)
        loss.backward()
        with torch.no_grad():
            p = psnr(pkg["render"], gt)
            psnr_hist.append(p)
            ema_loss = float(loss) if ema_loss is None else 0.6 * float(loss) + 0.4 * ema_loss
            ema_psnr = p if ema_psnr is None else 0.6 * p + 0.4 * ema_psnr
            if it % log_every == 0:
                bar.set_postfix(loss=f"{ema_loss:.4f}", psnr=f"{ema_psnr:.2f}", n=gaussians.num_points)
            if it < run.densify_until_iter:
                vs = pkg["viewspace_points"]
                grad = vs.grad if vs.grad is not None else torch.zeros_like(vs)
                gaussians.add_densification_stats(_ndc_grad(grad, cameras[idx]), pkg["visibility_filter"], pkg["radii"])
                if it > run.densify_from_iter and it % run.densification_interval == 0:
                    size_thr = run.max_screen_size if it > run.opacity_reset_interval else None
                    gaussians.densify_and_prune(run.densify_grad_threshold, run.min_opacity, scene.extent, size_thr)
                if it % run.opacity_reset_interval == 0 or (run.white_background and it == run.densify_from_iter):
                    gaussians.reset_opacity()
            gaussians.optimizer.step()
            gaussians.optimizer.zero_grad(set_to_none=True)
            if it in run.test_iterations and scene.test:
                test_log[it] = evaluate_views(gaussians, scene.test, bg, device, run.backend)
                print(f"\n[gsir train] iteration {it}: test PSNR {test_log[it]['psnr']:.2f} dB")
            out_of_time = max_seconds is not None and time.perf_counter() - t0 > max_seconds
            if it in ckpts or out_of_time:
                save_checkpoint(model_path / f"chkpnt{it}.pth", gaussians, it, run)
            if out_of_time:
                print(f"\n[gsir train] time budget of {max_seconds:.0f} s reached at iteration {it}")
                break
    bar.close()
    last_it = it if run.iterations > first_iter else first_iter
    seconds = time.perf_counter() - t0
    n_its = last_it - first_iter
    tail = psnr_hist[-max(1, len(psnr_hist) // 10):] if psnr_hist else [float("nan")]
    return {
        "iterations": last_it,
        "planned_iterations": run.iterations,
        "seconds": seconds,
        "its_per_s": n_its / max(seconds, 1e-9),
        "num_gaussians": gaussians.num_points,
        "train_psnr": float(np.mean(tail)),
        "first_train_psnr": float(np.mean(psnr_hist[: max(1, len(psnr_hist) // 10)])) if psnr_hist else float("nan"),
        "test": test_log,
        "gaussians": gaussians,
    }


def view_index(iteration: int, n_views: int, seed: int) -> int:
    """Training view of an iteration: each epoch of n_views iterations visits every view once, in a
    seeded random order (3DGS's viewpoint stack), a function of the iteration so resuming is exact."""
    epoch, k = divmod(iteration - 1, n_views)
    return int(np.random.default_rng([seed, epoch]).permutation(n_views)[k])


def _ndc_grad(grad: torch.Tensor, camera) -> torch.Tensor:
    """viewspace_points.grad (dL/d pixel) -> dL/d NDC (x W/2, y H/2): the unit 3DGS's
    densify_grad_threshold (2e-4) is expressed in."""
    scale = torch.tensor([camera.width * 0.5, camera.height * 0.5], device=grad.device, dtype=grad.dtype)
    return grad[:, :2] * scale


@torch.no_grad()
def evaluate_views(gaussians: GaussianModel, views, bg: torch.Tensor, device, backend: str = "auto") -> dict:
    """Mean PSNR / SSIM (common.metrics) of renders vs the views' images."""
    from lumenkit.common.metrics import ssim
    from lumenkit.gsir.pipeline import render

    ps, ss = [], []
    for v in views:
        pkg = render(gaussians, v.camera(device), bg, backend=backend, with_depth_normal=False, inference=True)
        img = pkg["render"].clamp(0, 1)
        gt = v.image.to(device)
        ps.append(psnr(img, gt))
        ss.append(ssim(img, gt))
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "views": len(views)}
