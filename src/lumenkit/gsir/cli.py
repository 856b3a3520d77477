"""`lumenkit gsir synth | train | bake | render | eval` (flags named as GS-IR / 3DGS's scripts, generated from gsir/config.py)
and the demo section. Each command validates its configs before it writes anything."""
from __future__ import annotations

from pathlib import Path

from lumenkit import registry
from lumenkit.common.config import add_config_arguments, config_from_args
from lumenkit.common.device import add_device_arg, resolve_device
from lumenkit.common.errors import LumenkitError
from lumenkit.gsir.config import EVAL_KINDS, EvalOptions, RenderOptions, SceneOptions, Stage1Config, SynthConfig, TrainOptions


def register(subparsers) -> None:
    """Flags come from the dataclasses in gsir/config.py (each default and help text lives there once)."""
    p = subparsers.add_parser("gsir", help="GS-IR: inverse rendering with 3D Gaussian splatting")
    verbs = p.add_subparsers(dest="verb", required=True)

    s = verbs.add_parser("synth", help="render a ground-truth scene with Mitsuba 3 (NeRF/TensoIR-synthetic layout)")
    s.add_argument("-o", "--out", required=True, help="output scene folder")
    add_config_arguments(s, SynthConfig)
    s.set_defaults(func=cmd_synth)

    t = verbs.add_parser("train", help="stage 1: 3DGS + GS-IR normal losses (train.py)")
    add_config_arguments(t, SceneOptions)
    add_config_arguments(t, Stage1Config, group="training (Stage1Config, saved as <model>/config.json)")
    add_config_arguments(t, TrainOptions)
    add_device_arg(t)
    t.set_defaults(func=cmd_train)

    _register_bake(verbs)

    r = verbs.add_parser("render", help="render test (and train) views with all attribute maps (render.py)")
    add_config_arguments(r, SceneOptions)
    add_config_arguments(r, RenderOptions)
    add_device_arg(r)
    r.set_defaults(func=cmd_render)

    e = verbs.add_parser("eval", help="nvs: PSNR/SSIM; normal: normal MAE in degrees (normal_eval.py)")
    e.add_argument("kind", choices=EVAL_KINDS, help="nvs: PSNR/SSIM of the renders; normal: normal MAE in degrees against the scene's GT normals")
    add_config_arguments(e, EvalOptions)
    e.set_defaults(func=cmd_eval)


def _read(source_path: str, *, white_background: bool, resolution: int = -1, eval_split: bool = True, layout: str = "auto"):
    """read_scene at the -r/--resolution of 3DGS (a factor or a target width), saying which layout it read."""
    from lumenkit.gsir.data import read_scene

    scale = 1.0
    if resolution not in (-1, 1, 2, 4, 8):  # a target width: the scale needs the native width
        from lumenkit.gsir.train import resolution_scale

        probe = read_scene(source_path, white_background=white_background, eval=True, layout=layout)
        scale = resolution_scale(resolution, probe.train[0].width)
    scene = read_scene(source_path, white_background=white_background, resolution_scale=scale, eval=eval_split, layout=layout)
    print(f"[gsir] {source_path}: {scene.layout} layout ({scene.layout_note})")
    return scene


def cmd_synth(args) -> int:
    cfg = config_from_args(SynthConfig, args)  # validated before anything is written (or mitsuba imported)
    from lumenkit.gsir.synth import synthesize_scene

    out = synthesize_scene(args.out, cfg)
    print(f"[gsir synth] wrote {out}")
    return 0


def cmd_train(args) -> int:
    where = config_from_args(SceneOptions, args)
    cfg = config_from_args(Stage1Config, args)
    opts = config_from_args(TrainOptions, args)
    device = resolve_device(args.device)
    from lumenkit.gsir.rasterize import check_backend
    from lumenkit.gsir.train import training

    check_backend(cfg.backend, device)
    scene = _read(where.source_path, white_background=cfg.white_background, resolution=cfg.resolution, eval_split=where.eval, layout=where.layout)
    res = training(scene, where.model_path, cfg, device, start_checkpoint=opts.start_checkpoint, progress=not opts.quiet)
    print(f"[gsir train] {res['iterations']} iterations, {res['its_per_s']:.2f} it/s, {res['num_gaussians']} Gaussians, train PSNR {res['train_psnr']:.2f} dB; checkpoint {Path(where.model_path) / ('chkpnt%d.pth' % res['iterations'])}")
    return 0


