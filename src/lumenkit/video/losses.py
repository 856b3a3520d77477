"""VideoMaker's training objective (seed 002): the guidance information recognition (GIR) loss, the
image-condition dropout for classifier-free guidance, and the frozen / trainable split.

GIR loss (``gir_loss``). Clean video latents z0 [B, F, C, h, w] and the reference latent r [B, C, h, w]:

    z_t  = sqrt(a_t) z0 + sqrt(1 - a_t) eps                      (DDPM eq. 4, a = alphas_cumprod)
    t'   = round(alpha * t)                                      (alpha = 0.01: "reminder noise")
    r_t  = sqrt(a_t') r + sqrt(1 - a_t') eps_r                   (the seed's lambda_t' = sqrt(a_t'))
    eps_hat = eps_theta([z_t ; r_t], c_text, t)                  F + 1 frames, reference LAST
    L = L_video + beta * L_reg,   L_video = ||eps - eps_hat[:F]||^2,   L_reg = ||eps_r - eps_hat[F]||^2

(means over elements; beta = 0.1). The time embedding: diffusers' UNetMotionModel embeds ONE timestep per
clip and repeats it over the frames, and the seed writes L_reg = ||eps - eps_theta(r_t, c_text, t)||^2:
the reference is fed at its own noise level t' but with the clip's t embedding, as the public training
code does. That is also what inference sees: a (nearly) clean reference beside frames embedded at the
sampler's t. A reference dropped for CFG (``ref_dropped``) enters as zeros (no noise: the unconditional
branch at inference uses zeroed reference latents) and is left out of L_reg (there is nothing in a zero
latent to recognise eps_r from).

Condition dropout (``condition_dropout``): per sample, both reference and text are dropped with
probability p_both (0.05) and the reference alone with probability p_ref (0.25), exclusive events, as
the public training fork the spec cites (u < 0.05: both; u < 0.30: reference); the paper gives no rate.

Trainable set (``set_trainable``): the spatial self-attention layers (attn1 outside motion_modules, the
layers PISA runs on) and, with ``train_motion`` (the paper's recommended "+ update motion"), every
motion-module parameter; everything else requires_grad False.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lumenkit.common.errors import LumenkitError

REMINDER_ALPHA = 0.01  # t' = alpha * t (paper)
REG_BETA = 0.1  # weight of L_reg (paper)
P_REF = 0.25  # reference dropped alone (public training fork)
P_BOTH = 0.05  # reference and text dropped together (public training fork)

# model(x [B, F+1, C, h, w], t [B], context [B, K, E]) -> eps_hat [B, F+1, C, h, w]
VideoDenoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def reminder_timesteps(t: torch.Tensor, alpha: float = REMINDER_ALPHA, num_timesteps: int | None = None) -> torch.Tensor:
    """t' = round(alpha * t) [B] int64 (torch.round: halves to even, as Python's round), clamped to
    [0, num_timesteps - 1] when given. alpha * t is computed in float64."""
    tp = torch.round(t.to(torch.float64) * float(alpha)).to(torch.int64)
    lo, hi = 0, (num_timesteps - 1 if num_timesteps is not None else None)
    return tp.clamp(min=lo, max=hi)


def add_noise(x0: torch.Tensor, eps: torch.Tensor, a_bar: torch.Tensor) -> torch.Tensor:
    """DDPM eq. 4: sqrt(a_bar) x0 + sqrt(1 - a_bar) eps, a_bar [B] broadcast over x0's other dims."""
    a = a_bar.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


@dataclass
class GirLoss:
    """loss = video + beta * reg (scalars); t_ref [B] the reminder timesteps used; pred [B, F+1, C, h, w]."""

    loss: torch.Tensor
    video: torch.Tensor
    reg: torch.Tensor
    t_ref: torch.Tensor
    pred: torch.Tensor


