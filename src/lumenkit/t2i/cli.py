"""`lumenkit t2i <verb>`: data, train, sample, convert, evaluate (+ the demo section).

    lumenkit t2i data -o DIR --n 1000 --seed 0            procedural shapes images + metadata.jsonl
    lumenkit t2i train all --out DIR                      CLIP, VAE, UNet, oracle; model in DIR/model
    lumenkit t2i train unet --out DIR --steps 2000        one stage (resumes from DIR/unet_train)
    lumenkit t2i sample --prompt "a small red circle on the left on a white background"
    lumenkit t2i convert --checkpoint_path sd.safetensors --dump_path DIR
    lumenkit t2i evaluate --model DIR --n-prompts 24
"""
from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from lumenkit.common.errors import LumenkitError

SHIPPED_MODEL = Path(__file__).resolve().parent / "pretrained" / "shapes"
STAGES = ("clip", "vae", "vae-decoder", "unet", "oracle", "all")


def register(subparsers) -> None:
    p = subparsers.add_parser("t2i", help="Stable Diffusion text-to-image: shapes world, training, sampling, evaluation")
    verbs = p.add_subparsers(dest="verb", required=True)

    d = verbs.add_parser("data", help="write procedural shapes images with captions (PNG + metadata.jsonl)")
    d.add_argument("-o", "--out", required=True, help="output folder")
    d.add_argument("--n", type=int, default=1000, help="number of images")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--split", choices=("all", "train", "heldout"), default="all", help="attribute combinations to draw from")
    d.add_argument("--two-objects", dest="two_objects", type=float, default=0.0, help="probability of a second object")
    d.set_defaults(func=data_main)

    t = verbs.add_parser("train", help="train a stage (clip, vae, unet, oracle; vae-decoder fine-tunes the VAE decoder) or all; resumable")
    t.add_argument("stage", choices=STAGES)
    t.add_argument("--out", required=True, help="work folder (checkpoints in OUT/<stage>_train, components in OUT/<stage>)")
    t.add_argument("--model-dir", dest="model_dir", default=None, help="train all: where to write the model (default OUT/model)")
    t.add_argument("--steps", type=int, default=None, help="training steps (default: the stage config's)")
    t.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--max-minutes", dest="max_minutes", type=float, default=None, help="stop each stage after this wall-clock time")
    t.add_argument("--no-amp", dest="no_amp", action="store_true", help="disable bf16 autocast")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    t.add_argument("--config", default=None, help="JSON file {stage: {field: value}} of stage config overrides")
    _add_device(t)
    t.set_defaults(func=train_main)

    s = verbs.add_parser("sample", help="txt2img / img2img with CompVis txt2img.py flags")
    try:
        from lumenkit.t2i import pipeline

        pipeline.add_sample_args(s)
    except (ImportError, AttributeError):
        s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=sample_main)

    c = verbs.add_parser("convert", help="convert an SD 1.x single-file checkpoint <-> diffusers folder")
    try:
        from lumenkit.t2i import pipeline

        pipeline.add_convert_args(c)
    except (ImportError, AttributeError):
        c.add_argument("rest", nargs=argparse.REMAINDER)
    c.set_defaults(func=convert_main)

    e = verbs.add_parser("evaluate", help="prompt accuracy per sampler and CFG scale, CLIP score, Fréchet distance, VAE PSNR")
    e.add_argument("--model", default=None, help="diffusers-format model folder with clip/ and oracle/ (default: shipped model)")
    e.add_argument("--n-prompts", dest="n_prompts", type=int, default=24, help="prompts per split (seen and unseen)")
    e.add_argument("--samplers", default=None, help="comma list of sampler:steps (default: ddpm:1000,ddim:10,ddim:20,ddim:50,plms:20,plms:50,euler_a:20,euler_a:50)")
    e.add_argument("--scales", default=None, help="comma list of CFG scales for the DDIM-20 sweep (default 1,3,5,7.5)")
    e.add_argument("--scale", type=float, default=5.0, help="CFG scale of the sampler sweep")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default=None, help="write the result as JSON and markdown here (folder)")
    e.add_argument("--jobs", type=int, default=1, help="worker processes for the sweep (CPU)")
    _add_device(e)
    e.set_defaults(func=evaluate_main)


