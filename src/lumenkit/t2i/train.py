"""Training the small Stable Diffusion on the shapes world: CLIP, then the VAE, then the UNet (seed 003).

Each stage is a dataclass config (saved as ``config.json`` beside its checkpoints) and a loop with
AdamW, linear warmup, gradient clipping, bf16 autocast on CPU (fp32 master weights), a tqdm bar
with loss and images/s, and an atomic checkpoint every ``ckpt_every`` steps (``checkpoint.pt``:
weights, optimizer, EMA, step; loaded with ``torch.load(weights_only=True)``). Batches and noise are
drawn from generators seeded with (seed, step), so a resumed run continues exactly as an
uninterrupted one.

Stages (``run_clip``, ``run_vae``, ``run_unet``, ``run_oracle``, ``run_all``):

a. CLIP: transformers ``CLIPModel`` (ViT image tower + text tower, learned temperature
   ``logit_scale``), symmetric InfoNCE loss over (image, caption) pairs of the training split.
b. VAE: diffusers ``AutoencoderKL``, loss = L1 + MSE (images in [-1, 1]) + kl_weight * KL(q(z|x) || N(0, I));
   then ``scaling_factor`` = 1 / std of the latents, as SD's 0.18215 was chosen.
c. UNet: diffusers ``UNet2DConditionModel`` predicting eps on noised latents
   x_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps (DDPM eq. 4, SD 1.x "scaled linear" schedule), z0 = scaled
   VAE posterior sample, conditioned on the frozen CLIP text tower's last hidden states
   [B, K, E]; the caption is replaced by "" with probability ``caption_dropout`` (for classifier-free
   guidance); EMA of the weights is what gets shipped.

``run_all`` trains the four (the attribute oracle too) and writes the diffusers-layout model folder.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from lumenkit.common.errors import LumenkitError
from lumenkit.common.fileio import atomic_path, atomic_write_json
from lumenkit.t2i import data as D

# ------------------------------------------------------------------------------------------ configs
# The `shapes` preset of lumenkit.t2i.models with these overrides (measured on the 2-core CPU: the
# preset's 3-level UNet with attention at 16x16 ran at ~60 img/s, this one at ~120 img/s in bf16).
UNET_OVERRIDES: dict[str, Any] = {
    "block_out_channels": [32, 64, 128],
    "norm_num_groups": 16,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}
VAE_OVERRIDES: dict[str, Any] = {"block_out_channels": [16, 32, 64], "norm_num_groups": 8}


def shapes_model_config(preset: str = "shapes") -> dict[str, Any]:
    """The model configuration we train: models.preset_config(preset) with the overrides above."""
    from lumenkit.t2i.models import preset_config

    cfg = preset_config(preset)
    cfg["vision"]["image_size"] = D.RESOLUTION  # CLIP's image tower sees the 64x64 shapes images
    if preset == "shapes":
        cfg["unet"].update(UNET_OVERRIDES)
        cfg["vae"].update(VAE_OVERRIDES)
    return cfg


@dataclass
class StageConfig:
    """Fields shared by every stage."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    amp: bool = True  # bf16 autocast (CPU with AMX/AVX512-bf16, or CUDA)
    ckpt_every: int = 100
    max_minutes: float = 0.0  # stop (with a checkpoint) after this wall-clock time; 0 = no limit
    preset: str = "shapes"
    min_lr_ratio: float = 1.0  # cosine decay after warmup to lr * min_lr_ratio (1.0 = constant lr)


@dataclass
class ClipConfig(StageConfig):
    steps: int = 600
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 50


@dataclass
class VaeConfig(StageConfig):
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-6
    mse_weight: float = 1.0
    warmup_steps: int = 50
    crop: int = 32  # train on random crops of this size (the VAE is convolutional; 0 = whole 64x64 images)
    decoder_only: bool = False  # fine-tune only the decoder of out/vae (latents unchanged, as SD's ft-MSE VAE)
    eval_images: int = 256  # fresh images for the final PSNR and the latent std (scaling_factor)


