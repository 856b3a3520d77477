"""lumenkit.video.losses: the GIR loss by hand on a stub model, reminder timesteps, condition dropout rates,
and the frozen / trainable split after a real optimizer step."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.t2i.models import build_unet
from lumenkit.video import losses as L
from lumenkit.video import models as M
from lumenkit.video.attention import install_pisa

B, NF, CH, H, W = 3, 2, 4, 3, 3  # 2 video frames + the reference


def _stub(x, t, ctx):
    """A known function of the input: 0.5 x + 0.001 t + mean(context), per clip."""
    return 0.5 * x + 0.001 * t.view(-1, 1, 1, 1, 1).float() + ctx.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    acp = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    return dict(z0=r(B, NF, CH, H, W), ref=r(B, CH, H, W), t=torch.tensor([0, 451, 999]), acp=acp,
                ctx=r(B, 5, 6), eps=r(B, NF, CH, H, W), eps_ref=r(B, CH, H, W))


def _by_hand(c, beta, dropped=(False,) * B):
    """The equations in numpy, one sample at a time (float64)."""
    acp = c["acp"].numpy()
    vid_sq, reg_terms = [], []
    for j in range(B):
        t = int(c["t"][j])
        tp = round(0.01 * t)
        a, ar = acp[t], acp[tp]
        z_t = math.sqrt(a) * c["z0"][j].numpy() + math.sqrt(1 - a) * c["eps"][j].numpy()
        r_t = 0.0 * c["ref"][j].numpy() if dropped[j] else math.sqrt(ar) * c["ref"][j].numpy() + math.sqrt(1 - ar) * c["eps_ref"][j].numpy()
        shift = 0.001 * t + float(c["ctx"][j].numpy().mean())  # the stub is fed the clip's t, not t'
        pred_v, pred_r = 0.5 * z_t + shift, 0.5 * r_t + shift
        vid_sq.append((pred_v - c["eps"][j].numpy()) ** 2)
        if not dropped[j]:
            reg_terms.append(((pred_r - c["eps_ref"][j].numpy()) ** 2).mean())
    video = float(np.mean(np.stack(vid_sq)))
    reg = float(np.mean(reg_terms)) if reg_terms else 0.0
    return video + beta * reg, video, reg


@pytest.mark.parametrize("dropped", [None, (False, True, False)])
def test_gir_loss_equals_the_hand_computed_value_on_a_stub_model(dropped):
    c = _case()
    mask = None if dropped is None else torch.tensor(dropped)
    got = L.gir_loss(_stub, c["z0"], c["ref"], c["t"], c["acp"], c["ctx"], c["eps"], c["eps_ref"], beta=0.1, ref_dropped=mask)
    want = _by_hand(c, 0.1, dropped or (False,) * B)
    assert got.loss.item() == pytest.approx(want[0], rel=1e-6)
    assert got.video.item() == pytest.approx(want[1], rel=1e-6)
    assert got.reg.item() == pytest.approx(want[2], rel=1e-6)
    assert got.t_ref.tolist() == [0, 5, 10]
    assert got.pred.shape == (B, NF + 1, CH, H, W)


def test_reminder_timesteps_are_round_of_alpha_t_exactly():
    t = torch.arange(1000)
    assert L.reminder_timesteps(t).tolist() == [round(0.01 * int(v)) for v in t]
    assert L.reminder_timesteps(torch.tensor([0, 49, 51, 149, 151, 999])).tolist() == [0, 0, 1, 1, 2, 10]
    assert L.reminder_timesteps(torch.tensor([999]), alpha=2.0, num_timesteps=1000).tolist() == [999]


def test_beta_zero_is_the_plain_video_loss_on_a_real_video_unet():
    torch.manual_seed(0)
    unet2d = build_unet("tiny")
    unet = M.build_video_unet(unet2d, M.build_motion_adapter(unet2d.config, "tiny", zero_init=False))
    install_pisa(unet)
    g = torch.Generator().manual_seed(1)
    z0, ref = torch.randn(2, 3, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    eps, eps_ref = torch.randn(2, 3, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t, ctx = torch.tensor([100, 800]), torch.randn(2, 16, 32, generator=g)
    acp = torch.linspace(0.999, 0.01, 1000)
    with torch.no_grad():
        res = L.gir_loss(unet, z0, ref, t, acp, ctx, eps, eps_ref, beta=0.0)
        a, ar = acp[t].view(-1, 1, 1, 1, 1), acp[torch.tensor([1, 8])].view(-1, 1, 1, 1)
        x = torch.cat([a.sqrt() * z0 + (1 - a).sqrt() * eps, (ar.sqrt() * ref + (1 - ar).sqrt() * eps_ref)[:, None]], 1)
        pred = M.video_eps(unet, x, t, ctx)
    plain = torch.nn.functional.mse_loss(pred[:, :3], eps)
    assert res.loss.item() == pytest.approx(plain.item(), rel=1e-5)
    assert res.reg.item() > 0  # computed, weighted by 0


@pytest.mark.parametrize("train_motion", [True, False])
def test_one_optimizer_step_moves_only_the_trainable_weights(train_motion):
    torch.manual_seed(0)
    unet2d = build_unet("tiny")
    unet = M.build_video_unet(unet2d, M.build_motion_adapter(unet2d.config, "tiny", zero_init=False)).train()
    install_pisa(unet)
    names = set(L.set_trainable(unet, train_motion=train_motion))
    assert names and all(M.is_spatial_self_attention(n) or (train_motion and M.is_motion_module(n)) for n in names)
    assert any(M.is_motion_module(n) for n in names) == train_motion
    assert not any(".attn2." in n and not M.is_motion_module(n) for n in names)
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(2)
    drop = L.condition_dropout(2, generator=g)
    res = L.gir_loss(unet, torch.randn(2, 3, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g), torch.tensor([50, 700]),
                     torch.linspace(0.999, 0.01, 1000), torch.randn(2, 16, 32, generator=g), ref_dropped=drop.ref, generator=g)
    res.loss.backward()
    opt.step()
    for n, p in unet.named_parameters():
        if n in names:
            assert not torch.equal(p, before[n]), f"trainable {n} did not move"
        else:
            assert p.grad is None and torch.equal(p, before[n]), f"frozen {n} changed"


def test_condition_dropout_rates_within_three_sigma():
    n, p_ref, p_both = 200_000, 0.25, 0.05
    d = L.condition_dropout(n, p_ref, p_both, generator=torch.Generator().manual_seed(3))
    rates = {"ref only": (d.ref & ~d.text).double().mean().item(), "both": (d.ref & d.text).double().mean().item()}
    for key, p in (("ref only", p_ref), ("both", p_both)):
        assert abs(rates[key] - p) <= 3 * math.sqrt(p * (1 - p) / n), (key, rates[key])
    assert not (d.text & ~d.ref).any()  # the text is never dropped alone
    assert (L.P_REF, L.P_BOTH) == (0.25, 0.05)
    with pytest.raises(LumenkitError):
        L.condition_dropout(4, 0.8, 0.3)


def test_drop_text_replaces_the_dropped_rows_with_the_null_context():
    ctx, null = torch.randn(3, 5, 6), torch.randn(5, 6)
    out = L.drop_text(ctx, null, torch.tensor([True, False, True]))
    assert torch.equal(out[0], null) and torch.equal(out[1], ctx[1]) and torch.equal(out[2], null)