def _fit_threads_to_load() -> None:
    """On a CPU busier than its core count, use one torch thread: measured on the shared 2-core
    machine, 2 OpenMP threads under oversubscription ran the UNet ~5x slower than 1."""
    import os

    import torch

    try:
        busy = os.getloadavg()[0] > (os.cpu_count() or 1)
    except OSError:
        busy = False
    if busy:
        torch.set_num_threads(1)


def _add_device(p) -> None:
    from lumenkit.common.device import add_device_arg

    add_device_arg(p)


# ------------------------------------------------------------------------------------------ verbs
def data_main(args) -> int:
    from lumenkit.t2i.data import write_dataset

    meta = write_dataset(args.out, args.n, args.seed, args.split, args.two_objects)
    print(f"wrote {args.n} images and {meta}")
    return 0


def _stage_config(stage: str, args, overrides: dict):
    from lumenkit.t2i import train as T

    cls = T.STAGE_CONFIGS[stage]
    cfg = T.config_from_dict(cls, overrides.get(stage, {}))
    names = {f.name for f in fields(cls)}
    for key in ("steps", "batch_size", "lr", "seed", "max_minutes"):
        val = getattr(args, key)
        if val is not None and key in names:
            setattr(cfg, key, val)
    if args.no_amp:
        cfg.amp = False
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise LumenkitError("--steps and --batch-size must be >= 1")
    return cfg


def train_main(args) -> int:
    import torch

    from lumenkit.common.device import resolve_device
    from lumenkit.t2i import train as T

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    overrides = {}
    if args.config:
        f = Path(args.config)
        if not f.is_file():
            raise LumenkitError(f"--config {f}: no such file")
        try:
            overrides = json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            raise LumenkitError(f"--config {f}: not JSON ({exc})") from None
    out = Path(args.out)
    if args.stage == "all":
        stages = ("clip", "vae", "unet", "oracle")
        cfgs = {s: _stage_config(s, args, overrides) for s in stages}
        model_dir = T.run_all(out, args.model_dir, cfgs, device=device, stages=stages)
        print(f"model written to {model_dir}")
        return 0
    stage = "vae" if args.stage == "vae-decoder" else args.stage
    saved = out / f"{args.stage.replace('-', '_')}_train" / "config.json"
    if stage not in overrides and saved.is_file():
        # resuming: keep the recipe the run started with; only flags given now (--steps, ...) change it
        overrides = {**overrides, stage: json.loads(saved.read_text())}
        print(f"resuming with the recipe in {saved}")
    cfg = _stage_config(stage, args, overrides)
    if args.stage == "vae-decoder":
        cfg.decoder_only = True
    runner = {"clip": T.run_clip, "vae": T.run_vae, "unet": T.run_unet, "oracle": T.run_oracle}[stage]
    summary = runner(out, cfg, device=device)
    T.update_training_log(out, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1))
    return 0


def _pipeline_module():
    try:
        from lumenkit.t2i import pipeline
    except ImportError as exc:
        raise LumenkitError(f"lumenkit.t2i.pipeline is not available ({exc})") from None
    return pipeline


def sample_main(args) -> int:
    pipeline = _pipeline_module()
    _fit_threads_to_load()
    if getattr(args, "model", None) is None and getattr(args, "ckpt", None) is None:
        args.model = str(SHIPPED_MODEL)  # the model shipped in the package
    return pipeline.sample_main(args)


def convert_main(args) -> int:
    return _pipeline_module().convert_main(args)


def _parse_samplers(text: str | None):
    from lumenkit.t2i.evaluate import SAMPLER_SWEEP

    if not text:
        return SAMPLER_SWEEP
    out = []
    for item in text.split(","):
        name, _, steps = item.strip().partition(":")
        if name not in ("ddpm", "ddim", "plms", "euler_a") or not steps.isdigit() or int(steps) < 1:
            raise LumenkitError(f"--samplers {item!r}: want NAME:STEPS with NAME in ddpm, ddim, plms, euler_a")
        out.append((name, int(steps)))
    return tuple(out)