@dataclass
class UnetConfig(StageConfig):
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    n_latents: int = 16384  # training images encoded once by the frozen VAE (captions are finite)
    min_lr_ratio: float = 0.1
    snr_gamma: float = 5.0  # Min-SNR-gamma loss weighting (Hang et al. 2023): w = min(SNR, g) / SNR; 0 = plain MSE
    # offset noise (Guttenberg 2023; diffusers' --noise_offset): eps += offset * N(0, 1) per sample and channel.
    # The shapes world's backgrounds are whole-image colours, i.e. latent channel means of +-1.8; with plain
    # eps-prediction the sampler shrank them to ~60% (white came out pink), measured at step 1900.
    noise_offset: float = 0.1


@dataclass
class OracleConfig(StageConfig):
    steps: int = 1200
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 50
    amp: bool = False
    min_lr_ratio: float = 0.01  # cosine decay: at a constant lr the BatchNorm net's accuracy jitters by a point or two
    eval_images: int = 2000  # fresh images for the final held-out accuracy
    augment: bool = True  # train on oracle.degrade()d images too (generated images are softer than renders)


STAGE_CONFIGS = {"clip": ClipConfig, "vae": VaeConfig, "unet": UnetConfig, "oracle": OracleConfig}


def config_from_dict(cls, d: dict) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


# ------------------------------------------------------------------------------------------ helpers
def lr_at(cfg: StageConfig, step: int) -> float:
    """Linear warmup for warmup_steps, then cosine decay to lr * min_lr_ratio (1.0 = constant)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    ratio = cfg.min_lr_ratio
    prog = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * prog)))


def batch_rng(seed: int, step: int) -> np.random.Generator:
    """The data generator of one step: a pure function of (seed, step), so resuming is exact."""
    return np.random.default_rng([seed, step])


def torch_gen(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step) + 17)


def autocast(cfg: StageConfig, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(cfg.amp))


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic torch.save of plain tensors/dicts/numbers (loadable with weights_only=True)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LumenkitError(f"{path}: unreadable checkpoint ({exc}); delete it to start this stage afresh") from None


def write_stage_config(folder: Path, cfg: StageConfig, extra: dict | None = None) -> None:
    atomic_write_json(folder / "config.json", {**asdict(cfg), **(extra or {})})


@dataclass
class LoopResult:
    steps_done: int
    seconds: float
    images: int
    final_loss: float
    images_per_s: float = field(init=False)

    def __post_init__(self):
        self.images_per_s = self.images / self.seconds if self.seconds > 0 else 0.0


def train_loop(
    name: str,
    folder: Path,
    cfg: StageConfig,
    model: torch.nn.Module,
    step_fn: Callable[[int], torch.Tensor],
    ema: torch.nn.Module | None = None,
    ema_decay: float = 0.0,
    progress: bool = True,
) -> LoopResult:
    """The shared loop: resume from folder/checkpoint.pt, run to cfg.steps, checkpoint atomically.

    step_fn(step) returns the scalar loss of that step's batch (forward only; backward, clipping,
    the optimizer and EMA are done here). Trainable parameters are those of `model`.
    """
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.999),
    )
    ckpt_path = folder / "checkpoint.pt"
    start, prev_seconds, prev_images, prev_loss = 0, 0.0, 0, float("nan")
    state = load_checkpoint(ckpt_path)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        start, prev_seconds, prev_images = int(state["step"]), float(state["seconds"]), int(state["images"])
        prev_loss = float(state.get("loss", float("nan")))
        print(f"[{name}] resumed from {ckpt_path} at step {start}", flush=True)
    elif ema is not None:
        ema.load_state_dict(model.state_dict())
    write_stage_config(folder, cfg)

    def checkpoint(step: int, seconds: float, images: int) -> None:
        st = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "seconds": seconds, "images": images,
              "loss": loss_ema if loss_ema is not None else prev_loss}
        if ema is not None:
            st["ema"] = ema.state_dict()
        save_checkpoint(ckpt_path, st)

    model.train()
    t0 = time.perf_counter()
    loss_ema, step = None, start
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=name, disable=not progress, mininterval=5.0)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        loss = step_fn(step)
        if not torch.isfinite(loss):
            raise LumenkitError(f"[{name}] loss became {loss.item()} at step {step}: lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if ema is not None:
            d = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm.detach(), 1 - d)
        last_loss = float(loss.detach())
        loss_ema = last_loss if loss_ema is None else 0.98 * loss_ema + 0.02 * last_loss
        elapsed = time.perf_counter() - t0
        done_images = (step + 1 - start) * cfg.batch_size
        bar.set_postfix(loss=f"{loss_ema:.4f}", img_s=f"{done_images / max(elapsed, 1e-9):.1f}", lr=f"{lr_at(cfg, step):.2e}")
        out_of_time = cfg.max_minutes > 0 and prev_seconds + elapsed > cfg.max_minutes * 60
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps or out_of_time:
            checkpoint(step + 1, prev_seconds + elapsed, prev_images + done_images)
        if out_of_time:
            print(f"[{name}] time budget of {cfg.max_minutes} min reached at step {step + 1}", flush=True)
            break
    else:
        step = cfg.steps - 1 if cfg.steps > start else start - 1
    bar.close()
    seconds = time.perf_counter() - t0
    done = step + 1 - start if cfg.steps > start else 0
    if done == 0:  # nothing left to do: report the finished run, not this no-op pass
        return LoopResult(start, prev_seconds, prev_images, prev_loss)
    return LoopResult(start + done, prev_seconds + seconds, prev_images + done * cfg.batch_size, loss_ema)


def _stage_summary(name: str, res: LoopResult, cfg: StageConfig) -> dict:
    return {
        "stage": name,
        "steps": res.steps_done,
        "batch_size": cfg.batch_size,
        "seconds": round(res.seconds, 1),
        "images": res.images,
        "images_per_s": round(res.images_per_s, 1),
        "final_loss": res.final_loss,
        "config": asdict(cfg),
    }


# ------------------------------------------------------------------------------------------ schedule
def alphas_cumprod(model_cfg: dict) -> torch.Tensor:
    """a_t = prod(1 - beta) [T] float32 of the preset's schedule (SD 1.x scaled linear)."""
    sch = model_cfg["schedule"]
    try:
        from lumenkit.diffusion import NoiseSchedule

        return NoiseSchedule.from_config(**sch).alphas_cumprod.float()
    except ImportError:  # lumenkit.diffusion not there: diffusers' identical "scaled_linear" schedule
        from diffusers import DDPMScheduler

        s = DDPMScheduler(num_train_timesteps=sch["num_timesteps"], beta_start=sch["linear_start"], beta_end=sch["linear_end"], beta_schedule="scaled_linear")
        return s.alphas_cumprod.float()


