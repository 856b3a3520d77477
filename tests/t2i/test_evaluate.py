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


class _RenderingPipe:
    """A stand-in generator that draws the shapes world's own image of each caption (data.render_scene), or
    of the caption with its object colour replaced by the next colour in data.COLOURS (`wrong_colour`)."""

    def __init__(self, vae, wrong_colour: bool = False):
        self.vae, self.wrong_colour = vae, wrong_colour

    def __call__(self, prompts, output_type="pt", **_):
        from dataclasses import replace

        from lumenkit.t2i import data as D

        colours = list(D.COLOURS)
        scenes = [D.parse_caption(p) for p in prompts]
        if self.wrong_colour:
            scenes = [D.Scene((replace(s.objects[0], colour=colours[(colours.index(s.objects[0].colour) + 1) % 8]),), s.background)
                      for s in scenes]
        assert output_type == "pt"
        return (D.to_tensor(D.render_batch(scenes, np.random.default_rng(0))) + 1) / 2


@pytest.mark.skipif(not (E.SHIPPED_MODEL / "oracle").is_dir(), reason="shipped model not trained yet")
@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 24 images, 128 features: a singular covariance, as markdown_report says
def test_evaluate_scores_known_generators_exactly(monkeypatch):
    """Against a generator whose truth is known: the real renders of the prompts score 100% prompt accuracy
    on seen and unseen prompts; the same renders with every object colour wrong score 0%, with the colour
    attribute at 0% and every other attribute at 100%; the Fréchet distance of renders to real images is
    about that of the real reference images (same prompts) and far below the wrong-colour one."""
    from lumenkit.t2i import data as D
    from lumenkit.t2i.oracle import Oracle

    real = E.load_pipeline(None, "cpu")
    oracle = Oracle.load(E.SHIPPED_MODEL)
    cfg = E.EvalConfig(n_prompts=12, samplers=("ddim:1",), scales=())
    real_feats = oracle.embed(D.make_batch(np.random.default_rng(3), 300, "all").images)
    rows = {}
    for wrong in (False, True):
        monkeypatch.setattr(E, "load_pipeline", lambda *a, _w=wrong, **k: _RenderingPipe(real.vae, _w))
        (rows[wrong],) = E._eval_settings(str(E.SHIPPED_MODEL), cfg, cfg.settings(), real_feats, progress=False)
    ok, bad = rows[False], rows[True]
    assert (ok["sampler"], ok["steps"], ok["scale"]) == ("ddim", 1, 5.0)
    assert (ok["acc_seen"], ok["acc_unseen"]) == (1.0, 1.0)
    assert (bad["acc_seen"], bad["acc_unseen"]) == (0.0, 0.0)
    for attr in ("shape", "size", "position", "background"):
        assert bad["attr_seen"][attr] == 1.0 and bad["attr_unseen"][attr] == 1.0, attr
    assert bad["attr_seen"]["colour"] == 0.0 and bad["attr_unseen"]["colour"] == 0.0
    assert ok["clip_score"] > bad["clip_score"] + 5
    scenes = E.prompt_set(12, "train") + E.prompt_set(12, "heldout")
    other_renders = D.to_tensor(D.render_batch(scenes, np.random.default_rng(1)))  # the same prompts, other jitter
    assert ok["frechet"] == pytest.approx(E.frechet_distance(oracle.embed(other_renders), real_feats), rel=0.1)
    assert ok["frechet"] < bad["frechet"]


def test_eval_config_validates_and_lists_its_settings():
    from lumenkit.common.config import ConfigError

    cfg = E.EvalConfig(samplers=("plms:20", ("ddim", 5)), cfg_sampler="ddim:5", scales=(1, 5))
    assert cfg.samplers == ("plms:20", "ddim:5")
    assert cfg.settings() == [("plms", 20, 5.0), ("ddim", 5, 5.0), ("ddim", 5, 1.0)]  # ddim:5 at 5.0 is not run twice
    for kw, msg in ((dict(samplers=("heun:10",)), "--samplers 'heun:10'"), (dict(samplers=("ddim",)), "--samplers 'ddim'"),
                    (dict(n_prompts=1), "--n-prompts 1"), (dict(scales=(float("inf"),)), "--scales inf"),
                    (dict(cfg_sampler="ddim:x"), "--cfg_sampler 'ddim:x'"), (dict(samplers=()), "--samplers")):
        with pytest.raises(ConfigError, match=msg):
            E.EvalConfig(**kw)


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
