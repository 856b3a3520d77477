"""lumenkit.video.baselines: the text-to-video (a) and IP-Adapter (b) conditionings, on a tiny SD.

Independent checks: IP-Adapter's decoupled cross-attention against the two attention sums written out by
hand on one layer; scale 0 = the plain UNet; what each baseline trains (and what stays frozen); a batched
pipeline call = the clips made one by one; the trained folder reloads to the same model.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.video import baselines as BL
from lumenkit.video import train as T
from lumenkit.video.data import IDENTITIES, class_caption, make_batch
from lumenkit.video.models import is_motion_module, is_spatial_self_attention, video_eps


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random SD folder with a tiny CLIP (clip/: the image tower the IP-Adapter baseline encodes with)."""
    from lumenkit.t2i.models import build_clip_model
    from tests.t2i import tiny_pipeline

    root = tmp_path_factory.mktemp("video_baselines")
    pipe = tiny_pipeline(root)
    pipe.save_pretrained(root / "sd")
    torch.manual_seed(0)
    clip = build_clip_model("tiny", vocab_size=pipe.text_encoder.config.vocab_size)
    clip.save_pretrained(root / "sd" / "clip", safe_serialization=True)
    return root / "sd"


def _cfg(base, **kw) -> T.VideoTrainConfig:
    d = dict(base=str(base), motion_preset="tiny", frames=2, size=32, batch_size=2, steps=3, lr=1e-3, warmup_steps=0,
             ema_decay=0.0, ckpt_every=100, log_every=1, resume="never", seed=0)
    d.update(kw)
    return T.VideoTrainConfig(**d)


def _ip_model(base):
    enc = BL.load_image_encoder(base)
    return T.build_video_model(_cfg(base, conditioning="ip_adapter"), "cpu", enc.embed_dim).unet.eval(), enc


def test_class_captions_name_the_shape_only():
    ident = IDENTITIES[123]
    text = class_caption(ident, "left")
    assert text.endswith(" moves left") and ident.shape in text and ident.colour not in text
    b = make_batch(np.random.default_rng(0), 3, "train", 2, 32)
    assert [s.caption("full") for s in b.specs] == b.captions


def test_ip_adapter_is_installed_on_spatial_cross_attention_only(base):
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    unet, _ = _ip_model(base)
    procs = unet.attn_processors
    ip = {n for n, p in procs.items() if isinstance(p, IPAdapterAttnProcessor2_0)}
    assert ip and ip == {n for n in procs if ".attn2." in n and not is_motion_module(n)}
    modules = dict(unet.named_modules())
    for n in ip:  # IP-Adapter's initialisation: to_k_ip / to_v_ip copy to_k / to_v
        attn = modules[n[: -len(".processor")]]
        assert torch.equal(procs[n].to_k_ip[0].weight, attn.to_k.weight) and torch.equal(procs[n].to_v_ip[0].weight, attn.to_v.weight)


def test_decoupled_cross_attention_matches_the_two_attentions_by_hand(base):
    unet, _ = _ip_model(base)
    name = next(n for n in unet.attn_processors if ".attn2." in n and not is_motion_module(n))
    attn = dict(unet.named_modules())[name[: -len(".processor")]]
    proc = unet.attn_processors[name]
    proc.scale = [0.7]
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, attn.to_q.in_features, generator=g)
    text = torch.randn(3, 6, attn.to_k.in_features, generator=g)
    img = torch.randn(3, BL.IP_TOKENS, attn.to_k.in_features, generator=g)
    with torch.no_grad():
        got = proc(attn, h, (text, [img[:, None]]))

        def mha(q, k, v):
            heads = attn.heads
            split = lambda x: x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
            w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / np.sqrt(q.shape[-1] // heads), dim=-1)
            return (w @ split(v)).transpose(1, 2).reshape(q.shape)

        q = attn.to_q(h)
        want = mha(q, attn.to_k(text), attn.to_v(text)) + 0.7 * mha(q, proc.to_k_ip[0](img), proc.to_v_ip[0](img))
        want = attn.to_out[1](attn.to_out[0](want))
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())


