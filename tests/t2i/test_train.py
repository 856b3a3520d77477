"""Training stages on the `tiny` preset: the loss goes down, a resumed run continues identically, and
2 processes (torchrun, gloo) train the same models as 1."""
import json
import subprocess
import sys

import pytest
import torch

from lumenkit.t2i import train as T
from lumenkit.t2i.oracle import Oracle


def _weights(folder, name="checkpoint.pt", key="model"):
    return torch.load(folder / name, weights_only=True)[key]


def test_oracle_training_reduces_loss(tmp_path):
    cfg = T.OracleConfig(steps=40, batch_size=32, lr=3e-3, warmup_steps=2, eval_images=32)
    torch.manual_seed(0)
    from lumenkit.t2i import data as D
    from lumenkit.t2i.oracle import oracle_loss

    b = D.make_batch(T.batch_rng(123, 0), 64, "all")
    with torch.no_grad():
        before = float(oracle_loss(Oracle().eval()(b.images), D.labels_tensor(b.scenes)))
    summary = T.run_oracle(tmp_path, cfg, progress=False)
    model = Oracle.load(tmp_path / "oracle")
    with torch.no_grad():
        after = float(oracle_loss(model(b.images), D.labels_tensor(b.scenes)))
    assert after < 0.8 * before
    assert summary["steps"] == 40 and summary["images"] == 40 * 32


def test_resume_continues_identically(tmp_path):
    cfg4 = T.VaeConfig(steps=4, batch_size=4, preset="tiny", ckpt_every=2, mixed_precision="no", eval_images=8)
    T.run_vae(tmp_path / "straight", cfg4, progress=False)
    cfg2 = T.VaeConfig(steps=2, batch_size=4, preset="tiny", ckpt_every=2, mixed_precision="no", eval_images=8)
    T.run_vae(tmp_path / "resumed", cfg2, progress=False)
    half, full = _weights(tmp_path / "resumed" / "vae_train"), _weights(tmp_path / "straight" / "vae_train")
    assert any(not torch.equal(half[k], full[k]) for k in full)  # 2 steps are not 4: the comparison below can fail
    T.run_vae(tmp_path / "resumed", cfg4, progress=False)  # picks up at step 2
    a, b = _weights(tmp_path / "straight" / "vae_train"), _weights(tmp_path / "resumed" / "vae_train")
    assert torch.load(tmp_path / "resumed" / "vae_train" / "checkpoint.pt", weights_only=True)["step"] == 4
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    cfg_saved = json.loads((tmp_path / "resumed" / "vae_train" / "config.json").read_text())
    assert cfg_saved["steps"] == 4 and cfg_saved["preset"] == "tiny"


