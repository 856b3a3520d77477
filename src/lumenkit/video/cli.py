"""`lumenkit video <verb>`: sample, data, train, evaluate (+ the demo section).

    lumenkit video sample --ref IMG --prompt "a red star with blue stripes moves left" --frames 8 --steps 30 \
                          --scale 8 --seed 0 -o out.mp4          # also out.gif; out_strip.png beside it
    lumenkit video sample ... --base SD_DIR --motion_adapter ADAPTER_DIR --weights videomaker.safetensors
    lumenkit video sample ... --model TRAIN_OUT                  # the folder `lumenkit video train --out` wrote
    lumenkit video data -o DIR --n 64                            # synthetic clips (PNG folders + metadata.jsonl)
    lumenkit video train --out DIR [--steps N ...]               # every VideoTrainConfig field is a flag (--help)
    lumenkit video evaluate --model TRAIN_OUT [--clips 64] -o scores.json   # the paper's Table 3 columns, unseen subjects
    lumenkit video base vae|unet|motion --out BASE               # the base model VideoMaker starts from (video.base)

The flags of sample and data come from the dataclasses SampleConfig (below) and video.data.DataConfig, those
of train from video.train.VideoTrainConfig. Every config checks its values
in __post_init__, and the model (base, adapter, weights) is loaded, before anything is written.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lumenkit import registry
from lumenkit.common.config import add_config_arguments, check, check_range, config_from_args, config_to_dict, param
from lumenkit.common.device import add_device_arg, add_threads_arg, fit_threads_to_load, resolve_device, torch_threads
from lumenkit.common.errors import LumenkitError
from lumenkit.diffusion import SAMPLERS
from lumenkit.video.data import DataConfig
from lumenkit.video.models import MOTION_PRESETS
from lumenkit.video.train import VideoTrainConfig

CLIP_SUFFIXES = (".mp4", ".gif")


# ------------------------------------------------------------------------------------------ configs
def _check_int(name: str, value, lo: int) -> None:
    check(isinstance(value, int) and not isinstance(value, bool) and value >= lo, name, value, f"must be an integer >= {lo}")


@dataclass
class SampleConfig:
    """`lumenkit video sample`: one reference image + a prompt -> a clip (.mp4 or .gif) and its frame strip."""

    ref: str = param(help="reference image of the subject (PNG/JPEG/...; resized to the model's size)")
    prompt: str = param(help="what the subject does, e.g. 'a red star with blue stripes moves left'")
    out: str = param("outputs/video/sample.mp4", "the clip: .mp4 (H.264) or .gif (looping)", short="-o")
    frames: int = param(8, "video frames F (the UNet sees F + 1 with the reference)")
    steps: int = param(30, "sampling steps (paper: DDIM 30)")
    scale: float = param(8.0, "classifier-free guidance scale w (paper: 8; 1 = no guidance)")
    seed: int = param(42, "seed of the start noise and every draw")
    sampler: str = param("ddim", "the sampler", choices=SAMPLERS)
    eta: float | None = param(None, "DDIM / Euler-a eta; unset: the sampler's default (DDIM 0, Euler-a 1)")
    negative_prompt: str = param("", "the unconditional branch's prompt (with the zeroed reference)")
    fps: float = param(8.0, "frames per second of the clip")
    strip: bool = param(True, "also write <out>_strip.png (the frames side by side) beside the clip")
    model: str | None = param(None, "a `lumenkit video train --out` folder (config.json + videomaker.safetensors); "
                                    "unset: --base/--motion_adapter/--weights, or the shipped model")
    base: str | None = param(None, "diffusers SD 1.x folder; unset: the shipped shapes model")
    motion_adapter: str | None = param(None, "diffusers MotionAdapter folder; unset: a fresh zero-initialised --motion_preset one")
    motion_preset: str = param("shapes", "size of a fresh motion adapter", choices=tuple(MOTION_PRESETS))
    weights: str | None = param(None, "trained VideoMaker weights (.safetensors); unset: the shipped ones if any, else untrained")
    pisa: bool = param(True, "personalized-injection self-attention (off: stock attention, baseline without the reference path)")

    def __post_init__(self) -> None:
        from lumenkit.common.images import read_image

        _check_int("frames", self.frames, 1)
        _check_int("steps", self.steps, 1)
        check_range("scale", self.scale, 0.0)
        check(isinstance(self.seed, int) and 0 <= self.seed < 2**32, "seed", self.seed, "must be in [0, 2^32 - 1]")
        if self.eta is not None:
            check_range("eta", self.eta, 0.0)
        check_range("fps", self.fps, 0.0, lo_open=True)
        check(Path(self.out).suffix.lower() in CLIP_SUFFIXES, "out", self.out, f"must end in {' or '.join(CLIP_SUFFIXES)}")
        check(bool(self.prompt.strip()), "prompt", self.prompt, "is empty")
        check(Path(self.ref).is_file(), "ref", self.ref, "no such image file")
        try:
            read_image(self.ref)
        except LumenkitError:
            check(False, "ref", self.ref, "not a readable image")
        if self.weights is not None:
            check(Path(self.weights).suffix == ".safetensors", "weights", self.weights, "must be a .safetensors file")
            check(Path(self.weights).is_file(), "weights", self.weights, "no such file")
        if self.model is not None:
            check(Path(self.model).is_dir(), "model", self.model, "no such folder")
            check(self.motion_adapter is None and self.weights is None, "model", self.model,
                  "a trained folder names its motion adapter and weights: --motion_adapter / --weights do not apply")

    def load(self, device):
        """The pipeline these flags name (see the flags' help)."""
        from lumenkit.video import pipeline as P

        if self.model is not None:
            return P.load_trained(self.model, base=self.base, device=device, pisa=self.pisa)
        if self.base is None and self.motion_adapter is None and self.weights is None and self.motion_preset == "shapes":
            return P.load_shipped(device, pisa=self.pisa)
        return P.VideoMakerPipeline.from_pretrained(self.base, self.motion_adapter, self.weights, preset=self.motion_preset,
                                                    device=device, pisa=self.pisa)


def register(subparsers) -> None:
    p = subparsers.add_parser("video", help="VideoMaker zero-shot customized video: sampling, synthetic world, training")
    verbs = p.add_subparsers(dest="verb", required=True)

    s = verbs.add_parser("sample", help="reference image + prompt -> clip (.mp4/.gif) + frame strip")
    add_config_arguments(s, SampleConfig)
    add_device_arg(s)
    s.set_defaults(func=sample_main)

    e = verbs.add_parser("evaluate", help="score a model on unseen subjects: identity, colour, motion, temporal, dynamic")
    add_config_arguments(e, EvaluateConfig)
    add_device_arg(e)
    e.set_defaults(func=evaluate_main)

    d = verbs.add_parser("data", help="write synthetic clips (frames, masks, reference, strip PNGs + metadata.jsonl)")
    add_config_arguments(d, DataConfig)
    d.set_defaults(func=data_main)

    t = verbs.add_parser("train", help="train VideoMaker (GIR loss) on the synthetic world; resumable",
                         description="Re-run the same command to resume. Runs on 1 CPU process or, under `accelerate launch` / "
                                     "`torchrun`, on N processes or GPUs (README, 'Training on more than one machine').")
    t.add_argument("--out", required=True, help="work folder: OUT/videomaker.safetensors, OUT/config.json, OUT/train/ (checkpoints)")
    t.add_argument("--config", default=None, help="a JSON of VideoTrainConfig fields (flags given win over it)")
    add_threads_arg(t)
    add_device_arg(t)
    add_config_arguments(t, VideoTrainConfig)
    t.set_defaults(func=train_main)

    from lumenkit.video.base import STAGE_CONFIGS

    bp = verbs.add_parser("base", help="train the video world's base model VideoMaker starts from (VAE, image UNet, "
                                       "motion adapter: the SD + AnimateDiff analogue); resumable",
                          description="Stages in order, one folder: vae, unet, motion (lumenkit.video.base). The motion stage "
                                      "writes OUT/model (an SD folder) and OUT/model/motion_adapter for `video train --base/--motion_adapter`.")
    stages = bp.add_subparsers(dest="stage", required=True, metavar="<stage>")
    for stage, cls in STAGE_CONFIGS.items():
        sp = stages.add_parser(stage, help=(cls.__doc__ or "").strip().splitlines()[0])
        sp.add_argument("--out", required=True, help="the base's work folder (starts as a copy of the shipped t2i model)")
        add_threads_arg(sp)
        add_device_arg(sp)
        add_config_arguments(sp, cls)
        sp.set_defaults(func=base_main, config_class=cls)


@dataclass
class EvaluateConfig:
    """`lumenkit video evaluate`: a model's row of the table on unseen test subjects (lumenkit.video.evaluate)."""

    model: str | None = param(None, "a `lumenkit video train --out` folder; unset: the shipped model")
    evaluators: str = param("", "folder of the instruments: '' = the shipped ones (32 px; larger clips are resized); a folder "
                                "without them is trained into (real train-subject clips, ~3 min)")
    out: str = param("outputs/video/scores.json", "the scores (JSON)", short="-o")
    clips: int = param(64, "unseen-subject clips to generate and score")
    steps: int = param(25, "DDIM sampling steps")
    scale: float = param(8.0, "classifier-free guidance scale")
    seed: int = param(0, "seed of the eval set and of the start noise")
    chunk: int = param(16, "clips per sampling batch")

    def __post_init__(self) -> None:
        for name in ("clips", "steps", "chunk"):
            _check_int(name, getattr(self, name), 1)
        check_range("scale", self.scale, 0.0)
        check(Path(self.out).suffix == ".json", "out", self.out, "must end in .json")
        if self.model is not None:
            check(Path(self.model).is_dir(), "model", self.model, "no such folder")


# ------------------------------------------------------------------------------------------ verbs
def sample_main(args) -> int:
    cfg = config_from_args(SampleConfig, args)
    device = resolve_device(args.device)
    with torch_threads(0):
        fit_threads_to_load()
        written = run_sample(cfg, device)
    for path in written:
        print(f"wrote {path}")
    return 0


def run_sample(cfg: SampleConfig, device="cpu") -> list[Path]:
    """Load the model, generate, then write the clip (and its strip). Nothing is written before the clip exists."""
    import torch

    from lumenkit.common.seed import make_generator, seed_everything
    from lumenkit.common.video import strip_path, write_video

    pipe = cfg.load(device)
    if cfg.frames > pipe.max_frames:
        raise LumenkitError(f"--frames {cfg.frames}: the motion modules take at most {pipe.max_frames} frames (+ the reference)")
    if cfg.steps > pipe.base.schedule.num_timesteps:
        raise LumenkitError(f"--steps {cfg.steps}: the model has {pipe.base.schedule.num_timesteps} training timesteps")
    if cfg.sampler == "plms" and cfg.eta not in (None, 0.0):
        raise LumenkitError(f"--eta {cfg.eta}: PLMS is deterministic and needs eta 0")
    if pipe.weights is None:
        print("note: untrained VideoMaker weights (fresh motion modules, base attention): placeholder-quality clip")
    seed_everything(cfg.seed)
    frames = pipe(cfg.ref, cfg.prompt, num_frames=cfg.frames, num_inference_steps=cfg.steps, guidance_scale=cfg.scale,
                  sampler=cfg.sampler, negative_prompt=cfg.negative_prompt, generator=make_generator(cfg.seed, "cpu"),
                  eta=cfg.eta, progress=True)
    assert isinstance(frames, torch.Tensor)
    written = [write_video(cfg.out, frames, fps=cfg.fps)]
    if cfg.strip:
        written.append(write_video(strip_path(cfg.out), frames))
    return written


def evaluate_main(args) -> int:
    from lumenkit.common.fileio import atomic_write_json
    from lumenkit.video import evaluate as E
    from lumenkit.video import pipeline as P

    cfg = config_from_args(EvaluateConfig, args)
    device = resolve_device(args.device)
    with torch_threads(0):
        fit_threads_to_load()
        pipe = P.load_trained(cfg.model, device=device) if cfg.model else P.load_shipped(device)
        size = pipe.default_size()
        ev = E.evaluators_at(cfg.evaluators)
        batch, prompts = E.eval_set(cfg.clips, cfg.seed, ev.config.frames, size)
        row, _, seconds = E.score_pipeline(pipe, ev, batch, prompts, steps=cfg.steps, scale=cfg.scale, seed=cfg.seed, chunk=cfg.chunk)
        real = E.real_clip_scores(ev, cfg.clips, cfg.seed, size=size)
    result = {"model": cfg.model or "shipped", "scores": row, "real_clip_scores": real, "sample_s_per_clip": seconds,
              "config": config_to_dict(cfg)}
    atomic_write_json(cfg.out, result)
    print(json.dumps({"scores": row, "real_clip_scores": real, "sample_s_per_clip": round(seconds, 3)}, indent=1))
    print(f"wrote {cfg.out}")
    return 0


def data_main(args) -> int:
    from lumenkit.video.data import write_dataset

    cfg = config_from_args(DataConfig, args)
    meta = write_dataset(cfg)
    print(f"wrote {cfg.n} clips and {meta}")
    return 0


def train_main(args) -> int:
    from lumenkit.common.config import load_config_file
    from lumenkit.video.train import run_train

    base = load_config_file(VideoTrainConfig, args.config) if args.config else None
    cfg = config_from_args(VideoTrainConfig, args, base=base)
    device = resolve_device(args.device)
    with torch_threads(args.threads):
        summary = run_train(Path(args.out), cfg, device=device, progress=True)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1))
    return 0