def gir_loss(model: VideoDenoiser, z0: torch.Tensor, ref: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
             context: torch.Tensor, eps: torch.Tensor | None = None, eps_ref: torch.Tensor | None = None, *,
             alpha: float = REMINDER_ALPHA, beta: float = REG_BETA, ref_dropped: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> GirLoss:
    """VideoMaker's loss L = L_video + beta * L_reg (module docstring has the equations).

    model: a VideoDenoiser (x [B, F+1, C, h, w], t [B], context [B, K, E]) -> eps_hat [B, F+1, C, h, w],
      or a diffusers UNetMotionModel (run through lumenkit.video.models.video_eps).
    z0 [B, F, C, h, w] clean video latents; ref [B, C, h, w] clean reference latent; t [B] int64 in [0, T);
    alphas_cumprod [T]; context [B, K, E] text states (already caption-dropped); eps [B, F, C, h, w] and
    eps_ref [B, C, h, w] the noises (drawn from `generator` when None); ref_dropped [B] bool: references
    zeroed for classifier-free guidance (excluded from L_reg)."""
    if z0.ndim != 5 or ref.ndim != 4 or ref.shape != (z0.shape[0], *z0.shape[2:]):
        raise LumenkitError(f"gir_loss: z0 [B, F, C, h, w] and ref [B, C, h, w] expected, got {tuple(z0.shape)} and {tuple(ref.shape)}")
    from diffusers import UNetMotionModel

    if isinstance(model, UNetMotionModel):
        from lumenkit.video.models import video_eps

        unet = model
        model = lambda x, tt, c: video_eps(unet, x, tt, c)  # noqa: E731
    b, n_video = z0.shape[:2]
    if eps is None:
        eps = torch.randn(z0.shape, generator=generator, dtype=z0.dtype).to(z0.device)
    if eps_ref is None:
        eps_ref = torch.randn(ref.shape, generator=generator, dtype=ref.dtype).to(ref.device)
    a = alphas_cumprod.to(z0.device)
    t = t.to(z0.device)
    t_ref = reminder_timesteps(t, alpha, a.numel())
    z_t = add_noise(z0, eps, a[t])
    r_t = add_noise(ref, eps_ref, a[t_ref])
    keep = torch.ones(b, dtype=torch.bool, device=z0.device)
    if ref_dropped is not None:
        keep = ~ref_dropped.to(device=z0.device, dtype=torch.bool)
        r_t = r_t * keep.view(-1, 1, 1, 1).to(r_t.dtype)
    x = torch.cat([z_t, r_t[:, None]], dim=1)
    pred = model(x, t, context)
    if pred.shape != x.shape:
        raise LumenkitError(f"gir_loss: the model returned {tuple(pred.shape)} for input {tuple(x.shape)}")
    dt = torch.promote_types(pred.dtype, torch.float32)  # fp16/bf16 predictions: the loss in float32
    pred = pred.to(dt)
    video = (pred[:, :n_video] - eps.to(dt)).pow(2).mean()
    per_ref = (pred[:, n_video] - eps_ref.to(dt)).pow(2).mean(dim=(1, 2, 3))  # [B]
    k = keep.to(per_ref.dtype)
    reg = (per_ref * k).sum() / k.sum().clamp(min=1.0)
    return GirLoss(loss=video + beta * reg, video=video, reg=reg, t_ref=t_ref, pred=pred)


# --------------------------------------------------------------------------------- condition dropout
@dataclass
class ConditionDrop:
    """Per-sample masks [B] bool: ref (reference zeroed: both or reference-only) and text (caption -> "")."""

    ref: torch.Tensor
    text: torch.Tensor


def condition_dropout(batch_size: int, p_ref: float = P_REF, p_both: float = P_BOTH,
                      generator: torch.Generator | None = None) -> ConditionDrop:
    """Draw the image-condition dropout of one batch: with u ~ U[0, 1) per sample, u < p_both drops the
    reference and the text, p_both <= u < p_both + p_ref the reference only (so P(ref dropped) =
    p_ref + p_both, P(text dropped) = p_both, P(text only) = 0)."""
    if not (0 <= p_ref and 0 <= p_both and p_ref + p_both <= 1):
        raise LumenkitError(f"condition dropout: p_ref {p_ref} and p_both {p_both} must be >= 0 with sum <= 1")
    u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
    both = u < p_both
    return ConditionDrop(ref=u < p_both + p_ref, text=both)


def drop_text(context: torch.Tensor, null_context: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """context [B, K, E] with the rows where dropped [B] is True replaced by null_context [K, E] or [1, K, E]
    (the empty prompt's states)."""
    null = null_context.reshape(1, *context.shape[1:]).to(context)
    return torch.where(dropped.to(context.device).view(-1, 1, 1), null, context)


# --------------------------------------------------------------------------------- trainable set
def set_trainable(unet, train_motion: bool = True, conditioning: str = "pisa", cross_attention: bool = False) -> list[str]:
    """requires_grad True exactly on VideoMaker's trainable parameters of `unet` (spatial attn1 outside
    motion_modules, + every motion-module parameter with `train_motion`; see
    lumenkit.video.models.videomaker_parameter_names), or a baseline conditioning's
    (lumenkit.video.baselines.trainable_parameter_names; + attn2 with cross_attention), False elsewhere; returns their names."""
    from lumenkit.video.baselines import trainable_parameter_names

    names = set(trainable_parameter_names(unet, conditioning, motion_modules=train_motion, cross_attention=cross_attention))
    if not names:
        raise LumenkitError(f"{type(unet).__name__} has no spatial self-attention parameters to train")
    for n, p in unet.named_parameters():
        p.requires_grad_(n in names)
    return [n for n, _ in unet.named_parameters() if n in names]
