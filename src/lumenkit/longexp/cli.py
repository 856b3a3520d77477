"""`lumenkit longexp synth|run|evaluate` and the demo section. Flags come from the configs
(SynthConfig, LongExpConfig + RenderConfig, RunConfig, EvalConfig); the CLI only parses and calls."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from lumenkit import registry
from lumenkit.common.config import add_config_arguments, config_from_args, config_to_dict, read_json
from lumenkit.common.device import add_device_arg, torch_threads
from lumenkit.common.fileio import atomic_write_json

SOFT_GAMMA = {"auto": "auto", "on": True, "off": False}
# the switches' spellings in the README and earlier releases (the generated --no_x work as well)
_LEGACY_OFF = {"--no-select": ("select_frames", "--no_select"), "--no-spline": ("render__spline", "--no_spline"),
               "--no-ramp": ("render__ramp", "--no_ramp"), "--no-occlusion": ("render__occlusion", "--no_occlusion")}


def register(subparsers) -> None:
    from lumenkit.longexp.data import SynthConfig
    from lumenkit.longexp.evaluate import EvalConfig
    from lumenkit.longexp.pipeline import LongExpConfig, RunConfig

    p = subparsers.add_parser("longexp", help="computational long-exposure photography from a burst")
    verbs = p.add_subparsers(dest="verb", required=True)

    s = verbs.add_parser("synth", help="render a synthetic burst with its true long exposure")
    s.add_argument("-o", "--out", required=True, help="output folder (burst/, truth.png, static.png, trail_mask.png, scene.json)")
    add_config_arguments(s, SynthConfig)
    s.set_defaults(func=cmd_synth)

    r = verbs.add_parser("run", help="make a long exposure from a burst folder or video")
    r.add_argument("burst", help="folder of frames (PNG/JPEG/TIFF, 8/16-bit) or a video file")
    add_config_arguments(r, RunConfig)
    add_config_arguments(r, LongExpConfig, group="method")
    for flag, (dest, same) in _LEGACY_OFF.items():
        r.add_argument(flag, dest=dest, action="store_false", default=argparse.SUPPRESS, help=f"same as {same}")
    r.add_argument("--soft-gamma", dest="soft_gamma", choices=tuple(SOFT_GAMMA), default=argparse.SUPPRESS,
                   help="eq. 9 soft gamma: auto = on when the burst has moving clipped highlights (default), on = always (the paper), off")
    r.add_argument("--no-soft-gamma", dest="soft_gamma", action="store_const", const="off", default=argparse.SUPPRESS, help="same as --soft-gamma off")
    add_device_arg(r)
    r.set_defaults(func=cmd_run)

    e = verbs.add_parser("evaluate", help="PSNR/SSIM/trail-gap vs truth for baselines, full pipeline and ablations")
    e.add_argument("folders", nargs="*", help="synthetic burst folders from `synth` (default: synthesize --kinds x --seeds)")
    add_config_arguments(e, EvalConfig)
    e.set_defaults(func=cmd_evaluate)


def cmd_synth(args: argparse.Namespace) -> int:
    from lumenkit.longexp.data import SynthConfig, synthesize, write_synth

    cfg = config_from_args(SynthConfig, args)
    burst = synthesize(cfg)
    out = write_synth(burst, args.out)
    print(f"wrote {out}/burst ({cfg.frames} frames), truth.png, static.png, trail_mask.png, scene.json; run it with: "
          f"lumenkit longexp run {out}/burst --mode {burst.params['mode']} -o out.png")
    return 0


def run_configs(args: argparse.Namespace):
    """(RunConfig, LongExpConfig) from the flags, validated; gain from the burst's scene.json when not given."""
    from lumenkit.longexp.pipeline import LongExpConfig, RunConfig, with_render

    run = config_from_args(RunConfig, args)
    over = {}
    scene = Path(args.burst).parent / "scene.json"
    if "gain" not in vars(args) and Path(args.burst).is_dir() and scene.is_file():
        over["gain"] = float(read_json(scene, what="scene file").get("gain", 1.0))
    # base: the defaults as a whole, so that one render flag keeps the others' (and soft gamma 'auto')
    cfg = config_from_args(LongExpConfig, args, base=config_to_dict(LongExpConfig()), **over)
    if "soft_gamma" in vars(args):
        cfg = with_render(cfg, soft_gamma=SOFT_GAMMA[args.soft_gamma])
    return run, cfg