def evaluate_main(args) -> int:
    from lumenkit.common.device import resolve_device
    from lumenkit.common.fileio import atomic_write_json, atomic_write_text
    from lumenkit.t2i.evaluate import CFG_SWEEP, EvalConfig, evaluate, markdown_report

    if args.n_prompts < 2:
        raise LumenkitError("--n-prompts must be >= 2")
    _fit_threads_to_load()
    try:
        scales = tuple(float(s) for s in args.scales.split(",")) if args.scales else CFG_SWEEP
    except ValueError:
        raise LumenkitError(f"--scales {args.scales!r}: want a comma list of numbers") from None
    cfg = EvalConfig(n_prompts=args.n_prompts, seed=args.seed, sweep_scale=args.scale, samplers=_parse_samplers(args.samplers), scales=scales)
    result = evaluate(args.model, cfg, device=resolve_device(args.device), jobs=args.jobs)
    md = markdown_report(result)
    print(md)
    if args.out:
        out = Path(args.out)
        atomic_write_json(out / "t2i_eval.json", result)
        atomic_write_text(out / "t2i_eval.md", md + "\n")
        print(f"wrote {out / 't2i_eval.json'}")
    return 0


# ------------------------------------------------------------------------------------------ demo
DEMO_PROMPTS = (
    "a large red circle in the centre on a white background",
    "a small blue square on the left on a gray background",
    "a large yellow star at the top on a black background",
    "a small green circle on the right on a white background",
    "a large purple triangle at the bottom on a gray background",
    "a large orange square on the right on a black background",
    # unseen colour+shape pairs (held out of training)
    "a large red star in the centre on a gray background",
    "a large blue circle on the left on a white background",
)


def demo_section(outdir: Path, device) -> str:
    """A grid of prompts from the shipped model (DDIM 20 steps, CFG 5), with the oracle's verdicts."""
    import torch

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    _fit_threads_to_load()
    try:
        return _demo(outdir, device)
    finally:
        torch.set_num_threads(threads)


def _demo(outdir: Path, device) -> str:
    import torch

    from lumenkit.common import html
    from lumenkit.common.images import make_grid, write_image
    from lumenkit.t2i.data import parse_caption
    from lumenkit.t2i.evaluate import generate, load_pipeline
    from lumenkit.t2i.oracle import Oracle, describe, verdicts

    pipe = load_pipeline(SHIPPED_MODEL, device)
    oracle = Oracle.load(SHIPPED_MODEL, device)
    scenes = [parse_caption(p) for p in DEMO_PROMPTS]
    imgs = generate(pipe, list(DEMO_PROMPTS), "ddim", 20, 5.0, seed=1)
    pred = oracle.predict(imgs.to(device))
    ok = verdicts(pred, scenes)
    arr = ((imgs.permute(0, 2, 3, 1).numpy() + 1) / 2).clip(0, 1)
    grid = make_grid(list(arr), ncols=len(arr))
    write_image(outdir / "t2i_grid.png", grid)
    figs = "".join(html.figure(html.img_tag(a, width=128, alt=p), ("unseen: " if s.heldout else "") + p) for a, p, s in zip(arr, DEMO_PROMPTS, scenes))
    rows = []
    for i, (p, s) in enumerate(zip(DEMO_PROMPTS, scenes)):
        rows.append([html.escape(p), "unseen" if s.heldout else "seen", html.escape(describe(pred, i)),
                     ", ".join(k for k in ("shape", "colour", "size", "position", "background") if not bool(ok[k][i])) or "-",
                     "yes" if bool(ok["all"][i]) else "no"])
    acc = float(ok["all"].float().mean())
    log = SHIPPED_MODEL / "training_log.json"
    total = json.loads(log.read_text()).get("total_seconds") if log.is_file() else None
    note = (f"<p>The small Stable Diffusion (CLIP text tower, AutoencoderKL, UNet2DConditionModel) shipped in "
            f"<code>src/lumenkit/t2i/pretrained/shapes</code>, trained from scratch on this CPU on the procedural shapes world"
            + (f" in {total / 60:.0f} minutes" if total else "") +
            ". DDIM 20 steps, CFG scale 5, seed 1. The attribute oracle reads each image; "
            f"all attributes right on {100 * acc:.0f}% of these {len(scenes)} prompts.</p>")
    table = html.table(["prompt", "split", "oracle reads", "wrong attributes", "all right"], rows)
    return f"<h2>t2i: Stable Diffusion on the shapes world</h2>{note}<div>{figs}</div>{table}"
