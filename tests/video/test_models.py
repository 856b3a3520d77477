"""lumenkit.video.models: the AnimateDiff video UNet on a lumenkit t2i UNet, adapter checks, local loading, saved weights."""
from __future__ import annotations

import json

import pytest
import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.t2i.models import build_unet
from lumenkit.video import models as M

N_FRAMES = 4  # F + 1 = 3 video frames + the reference


def _base(seed: int = 0):
    torch.manual_seed(seed)
    return build_unet("tiny")


def _adapter(unet, zero_init: bool, seed: int = 1, **preset):
    torch.manual_seed(seed)
    return M.build_motion_adapter(unet.config, {**M.MOTION_PRESETS["tiny"], **preset}, zero_init=zero_init)


def _inputs(b: int = 2, n: int = N_FRAMES, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 4, 8, 8, generator=g)
    t = torch.tensor([17, 640])[:b]
    ctx = torch.randn(b, 16, 32, generator=g)
    return x, t, ctx


def test_zero_initialised_motion_modules_give_the_2d_unet_frame_by_frame():
    """An independent check of the plumbing: with every motion module's output projection zero (AnimateDiff's
    initialisation) the video UNet on B*(F+1) frames, text states repeat_interleave'd per frame, is the 2-D
    UNet applied to each frame with the clip's t and text."""
    unet2d = _base()
    video = M.build_video_unet(unet2d, _adapter(unet2d, zero_init=True))
    x, t, ctx = _inputs()
    with torch.no_grad():
        out = M.video_eps(video, x, t, ctx)
        per_frame = torch.stack([unet2d(x[:, i], t, ctx).sample for i in range(x.shape[1])], dim=1)
    assert out.shape == x.shape
    assert (out - per_frame).abs().max().item() <= 1e-5


def test_video_eps_is_diffusers_layout_with_text_repeated_per_frame():
    """video_eps == UNetMotionModel on [B, C, N, h, w] with encoder_hidden_states [B*N, K, E] (repeat_interleave),
    and a random (not zero) adapter makes frames interact (output differs from per-frame 2-D UNet)."""
    unet2d = _base()
    video = M.build_video_unet(unet2d, _adapter(unet2d, zero_init=False))
    x, t, ctx = _inputs()
    with torch.no_grad():
        out = M.video_eps(video, x, t, ctx)
        direct = video(x.permute(0, 2, 1, 3, 4), t, encoder_hidden_states=ctx.repeat_interleave(N_FRAMES, 0)).sample
        per_frame = torch.stack([unet2d(x[:, i], t, ctx).sample for i in range(N_FRAMES)], dim=1)
        x2 = x.clone()
        x2[:, 0] += 1.0  # changing frame 0 changes frame 2's output only through the motion modules
        out2 = M.video_eps(video, x2, t, ctx)
    assert torch.equal(out, direct.permute(0, 2, 1, 3, 4))
    assert (out - per_frame).abs().max().item() > 1e-3
    assert (out2[:, 2] - out[:, 2]).abs().max().item() > 1e-4


