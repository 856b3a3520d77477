"""Presets and builders of lumenkit.t2i.models, checked against known SD 1.x sizes and by forward passes."""
from __future__ import annotations

import pytest
import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.t2i import models


def _n(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sd15_parameter_counts_match_stable_diffusion_1x():
    """The sd15 preset is the real SD 1.x architecture: the published parameter counts of
    runwayml/stable-diffusion-v1-5 (UNet 859,520,964; VAE 83,653,863; CLIP ViT-L/14 text 123,060,480)."""
    with torch.device("meta"):
        unet = models.build_unet("sd15")
        vae = models.build_vae("sd15")
        text = models.build_text_encoder("sd15")
    assert _n(unet) == 859_520_964
    assert _n(vae) == 83_653_863
    assert _n(text) == 123_060_480
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    assert text.config.max_position_embeddings == 77 and text.config.hidden_size == 768
    assert unet.config.cross_attention_dim == 768
    assert models.latent_factor("sd15") == 8


@pytest.mark.parametrize("name", ["tiny", "shapes"])
def test_small_presets_forward_shapes(name):
    cfg = models.preset_config(name)
    torch.manual_seed(0)
    te, vae, unet = models.build_text_encoder(name, 300), models.build_vae(name), models.build_unet(name)
    s, f, K = cfg["image_size"], models.latent_factor(name), cfg["max_length"]
    with torch.no_grad():
        z = vae.encode(torch.rand(2, 3, s, s) * 2 - 1).latent_dist.mean
        assert z.shape == (2, 4, s // f, s // f)
        assert vae.decode(z).sample.shape == (2, 3, s, s)
        ctx = te(torch.randint(0, 300, (2, K))).last_hidden_state
        assert ctx.shape == (2, K, cfg["text"]["hidden_size"])
        eps = unet(z, torch.tensor([10, 900]), encoder_hidden_states=ctx).sample
        assert eps.shape == z.shape


def test_shapes_preset_fits_the_50mb_budget():
    """The shipped model (unet + vae + text_encoder + clip, fp32) must stay <= 50 MB."""
    n = _n(models.build_unet("shapes")) + _n(models.build_vae("shapes"))
    n += _n(models.build_text_encoder("shapes", 512)) + _n(models.build_clip_model("shapes", 512))
    assert n * 4 / 1e6 <= 50


def test_clip_text_tower_becomes_text_encoder():
    torch.manual_seed(0)
    clip = models.build_clip_model("tiny", 100, eos_token_id=1, bos_token_id=0, pad_token_id=1)
    te = models.text_encoder_from_clip(clip)
    ids = torch.randint(2, 100, (3, 16))
    ids[:, 0], ids[:, -1] = 0, 1
    with torch.no_grad():
        a = clip.text_model(ids).last_hidden_state
        b = te(ids).last_hidden_state
        feats = clip.get_text_features(input_ids=ids)
        img = clip.get_image_features(pixel_values=torch.rand(3, 3, 32, 32))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert te.config.eos_token_id == 1
    # both towers project to the shared space (CLIPModel may return an output object in transformers 5)
    feats = getattr(feats, "pooler_output", feats)
    img = getattr(img, "pooler_output", img)
    assert feats.shape[-1] == img.shape[-1] == models.preset_config("tiny")["projection_dim"]


def test_unknown_preset_is_a_user_error():
    with pytest.raises(LumenkitError, match="unknown t2i preset 'sd99'"):
        models.preset_config("sd99")
    with pytest.raises(LumenkitError, match="vocab_size"):
        models.build_text_encoder("tiny")


def test_preset_config_is_a_copy():
    a = models.preset_config("sd15")
    a["unet"]["block_out_channels"][0] = 1
    assert models.preset_config("sd15")["unet"]["block_out_channels"][0] == 320
