"""Gaussian model, densification, checkpoints (safe, exact resume), a short training run, the CLI."""
import math

import numpy as np
import pytest
import torch

from lumenkit.cli import main
from lumenkit.common.errors import LumenkitError
from lumenkit.gsir import data as D
from lumenkit.gsir import synth as S
from lumenkit.gsir.gaussians import GaussianModel, OptimConfig, expon_lr
from lumenkit.gsir.losses import Stage1LossWeights
from lumenkit.gsir.train import Stage1Config, load_checkpoint, training, view_index

BACKEND = "cpu"  # the C++ backend (checked against the reference by test_rasterize*)


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("gsir_tiny")
    S.synthesize_scene(root, S.SynthConfig(object="spheres", resolution=32, n_train=8, n_test=2, spp=8, relight_envmaps=()), progress=False)
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


def _tilted(normals: np.ndarray, degrees: float) -> np.ndarray:
    """Each unit normal [..., 3] turned by exactly `degrees` (towards a perpendicular direction)."""
    ref = np.where(np.abs(normals[..., :1]) < 0.9, np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]))
    u = np.cross(normals, ref)
    u /= np.clip(np.linalg.norm(u, axis=-1, keepdims=True), 1e-12, None)
    t = math.radians(degrees)
    return math.cos(t) * normals + math.sin(t) * u


@pytest.fixture(scope="module")
def trained(tiny_scene, tmp_path_factory):
    """A 20-iteration model of tiny_scene trained and rendered through the CLI."""
    m = tmp_path_factory.mktemp("gsir_cli") / "model"
    assert _run(["gsir", "train", "-m", str(m), "-s", str(tiny_scene), "--eval", "--iterations", "20", "--num_points", "300", "--backend", BACKEND, "--quiet"]) == 0
    assert (m / "chkpnt20.pth").is_file()
    assert _run(["gsir", "render", "-m", str(m), "-s", str(tiny_scene), "--skip_train", "--backend", BACKEND, "--quiet"]) == 0
    return m


def test_cli_end_to_end(tiny_scene, trained, tmp_path, capsys):
    """train -> render -> eval; eval normal against renders whose normals are the GT turned by exactly
    10 degrees: 10 deg over the foreground, and 10 deg x the foreground share in GS-IR's all-pixel protocol."""
    import json

    from lumenkit.common.images import write_image

    out = trained / "test" / "ours_20"
    for sub in ("renders", "gt", "normal", "depth", "albedo", "roughness", "metallic"):
        assert len(list((out / sub).glob("*.png"))) == 2, sub
    assert not list(out.parent.glob(".*")), "no partial render folders left"
    assert _run(["gsir", "eval", "nvs", "-m", str(trained)]) == 0
    nvs = json.loads((trained / "results_nvs.json").read_text())
    assert nvs["views"] == 2 and 5 < nvs["psnr"] < 60
    views = D.read_scene(tiny_scene).test
    fg_share = []
    tilted = tmp_path / "tilted"
    for i, v in enumerate(views):
        gt, mask = D.load_gt(v, "normal"), D.load_gt(v, "mask")
        pred = np.where(mask[..., None], _tilted(gt, 10.0), 0.0)
        write_image(tilted / "normal" / f"{i:05d}.png", np.where(mask[..., None], (pred + 1) / 2, 0.0), bit_depth=16)
        fg_share.append(mask.mean())
    assert _run(["gsir", "eval", "normal", "-m", str(trained), "-s", str(tiny_scene), "--output_dir", str(tilted)]) == 0
    assert "nerf layout" in capsys.readouterr().out
    res = json.loads((trained / "results_normal.json").read_text())
    assert res["views"] == 2
    assert res["mae_masked_deg"] == pytest.approx(10.0, abs=0.01)
    assert res["mae_gsir_deg"] == pytest.approx(10.0 * float(np.mean(fg_share)), abs=0.01)


