"""Text2Image: loading (diffusers folder, single file), saving, sampling vs diffusers' StableDiffusionPipeline.
The command line (t2i sample / convert) is tested in test_cli.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.t2i.pipeline import Text2Image
from tests.t2i import assert_modules_equal

PROMPTS = ["a red circle on the left", "a blue square"]


def _reference(pipe) -> np.ndarray:
    """_run(pipe), cached per torch thread count (the thread count changes float sums in the last bit,
    and tests/t2i/conftest.py may switch to one thread per test)."""
    n = torch.get_num_threads()
    if n not in pipe.reference:
        pipe.reference[n] = _run(pipe)
    return pipe.reference[n]


@pytest.fixture(scope="module")
def reference(saved):
    """diffusers' StableDiffusionPipeline loading our saved folder with its own loaders."""
    from diffusers import StableDiffusionPipeline

    _, root = saved
    ref = StableDiffusionPipeline.from_pretrained(str(root / "model"), local_files_only=True, safety_checker=None)
    ref.set_progress_bar_config(disable=True)
    return ref


def _run(pipe, **kw):
    args = dict(num_inference_steps=3, guidance_scale=7.5, generator=torch.Generator().manual_seed(0), progress=False)
    args.update(kw)
    return pipe(PROMPTS, **args)


@pytest.mark.parametrize("source", ["model", "model.safetensors", "model.ckpt"])
def test_every_format_loads_the_same_model(saved, source):
    pipe, root = saved
    loaded = Text2Image.from_pretrained(root / source, "cpu") if source == "model" else Text2Image.from_single_file(root / source, "cpu")
    assert_modules_equal(pipe, loaded)
    ids = lambda p: p.tokenizer(PROMPTS, padding="max_length", max_length=p.max_length).input_ids  # noqa: E731
    assert ids(loaded) == ids(pipe)
    np.testing.assert_array_equal(_run(loaded), _reference(pipe))
    assert loaded.preset_dict()["vae"]["scaling_factor"] == pytest.approx(0.18215)


