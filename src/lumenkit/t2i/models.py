"""Stable Diffusion components from the field's libraries, with named size presets.

Seed 003 splits Stable Diffusion into three parts; each is a stock class here, not re-written:
- CLIP text encoder ("FrozenCLIPEmbedder"): transformers `CLIPTextModel`, prompt -> context [B, K, E];
  for contrastive training the full `CLIPModel` (image tower + text tower, learned temperature);
- image information generator: diffusers `UNet2DConditionModel` (ResBlocks + SpatialTransformers with
  cross-attention to the context) on latents [B, 4, H/f, W/f];
- image decoder: diffusers `AutoencoderKL` (f = 2^(len(block_out_channels) - 1)).

Presets (`PRESETS`, `preset_config(name)`):
- `sd15`: the real Stable Diffusion 1.x architecture (CLIP ViT-L/14 text tower, 77 tokens, 768 wide,
  12 layers; AutoencoderKL f=8, 4 latent channels, scaling 0.18215; UNet 320/640/1280/1280 with
  cross_attention_dim 768), so that real checkpoints load into it;
- `shapes`: the small model trained on this CPU on the procedural shapes world (64x64 images, f=4,
  latents [B, 4, 16, 16], CLIP 4 layers 128 wide, vision tower ViT 64 px patch 8);
- `tiny`: a few-kilobyte model for tests (32x32 images, f=2).
"""
from __future__ import annotations

import copy
from typing import Any

from lumenkit.common.errors import LumenkitError

# CompVis/SD 1.x noise schedule: betas = linspace(sqrt(linear_start), sqrt(linear_end), T)^2
# (diffusers calls this "scaled_linear").
SD_SCHEDULE = {"kind": "linear", "num_timesteps": 1000, "linear_start": 0.00085, "linear_end": 0.012}

# what every preset shares: SD 1.x's activations, embeddings and layout; the presets differ in widths and depths
_TOWER = {"hidden_act": "quick_gelu"}
_VAE = {"in_channels": 3, "out_channels": 3, "act_fn": "silu", "latent_channels": 4}
_UNET = {
    "in_channels": 4,
    "out_channels": 4,
    "act_fn": "silu",
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "center_input_sample": False,
}


def _vae(n_blocks: int, **kw: Any) -> dict[str, Any]:
    return {**_VAE, "down_block_types": ["DownEncoderBlock2D"] * n_blocks, "up_block_types": ["UpDecoderBlock2D"] * n_blocks, **kw}


def _unet(down: list[str], **kw: Any) -> dict[str, Any]:
    """UNet config; the up blocks mirror the down blocks (CrossAttnDownBlock2D <-> CrossAttnUpBlock2D)."""
    up = [t.replace("Down", "Up") for t in reversed(down)]
    return {**_UNET, "down_block_types": list(down), "up_block_types": up, **kw}


