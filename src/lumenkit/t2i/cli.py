"""`lumenkit t2i <verb>`: data, train, sample, convert, evaluate (+ the demo section).

    lumenkit t2i data -o DIR --n 1000 --seed 0            procedural shapes images + metadata.jsonl
    lumenkit t2i train all --out DIR                      CLIP, VAE, UNet, oracle; model in DIR/model
    lumenkit t2i train unet --out DIR --steps 2000        one stage (resumes from DIR/unet_train)
    lumenkit t2i sample --prompt "a small red circle on the left on a white background"
    lumenkit t2i convert --checkpoint_path sd.safetensors --dump_path DIR
    lumenkit t2i evaluate --model DIR --n-prompts 24

The flags of data, sample, convert and evaluate are generated from the dataclass configs below
(DataConfig, SampleConfig with its ModelSource, ConvertConfig, EvaluateCommand with evaluate.EvalConfig):
each default lives once, and each config checks its values in __post_init__, before any file is written.
`sample` keeps the flag names of CompVis scripts/txt2img.py.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lumenkit import registry
from lumenkit.common.config import add_config_arguments, check, check_range, config_from_args, config_to_dict, param, read_json
from lumenkit.common.device import add_device_arg, fit_threads_to_load, resolve_device, torch_threads
from lumenkit.common.errors import LumenkitError
from lumenkit.diffusion import SAMPLERS
from lumenkit.t2i.data import SPLITS
from lumenkit.t2i.evaluate import EvalConfig
from lumenkit.t2i.models import PRESETS
from lumenkit.t2i.pipeline import SHIPPED_MODEL, Text2Image, load_pipeline



# ------------------------------------------------------------------------------------------ configs
def _check_count(name: str, value: int, lo: int) -> None:
    check(isinstance(value, int) and not isinstance(value, bool) and value >= lo, name, value, f"must be an integer >= {lo}")


def _check_seed(value: int) -> None:
    check(isinstance(value, int) and 0 <= value < 2**32, "seed", value, "must be in [0, 2^32 - 1]")


@dataclass
class DataConfig:
    """`lumenkit t2i data`: procedural shapes images with captions (data.write_dataset)."""

    out: str = param(help="output folder", short="-o")
    n: int = param(1000, "number of images")
    seed: int = param(0, "seed of the scenes and their jitter")
    split: str = param("all", "attribute combinations to draw from (heldout = the unseen colour+shape pairs)", choices=SPLITS)
    two_objects: float = param(0.0, "probability of a second object", flag="two-objects")

    def __post_init__(self) -> None:
        _check_count("n", self.n, 1)
        _check_seed(self.seed)
        check_range("two-objects", self.two_objects, 0.0, 1.0)


@dataclass
class ModelSource:
    """Which Stable Diffusion to load: a diffusers folder (--model) or an original single file (--ckpt)."""

    model: str | None = param(None, "diffusers-format SD folder; unset: the shipped shapes model")
    ckpt: str | None = param(None, "original-layout SD 1.x .safetensors/.ckpt (loaded safely)")
    tokenizer: str | None = param(None, "CLIP tokenizer folder for a --ckpt that carries none (real SD files)")
    preset: str | None = param(None, "architecture of --ckpt; unset: the one stored in the file, else sd15", choices=tuple(PRESETS))
    use_ema: bool = param(False, "--ckpt: take the UNet's model_ema weights (CompVis training checkpoints)")

    def __post_init__(self) -> None:
        check(not (self.model and self.ckpt), "ckpt", self.ckpt, "--model and --ckpt exclude each other: give one")
        if not self.ckpt:
            check(self.tokenizer is None, "tokenizer", self.tokenizer, "applies to --ckpt only (a --model folder has its tokenizer/)")
            check(self.preset is None, "preset", self.preset, "applies to --ckpt only")
            check(not self.use_ema, "use_ema", True, "applies to --ckpt only")

    @property
    def name(self) -> str:
        return str(self.ckpt or self.model or SHIPPED_MODEL)

    def load(self, device) -> Text2Image:
        return load_pipeline(self.model, device, ckpt=self.ckpt, tokenizer=self.tokenizer, preset=self.preset, use_ema=self.use_ema)


@dataclass
class SampleConfig:
    """`lumenkit t2i sample`: the flags of CompVis scripts/txt2img.py (+ img2img's --init-img/--strength,
    --negative_prompt, --sampler)."""

    prompt: str | None = param(None, "the prompt to render")
    from_file: str | None = param(None, "a text file with one prompt per line", flag="from-file")
    negative_prompt: str = param("", "what to steer away from (replaces the empty unconditional prompt)")
    outdir: str = param("outputs/txt2img-samples", "images go to OUTDIR/samples/NNNNN.png, grids to OUTDIR/grid-NNNN.png")
    skip_grid: bool = param(False, "do not write a grid")
    skip_save: bool = param(False, "do not write individual samples")
    ddim_steps: int = param(50, "number of sampling steps")
    plms: bool = param(False, "use PLMS sampling (same as --sampler plms)")
    sampler: str = param("ddim", "the sampler", choices=SAMPLERS)
    ddim_eta: float = param(0.0, "DDIM eta (0: deterministic; used by --sampler ddim only)")
    n_iter: int = param(2, "sample this often")
    H: int | None = param(None, "image height in pixels, a multiple of 8; unset: the model's size")
    W: int | None = param(None, "image width in pixels, a multiple of 8; unset: the model's size")
    n_samples: int = param(3, "images per prompt per iteration (the batch size)")
    n_rows: int = param(0, "columns in the grid (0: n_samples)")
    scale: float = param(7.5, "classifier-free guidance scale (1: no guidance)")
    seed: int = param(42, "seed (reproducible sampling)")
    init_img: str | None = param(None, "img2img: start from this image", flag="init-img")
    strength: float = param(0.75, "img2img: noise strength in [0, 1] (1 destroys the init image)")
    source: ModelSource = field(default_factory=ModelSource)

    def __post_init__(self) -> None:
        check(not (self.prompt and self.from_file), "from-file", self.from_file, "--prompt and --from-file exclude each other")
        if not (self.prompt or self.from_file):
            raise LumenkitError("give --prompt TEXT or --from-file FILE")
        check(not (self.plms and self.sampler not in ("ddim", "plms")), "sampler", self.sampler, "--plms asks for plms: give one of them")
        if self.plms:
            self.sampler = "plms"
        _check_count("ddim_steps", self.ddim_steps, 1)
        _check_count("n_iter", self.n_iter, 1)
        _check_count("n_samples", self.n_samples, 1)
        _check_count("n_rows", self.n_rows, 0)
        for name in ("H", "W"):
            v = getattr(self, name)
            check(v is None or (isinstance(v, int) and v > 0 and v % 8 == 0), name, v, "H, W must be positive multiples of 8")
        check_range("ddim_eta", self.ddim_eta, 0.0)
        check_range("scale", self.scale)
        check_range("strength", self.strength, 0.0, 1.0)
        _check_seed(self.seed)

    def prompts(self) -> list[str]:
        if not self.from_file:
            return [self.prompt]
        f = Path(self.from_file)
        if not f.is_file():
            raise LumenkitError(f"--from-file {f}: no such file")
        prompts = [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not prompts:
            raise LumenkitError(f"--from-file {f}: no prompts in it")
        return prompts


@dataclass
class ConvertConfig:
    """`lumenkit t2i convert`: the flags of diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py
    (a subset), both directions."""

    checkpoint_path: str = param(help="input: an SD 1.x .safetensors/.ckpt, or a diffusers folder")
    dump_path: str = param(help="output: a folder (diffusers layout) or a .safetensors/.ckpt file (original layout)")
    tokenizer: str | None = param(None, "CLIP tokenizer folder for a checkpoint that carries none")
    preset: str | None = param(None, "architecture of the input checkpoint; unset: the one stored in the file, else sd15", choices=tuple(PRESETS))
    extract_ema: bool = param(False, "take the UNet's EMA weights from a CompVis training checkpoint")

    def __post_init__(self) -> None:
        src = Path(self.checkpoint_path)
        check(src.exists(), "checkpoint_path", self.checkpoint_path, "no such file or folder")
        if src.is_dir():
            check(self.tokenizer is None and self.preset is None and not self.extract_ema, "checkpoint_path", self.checkpoint_path,
                  "a diffusers folder carries its tokenizer and architecture: --tokenizer, --preset, --extract_ema apply to single files")
        check(Path(self.dump_path).resolve() != src.resolve(), "dump_path", self.dump_path, "is the input itself")


@dataclass
class EvaluateCommand:
    """`lumenkit t2i evaluate`: the model, where the report goes, and the measurements (EvalConfig)."""

    model: str | None = param(None, "diffusers-format model folder with clip/ and oracle/; unset: the shipped model")
    out: str | None = param(None, "write the result as t2i_eval.json and t2i_eval.md into this folder; unset: print only")
    jobs: int = param(1, "worker processes for the sweep (CPU)")
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _check_count("jobs", self.jobs, 1)


def register(subparsers) -> None:
    p = subparsers.add_parser("t2i", help="Stable Diffusion text-to-image: shapes world, training, sampling, evaluation")
    verbs = p.add_subparsers(dest="verb", required=True)

    d = verbs.add_parser("data", help="write procedural shapes images with captions (PNG + metadata.jsonl)")
    add_config_arguments(d, DataConfig)
    d.set_defaults(func=data_main)

    register_train(verbs)

    s = verbs.add_parser("sample", help="txt2img / img2img with CompVis txt2img.py flags")
    add_config_arguments(s, SampleConfig)
    add_device_arg(s)
    s.set_defaults(func=sample_main)

    c = verbs.add_parser("convert", help="convert an SD 1.x single-file checkpoint <-> diffusers folder")
    add_config_arguments(c, ConvertConfig)
    c.set_defaults(func=convert_main)

    e = verbs.add_parser("evaluate", help="prompt accuracy per sampler and CFG scale, CLIP score, Fréchet distance, VAE PSNR")
    add_config_arguments(e, EvaluateCommand)
    add_device_arg(e)
    e.set_defaults(func=evaluate_main)


# ------------------------------------------------------------------------------------------ verbs
def data_main(args) -> int:
    from lumenkit.t2i.data import write_dataset

    cfg = config_from_args(DataConfig, args)
    meta = write_dataset(cfg.out, cfg.n, cfg.seed, cfg.split, cfg.two_objects)
    print(f"wrote {cfg.n} images and {meta}")
    return 0


# ------------------------------------------------------------------------------------------ train
TRAIN_STAGES = {
    "clip": "CLIP (image + text towers), contrastive",
    "vae": "the VAE (AutoencoderKL)",
    "vae-decoder": "fine-tune the VAE's decoder only (latents unchanged)",
    "unet": "the UNet, noise prediction on frozen-VAE latents and frozen-CLIP text",
    "oracle": "the attribute oracle used by `t2i evaluate`",
    "all": "every stage in turn, then the diffusers-layout model folder",
}


def _train_io_args(p: argparse.ArgumentParser) -> None:
    """Flags of every train form; SUPPRESS defaults so they may stand before or after the stage."""
    S = argparse.SUPPRESS
    p.add_argument("--out", default=S, help="work folder (checkpoints in OUT/<stage>_train, components in OUT/<stage>)")
    p.add_argument("--config", default=S, help="training recipe JSON {stage: {field: value}}, e.g. configs/t2i_shapes.json")
    p.add_argument("--model_dir", default=S, help="train all: where to write the model (default OUT/model)")
    p.add_argument("--threads", type=int, default=S, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default=S, help="auto (CUDA when present), cpu, cuda or cuda:N")


def register_train(verbs) -> None:
    from lumenkit.t2i import train as T

    t = verbs.add_parser("train", help="train a stage or all of them (resumable); `train --config RECIPE --out DIR` = all",
                         description="Runs on 1 CPU process or, under `accelerate launch` / `torchrun`, on N processes or GPUs.")
    _train_io_args(t)
    stages = t.add_subparsers(dest="stage", metavar="<stage>")
    for stage, what in TRAIN_STAGES.items():
        sp = stages.add_parser(stage, help=what)
        _train_io_args(sp)
        if stage == "all":
            add_config_arguments(sp, T.StageConfig, group="given flags override every stage (unset: each stage's default)", show_defaults=False)
        else:
            cls = T.STAGE_CONFIGS[stage.replace("vae-decoder", "vae")]
            add_config_arguments(sp, cls, exclude=("decoder_only",))
    t.set_defaults(func=train_main)


def _stage_base(stage: str, out: Path, recipe: dict) -> dict:
    """The config a single stage starts from: the recipe's, or when resuming the run's saved one."""
    from lumenkit.t2i import train as T

    key = stage.replace("vae-decoder", "vae")
    if key in recipe:
        return recipe[key]
    saved = out / f"{stage.replace('-', '_')}_train" / "config.json"
    if saved.is_file():
        # resuming: keep the recipe the run started with; only flags given now (--steps, ...) change it
        print(f"resuming with the recipe in {saved}")
        d = read_json(saved)
        T.stage_config_from_dict(T.STAGE_CONFIGS[key], d, source=str(saved))
        return d
    return {}


def train_main(args) -> int:
    from lumenkit.common.device import resolve_device, torch_threads
    from lumenkit.t2i import train as T

    if not hasattr(args, "out"):
        raise LumenkitError("t2i train: --out is required (the work folder)")
    out, stage = Path(args.out), args.stage or "all"
    recipe = T.load_recipe(args.config) if hasattr(args, "config") else {}
    device = resolve_device(getattr(args, "device", "auto"))
    if stage == "all":
        cfgs = {s: config_from_args(T.STAGE_CONFIGS[s], args, base=config_to_dict(T.stage_config_from_dict(T.STAGE_CONFIGS[s], recipe.get(s, {}))))
                for s in ("clip", "vae", "unet", "oracle")}
    else:
        key = stage.replace("vae-decoder", "vae")
        base = config_to_dict(T.stage_config_from_dict(T.STAGE_CONFIGS[key], _stage_base(stage, out, recipe)))
        cfgs = {key: config_from_args(T.STAGE_CONFIGS[key], args, base=base, **({"decoder_only": True} if stage == "vae-decoder" else {}))}
    with torch_threads(getattr(args, "threads", 0)):
        if stage == "all":
            model_dir = T.run_all(out, getattr(args, "model_dir", None), cfgs, device=device, stages=("clip", "vae", "unet", "oracle"))
            if T.is_main_process():
                print(f"model written to {model_dir}")
            return 0
        runner = {"clip": T.run_clip, "vae": T.run_vae, "unet": T.run_unet, "oracle": T.run_oracle}[key]
        summary = runner(out, cfgs[key], device=device)
    if T.is_main_process():
        T.update_training_log(out, summary)
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1))
    return 0


def _load_init_image(path: str, height: int | None, width: int | None, mult: int) -> np.ndarray:
    """Read an init image as [H, W, 3] in [0, 1], resized to HxW (default: its size rounded down to `mult`)."""
    import cv2

    from lumenkit.common.images import read_image

    img = read_image(path, keep_alpha=False)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    h, w = img.shape[:2]
    H = height or max(mult, h - h % mult)
    W = width or max(mult, w - w % mult)
    if (H, W) != (h, w):
        img = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA if W < w else cv2.INTER_CUBIC)
    return np.clip(img, 0, 1).astype(np.float32)


def sample_main(args) -> int:
    cfg = config_from_args(SampleConfig, args)
    device = resolve_device(args.device)
    with torch_threads(0):
        fit_threads_to_load()
        run_sample(cfg, device)
    return 0


def run_sample(cfg: SampleConfig, device="cpu") -> list[Path]:
    """txt2img (or img2img with --init-img): PNGs with prompt and parameters in tEXt, plus a grid.

    Everything that can fail on the user's input (prompts file, model, init image, sizes, steps) is
    checked before the first file is written; the output folders are created by the first write."""
    from lumenkit.common.images import make_grid, write_image
    from lumenkit.common.seed import make_generator, seed_everything

    prompts = cfg.prompts()
    pipe = cfg.source.load(device)
    init = _load_init_image(cfg.init_img, cfg.H, cfg.W, pipe.size_multiple) if cfg.init_img else None
    H = cfg.H or (init.shape[0] if init is not None else pipe.default_size())
    W = cfg.W or (init.shape[1] if init is not None else pipe.default_size())
    mult = pipe.size_multiple
    if H % mult or W % mult:
        raise LumenkitError(f"--H {H} --W {W}: this model needs multiples of {mult}")
    if cfg.ddim_steps > pipe.schedule.num_timesteps:
        raise LumenkitError(f"--ddim_steps {cfg.ddim_steps}: the model has {pipe.schedule.num_timesteps} training timesteps")

    outdir = Path(cfg.outdir)
    sample_dir = outdir / "samples"
    base_count = len(list(sample_dir.glob("*.png")))
    grid_count = len(list(outdir.glob("grid-*.png")))
    seed_everything(cfg.seed)
    generator = make_generator(cfg.seed, "cpu")
    sampler, model_name = cfg.sampler, cfg.source.name
    written, grid_images = [], []
    for it in range(cfg.n_iter):
        for prompt in prompts:
            images = pipe(
                prompt,
                negative_prompt=cfg.negative_prompt or None,
                num_inference_steps=cfg.ddim_steps,
                guidance_scale=cfg.scale,
                eta=cfg.ddim_eta if sampler == "ddim" else None,
                sampler=sampler,
                height=H,
                width=W,
                num_images_per_prompt=cfg.n_samples,
                generator=generator,
                init_image=init,
                strength=cfg.strength,
            )
            for j, img in enumerate(images):
                meta = {
                    "prompt": prompt,
                    "negative_prompt": cfg.negative_prompt,
                    "sampler": sampler,
                    "steps": str(cfg.ddim_steps),
                    "scale": str(cfg.scale),
                    "eta": str(cfg.ddim_eta),
                    "seed": str(cfg.seed),
                    "iteration": str(it),
                    "index_in_batch": str(j),
                    "size": f"{W}x{H}",
                    "model": model_name,
                    "software": "lumenkit t2i sample",
                }
                if init is not None:
                    meta.update(init_img=str(cfg.init_img), strength=str(cfg.strength))
                if not cfg.skip_save:
                    written.append(write_image(sample_dir / f"{base_count:05}.png", img, metadata=meta))
                    base_count += 1
                grid_images.append(img)
    if not cfg.skip_grid:
        grid = make_grid(list(grid_images), ncols=cfg.n_rows if cfg.n_rows > 0 else cfg.n_samples)
        meta = {"prompts": json.dumps(prompts), "sampler": sampler, "steps": str(cfg.ddim_steps), "scale": str(cfg.scale),
                "seed": str(cfg.seed), "model": model_name, "software": "lumenkit t2i sample"}
        gp = write_image(outdir / f"grid-{grid_count:04}.png", grid, metadata=meta)
        written.append(gp)
        print(f"grid: {gp}")
    print(f"{len(written) - (not cfg.skip_grid)} samples in {sample_dir}")
    return written


def convert_main(args) -> int:
    """`lumenkit t2i convert`: single file -> diffusers folder, or diffusers folder -> single file."""
    cfg = config_from_args(ConvertConfig, args)
    src, dst = Path(cfg.checkpoint_path), Path(cfg.dump_path)
    if src.is_dir():
        pipe = Text2Image.from_pretrained(src, "cpu")
    else:
        pipe = Text2Image.from_single_file(src, "cpu", config=cfg.preset, tokenizer=cfg.tokenizer, use_ema=cfg.extract_ema)
    if dst.suffix in (".safetensors", ".ckpt"):
        pipe.save_single_file(dst)
    else:
        pipe.save_pretrained(dst)
    print(f"wrote {dst}")
    return 0


def evaluate_main(args) -> int:
    from lumenkit.common.fileio import atomic_write_json, atomic_write_text
    from lumenkit.t2i.evaluate import evaluate, markdown_report

    cmd = config_from_args(EvaluateCommand, args)
    device = resolve_device(args.device)
    with torch_threads(0):
        fit_threads_to_load()
        result = evaluate(cmd.model, cmd.eval, device=device, jobs=cmd.jobs)
    md = markdown_report(result)
    print(md)
    if cmd.out:
        out = Path(cmd.out)
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


@registry.demo_section("t2i")
def demo_section(outdir: Path, device) -> str:
    """A grid of prompts from the shipped model (DDIM 20 steps, CFG 5), with the oracle's verdicts."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with torch_threads(0):
        fit_threads_to_load()
        return _demo(outdir, device)


def _demo(outdir: Path, device) -> str:
    from lumenkit.common import html
    from lumenkit.common.images import make_grid, write_image
    from lumenkit.t2i.data import parse_caption
    from lumenkit.t2i.evaluate import generate
    from lumenkit.t2i.oracle import Oracle, describe, verdicts

    pipe = load_pipeline(None, device)
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
    note = ("<p>The small Stable Diffusion (CLIP text tower, AutoencoderKL, UNet2DConditionModel) shipped in "
            "<code>src/lumenkit/t2i/pretrained/shapes</code>, trained from scratch on this CPU on the procedural shapes world"
            + (f" in {total / 60:.0f} minutes" if total else "") +
            ". DDIM 20 steps, CFG scale 5, seed 1. The attribute oracle reads each image; "
            f"all attributes right on {100 * acc:.0f}% of these {len(scenes)} prompts.</p>")
    table = html.table(["prompt", "split", "oracle reads", "wrong attributes", "all right"], rows)
    return f"<h2>t2i: Stable Diffusion on the shapes world</h2>{note}<div>{figs}</div>{table}"
