"""Every gsir setting, once: the stage dataclasses whose fields are also the CLI flags.

`lumenkit gsir <verb>` builds its flags from these with `common.config.add_config_arguments` (help text
and choices come from the fields), and each dataclass validates itself in ``__post_init__``, so a bad
value stops a command with ``--flag value: why`` before it writes anything. Defaults are the official
GS-IR / 3DGS code's; lumenkit's additions default to off (= GS-IR). This module imports no torch, so
parsing the command line stays fast.

    SynthConfig        lumenkit gsir synth                (the Mitsuba scene generator, synth.py)
    Stage1Config       lumenkit gsir train                (with Stage1LossWeights and OptimConfig nested)
    SceneOptions       -m / -s / --eval / --layout        (train and render)
    TrainOptions       --start_checkpoint / --quiet
    RenderOptions      lumenkit gsir render
    EvalOptions        lumenkit gsir eval nvs|normal
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from lumenkit.common.config import ConfigError, check, check_choice, check_range, param

Backend = Literal["auto", "cpu", "reference", "cuda"]
Layout = Literal["auto", "nerf", "tensoir"]
EvalKind = Literal["nvs", "normal"]
ObjectName = Literal["blocks", "cup", "spheres"]
EnvmapName = Literal["sky", "sunset", "studio", "dusk", "overcast"]

BACKENDS: tuple[str, ...] = get_args(Backend)
LAYOUTS: tuple[str, ...] = get_args(Layout)
EVAL_KINDS: tuple[str, ...] = get_args(EvalKind)
OBJECTS: tuple[str, ...] = get_args(ObjectName)
ENVMAPS: tuple[str, ...] = get_args(EnvmapName)

PAPER_ITERATIONS = 30_000


# ---------------------------------------------------------------- fields shared by several verbs
def _model_path():
    return param(help="output / model folder", short="-m")


def _white_background():
    return param(False, "composite the RGBA images over white instead of black (3DGS -w)", short="-w")


def _resolution():
    return param(-1, "3DGS -r: 1/2/4/8 = downscale factor, -1 = native, other = target width in px", short="-r")


def _backend():
    return param("auto", "rasterizer backend (auto: cuda for GPU tensors, else the C++ cpu backend)")


def _layout():
    return param("auto", "scene folder layout: NeRF transforms_*.json or TensoIR train_XXX/test_XXX folders "
                 "(auto: NeRF, unless only the TensoIR test views carry GT normals)")


def _check_resolution(resolution: int) -> None:
    check(resolution == -1 or resolution >= 1, "resolution", resolution, "use -1 (native), 1, 2, 4, 8 or a target width in pixels")


ENVMAP_SUFFIXES = (".hdr", ".exr")


def envmap_name(envmap: str) -> str:
    """The name an environment map goes by in the scene (envmaps/<name>.hdr, relit paths, scene.json):
    a procedural map's own name, a file's stem."""
    return envmap if envmap in ENVMAPS else Path(envmap).stem


def _check_envmap(flag: str, envmap: str) -> None:
    """A procedural name or an existing .hdr/.exr file (its pixels are checked when synth reads it)."""
    if envmap in ENVMAPS:
        return
    check(Path(envmap).suffix.lower() in ENVMAP_SUFFIXES, flag, envmap,
          f"unknown environment map; expected one of {', '.join(ENVMAPS)} or a lat-long .hdr/.exr file")
    check(Path(envmap).is_file(), flag, envmap, "no such file")


def _same_envmap(a: str, b: str) -> bool:
    return a == b or (a not in ENVMAPS and b not in ENVMAPS and Path(a).resolve() == Path(b).resolve())


def _check_iterations(name: str, values) -> None:
    check(all(int(v) >= 1 for v in values), name, ",".join(map(str, values)), "iterations must be >= 1")


# ================================================================================ synth
@dataclass
class SynthConfig:
    """Settings of `lumenkit gsir synth` (defaults: a CPU-sized version of TensoIR-synthetic)."""

    object: ObjectName = param("blocks", "procedural object")
    resolution: int = param(128, "image width = height in px (>= 8)")
    n_train: int = param(100, "training views")
    n_test: int = param(200, "test views (with GT albedo / normal / depth / mask and relit images)")
    spp: int = param(64, "path-tracing samples per pixel")
    seed: int = param(0, "seed of the object's textures, the envmaps and the camera poses")
    envmap: str = param("sky", "training environment map: sky, sunset, studio, dusk, overcast, or a lat-long (2:1) .hdr/.exr file "
                        "(linear RGB, resampled to --env_resolution)")
    relight_envmaps: tuple[str, ...] = param(("sunset", "studio", "overcast"), "environment maps of the relit test views, names or "
                                             ".hdr/.exr files as --envmap ('' for none)", flag="relight")
    env_resolution: int = param(128, "environment map height in px (width 2x)")
    radius: float = param(4.0, "camera distance from the origin")
    camera_angle_x: float = param(0.6911112070083618, "horizontal field of view in radians (NeRF-synthetic's)")
    max_depth: int = param(8, "path-tracing bounces")

    def __post_init__(self) -> None:
        check_choice("object", self.object, OBJECTS)
        check_range("resolution", self.resolution, 8)
        check_range("n_train", self.n_train, 1)
        check_range("n_test", self.n_test, 1)
        check_range("spp", self.spp, 1)
        check_range("seed", self.seed, 0)
        _check_envmap("envmap", self.envmap)
        for e in self.relight_envmaps:
            _check_envmap("relight", e)
        named: dict[str, str] = {}
        for flag, e in (("envmap", self.envmap), *(("relight", e) for e in self.relight_envmaps)):
            other = named.setdefault(envmap_name(e), e)
            check(_same_envmap(e, other), flag, e, f"named {envmap_name(e)!r} like {other!r} (maps are written as envmaps/<name>.hdr); rename one file")
        check_range("env_resolution", self.env_resolution, 4)
        check_range("radius", self.radius, 0, lo_open=True)
        check(0 < self.camera_angle_x < 3.14159, "camera_angle_x", self.camera_angle_x, "must be in (0, pi) radians")
        check_range("max_depth", self.max_depth, 1)


# ================================================================================ stage 1
@dataclass
class Stage1LossWeights:
    """GS-IR stage-1 weights: 0.8 L1 + 0.2 D-SSIM + 1.0 normal consistency + 5.0 normal TV (losses.stage1_loss)."""

    lambda_dssim: float = param(0.2, "D-SSIM share of the colour loss (3DGS)")
    lambda_normal: float = param(1.0, "normal consistency weight (0 = plain 3DGS)")
    lambda_normal_tv: float = param(5.0, "edge-aware normal TV weight (0 = off)", flag="normal_tv")
    normal_min_opacity: float = param(0.5, "lumenkit addition: normal consistency only where the rendered opacity exceeds this (0 = GS-IR)")
    tv_opacity_weighted: bool = param(True, "lumenkit addition: the normal TV acts on the unit normal map times the detached opacity")
    lambda_depth_normal: float = param(0.0, "lumenkit addition: depth normal -> rendered normal consistency that moves the geometry (0 = GS-IR)")
    lambda_flatten: float = param(0.0, "lumenkit addition: mean smallest Gaussian scale (0 = GS-IR)")
    lambda_distortion: float = param(0.0, "lumenkit addition: 2DGS's depth distortion, blend weights gather at one depth per pixel (0 = GS-IR)")
    lambda_depth_normal_tv: float = param(0.0, "lumenkit addition: L1 TV of the depth normal, moving the geometry, steps >= "
                                          "--depth_normal_tv_max_step (creases) left free; faces flatten without rounding their edges (0 = GS-IR)")
    depth_normal_tv_max_step: float = param(0.25, "largest neighbour step (L1 of the unit-normal difference) the depth-normal TV smooths")
    depth_normal_tv_order: Literal[1, 2] = param(1, "depth-normal TV of the first difference (1: faces flatten, curved surfaces facet a little) "
                                                 "or the second (2: zero on a steadily turning normal, so curved surfaces are spared)")

    def __post_init__(self) -> None:
        check_range("lambda_dssim", self.lambda_dssim, 0, 1)
        check_range("normal_min_opacity", self.normal_min_opacity, 0, 1)
        for name, flag in (("lambda_normal", "lambda_normal"), ("lambda_normal_tv", "normal_tv"), ("lambda_depth_normal", "lambda_depth_normal"),
                           ("lambda_flatten", "lambda_flatten"), ("lambda_distortion", "lambda_distortion"),
                           ("lambda_depth_normal_tv", "lambda_depth_normal_tv")):
            check_range(flag, getattr(self, name), 0)
        check_range("depth_normal_tv_max_step", self.depth_normal_tv_max_step, 0, lo_open=True)
        check_choice("depth_normal_tv_order", self.depth_normal_tv_order, (1, 2))


@dataclass
class OptimConfig:
    """3DGS / GS-IR learning rates (positions scaled by the scene extent)."""

    position_lr_init: float = param(0.00016, "initial position learning rate (x scene extent)")
    position_lr_final: float = param(0.0000016, "final position learning rate (x scene extent)")
    position_lr_delay_mult: float = param(0.01, "3DGS's position LR delay multiplier")
    position_lr_max_steps: int = param(30_000, "iterations of the position LR decay (scaled with --schedule auto)")
    feature_lr: float = param(0.0025, "SH colour learning rate (higher bands / 20)")
    opacity_lr: float = param(0.05, "opacity learning rate")
    scaling_lr: float = param(0.005, "scale learning rate")
    rotation_lr: float = param(0.001, "rotation learning rate")
    normal_lr: float = param(0.05, "normal learning rate (GS-IR)")
    material_lr: float = param(0.05, "albedo / roughness / metallic learning rate (trained in stage 2)")
    percent_dense: float = param(0.01, "clone below / split above this share of the scene extent (3DGS)")

    def __post_init__(self) -> None:
        for name in ("position_lr_init", "position_lr_final", "feature_lr", "opacity_lr", "scaling_lr", "rotation_lr", "normal_lr", "material_lr"):
            check_range(name, getattr(self, name), 0, lo_open=True)
        check_range("position_lr_delay_mult", self.position_lr_delay_mult, 0, 1)
        check_range("position_lr_max_steps", self.position_lr_max_steps, 1)
        check_range("percent_dense", self.percent_dense, 0, 1, lo_open=True)


@dataclass
class Stage1Config:
    """GS-IR stage-1 / 3DGS training settings (defaults from the official code); saved as OUT/config.json."""

    iterations: int = param(30_000, "training iterations")
    sh_degree: int = param(3, "largest SH degree (0..3)")
    sh_up_interval: int = param(1000, "iterations between SH degree increases (scaled with --schedule auto)")
    # densification (3DGS OptimizationParams)
    densify_from_iter: int = param(500, "first densification iteration")
    densify_until_iter: int = param(15_000, "last densification iteration")
    densification_interval: int = param(100, "iterations between densifications")
    opacity_reset_interval: int = param(3000, "iterations between opacity resets")
    densify_grad_threshold: float = param(0.0002, "view-space gradient (NDC) above which Gaussians are cloned / split")
    min_opacity: float = param(0.005, "Gaussians below this opacity are pruned")
    max_screen_size: float = param(20.0, "px; after the first opacity reset, larger Gaussians are pruned")
    # init (synthetic scenes: random points in +-bound)
    num_points: int = param(100_000, "random init points (synthetic scenes)")
    init_bound: float = param(1.3, "init points uniform in [-bound, bound]^3")
    # background / data
    white_background: bool = _white_background()
    random_background: bool = param(False, "train on a random background colour per iteration")
    resolution: int = _resolution()
    losses: Stage1LossWeights = param(default_factory=Stage1LossWeights)
    # GS-IR's rasterizer: depth normal from the 3x3 median-filtered depth; no normal gradient on the
    # image border pixels
    depth_median: bool = param(True, "the depth normal comes from the 3x3 median-filtered depth as in GS-IR (--no_depth_median, "
                               "lumenkit addition: from the unfiltered rendered depth; the median rounds creases)")
    skip_border_normal_grad: bool = param(True, "no normal-map gradient on the image border pixels (GS-IR)")
    # From the first iteration the depth-normal terms inflate densification's view-space gradient statistic
    # (measured: 3x the Gaussians, -10 dB); the default starts after densification; 10000 (late in
    # densification) adds 2% Gaussians and is 0.18 deg better in BENCHMARKS gsir-ablation, which the benchmark uses
    depth_normal_from_iter: int = param(15_000, "iteration the depth-normal terms start (of 30000; scaled with --schedule auto)")
    crease_aware_depth_normal: bool = param(False, "lumenkit addition: the depth normal differentiates towards the side with the smaller "
                                            "second difference, which stays on one face at creases (GS-IR: the side with the smaller depth step)")
    cull_backfacing_normals: bool = param(False, "lumenkit addition: Gaussians whose normal faces away from the camera leave the normal map "
                                          "(GS-IR blends all)")
    planar_depth: bool = param(False, "lumenkit addition: each Gaussian adds the depth of its own plane at the pixel, not its centre depth (GS-IR)")
    # 2DGS starts the distortion at 3000; here, during densification, it pulled PSNR from 36 to 27 dB
    # (weight 10 from 3000, measured), so it waits
    distortion_from_iter: int = param(15_000, "iteration the distortion term starts (of 30000; scaled with --schedule auto; 2DGS: 3000)")
    optim: OptimConfig = param(default_factory=OptimConfig)
    schedule: Literal["auto", "paper"] = param("auto", "auto: scale densify/reset/SH/LR intervals by iterations/30000; paper: as given")
    seed: int = param(0, "seed of the init, the view order and the random background")
    backend: Backend = _backend()
    test_iterations: list[int] = param(default_factory=list, help="iterations at which to report the test PSNR")
    checkpoint_iterations: list[int] = param(default_factory=list, help="iterations at which to save chkpnt<N>.pth (the last one always)")

    def __post_init__(self) -> None:
        check_range("iterations", self.iterations, 1)
        check(isinstance(self.sh_degree, int) and 0 <= self.sh_degree <= 3, "sh_degree", self.sh_degree, "expected 0..3")
        for name in ("sh_up_interval", "densification_interval", "opacity_reset_interval", "num_points"):
            check_range(name, getattr(self, name), 1)
        for name in ("densify_from_iter", "densify_until_iter", "depth_normal_from_iter", "distortion_from_iter", "seed"):
            check_range(name, getattr(self, name), 0)
        check_range("densify_grad_threshold", self.densify_grad_threshold, 0, lo_open=True)
        check_range("min_opacity", self.min_opacity, 0, 1)
        check_range("max_screen_size", self.max_screen_size, 0, lo_open=True)
        check_range("init_bound", self.init_bound, 0, lo_open=True)
        _check_resolution(self.resolution)
        # "scaled" marks a config that scaled() already applied (saved in config.json and checkpoints)
        check_choice("schedule", self.schedule, ("auto", "paper", "scaled"))
        check_choice("backend", self.backend, BACKENDS)
        _check_iterations("test_iterations", self.test_iterations)
        _check_iterations("checkpoint_iterations", self.checkpoint_iterations)

    def scaled(self) -> "Stage1Config":
        """Apply schedule='auto': iteration-valued settings x iterations / 30000 (minimums kept sane)."""
        if self.schedule != "auto" or self.iterations >= PAPER_ITERATIONS:
            return self
        f = self.iterations / PAPER_ITERATIONS
        s = lambda v, lo: max(lo, int(round(v * f)))  # noqa: E731
        c = dataclasses.replace(self)
        # short runs: densification waits for the colours to settle (>= 10% of the run) and
        # accumulates view-space gradients over >= 25 iterations, or the Gaussian count explodes
        c.densify_from_iter = max(s(self.densify_from_iter, 50), self.iterations // 10)
        c.densify_until_iter = max(s(self.densify_until_iter, 50), c.densify_from_iter + 1)
        c.depth_normal_from_iter = s(self.depth_normal_from_iter, 1)
        c.distortion_from_iter = s(self.distortion_from_iter, 1)
        c.densification_interval = s(self.densification_interval, 25)
        c.opacity_reset_interval = s(self.opacity_reset_interval, 100)
        c.sh_up_interval = s(self.sh_up_interval, 10)
        c.optim = dataclasses.replace(self.optim, position_lr_max_steps=s(self.optim.position_lr_max_steps, 100))
        c.schedule = "scaled"
        return c

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ================================================================================ run options
@dataclass
class SceneOptions:
    """Where a run's scene and model live (train, render)."""

    model_path: str = _model_path()
    source_path: str = param(help="scene folder (NeRF transforms_*.json or TensoIR train_XXX/test_XXX)", short="-s")
    eval: bool = param(False, "hold out the test views (3DGS --eval)")
    layout: Layout = _layout()

    def __post_init__(self) -> None:
        check_choice("layout", self.layout, LAYOUTS)


