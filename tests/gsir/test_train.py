"""Gaussian model, densification, checkpoints (safe, exact resume), a short training run, the CLI."""
import math

import numpy as np
import pytest
import torch

from lumenkit.cli import main
from lumenkit.common.errors import LumenkitError
from lumenkit.gsir import data as D
from lumenkit.gsir.gaussians import GaussianModel, OptimConfig, expon_lr
from lumenkit.gsir.losses import Stage1LossWeights
from lumenkit.gsir.train import Stage1Config, load_checkpoint, training, view_index

BACKEND = "cpu"  # the C++ backend (checked against the reference by test_rasterize*)


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("gsir_tiny")
    D.synthesize_scene(root, D.SynthConfig(object="spheres", resolution=32, n_train=8, n_test=2, spp=8, relight_envmaps=()), progress=False)
    return root


def test_expon_lr_matches_3dgs():
    assert math.isclose(expon_lr(0, 1.6e-4, 1.6e-6, 0, 0.01, 100), 1.6e-4)
    assert math.isclose(expon_lr(100, 1.6e-4, 1.6e-6, 0, 0.01, 100), 1.6e-6)
    assert math.isclose(expon_lr(50, 1.6e-4, 1.6e-6, 0, 0.01, 100), math.sqrt(1.6e-4 * 1.6e-6))


def test_densify_clone_split_prune():
    g = GaussianModel(sh_degree=1)
    pts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    g.create_from_points(pts, torch.full((4, 3), 0.5), spatial_lr_scale=1.0)
    g.training_setup(OptimConfig(percent_dense=0.01))
    with torch.no_grad():
        g.params["scaling"][:] = math.log(0.005)  # small: clone
        g.params["scaling"][1] = math.log(0.5)  # large: split
        g.params["opacity"][3] = -10.0  # transparent: pruned
    # one Adam step so moments exist and must be carried
    sum(p.sum() for p in g.params.values()).backward()
    g.optimizer.step()
    big = float(g.scales[1].max().detach())
    g.xyz_gradient_accum[:] = torch.tensor([[1.0], [1.0], [0.0], [0.0]])
    g.denom[:] = 1
    g.densify_and_prune(max_grad=0.5, min_opacity=0.005, extent=1.0, max_screen_size=None)
    # 0 cloned (+1), 1 split into 2 (original removed), 2 kept, 3 pruned -> 0, 2, clone(0), split x2
    assert g.num_points == 5
    assert all(len(g.optimizer.state[p]["exp_avg"]) == 5 for p in g.params.values())
    scales = g.scales.max(1).values
    assert torch.isclose(scales, torch.tensor(big / 1.6)).sum() == 2
    g.reset_opacity()
    assert float(g.opacities.max().detach()) <= 0.01 + 1e-6


def test_view_index_is_an_epoch_permutation():
    idx = [view_index(it, 5, 3) for it in range(1, 11)]
    assert sorted(idx[:5]) == list(range(5)) and sorted(idx[5:]) == list(range(5))


def _cfg(**kw):
    base = dict(iterations=12, num_points=300, backend=BACKEND, seed=1)
    base.update(kw)
    return Stage1Config(**base)


def test_checkpoint_is_safe_and_resume_is_exact(tiny_scene, tmp_path):
    scene = D.read_scene(tiny_scene)
    cfg = _cfg(iterations=30, checkpoint_iterations=[15], densify_from_iter=5, densification_interval=5, schedule="paper",
               densify_until_iter=25, opacity_reset_interval=20, sh_up_interval=10)
    full = training(scene, tmp_path / "a", cfg, torch.device("cpu"), progress=False)
    ck = tmp_path / "a" / "chkpnt15.pth"
    state = torch.load(ck, weights_only=True)  # plain containers + tensors only
    assert state["iteration"] == 15 and state["format"] == "lumenkit-gsir-stage1"
    assert (tmp_path / "a" / "config.json").is_file()
    resumed = training(scene, tmp_path / "b", cfg, torch.device("cpu"), start_checkpoint=ck, progress=False)
    ga, gb = full["gaussians"], resumed["gaussians"]
    assert ga.num_points == gb.num_points
    for k in ga.params:
        torch.testing.assert_close(ga.params[k], gb.params[k], atol=1e-5, rtol=1e-5)
    assert ga.active_sh_degree == gb.active_sh_degree == 3