def test_saved_folder_is_diffusers_layout(saved):
    _, root = saved
    m = root / "model"
    for f in ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "text_encoder/config.json",
              "text_encoder/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
              "tokenizer/special_tokens_map.json", "scheduler/scheduler_config.json", "model_index.json"):
        assert (m / f).is_file(), f
    assert json.loads((m / "model_index.json").read_text())["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert not [p for p in root.iterdir() if p.name.startswith(".model")]  # no temporaries left


def test_matches_diffusers_stable_diffusion_pipeline(saved, reference):
    """Same weights loaded by diffusers (its own loader), DDIM as SD configures it, same seed: same images."""
    pipe, ref = saved[0], reference
    assert type(ref.scheduler).__name__ == "DDIMScheduler"
    for steps, scale, neg in ((4, 7.5, None), (3, 1.0, None), (5, 4.0, ["blurry", "green"])):
        ours = _run(pipe, num_inference_steps=steps, guidance_scale=scale, negative_prompt=neg)
        theirs = ref(PROMPTS, num_inference_steps=steps, guidance_scale=scale, negative_prompt=neg,
                     generator=torch.Generator().manual_seed(0), output_type="np").images
        assert ours.shape == theirs.shape == (2, 32, 32, 3)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("sampler,scheduler,kw", [
    ("euler_a", "EulerAncestralDiscreteScheduler", {}),
    ("ddpm", "DDPMScheduler", {}),
    ("ddim", "DDIMScheduler", {"eta": 1.0}),
])
def test_stochastic_samplers_match_diffusers_schedulers(saved, reference, sampler, scheduler, kw):
    """Same seed, same noise draws: Euler-a, DDPM (strided) and DDIM eta=1 equal diffusers' schedulers
    configured as SD ('leading' spacing, steps_offset 1)."""
    import diffusers

    from lumenkit.t2i.pipeline import SCHEDULER_CONFIG

    pipe = saved[0]
    cfg = {k: v for k, v in SCHEDULER_CONFIG.items() if not k.startswith("_")}
    ref = diffusers.StableDiffusionPipeline(**{**reference.components, "scheduler": getattr(diffusers, scheduler).from_config(cfg, timestep_spacing="leading")})
    ref.set_progress_bar_config(disable=True)
    ours = _run(pipe, sampler=sampler, num_inference_steps=4, **kw)
    theirs = ref(PROMPTS, num_inference_steps=4, guidance_scale=7.5, generator=torch.Generator().manual_seed(0),
                 output_type="np", **kw).images
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_diffusers_single_file_loader_reads_our_checkpoint(saved):
    """diffusers' from_single_file (independent converter), given our folder as config, loads our
    original-layout file to the very same weights."""
    from diffusers import StableDiffusionPipeline

    pipe, root = saved
    ref = StableDiffusionPipeline.from_single_file(str(root / "model.safetensors"), config=str(root / "model"),
                                                   local_files_only=True, safety_checker=None)
    assert_modules_equal(pipe, Text2Image(ref.tokenizer, ref.text_encoder, ref.vae, ref.unet, pipe.schedule))


def test_transformers4_text_encoder_keys_load(saved, tmp_path):
    """Real SD folders were saved by transformers 4 ('text_model.' prefixed keys): they must load too."""
    import shutil

    from safetensors.torch import load_file, save_file

    pipe, root = saved
    shutil.copytree(root / "model", tmp_path / "m")
    f = tmp_path / "m" / "text_encoder" / "model.safetensors"
    sd = load_file(str(f))
    save_file({"text_model." + k: v for k, v in sd.items()}, str(f), metadata={"format": "pt"})
    assert_modules_equal(pipe, Text2Image.from_pretrained(tmp_path / "m", "cpu"))


def test_negative_prompt_and_guidance(saved):
    pipe, _ = saved
    base = _reference(pipe)
    neg = _run(pipe, negative_prompt="blurry green")
    assert np.abs(base - neg).max() > 1e-3
    # without guidance the negative prompt is unused
    np.testing.assert_array_equal(_run(pipe, guidance_scale=1.0), _run(pipe, guidance_scale=1.0, negative_prompt="blurry"))
    # a different seed gives a different image
    assert np.abs(base - _run(pipe, generator=torch.Generator().manual_seed(1))).max() > 1e-3


@pytest.mark.parametrize("sampler", ["ddpm", "plms", "euler_a"])
def test_every_sampler_runs(saved, sampler):
    pipe, _ = saved
    img = _run(pipe, sampler=sampler, num_images_per_prompt=2)
    assert img.shape == (4, 32, 32, 3) and np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1


def test_img2img_strength(saved):
    pipe, _ = saved
    rng = np.random.default_rng(0)
    init = rng.random((32, 32, 3)).astype(np.float32)
    roundtrip = pipe.decode_latents(pipe.encode_image(init)).permute(0, 2, 3, 1).numpy()[0]
    out0 = pipe(PROMPTS[0], init_image=init, strength=0.0, num_inference_steps=4, progress=False)
    np.testing.assert_allclose(out0[0], roundtrip, atol=1e-6)
    # in latent space: a low strength stays near the init latent, strength 1 forgets it
    z0 = pipe.encode_image(init).flatten()
    corr = {}
    for s in (0.25, 1.0):
        z = pipe(PROMPTS[0], init_image=init, strength=s, num_inference_steps=4, output_type="latent",
                 generator=torch.Generator().manual_seed(0), progress=False).flatten()
        corr[s] = float(torch.corrcoef(torch.stack([z, z0]))[0, 1])
    assert corr[0.25] > 0.5 and corr[1.0] < 0.3, corr


def test_user_errors(saved, tmp_path):
    pipe, root = saved
    with pytest.raises(LumenkitError, match="multiples of"):
        pipe(PROMPTS[0], height=30, width=32, progress=False)
    with pytest.raises(LumenkitError, match="sampler 'heun'"):
        pipe(PROMPTS[0], sampler="heun", progress=False)
    with pytest.raises(LumenkitError, match="missing unet/"):
        (tmp_path / "empty").mkdir()
        Text2Image.from_pretrained(tmp_path / "empty")
    with pytest.raises(LumenkitError, match="no such model folder"):
        Text2Image.from_pretrained(tmp_path / "nope")
    # an original-layout file without tokenizer (as real SD files) asks for one
    from lumenkit.t2i import convert

    sd, meta = convert.read_checkpoint(root / "model.safetensors")
    convert.write_checkpoint(tmp_path / "bare.safetensors", sd, json.loads(meta[convert.CONFIG_KEY]))
    with pytest.raises(LumenkitError, match="bare.safetensors: this checkpoint carries no tokenizer.*--tokenizer"):
        Text2Image.from_single_file(tmp_path / "bare.safetensors")
    loaded = Text2Image.from_single_file(tmp_path / "bare.safetensors", "cpu", tokenizer=root / "model" / "tokenizer")
    assert_modules_equal(pipe, loaded)
    # without stored config a file is taken as sd15: a tiny file then fails with a clear message
    convert.write_checkpoint(tmp_path / "noconf.safetensors", sd)
    with pytest.raises(LumenkitError, match="noconf.safetensors: .*shape"):
        Text2Image.from_single_file(tmp_path / "noconf.safetensors", tokenizer=root / "model" / "tokenizer")


def test_save_pretrained_replaces_atomically_and_keeps_foreign_entries(saved, tmp_path):
    pipe, _ = saved
    target = tmp_path / "m"
    target.mkdir()
    (target / "clip").mkdir()
    (target / "clip" / "config.json").write_text("{}")
    (target / "training_log.json").write_text('{"x": 1}')
    (target / "unet").mkdir()
    (target / "unet" / "stale.bin").write_text("old")
    pipe.save_pretrained(target)
    assert (target / "clip" / "config.json").is_file() and (target / "training_log.json").read_text() == '{"x": 1}'
    assert not (target / "unet" / "stale.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
