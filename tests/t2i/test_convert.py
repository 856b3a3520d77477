"""SD 1.x original <-> diffusers key conversion, checked against diffusers' own single-file converter."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.t2i import convert, models


def _tiny_modules(seed: int = 0):
    torch.manual_seed(seed)
    return models.build_unet("tiny"), models.build_vae("tiny"), models.build_text_encoder("tiny", 100)


def _shapes(m) -> dict:
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("preset", ["tiny", "shapes", "sd15"])
def test_mapping_agrees_with_diffusers_single_file_converter(preset):
    """diffusers' convert_ldm_{unet,vae,clip}_checkpoint (an independent implementation) must turn our
    original-layout dict back into exactly the diffusers state dicts (keys always; values for small presets)."""
    from diffusers.loaders import single_file_utils as sfu

    cfg = models.preset_config(preset)
    if preset == "sd15":
        with torch.device("meta"):
            unet, vae, text = models.build_unet(preset), models.build_vae(preset), models.build_text_encoder(preset)
    else:
        torch.manual_seed(0)
        unet, vae, text = models.build_unet(preset), models.build_vae(preset), models.build_text_encoder(preset, 100)
    usd, vsd, tsd = unet.state_dict(), vae.state_dict(), text.state_dict()
    orig = convert.diffusers_to_original(usd, vsd, tsd, cfg["unet"], cfg["vae"])
    assert all(k.startswith((convert.UNET_PREFIX, convert.VAE_PREFIX, convert.TEXT_PREFIX)) for k in orig)
    ref_u = sfu.convert_ldm_unet_checkpoint(orig, dict(unet.config))
    ref_v = sfu.convert_ldm_vae_checkpoint(orig, dict(vae.config))
    ref_t = sfu.convert_ldm_clip_checkpoint(orig)
    assert set(ref_u) == set(usd)
    assert set(ref_v) == set(vsd)
    assert {k.removeprefix("text_model.") for k in ref_t} == set(tsd)
    if preset != "sd15":
        for k in usd:
            assert torch.equal(ref_u[k], usd[k]), k
        for k in vsd:
            assert torch.equal(ref_v[k], vsd[k]), k


def test_known_sd15_key_names():
    """Spot checks of well-known SD 1.x names (from real v1-5 checkpoints)."""
    cfg = models.preset_config("sd15")
    u, v = cfg["unet"], cfg["vae"]
    assert convert.unet_key_to_original("down_blocks.0.resnets.0.norm1.weight", u) == "input_blocks.1.0.in_layers.0.weight"
    assert convert.unet_key_to_original("down_blocks.0.downsamplers.0.conv.weight", u) == "input_blocks.3.0.op.weight"
    assert convert.unet_key_to_original("down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight", u) == \
        "input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight"
    assert convert.unet_key_to_original("mid_block.resnets.1.conv2.bias", u) == "middle_block.2.out_layers.3.bias"
    assert convert.unet_key_to_original("up_blocks.3.resnets.2.conv_shortcut.weight", u) == "output_blocks.11.0.skip_connection.weight"
    assert convert.unet_key_to_original("up_blocks.0.upsamplers.0.conv.weight", u) == "output_blocks.2.1.conv.weight"
    assert convert.unet_key_to_original("up_blocks.1.upsamplers.0.conv.weight", u) == "output_blocks.5.2.conv.weight"
    assert convert.unet_key_to_original("time_embedding.linear_2.bias", u) == "time_embed.2.bias"
    assert convert.vae_key_to_original("decoder.up_blocks.0.resnets.0.conv1.weight", v) == "decoder.up.3.block.0.conv1.weight"
    assert convert.vae_key_to_original("encoder.mid_block.attentions.0.to_q.weight", v) == "encoder.mid.attn_1.q.weight"
    assert convert.vae_key_to_original("encoder.down_blocks.1.resnets.0.conv_shortcut.bias", v) == "encoder.down.1.block.0.nin_shortcut.bias"


def test_round_trip_is_exact_and_vae_attention_is_conv_shaped():
    cfg = models.preset_config("tiny")
    unet, vae, text = _tiny_modules()
    orig = convert.diffusers_to_original(unet.state_dict(), vae.state_dict(), text.state_dict(), cfg["unet"], cfg["vae"])
    assert orig["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    assert orig["first_stage_model.decoder.mid.attn_1.proj_out.weight"].shape[2:] == (1, 1)
    u, v, t = convert.original_to_diffusers(orig, _shapes(unet), _shapes(vae), _shapes(text), cfg["unet"], cfg["vae"])
    for got, want in ((u, unet.state_dict()), (v, vae.state_dict()), (t, text.state_dict())):
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_ema_weights_are_taken_on_request():
    cfg = models.preset_config("tiny")
    unet, vae, text = _tiny_modules()
    orig = convert.diffusers_to_original(unet.state_dict(), vae.state_dict(), text.state_dict(), cfg["unet"], cfg["vae"])
    for k in list(orig):
        if k.startswith(convert.UNET_PREFIX):  # CompVis LitEma names: dots removed
            orig["model_ema.diffusion_model" + k[len(convert.UNET_PREFIX):].replace(".", "")] = orig[k] + 1.0
    shapes = (_shapes(unet), _shapes(vae), _shapes(text), cfg["unet"], cfg["vae"])
    plain, _, _ = convert.original_to_diffusers(orig, *shapes)
    ema, _, _ = convert.original_to_diffusers(orig, *shapes, use_ema=True)
    k = "conv_in.weight"
    assert torch.equal(plain[k], unet.state_dict()[k])
    assert torch.equal(ema[k], unet.state_dict()[k] + 1.0)


def test_wrong_architecture_names_file_and_key(tmp_path):
    cfg = models.preset_config("tiny")
    unet, vae, text = _tiny_modules()
    orig = convert.diffusers_to_original(unet.state_dict(), vae.state_dict(), text.state_dict(), cfg["unet"], cfg["vae"])
    with torch.device("meta"):
        big = models.build_unet("shapes")
    with pytest.raises(LumenkitError, match="my.ckpt: .*shape"):
        convert.original_to_diffusers(orig, _shapes(big), _shapes(vae), _shapes(text), models.preset_config("shapes")["unet"], cfg["vae"], name="my.ckpt")
    del orig["first_stage_model.decoder.conv_out.weight"]
    with pytest.raises(LumenkitError, match="x.safetensors: 1 VAE .*missing.*decoder.conv_out.weight"):
        convert.original_to_diffusers(orig, _shapes(unet), _shapes(vae), _shapes(text), cfg["unet"], cfg["vae"], name="x.safetensors")


def test_read_write_checkpoint_both_formats(tmp_path):
    cfg = models.preset_config("tiny")
    unet, vae, text = _tiny_modules()
    orig = convert.diffusers_to_original(unet.state_dict(), vae.state_dict(), text.state_dict(), cfg["unet"], cfg["vae"])
    for name in ("m.safetensors", "m.ckpt"):
        path = convert.write_checkpoint(tmp_path / name, orig, cfg, {"vocab.json": "{}"})
        sd, meta = convert.read_checkpoint(path)
        assert set(sd) == set(orig) and all(torch.equal(sd[k], orig[k]) for k in orig)
        assert json.loads(meta[convert.CONFIG_KEY]) == cfg
        assert json.loads(meta[convert.TOKENIZER_KEY]) == {"vocab.json": "{}"}
    # a CompVis-style training checkpoint: {"state_dict": ..., "global_step": int}
    torch.save({"state_dict": orig, "global_step": 470000}, tmp_path / "compvis.ckpt")
    sd, meta = convert.read_checkpoint(tmp_path / "compvis.ckpt")
    assert set(sd) == set(orig) and meta == {}


def test_not_an_sd_checkpoint_is_refused_clearly(tmp_path):
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(LumenkitError, match=r"other.safetensors: not a Stable Diffusion 1.x checkpoint"):
        convert.read_checkpoint(tmp_path / "other.safetensors")
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, tmp_path / "half.ckpt")
    with pytest.raises(LumenkitError, match="half.ckpt: not a Stable Diffusion.*first_stage_model"):
        convert.read_checkpoint(tmp_path / "half.ckpt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(LumenkitError, match="junk.safetensors"):
        convert.read_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(LumenkitError, match="no such checkpoint"):
        convert.read_checkpoint(tmp_path / "missing.ckpt")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"model.diffusion_model.x": _Evil()}}, f, protocol=2)
    with pytest.raises(LumenkitError, match="evil.ckpt.*weights_only.*safetensors version"):
        convert.read_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out
