"""The video world's base model: what VideoMaker and its baselines start from (the SD 1.5 + AnimateDiff analogue).

The paper fine-tunes a text-to-video model that already draws its world: SD 1.5's VAE and UNet model web
images, AnimateDiff's motion modules model web motion, and SD's CLIP knows "moves left". The shipped shapes
t2i model (lumenkit.t2i) knows none of the video world (measured, benchmarks/video.py): its VAE, trained on
four solid shapes over white, black or gray, round-trips the video world's unseen clips at 15 dB PSNR and
the identity reader then recognises 9 % of them (94 % of the real clips); its UNet never saw a pattern or
a textured background; its tokenizer has no word for "hexagon", "stripes" or "moves" (they reach the frozen
text tower as byte tokens). VideoMaker's trainable set (spatial self-attention and motion modules) cannot
fix any of that, so every model trained on the shapes model drew blobs with motion at chance.

This module builds the base in three resumable stages in one folder WORK (an SD 1.x diffusers folder the
whole time: tokenizer/, text_encoder/, clip/, scheduler/ are the shipped model's, unchanged and frozen):

1. ``vae``: the shipped AutoencoderKL trained further on frames and references of TRAIN-identity clips
   (lumenkit.t2i.train.run_vae with finetune; scaling_factor recomputed) -> WORK/vae.
2. ``unet``: the shipped UNet2DConditionModel trained further, all weights, on single frames of
   train-identity clips with their captions, full or class-level at random (run_unet with finetune,
   EMA) -> WORK/unet. This is the image model of the world.
3. ``motion``: the AnimateDiff stage, text-to-video: the video trainer (lumenkit.video.train, conditioning
   none, captions full or class-level at random) trains a fresh motion adapter together with the spatial attention (attn1 and attn2:
   the frozen text tower gives the motion words byte-token features that only a trained cross-attention
   can map to motion; SD's CLIP needs no such help) in WORK/motion_train; exported as WORK/model, an SD
   folder whose unet/ has the trained attention, with WORK/model/motion_adapter (a diffusers MotionAdapter).

Test identities are never used, in any stage (the zero-shot split). Then
``lumenkit video train --base WORK/model --motion_adapter WORK/model/motion_adapter ...`` trains VideoMaker or a baseline.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lumenkit.common.config import check, param
from lumenkit.common.errors import LumenkitError
from lumenkit.common.fileio import atomic_dir, atomic_write_json
from lumenkit.t2i.train import UnetConfig, VaeConfig
from lumenkit.video.train import VideoTrainConfig

STAGES = ("vae", "unet", "motion")
COPIED = ("tokenizer", "text_encoder", "clip", "scheduler", "vae", "unet")  # from the starting SD folder
REFERENCE_SHARE = 0.25  # share of the VAE's training images that are references (subject on grey)
MOTION_RUN = "motion_train"  # WORK/<this>: the motion stage's video-trainer folder


@dataclass
class BaseVaeConfig(VaeConfig):
    """Stage 1 (`lumenkit video base vae`): the shipped VAE trained further on the video world."""

    finetune: bool = True
    steps: int = 2000
    lr: float = 5e-4
    warmup_steps: int = 50
    mixed_precision: Literal["no", "bf16", "fp16"] = param("no", "bf16 autocast ran 9x slower than fp32 on this CPU (no bf16 instructions)")


@dataclass
class BaseUnetConfig(UnetConfig):
    """Stage 2 (`lumenkit video base unet`): the shipped UNet trained further on the video world's frames."""

    finetune: bool = True
    steps: int = 2000
    lr: float = 3e-4
    warmup_steps: int = 100
    n_latents: int = 16384
    mixed_precision: Literal["no", "bf16", "fp16"] = param("no", "bf16 autocast ran 15x slower than fp32 on this CPU (no bf16 instructions)")
    size: int = param(64, "frame size in px (the video trainer's --size)")


@dataclass
class BaseMotionConfig(VideoTrainConfig):
    """Stage 3 (`lumenkit video base motion`): text-to-video with a fresh motion adapter (the AnimateDiff stage)."""

    conditioning: Literal["pisa", "none", "ip_adapter"] = "none"
    captions: Literal["class", "full", "mixed"] = "mixed"
    train_cross_attention: bool = True
    p_ref_drop: float = 0.0
    p_both_drop: float = 0.1
    steps: int = 1000
    batch_size: int = 4


STAGE_CONFIGS = {"vae": BaseVaeConfig, "unet": BaseUnetConfig, "motion": BaseMotionConfig}


# ------------------------------------------------------------------------------------------ data
def world_images(size: int = 64):
    """images(rng, n) for run_vae: n images [n, 3, size, size] in [-1, 1], each one frame of a fresh
    train-identity clip, REFERENCE_SHARE of them that clip's reference instead."""
    from lumenkit.video.data import make_batch

    def images(rng: np.random.Generator, n: int) -> torch.Tensor:
        b = make_batch(rng, n, "train", 2, size)
        frame = torch.from_numpy(rng.integers(0, 2, n))
        x = b.videos[torch.arange(n), frame]
        use_ref = torch.from_numpy(rng.random(n) < REFERENCE_SHARE)
        return torch.where(use_ref[:, None, None, None], b.references, x)

    return images