def test_adapter_save_pretrained_round_trip_gives_identical_outputs(tmp_path):
    unet2d = _base()
    adapter = _adapter(unet2d, zero_init=False)
    adapter.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    assert (tmp_path / "adapter" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = M.load_motion_adapter(tmp_path / "adapter", unet2d.config)
    a = M.build_video_unet(unet2d, adapter)
    b = M.build_video_unet(unet2d, loaded)
    x, t, ctx = _inputs()
    with torch.no_grad():
        assert torch.equal(M.video_eps(a, x, t, ctx), M.video_eps(b, x, t, ctx))


def test_video_unet_from_local_base_and_adapter_folders(tmp_path):
    """--base DIR (a diffusers SD folder: DIR/unet) + --motion_adapter DIR equals building in memory."""
    unet2d = _base()
    unet2d.save_pretrained(tmp_path / "sd" / "unet", safe_serialization=True)
    adapter = _adapter(unet2d, zero_init=False)
    adapter.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    from_disk = M.video_unet_from_pretrained(tmp_path / "sd", tmp_path / "adapter")
    in_memory = M.build_video_unet(unet2d, adapter)
    x, t, ctx = _inputs()
    with torch.no_grad():
        assert torch.equal(M.video_eps(from_disk, x, t, ctx), M.video_eps(in_memory, x, t, ctx))
    # no adapter: a fresh zero-initialised one of the preset, seeded
    fresh = M.video_unet_from_pretrained(tmp_path / "sd", preset="tiny")
    with torch.no_grad():
        per_frame = torch.stack([unet2d(x[:, i], t, ctx).sample for i in range(N_FRAMES)], dim=1)
        assert (M.video_eps(fresh, x, t, ctx) - per_frame).abs().max().item() <= 1e-5


@pytest.mark.parametrize("change, needle", [
    ({"motion_layers_per_block": 2}, "motion_layers_per_block"),
    ({"block_out_channels": [16, 32, 32]}, "3 blocks"),
    ({"block_out_channels": [16, 64]}, "block_out_channels"),
    ({"motion_norm_num_groups": 4}, "motion_norm_num_groups"),
])
def test_mismatched_adapter_raises_one_line_error(tmp_path, change, needle):
    unet2d = _base()
    cfg = {**M.motion_adapter_config(unet2d.config, "tiny"), **change}
    from diffusers import MotionAdapter

    adapter = MotionAdapter(**cfg)
    with pytest.raises(LumenkitError, match=needle) as err:
        M.build_video_unet(unet2d, adapter)
    assert "\n" not in str(err.value)
    # from a folder: refused from its config.json, before the weights are read
    adapter.save_pretrained(tmp_path / "ad", safe_serialization=True)
    (tmp_path / "ad" / "diffusion_pytorch_model.safetensors").write_bytes(b"not read")
    with pytest.raises(LumenkitError, match="--motion_adapter") as err:
        M.load_motion_adapter(tmp_path / "ad", unet2d.config)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(LumenkitError, match="--base"):
        M.load_base_unet(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LumenkitError, match="unet/config.json"):
        M.load_base_unet(tmp_path / "empty")
    with pytest.raises(LumenkitError, match="--motion_adapter"):
        M.load_motion_adapter(tmp_path / "empty")
    (tmp_path / "notad").mkdir()
    (tmp_path / "notad" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(LumenkitError, match="not a MotionAdapter"):
        M.load_motion_adapter(tmp_path / "notad")
    with pytest.raises(LumenkitError, match="motion preset"):
        M.motion_adapter_config(_base().config, "huge")


def test_too_many_frames_for_the_motion_positions():
    unet2d = _base()
    video = M.build_video_unet(unet2d, _adapter(unet2d, zero_init=True, motion_max_seq_length=3))
    x, t, ctx = _inputs(n=4)
    with pytest.raises(LumenkitError, match="motion_max_seq_length"):
        M.video_eps(video, x, t, ctx)


def test_videomaker_weights_round_trip(tmp_path):
    """Only spatial attn1 + motion modules are saved; applied onto a fresh video UNet of the same base and
    adapter structure they give the trained model's outputs; a mismatched UNet is refused."""
    unet2d = _base()
    trained = M.build_video_unet(unet2d, _adapter(unet2d, zero_init=True))
    with torch.no_grad():  # "train": move every VideoMaker parameter
        for n, p in trained.named_parameters():
            if n in set(M.videomaker_parameter_names(trained)):
                p.add_(0.01 * torch.randn_like(p))
    path = M.save_videomaker_weights(trained, tmp_path / "videomaker.safetensors")
    from lumenkit.common.fileio import load_state_dict

    saved = load_state_dict(path)
    assert set(saved) == set(M.videomaker_parameter_names(trained))
    assert all(M.is_motion_module(n) or ".attn1." in n for n in saved)
    assert any(M.is_motion_module(n) for n in saved) and any(not M.is_motion_module(n) for n in saved)
    assert not any(".attn2." in n and not M.is_motion_module(n) for n in saved)

    fresh = M.build_video_unet(_base(), _adapter(_base(), zero_init=True))
    loaded = M.load_videomaker_weights(fresh, path)
    assert set(loaded) == set(saved)
    x, t, ctx = _inputs()
    with torch.no_grad():
        assert torch.equal(M.video_eps(fresh, x, t, ctx), M.video_eps(trained, x, t, ctx))

    other = M.build_video_unet(_base(), _adapter(_base(), zero_init=True, motion_num_attention_heads=4))
    with pytest.raises(LumenkitError, match="another video UNet"):
        M.load_videomaker_weights(other, path)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(LumenkitError):
        M.load_videomaker_weights(fresh, tmp_path / "junk.safetensors")


def test_whole_video_unet_save_pretrained_round_trip(tmp_path):
    unet2d = _base()
    video = M.build_video_unet(unet2d, _adapter(unet2d, zero_init=False))
    M.save_video_unet(video, tmp_path / "vunet")
    back = M.load_video_unet(tmp_path / "vunet")
    x, t, ctx = _inputs()
    with torch.no_grad():
        assert torch.equal(M.video_eps(back, x, t, ctx), M.video_eps(video, x, t, ctx))


def test_shapes_preset_fits_the_shapes_model_config():
    """The `shapes` motion preset builds on the UNet config lumenkit.t2i trains (shapes_model_config)."""
    from lumenkit.t2i.train import shapes_model_config

    cfg = shapes_model_config()["unet"]
    with torch.device("meta"):
        unet2d = build_unet({"unet": cfg})
        adapter = M.build_motion_adapter(unet2d.config, "shapes", zero_init=False)
    M.check_adapter_matches(unet2d.config, adapter.config)
    assert list(adapter.config.block_out_channels) == list(cfg["block_out_channels"])


def test_sparse_adapter_config_uses_motion_adapter_defaults():
    """A config.json that leaves keys out (published adapters rely on MotionAdapter's defaults, which are
    AnimateDiff's SD 1.5 layout) is checked with those defaults filled in."""
    from lumenkit.t2i.models import preset_config

    sd15_unet = preset_config("sd15")["unet"]
    sparse = {"_class_name": "MotionAdapter", "use_motion_mid_block": False}
    M.check_adapter_matches(sd15_unet, sparse)
    M.check_adapter_matches(sd15_unet, M.motion_adapter_config(sd15_unet, "sd15"))
    with pytest.raises(LumenkitError, match="4 blocks"):
        M.check_adapter_matches(_base().config, sparse)
