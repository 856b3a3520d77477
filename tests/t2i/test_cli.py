"""`lumenkit t2i sample | convert | data | evaluate` through the real entry point (lumenkit.cli.main):
outputs, flags generated from the configs, and user mistakes -> exit 2, one line, nothing written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lumenkit.cli import main
from lumenkit.common.config import ConfigError
from lumenkit.t2i import cli as C
from lumenkit.t2i.pipeline import Text2Image
from tests.t2i import assert_modules_equal

PROMPT = "a red circle on the left"


def _run(argv: list[str]) -> None:
    """lumenkit.cli.main(argv) that must succeed."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0, argv


def test_sample_writes_pngs_with_metadata(saved, tmp_path):
    from lumenkit.common.images import read_image, read_png_text

    pipe, root = saved
    out = tmp_path / "out"
    _run(["t2i", "sample", "--prompt", PROMPT, "--model", str(root / "model"), "--ddim_steps", "2", "--n_samples", "2",
          "--n_iter", "2", "--outdir", str(out), "--device", "cpu", "--negative_prompt", "blurry", "--seed", "7"])
    files = sorted((out / "samples").glob("*.png"))
    assert [f.name for f in files] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    meta = read_png_text(files[0])
    assert meta["prompt"] == PROMPT and meta["negative_prompt"] == "blurry"
    assert meta["seed"] == "7" and meta["steps"] == "2" and meta["sampler"] == "ddim" and meta["scale"] == "7.5"
    # the PNG is the pipeline's image for that seed (the CLI draws the batch's noise from one seeded generator)
    want = pipe(PROMPT, negative_prompt="blurry", num_inference_steps=2, guidance_scale=7.5, num_images_per_prompt=2,
                generator=torch.Generator().manual_seed(7), progress=False)
    np.testing.assert_allclose(read_image(files[0]), want[0], atol=1 / 255 + 1e-6)
    np.testing.assert_allclose(read_image(files[1]), want[1], atol=1 / 255 + 1e-6)
    grid = read_image(out / "grid-0000.png")
    assert grid.shape[:2] == (2 * 34 + 2, 2 * 34 + 2)
    # a second run continues the numbering, like CompVis; --plms and --from-file
    (tmp_path / "prompts.txt").write_text("a green triangle\n\na small cat\n")
    _run(["t2i", "sample", "--from-file", str(tmp_path / "prompts.txt"), "--ckpt", str(root / "model.ckpt"), "--ddim_steps", "2",
          "--n_samples", "1", "--n_iter", "1", "--plms", "--outdir", str(out), "--device", "cpu"])
    assert (out / "samples" / "00005.png").is_file() and (out / "grid-0001.png").is_file()
    assert read_png_text(out / "samples" / "00005.png")["prompt"] == "a small cat"
    assert read_png_text(out / "samples" / "00005.png")["sampler"] == "plms"


def test_img2img(saved, tmp_path):
    from lumenkit.common.images import read_image, read_png_text, write_image

    _, root = saved
    write_image(tmp_path / "init.png", np.random.default_rng(0).random((42, 37, 3)))
    _run(["t2i", "sample", "--prompt", "a cat", "--model", str(root / "model"), "--init-img", str(tmp_path / "init.png"),
          "--strength", "0.5", "--ddim_steps", "4", "--n_samples", "1", "--n_iter", "1", "--outdir", str(tmp_path / "o"),
          "--device", "cpu", "--skip_grid"])
    f = tmp_path / "o" / "samples" / "00000.png"
    assert read_image(f).shape == (40, 36, 3)  # resized down to the model's size multiple (4 for tiny)
    assert read_png_text(f)["strength"] == "0.5"
    assert not list((tmp_path / "o").glob("grid-*.png"))


def test_convert_both_directions(saved, tmp_path):
    pipe, root = saved
    _run(["t2i", "convert", "--checkpoint_path", str(root / "model.ckpt"), "--dump_path", str(tmp_path / "f")])
    assert_modules_equal(pipe, Text2Image.from_pretrained(tmp_path / "f", "cpu"))
    _run(["t2i", "convert", "--checkpoint_path", str(tmp_path / "f"), "--dump_path", str(tmp_path / "g.safetensors")])
    assert_modules_equal(pipe, Text2Image.from_single_file(tmp_path / "g.safetensors", "cpu"))


