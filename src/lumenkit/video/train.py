"""VideoMaker training (seed 002) on the common training engine (lumenkit.common.train_loop).

``run_train(out, VideoTrainConfig(...))`` fine-tunes a video UNet (the base SD folder's UNet + a
MotionAdapter, lumenkit.video.models) with personalized-injection self-attention (PISA, installed for
``frames`` video frames) on the synthetic world (lumenkit.video.data), with the GIR loss
(lumenkit.video.losses.gir_loss). The loop, checkpoints / resume, EMA, mixed precision, the loss log and
1-or-N processes are the engine's (``train``); this module builds what one step computes.

One step (step s, global batch B = cfg.batch_size; this process computes the rows `rows` of it):
- clips: ``make_batch(batch_rng(seed, s), B, "train", frames, size, rows=rows)`` (videos [b, F, 3, H, W]
  and references [b, 3, H, W] in [-1, 1], captions);
- latents: the FROZEN base VAE's posterior mean x scaling_factor (no sampling: the reference latent is
  also what inference encodes), no grad, fp32; text contexts: the FROZEN CLIP text tower's last hidden
  states, one caption at a time and cached (a caption's context never depends on the batch it came in,
  so a resumed run or another process count computes the same numbers);
- the randomness of the step from ``torch_gen(seed, s)``, drawn for the whole global batch in a fixed
  order and then sliced by `rows` (so N processes draw what 1 process draws): timesteps t [B], the
  condition dropout [B] (losses.condition_dropout: reference zeroed with p_ref + p_both, the empty
  prompt's context with p_both), eps [B, F, C, h, w], eps_ref [B, C, h, w];
- ``gir_loss(model, z0, ref, t, alphas_cumprod, context, eps, eps_ref, alpha, beta, ref_dropped).loss``.

Trainable: spatial attn1 (+ the motion modules with ``train_motion``); the rest of the UNet, the VAE and
the text encoder are frozen (requires_grad False, not in the optimizer). The module handed to the engine
is ``VideoDenoiser`` (its forward runs video_eps), so a distributed wrapper sees the forward.

Output folder OUT:
- OUT/videomaker.safetensors: the EMA weights (the live weights when ema_decay = 0) of the trainable
  subset, motion modules always included (with train_motion off they are the starting adapter's, so the
  file is self-contained), save_videomaker_weights format;
- OUT/config.json: what a pipeline needs to rebuild the model (base, motion_adapter, motion_preset,
  frames, size, the weights file) + the training config; OUT/summary.json: the run's summary;
- OUT/train/: the engine's checkpoint.pt, config.json, loss_log.jsonl, loss_curve.png.

Learning rate. The paper fine-tunes pretrained AnimateDiff motion modules and SD attention at AdamW
1e-5. Here the motion modules start from zero-initialised proj_out (fresh adapter) on a small UNet, and
the training budget is a few thousand steps on a CPU: 1e-4 (with 100 warm-up steps and gradient clipping
at 1) is the default; pass --lr 1e-5 when starting from a real pretrained adapter.

Speed (this 2-core AMD EPYC, AVX2, no bf16 instructions; shapes t2i + shapes motion preset, 6.0 M
parameters of which 2.1 M trainable; batch 8, 8 frames, steady s/step over steps 2-4):
64 px (16x16 latents) fp32: 1.5 s/step on 2 threads with the CPU otherwise quiet, 2.4-2.9 s/step on
1 thread, 12 s/step on 2 threads with the CPU oversubscribed (load 4-5: use --threads 1 then); bf16
autocast: 25 s/step (1 thread), 51 (2 threads, loaded) -- hence mixed_precision "no" by default here.
32 px (8x8 latents) fp32, 1 thread: 0.8 s/step -- but the shipped t2i model, trained at 64 px, makes
formless blobs at 32 px (and half-formed sprites at 48), and its frozen ResBlocks stay so: five models
trained 1600 steps at 32 px all sampled blobs. Train at 64 px on it (a base trained at 32 px would do 32).

Baselines (lumenkit.video.baselines, ``--conditioning``): ``none`` is baseline (a), text-to-video with
L_video alone on the F frames; ``ip_adapter`` is baseline (b), the pooled reference embedding through
decoupled cross-attention, L_video alone; both draw the same clips and noises as VideoMaker (the same
``draws``), so every variant of one seed sees the same data.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lumenkit.common.config import check, check_range, config_to_dict, param
from lumenkit.common.errors import LumenkitError
from lumenkit.common.fileio import atomic_write_json
from lumenkit.common.train_loop import TrainConfig, TrainResult, batch_rng, make_accelerator, torch_gen, train
from lumenkit.video.losses import (P_BOTH, P_REF, REG_BETA, REMINDER_ALPHA, GirLoss, add_noise, condition_dropout, drop_text, gir_loss,
                                   set_trainable)
from lumenkit.video.baselines import CONDITIONINGS, ip_kwargs, trainable_parameter_names, uses_reference_frame
from lumenkit.video.models import MOTION_PRESETS

MotionPreset = Literal["tiny", "shapes", "sd15"]
assert set(MotionPreset.__args__) == set(MOTION_PRESETS)  # type: ignore[attr-defined]

WEIGHTS = "videomaker.safetensors"
TRAIN_DIR = "train"
CONFIG_FORMAT = "lumenkit-videomaker-train-v1"
CONTEXT_CACHE = 4096  # text contexts kept per process (dropping them changes nothing: each is encoded alone)


MIXED_CAPTION_SEED = 7919  # offset of the seed of --captions mixed's draws


@dataclass
class VideoTrainConfig(TrainConfig):
    """`lumenkit video train --out DIR` flags: the engine's (TrainConfig) plus VideoMaker's."""

    base: str = param("", "diffusers SD 1.x folder (unet/, vae/, text_encoder/, tokenizer/); '' = the shipped shapes model")
    motion_adapter: str = param("", "diffusers MotionAdapter folder to start from; '' = a fresh zero-initialised one of --motion_preset")
    motion_preset: MotionPreset = param("shapes", "size of a fresh motion adapter (lumenkit.video.models.MOTION_PRESETS)")
    frames: int = param(8, "video frames per clip (F; the UNet sees F + 1 with the reference)")
    size: int = param(64, "frame size in px (the shipped t2i model was trained at 64 and makes blobs at 32: keep 64 on it)")
    alpha: float = param(REMINDER_ALPHA, "GIR reminder noise: the reference is noised at t' = alpha * t")
    beta: float = param(REG_BETA, "weight of the GIR loss L_reg (0 = VideoMaker without GIR, baseline (c))")
    train_motion: bool = param(True, "train the motion modules too (off = spatial attn1 only, baseline (d))")
    train_cross_attention: bool = param(False, "train the spatial cross-attention (attn2) too: the base's motion stage "
                                               "(lumenkit.video.base), not VideoMaker")
    conditioning: Literal["pisa", "none", "ip_adapter"] = param(
        "pisa", "how the reference enters: pisa = VideoMaker; none = text-to-video baseline (a); "
        "ip_adapter = pooled image embedding via decoupled cross-attention, baseline (b) (lumenkit.video.baselines)")
    captions: Literal["class", "full", "mixed"] = param("class", "training captions: class names the shape only ('a star moves left', "
                                              "the identity comes from the reference, as the paper's prompts); full names the identity; "
                                              "mixed draws one of the two per clip (the base's motion stage)")
    p_ref_drop: float = param(P_REF, "probability of dropping the reference alone (classifier-free guidance)")
    p_both_drop: float = param(P_BOTH, "probability of dropping the reference and the text together")
    # engine defaults changed for this stage
    steps: int = 2000
    batch_size: int = 8
    lr: float = param(1e-4, "peak AdamW learning rate (paper: 1e-5 for pretrained AnimateDiff; fresh motion modules here need more)")
    warmup_steps: int = 100
    ema_decay: float = 0.999
    ckpt_every: int = 100
    # measured on this 2-core AMD EPYC (AVX2, no bf16 instructions), shapes presets, batch 8, 8 frames, 64 px,
    # 1 thread: fp32 2.4-2.9 s/step, bf16 autocast 25 s/step (module docstring); on a GPU pass --mixed_precision bf16
    mixed_precision: Literal["no", "bf16", "fp16"] = param("no", "autocast the UNet's forward (fp32 master weights); "
                                                            "no: ~9x faster than bf16 on CPUs without bf16 instructions; bf16 on GPUs")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.motion_preset in MOTION_PRESETS, "motion_preset", self.motion_preset, f"expected one of {', '.join(MOTION_PRESETS)}")
        check(isinstance(self.frames, int) and 1 <= self.frames <= 31, "frames", self.frames,
              "must be an integer in [1, 31] (F + 1 <= the motion modules' 32 positions)")
        check(isinstance(self.size, int) and 32 <= self.size <= 256 and self.size % 8 == 0, "size", self.size,
              "must be a multiple of 8 in [32, 256]")
        check(self.conditioning in CONDITIONINGS, "conditioning", self.conditioning, f"expected one of {', '.join(CONDITIONINGS)}")
        check(self.captions in ("class", "full", "mixed"), "captions", self.captions, "expected class, full or mixed")
        check_range("alpha", self.alpha, 0, 1)
        check_range("beta", self.beta, 0)
        check_range("p_ref_drop", self.p_ref_drop, 0, 1)
        check_range("p_both_drop", self.p_both_drop, 0, 1)
        check(self.p_ref_drop + self.p_both_drop <= 1, "p_ref_drop", self.p_ref_drop,
              f"plus --p_both_drop {self.p_both_drop} must be <= 1")
        check(self.base == "" or Path(self.base).is_dir(), "base", self.base, "no such folder")
        check(self.motion_adapter == "" or Path(self.motion_adapter).is_dir(), "motion_adapter", self.motion_adapter, "no such folder")


def base_folder(cfg: VideoTrainConfig) -> Path:
    """The SD folder the run builds on: cfg.base, or the shipped shapes model."""
    from lumenkit.t2i.pipeline import SHIPPED_MODEL

    return Path(cfg.base) if cfg.base else SHIPPED_MODEL


# ------------------------------------------------------------------------------------------ the model
class VideoDenoiser(torch.nn.Module):
    """The video UNet as the engine trains it: forward(x [B, F+1, C, h, w], t [B], context [B, K, E]) ->
    eps_hat [B, F+1, C, h, w] through lumenkit.video.models.video_eps, so a distributed wrapper sees the
    forward (gir_loss calls this module)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """image_embeds [B, D]: pooled reference embeddings for the IP-Adapter baseline (None otherwise)."""
        from lumenkit.video.models import video_eps

        return video_eps(self.unet, x, t, context, **ip_kwargs(image_embeds))