@pytest.mark.slow
def test_tiny_end_to_end_and_unet_resume(tmp_path):
    from lumenkit.t2i.pipeline import Text2Image

    cfgs = {
        "clip": T.ClipConfig(steps=2, batch_size=8, preset="tiny"),
        "vae": T.VaeConfig(steps=2, batch_size=4, preset="tiny", eval_images=8),
        "unet": T.UnetConfig(steps=4, batch_size=4, preset="tiny", n_latents=32, ckpt_every=2),
        "oracle": T.OracleConfig(steps=2, batch_size=8, eval_images=16),
    }
    model_dir = T.run_all(tmp_path / "w", tmp_path / "model", cfgs, progress=False)
    log = json.loads((model_dir / "training_log.json").read_text())
    assert set(log["stages"]) == {"clip", "vae", "unet", "oracle"}
    pipe = Text2Image.from_pretrained(model_dir, device="cpu")
    img = pipe("a small red circle on the left on a white background", num_inference_steps=2, guidance_scale=3.0, height=64, width=64,
               generator=torch.Generator().manual_seed(0), progress=False)
    assert img.shape == (1, 64, 64, 3)
    # UNet resume: 2 + 2 steps == 4 steps (EMA too)
    import shutil

    w2 = tmp_path / "w2"
    shutil.copytree(tmp_path / "w", w2, ignore=shutil.ignore_patterns("unet_train", "unet"))
    T.run_unet(w2, T.UnetConfig(steps=2, batch_size=4, preset="tiny", n_latents=32, ckpt_every=2), progress=False)
    T.run_unet(w2, cfgs["unet"], progress=False)
    for key in ("model", "ema"):
        a = _weights(tmp_path / "w" / "unet_train", key=key)
        b = _weights(w2 / "unet_train", key=key)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_cli_resume_keeps_the_saved_recipe(tmp_path):
    """`train vae --steps N` on an existing run resumes with its saved config, not the code defaults."""
    from lumenkit.cli import main

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"vae": {"preset": "tiny", "batch_size": 4, "ckpt_every": 2, "mixed_precision": "no", "eval_images": 8}}))
    out = tmp_path / "w"
    for extra in (["--config", str(recipe), "--steps", "2"], ["--steps", "4"]):
        with pytest.raises(SystemExit) as exc:
            main(["t2i", "train", "vae", "--out", str(out), "--threads", "1", *extra])
        assert exc.value.code == 0
    saved = json.loads((out / "vae_train" / "config.json").read_text())
    assert saved["steps"] == 4 and saved["preset"] == "tiny" and saved["batch_size"] == 4
    assert torch.load(out / "vae_train" / "checkpoint.pt", weights_only=True)["step"] == 4


def test_offset_noise_adds_a_per_channel_constant_of_the_requested_std():
    import torch

    from lumenkit.t2i.train import training_noise

    g = torch.Generator().manual_seed(0)
    plain = training_noise((4000, 4, 16, 16), g, 0.0)
    offset = training_noise((4000, 4, 16, 16), g, 0.3)
    # the spatial mean of N(0,1) over 256 pixels has std 1/16; the offset adds 0.3 in quadrature
    assert abs(float(plain.mean(dim=(2, 3)).std()) - 1 / 16) < 0.005
    assert abs(float(offset.mean(dim=(2, 3)).std()) - (0.3**2 + 1 / 256) ** 0.5) < 0.01
    # the per-pixel residual around that mean is still unit variance
    assert abs(float((offset - offset.mean(dim=(2, 3), keepdim=True)).std()) - 1.0) < 0.01


TINY_RECIPE = {
    "clip": {"preset": "tiny", "steps": 3, "batch_size": 8, "mixed_precision": "no", "log_every": 1},
    "vae": {"preset": "tiny", "steps": 3, "batch_size": 4, "mixed_precision": "no", "eval_images": 8, "log_every": 1},
    "unet": {"preset": "tiny", "steps": 3, "batch_size": 4, "mixed_precision": "no", "n_latents": 32, "log_every": 1},
    "oracle": {"steps": 2, "batch_size": 8, "eval_images": 16},
}


def _global_rel_diff(a: dict, b: dict) -> float:
    """||a - b|| / ||a|| over all float tensors, k_proj biases left out: their gradient is zero in exact
    arithmetic (softmax ignores a constant added to every key), so Adam steps on round-off there."""
    keys = [k for k in a if a[k].is_floating_point() and not k.endswith("k_proj.bias")]
    return float(torch.cat([(a[k] - b[k]).flatten() for k in keys]).norm() / torch.cat([a[k].flatten() for k in keys]).norm())