def _snapshot(folder) -> dict:
    from pathlib import Path

    folder = Path(folder)
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


def _bad_inputs(scene, model, tmp):
    """(argv, expected substring of the one-line error, folder that must stay unchanged)."""
    (tmp / "empty").mkdir(exist_ok=True)
    (tmp / "corrupt.pth").write_bytes(b"not a checkpoint at all")
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.conv_in.weight": torch.zeros(2, 2)}, str(tmp / "unet.safetensors"))
    out = tmp / "out"
    return [
        (["gsir", "train", "--backend", "bogus", "-s", str(scene), "-m", str(out)], "--backend", out),
        (["gsir", "train", "-s", str(tmp / "missing"), "-m", str(out)], "no such folder", out),
        (["gsir", "train", "-s", str(tmp / "empty"), "-m", str(out)], "not a NeRF-synthetic or TensoIR-synthetic scene folder", out),
        (["gsir", "train", "-s", str(scene), "-m", str(out), "--iterations", "0"], "--iterations 0: must be >= 1", out),
        (["gsir", "train", "-s", str(scene), "-m", str(out), "--sh_degree", "7"], "--sh_degree 7: expected 0..3", out),
        (["gsir", "train", "-s", str(scene), "-m", str(out), "--num_points", "0"], "--num_points 0", out),
        (["gsir", "train", "-s", str(scene), "-m", str(out), "--feature_lr", "-0.1"], "--feature_lr -0.1", out),
        (["gsir", "train", "-s", str(scene), "-m", str(out), "--resolution", "0"], "--resolution 0", out),
        (["gsir", "train", "-s", str(scene), "-m", str(out), "--depth_normal_tv_max_step", "0"], "--depth_normal_tv_max_step 0.0: must be > 0", out),
        (["gsir", "train", "-s", str(scene), "-m", str(out), "--depth_normal_tv_order", "3"], "--depth_normal_tv_order", out),
        (["gsir", "train", "-s", str(scene), "-m", str(out), "--layout", "tensoir"], "--layout tensoir", out),
        (["gsir", "train", "-s", str(scene), "-m", str(out), "--start_checkpoint", str(tmp / "corrupt.pth")], "cannot be loaded as a safe checkpoint", out),
        (["gsir", "train", "-s", str(scene), "-m", str(out), "--start_checkpoint", str(tmp / "unet.safetensors")], "unet.safetensors", out),
        (["gsir", "train", "-s", str(scene), "-m", str(out), "--iterations", "10", "--start_checkpoint", str(model / "chkpnt20.pth")], "nothing to do", out),
        (["gsir", "train", "-s", str(scene), "-m", str(out), "--backend", "cuda", "--device", "cpu"], "--backend cuda", out),
        (["gsir", "render", "-m", str(tmp / "empty"), "-s", str(scene)], "no chkpnt", tmp / "empty"),
        (["gsir", "render", "-m", str(model), "-s", str(scene), "--checkpoint", str(tmp / "corrupt.pth")], "corrupt.pth", model),
        (["gsir", "eval", "nvs", "-m", str(tmp / "empty")], "run `lumenkit gsir render", tmp / "empty"),
        (["gsir", "eval", "normal", "-m", str(model)], "-s/--source_path", model),
        (["gsir", "eval", "bogus", "-m", str(model)], "invalid choice", model),
        (["gsir", "synth", "-o", str(out), "--object", "teapot"], "--object", out),
        (["gsir", "synth", "-o", str(out), "--resolution", "0"], "--resolution 0: must be >= 8", out),
        (["gsir", "synth", "-o", str(out), "--relight", "sunset,mars"], "mars", out),
        (["gsir", "synth", "-o", str(out), "--spp", "0"], "--spp 0", out),
    ]