def build_video_model(cfg: VideoTrainConfig, device: str | torch.device = "cpu", image_embed_dim: int | None = None) -> VideoDenoiser:
    """The base UNet + motion adapter (cfg.motion_adapter, else a fresh zero-initialised cfg.motion_preset
    one drawn under cfg.seed), PISA installed for cfg.frames (conditioning pisa; ip_adapter: the decoupled
    cross-attention for pooled embeddings of `image_embed_dim`), requires_grad on the trainable subset."""
    from lumenkit.video.attention import install_pisa
    from lumenkit.video.baselines import install_ip_adapter
    from lumenkit.video.models import video_unet_from_pretrained

    unet = video_unet_from_pretrained(base_folder(cfg), cfg.motion_adapter or None, cfg.motion_preset, device=device, seed=cfg.seed)
    max_len = getattr(unet.config, "motion_max_seq_length", None)
    if max_len is not None and cfg.frames + 1 > max_len:
        raise LumenkitError(f"--frames {cfg.frames}: the motion modules have {max_len} positions, fewer than frames + 1 (the reference)")
    if cfg.conditioning == "pisa":
        install_pisa(unet, cfg.frames)
    elif cfg.conditioning == "ip_adapter":
        if image_embed_dim is None:
            raise LumenkitError("the IP-Adapter baseline needs the image encoder's embedding size")
        install_ip_adapter(unet, image_embed_dim, seed=cfg.seed)
    set_trainable(unet, cfg.train_motion, cfg.conditioning, cfg.train_cross_attention)
    return VideoDenoiser(unet)