def base_main(args) -> int:
    from lumenkit.video.base import RUNNERS

    cfg = config_from_args(args.config_class, args)
    device = resolve_device(args.device)
    with torch_threads(args.threads):
        summary = RUNNERS[args.stage](Path(args.out), cfg, device=device, progress=True)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1))
    return 0


# ------------------------------------------------------------------------------------------ demo
DEMO_FRAMES, DEMO_STEPS, DEMO_SCALE, DEMO_SEED = 8, 25, 8.0, 0
DEMO_MOTIONS = ("left", "spins")


@registry.demo_section("video")
def demo_section(outdir: Path, device) -> str:
    """Zero-shot references (unseen test subjects of the synthetic world) + class-level prompts -> clips as
    animated GIFs, beside the same model and noise without the reference (zeroed, as CFG's unconditional branch)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with torch_threads(0):
        fit_threads_to_load()
        return _demo(outdir, device)


def _demo(outdir: Path, device) -> str:
    import time

    import numpy as np
    import torch

    from lumenkit.common import html
    from lumenkit.common.images import write_image
    from lumenkit.common.video import strip_path, write_video
    from lumenkit.video import pipeline as P
    from lumenkit.video.data import MOTIONS, make_batch

    t0 = time.perf_counter()
    pipe = P.load_shipped(device)
    batch = make_batch(np.random.default_rng(DEMO_SEED), 16, "test", DEMO_FRAMES, pipe.default_size())
    rows = [next(i for i in range(len(batch)) if MOTIONS[int(batch.motion_ids[i])] == m) for m in DEMO_MOTIONS
            if any(MOTIONS[int(k)] == m for k in batch.motion_ids)] or [0]
    figs, trained = [], pipe.weights is not None
    width = 4 * pipe.default_size()
    for j, i in enumerate(rows):
        ref = ((batch.references[i] + 1) / 2).clamp(0, 1)  # [3, H, W] in [0, 1]
        prompt = batch.specs[i].caption("class")
        kw = dict(num_frames=DEMO_FRAMES, num_inference_steps=DEMO_STEPS, guidance_scale=DEMO_SCALE, progress=False)
        clip = pipe(ref, prompt, generator=torch.Generator().manual_seed(DEMO_SEED + j), **kw)
        gif = write_video(outdir / f"video_{j}.gif", clip, fps=8)
        write_video(strip_path(gif), clip)
        write_image(outdir / f"video_{j}_reference.png", ref.permute(1, 2, 0).numpy())
        base_clip = pipe(ref, prompt, generator=torch.Generator().manual_seed(DEMO_SEED + j), use_reference=False, **kw)
        bgif = write_video(outdir / f"video_{j}_no_reference.gif", base_clip, fps=8)
        truth = write_video(outdir / f"video_{j}_real.gif", (batch.videos[i] + 1) / 2, fps=8)
        cells = [html.figure(html.img_tag(ref.permute(1, 2, 0).numpy(), width=width, alt="reference"), "reference (unseen subject)"),
                 html.figure(html.img_tag(gif, width=width, alt=prompt), "VideoMaker"),
                 html.figure(html.img_tag(bgif, width=width, alt=prompt), "same model and noise, no reference"),
                 html.figure(html.img_tag(truth, width=width, alt=batch.captions[i]), "a real clip of the subject")]
        figs.append(f"<div><p><b>prompt:</b> {html.escape(prompt)}</p>{''.join(cells)}</div>")
    seconds = time.perf_counter() - t0
    if trained:
        status = (f"<p>Trained VideoMaker weights <code>{html.escape(str(pipe.weights))}</code> (benchmarks/video.py's model "
                  "(e); BENCHMARKS.md \"video\" compares it with the baselines on 64 unseen subjects).</p>")
    else:
        status = ("<p class='note'><b>No trained VideoMaker weights are installed</b>: the clips come from the shipped t2i "
                  "UNet with fresh (zero-initialised) motion modules and PISA on attention never trained to use a "
                  "reference (placeholder quality).</p>")
    note = (f"<p>VideoMaker (Wu et al. 2024) on the shipped shapes-world Stable Diffusion + AnimateDiff motion modules: "
            f"the reference image is VAE-encoded and appended as the last frame with no noise; personalized-injection "
            f"self-attention lets every frame attend to it. The prompt names the class only; colour and pattern must come "
            f"from the reference. DDIM {DEMO_STEPS} steps, CFG {DEMO_SCALE:g} (unconditional branch: zeroed reference + "
            f"empty prompt), {DEMO_FRAMES} frames at {pipe.default_size()} px, seed {DEMO_SEED}; {seconds:.0f} s on this "
            f"machine.</p>")
    return f"<h2>video: VideoMaker zero-shot customized video</h2>{status}{note}{''.join(figs)}"