def test_data_writes_the_requested_images(tmp_path):
    from lumenkit.common.images import read_png_text
    from lumenkit.t2i.data import parse_caption

    _run(["t2i", "data", "-o", str(tmp_path / "d"), "--n", "3", "--seed", "1", "--split", "heldout"])
    lines = [json.loads(ln) for ln in (tmp_path / "d" / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(ln["split"] == "heldout" for ln in lines)
    assert all(parse_caption(ln["text"]).heldout for ln in lines)
    assert read_png_text(tmp_path / "d" / lines[0]["file_name"])["caption"] == lines[0]["text"]


def test_flags_come_from_the_configs():
    """Every config field is a flag with the config's default; the CompVis names are kept."""
    import argparse

    from lumenkit.cli import build_parser

    args = build_parser().parse_args(["t2i", "sample", "--prompt", "x"])
    cfg = C.config_from_args(C.SampleConfig, args)
    assert cfg == C.SampleConfig(prompt="x")
    assert (cfg.ddim_steps, cfg.n_samples, cfg.n_iter, cfg.scale, cfg.seed, cfg.H) == (50, 3, 2, 7.5, 42, None)
    args = build_parser().parse_args(["t2i", "sample", "--prompt", "x", "--H", "512", "--W", "256", "--plms", "--init-img", "i.png",
                                      "--ckpt", "m.ckpt", "--tokenizer", "tok", "--use_ema", "--n_samples", "4"])
    cfg = C.config_from_args(C.SampleConfig, args)
    assert (cfg.H, cfg.W, cfg.sampler, cfg.init_img, cfg.n_samples) == (512, 256, "plms", "i.png", 4)
    assert cfg.source == C.ModelSource(ckpt="m.ckpt", tokenizer="tok", use_ema=True)
    ev = C.config_from_args(C.EvaluateCommand, build_parser().parse_args(
        ["t2i", "evaluate", "--n-prompts", "6", "--samplers", "ddim:5, plms:30", "--scales", "1,2.5", "--scale", "3"]))
    assert ev.eval.settings() == [("ddim", 5, 3.0), ("plms", 30, 3.0), ("ddim", 20, 1.0), ("ddim", 20, 2.5)]
    assert ev.eval.n_prompts == 6 and ev.model is None and ev.jobs == 1
    d = C.config_from_args(C.DataConfig, build_parser().parse_args(["t2i", "data", "-o", "x", "--two-objects", "0.5"]))
    assert d == C.DataConfig(out="x", two_objects=0.5)
    assert isinstance(build_parser(), argparse.ArgumentParser)


@pytest.mark.parametrize("kwargs,flag", [
    (dict(prompt="x", H=-16), "--H -16"), (dict(prompt="x", W=30), "--W 30"), (dict(prompt="x", H=0), "--H 0"),
    (dict(prompt="x", n_samples=0), "--n_samples 0"), (dict(prompt="x", n_iter=-1), "--n_iter -1"),
    (dict(prompt="x", ddim_steps=0), "--ddim_steps 0"), (dict(prompt="x", strength=1.5), "--strength 1.5"),
    (dict(prompt="x", scale=float("nan")), "--scale nan"), (dict(prompt="x", seed=-1), "--seed -1"),
    (dict(prompt="x", ddim_eta=-0.1), "--ddim_eta -0.1"), (dict(prompt="x", sampler="euler_a", plms=True), "--sampler 'euler_a'"),
])
def test_sample_config_names_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match="^" + flag.replace("(", r"\(")):
        C.SampleConfig(**kwargs)


# ------------------------------------------------------------------------------------------ bad inputs
def _corrupt_unet(root: Path, tmp: Path) -> Path:
    import shutil

    shutil.copytree(root / "model", tmp / "corrupt")
    (tmp / "corrupt" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": broken")
    return tmp / "corrupt"


def _gsir_checkpoint(tmp: Path) -> Path:
    """What gsir train writes: torch.save((model.capture(), iteration)), a tuple of tensors and numbers."""
    f = tmp / "chkpnt3000.pth"
    torch.save(((0, torch.zeros(4, 3), torch.zeros(4, 3), 0.01), 3000), f)
    return f


def _bare_ckpt(root: Path, tmp: Path) -> Path:
    from lumenkit.t2i import convert

    sd, meta = convert.read_checkpoint(root / "model.safetensors")
    convert.write_checkpoint(tmp / "bare.safetensors", sd, json.loads(meta[convert.CONFIG_KEY]))
    return tmp / "bare.safetensors"


def _no_oracle_model(root: Path, tmp: Path) -> Path:
    return root / "model"  # a plain diffusers folder: no clip/, no oracle/


# (argv with {model}, {root}, {tmp}, {out} placeholders, expected substring of the one stderr line, what must not exist)
BAD_INPUTS = [
    (["t2i", "sample", "--H", "-16", "--prompt", "x", "--outdir", "{out}"], "--H -16: H, W must be positive multiples of 8"),
    (["t2i", "sample", "--prompt", "x", "--W", "30", "--outdir", "{out}"], "--W 30"),
    (["t2i", "sample", "--prompt", "x", "--n_samples", "0", "--outdir", "{out}"], "--n_samples 0: must be an integer >= 1"),
    (["t2i", "sample", "--prompt", "x", "--strength", "2", "--outdir", "{out}"], "--strength 2.0: must be in [0.0, 1.0]"),
    (["t2i", "sample", "--prompt", "x", "--seed", "-1", "--outdir", "{out}"], "--seed -1"),
    (["t2i", "sample", "--prompt", "x", "--sampler", "heun", "--outdir", "{out}"], "--sampler: invalid choice: 'heun'"),
    (["t2i", "sample", "--prompt", "x", "--ddim_steps", "abc", "--outdir", "{out}"], "--ddim_steps: invalid"),
    (["t2i", "sample", "--outdir", "{out}", "--model", "{model}"], "give --prompt TEXT or --from-file FILE"),
    (["t2i", "sample", "--prompt", "x", "--model", "{tmp}/nonexistent", "--outdir", "{out}"], "nonexistent: no such model folder"),
    (["t2i", "sample", "--prompt", "x", "--model", "{tmp}", "--outdir", "{out}"], "not a diffusers Stable Diffusion folder (missing unet/"),
    (["t2i", "sample", "--prompt", "x", "--model", "{corrupt}", "--outdir", "{out}"], "corrupt/unet: cannot load the UNet2DConditionModel"),
    (["t2i", "sample", "--prompt", "x", "--ckpt", "{tmp}/junk.safetensors", "--outdir", "{out}"], "junk.safetensors: not a valid safetensors file"),
    (["t2i", "sample", "--prompt", "x", "--ckpt", "{gsir}", "--outdir", "{out}"], "chkpnt3000.pth: not a Stable Diffusion checkpoint (top level is tuple"),
    (["t2i", "sample", "--prompt", "x", "--ckpt", "{tmp}/notes.txt", "--outdir", "{out}"], "notes.txt: unknown checkpoint type '.txt'"),
    (["t2i", "sample", "--prompt", "x", "--ckpt", "{tmp}/random.ckpt", "--outdir", "{out}"], "random.ckpt: not a PyTorch checkpoint"),
    (["t2i", "sample", "--prompt", "x", "--ckpt", "{bare}", "--outdir", "{out}"], "bare.safetensors: this checkpoint carries no tokenizer"),
    (["t2i", "sample", "--prompt", "x", "--ckpt", "{bare}", "--tokenizer", "{tmp}/notok", "--outdir", "{out}"], "notok: no such tokenizer folder"),
    (["t2i", "sample", "--prompt", "x", "--model", "{model}", "--ckpt", "{root}/model.ckpt", "--outdir", "{out}"], "--model and --ckpt exclude each other"),
    (["t2i", "sample", "--prompt", "x", "--model", "{model}", "--tokenizer", "{tmp}", "--outdir", "{out}"], "applies to --ckpt only"),
    (["t2i", "sample", "--from-file", "{tmp}/none.txt", "--model", "{model}", "--outdir", "{out}"], "--from-file"),
    (["t2i", "sample", "--prompt", "x", "--model", "{model}", "--init-img", "{tmp}/none.png", "--outdir", "{out}"], "none.png"),
    (["t2i", "sample", "--prompt", "x", "--model", "{model}", "--ddim_steps", "5000", "--outdir", "{out}"], "--ddim_steps 5000: the model has 1000 training timesteps"),
    (["t2i", "sample", "--prompt", "x", "--model", "{model}", "--H", "24", "--W", "56", "--outdir", "{out}"], None),  # fine for tiny (x4)
    (["t2i", "convert", "--checkpoint_path", "{tmp}/missing.ckpt", "--dump_path", "{out}"], "--checkpoint_path '"),
    (["t2i", "convert", "--checkpoint_path", "{gsir}", "--dump_path", "{out}"], "not a Stable Diffusion checkpoint"),
    (["t2i", "convert", "--checkpoint_path", "{model}", "--dump_path", "{out}", "--preset", "tiny"], "apply to single files"),
    (["t2i", "evaluate", "--samplers", "bogus:10", "--out", "{out}"], "--samplers 'bogus:10': want NAME:STEPS"),
    (["t2i", "evaluate", "--samplers", "ddim:0", "--out", "{out}"], "--samplers 'ddim:0'"),
    (["t2i", "evaluate", "--scales", "1,abc", "--out", "{out}"], "--scales"),
    (["t2i", "evaluate", "--n-prompts", "1", "--out", "{out}"], "--n-prompts 1: must be >= 2"),
    (["t2i", "evaluate", "--jobs", "0", "--out", "{out}"], "--jobs 0"),
    (["t2i", "evaluate", "--model", "{model}", "--n-prompts", "2", "--samplers", "ddim:1", "--scales", "", "--out", "{out}"], "no oracle.safetensors"),
    (["t2i", "data", "-o", "{out}", "--n", "-1"], "--n -1: must be an integer >= 1"),
    (["t2i", "data", "-o", "{out}", "--two-objects", "2"], "--two-objects 2.0"),
    (["t2i", "data", "-o", "{out}", "--split", "bogus"], "--split: invalid choice"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUTS, ids=[" ".join(a[:3]) + f" #{i}" for i, (a, _) in enumerate(BAD_INPUTS)])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(saved, tmp_path, capsys, argv, message):
    _, root = saved
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    (tmp_path / "notes.txt").write_text("not weights")
    (tmp_path / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(1000))
    fill = {"model": str(root / "model"), "root": str(root), "tmp": str(tmp_path), "out": str(tmp_path / "out")}
    if any("{corrupt}" in a for a in argv):
        fill["corrupt"] = str(_corrupt_unet(root, tmp_path))
    if any("{gsir}" in a for a in argv):
        fill["gsir"] = str(_gsir_checkpoint(tmp_path))
    if any("{bare}" in a for a in argv):
        fill["bare"] = str(_bare_ckpt(root, tmp_path))
    argv = [a.format(**fill) for a in argv]
    if message is None:  # a control: the same kind of call that works
        _run([*argv, "--ddim_steps", "1", "--n_iter", "1", "--n_samples", "1", "--device", "cpu"])
        assert (tmp_path / "out" / "samples" / "00000.png").is_file()
        return
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert exc.value.code == 2, err
    assert len(lines) == 1, err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bad_input_in_a_subprocess_has_no_traceback(tmp_path):
    """The real console entry point, for the case a new user hit (a traceback before)."""
    r = subprocess.run([sys.executable, "-m", "lumenkit.cli", "t2i", "sample", "--H", "-16", "--prompt", "x", "--outdir", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["lumenkit: error: --H -16: H, W must be positive multiples of 8"]
    assert not (tmp_path / "o").exists()