def world_latents(size: int = 64, chunk: int = 256):
    """latents(vae, n, seed, device, progress) for run_unet: one frame of each of n train-identity clips
    encoded by `vae` -> (mean, std [n, C, h, w], caption index [n], captions); a clip's caption is its full
    or its class-level one (half each)."""
    from tqdm import tqdm

    from lumenkit.video.data import make_batch

    @torch.no_grad()
    def latents(vae, n: int, seed: int, device, progress: bool = True):
        rng = np.random.default_rng([seed, 2412])
        means, stds, captions = [], [], []
        for i in tqdm(range(0, n, chunk), desc="encode frames", disable=not progress, mininterval=5.0):
            k = min(chunk, n - i)
            b = make_batch(rng, k, "train", 2, size)
            x = b.videos[torch.arange(k), torch.from_numpy(rng.integers(0, 2, k))]
            post = vae.encode(x.to(device)).latent_dist
            means.append(post.mean.float().cpu())
            stds.append(post.std.float().cpu())
            modes = rng.random(k) < 0.5
            captions += [s.caption("full" if m else "class") for s, m in zip(b.specs, modes)]
        unique = list(dict.fromkeys(captions))
        index = {c: j for j, c in enumerate(unique)}
        return torch.cat(means), torch.cat(stds), torch.tensor([index[c] for c in captions]), unique

    return latents


# ------------------------------------------------------------------------------------------ stages
def init_work(work: str | Path, start: str | Path | None = None) -> Path:
    """WORK as a copy of the SD folder `start` (default: the shipped shapes model), once."""
    from lumenkit.t2i.pipeline import SHIPPED_MODEL

    work = Path(work)
    if (work / "model_index.json").is_file():
        return work
    start = Path(start) if start else SHIPPED_MODEL
    missing = [p for p in COPIED if not (start / p).is_dir()]
    if missing:
        raise LumenkitError(f"{start}: not an SD folder lumenkit can start from (no {', '.join(missing)}/)")
    work.mkdir(parents=True, exist_ok=True)
    for part in COPIED:
        if not (work / part).exists():
            with atomic_dir(work / part) as tmp:
                shutil.copytree(start / part, tmp, dirs_exist_ok=True)
    shutil.copy(start / "model_index.json", work / "model_index.json.tmp")
    (work / "model_index.json.tmp").replace(work / "model_index.json")
    return work


def run_vae_stage(work: str | Path, cfg: BaseVaeConfig | None = None, device="cpu", progress: bool = True) -> dict:
    from lumenkit.t2i.train import run_vae

    work = init_work(work)
    summary = run_vae(work, cfg or BaseVaeConfig(), device, progress, images=world_images())
    atomic_write_json(work / "base_vae.json", summary)
    return summary


def run_unet_stage(work: str | Path, cfg: BaseUnetConfig | None = None, device="cpu", progress: bool = True) -> dict:
    from lumenkit.t2i.train import run_unet

    cfg = cfg or BaseUnetConfig()
    work = init_work(work)
    summary = run_unet(work, cfg, device, progress, latents=world_latents(cfg.size))
    atomic_write_json(work / "base_unet.json", summary)
    return summary


def run_motion_stage(work: str | Path, cfg: BaseMotionConfig | None = None, device="cpu", progress: bool = True) -> dict:
    """Train the motion stage in WORK/motion_train (on WORK's image model), then export WORK/model."""
    from lumenkit.video.train import run_train

    work = init_work(work)
    cfg = replace(cfg or BaseMotionConfig(), base=str(work), motion_adapter="")
    summary = run_train(work / MOTION_RUN, cfg, device, progress)
    export_model(work, work / MOTION_RUN, cfg.motion_preset)
    atomic_write_json(work / "base_motion.json", summary)
    return summary


def export_model(work: Path, run: Path, preset: str = "shapes") -> Path:
    """WORK/model: the base as one SD folder (WORK's tokenizer, text_encoder, clip, scheduler, vae; unet/ =
    the motion run's spatial weights) + motion_adapter/ (its motion modules, a diffusers MotionAdapter
    folder). Built in a temporary folder and renamed."""
    from lumenkit.video.pipeline import load_trained

    pipe = load_trained(run, device="cpu", pisa=False)
    unet2d, adapter = split_video_unet(pipe.unet, work / "unet", preset)
    model = work / "model"
    with atomic_dir(model) as tmp:
        for part in ("tokenizer", "text_encoder", "clip", "scheduler", "vae"):
            shutil.copytree(work / part, tmp / part)
        shutil.copy(work / "model_index.json", tmp / "model_index.json")
        unet2d.save_pretrained(tmp / "unet")
        adapter.save_pretrained(tmp / "motion_adapter")
    return model


def split_video_unet(video_unet, unet2d_folder: str | Path, preset: str = "shapes"):
    """A UNetMotionModel -> (UNet2DConditionModel with its spatial weights, MotionAdapter with its motion
    modules); the UNet2D's config is read from `unet2d_folder`, the adapter's is motion preset `preset`.
    Both load strictly: every tensor is accounted for."""
    from diffusers import UNet2DConditionModel

    from lumenkit.video.models import is_motion_module, motion_adapter_from_video_unet

    unet2d = UNet2DConditionModel.from_pretrained(unet2d_folder, local_files_only=True)
    spatial = {k: v for k, v in video_unet.state_dict().items() if not is_motion_module(k)}
    unet2d.load_state_dict(spatial, strict=True)
    return unet2d, motion_adapter_from_video_unet(video_unet, preset)


RUNNERS = {"vae": run_vae_stage, "unet": run_unet_stage, "motion": run_motion_stage}


def run_base(work: str | Path, stages: tuple[str, ...] = STAGES, configs: dict | None = None, device="cpu",
             progress: bool = True) -> Path:
    """Every stage in order (each resumable; a finished one returns at once)."""
    for s in stages:
        check(s in STAGES, "stage", s, f"expected one of {', '.join(STAGES)}")
    for s in stages:
        RUNNERS[s](work, (configs or {}).get(s), device, progress)
    return Path(work)
