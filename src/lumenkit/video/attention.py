"""Personalized injection self-attention (PISA) of VideoMaker (seed 002), a diffusers attention processor.

VideoMaker feeds the reference latent through the video UNet as one more frame (the LAST of F + 1) and
replaces every spatial self-attention (``attn1`` outside ``motion_modules``) by PISA. With features
f [F+1, h*w, c] of one clip split into the video frames f_z^i (i < F) and the reference f_r:

    X_i   = concat(f_r, f_z^i)                          [2hw, c]   (for each video frame i)
    X_i'  = softmax(Q_i K_i^T / sqrt(d)) V_i            per head, Q_i/K_i/V_i = X_i W_Q / W_K / W_V
    f_z'^i, f_r'^(i) = split(X_i')                      the layer's own W_Q, W_K, W_V, W_O (no new parameters)
    f_r'  = mean_i f_r'^(i),   f' = frames [f_z'^0 .. f_z'^(F-1), f_r']   (reference stays last)

so each video frame attends to itself and to the reference, and the reference (whose features the UNet's
own ResBlocks extracted) is updated by all frames. The rest follows diffusers' AttnProcessor2_0: spatial
norm and group norm (applied per frame, before the tokens are concatenated: each frame is normalised as
the stock processor would), norm_q / norm_k, to_out (linear + dropout), residual_connection,
rescale_output_factor, 4-D [B, C, H, W] input; SDPA at its default scale 1/sqrt(head_dim), as
AttnProcessor2_0 calls it.

The number of video frames F is the processor's attribute ``num_frames``: set by
``install_pisa(unet, F)``, changed by ``set_pisa_frames`` / the ``pisa_frames`` context manager (which
``lumenkit.video.models.video_eps`` uses on every call), or given per call as
``cross_attention_kwargs={"num_frames": F}`` (diffusers then warns for the other processors, which do
not take it). ``num_frames=None`` makes PISA exactly the stock self-attention (no reference).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

from lumenkit.common.errors import LumenkitError
from lumenkit.video.models import is_spatial_self_attention


class PersonalizedInjectionAttnProcessor:
    """PISA for a diffusers ``Attention`` used as self-attention.

    hidden_states [B*(F+1), n, c] (or [B*(F+1), c, H, W], n = H*W), clip-major (frames of clip 0, then
    clip 1, ...), the reference the last frame of each clip -> [B*(F+1), n, c] (same layout, same frame
    order). encoder_hidden_states and attention_mask are not supported (PISA is self-attention)."""

    def __init__(self, num_frames: int | None = None):
        self.num_frames = num_frames

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 num_frames: int | None = None, *args, **kwargs) -> torch.Tensor:
        n_video = self.num_frames if num_frames is None else num_frames
        if n_video is None:  # no reference frame: the stock processor's self-attention
            from diffusers.models.attention_processor import AttnProcessor2_0

            return AttnProcessor2_0()(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if encoder_hidden_states is not None:
            raise LumenkitError("personalized injection attention is self-attention: it was given encoder_hidden_states "
                                "(install it on attn1 layers only)")
        if attention_mask is not None:
            raise LumenkitError("personalized injection attention does not take an attention_mask")
        n_video = int(n_video)
        if n_video < 1:
            raise LumenkitError(f"personalized injection attention: num_frames {n_video} (need >= 1 video frame)")

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            bn, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(bn, channel, height * width).transpose(1, 2)
        bn, n, _ = hidden_states.shape
        if bn % (n_video + 1):
            raise LumenkitError(f"personalized injection attention: {bn} frames in the batch is not a multiple of "
                                f"num_frames + 1 = {n_video + 1} (F video frames + the reference)")
        b = bn // (n_video + 1)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        # W_Q / W_K / W_V act token by token: project every frame once, then pair the reference with each frame
        heads = attn.heads
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k, v = (_pair_with_reference(x, b, n_video) for x in (q, k, v))  # [b*F, 2n, inner]: reference tokens first
        inner = k.shape[-1]
        head_dim = inner // heads
        q, k, v = (x.view(b * n_video, 2 * n, heads, head_dim).transpose(1, 2) for x in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)  # [b*F, heads, 2n, d]
        out = out.transpose(1, 2).reshape(b * n_video, 2 * n, inner).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # linear, dropout
        out = out.view(b, n_video, 2 * n, out.shape[-1])
        ref = out[:, :, :n].mean(dim=1, keepdim=True)  # f_r' = mean over the F copies   [b, 1, n, c]
        out = torch.cat([out[:, :, n:], ref], dim=1).reshape(bn, n, -1)  # frames then the reference, as they came
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(bn, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _pair_with_reference(x: torch.Tensor, b: int, n_video: int) -> torch.Tensor:
    """[b*(F+1), n, d] (reference last) -> [b*F, 2n, d]: row (clip j, frame i) = concat(ref_j, frame_i)."""
    bn, n, d = x.shape
    x = x.view(b, n_video + 1, n, d)
    ref = x[:, -1:].expand(b, n_video, n, d)
    return torch.cat([ref, x[:, :-1]], dim=2).reshape(b * n_video, 2 * n, d)


# --------------------------------------------------------------------------------- installing
def install_pisa(unet, num_frames: int | None = None) -> PersonalizedInjectionAttnProcessor:
    """Set ONE PersonalizedInjectionAttnProcessor(num_frames) on every processor of `unet` whose name ends
    in ``attn1.processor`` and does not contain ``motion_modules`` (the spatial self-attention); every
    other processor (cross-attention attn2, both temporal attentions) is kept, the same object. Returns
    the shared processor (its ``num_frames`` attribute sets F for all layers at once)."""
    procs = unet.attn_processors
    pisa = PersonalizedInjectionAttnProcessor(num_frames)
    new = {name: (pisa if is_spatial_self_attention(name) else proc) for name, proc in procs.items()}
    if not any(p is pisa for p in new.values()):
        raise LumenkitError(f"{type(unet).__name__} has no spatial self-attention (attn1 outside motion_modules) for PISA")
    unet.set_attn_processor(new)
    return pisa


def pisa_processors(unet) -> list[PersonalizedInjectionAttnProcessor]:
    """The distinct PISA processors installed in `unet` (one after install_pisa; [] when none)."""
    seen: dict[int, PersonalizedInjectionAttnProcessor] = {}
    for p in unet.attn_processors.values():
        if isinstance(p, PersonalizedInjectionAttnProcessor):
            seen.setdefault(id(p), p)
    return list(seen.values())


def set_pisa_frames(unet, num_frames: int | None) -> None:
    """Set the number of video frames F (reference excluded) of every PISA processor in `unet`."""
    for p in pisa_processors(unet):
        p.num_frames = num_frames


@contextlib.contextmanager
def pisa_frames(unet, num_frames: int | None) -> Iterator[None]:
    """Within the block every PISA processor of `unet` uses F = num_frames; the old values come back after."""
    procs = pisa_processors(unet)
    old = [p.num_frames for p in procs]
    for p in procs:
        p.num_frames = num_frames
    try:
        yield
    finally:
        for p, o in zip(procs, old):
            p.num_frames = o