def test_ip_scale_zero_is_the_plain_unet_and_the_image_changes_it_otherwise(base):
    unet, enc = _ip_model(base)
    plain = T.build_video_model(_cfg(base, conditioning="none")).unet.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 4, 4, 4, generator=g)
    t = torch.tensor([5, 600])
    ctx = torch.randn(2, 8, plain.config.cross_attention_dim, generator=g)
    emb = enc(torch.rand(2, 3, 32, 32, generator=g) * 2 - 1)
    with torch.no_grad():
        got = video_eps(unet, x, t, ctx, **BL.ip_kwargs(emb))
        assert not torch.allclose(got, video_eps(plain, x, t, ctx), atol=1e-4)
        for p in unet.attn_processors.values():
            if hasattr(p, "to_k_ip"):
                p.scale = [0.0]
        assert torch.allclose(video_eps(unet, x, t, ctx, **BL.ip_kwargs(emb)), video_eps(plain, x, t, ctx), atol=1e-5)


@pytest.mark.parametrize("conditioning", ["none", "ip_adapter"])
def test_baselines_train_their_own_parameters_only(base, tmp_path, conditioning):
    cfg = _cfg(base, conditioning=conditioning)
    parts = T.load_frozen(cfg)
    dim = parts.image_encoder.embed_dim if parts.image_encoder is not None else None
    start = T.build_video_model(cfg, "cpu", dim).unet.state_dict()
    run = T.train_videomaker(tmp_path / conditioning, cfg, "cpu", progress=False)
    end = run.model.unet.state_dict()
    moved = {k for k in start if not torch.equal(start[k], end[k])}
    own = (lambda n: is_spatial_self_attention(n)) if conditioning == "none" else \
        (lambda n: n.startswith("encoder_hid_proj.") or "_ip." in n)
    trainable = {n for n, p in run.model.unet.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in run.model.unet.named_parameters() if own(n) or is_motion_module(n)}
    assert moved == trainable
    assert np.isfinite(run.result.final_loss) and run.result.steps_done == cfg.steps


def test_trained_ip_adapter_folder_reloads_to_the_same_sampler(base, tmp_path):
    from lumenkit.video.pipeline import load_trained

    cfg = _cfg(base, conditioning="ip_adapter", steps=2)
    run = T.train_videomaker(tmp_path / "ip", cfg, "cpu", progress=False)
    pipe = load_trained(tmp_path / "ip")
    assert pipe.conditioning == "ip_adapter" and pipe.default_size() == 32
    trained = dict(run.model.unet.named_parameters())
    for n, p in pipe.unet.named_parameters():
        assert torch.equal(p, trained[n]), n
    b = make_batch(np.random.default_rng(0), 2, "test", 2, 32)
    refs = [(r + 1) / 2 for r in b.references]
    prompts = ["a star moves left", "a circle grows"]
    kw = dict(num_frames=2, num_inference_steps=3, guidance_scale=3.0, progress=False)
    h = 32 // pipe.vae_factor
    noise = torch.randn(2, 2, 4, h, h, generator=torch.Generator().manual_seed(0))
    both = pipe(refs, prompts, latents=noise, **kw)
    one = pipe(refs[1], prompts[1], latents=noise[1:], **kw)
    assert both.shape == (2, 2, 3, 32, 32) and torch.allclose(both[1], one, atol=1e-5)
    other = pipe(refs[0], prompts[1], latents=noise[1:], **kw)  # the reference matters
    assert not torch.allclose(other, one, atol=1e-3)


def test_bad_conditioning_and_missing_image_tower(base, tmp_path):
    with pytest.raises(LumenkitError, match="conditioning"):
        _cfg(base, conditioning="dreambooth")
    with pytest.raises(LumenkitError, match="clip"):
        BL.load_image_encoder(tmp_path)
    with pytest.raises(LumenkitError, match="images"):
        BL.load_image_encoder(base)(torch.zeros(2, 32, 32))
    assert dataclasses.replace(_cfg(base), conditioning="none").conditioning == "none"