def test_cli_bad_inputs_one_line_exit_2_nothing_written(tiny_scene, trained, tmp_path, capsys):
    for argv, expect, folder in _bad_inputs(tiny_scene, trained, tmp_path):
        before = _snapshot(folder)
        code = _run(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "Traceback" not in err, (argv, err)
        assert expect in lines[0], (argv, expect, lines[0])
        assert _snapshot(folder) == before, (argv, "wrote into", folder)


def test_cli_flags_reach_the_config():
    """Every Stage1Config field (nested losses / optim included) is a flag: given a non-default value on
    the command line, the config carries it; with no flags, the config is Stage1Config()."""
    import dataclasses
    import typing

    from lumenkit.cli import build_parser
    from lumenkit.common.config import ConfigError, config_fields, config_from_args

    base = ["gsir", "train", "-m", "m", "-s", "s"]
    assert config_from_args(Stage1Config, build_parser().parse_args(base)) == Stage1Config()
    default = dataclasses.asdict(Stage1Config())
    for path, f, tp in config_fields(Stage1Config):
        d = default
        for k in path:
            d = d[k]
        flag = "--" + (f.metadata.get("flag") or f.name)
        if tp is bool:
            tries = [([("--no_" + flag[2:]) if d else flag], not d)]
        elif typing.get_origin(tp) is typing.Literal:
            tries = [([flag, str(c)], c) for c in typing.get_args(tp) if c != d]
        elif typing.get_origin(tp) is list:
            tries = [([flag, "3,7"], [3, 7])]
        else:
            tries = [([flag, str(tp(v))], tp(v)) for v in (d + 1, d - 1, 2, d * 0.5, 0.5) if tp(v) != d]
        for extra, want in tries:
            try:
                cfg = config_from_args(Stage1Config, build_parser().parse_args(base + extra))
            except ConfigError:
                continue
            got = cfg
            for k in path:
                got = getattr(got, k)
            assert got == want, (extra, got, want)
            break
        else:
            raise AssertionError(f"no valid non-default value found for {flag}")


def test_cli_readme_flags():
    """The flag names README.md's gsir commands use reach their fields."""
    from lumenkit.cli import build_parser
    from lumenkit.common.config import config_from_args
    from lumenkit.gsir.config import SceneOptions, SynthConfig, TrainOptions

    args = build_parser().parse_args(["gsir", "train", "-m", "out/blocks", "-s", "data/blocks", "--iterations", "3000", "--eval",
                                      "--start_checkpoint", "out/blocks/chkpnt3000.pth", "--lambda_depth_normal", "0.05", "--no_depth_median",
                                      "--cull_backfacing_normals", "--planar_depth", "--crease_aware_depth_normal", "--depth_normal_from_iter", "10000",
                                      "--densify_grad_threshold", "0.0001", "--lambda_normal", "3", "--normal_tv", "0.1", "--lambda_distortion", "1",
                                      "--lambda_depth_normal_tv", "0.02", "--depth_normal_tv_order", "2"])
    cfg = config_from_args(Stage1Config, args)
    assert (cfg.iterations, cfg.depth_median, cfg.cull_backfacing_normals, cfg.planar_depth, cfg.crease_aware_depth_normal) == (3000, False, True, True, True)
    assert (cfg.depth_normal_from_iter, cfg.densify_grad_threshold) == (10000, 0.0001)
    w = cfg.losses
    assert (w.lambda_depth_normal, w.lambda_normal, w.lambda_normal_tv, w.lambda_distortion, w.lambda_depth_normal_tv, w.depth_normal_tv_order) == (0.05, 3, 0.1, 1, 0.02, 2)
    where, opts = config_from_args(SceneOptions, args), config_from_args(TrainOptions, args)
    assert (where.model_path, where.source_path, where.eval, opts.start_checkpoint) == ("out/blocks", "data/blocks", True, "out/blocks/chkpnt3000.pth")
    synth = config_from_args(SynthConfig, build_parser().parse_args(["gsir", "synth", "-o", "data/blocks", "--resolution", "64", "--relight", ""]))
    assert synth == SynthConfig(resolution=64, relight_envmaps=())