# ------------------------------------------------------------------------------------------ stage a: CLIP
def build_tokenizer(out: Path, model_cfg: dict):
    from lumenkit.t2i.tokenizer import load_tokenizer, write_tokenizer

    folder = out / "tokenizer"
    if not (folder / "vocab.json").is_file():
        write_tokenizer(folder, max_length=model_cfg["max_length"])
    return load_tokenizer(folder)


def token_ids(tokenizer) -> dict[str, int]:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def run_clip(out: str | Path, cfg: ClipConfig | None = None, device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """Contrastive CLIP training; writes out/clip (CLIPModel.save_pretrained) and out/tokenizer."""
    from lumenkit.t2i.models import build_clip_model
    from lumenkit.t2i.tokenizer import tokenize

    cfg = cfg or ClipConfig()
    device = torch.device(device)
    out = Path(out)
    model_cfg = shapes_model_config(cfg.preset)
    tok = build_tokenizer(out, model_cfg)
    torch.manual_seed(cfg.seed)
    clip = build_clip_model(model_cfg, vocab_size=len(tok), **token_ids(tok)).to(device)

    def step_fn(step: int) -> torch.Tensor:
        b = D.make_batch(batch_rng(cfg.seed, step), cfg.batch_size, "train")
        ids = tokenize(tok, b.captions).to(device)
        with autocast(cfg, device):
            o = clip(input_ids=ids, pixel_values=b.images.to(device), return_loss=True)
        return o.loss.float()

    res = train_loop("clip", out / "clip_train", cfg, clip, step_fn, progress=progress)
    clip.eval()
    clip.save_pretrained(out / "clip", safe_serialization=True)
    acc = clip_retrieval_accuracy(clip, tok, device, seed=cfg.seed + 999)
    summary = _stage_summary("clip", res, cfg)
    summary["retrieval_top1"] = acc
    summary["logit_scale"] = clip.logit_scale.detach().exp().item()
    return summary


@torch.no_grad()
def clip_retrieval_accuracy(clip, tok, device, n: int = 256, seed: int = 12345) -> float:
    """Image -> caption top-1 accuracy among the n captions of a fresh batch (distinct scenes)."""
    from lumenkit.t2i.tokenizer import tokenize

    rng = np.random.default_rng(seed)
    scenes = D.all_scenes("train")
    pick = rng.choice(len(scenes), size=min(n, len(scenes)), replace=False)
    sc = [scenes[i] for i in pick]
    imgs = D.to_tensor(D.render_batch(sc, rng)).to(device)
    o = clip(input_ids=tokenize(tok, [s.caption() for s in sc]).to(device), pixel_values=imgs)
    return float((o.logits_per_image.argmax(1).cpu() == torch.arange(len(sc))).float().mean())


# ------------------------------------------------------------------------------------------ stage b: VAE
def run_vae(out: str | Path, cfg: VaeConfig | None = None, device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """AutoencoderKL training; writes out/vae (save_pretrained, scaling_factor = 1/std of latents).

    With cfg.decoder_only, fine-tunes the decoder of the existing out/vae with the encoder frozen, so
    the latents (and a UNet trained on them) stay valid; scaling_factor is kept.
    """
    from lumenkit.common.metrics import psnr
    from lumenkit.t2i.models import build_vae

    cfg = cfg or VaeConfig()
    device = torch.device(device)
    out = Path(out)
    model_cfg = shapes_model_config(cfg.preset)
    torch.manual_seed(cfg.seed)
    if cfg.decoder_only:
        from diffusers import AutoencoderKL

        if not (out / "vae" / "config.json").is_file():
            raise LumenkitError(f"{out}: no vae/ to fine-tune: run `lumenkit t2i train vae --out {out}` first")
        vae = AutoencoderKL.from_pretrained(out / "vae").to(device)
        vae.encoder.requires_grad_(False)
        if vae.quant_conv is not None:
            vae.quant_conv.requires_grad_(False)
    else:
        vae = build_vae(model_cfg).to(device)

    def step_fn(step: int) -> torch.Tensor:
        b = D.make_batch(batch_rng(cfg.seed, step), cfg.batch_size, "all")
        x = b.images.to(device)
        if 0 < cfg.crop < x.shape[-1]:
            f = 2 ** (len(model_cfg["vae"]["block_out_channels"]) - 1)
            oy, ox = (torch.randint(0, (x.shape[-1] - cfg.crop) // f + 1, (2,), generator=torch_gen(cfg.seed + 1, step)) * f).tolist()
            x = x[..., oy : oy + cfg.crop, ox : ox + cfg.crop]
        with autocast(cfg, device):
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=torch_gen(cfg.seed, step)).to(device)
            rec = vae.decode(z).sample
        rec = rec.float()
        kl = post.kl().float().mean() / x[0].numel()  # per pixel value, like the per-pixel rec. loss (SD's ratio)
        return (rec - x).abs().mean() + cfg.mse_weight * F.mse_loss(rec, x) + cfg.kl_weight * kl

    name = "vae_decoder" if cfg.decoder_only else "vae"
    res = train_loop(name, out / f"{name}_train", cfg, vae, step_fn, progress=progress)
    vae.eval()
    # scaling factor: 1 / std of posterior samples, as in SD (0.18215 for their VAE)
    with torch.no_grad():
        b = D.make_batch(np.random.default_rng(cfg.seed + 777), cfg.eval_images, "all")
        post = vae.encode(b.images.to(device)).latent_dist
        z = post.sample(generator=torch.Generator(device=device).manual_seed(0))
        std = float(z.std())
        rec = vae.decode(post.mean).sample.clamp(-1, 1)
        p = psnr((rec.cpu() + 1) / 2, (b.images + 1) / 2)
    if not cfg.decoder_only:
        vae.register_to_config(scaling_factor=1.0 / std)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    summary = _stage_summary(name, res, cfg)
    summary.update(scaling_factor=float(vae.config.scaling_factor), psnr_db=p)
    return summary


# ------------------------------------------------------------------------------------------ stage c: UNet
def load_text_encoder(out: Path, device):
    """The frozen text tower: out/text_encoder if written, else taken from out/clip."""
    from transformers import CLIPModel, CLIPTextModel

    if (out / "text_encoder" / "config.json").is_file():
        return CLIPTextModel.from_pretrained(out / "text_encoder").to(device).eval()
    if not (out / "clip" / "config.json").is_file():
        raise LumenkitError(f"{out}: no clip/ or text_encoder/ folder: run `lumenkit t2i train clip --out {out}` first")
    from lumenkit.t2i.models import text_encoder_from_clip

    te = text_encoder_from_clip(CLIPModel.from_pretrained(out / "clip"))
    te.save_pretrained(out / "text_encoder", safe_serialization=True)
    return te.to(device).eval()


@torch.no_grad()
def encode_prompts(text_encoder, tokenizer, prompts: list[str], device) -> torch.Tensor:
    """Prompts -> context [B, K, E] (last hidden states of the CLIP text tower, as SD 1.x)."""
    from lumenkit.t2i.tokenizer import tokenize

    return text_encoder(tokenize(tokenizer, prompts).to(device)).last_hidden_state


@torch.no_grad()
def encode_latent_cache(vae, n: int, seed: int, device, batch: int = 256, progress: bool = True):
    """n training-split images -> (posterior mean, std) [n, 4, h, w] each, and scene indices [n]."""
    from tqdm import tqdm

    rng = np.random.default_rng([seed, 424242])
    train_scenes = D.all_scenes("train")
    idx = rng.integers(0, len(train_scenes), size=n)
    means, stds = [], []
    for i in tqdm(range(0, n, batch), desc="encode latents", disable=not progress, mininterval=5.0):
        imgs = D.to_tensor(D.render_batch([train_scenes[j] for j in idx[i : i + batch]], rng)).to(device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            post = vae.encode(imgs).latent_dist
        means.append(post.mean.float().cpu())
        stds.append(post.std.float().cpu())
    return torch.cat(means), torch.cat(stds), torch.from_numpy(idx)


def training_noise(shape: torch.Size, generator: torch.Generator, offset: float = 0.0) -> torch.Tensor:
    """eps [B, C, h, w] ~ N(0, 1) plus, with offset > 0, one N(0, offset^2) constant per sample and channel."""
    eps = torch.randn(shape, generator=generator)
    if offset > 0:
        eps = eps + offset * torch.randn(tuple(shape[:2]) + (1, 1), generator=generator)
    return eps


def run_unet(out: str | Path, cfg: UnetConfig | None = None, device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """Noise-prediction training of the UNet on frozen-VAE latents and frozen-CLIP contexts; writes
    out/unet (EMA weights, save_pretrained) and out/unet_train/ (checkpoints)."""
    from diffusers import AutoencoderKL

    from lumenkit.t2i.models import build_unet

    cfg = cfg or UnetConfig()
    device = torch.device(device)
    out = Path(out)
    model_cfg = shapes_model_config(cfg.preset)
    if not (out / "vae" / "config.json").is_file():
        raise LumenkitError(f"{out}: no vae/ folder: run `lumenkit t2i train vae --out {out}` first")
    tok = build_tokenizer(out, model_cfg)
    te = load_text_encoder(out, device)
    vae = AutoencoderKL.from_pretrained(out / "vae").to(device).eval()
    sf = float(vae.config.scaling_factor)
    t_enc = time.perf_counter()
    mean, std, scene_idx = encode_latent_cache(vae, cfg.n_latents, cfg.seed, device, progress=progress)
    train_scenes = D.all_scenes("train")
    contexts = encode_prompts(te, tok, [s.caption() for s in train_scenes] + [""], device).float().cpu()  # [S+1, K, E]
    cache_seconds = time.perf_counter() - t_enc
    del vae, te
    a_bar = alphas_cumprod(model_cfg)
    T = a_bar.numel()
    torch.manual_seed(cfg.seed)
    unet = build_unet(model_cfg).to(device)
    ema = build_unet(model_cfg).to(device).requires_grad_(False)
    null_idx = len(train_scenes)

    def step_fn(step: int) -> torch.Tensor:
        g = torch_gen(cfg.seed, step)
        pick = torch.randint(0, mean.shape[0], (cfg.batch_size,), generator=g)
        z0 = (mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=g)) * sf
        drop = torch.rand(cfg.batch_size, generator=g) < cfg.caption_dropout
        ctx = contexts[torch.where(drop, torch.full_like(pick, null_idx), scene_idx[pick])]
        t = torch.randint(0, T, (cfg.batch_size,), generator=g)
        eps = training_noise(z0.shape, g, cfg.noise_offset)
        ab = a_bar[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * z0 + (1 - ab).sqrt() * eps  # DDPM eq. 4
        with autocast(cfg, device):
            pred = unet(xt.to(device), t.to(device), ctx.to(device)).sample
        per_sample = (pred.float() - eps.to(device)).pow(2).mean(dim=(1, 2, 3))
        if cfg.snr_gamma > 0:
            snr = ab.view(-1) / (1 - ab.view(-1))
            per_sample = per_sample * (snr.clamp(max=cfg.snr_gamma) / snr).to(device)
        return per_sample.mean()

    res = train_loop("unet", out / "unet_train", cfg, unet, step_fn, ema=ema, ema_decay=cfg.ema_decay, progress=progress)
    ema.eval().save_pretrained(out / "unet", safe_serialization=True)
    summary = _stage_summary("unet", res, cfg)
    summary["latent_cache_seconds"] = round(cache_seconds, 1)
    return summary


# ------------------------------------------------------------------------------------------ oracle
def run_oracle(out: str | Path, cfg: OracleConfig | None = None, device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """Train the attribute oracle on fresh procedural images of every combination; writes out/oracle."""
    from lumenkit.t2i.oracle import Oracle, degrade, heldout_accuracy, oracle_loss

    cfg = cfg or OracleConfig()
    device = torch.device(device)
    out = Path(out)
    torch.manual_seed(cfg.seed)
    model = Oracle().to(device)

    def step_fn(step: int) -> torch.Tensor:
        b = D.make_batch(batch_rng(cfg.seed, step), cfg.batch_size, "all")
        images = b.images
        if cfg.augment:  # half of each batch degraded, half clean
            half = images.shape[0] // 2
            images = torch.cat([images[:half], degrade(images[half:], torch_gen(cfg.seed + 2, step))])
        with autocast(cfg, device):
            logits = model(images.to(device))
        return oracle_loss(logits, D.labels_tensor(b.scenes))

    res = train_loop("oracle", out / "oracle_train", cfg, model, step_fn, progress=progress)
    model.eval()
    model.save(out / "oracle")
    acc = heldout_accuracy(model, n=cfg.eval_images, seed=cfg.seed + 31337, device=device)
    summary = _stage_summary("oracle", res, cfg)
    summary["heldout_accuracy"] = acc
    summary["heldout_accuracy_degraded"] = heldout_accuracy(model, n=cfg.eval_images, seed=cfg.seed + 31337, device=device, degraded=True)
    return summary


# ------------------------------------------------------------------------------------------ all
def update_training_log(model_dir: Path, summary: dict) -> None:
    path = Path(model_dir) / "training_log.json"
    log = json.loads(path.read_text()) if path.is_file() else {"stages": {}}
    log["stages"][summary["stage"]] = summary
    log["total_seconds"] = round(sum(s["seconds"] + s.get("latent_cache_seconds", 0) for s in log["stages"].values()), 1)
    atomic_write_json(path, log)


def export_model(work: Path, model_dir: Path) -> Path:
    """Assemble the diffusers-layout folder: tokenizer/, text_encoder/, vae/, unet/, scheduler/,
    model_index.json, plus clip/ (for CLIP score) and oracle/ (for evaluation). Uses
    lumenkit.t2i.pipeline.Text2Image.save_pretrained when present."""
    import shutil

    from lumenkit.t2i.models import preset_config

    work, model_dir = Path(work), Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("tokenizer", "text_encoder", "vae", "unet", "clip", "oracle"):
        if not (work / sub).is_dir():
            raise LumenkitError(f"{work}/{sub}: missing; train every stage first")
    saved = False
    try:
        from lumenkit.t2i.pipeline import Text2Image

        pipe = Text2Image.from_pretrained(work) if (work / "model_index.json").is_file() else None
        if pipe is not None:
            pipe.save_pretrained(model_dir)
            saved = True
    except (ImportError, AttributeError, LumenkitError):
        saved = False
    for sub in ("tokenizer", "text_encoder", "vae", "unet", "clip", "oracle"):
        if not saved or sub in ("clip", "oracle"):
            if work.resolve() != model_dir.resolve():
                shutil.rmtree(model_dir / sub, ignore_errors=True)
                shutil.copytree(work / sub, model_dir / sub, ignore=shutil.ignore_patterns("*.pt"))
    if not saved:
        write_scheduler_and_index(model_dir, preset_config("shapes")["schedule"])
    return model_dir


def write_scheduler_and_index(model_dir: Path, sch: dict) -> None:
    """diffusers' scheduler/scheduler_config.json (DDIM, SD 1.x betas) and model_index.json."""
    atomic_write_json(
        model_dir / "scheduler" / "scheduler_config.json",
        {
            "_class_name": "DDIMScheduler",
            "num_train_timesteps": sch["num_timesteps"],
            "beta_start": sch["linear_start"],
            "beta_end": sch["linear_end"],
            "beta_schedule": "scaled_linear",
            "clip_sample": False,
            "set_alpha_to_one": False,
            "steps_offset": 1,
            "prediction_type": "epsilon",
        },
    )
    if not (model_dir / "model_index.json").is_file():
        atomic_write_json(
            model_dir / "model_index.json",
            {
                "_class_name": "StableDiffusionPipeline",
                "scheduler": ["diffusers", "DDIMScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "safety_checker": [None, None],
                "feature_extractor": [None, None],
                "requires_safety_checker": False,
            },
        )


def run_all(
    work: str | Path,
    model_dir: str | Path | None = None,
    configs: dict[str, StageConfig] | None = None,
    device: str | torch.device = "cpu",
    stages: tuple[str, ...] = ("oracle", "clip", "vae", "unet"),
    progress: bool = True,
) -> Path:
    """Train every stage in `work` (resumable), then export the model folder (default: work/model).

    training_log.json (seconds, images/s, final loss per stage) is written into the model folder.
    """
    work = Path(work)
    model_dir = Path(model_dir) if model_dir else work / "model"
    configs = configs or {}
    runners = {"oracle": run_oracle, "clip": run_clip, "vae": run_vae, "unet": run_unet}
    for stage in stages:
        cfg = configs.get(stage) or STAGE_CONFIGS[stage]()
        print(f"[t2i train all] stage {stage}: {asdict(cfg)}", flush=True)
        summary = runners[stage](work, cfg, device=device, progress=progress)
        print(f"[t2i train all] {stage} done: {json.dumps({k: v for k, v in summary.items() if k != 'config'})}", flush=True)
        update_training_log(work, summary)
    load_text_encoder(work, "cpu")
    write_scheduler_and_index(work, shapes_model_config("shapes")["schedule"])
    export_model(work, model_dir)
    import shutil

    shutil.copy(work / "training_log.json", model_dir / "training_log.json")
    return model_dir
