"""The conditionings VideoMaker is compared with (issue 20's table): how the reference reaches the video UNet.

- ``pisa`` -- VideoMaker: the reference latent is frame F+1 and the spatial self-attention is the
  personalized-injection attention (lumenkit.video.attention); trainable: spatial attn1 (+ motion modules).
- ``none`` -- baseline (a), text-to-video without a reference (AnimateDiff-style): F frames only, the stock
  processors; trainable: the same spatial attn1 (+ motion modules), so the budget buys the same parameters.
- ``ip_adapter`` -- baseline (b), IP-Adapter (Ye et al. 2023) as diffusers implements it: the reference's
  POOLED image embedding [B, D] (a frozen CLIP image tower: the base folder's ``clip/`` CLIPModel, or an
  ``image_encoder/`` CLIPVisionModelWithProjection as diffusers' IP-Adapter folders have) -> diffusers'
  ImageProjection (Linear to K = 4 tokens x cross_attention_dim + LayerNorm) -> the UNet's
  ``encoder_hid_proj`` (encoder_hid_dim_type "ip_image_proj", so UNetMotionModel repeats the tokens per
  frame) -> decoupled cross-attention on every attn2 outside the motion modules (diffusers'
  IPAdapterAttnProcessor2_0: out = Attn(q, K_text, V_text) + scale * Attn(q, K_ip, V_ip), with to_k_ip /
  to_v_ip initialised from the layer's to_k / to_v as IP-Adapter does). Trainable: the projection, to_k_ip
  / to_v_ip (+ motion modules); the base attention stays frozen, as IP-Adapter trains it.
  Classifier-free guidance drops the image condition as diffusers' pipelines do: a ZERO pooled embedding.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lumenkit.common.errors import LumenkitError
from lumenkit.video.models import is_motion_module, is_spatial_cross_attention, is_spatial_self_attention

CONDITIONINGS = ("pisa", "none", "ip_adapter")
IP_TOKENS = 4  # image tokens of the projection (IP-Adapter's "num_tokens")
IP_PARAMETER_PARTS = ("encoder_hid_proj.", ".to_k_ip.", ".to_v_ip.")


def check_conditioning(conditioning: str) -> None:
    if conditioning not in CONDITIONINGS:
        raise LumenkitError(f"--conditioning {conditioning!r}: expected one of {', '.join(CONDITIONINGS)}")


def uses_reference_frame(conditioning: str) -> bool:
    """True when the reference latent is appended as frame F+1 (VideoMaker's PISA)."""
    return conditioning == "pisa"


def is_cross_attention(name: str) -> bool:
    """A spatial cross-attention (attn2 outside the motion modules): where IP-Adapter's image tokens enter."""
    return ".attn2." in name and not is_motion_module(name)


def trainable_parameter_names(unet, conditioning: str = "pisa", *, motion_modules: bool = True,
                              cross_attention: bool = False) -> list[str]:
    """The parameters a conditioning trains (module docstring), + every motion-module parameter with
    `motion_modules`, + the spatial cross-attention (attn2's own to_q/k/v/out) with `cross_attention` (the
    base's motion stage, lumenkit.video.base). The names are the UNetMotionModel's own (IP-Adapter's under
    ``...attn2.processor.``)."""
    check_conditioning(conditioning)
    if cross_attention:
        inner = trainable_parameter_names(unet, conditioning, motion_modules=motion_modules)
        extra = {n for n, _ in unet.named_parameters() if is_spatial_cross_attention(n) and ".processor." not in n}
        return [n for n, _ in unet.named_parameters() if n in extra or n in set(inner)]
    if conditioning == "ip_adapter":
        own = lambda n: any(p in n for p in IP_PARAMETER_PARTS) or n.startswith("encoder_hid_proj.")  # noqa: E731
    else:
        own = is_spatial_self_attention
    return [n for n, _ in unet.named_parameters() if own(n) or (motion_modules and is_motion_module(n))]


def install_ip_adapter(unet, image_embed_dim: int, num_tokens: int = IP_TOKENS, scale: float = 1.0, seed: int | None = 0) -> int:
    """Give `unet` (UNetMotionModel) IP-Adapter's decoupled cross-attention for a pooled image embedding of
    `image_embed_dim` (module docstring). The projection is drawn under `seed`; to_k_ip / to_v_ip start as
    copies of each layer's to_k / to_v. Returns the number of attn2 layers changed."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection

    cross_dim = int(unet.config.cross_attention_dim)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        proj = ImageProjection(int(image_embed_dim), cross_dim, num_image_text_embeds=int(num_tokens))
    modules = dict(unet.named_modules())
    procs, changed = {}, 0
    for name, proc in unet.attn_processors.items():
        if not is_cross_attention(name):
            procs[name] = proc
            continue
        attn = modules[name[: -len(".processor")]]
        ip = IPAdapterAttnProcessor2_0(attn.to_k.out_features, cross_dim, num_tokens=(int(num_tokens),), scale=float(scale))
        with torch.no_grad():
            ip.to_k_ip[0].weight.copy_(attn.to_k.weight)
            ip.to_v_ip[0].weight.copy_(attn.to_v.weight)
        procs[name] = ip.to(attn.to_k.weight.device, attn.to_k.weight.dtype)
        changed += 1
    if not changed:
        raise LumenkitError(f"{type(unet).__name__} has no cross-attention (attn2) layers for an IP-Adapter")
    unet.set_attn_processor(procs)
    unet.encoder_hid_proj = MultiIPAdapterImageProjection([proj]).to(unet.device, unet.dtype)
    unet.config.encoder_hid_dim_type = "ip_image_proj"
    return changed


def ip_kwargs(image_embeds: torch.Tensor | None) -> dict[str, Any]:
    """video_eps keyword arguments carrying pooled image embeddings [B, D] (none: {})."""
    if image_embeds is None:
        return {}
    return {"added_cond_kwargs": {"image_embeds": [image_embeds[:, None]]}}


class PooledImageEncoder(torch.nn.Module):
    """Frozen CLIP image tower: images [B, 3, H, W] in [-1, 1] -> pooled, projected embeddings [B, D]
    (get_image_features), resized (bilinear) to the tower's image_size. No normalisation beyond [-1, 1]:
    lumenkit's CLIP (t2i) was trained on [-1, 1] images; pass `mean` / `std` for an OpenAI-style tower."""

    def __init__(self, model, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        cfg = model.config.vision_config if hasattr(model.config, "vision_config") else model.config
        self.image_size = int(cfg.image_size)
        self.mean = None if mean is None else torch.tensor(mean).view(1, 3, 1, 1)
        self.std = None if std is None else torch.tensor(std).view(1, 3, 1, 1)

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise LumenkitError(f"image encoder: images [B, 3, H, W] expected, got {tuple(images.shape)}")
        dev = next(self.model.parameters()).device
        x = images.to(dev, torch.float32)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True)
        if self.mean is not None:
            x = ((x + 1) / 2 - self.mean.to(dev)) / self.std.to(dev)
        if hasattr(self.model, "get_image_features"):  # CLIPModel
            out = self.model.get_image_features(pixel_values=x)
            out = getattr(out, "pooler_output", out)
        else:  # CLIPVisionModelWithProjection
            out = self.model(pixel_values=x).image_embeds
        return out.float()


def load_image_encoder(base: str | Path, device: str | torch.device = "cpu") -> PooledImageEncoder:
    """The frozen CLIP image tower of an SD folder: base/image_encoder (diffusers' IP-Adapter layout,
    CLIPVisionModelWithProjection, OpenAI normalisation) or base/clip (lumenkit's CLIPModel, [-1, 1])."""
    base = Path(base)
    if (base / "image_encoder" / "config.json").is_file():
        from transformers import CLIPVisionModelWithProjection

        model = CLIPVisionModelWithProjection.from_pretrained(base / "image_encoder", local_files_only=True, use_safetensors=True)
        return PooledImageEncoder(model.to(device), (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    if (base / "clip" / "config.json").is_file():
        from transformers import CLIPModel

        return PooledImageEncoder(CLIPModel.from_pretrained(base / "clip", local_files_only=True, use_safetensors=True).to(device))
    raise LumenkitError(f"--base {base}: no image_encoder/ or clip/ folder (the IP-Adapter baseline needs a CLIP image tower)")