def cmd_run(args: argparse.Namespace) -> int:
    from lumenkit.common.device import resolve_device
    from lumenkit.longexp.data import read_burst
    from lumenkit.longexp.pipeline import run_longexp, save_result

    run, cfg = run_configs(args)  # every value checked before anything is read or written
    device = resolve_device(args.device)
    frames, names = read_burst(args.burst, run.max_frames)
    t0 = time.perf_counter()
    with torch_threads(run.threads):
        res = run_longexp(frames, cfg, intermediates=run.save_intermediates, device=device)
    save_result(res, run.out, run.bit_depth)
    used = ", ".join(names[: res.frames_used])
    auto = " (auto)" if cfg.render.soft_gamma == "auto" else ""
    print(f"frames used: {res.frames_used} of {len(frames)} ({used}); sharp frame: {names[res.sharp_index]}; "
          f"soft gamma {'on' if res.soft_gamma else 'off'}{auto}; {time.perf_counter() - t0:.1f} s")
    if res.unaligned:
        print(f"warning: alignment failed for frames {', '.join(names[i] for i in res.unaligned)} (left unaligned)")
    out = run.out
    print(f"wrote {out}" + (f" and {out.with_name(out.stem + '_intermediates')}/" if run.save_intermediates else ""))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from lumenkit.common.bench import markdown_table
    from lumenkit.longexp.data import read_synth
    from lumenkit.longexp.evaluate import METHODS, EvalConfig, evaluate_burst, evaluate_suite, summary_table

    cfg = config_from_args(EvalConfig, args)
    with torch_threads(cfg.threads):
        if args.folders:
            summary: dict = {}
            for f in args.folders:
                r = evaluate_burst(read_synth(f))
                summary[Path(f).name] = {m: r[m] for m in METHODS} | {"_selection": [r["_selection"]["frames"]], "_soft_gamma": [r["_soft_gamma"]]}
        else:
            summary = evaluate_suite(cfg.kinds, cfg.seeds, cfg.width, cfg.height)
    headers, rows = summary_table(summary)
    print(markdown_table(headers, rows))
    if cfg.json:
        atomic_write_json(cfg.json, summary, indent=1, default=lambda o: float(o) if isinstance(o, np.floating) else str(o))
    return 0


@registry.demo_section("longexp")
def demo_section(outdir: Path, device) -> str:
    """A synthetic light-trail burst and a moving-object burst: naive average, ours, truth, numbers."""
    from lumenkit.common import html
    from lumenkit.common.images import make_grid, write_image
    from lumenkit.longexp.data import SynthConfig, synthesize, write_synth
    from lumenkit.longexp.evaluate import to_display, trail_gap
    from lumenkit.common.metrics import psnr, ssim
    from lumenkit.longexp.pipeline import LongExpConfig, aligned_average, finish, naive_average, prepare

    outdir = Path(outdir)
    figs, rows = [], []
    with torch_threads(1):
        for kind in ("lights", "objects", "pan"):
            b = synthesize(SynthConfig(kind=kind, seed=0))
            write_synth(b, outdir / kind)
            cfg = LongExpConfig(mode=b.params["mode"], select_frames=False, gain=b.params["gain"])
            t0 = time.perf_counter()
            prep = prepare(b.frames, cfg)
            ours = finish(prep, cfg).image
            secs = time.perf_counter() - t0
            naive = naive_average(b.frames, cfg.gain)
            aligned = aligned_average(prep, cfg.gain)
            imgs = [to_display(naive), to_display(ours), to_display(b.truth)]
            grid = make_grid(imgs, ncols=3)
            write_image(outdir / f"{kind}_naive_ours_truth.png", grid)
            figs.append(html.figure(html.img_tag(grid, width=960), f"{kind} ({cfg.mode} blur): naive average | our result | true long exposure"))
            td = to_display(b.truth)
            for name, img in (("naive average", naive), ("aligned average", aligned), ("ours (full pipeline)", ours)):
                d = to_display(img)
                rows.append([kind, name, round(psnr(d, td), 2), round(ssim(d, td), 4), round(trail_gap(img, b.truth, b.static, b.trail_mask), 3), round(secs, 2) if name.startswith("ours") else ""])
    intro = (
        "<p>Synthetic 8-frame bursts (320x240, under-exposed by 1 stop, shot/read noise, hand shake) with the true long "
        "exposure rendered from 225 sub-frames. Ours: KLT + RANSAC alignment, DIS flow (grey and colour channels, with a "
        "constant-velocity temporal prior) turned into swept line vectors, ramp-weighted spline blur at half resolution (linear-light buffers, soft "
        "gamma where moving highlights clip) with an occlusion check on swept samples, M_flow compositing with the sharpest frame.</p>"
    )
    table = html.table(["scene", "method", "PSNR dB", "SSIM", "trail gap", "seconds"], rows)
    return "<h2>longexp: computational long exposure</h2>" + intro + "".join(figs) + table