@dataclass
class FrozenParts:
    """The frozen base: tokenizer, CLIP text encoder, VAE (eval, requires_grad False) and the noise schedule."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    alphas_cumprod: torch.Tensor
    image_encoder: Any = None  # baselines.PooledImageEncoder (the IP-Adapter baseline only)


def load_frozen(cfg: VideoTrainConfig, device: str | torch.device = "cpu") -> FrozenParts:
    from lumenkit.t2i.pipeline import Text2Image

    pipe = Text2Image.from_pretrained(base_folder(cfg), device)  # eval + requires_grad False
    encoder = None
    if cfg.conditioning == "ip_adapter":
        from lumenkit.video.baselines import load_image_encoder

        encoder = load_image_encoder(base_folder(cfg), device)
    return FrozenParts(pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.schedule.alphas_cumprod.float().cpu(), encoder)


# ------------------------------------------------------------------------------------------ the loss
class VideoMakerLoss:
    """loss_fn(model, step, rows) of the engine: the GIR loss on rows `rows` of step `step`'s global batch
    (module docstring). `split` and cfg.seed choose the clips: ("train", the run's seed) in training; a
    fixed held-out batch is VideoMakerLoss(parts, replace(cfg, seed=S), device, split="test")(model, 0, rows)."""

    def __init__(self, parts: FrozenParts, cfg: VideoTrainConfig, device: str | torch.device = "cpu", split: str = "train"):
        self.parts, self.cfg, self.device, self.split = parts, cfg, torch.device(device), split
        self.scaling = float(parts.vae.config.scaling_factor)
        self._contexts: dict[str, torch.Tensor] = {}
        self.null_context = self.contexts([""])[0]

    @torch.no_grad()
    def contexts(self, captions: list[str]) -> torch.Tensor:
        """[B, K, E] float32 on the device; each caption encoded alone (batch-independent) and cached."""
        from lumenkit.t2i.tokenizer import tokenize

        got: dict[str, torch.Tensor] = {}
        for c in dict.fromkeys(captions):
            if c not in self._contexts:
                if len(self._contexts) >= CONTEXT_CACHE:  # ~19k train captions; an SD 1.5 context is 236 KB
                    self._contexts = {"": self._contexts[""]} if "" in self._contexts else {}
                ids = tokenize(self.parts.tokenizer, [c]).to(self.device)
                self._contexts[c] = self.parts.text_encoder(ids).last_hidden_state[0].float()
            got[c] = self._contexts[c]
        return torch.stack([got[c] for c in captions])

    @torch.no_grad()
    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> the frozen VAE's posterior mean x scaling_factor [N, C, h, w] (fp32)."""
        return self.parts.vae.encode(images.to(self.device)).latent_dist.mean.float() * self.scaling

    def draws(self, step: int, shape_video: tuple, shape_ref: tuple):
        """The step's randomness for the whole global batch, in a fixed order: t, dropout, eps, eps_ref."""
        cfg = self.cfg
        g = torch_gen(cfg.seed, step)
        t = torch.randint(0, self.parts.alphas_cumprod.numel(), (cfg.batch_size,), generator=g)
        drop = condition_dropout(cfg.batch_size, cfg.p_ref_drop, cfg.p_both_drop, generator=g)
        eps = torch.randn((cfg.batch_size, *shape_video), generator=g)
        eps_ref = torch.randn((cfg.batch_size, *shape_ref), generator=g)
        return t, drop, eps, eps_ref

    def caption_modes(self, step: int, rows: slice) -> list[str]:
        """The caption form of each clip of these rows: cfg.captions, or with "mixed" full / class at even odds,
        drawn for the whole global batch from their own generator (the other draws stay those of class / full)."""
        cfg = self.cfg
        if cfg.captions != "mixed":
            return [cfg.captions] * len(range(*rows.indices(cfg.batch_size)))
        full = torch.rand(cfg.batch_size, generator=torch_gen(cfg.seed + MIXED_CAPTION_SEED, step)) < 0.5
        return ["full" if f else "class" for f in full[rows].tolist()]

    def __call__(self, model, step: int, rows: slice) -> torch.Tensor:
        """gir_loss(...).loss of these rows, except that L_reg's mean is over the kept references of the
        whole GLOBAL batch. The engine averages the losses of equal-sized row blocks (processes x
        micro-batches), while gir_loss divides L_reg by the kept references of its own rows, which differ
        between blocks; scaling reg by K_rows * (B / b) / K_global makes the blocks' mean exactly the
        global batch's loss (N processes = 1 process). On the whole batch (1 process, no accumulation) it
        is gir_loss's loss itself."""
        out, ref_drop = self._compute(model, step, rows)
        n_rows = len(range(*rows.indices(self.cfg.batch_size)))
        if n_rows == self.cfg.batch_size:
            return out.loss
        kept = ~ref_drop
        k_rows, k_all = int(kept[rows].sum()), int(kept.sum())
        return out.video + self.cfg.beta * out.reg * (k_rows * (self.cfg.batch_size / n_rows) / max(1, k_all))

    def terms(self, model, step: int, rows: slice):
        """gir_loss's GirLoss (loss, video, reg, t_ref, pred) of rows `rows` of step `step` (its L_reg over
        these rows' kept references)."""
        return self._compute(model, step, rows)[0]

    def _compute(self, model, step: int, rows: slice):
        from lumenkit.video.data import make_batch

        cfg = self.cfg
        b = make_batch(batch_rng(cfg.seed, step), cfg.batch_size, self.split, cfg.frames, cfg.size, rows=rows)
        n, f = b.videos.shape[:2]
        z0 = self.latents(b.videos.flatten(0, 1))
        z0 = z0.view(n, f, *z0.shape[1:])
        ref = self.latents(b.references)
        t, drop, eps, eps_ref = self.draws(step, tuple(z0.shape[1:]), tuple(ref.shape[1:]))
        t, ref_drop, text_drop, eps, eps_ref = (v[rows].to(self.device) for v in (t, drop.ref, drop.text, eps, eps_ref))
        captions = [s.caption(m) for s, m in zip(b.specs, self.caption_modes(step, rows))]
        context = drop_text(self.contexts(captions), self.null_context, text_drop)
        if not uses_reference_frame(cfg.conditioning):
            return self._baseline_loss(model, b, z0, t, context, eps, ref_drop), drop.ref
        out = gir_loss(model, z0, ref, t, self.parts.alphas_cumprod.to(self.device), context, eps, eps_ref,
                       alpha=cfg.alpha, beta=cfg.beta, ref_dropped=ref_drop)
        return out, drop.ref

    def _baseline_loss(self, model, b, z0, t, context, eps, ref_drop) -> GirLoss:
        """L_video alone for the baselines without a reference frame: none (a) and ip_adapter (b) (its pooled
        reference embedding zeroed where the reference is dropped, as diffusers' unconditional branch)."""
        image_embeds = None
        if self.cfg.conditioning == "ip_adapter":
            image_embeds = self.parts.image_encoder(b.references) * (~ref_drop).to(self.device, torch.float32)[:, None]
        z_t = add_noise(z0, eps, self.parts.alphas_cumprod.to(self.device)[t])
        pred = model(z_t, t, context, image_embeds)
        video = (pred.float() - eps).pow(2).mean()
        return GirLoss(loss=video, video=video, reg=torch.zeros((), device=video.device), t_ref=torch.zeros_like(t), pred=pred)


# ------------------------------------------------------------------------------------------ the run
@dataclass
class VideoTrainRun:
    """What train_videomaker leaves in memory (for tests and callers that go on sampling)."""

    model: VideoDenoiser
    ema: VideoDenoiser | None
    parts: FrozenParts
    loss: VideoMakerLoss
    result: TrainResult
    summary: dict

    @property
    def shipped(self) -> VideoDenoiser:
        """The exported weights' model: the EMA, or the live model without EMA."""
        return self.ema if self.ema is not None else self.model


def model_config(cfg: VideoTrainConfig) -> dict:
    """OUT/config.json: how to rebuild the trained model (and the run's config under "train")."""
    return {"format": CONFIG_FORMAT, "weights": WEIGHTS, "base": str(base_folder(cfg).resolve()),
            "motion_adapter": str(Path(cfg.motion_adapter).resolve()) if cfg.motion_adapter else "",
            "motion_preset": cfg.motion_preset, "conditioning": cfg.conditioning, "frames": cfg.frames, "size": cfg.size, "seed": cfg.seed,
            "train_motion": cfg.train_motion, "train": config_to_dict(cfg)}


def train_videomaker(out: str | Path, cfg: VideoTrainConfig | None = None, device: str | torch.device = "auto",
                     progress: bool = True) -> VideoTrainRun:
    """run_train, returning the models too (see the module docstring)."""
    from lumenkit.t2i.train import export_on_main
    from lumenkit.video.models import save_videomaker_weights

    cfg = cfg or VideoTrainConfig()
    out = Path(out)
    dev = make_accelerator(device).device
    parts = load_frozen(cfg, dev)
    model = build_video_model(cfg, dev, parts.image_encoder.embed_dim if parts.image_encoder is not None else None)
    ema = None
    if cfg.ema_decay > 0:
        ema = copy.deepcopy(model).requires_grad_(False)
    loss = VideoMakerLoss(parts, cfg, dev)
    t0 = time.perf_counter()
    res = train("videomaker", out / TRAIN_DIR, cfg, model, loss, ema_model=ema, device=dev, progress=progress)
    shipped = ema if ema is not None else model
    shipped.eval()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    summary = {
        "stage": "videomaker", "steps": res.steps_done, "batch_size": cfg.batch_size, "frames": cfg.frames, "size": cfg.size,
        "seconds": round(res.seconds, 2), "s_per_step": round(res.seconds / max(1, res.steps_done), 4),
        "clips_per_s": round(res.samples_per_s, 3), "final_loss": res.final_loss,
        "trainable_params": n_train, "frozen_params": n_all - n_train, "this_call_seconds": round(time.perf_counter() - t0, 2),
        "weights": str(out / WEIGHTS), "config": config_to_dict(cfg),
    }

    def write() -> None:
        names = trainable_parameter_names(shipped.unet, cfg.conditioning, motion_modules=True, cross_attention=cfg.train_cross_attention)
        save_videomaker_weights(shipped.unet, out / WEIGHTS, names=names)
        atomic_write_json(out / "config.json", model_config(cfg))
        atomic_write_json(out / "summary.json", summary)

    export_on_main(write)
    return VideoTrainRun(model, ema, parts, loss, res, summary)


def run_train(out: str | Path, cfg: VideoTrainConfig | None = None, device: str | torch.device = "auto", progress: bool = True) -> dict:
    """Train VideoMaker into `out` (resumable: run again to continue from OUT/train/checkpoint.pt);
    returns the summary dict also written to OUT/summary.json."""
    return train_videomaker(out, cfg, device, progress).summary
