"""lumenkit.video.base: the video world's base model (VAE and image UNet trained further on the world,
then the motion stage), its zero-shot split, and the export of a video UNet back into diffusers parts."""
import numpy as np
import pytest
import torch

from lumenkit.video import base as B
from lumenkit.video.data import identity_ids, parse_caption


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """The three stages, a couple of steps each, on the shipped model (what `lumenkit video base` runs)."""
    work = tmp_path_factory.mktemp("base")
    B.run_vae_stage(work, B.BaseVaeConfig(steps=2, batch_size=4, eval_images=8, ckpt_every=2), progress=False)
    B.run_unet_stage(work, B.BaseUnetConfig(steps=2, batch_size=4, n_latents=16, ckpt_every=2), progress=False)
    B.run_motion_stage(work, B.BaseMotionConfig(steps=2, batch_size=2, frames=3, ckpt_every=2, lr=1e-3, warmup_steps=0), progress=False)
    return work


def test_world_latents_use_train_identities_only():
    """Zero-shot: no test identity reaches the base, in either caption form."""
    from diffusers import AutoencoderKL

    from lumenkit.t2i.pipeline import SHIPPED_MODEL

    vae = AutoencoderKL.from_pretrained(SHIPPED_MODEL / "vae").eval()
    mean, std, idx, captions = B.world_latents(64, chunk=24)(vae, 48, 0, "cpu", False)
    assert mean.shape == (48, 4, 16, 16) and std.shape == mean.shape and (std > 0).all()
    assert idx.shape == (48,) and int(idx.max()) < len(captions) == len(set(captions))
    used = [captions[i] for i in idx.tolist()]
    full = [c for c in used if " with " in c or " and " in c or len(c.split()) > 4]
    assert full and len(full) < len(used)  # both forms occur
    train = set(identity_ids("train").tolist())
    assert all(parse_caption(c)[0].id in train for c in full)


def test_world_images_are_seeded_frames_and_references():
    a = B.world_images(64)(np.random.default_rng(3), 16)
    b = B.world_images(64)(np.random.default_rng(3), 16)
    assert a.shape == (16, 3, 64, 64) and torch.equal(a, b)
    assert float(a.min()) >= -1 and float(a.max()) <= 1


def test_cross_attention_names_extend_the_videomaker_set():
    from lumenkit.video.baselines import trainable_parameter_names
    from lumenkit.video.models import video_unet_from_pretrained

    unet = video_unet_from_pretrained()
    plain = trainable_parameter_names(unet, "none")
    more = trainable_parameter_names(unet, "none", cross_attention=True)
    extra = set(more) - set(plain)
    assert set(plain) <= set(more) and extra
    assert all(".attn2." in n and "motion_modules" not in n for n in extra)
    assert {n for n, _ in unet.named_parameters() if ".attn2." in n and "motion_modules" not in n} == extra


def test_split_video_unet_round_trips(tmp_path):
    """UNetMotionModel -> (UNet2D, MotionAdapter) -> UNetMotionModel computes the same function."""
    from lumenkit.t2i.pipeline import SHIPPED_MODEL
    from lumenkit.video.models import build_video_unet, seeded_motion_adapter, load_base_unet, video_eps

    unet2d = load_base_unet(None)
    adapter = seeded_motion_adapter(unet2d.config, "shapes", 5)
    video = build_video_unet(unet2d, adapter)
    with torch.no_grad():  # non-zero everywhere: the motion modules matter and attention weights differ from the base
        for name, p in video.named_parameters():
            if "motion_modules" in name or ".attn1." in name:
                p.add_(0.02 * torch.randn_like(p))
    back2d, back_adapter = B.split_video_unet(video, SHIPPED_MODEL / "unet")
    rebuilt = build_video_unet(back2d, back_adapter)
    x, ctx = torch.randn(1, 3, 4, 16, 16), torch.randn(1, 32, 128)
    with torch.no_grad():
        assert torch.allclose(video_eps(rebuilt, x, 500, ctx), video_eps(video, x, 500, ctx), atol=1e-6)


def test_stages_export_a_base_the_video_trainer_loads(tiny_base):
    """WORK/model + WORK/model/motion_adapter rebuild exactly the motion run's trained video UNet."""
    from lumenkit.video.models import video_eps, video_unet_from_pretrained
    from lumenkit.video.pipeline import load_trained

    model = tiny_base / "model"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "motion_adapter"):
        assert (model / part).is_dir(), part
    rebuilt = video_unet_from_pretrained(model, model / "motion_adapter")
    trained = load_trained(tiny_base / B.MOTION_RUN, pisa=False).unet
    x, ctx = torch.randn(1, 3, 4, 16, 16), torch.randn(1, 32, 128)
    with torch.no_grad():
        assert torch.allclose(video_eps(rebuilt, x, 300, ctx), video_eps(trained, x, 300, ctx), atol=1e-6)
    # the trained cross-attention is the exported one, and it moved away from the image stage's
    from safetensors.torch import load_file

    image = load_file(tiny_base / "unet" / "diffusion_pytorch_model.safetensors")
    exported = load_file(model / "unet" / "diffusion_pytorch_model.safetensors")
    attn2 = [k for k in exported if ".attn2.to_k." in k]
    assert attn2 and any(not torch.equal(exported[k], image[k]) for k in attn2)
    resnet = [k for k in exported if ".resnets." in k]
    assert all(torch.equal(exported[k], image[k]) for k in resnet)  # frozen in the motion stage


def test_vae_and_unet_stages_start_from_the_shipped_model(tiny_base):
    """finetune: the stages continue the shipped weights (a fresh model would be far from them)."""
    from safetensors.torch import load_file

    from lumenkit.t2i.pipeline import SHIPPED_MODEL

    for part in ("vae", "unet"):
        a = load_file(SHIPPED_MODEL / part / "diffusion_pytorch_model.safetensors")
        b = load_file(tiny_base / part / "diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys()
        rel = max(float((a[k] - b[k]).norm() / (a[k].norm() + 1e-8)) for k in a if a[k].numel() > 16)
        assert 0 < rel < 0.2, (part, rel)


def test_mixed_captions_are_drawn_per_clip_for_the_global_batch():
    """--captions mixed: both forms occur, the draw is the step's (resume-safe), and a process's rows are
    its slice of the global batch's draw (N processes = 1)."""
    from types import SimpleNamespace

    from lumenkit.video.train import VideoMakerLoss, VideoTrainConfig

    loss = SimpleNamespace(cfg=VideoTrainConfig(captions="mixed", batch_size=16))
    modes = VideoMakerLoss.caption_modes(loss, 3, slice(0, 16))
    assert set(modes) == {"full", "class"}
    assert VideoMakerLoss.caption_modes(loss, 3, slice(0, 16)) == modes
    assert VideoMakerLoss.caption_modes(loss, 3, slice(4, 8)) == modes[4:8]
    assert VideoMakerLoss.caption_modes(loss, 4, slice(0, 16)) != modes
    fixed = SimpleNamespace(cfg=VideoTrainConfig(captions="class", batch_size=16))
    assert VideoMakerLoss.caption_modes(fixed, 3, slice(2, 5)) == ["class"] * 3
