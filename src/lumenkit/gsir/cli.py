"""`lumenkit gsir synth | train | render | eval` (flags named as GS-IR / 3DGS's scripts) and the demo section."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lumenkit.common.device import add_device_arg, resolve_device
from lumenkit.common.errors import LumenkitError


def register(subparsers) -> None:
    p = subparsers.add_parser("gsir", help="GS-IR: inverse rendering with 3D Gaussian splatting")
    verbs = p.add_subparsers(dest="verb", required=True)

    s = verbs.add_parser("synth", help="render a ground-truth scene with Mitsuba 3 (NeRF/TensoIR-synthetic layout)")
    s.add_argument("-o", "--out", required=True, help="output scene folder")
    s.add_argument("--object", default="blocks", help="blocks | cup | spheres")
    s.add_argument("--resolution", type=int, default=128, help="image width = height in px")
    s.add_argument("--n_train", type=int, default=100)
    s.add_argument("--n_test", type=int, default=200)
    s.add_argument("--spp", type=int, default=64, help="path-tracing samples per pixel")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--envmap", default="sky", help="training environment map: sky | sunset | studio | dusk | overcast")
    s.add_argument("--relight", default="sunset,studio,overcast", help="comma-separated environment maps for relit test views ('' for none)")
    s.set_defaults(func=cmd_synth)

    t = verbs.add_parser("train", help="stage 1: 3DGS + GS-IR normal losses (train.py)")
    _scene_args(t)
    t.add_argument("--iterations", type=int, default=30_000)
    t.add_argument("--start_checkpoint", default=None, help="resume from chkpnt<N>.pth")
    t.add_argument("--test_iterations", type=int, nargs="*", default=[])
    t.add_argument("--checkpoint_iterations", type=int, nargs="*", default=[])
    t.add_argument("--sh_degree", type=int, default=3)
    t.add_argument("--num_points", type=int, default=100_000, help="random init points (synthetic scenes)")
    t.add_argument("--init_bound", type=float, default=1.3)
    t.add_argument("--densify_from_iter", type=int, default=500)
    t.add_argument("--densify_until_iter", type=int, default=15_000)
    t.add_argument("--densification_interval", type=int, default=100)
    t.add_argument("--opacity_reset_interval", type=int, default=3000)
    t.add_argument("--densify_grad_threshold", type=float, default=0.0002)
    t.add_argument("--position_lr_init", type=float, default=0.00016)
    t.add_argument("--position_lr_final", type=float, default=0.0000016)
    t.add_argument("--position_lr_max_steps", type=int, default=30_000)
    t.add_argument("--feature_lr", type=float, default=0.0025)
    t.add_argument("--opacity_lr", type=float, default=0.05)
    t.add_argument("--scaling_lr", type=float, default=0.005)
    t.add_argument("--rotation_lr", type=float, default=0.001)
    t.add_argument("--normal_lr", type=float, default=0.05)
    t.add_argument("--percent_dense", type=float, default=0.01)
    t.add_argument("--lambda_dssim", type=float, default=0.2)
    t.add_argument("--lambda_normal", type=float, default=1.0, help="normal consistency weight (0 = plain 3DGS)")
    t.add_argument("--normal_tv", type=float, default=5.0, help="edge-aware normal TV weight (0 = off)")
    # defaults = Stage1LossWeights' (tests/gsir/test_train.py checks; no torch import when parsing)
    t.add_argument("--lambda_depth_normal", type=float, default=0.0,
                   help="lumenkit addition: depth normal -> rendered normal consistency that moves the geometry (0 = GS-IR)")
    t.add_argument("--lambda_depth_normal_tv", type=float, default=0.0,
                   help="lumenkit addition: L1 TV of the depth normal, moving the geometry, steps >= --depth_normal_tv_max_step "
                        "(creases) left free; faces flatten without rounding their edges (0 = GS-IR)")
    t.add_argument("--depth_normal_tv_max_step", type=float, default=0.25,
                   help="largest neighbour step (L1 of the unit-normal difference) the depth-normal TV smooths")
    t.add_argument("--depth_normal_tv_order", type=int, default=1, choices=(1, 2),
                   help="depth-normal TV of the first difference (1: faces flatten, curved surfaces facet a little) "
                        "or the second (2: zero on a steadily turning normal, so curved surfaces are spared)")
    t.add_argument("--depth_normal_from_iter", type=int, default=15_000,
                   help="iteration the depth-normal terms start (of 30000; scaled with --schedule auto)")
    t.add_argument("--lambda_flatten", type=float, default=0.0, help="lumenkit addition: mean smallest Gaussian scale (0 = GS-IR)")
    t.add_argument("--lambda_distortion", type=float, default=0.0,
                   help="lumenkit addition: 2DGS's depth distortion, blend weights gather at one depth per pixel (0 = GS-IR)")
    t.add_argument("--distortion_from_iter", type=int, default=15_000,
                   help="iteration the distortion term starts (of 30000; scaled with --schedule auto; 2DGS: 3000)")
    t.add_argument("--no_depth_median", action="store_true",
                   help="lumenkit addition: normal from the unfiltered rendered depth (GS-IR median-filters it 3x3, which rounds creases)")
    t.add_argument("--crease_aware_depth_normal", action="store_true",
                   help="lumenkit addition: the depth normal differentiates towards the side with the smaller second difference, "
                        "which stays on one face at creases (GS-IR: the side with the smaller depth step)")
    t.add_argument("--cull_backfacing_normals", action="store_true",
                   help="lumenkit addition: Gaussians whose normal faces away from the camera leave the normal map (GS-IR blends all)")
    t.add_argument("--planar_depth", action="store_true",
                   help="lumenkit addition: each Gaussian adds the depth of its own plane at the pixel, not its centre depth (GS-IR)")
    t.add_argument("--random_background", action="store_true")
    t.add_argument("--schedule", default="auto", choices=("auto", "paper"), help="auto: scale densify/reset/SH/LR intervals by iterations/30000")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    r = verbs.add_parser("render", help="render test (and train) views with all attribute maps (render.py)")
    _scene_args(r)
    r.add_argument("--checkpoint", default=None, help="chkpnt<N>.pth (default: newest in -m)")
    r.add_argument("--skip_train", action="store_true")
    r.add_argument("--skip_test", action="store_true")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_render)

    e = verbs.add_parser("eval", help="nvs: PSNR/SSIM; normal: normal MAE in degrees (normal_eval.py)")
    e.add_argument("kind", choices=("nvs", "normal"))
    e.add_argument("-m", "--model_path", required=True)
    e.add_argument("-s", "--source_path", default=None, help="scene folder (needed for normal)")
    e.add_argument("--output_dir", default=None, help="render folder (default: newest <model>/test/ours_*)")
    e.add_argument("--white_background", action="store_true")
    e.set_defaults(func=cmd_eval)


def _scene_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model_path", required=True, help="output / model folder")
    p.add_argument("-s", "--source_path", required=True, help="scene folder (transforms_*.json)")
    p.add_argument("--eval", action="store_true", help="hold out the test views (3DGS --eval)")
    p.add_argument("-w", "--white_background", action="store_true")
    p.add_argument("-r", "--resolution", type=int, default=-1, help="1/2/4/8 downscale, -1 native, else target width")
    p.add_argument("--backend", default="auto", help="rasterizer backend: auto | cpu | reference | cuda")
    add_device_arg(p)


def _read(args, eval_split: bool = True):
    from lumenkit.gsir.data import read_scene

    probe = read_scene(args.source_path, white_background=args.white_background, eval=True) if args.resolution not in (-1, 0, 1) else None
    scale = 1.0
    if probe is not None:
        from lumenkit.gsir.train import resolution_scale

        scale = resolution_scale(args.resolution, probe.train[0].width)
    return read_scene(args.source_path, white_background=args.white_background, resolution_scale=scale, eval=eval_split)


def cmd_synth(args) -> int:
    from lumenkit.gsir.data import SynthConfig, synthesize_scene

    relight = tuple(x.strip() for x in args.relight.split(",") if x.strip())
    cfg = SynthConfig(object=args.object, resolution=args.resolution, n_train=args.n_train, n_test=args.n_test, spp=args.spp, seed=args.seed, envmap=args.envmap, relight_envmaps=relight)
    out = synthesize_scene(args.out, cfg)
    print(f"[gsir synth] wrote {out}")
    return 0


def config_from_args(args) -> "object":
    from lumenkit.gsir.gaussians import OptimConfig
    from lumenkit.gsir.losses import Stage1LossWeights
    from lumenkit.gsir.train import Stage1Config

    if args.iterations < 1:
        raise LumenkitError(f"--iterations {args.iterations}: must be >= 1")
    if args.sh_degree not in range(0, 4):
        raise LumenkitError(f"--sh_degree {args.sh_degree}: expected 0..3")
    if args.num_points < 1:
        raise LumenkitError(f"--num_points {args.num_points}: must be >= 1")
    if not args.depth_normal_tv_max_step > 0:
        raise LumenkitError(f"--depth_normal_tv_max_step {args.depth_normal_tv_max_step}: must be > 0")
    optim = OptimConfig(
        position_lr_init=args.position_lr_init, position_lr_final=args.position_lr_final, position_lr_max_steps=args.position_lr_max_steps,
        feature_lr=args.feature_lr, opacity_lr=args.opacity_lr, scaling_lr=args.scaling_lr, rotation_lr=args.rotation_lr,
        normal_lr=args.normal_lr, percent_dense=args.percent_dense,
    )
    return Stage1Config(
        iterations=args.iterations, sh_degree=args.sh_degree, densify_from_iter=args.densify_from_iter, densify_until_iter=args.densify_until_iter,
        densification_interval=args.densification_interval, opacity_reset_interval=args.opacity_reset_interval,
        densify_grad_threshold=args.densify_grad_threshold, num_points=args.num_points, init_bound=args.init_bound,
        depth_median=not args.no_depth_median, crease_aware_depth_normal=args.crease_aware_depth_normal, cull_backfacing_normals=args.cull_backfacing_normals, planar_depth=args.planar_depth,
        depth_normal_from_iter=args.depth_normal_from_iter, distortion_from_iter=args.distortion_from_iter,
        white_background=args.white_background, random_background=args.random_background, resolution=args.resolution,
        losses=Stage1LossWeights(lambda_dssim=args.lambda_dssim, lambda_normal=args.lambda_normal, lambda_normal_tv=args.normal_tv,
                                 lambda_depth_normal=args.lambda_depth_normal, lambda_flatten=args.lambda_flatten,
                                 lambda_distortion=args.lambda_distortion, lambda_depth_normal_tv=args.lambda_depth_normal_tv,
                                 depth_normal_tv_max_step=args.depth_normal_tv_max_step, depth_normal_tv_order=args.depth_normal_tv_order),
        optim=optim, schedule=args.schedule, seed=args.seed, backend=args.backend,
        test_iterations=list(args.test_iterations), checkpoint_iterations=list(args.checkpoint_iterations),
    )


def cmd_train(args) -> int:
    from lumenkit.gsir.train import training

    cfg = config_from_args(args)
    device = resolve_device(args.device)
    scene = _read(args, eval_split=args.eval)
    res = training(scene, args.model_path, cfg, device, start_checkpoint=args.start_checkpoint, progress=not args.quiet)
    print(f"[gsir train] {res['iterations']} iterations, {res['its_per_s']:.2f} it/s, {res['num_gaussians']} Gaussians, train PSNR {res['train_psnr']:.2f} dB; checkpoint {Path(args.model_path) / ('chkpnt%d.pth' % res['iterations'])}")
    return 0


def cmd_render(args) -> int:
    import torch

    from lumenkit.gsir.pipeline import render_set
    from lumenkit.gsir.train import latest_checkpoint, load_model

    device = resolve_device(args.device)
    model_path = Path(args.model_path)
    ck = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(model_path)
    if ck is None:
        raise LumenkitError(f"-m {model_path}: no chkpnt<N>.pth found (train first or pass --checkpoint)")
    gaussians, it, _ = load_model(ck, device)
    scene = _read(args, eval_split=True)
    bg = torch.tensor(scene.background, device=device)
    if not args.skip_test:
        if not scene.test:
            raise LumenkitError(f"{args.source_path}: no test views to render (transforms_test.json)")
        out = render_set(gaussians, scene.test, model_path / "test" / f"ours_{it}", bg, device, args.backend, progress=not args.quiet)
        print(f"[gsir render] wrote {out}")
    if not args.skip_train:
        out = render_set(gaussians, scene.train, model_path / "train" / f"ours_{it}", bg, device, args.backend, progress=not args.quiet)
        print(f"[gsir render] wrote {out}")
    return 0


def cmd_eval(args) -> int:
    from lumenkit.gsir.evaluate import eval_normal, eval_nvs, find_render_dir, write_results

    rdir = Path(args.output_dir) if args.output_dir else find_render_dir(args.model_path)
    if args.kind == "nvs":
        res = eval_nvs(rdir)
        print(f"[gsir eval nvs] {rdir}: PSNR {res['psnr']:.2f} dB, SSIM {res['ssim']:.4f} over {res['views']} views")
    else:
        if not args.source_path:
            raise LumenkitError("eval normal: -s/--source_path (the scene with GT normals) is required")
        from lumenkit.gsir.data import read_scene

        scene = read_scene(args.source_path, white_background=args.white_background)
        if not scene.test or "normal" not in scene.test[0].gt_paths:
            raise LumenkitError(f"{args.source_path}: test views carry no GT normal maps")
        res = eval_normal(rdir, scene.test)
        print(f"[gsir eval normal] {rdir}: MAE {res['mae_masked_deg']:.2f} deg (foreground), {res['mae_gsir_deg']:.2f} deg (GS-IR protocol) over {res['views']} views")
    path = write_results(Path(args.model_path), args.kind, {k: v for k, v in res.items()})
    print(f"[gsir eval] wrote {path}")
    return 0


# ============================================================================================ demo
def demo_section(outdir: Path, device) -> str:
    """Small scene (64 px, 16 train / 3 test views), 250 stage-1 iterations; GT vs render vs normals."""
    import numpy as np
    import torch

    from lumenkit.common import html
    from lumenkit.gsir.data import SynthConfig, load_gt, read_scene, synthesize_scene
    from lumenkit.gsir.evaluate import normal_mae
    from lumenkit.gsir.pipeline import normal_to_rgb, render, to_hwc
    from lumenkit.gsir.train import Stage1Config, training

    outdir = Path(outdir)
    data = outdir / "scene"
    if not (data / "transforms_test.json").is_file():
        synthesize_scene(data, SynthConfig(resolution=64, n_train=16, n_test=3, spp=16, relight_envmaps=()), progress=False)
    scene = read_scene(data)
    cfg = Stage1Config(iterations=250, num_points=3000)
    res = training(scene, outdir / "model", cfg, device, progress=False)
    g = res["gaussians"]
    bg = torch.tensor(scene.background, device=device)
    from lumenkit.common.metrics import psnr, ssim

    rows, figs = [], []
    for i, v in enumerate(scene.test):
        with torch.no_grad():
            pkg = render(g, v.camera(device), bg, inference=True)
        img = pkg["render"].clamp(0, 1)
        gtn = load_gt(v, "normal")
        pn = pkg["normal_map"].permute(1, 2, 0).cpu().numpy()
        mae = normal_mae(pn, gtn, load_gt(v, "mask"))
        rows.append([i, psnr(img, v.image), ssim(img, v.image), mae["masked"]])
        if i < 2:
            gt_rgb = np.concatenate([gtn * 0.5 + 0.5], -1) * (np.linalg.norm(gtn, axis=-1, keepdims=True) > 0)
            cells = [to_hwc(v.image), to_hwc(img), normal_to_rgb(pkg["normal_map"] * (pkg["opacity_map"] > 0.5)), gt_rgb, normal_to_rgb(pkg["normal_map_from_depth"])]
            figs.append(html.figure("".join(html.img_tag(c, width=128) for c in cells), f"test view {i}: GT | render | normal map | GT normal | normal from depth"))
    mean = ["mean", *[float(np.mean([r[k] for r in rows])) for k in (1, 2, 3)]]
    table = html.table(["view", "PSNR (dB)", "SSIM", "normal MAE (deg, foreground)"], [*rows, mean])
    return (
        "<h2>gsir: GS-IR stage 1 (3D Gaussians + normal losses)</h2>"
        f"<p>Mitsuba path-traced scene 'blocks' at 64 px, {len(scene.train)} training views; {cfg.iterations} stage-1 iterations "
        f"from {cfg.num_points} random Gaussians ({res['num_gaussians']} at the end, {res['its_per_s']:.1f} it/s). "
        "A demo-sized run: see BENCHMARKS.md for the 128 px numbers.</p>" + "".join(figs) + table
    )
