"""Training the small Stable Diffusion on the shapes world: CLIP, then the VAE, then the UNet (seed 003).

Each stage is a dataclass config (a `lumenkit.common.train_loop.TrainConfig`, saved as ``config.json``
beside its checkpoints) and a loss function; the loop is the one training engine
(`lumenkit.common.train_loop.train`: AdamW, warm-up, clipping, bf16 autocast, EMA, atomic resumable
checkpoints, 1 or N processes). Each step's global batch and noise are drawn from generators seeded
with (seed, step) and every process computes its rows of it, so a resumed run continues exactly and
N processes take the same steps as one.

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from lumenkit.common.config import ConfigError, config_from_dict, config_to_dict, param, read_json
from lumenkit.common.errors import LumenkitError
from lumenkit.common.fileio import atomic_dir, atomic_write_json, save_pretrained_atomic
from lumenkit.common.train_loop import TrainConfig, TrainResult, batch_rng, make_accelerator, torch_gen, train
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
class StageConfig(TrainConfig):
    """Fields shared by every stage: the engine's (TrainConfig) and the model preset."""

    preset: Literal["shapes", "tiny"] = param("shapes", "model size preset of lumenkit.t2i.models")


@dataclass
class ClipConfig(StageConfig):
    steps: int = 600
    batch_size: int = param(128, "global batch; the contrastive loss sees batch_size / gradient_accumulation_steps pairs")
    lr: float = 5e-4
    weight_decay: float = 0.1