def test_bad_checkpoint(tmp_path):
    with pytest.raises(LumenkitError, match="no such file"):
        load_checkpoint(tmp_path / "chkpnt1.pth")
    torch.save({"hello": torch.zeros(1)}, tmp_path / "x.pth")
    with pytest.raises(LumenkitError, match="not a lumenkit gsir checkpoint"):
        load_checkpoint(tmp_path / "x.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "lumenkit-gsir-stage1", "x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(LumenkitError, match="weights_only"):
        load_checkpoint(tmp_path / "evil.pth")


@pytest.mark.parametrize("depth_normal,lumenkit_normals", [(0.0, False), (0.05, False), (0.05, True)])
def test_short_training_psnr_rises(tiny_scene, tmp_path, depth_normal, lumenkit_normals):
    """Also with lumenkit's depth-normal term, which switches on halfway (iteration 50 of 100), and
    with its unfiltered, crease-aware depth normal, back-face culled normal map, planar depth and depth
    distortion (from iteration 50, as the benchmark: after densification) and depth-normal TV."""
    scene = D.read_scene(tiny_scene)
    cfg = _cfg(iterations=100, num_points=800, test_iterations=[1, 100], depth_median=not lumenkit_normals, cull_backfacing_normals=lumenkit_normals,
               planar_depth=lumenkit_normals, crease_aware_depth_normal=lumenkit_normals, distortion_from_iter=15_000)
    cfg.losses = Stage1LossWeights(**{**cfg.losses.__dict__, "lambda_depth_normal": depth_normal, "lambda_distortion": float(lumenkit_normals),
                                      "lambda_depth_normal_tv": 0.05 * lumenkit_normals})
    assert cfg.scaled().depth_normal_from_iter == 50 and cfg.scaled().distortion_from_iter == 50
    res = training(scene, tmp_path, cfg, torch.device("cpu"), progress=False)
    first, last = res["test"][1]["psnr"], res["test"][100]["psnr"]
    assert last > first + 4.0, (first, last)
    assert res["train_psnr"] > res["first_train_psnr"] + 4.0
    assert res["gaussians"].cull_backfacing_normals is res["gaussians"].planar_depth is lumenkit_normals


def _run(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def test_cli_end_to_end_and_errors(tiny_scene, tmp_path, capsys):
    m = tmp_path / "model"
    assert _run(["gsir", "train", "-m", str(m), "-s", str(tiny_scene), "--eval", "--iterations", "20", "--num_points", "300", "--backend", BACKEND, "--quiet"]) == 0
    assert (m / "chkpnt20.pth").is_file()
    assert _run(["gsir", "render", "-m", str(m), "-s", str(tiny_scene), "--skip_train", "--backend", BACKEND, "--quiet"]) == 0
    out = m / "test" / "ours_20"
    for sub in ("renders", "gt", "normal", "depth", "albedo", "roughness", "metallic"):
        assert len(list((out / sub).glob("*.png"))) == 2, sub
    assert _run(["gsir", "eval", "nvs", "-m", str(m)]) == 0
    assert _run(["gsir", "eval", "normal", "-m", str(m), "-s", str(tiny_scene)]) == 0
    import json

    res = json.loads((m / "results_normal.json").read_text())
    assert 0 <= res["mae_masked_deg"] <= 180 and res["mae_gsir_deg"] <= res["mae_masked_deg"] + 1e-6
    capsys.readouterr()
    # user mistakes: one line, exit 2
    assert _run(["gsir", "train", "-m", str(m), "-s", str(tmp_path / "missing"), "--iterations", "5"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert _run(["gsir", "train", "-m", str(m), "-s", str(tiny_scene), "--iterations", "0"]) == 2
    assert "--iterations" in capsys.readouterr().err
    assert _run(["gsir", "train", "-m", str(m), "-s", str(tiny_scene), "--sh_degree", "7"]) == 2
    assert _run(["gsir", "train", "-m", str(m), "-s", str(tiny_scene), "--depth_normal_tv_max_step", "0"]) == 2
    assert "--depth_normal_tv_max_step 0.0: must be > 0" in capsys.readouterr().err
    assert _run(["gsir", "train", "-m", str(m), "-s", str(tiny_scene), "--depth_normal_tv_order", "3"]) == 2
    assert "--depth_normal_tv_order" in capsys.readouterr().err
    assert _run(["gsir", "train", "-m", str(m), "-s", str(tiny_scene), "--iterations", "10", "--start_checkpoint", str(m / "chkpnt20.pth")]) == 2
    assert "nothing to do" in capsys.readouterr().err
    assert _run(["gsir", "render", "-m", str(tmp_path / "empty"), "-s", str(tiny_scene)]) == 2
    assert "no chkpnt" in capsys.readouterr().err
    assert _run(["gsir", "eval", "nvs", "-m", str(tmp_path / "empty")]) == 2
    assert "run `lumenkit gsir render" in capsys.readouterr().err
    assert _run(["gsir", "eval", "bogus", "-m", str(m)]) == 2
    assert _run(["gsir", "synth", "-o", str(tmp_path / "s"), "--object", "teapot"]) == 2


def test_cli_loss_flag_defaults_match_the_config():
    """The train flags' defaults are typed out in cli.py (parsing imports no torch): keep them equal
    to Stage1LossWeights / Stage1Config."""
    from lumenkit.cli import build_parser
    from lumenkit.gsir.cli import config_from_args

    args = build_parser().parse_args(["gsir", "train", "-m", "m", "-s", "s"])
    got, ref = config_from_args(args).losses, Stage1LossWeights()
    for name in ("lambda_dssim", "lambda_normal", "lambda_normal_tv", "lambda_depth_normal", "lambda_flatten", "lambda_distortion",
                 "lambda_depth_normal_tv", "depth_normal_tv_max_step", "depth_normal_tv_order"):
        assert getattr(got, name) == getattr(ref, name), name
    assert config_from_args(args).depth_normal_from_iter == Stage1Config().depth_normal_from_iter
    assert config_from_args(args).distortion_from_iter == Stage1Config().distortion_from_iter
    assert config_from_args(args).depth_median is Stage1Config().depth_median is True
    assert config_from_args(args).cull_backfacing_normals is Stage1Config().cull_backfacing_normals is False
    assert config_from_args(args).planar_depth is Stage1Config().planar_depth is False
    assert config_from_args(args).crease_aware_depth_normal is Stage1Config().crease_aware_depth_normal is False
    lumenkit = config_from_args(build_parser().parse_args(["gsir", "train", "-m", "m", "-s", "s", "--no_depth_median", "--cull_backfacing_normals",
                                                           "--planar_depth", "--crease_aware_depth_normal"]))
    assert lumenkit.depth_median is False and lumenkit.cull_backfacing_normals is True and lumenkit.planar_depth is True
    assert lumenkit.crease_aware_depth_normal is True
    order2 = config_from_args(build_parser().parse_args(["gsir", "train", "-m", "m", "-s", "s", "--depth_normal_tv_order", "2"]))
    assert order2.losses.depth_normal_tv_order == 2