def _register_bake(verbs) -> None:
    """`lumenkit gsir bake`: flags from bake.BakeConfig; --preset picks GS-IR's synthetic or unbounded defaults."""
    from lumenkit.gsir.bake import BAKE_PRESETS, BakeConfig

    presets = "; ".join(f"{name}: --bound {c.bound} --occlu_res {c.occlu_res} --occlusion {c.occlusion}" for name, c in BAKE_PRESETS.items())
    b = verbs.add_parser("bake", help="bake the occlusion volumes of a stage-1 model (baking.py) into <model>/occlusion_volumes.safetensors")
    b.add_argument("-m", "--model_path", required=True, help="model folder (reads its newest chkpnt<N>.pth, writes occlusion_volumes.safetensors)")
    b.add_argument("--checkpoint", default=None, help="stage-1 chkpnt<N>.pth (default: the newest in -m)")
    b.add_argument("--preset", choices=tuple(BAKE_PRESETS), default="synthetic", help=f"defaults of the flags below ({presets}); given flags win")
    add_config_arguments(b, BakeConfig, group="baking (BakeConfig; defaults shown are the synthetic preset's)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_arg(b)
    b.set_defaults(func=cmd_bake)


def cmd_bake(args) -> int:
    import dataclasses

    from lumenkit.gsir.bake import BAKE_PRESETS, OCCLUSION_FILE, BakeConfig, bake_to_file
    from lumenkit.gsir.rasterize import check_backend
    from lumenkit.gsir.train import latest_checkpoint, load_model

    cfg = config_from_args(BakeConfig, args, base=dataclasses.asdict(BAKE_PRESETS[args.preset]))
    device = resolve_device(args.device)
    check_backend(cfg.backend, device)
    model_path = Path(args.model_path)
    ck = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(model_path)
    if ck is None:
        raise LumenkitError(f"-m {model_path}: no stage-1 checkpoint chkpnt<N>.pth; bake runs after stage 1 "
                            f"(lumenkit gsir train -m {model_path} -s SCENE) or takes --checkpoint")
    gaussians, iteration, _ = load_model(ck, device)
    out = model_path / OCCLUSION_FILE
    res = bake_to_file(gaussians, out, cfg, progress=not args.quiet, source=str(ck))
    st = res.stats
    print(f"[gsir bake] {ck.name} (iteration {iteration}): {st['points']} of {cfg.occlu_res}^3 grid points baked, {st['renders']} cube faces "
          f"at {cfg.face_res}px in {st['seconds']:.1f} s = {st['points_per_s']:.2f} points/s; wrote {out}")
    return 0


def cmd_render(args) -> int:
    where = config_from_args(SceneOptions, args)
    opts = config_from_args(RenderOptions, args)
    device = resolve_device(args.device)
    import torch

    from lumenkit.gsir.pipeline import render_set
    from lumenkit.gsir.rasterize import check_backend
    from lumenkit.gsir.train import latest_checkpoint, load_model

    check_backend(opts.backend, device)
    model_path = Path(where.model_path)
    ck = Path(opts.checkpoint) if opts.checkpoint else latest_checkpoint(model_path)
    if ck is None:
        raise LumenkitError(f"-m {model_path}: no chkpnt<N>.pth found (train first or pass --checkpoint)")
    gaussians, it, _ = load_model(ck, device)
    scene = _read(where.source_path, white_background=opts.white_background, resolution=opts.resolution, layout=where.layout)
    if not opts.skip_test and not scene.test:
        raise LumenkitError(f"{where.source_path}: no test views to render (transforms_test.json or test_XXX folders)")
    bg = torch.tensor(scene.background, device=device)
    for split, skip, views in (("test", opts.skip_test, scene.test), ("train", opts.skip_train, scene.train)):
        if not skip:
            out = render_set(gaussians, views, model_path / split / f"ours_{it}", bg, device, opts.backend, progress=not opts.quiet)
            print(f"[gsir render] wrote {out}")
    return 0


def cmd_eval(args) -> int:
    opts = config_from_args(EvalOptions, args, kind=args.kind)
    from lumenkit.gsir.evaluate import eval_normal, eval_nvs, find_render_dir, write_results

    rdir = Path(opts.output_dir) if opts.output_dir else find_render_dir(opts.model_path)
    if opts.kind == "nvs":
        res = eval_nvs(rdir)
        print(f"[gsir eval nvs] {rdir}: PSNR {res['psnr']:.2f} dB, SSIM {res['ssim']:.4f} over {res['views']} views")
    else:
        scene = _read(opts.source_path, white_background=opts.white_background, layout=opts.layout)
        if not scene.test or "normal" not in scene.test[0].gt_paths:
            other = "nerf" if scene.layout == "tensoir" else "tensoir"
            raise LumenkitError(f"{opts.source_path}: the {scene.layout} layout's test views carry no GT normal maps (--layout {other}?)")
        res = eval_normal(rdir, scene.test)
        print(f"[gsir eval normal] {rdir}: MAE {res['mae_masked_deg']:.2f} deg (foreground), {res['mae_gsir_deg']:.2f} deg (GS-IR protocol) over {res['views']} views")
    path = write_results(Path(opts.model_path), opts.kind, res)
    print(f"[gsir eval] wrote {path}")
    return 0


# ============================================================================================ demo
@registry.demo_section("gsir")
def demo_section(outdir: Path, device) -> str:
    """Small scene (64 px, 16 train / 3 test views), 250 stage-1 iterations; GT vs render vs normals."""
    import numpy as np
    import torch

    from lumenkit.common import html
    from lumenkit.gsir.data import load_gt, read_scene
    from lumenkit.gsir.evaluate import normal_mae
    from lumenkit.gsir.pipeline import normal_to_rgb, render, to_hwc
    from lumenkit.gsir.synth import synthesize_scene
    from lumenkit.gsir.train import training

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
