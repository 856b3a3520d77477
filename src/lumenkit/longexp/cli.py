"""`lumenkit longexp synth|run|evaluate` and the demo section."""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

from lumenkit.common.device import add_device_arg
from lumenkit.common.errors import LumenkitError
from lumenkit.common.fileio import atomic_write_json


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily set torch's intra-op thread count (None/0: leave as is)."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def register(subparsers) -> None:
    p = subparsers.add_parser("longexp", help="computational long-exposure photography from a burst")
    verbs = p.add_subparsers(dest="verb", required=True)

    s = verbs.add_parser("synth", help="render a synthetic burst with its true long exposure")
    s.add_argument("-o", "--out", required=True, help="output folder (burst/, truth.png, static.png, trail_mask.png, scene.json)")
    s.add_argument("--kind", default="objects", help="objects | lights | water | pan | shake")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--width", type=int, default=320)
    s.add_argument("--height", type=int, default=240)
    s.add_argument("--frames", type=int, default=8)
    s.add_argument("--subframes", type=int, default=32, help="sub-frames per burst interval for the truth")
    s.add_argument("--exposure", type=float, default=0.5, help="burst under-exposure (linear gain)")
    s.add_argument("--bit-depth", type=int, default=16, choices=(8, 16))
    s.set_defaults(func=cmd_synth)

    r = verbs.add_parser("run", help="make a long exposure from a burst folder or video")
    r.add_argument("burst", help="folder of frames (PNG/JPEG/TIFF, 8/16-bit) or a video file")
    r.add_argument("--mode", default="foreground", choices=("foreground", "background"))
    r.add_argument("-o", "--out", required=True, help="output image (.png/.tif for 16-bit, .jpg)")
    r.add_argument("--bit-depth", type=int, default=8, choices=(8, 16))
    r.add_argument("--save-intermediates", action="store_true", help="write masks, flows and the half-res blur beside the output")
    r.add_argument("--gain", type=float, default=None, help="exposure gain on the linear result (default 1, or scene.json's gain for synthetic bursts)")
    r.add_argument("--no-select", action="store_true", help="use all frames (skip frame selection)")
    r.add_argument("--max-frames", type=int, default=None)
    r.add_argument("--no-spline", action="store_true")
    r.add_argument("--no-ramp", action="store_true")
    r.add_argument("--soft-gamma", default="auto", choices=("auto", "on", "off"),
                   help="eq. 9 soft gamma: auto = on when the burst has moving clipped highlights (default), on = always (the paper), off")
    r.add_argument("--no-soft-gamma", action="store_true", help="same as --soft-gamma off")
    r.add_argument("--no-occlusion", action="store_true", help="no occlusion check on swept-line samples")
    r.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    add_device_arg(r)
    r.set_defaults(func=cmd_run)

    e = verbs.add_parser("evaluate", help="PSNR/SSIM/trail-gap vs truth for baselines, full pipeline and ablations")
    e.add_argument("folders", nargs="*", help="synthetic burst folders from `synth` (default: synthesize --kinds x --seeds)")
    e.add_argument("--kinds", default="objects,lights,water,pan")
    e.add_argument("--seeds", default="0,1")
    e.add_argument("--width", type=int, default=320)
    e.add_argument("--height", type=int, default=240)
    e.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    e.add_argument("--threads", type=int, default=1)
    e.set_defaults(func=cmd_evaluate)


def cmd_synth(args: argparse.Namespace) -> int:
    from lumenkit.longexp.data import SynthConfig, synthesize, write_synth

    cfg = SynthConfig(kind=args.kind, seed=args.seed, width=args.width, height=args.height, frames=args.frames, subframes=args.subframes, exposure=args.exposure, bit_depth=args.bit_depth)
    burst = synthesize(cfg)
    out = write_synth(burst, args.out)
    print(f"wrote {out}/burst ({cfg.frames} frames), truth.png, static.png, trail_mask.png, scene.json; run it with: "
          f"lumenkit longexp run {out}/burst --mode {burst.params['mode']} -o out.png")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from lumenkit.common.device import resolve_device
    from lumenkit.longexp.data import read_burst
    from lumenkit.longexp.pipeline import LongExpConfig, run_longexp, save_result
    from lumenkit.longexp.render import RenderConfig

    out = Path(args.out)
    if args.bit_depth == 16 and out.suffix.lower() not in (".png", ".tif", ".tiff"):
        raise LumenkitError(f"-o {out}: 16-bit output needs .png or .tif")
    frames, names = read_burst(args.burst, args.max_frames)
    gain = args.gain
    scene = Path(args.burst).parent / "scene.json"
    if gain is None:
        gain = float(json.loads(scene.read_text()).get("gain", 1.0)) if Path(args.burst).is_dir() and scene.is_file() else 1.0
    sg = {"auto": "auto", "on": True, "off": False}["off" if args.no_soft_gamma else args.soft_gamma]
    rcfg = RenderConfig(spline=not args.no_spline, ramp=not args.no_ramp, soft_gamma=sg, occlusion=not args.no_occlusion)
    cfg = LongExpConfig(mode=args.mode, select_frames=not args.no_select, gain=gain, render=rcfg)
    t0 = time.perf_counter()
    with torch_threads(args.threads):
        res = run_longexp(frames, cfg, intermediates=args.save_intermediates, device=resolve_device(args.device))
    save_result(res, out, args.bit_depth)
    used = ", ".join(names[: res.frames_used])
    print(f"frames used: {res.frames_used} of {len(frames)} ({used}); sharp frame: {names[res.sharp_index]}; "
          f"soft gamma {'on' if res.soft_gamma else 'off'}{' (auto)' if sg == 'auto' else ''}; {time.perf_counter() - t0:.1f} s")
    if res.unaligned:
        print(f"warning: alignment failed for frames {', '.join(names[i] for i in res.unaligned)} (left unaligned)")
    print(f"wrote {out}" + (f" and {out.with_name(out.stem + '_intermediates')}/" if args.save_intermediates else ""))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from lumenkit.common.bench import markdown_table
    from lumenkit.longexp.data import read_synth
    from lumenkit.longexp.evaluate import METHODS, evaluate_burst, evaluate_suite, summary_table

    with torch_threads(args.threads):
        if args.folders:
            summary: dict = {}
            for f in args.folders:
                b = read_synth(f)
                r = evaluate_burst(b)
                summary[Path(f).name] = {m: r[m] for m in METHODS} | {"_selection": [r["_selection"]["frames"]], "_soft_gamma": [r["_soft_gamma"]]}
        else:
            try:
                seeds = tuple(int(s) for s in args.seeds.split(","))
            except ValueError as exc:
                raise LumenkitError(f"--seeds {args.seeds!r}: expected comma-separated integers") from exc
            summary = evaluate_suite(tuple(k.strip() for k in args.kinds.split(",")), seeds, args.width, args.height)
    headers, rows = summary_table(summary)
    print(markdown_table(headers, rows))
    if args.json:
        atomic_write_json(args.json, summary, indent=1, default=lambda o: float(o) if isinstance(o, np.floating) else str(o))
    return 0


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