@dataclass
class TrainOptions:
    """`lumenkit gsir train` options that are not training settings."""

    start_checkpoint: str | None = param(None, "resume from chkpnt<N>.pth")
    quiet: bool = param(False, "no progress bar")


@dataclass
class RenderOptions:
    """`lumenkit gsir render`: test (and train) views with every attribute map (3DGS render.py)."""

    checkpoint: str | None = param(None, "chkpnt<N>.pth (default: the newest in -m)")
    skip_train: bool = param(False, "do not render the training views")
    skip_test: bool = param(False, "do not render the test views")
    white_background: bool = _white_background()
    resolution: int = _resolution()
    backend: Backend = _backend()
    quiet: bool = param(False, "no progress bar")

    def __post_init__(self) -> None:
        _check_resolution(self.resolution)
        check_choice("backend", self.backend, BACKENDS)


@dataclass
class EvalOptions:
    """`lumenkit gsir eval nvs|normal` (GS-IR's metrics / normal_eval.py)."""

    model_path: str = _model_path()
    kind: EvalKind = param("nvs", "nvs: PSNR/SSIM of the renders; normal: normal MAE in degrees against the scene's GT normals", cli=False)
    source_path: str | None = param(None, "scene folder with GT normals (needed for normal)", short="-s")
    output_dir: str | None = param(None, "render folder (default: the newest <model>/test/ours_*)")
    white_background: bool = _white_background()
    layout: Layout = _layout()

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, EVAL_KINDS)
        check_choice("layout", self.layout, LAYOUTS)
        if self.kind == "normal" and not self.source_path:
            raise ConfigError("eval normal: -s/--source_path (the scene with GT normals) is required")
