"""lumenkit.video.pipeline: VideoMaker sampling on a tiny SD saved in a temporary folder.

Independent checks: the pipeline against a hand-written diffusers DDIMScheduler loop on the same video UNet
(no guidance, and with CFG computed as two separate UNet calls); what the UNet is actually given (a spy on
its forward); where the reference can and cannot reach the video frames (PISA vs the stock processors).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.diffusion import SAMPLERS
from lumenkit.video import models as M
from lumenkit.video.attention import pisa_processors, set_pisa_frames
from lumenkit.video.pipeline import VideoMakerPipeline, fit_reference, reference_array

F = 3  # video frames (+ the reference = 4 UNet frames)
PROMPT = "a red circle on the left"
NEG = "blurry"


def make_tiny_base(root) -> dict:
    """A tiny random SD (diffusers folder), a random (non-zero) MotionAdapter folder fitting it, and one whose
    layer count does not fit; returns their paths. Shared with test_cli.py."""
    from tests.t2i import tiny_pipeline

    root = os.fspath(root)
    t2i = tiny_pipeline(root)
    t2i.save_pretrained(os.path.join(root, "base"))
    torch.manual_seed(1)
    adapter = M.build_motion_adapter(t2i.unet.config, "tiny", zero_init=False)
    adapter.save_pretrained(os.path.join(root, "adapter"), safe_serialization=True)
    cfg = {**t2i.unet.config, "layers_per_block": 2}
    bad = M.build_motion_adapter(cfg, "tiny")
    bad.save_pretrained(os.path.join(root, "adapter_bad"), safe_serialization=True)
    return {"base": os.path.join(root, "base"), "adapter": os.path.join(root, "adapter"), "adapter_bad": os.path.join(root, "adapter_bad")}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("video_pipe"))


@pytest.fixture(scope="module")
def pipe(paths):
    """PISA + a random motion adapter loaded from its folder (the motion modules are not the identity)."""
    return VideoMakerPipeline.from_pretrained(paths["base"], paths["adapter"], device="cpu")


@pytest.fixture(scope="module")
def pipe_fresh(paths):
    """PISA + a fresh zero-initialised adapter (motion modules = identity)."""
    return VideoMakerPipeline.from_pretrained(paths["base"], None, preset="tiny", device="cpu")


@pytest.fixture(scope="module")
def pipe_stock(paths):
    """Stock attention processors (no PISA) + a fresh zero-initialised adapter."""
    return VideoMakerPipeline.from_pretrained(paths["base"], None, preset="tiny", device="cpu", pisa=False)


def _ref(seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    base = np.stack([np.sin(6 * xx + seed), np.cos(5 * yy - seed), xx * yy], -1) * 0.4 + 0.5
    return np.clip(base + 0.05 * rng.standard_normal(base.shape), 0, 1).astype(np.float32)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _run(p, ref, **kw):
    kw = {"num_frames": F, "num_inference_steps": 3, "guidance_scale": 1.0, "generator": _gen(0), "progress": False, **kw}
    return p(ref, PROMPT, **kw)


# ------------------------------------------------------------------------------------------ basics
def test_output_shape_range_and_seeded_determinism(pipe):
    a = _run(pipe, _ref(0), guidance_scale=4.0)
    b = _run(pipe, _ref(0), guidance_scale=4.0)
    c = _run(pipe, _ref(0), guidance_scale=4.0, generator=_gen(1))
    assert a.shape == (F, 3, 32, 32) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs(pipe, sampler):
    out = _run(pipe, _ref(0), sampler=sampler, num_inference_steps=2, guidance_scale=3.0)
    assert out.shape == (F, 3, 32, 32) and torch.isfinite(out).all()


def test_bad_calls_raise_one_line_errors(pipe):
    with pytest.raises(LumenkitError, match="num_frames"):
        _run(pipe, _ref(0), num_frames=0)
    with pytest.raises(LumenkitError, match="motion_max_seq_length"):
        _run(pipe, _ref(0), num_frames=pipe.max_frames + 1)
    with pytest.raises(LumenkitError, match="sampler"):
        _run(pipe, _ref(0), sampler="heun")
    with pytest.raises(LumenkitError, match="latents"):
        _run(pipe, _ref(0), latents=torch.zeros(1, F + 1, 4, 16, 16))


def test_reference_inputs_path_pil_uint8_tensor_agree(pipe, tmp_path):
    from PIL import Image

    from lumenkit.common.images import write_image

    u8 = (_ref(3) * 255).round().astype(np.uint8)
    write_image(tmp_path / "r.png", u8)
    want = u8.astype(np.float32) / 255
    forms = [tmp_path / "r.png", str(tmp_path / "r.png"), Image.fromarray(u8), u8, want, torch.from_numpy(want).permute(2, 0, 1)]
    for f in forms:
        assert np.array_equal(reference_array(f), want)
    lat = [pipe.encode_reference(f) for f in forms]
    assert all(torch.equal(lat[0], x) for x in lat[1:])
    with pytest.raises(LumenkitError, match="no such image"):
        reference_array(tmp_path / "missing.png")


def test_fit_reference_crops_to_aspect_then_resizes():
    img = np.zeros((40, 20, 3), np.float32)
    img[10:30] = 1.0  # the centre square of a tall image
    out = fit_reference(img, 8, 8)
    assert out.shape == (8, 8, 3) and np.allclose(out, 1.0)
    assert fit_reference(img, 40, 20) is img  # already the model's size: untouched
    wide = np.zeros((8, 24, 3), np.float32)
    wide[:, 8:16] = 0.5
    assert np.allclose(fit_reference(wide, 4, 4), 0.5)  # a wide image keeps its centre square


# ------------------------------------------------------------------------------------------ vs diffusers
def _hand_written_ddim(pipe, ref: np.ndarray, latents: torch.Tensor, steps: int, scale: float = 1.0) -> torch.Tensor:
    """DDIM eta=0 with diffusers' DDIMScheduler (SD 1.x config) on the video UNet, written out by hand: the
    reference latent (VAE mean x scaling_factor) appended as the last frame at every step, CFG (if any) as
    two separate UNet calls (zero reference + negative prompt for the unconditional one)."""
    from diffusers import DDIMScheduler

    from lumenkit.t2i.pipeline import SCHEDULER_CONFIG

    base, unet = pipe.base, pipe.unet
    sched = DDIMScheduler.from_config(SCHEDULER_CONFIG)
    sched.set_timesteps(steps)
    with torch.no_grad():
        img = torch.from_numpy(ref).permute(2, 0, 1)[None] * 2 - 1
        r = base.vae.encode(img).latent_dist.mean * base.vae.config.scaling_factor  # [1, C, h, w]

        def text(p):
            ids = base.tokenizer([p], padding="max_length", max_length=base.max_length, truncation=True, return_tensors="pt").input_ids
            return base.text_encoder(ids)[0]

        c, uc = text(PROMPT), text(NEG)
        set_pisa_frames(unet, F)
        x = latents[0].permute(1, 0, 2, 3)[None]  # diffusers' [1, C, F, h, w]

        def eps(ref_lat, ctx, t):
            inp = torch.cat([x, ref_lat[:, :, None]], dim=2)
            return unet(inp, t, encoder_hidden_states=ctx.repeat(F + 1, 1, 1)).sample[:, :, :F]

        for t in sched.timesteps:
            e = eps(r, c, t)
            if scale != 1.0:
                eu = eps(torch.zeros_like(r), uc, t)
                e = eu + scale * (e - eu)
            x = sched.step(e, t, x, eta=0.0).prev_sample
        set_pisa_frames(unet, None)
        z = x[0].permute(1, 0, 2, 3) / base.vae.config.scaling_factor
        return (base.vae.decode(z).sample / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_matches_a_hand_written_diffusers_ddim_loop(pipe, scale):
    ref = _ref(5)
    latents = torch.randn(1, F, 4, 16, 16, generator=_gen(7))
    got = pipe(ref, PROMPT, negative_prompt=NEG, num_frames=F, num_inference_steps=4, guidance_scale=scale,
               latents=latents, progress=False)
    assert pisa_processors(pipe.unet)[0].num_frames is None  # the pipeline leaves PISA as it found it
    want = _hand_written_ddim(pipe, ref, latents, 4, scale)
    assert (got - want).abs().max().item() < 1e-5  # measured 5e-7 (no CFG) and 8e-7 (CFG 3)


# ------------------------------------------------------------------------------------------ the reference
def test_reference_reaches_frames_through_pisa_but_not_through_stock_processors(pipe_fresh, pipe_stock, pipe):
    """With the motion modules zeroed (identity) and stock processors, every layer acts per frame: the video
    frames cannot depend on the reference (equal outputs for two references, even with CFG). PISA makes them
    depend on it; so do non-zero motion modules without PISA (temporal attention sees the reference frame)."""
    r1, r2 = _ref(1), _ref(2)
    kw = {"guidance_scale": 3.0}
    s1, s2 = _run(pipe_stock, r1, **kw), _run(pipe_stock, r2, **kw)
    assert (s1 - s2).abs().max().item() < 1e-6
    p1, p2 = _run(pipe_fresh, r1, **kw), _run(pipe_fresh, r2, **kw)
    assert (p1 - p2).abs().max().item() > 1e-3
    assert (p1 - s1).abs().max().item() > 1e-3  # PISA changes the result itself
    stock_motion = VideoMakerPipeline(pipe_stock.base, pipe.unet, pisa=False)  # random motion modules, PISA taken out below
    procs = pipe.unet.attn_processors
    from diffusers.models.attention_processor import AttnProcessor2_0

    try:
        pipe.unet.set_attn_processor({k: (AttnProcessor2_0() if M.is_spatial_self_attention(k) else v) for k, v in procs.items()})
        m1, m2 = _run(stock_motion, r1, **kw), _run(stock_motion, r2, **kw)
    finally:
        pipe.unet.set_attn_processor(procs)
    assert (m1 - m2).abs().max().item() > 1e-4


def test_unconditional_branch_is_zero_reference_and_negative_prompt(pipe):
    """Spy on the UNet's inputs: one call per DDIM step with both branches batched [uncond, cond]; the
    reference frame (last) is the clean reference latent in the cond half and zeros in the uncond half at
    every step; text states per frame are the negative prompt's, then the prompt's; the video frames equal."""
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a, kw: calls.append((a[0].clone(), kw["encoder_hidden_states"].clone())),
                                               with_kwargs=True)
    ref = _ref(4)
    try:
        _run(pipe, ref, guidance_scale=5.0, negative_prompt=NEG, num_inference_steps=3)
        n_cfg = len(calls)
        _run(pipe, ref, guidance_scale=1.0, negative_prompt=NEG, num_inference_steps=3)
    finally:
        hook.remove()
    r = pipe.encode_reference(ref)[0]
    c, uc = pipe.base.encode_prompt([PROMPT])[0], pipe.base.encode_prompt([NEG])[0]
    assert n_cfg == 3
    for sample, ehs in calls[:n_cfg]:
        assert sample.shape == (2, 4, F + 1, 16, 16)  # [2B, C, F+1, h, w]
        assert torch.equal(sample[0, :, F], torch.zeros_like(r))
        assert torch.equal(sample[1, :, F], r)
        assert torch.equal(sample[0, :, :F], sample[1, :, :F])
        assert ehs.shape[0] == 2 * (F + 1)
        assert all(torch.equal(ehs[i], uc) for i in range(F + 1))
        assert all(torch.equal(ehs[i], c) for i in range(F + 1, 2 * (F + 1)))
    assert len(calls) == n_cfg + 3  # no guidance: one branch
    for sample, ehs in calls[n_cfg:]:
        assert sample.shape == (1, 4, F + 1, 16, 16) and torch.equal(sample[0, :, F], r)
        assert all(torch.equal(e, c) for e in ehs)


# ------------------------------------------------------------------------------------------ weights
def test_videomaker_weights_round_trip(paths, tmp_path):
    src = VideoMakerPipeline.from_pretrained(paths["base"], paths["adapter"])
    with torch.no_grad():
        for n, p in src.unet.named_parameters():
            if M.is_spatial_self_attention(n):
                p.add_(0.01 * torch.randn(p.shape, generator=_gen(0)))
    path = M.save_videomaker_weights(src.unet, tmp_path / "vm.safetensors")
    got = VideoMakerPipeline.from_pretrained(paths["base"], paths["adapter"], path)
    assert got.weights == path
    want = dict(src.unet.named_parameters())
    assert all(torch.equal(p, want[n]) for n, p in got.unet.named_parameters())
    assert torch.equal(_run(src, _ref(0)), _run(got, _ref(0)))


def test_mismatched_motion_adapter_is_one_line_error(paths):
    with pytest.raises(LumenkitError, match="motion_layers_per_block") as e:
        VideoMakerPipeline.from_pretrained(paths["base"], paths["adapter_bad"])
    assert "adapter_bad" in str(e.value) and "\n" not in str(e.value)
