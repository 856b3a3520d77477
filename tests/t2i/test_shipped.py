"""The model shipped in the package: its oracle reads real images right, its generator follows prompts."""
import numpy as np
import pytest
import torch

from lumenkit.t2i import data as D
from lumenkit.t2i.evaluate import SHIPPED_MODEL

pytestmark = pytest.mark.skipif(not (SHIPPED_MODEL / "model_index.json").is_file(), reason="shipped model not trained yet")


def test_shipped_oracle_reads_fresh_real_images():
    from lumenkit.t2i.oracle import Oracle, heldout_accuracy

    oracle = Oracle.load(SHIPPED_MODEL)
    acc = heldout_accuracy(oracle, n=600, seed=2024)
    assert acc["all"] >= 0.99, acc
    # and the held-out colour+shape pairs in particular
    assert heldout_accuracy(oracle, n=300, seed=2025, split="heldout")["all"] >= 0.98


def test_shipped_model_layout_and_size():
    total = sum(f.stat().st_size for f in SHIPPED_MODEL.rglob("*") if f.is_file())
    assert total <= 50 * 2**20
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "clip", "oracle"):
        assert (SHIPPED_MODEL / sub).is_dir(), sub
    assert not list(SHIPPED_MODEL.rglob("*.pt")) and not list(SHIPPED_MODEL.rglob("*.bin"))


def _generate(prompts, scale, steps=20, seed=3):
    from lumenkit.t2i.evaluate import generate, load_pipeline

    return generate(load_pipeline(SHIPPED_MODEL, "cpu"), prompts, "ddim", steps, scale, seed=seed)


@pytest.mark.slow
def test_shipped_model_samples_are_images_the_oracle_can_read():
    from lumenkit.t2i.evaluate import prompt_set
    from lumenkit.t2i.oracle import Oracle

    captions = [s.caption() for s in prompt_set(4, "train", seed=11)]
    imgs = _generate(captions, 5.0)
    assert imgs.shape == (4, 3, 64, 64) and torch.isfinite(imgs).all()
    assert float(imgs.min()) >= -1 and float(imgs.max()) <= 1 and float(imgs.std()) > 0.05
    assert not torch.equal(imgs, _generate(captions, 5.0, seed=4))  # the seed matters
    assert torch.equal(imgs, _generate(captions, 5.0))  # and reproduces
    pred = Oracle.load(SHIPPED_MODEL).predict(imgs)
    assert all(p.shape == (4,) for p in pred.values())


@pytest.mark.slow
def test_shipped_model_prompt_accuracy_target_on_seen_prompts():
    from lumenkit.t2i.evaluate import prompt_set
    from lumenkit.t2i.oracle import Oracle, verdicts

    scenes = prompt_set(48, "train", seed=11)  # 48: with 12 one borderline colour moves the score by 8 points
    imgs = _generate([s.caption() for s in scenes], 5.0)
    ok = verdicts(Oracle.load(SHIPPED_MODEL).predict(imgs), scenes)
    assert float(ok["all"].float().mean()) >= 0.9


@pytest.mark.slow
def test_shipped_model_prompt_accuracy_target_on_unseen_prompts():
    """Held-out colour+shape pairs, never in training: the issue's target is 60%."""
    from lumenkit.t2i.evaluate import prompt_set
    from lumenkit.t2i.oracle import Oracle, verdicts

    scenes = prompt_set(48, "heldout", seed=11)
    imgs = _generate([s.caption() for s in scenes], 5.0)
    ok = verdicts(Oracle.load(SHIPPED_MODEL).predict(imgs), scenes)
    assert float(ok["all"].float().mean()) >= 0.6


def test_shipped_oracle_reads_softened_images():
    """Generated images are softer and noisier than renders: the oracle must still read them."""
    from lumenkit.t2i.oracle import Oracle, heldout_accuracy

    acc = heldout_accuracy(Oracle.load(SHIPPED_MODEL), n=600, seed=2026, degraded=True)
    assert acc["all"] >= 0.97, acc
