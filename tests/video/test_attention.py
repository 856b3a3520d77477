"""lumenkit.video.attention: PISA against a naive per-frame loop, its installation, and equal-frame identities."""
from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from lumenkit.common.errors import LumenkitError
from lumenkit.t2i.models import build_unet
from lumenkit.video import attention as A
from lumenkit.video import models as M

C, HEADS = 16, 4


def _attn(seed: int = 0, **kw) -> Attention:
    torch.manual_seed(seed)
    attn = Attention(query_dim=C, heads=HEADS, dim_head=C // HEADS, bias=True, **kw).eval()
    with torch.no_grad():
        for p in attn.parameters():  # norm affines too: random, so every term matters
            p.add_(0.1 * torch.randn_like(p))
    return attn


def _naive_pisa(attn: Attention, hs: torch.Tensor, b: int, n_video: int) -> torch.Tensor:
    """The seed's equations, one clip and one frame at a time, with an explicit softmax per head.
    hs [b*(F+1), n, c] (reference last) -> [b*(F+1), n, c]."""
    frames = hs.view(b, n_video + 1, *hs.shape[1:])
    out = torch.empty_like(frames)
    d = C // HEADS
    for j in range(b):
        normed = []
        for i in range(n_video + 1):  # group norm per frame, as the stock processor sees each frame
            f = frames[j, i]
            if attn.group_norm is not None:
                f = attn.group_norm(f.T[None])[0].T
            normed.append(f)
        f_r, n = normed[-1], f.shape[0]
        ref_copies = []
        for i in range(n_video):
            X = torch.cat([f_r, normed[i]], dim=0)  # [2n, c]
            Q, K, V = attn.to_q(X), attn.to_k(X), attn.to_v(X)
            heads = []
            for h in range(HEADS):
                q, k, v = (M_[:, h * d:(h + 1) * d] for M_ in (Q, K, V))
                if attn.norm_q is not None:
                    q, k = attn.norm_q(q), attn.norm_k(k)
                w = torch.softmax(q @ k.T / d ** 0.5, dim=-1)
                heads.append(w @ v)
            Xp = attn.to_out[0](torch.cat(heads, dim=1))
            out[j, i] = Xp[n:]
            ref_copies.append(Xp[:n])
        out[j, n_video] = torch.stack(ref_copies).mean(0)
    out = out.reshape(hs.shape)
    if attn.residual_connection:
        out = out + hs
    return out / attn.rescale_output_factor


ATTN_VARIANTS = {
    "plain": {},
    "norms+residual+rescale": {"norm_num_groups": 4, "residual_connection": True, "rescale_output_factor": 2.0,
                               "qk_norm": "layer_norm"},
}


@pytest.mark.parametrize("variant", list(ATTN_VARIANTS))
@pytest.mark.parametrize("b, n_video", [(1, 1), (2, 3)])
def test_pisa_matches_a_naive_per_frame_loop(variant, b, n_video):
    attn = _attn(**ATTN_VARIANTS[variant])
    hs = torch.randn(b * (n_video + 1), 12, C, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = A.PersonalizedInjectionAttnProcessor(n_video)(attn, hs)
        want = _naive_pisa(attn, hs, b, n_video)
    assert got.shape == hs.shape
    assert (got - want).abs().max().item() <= 1e-5


def test_pisa_takes_4d_input_as_the_stock_processor():
    """[B, C, H, W] in -> [B, C, H, W] out, the same numbers as the token layout [B, H*W, C]."""
    attn = _attn(norm_num_groups=4, residual_connection=True)
    b, n_video, H, W = 2, 2, 3, 4
    x = torch.randn(b * (n_video + 1), C, H, W, generator=torch.Generator().manual_seed(4))
    pisa = A.PersonalizedInjectionAttnProcessor(n_video)
    with torch.no_grad():
        out4 = pisa(attn, x)
        tokens = x.flatten(2).transpose(1, 2)
        out3 = pisa(attn, tokens)
    assert out4.shape == x.shape
    assert (out4.flatten(2).transpose(1, 2) - out3).abs().max().item() <= 1e-6


@pytest.mark.parametrize("variant", list(ATTN_VARIANTS))
def test_frames_equal_to_the_reference_give_plain_self_attention(variant):
    """If all F frames equal the reference, every frame's token set is the reference's tokens twice; softmax
    over duplicated keys gives the same weighted average, so PISA's output for every frame (and the mean for
    the reference) equals the stock AttnProcessor2_0 on one frame."""
    attn = _attn(**ATTN_VARIANTS[variant])
    b, n_video = 2, 3
    one = torch.randn(b, 1, 10, C, generator=torch.Generator().manual_seed(5))
    hs = one.expand(b, n_video + 1, 10, C).reshape(b * (n_video + 1), 10, C)
    with torch.no_grad():
        got = A.PersonalizedInjectionAttnProcessor(n_video)(attn, hs).view(b, n_video + 1, 10, C)
        stock = AttnProcessor2_0()(attn, one[:, 0])
    for i in range(n_video + 1):
        assert (got[:, i] - stock).abs().max().item() <= 1e-5


def test_num_frames_none_is_the_stock_processor_and_bad_batches_are_refused():
    attn = _attn()
    hs = torch.randn(6, 10, C)
    with torch.no_grad():
        assert torch.equal(A.PersonalizedInjectionAttnProcessor(None)(attn, hs), AttnProcessor2_0()(attn, hs))
        with pytest.raises(LumenkitError, match="multiple of"):
            A.PersonalizedInjectionAttnProcessor(4)(attn, hs)
        with pytest.raises(LumenkitError, match="self-attention"):
            A.PersonalizedInjectionAttnProcessor(2)(attn, hs, encoder_hidden_states=hs)


def _tiny_video_unet(zero_init: bool = True):
    torch.manual_seed(0)
    unet2d = build_unet("tiny")
    torch.manual_seed(1)
    return M.build_video_unet(unet2d, M.build_motion_adapter(unet2d.config, "tiny", zero_init=zero_init))


def test_install_changes_only_spatial_self_attention():
    unet = _tiny_video_unet()
    before = dict(unet.attn_processors)
    pisa = A.install_pisa(unet, 3)
    after = unet.attn_processors
    assert set(after) == set(before)
    spatial = [n for n in before if n.endswith("attn1.processor") and "motion_modules" not in n]
    cross = [n for n in before if n.endswith("attn2.processor") and "motion_modules" not in n]
    temporal = [n for n in before if "motion_modules" in n]
    assert spatial and cross and temporal and len(spatial) + len(cross) + len(temporal) == len(before)
    assert any(n.endswith("attn1.processor") for n in temporal)  # temporal attn1 exists and must stay
    for n in cross + temporal:
        assert after[n] is before[n] and type(after[n]) is type(before[n])
    for n in spatial:
        assert after[n] is pisa
    assert A.pisa_processors(unet) == [pisa] and pisa.num_frames == 3


def test_pisa_injects_the_reference_into_each_frame_through_the_unet():
    """With the motion modules zeroed (no temporal attention) the reference (last frame) changes the video
    frames' outputs only when PISA is installed; and PISA treats the video frames symmetrically (the
    reference update is their mean): permuting the video frames permutes the outputs."""
    unet = _tiny_video_unet(zero_init=True)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 4, 4, 8, 8, generator=g)
    t, ctx = torch.tensor([300]), torch.randn(1, 16, 32, generator=g)
    ref_changed = x.clone()
    ref_changed[:, -1] += 1.0
    perm = torch.tensor([2, 0, 1, 3])  # the reference stays last
    with torch.no_grad():
        plain = [M.video_eps(unet, v, t, ctx) for v in (x, ref_changed)]
        A.install_pisa(unet)
        base, by_ref, permuted = (M.video_eps(unet, v, t, ctx) for v in (x, ref_changed, x[:, perm]))
    assert torch.equal(plain[0][:, :3], plain[1][:, :3])
    assert (by_ref[:, :3] - base[:, :3]).abs().amax(dim=(0, 2, 3, 4)).min().item() > 1e-4
    assert (permuted - base[:, perm]).abs().max().item() <= 1e-5
    assert (base - plain[0]).abs().max().item() > 1e-4
    assert A.pisa_processors(unet)[0].num_frames is None  # video_eps set F = 3 only for its calls


def test_frame_count_at_call_time():
    """set_pisa_frames / pisa_frames / cross_attention_kwargs={"num_frames": F} all set F for one call."""
    unet = _tiny_video_unet(zero_init=False)
    A.install_pisa(unet)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 4, 3, 8, 8, generator=g)  # diffusers layout [B, C, N, h, w], N = 3 = F + 1
    t, ctx1 = torch.tensor([300]), torch.randn(1, 16, 32, generator=g)
    ctx = ctx1.repeat_interleave(3, dim=0)  # per frame, as diffusers >= 0.31 takes it
    with torch.no_grad():
        with A.pisa_frames(unet, 2):
            a = unet(x, t, ctx).sample
        b = unet(x, t, ctx, cross_attention_kwargs={"num_frames": 2}).sample
        A.set_pisa_frames(unet, 2)
        c = unet(x, t, ctx).sample
        d = M.video_eps(unet, x.permute(0, 2, 1, 3, 4), t, ctx1).permute(0, 2, 1, 3, 4)
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)