_SD15: dict[str, Any] = {
    "image_size": 512,
    "max_length": 77,
    "schedule": dict(SD_SCHEDULE),
    "text": {**_TOWER, "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
             "num_attention_heads": 12, "max_position_embeddings": 77, "projection_dim": 768,
             "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
    "vision": {**_TOWER, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
               "image_size": 224, "patch_size": 14, "projection_dim": 768},
    "projection_dim": 768,
    "vae": _vae(4, block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32, sample_size=512,
                scaling_factor=0.18215),
    "unet": _unet(["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"], sample_size=64,
                  block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, norm_num_groups=32, cross_attention_dim=768,
                  attention_head_dim=8),  # diffusers' legacy name: the number of heads in SD 1.x
}

_SHAPES: dict[str, Any] = {
    "image_size": 64,
    "max_length": 32,
    "schedule": dict(SD_SCHEDULE),
    "text": {**_TOWER, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
             "max_position_embeddings": 32, "projection_dim": 128},
    "vision": {**_TOWER, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
               "image_size": 64, "patch_size": 8, "projection_dim": 128},
    "projection_dim": 128,
    "vae": _vae(3, block_out_channels=[32, 64, 64], layers_per_block=1, norm_num_groups=16, sample_size=64,
                scaling_factor=1.0),  # t2i-train sets it to 1/std of the trained latents
    "unet": _unet(["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"], sample_size=16, block_out_channels=[64, 128, 128],
                  layers_per_block=1, norm_num_groups=32, cross_attention_dim=128, attention_head_dim=4),
}

_TINY: dict[str, Any] = {
    "image_size": 32,
    "max_length": 16,
    "schedule": dict(SD_SCHEDULE),
    "text": {**_TOWER, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "max_position_embeddings": 16, "projection_dim": 32},
    "vision": {**_TOWER, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "image_size": 32, "patch_size": 8, "projection_dim": 32},
    "projection_dim": 32,
    "vae": _vae(2, block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4, sample_size=32, scaling_factor=0.18215),
    "unet": _unet(["CrossAttnDownBlock2D", "DownBlock2D"], sample_size=16, block_out_channels=[16, 32], layers_per_block=1,
                  norm_num_groups=8, cross_attention_dim=32, attention_head_dim=2),
}

PRESETS: dict[str, dict[str, Any]] = {"sd15": _SD15, "shapes": _SHAPES, "tiny": _TINY}


def preset_config(name: str | dict) -> dict[str, Any]:
    """A deep copy of preset `name` (a dict passes through, copied): keys image_size, max_length,
    schedule, text, vision, projection_dim, vae, unet."""
    if isinstance(name, dict):
        return copy.deepcopy(name)
    if name not in PRESETS:
        raise LumenkitError(f"unknown t2i preset {name!r} (choose from {', '.join(PRESETS)})")
    return copy.deepcopy(PRESETS[name])


def latent_factor(preset: str | dict) -> int:
    """Pixels per latent cell of the preset's VAE: 2^(number of VAE blocks - 1)."""
    return 2 ** (len(preset_config(preset)["vae"]["block_out_channels"]) - 1)


def text_config(preset: str | dict, vocab_size: int | None = None, **overrides: Any):
    """transformers CLIPTextConfig of the preset. vocab_size (and overrides such as bos_token_id,
    eos_token_id, pad_token_id: the tokenizer's ids, used for CLIP's pooled output) replace the preset's."""
    from transformers import CLIPTextConfig

    cfg = preset_config(preset)["text"]
    if vocab_size is not None:
        cfg["vocab_size"] = int(vocab_size)
    cfg.update(overrides)
    if "vocab_size" not in cfg:
        raise LumenkitError(f"preset {preset!r}: give vocab_size (the tokenizer's vocabulary size)")
    # our own tokenizers: pad with the end token, like SD's CLIPTokenizer (pad_token "<|endoftext|>")
    cfg.setdefault("bos_token_id", cfg["vocab_size"] - 2)
    cfg.setdefault("eos_token_id", cfg["vocab_size"] - 1)
    cfg.setdefault("pad_token_id", cfg["vocab_size"] - 1)
    return CLIPTextConfig(**cfg)


def build_text_encoder(preset: str | dict, vocab_size: int | None = None, **token_ids: int):
    """CLIPTextModel of the preset, randomly initialised. Input ids [B, K] -> last_hidden_state [B, K, E]."""
    from transformers import CLIPTextModel

    return CLIPTextModel(text_config(preset, vocab_size, **token_ids)).eval()


def build_clip_model(preset: str | dict, vocab_size: int | None = None, **token_ids: int):
    """Full transformers CLIPModel (text + vision towers, projections, learned logit scale) for
    contrastive training. `text_encoder_from_clip` turns its text tower into a CLIPTextModel."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    cfg = preset_config(preset)
    tcfg = text_config(cfg, vocab_size, **token_ids)
    vcfg = CLIPVisionConfig(**cfg["vision"])
    config = CLIPConfig(text_config=tcfg.to_dict(), vision_config=vcfg.to_dict(), projection_dim=cfg["projection_dim"])
    return CLIPModel(config)


def text_encoder_from_clip(clip) -> Any:
    """A CLIPTextModel holding a copy of `clip`'s text tower weights (same outputs as clip.text_model)."""
    from transformers import CLIPTextModel

    te = CLIPTextModel(clip.config.text_config)
    te.load_state_dict(clip.text_model.state_dict())
    return te.eval()


def build_vae(preset: str | dict):
    """diffusers AutoencoderKL of the preset: image [B, 3, H, W] in [-1, 1] <-> latent [B, 4, H/f, W/f]."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**preset_config(preset)["vae"]).eval()


def build_unet(preset: str | dict):
    """diffusers UNet2DConditionModel of the preset: (latent [B, 4, h, w], t [B], context [B, K, E]) -> eps."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**preset_config(preset)["unet"]).eval()


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