@dataclass
class VaeConfig(StageConfig):
    steps: int = 1500
    batch_size: int = 32
    kl_weight: float = param(1e-6, "weight of KL(q(z|x) || N(0, I)) per pixel value")
    mse_weight: float = param(1.0, "weight of the MSE beside the L1 reconstruction loss")
    crop: int = param(32, "train on random crops of this size (the VAE is convolutional; 0 = whole 64x64 images)")
    decoder_only: bool = param(False, "fine-tune only the decoder of OUT/vae (latents unchanged, as SD's ft-MSE VAE)")
    finetune: bool = param(False, "start from OUT/vae and train all of it (a new domain; scaling_factor recomputed)")
    eval_images: int = param(256, "fresh images for the final PSNR and the latent std (scaling_factor)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decoder_only and self.finetune:
            raise ConfigError("--decoder_only and --finetune exclude each other (decoder alone, or all of OUT/vae)")


@dataclass
class UnetConfig(StageConfig):
    steps: int = 4000
    batch_size: int = 64
    warmup_steps: int = 200
    caption_dropout: float = param(0.1, "probability of the empty caption (for classifier-free guidance)")
    ema_decay: float = 0.999
    n_latents: int = param(16384, "training images encoded once by the frozen VAE (captions are finite)")
    min_lr_ratio: float = 0.1
    snr_gamma: float = param(5.0, "Min-SNR-gamma loss weighting (Hang et al. 2023): w = min(SNR, g) / SNR; 0 = plain MSE")
    # offset noise (Guttenberg 2023; diffusers' --noise_offset): eps += offset * N(0, 1) per sample and channel.
    # The shapes world's backgrounds are whole-image colours, i.e. latent channel means of +-1.8; with plain
    # eps-prediction the sampler shrank them to ~60% (white came out pink), measured at step 1900.
    noise_offset: float = param(0.1, "offset noise: eps += offset x N(0, 1) per sample and channel")
    finetune: bool = param(False, "start from OUT/unet (live and EMA weights) instead of a fresh UNet")


@dataclass
class OracleConfig(StageConfig):
    steps: int = 1200
    batch_size: int = 128
    lr: float = 2e-3
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    min_lr_ratio: float = 0.01  # cosine decay: at a constant lr the BatchNorm net's accuracy jitters by a point or two
    eval_images: int = param(2000, "fresh images for the final held-out accuracy")
    augment: bool = param(True, "train on oracle.degrade()d images too (generated images are softer than renders)")


STAGE_CONFIGS = {"clip": ClipConfig, "vae": VaeConfig, "unet": UnetConfig, "oracle": OracleConfig}


def stage_config_from_dict(cls: type[StageConfig], d: dict, source: str = "config") -> StageConfig:
    """A stage config from JSON (strict keys); configs saved before the training engine said amp: true|false."""
    d = dict(d)
    if "amp" in d:
        d.setdefault("mixed_precision", "bf16" if d.pop("amp") else "no")
    return config_from_dict(cls, d, source=source)


def load_recipe(path: str | Path) -> dict[str, dict]:
    """A training recipe JSON {stage: {field: value}} (stages clip, vae, unet, oracle), checked strictly:
    an unknown stage or field is an error naming it and the file."""
    recipe = read_json(path, what="training recipe (--config)")
    if not isinstance(recipe, dict):
        raise LumenkitError(f"{path}: expected a JSON object {{stage: {{field: value}}}}")
    unknown = sorted(set(recipe) - set(STAGE_CONFIGS))
    if unknown:
        raise LumenkitError(f"{path}: unknown stage(s) {', '.join(unknown)} (known: {', '.join(STAGE_CONFIGS)})")
    for stage, d in recipe.items():
        stage_config_from_dict(STAGE_CONFIGS[stage], d, source=f"{path}: {stage}")
    return recipe


def _stage_summary(name: str, res: TrainResult, cfg: StageConfig) -> dict:
    return {
        "stage": name,
        "steps": res.steps_done,
        "batch_size": cfg.batch_size,
        "seconds": round(res.seconds, 1),
        "images": res.samples,
        "images_per_s": round(res.samples_per_s, 1),
        "final_loss": res.final_loss,
        "config": config_to_dict(cfg),
    }


def is_main_process() -> bool:
    return make_accelerator().is_main_process


# ------------------------------------------------------------------------------------------ schedule
def alphas_cumprod(model_cfg: dict) -> torch.Tensor:
    """a_t = prod(1 - beta) [T] float32 of the preset's schedule (SD 1.x scaled linear)."""
    from lumenkit.diffusion import NoiseSchedule

    return NoiseSchedule.from_config(**model_cfg["schedule"]).alphas_cumprod.float()


def export_on_main(write) -> None:
    """Call write() on the main process only (exports, tokenizer files); every process waits for it."""
    acc = make_accelerator()
    if acc.is_main_process:
        write()
    acc.wait_for_everyone()


# ------------------------------------------------------------------------------------------ stage a: CLIP
def build_tokenizer(out: Path, model_cfg: dict):
    from lumenkit.t2i.tokenizer import load_tokenizer, write_tokenizer

    folder = out / "tokenizer"
    if not (folder / "vocab.json").is_file():
        export_on_main(lambda: write_tokenizer(folder, max_length=model_cfg["max_length"]))
    return load_tokenizer(folder)


class ClipEmbed(torch.nn.Module):
    """CLIPModel's forward as the engine trains it: (image embeds, text embeds) [B, D] unit-norm, and the
    temperature exp(logit_scale) -- all through forward(), so a distributed wrapper sees every parameter."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor):
        o = self.clip(input_ids=input_ids, pixel_values=pixel_values)
        return o.image_embeds.float(), o.text_embeds.float(), self.clip.logit_scale.exp().float()


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's rows [b, ...] -> [world * b, ...] in rank order, with gradients."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_nn

    return torch.cat(dist_nn.all_gather(x))


def clip_contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over the whole (global) batch: mean of the image->text and text->image
    cross-entropies of scale * cosine similarities, gathered over processes so that N processes see
    the same negatives as one (each process's gradient reaches its own rows through the gather)."""
    img, txt = gather_rows(image_embeds), gather_rows(text_embeds)
    logits = scale * txt @ img.t()  # [B, B] text x image
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def token_ids(tokenizer) -> dict[str, int]:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def run_clip(out: str | Path, cfg: ClipConfig | None = None, device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """Contrastive CLIP training; writes out/clip (CLIPModel.save_pretrained) and out/tokenizer."""
    from lumenkit.t2i.models import build_clip_model
    from lumenkit.t2i.tokenizer import tokenize

    cfg = cfg or ClipConfig()
    device = make_accelerator(device).device
    out = Path(out)
    model_cfg = shapes_model_config(cfg.preset)
    tok = build_tokenizer(out, model_cfg)
    torch.manual_seed(cfg.seed)
    clip = build_clip_model(model_cfg, vocab_size=len(tok), **token_ids(tok)).to(device)

    def loss_fn(model, step: int, rows: slice) -> torch.Tensor:
        b = D.make_batch(batch_rng(cfg.seed, step), cfg.batch_size, "train")
        ids = tokenize(tok, b.captions[rows]).to(device)
        return clip_contrastive_loss(*model(ids, b.images[rows].to(device)))

    res = train("clip", out / "clip_train", cfg, ClipEmbed(clip), loss_fn, device=device, progress=progress)
    clip.eval()
    export_on_main(lambda: save_pretrained_atomic(clip, out / "clip"))
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
class VaeReconstruction(torch.nn.Module):
    """AutoencoderKL's encode -> reparameterised sample -> decode as one forward (for the engine's
    distributed wrapper): (x [B, 3, H, W] in [-1, 1], noise [B, C, H/f, W/f]) -> (reconstruction, KL [B])."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, noise: torch.Tensor):
        post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.mean + post.std * noise).sample
        return rec.float(), post.kl().float()


def shapes_images(rng: np.random.Generator, n: int) -> torch.Tensor:
    """n shapes-world images [n, 3, 64, 64] in [-1, 1] (both splits): what the VAE trains on by default."""
    return D.make_batch(rng, n, "all").images


def run_vae(out: str | Path, cfg: VaeConfig | None = None, device: str | torch.device = "cpu", progress: bool = True,
            images=shapes_images) -> dict:
    """AutoencoderKL training; writes out/vae (save_pretrained, scaling_factor = 1/std of latents).

    With cfg.decoder_only, fine-tunes the decoder of the existing out/vae with the encoder frozen, so
    the latents (and a UNet trained on them) stay valid; scaling_factor is kept. With cfg.finetune, all of
    out/vae is trained further (e.g. on another world's images) and scaling_factor is recomputed.
    images(rng, n) -> [n, 3, H, W] in [-1, 1]: the training and evaluation images (default: shapes_images).
    """
    from lumenkit.common.metrics import psnr
    from lumenkit.t2i.models import build_vae

    cfg = cfg or VaeConfig()
    device = make_accelerator(device).device
    out = Path(out)
    model_cfg = shapes_model_config(cfg.preset)
    torch.manual_seed(cfg.seed)
    if cfg.decoder_only or cfg.finetune:
        from diffusers import AutoencoderKL

        if not (out / "vae" / "config.json").is_file():
            raise LumenkitError(f"{out}: no vae/ to fine-tune: run `lumenkit t2i train vae --out {out}` first")
        vae = AutoencoderKL.from_pretrained(out / "vae").to(device)
        if cfg.decoder_only:
            vae.encoder.requires_grad_(False)
            if vae.quant_conv is not None:
                vae.quant_conv.requires_grad_(False)
    else:
        vae = build_vae(model_cfg).to(device)

    f = 2 ** (len(model_cfg["vae"]["block_out_channels"]) - 1)  # the VAE's downsampling factor
    latent_channels = vae.config.latent_channels

    def loss_fn(model, step: int, rows: slice) -> torch.Tensor:
        x = images(batch_rng(cfg.seed, step), cfg.batch_size)
        if 0 < cfg.crop < x.shape[-1]:
            oy, ox = (torch.randint(0, (x.shape[-1] - cfg.crop) // f + 1, (2,), generator=torch_gen(cfg.seed + 1, step)) * f).tolist()
            x = x[..., oy : oy + cfg.crop, ox : ox + cfg.crop]
        noise = torch.randn((x.shape[0], latent_channels, x.shape[-2] // f, x.shape[-1] // f), generator=torch_gen(cfg.seed, step))
        x = x[rows].to(device)
        rec, kl = model(x, noise[rows].to(device))
        kl = kl.mean() / x[0].numel()  # per pixel value, like the per-pixel rec. loss (SD's ratio)
        return (rec - x).abs().mean() + cfg.mse_weight * F.mse_loss(rec, x) + cfg.kl_weight * kl

    name = "vae_decoder" if cfg.decoder_only else "vae_finetune" if cfg.finetune else "vae"
    res = train(name, out / f"{name}_train", cfg, VaeReconstruction(vae), loss_fn, device=device, progress=progress)
    vae.eval()
    # scaling factor: 1 / std of posterior samples, as in SD (0.18215 for their VAE)
    with torch.no_grad():
        x = images(np.random.default_rng(cfg.seed + 777), cfg.eval_images)
        post = vae.encode(x.to(device)).latent_dist
        z = post.sample(generator=torch.Generator(device=device).manual_seed(0))
        std = float(z.std())
        rec = vae.decode(post.mean).sample.clamp(-1, 1)
        p = psnr((rec.cpu() + 1) / 2, (x + 1) / 2)
    if not cfg.decoder_only:
        vae.register_to_config(scaling_factor=1.0 / std)
    export_on_main(lambda: save_pretrained_atomic(vae, out / "vae"))
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
    export_on_main(lambda: save_pretrained_atomic(te, out / "text_encoder"))
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


def shapes_latents(vae, n: int, seed: int, device, progress: bool = True):
    """The UNet's training set on the shapes world: n train-split images encoded by `vae` ->
    (posterior mean [n, C, h, w], std [n, C, h, w], caption index [n], captions: list[str])."""
    mean, std, idx = encode_latent_cache(vae, n, seed, device, progress=progress)
    return mean, std, idx, [s.caption() for s in D.all_scenes("train")]


def training_noise(shape: torch.Size, generator: torch.Generator, offset: float = 0.0) -> torch.Tensor:
    """eps [B, C, h, w] ~ N(0, 1) plus, with offset > 0, one N(0, offset^2) constant per sample and channel."""
    eps = torch.randn(shape, generator=generator)
    if offset > 0:
        eps = eps + offset * torch.randn(tuple(shape[:2]) + (1, 1), generator=generator)
    return eps


def run_unet(out: str | Path, cfg: UnetConfig | None = None, device: str | torch.device = "cpu", progress: bool = True,
             latents=shapes_latents) -> dict:
    """Noise-prediction training of the UNet on frozen-VAE latents and frozen-CLIP contexts; writes
    out/unet (EMA weights, save_pretrained) and out/unet_train/ (checkpoints). With cfg.finetune the UNet
    (and its EMA) start from out/unet. latents(vae, n, seed, device, progress) -> (mean, std, caption
    index [n], captions): the training set (default: shapes_latents)."""
    from diffusers import AutoencoderKL

    from lumenkit.t2i.models import build_unet

    cfg = cfg or UnetConfig()
    device = make_accelerator(device).device
    out = Path(out)
    model_cfg = shapes_model_config(cfg.preset)
    if not (out / "vae" / "config.json").is_file():
        raise LumenkitError(f"{out}: no vae/ folder: run `lumenkit t2i train vae --out {out}` first")
    tok = build_tokenizer(out, model_cfg)
    te = load_text_encoder(out, device)
    vae = AutoencoderKL.from_pretrained(out / "vae").to(device).eval()
    sf = float(vae.config.scaling_factor)
    t_enc = time.perf_counter()
    mean, std, caption_idx, captions = latents(vae, cfg.n_latents, cfg.seed, device, progress)
    contexts = torch.cat([encode_prompts(te, tok, chunk, device).float().cpu()  # [S+1, K, E]
                          for chunk in _chunks(captions + [""], 1024)])
    cache_seconds = time.perf_counter() - t_enc
    del vae, te
    a_bar = alphas_cumprod(model_cfg)
    T = a_bar.numel()
    torch.manual_seed(cfg.seed)
    if cfg.finetune:
        from diffusers import UNet2DConditionModel

        if not (out / "unet" / "config.json").is_file():
            raise LumenkitError(f"{out}: no unet/ to fine-tune: run `lumenkit t2i train unet --out {out}` first")
        unet = UNet2DConditionModel.from_pretrained(out / "unet").to(device)
        ema = UNet2DConditionModel.from_pretrained(out / "unet").to(device).requires_grad_(False)
    else:
        unet = build_unet(model_cfg).to(device)
        ema = build_unet(model_cfg).to(device).requires_grad_(False)
    null_idx = len(captions)

    def loss_fn(model, step: int, rows: slice) -> torch.Tensor:
        g = torch_gen(cfg.seed, step)  # the whole global batch is drawn, then this process's rows taken
        pick = torch.randint(0, mean.shape[0], (cfg.batch_size,), generator=g)
        z0 = (mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=g)) * sf
        drop = torch.rand(cfg.batch_size, generator=g) < cfg.caption_dropout
        ctx = contexts[torch.where(drop, torch.full_like(pick, null_idx), caption_idx[pick])]
        t = torch.randint(0, T, (cfg.batch_size,), generator=g)
        eps = training_noise(z0.shape, g, cfg.noise_offset)
        ab = a_bar[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * z0 + (1 - ab).sqrt() * eps  # DDPM eq. 4
        xt, t, ctx, eps, ab = (v[rows].to(device) for v in (xt, t, ctx, eps, ab))
        pred = model(xt, t, ctx).sample
        per_sample = (pred.float() - eps).pow(2).mean(dim=(1, 2, 3))
        if cfg.snr_gamma > 0:
            snr = ab.view(-1) / (1 - ab.view(-1))
            per_sample = per_sample * snr.clamp(max=cfg.snr_gamma) / snr
        return per_sample.mean()

    res = train("unet", out / "unet_train", cfg, unet, loss_fn, ema_model=ema, device=device, progress=progress)
    export_on_main(lambda: save_pretrained_atomic(ema.eval(), out / "unet"))
    summary = _stage_summary("unet", res, cfg)
    summary["latent_cache_seconds"] = round(cache_seconds, 1)
    return summary


# ------------------------------------------------------------------------------------------ oracle
def _chunks(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def run_oracle(out: str | Path, cfg: OracleConfig | None = None, device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """Train the attribute oracle on fresh procedural images of every combination; writes out/oracle."""
    from lumenkit.t2i.oracle import Oracle, degrade, heldout_accuracy, oracle_loss

    cfg = cfg or OracleConfig()
    device = make_accelerator(device).device
    out = Path(out)
    torch.manual_seed(cfg.seed)
    model = Oracle().to(device)

    def loss_fn(net, step: int, rows: slice) -> torch.Tensor:
        b = D.make_batch(batch_rng(cfg.seed, step), cfg.batch_size, "all")
        images = b.images
        if cfg.augment:  # half of each batch degraded, half clean
            half = images.shape[0] // 2
            images = torch.cat([images[:half], degrade(images[half:], torch_gen(cfg.seed + 2, step))])
        logits = net(images[rows].to(device))
        return oracle_loss(logits, D.labels_tensor(b.scenes[rows]))

    res = train("oracle", out / "oracle_train", cfg, model, loss_fn, device=device, progress=progress)
    model.eval()

    def write_oracle() -> None:
        with atomic_dir(out / "oracle") as tmp:
            model.save(tmp)

    export_on_main(write_oracle)
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


MODEL_PARTS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler", "clip", "oracle")


def export_model(work: Path, model_dir: Path) -> Path:
    """Assemble the diffusers-layout folder from the work folder: tokenizer/, text_encoder/, vae/, unet/,
    scheduler/, model_index.json, plus clip/ (for CLIP score), oracle/ (for evaluation) and
    training_log.json. Built in a temporary folder and renamed: an interruption leaves the old model."""
    import shutil

    work, model_dir = Path(work), Path(model_dir)
    missing = [sub for sub in MODEL_PARTS if not (work / sub).is_dir()]
    if missing:
        raise LumenkitError(f"{work}: missing {', '.join(missing)}; train every stage first")
    with atomic_dir(model_dir) as tmp:
        for sub in MODEL_PARTS:
            shutil.copytree(work / sub, tmp / sub, ignore=shutil.ignore_patterns("*.pt"))
        for name in ("model_index.json", "training_log.json"):
            if (work / name).is_file():
                shutil.copy(work / name, tmp / name)
    return model_dir


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
        if is_main_process():
            print(f"[t2i train all] stage {stage}: {config_to_dict(cfg)}", flush=True)
        summary = runners[stage](work, cfg, device=device, progress=progress)
        if is_main_process():
            print(f"[t2i train all] {stage} done: {json.dumps({k: v for k, v in summary.items() if k != 'config'})}", flush=True)
            update_training_log(work, summary)
    load_text_encoder(work, "cpu")

    def write() -> None:
        from lumenkit.t2i.pipeline import scheduler_config_from_preset, write_scheduler_and_index

        write_scheduler_and_index(work, scheduler_config_from_preset(shapes_model_config("shapes")["schedule"]))
        export_model(work, model_dir)

    export_on_main(write)
    return model_dir
