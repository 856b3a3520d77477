"""Evaluation measures against closed forms, and the whole evaluation on a tiny trained model."""
import numpy as np
import pytest
import torch

from lumenkit.t2i import evaluate as E


def test_frechet_distance_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert E.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    assert E.frechet_distance(a, a + shift) == pytest.approx(5.0, rel=1e-6)
    # N(0, I) vs N(0, s^2 I) in d dims: d (1 - s)^2 (sample covariances, so compare to those)
    b = torch.randn(4000, 3, generator=g, dtype=torch.float64) * 3
    ca, cb = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    from scipy import linalg

    expected = float(((a.mean(0) - b.mean(0)) ** 2).sum()) + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real)
    assert E.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert E.frechet_distance(a, b) == pytest.approx(3 * (1 - 3) ** 2, rel=0.1)


def test_prompt_sets_are_distinct_and_split_correctly():
    seen, unseen = E.prompt_set(20, "train", 0), E.prompt_set(20, "heldout", 0)
    assert len(set(seen)) == 20 and len(set(unseen)) == 20
    assert not any(s.heldout for s in seen) and all(s.heldout for s in unseen)
    assert E.prompt_set(20, "train", 0) == seen


@pytest.mark.slow
def test_evaluate_runs_on_a_tiny_model(tmp_path):
    from lumenkit.t2i import train as T

    cfgs = {
        "clip": T.ClipConfig(steps=2, batch_size=8, preset="tiny"),
        "vae": T.VaeConfig(steps=2, batch_size=4, preset="tiny", eval_images=8),
        "unet": T.UnetConfig(steps=2, batch_size=4, preset="tiny", n_latents=16),
        "oracle": T.OracleConfig(steps=2, batch_size=8, eval_images=16),
    }
    model = T.run_all(tmp_path / "w", tmp_path / "m", cfgs, progress=False)
    cfg = E.EvalConfig(n_prompts=2, samplers=(("ddim", 2), ("euler_a", 2)), scales=(1.0, 3.0), n_real=50)
    res = E.evaluate(model, cfg, progress=False)
    assert len(res["rows"]) == 4
    for r in res["rows"]:
        assert 0 <= r["acc_seen"] <= 1 and 0 <= r["acc_unseen"] <= 1 and np.isfinite(r["frechet"])
    md = E.markdown_report(res)
    assert "prompt acc. seen" in md and "VAE reconstruction PSNR" in md


def test_degrade_keeps_colours_and_softens_edges():
    from lumenkit.t2i import data as D
    from lumenkit.t2i.oracle import degrade

    b = D.make_batch(np.random.default_rng(0), 8, "train")
    g = torch.Generator().manual_seed(0)
    soft = degrade(b.images, g, max_blur=1.5, max_noise=0.0)
    # a blur with replicated borders keeps flat regions (background and object interiors) and the mean colour
    assert torch.allclose(soft.mean(dim=(2, 3)), b.images.mean(dim=(2, 3)), atol=0.02)
    assert torch.allclose(soft[..., :4, :4], b.images[..., :4, :4], atol=1e-3)
    # and lowers the sharpest edge steps
    step = lambda x: (x[..., 1:] - x[..., :-1]).abs().amax()
    assert step(soft) < step(b.images)
    # no blur, no noise = identity; noise has the requested scale
    assert torch.allclose(degrade(b.images, g, max_blur=1e-4, max_noise=0.0), b.images, atol=1e-5)
    noisy = degrade(b.images, torch.Generator().manual_seed(1), max_blur=1e-4, max_noise=0.1)
    assert 0.01 < float((noisy - b.images).std()) < 0.1