def test_recipe_on_two_processes_matches_one(tmp_path):
    """`t2i train --config RECIPE` (all stages) on 2 gloo processes at the same global batch writes the
    same CLIP (InfoNCE gathered over processes), VAE and UNet (EMA) as 1 process (measured ~2e-8)."""
    from safetensors.torch import load_file

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(TINY_RECIPE))
    runs = {1: [sys.executable, "-m", "lumenkit"], 2: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lumenkit"]}
    for n, launcher in runs.items():
        res = subprocess.run([*launcher, "t2i", "train", "--config", str(recipe), "--out", str(tmp_path / f"p{n}"), "--threads", "1"],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    for part, file in (("clip", "model"), ("vae", "diffusion_pytorch_model"), ("unet", "diffusion_pytorch_model")):
        one = load_file(tmp_path / "p1" / "model" / part / f"{file}.safetensors")
        two = load_file(tmp_path / "p2" / "model" / part / f"{file}.safetensors")
        assert _global_rel_diff(one, two) <= 1e-5, part
    log1 = [json.loads(x) for x in (tmp_path / "p1" / "clip_train" / "loss_log.jsonl").read_text().splitlines()]
    log2 = [json.loads(x) for x in (tmp_path / "p2" / "clip_train" / "loss_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log1] == pytest.approx([r["loss"] for r in log2], rel=1e-5)


def test_clip_loss_matches_transformers(tmp_path):
    """On one process, clip_contrastive_loss equals CLIPModel's own return_loss=True loss."""
    from lumenkit.t2i import data as D
    from lumenkit.t2i.models import build_clip_model
    from lumenkit.t2i.tokenizer import tokenize

    model_cfg = T.shapes_model_config("tiny")
    tok = T.build_tokenizer(tmp_path, model_cfg)
    clip = build_clip_model(model_cfg, vocab_size=len(tok), **T.token_ids(tok)).eval()
    b = D.make_batch(T.batch_rng(0, 0), 6, "train")
    ids = tokenize(tok, b.captions)
    with torch.no_grad():
        ref = clip(input_ids=ids, pixel_values=b.images, return_loss=True).loss
        ours = T.clip_contrastive_loss(*T.ClipEmbed(clip)(ids, b.images))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_recipe_errors_name_the_key(tmp_path):
    from lumenkit.common.errors import LumenkitError

    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"unet": {"stpes": 3}}))
    with pytest.raises(LumenkitError, match="stpes"):
        T.load_recipe(bad)
    bad.write_text(json.dumps({"unte": {}}))
    with pytest.raises(LumenkitError, match="unte"):
        T.load_recipe(bad)


def test_shipped_recipe_is_the_shipped_models_training_log():
    """configs/t2i_shapes.json holds the configs in the shipped model's training_log.json (steps, batch, lr, ...)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    recipe = T.load_recipe(root / "configs" / "t2i_shapes.json")
    log = json.loads((root / "src" / "lumenkit" / "t2i" / "pretrained" / "shapes" / "training_log.json").read_text())
    for stage, overrides in recipe.items():
        ours = T.stage_config_from_dict(T.STAGE_CONFIGS[stage], overrides)
        shipped = T.stage_config_from_dict(T.STAGE_CONFIGS[stage], {k: v for k, v in log["stages"][stage]["config"].items() if k != "max_minutes"})
        assert ours == shipped, stage


@pytest.mark.cuda
def test_recipe_on_cuda_matches_cpu(tmp_path):
    """The same tiny recipe on the GPU (fp32) writes a CLIP, VAE and UNet within 1e-3 of the CPU's, and runs in bf16."""
    from safetensors.torch import load_file

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(TINY_RECIPE))
    for device in ("cpu", "cuda"):
        res = subprocess.run([sys.executable, "-m", "lumenkit", "t2i", "train", "--config", str(recipe), "--out", str(tmp_path / device),
                              "--device", device], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    for part, file in (("clip", "model"), ("vae", "diffusion_pytorch_model"), ("unet", "diffusion_pytorch_model")):
        cpu = load_file(tmp_path / "cpu" / "model" / part / f"{file}.safetensors")
        gpu = load_file(tmp_path / "cuda" / "model" / part / f"{file}.safetensors")
        assert _global_rel_diff(cpu, gpu) <= 1e-3, part
    res = subprocess.run([sys.executable, "-m", "lumenkit", "t2i", "train", "unet", "--config", str(recipe), "--out", str(tmp_path / "cuda"),
                          "--device", "cuda", "--mixed_precision", "bf16", "--steps", "6"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
