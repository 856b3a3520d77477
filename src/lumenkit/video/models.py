"""The video diffusion model of VideoMaker (seed 002): diffusers' AnimateDiff classes on a lumenkit t2i UNet.

AnimateDiff turns an SD 1.x ``UNet2DConditionModel`` into a video UNet by inserting temporal "motion
modules" (diffusers ``MotionAdapter``) after every spatial block: ``UNetMotionModel.from_unet2d(unet2d,
adapter)``. Nothing of that is re-written here; this module picks the adapter's size, checks that an
adapter fits its base UNet (one-line ``LumenkitError`` instead of diffusers' ValueError or a
``load_state_dict`` size dump), loads both from local diffusers folders, runs the UNet in lumenkit's
frame-first layout, and saves / loads the trained VideoMaker weights.

Layouts. lumenkit's video latents are frame-first ``[B, N, C, h, w]`` (N frames, for VideoMaker N = F + 1
with the reference latent as the LAST frame); diffusers' ``UNetMotionModel`` takes ``[B, C, N, h, w]``
and, since diffusers 0.31, text states per frame ``[B*N, K, E]`` (``video_eps`` does both).

The reference frame goes through the WHOLE video UNet as frame F+1, temporal attention included (the
motion modules see F + 1 frames, the reference at temporal position F). That is what the official
inference code does (latents concatenated along the frame axis, one UNet call), it needs no change to
diffusers' motion modules, and the motion modules are trained with it (recommended by the paper).
The cost: F + 1 <= motion_max_seq_length (32 in every preset; video_eps checks it).

Motion presets (``MOTION_PRESETS``): the adapter's structure (block widths, layers per block, group-norm
groups) must equal its base UNet's, so a preset only holds the motion-specific sizes and
``motion_adapter_config(unet_config, preset)`` fills the rest in from the base:
- ``tiny``: 2 temporal heads, for tests on lumenkit.t2i's ``tiny`` UNet;
- ``shapes``: 4 temporal heads, for the shipped shapes-world UNet (lumenkit.t2i.pipeline.SHIPPED_MODEL,
  config lumenkit.t2i.train.shapes_model_config()["unet"]);
- ``sd15``: AnimateDiff v1.5's (8 heads, 1 temporal transformer layer, 32 positions, motion mid block).

Fresh adapters are zero-initialised as AnimateDiff does (``zero_init``: every motion module's output
projection ``proj_out`` is 0, so each module is the identity through its residual and the fresh video
UNet equals the 2-D UNet applied frame by frame).

Saved VideoMaker weights (``save_videomaker_weights``): ONE safetensors file holding only the trainable
subset (spatial self-attention ``attn1`` outside ``motion_modules`` + all motion modules; the rest is the
base UNet's and stays frozen), with the UNetMotionModel config in its metadata; it is applied onto a video
UNet built from the same base + adapter structure. The whole UNetMotionModel is saved with diffusers'
``save_pretrained`` by ``save_video_unet`` / read back by ``load_video_unet``.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from lumenkit.common.errors import LumenkitError

MOTION_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"motion_num_attention_heads": 2, "motion_transformer_layers_per_block": 1, "motion_max_seq_length": 32,
             "use_motion_mid_block": True},
    "shapes": {"motion_num_attention_heads": 4, "motion_transformer_layers_per_block": 1, "motion_max_seq_length": 32,
               "use_motion_mid_block": True},
    "sd15": {"motion_num_attention_heads": 8, "motion_transformer_layers_per_block": 1, "motion_max_seq_length": 32,
             "use_motion_mid_block": True},
}
WEIGHTS_FORMAT = "lumenkit-videomaker-v1"  # safetensors metadata "format" of save_videomaker_weights files


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """Silence diffusers' info/warning logs (e.g. from_unet2d's float32 note) inside the block."""
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(level)


def _config_dict(cfg: Any) -> dict[str, Any]:
    return dict(cfg) if isinstance(cfg, Mapping) else dict(cfg.config)


# --------------------------------------------------------------------------------- parameter names
def is_motion_module(name: str) -> bool:
    """Parameter / processor name lies in a temporal motion module (both its attn1 and attn2 are temporal)."""
    return "motion_modules" in name


def is_spatial_self_attention(name: str) -> bool:
    """Parameter name (``...attentions.0.transformer_blocks.0.attn1.to_q.weight``) or processor name
    (``...attn1.processor``) of a spatial self-attention layer: the layers VideoMaker's PISA replaces."""
    return not is_motion_module(name) and (".attn1." in name or name.endswith("attn1.processor"))


def is_spatial_cross_attention(name: str) -> bool:
    """Parameter name of a spatial cross-attention layer (attn2 outside motion_modules: the text path)."""
    return not is_motion_module(name) and ".attn2." in name


# --------------------------------------------------------------------------------- motion adapter
def motion_adapter_config(unet_config: Any, preset: str | Mapping[str, Any] = "shapes") -> dict[str, Any]:
    """MotionAdapter kwargs for base UNet `unet_config` (a config dict or a model): block widths, layers
    per block and group-norm groups from the base, temporal heads / layers / positions from `preset`
    (a MOTION_PRESETS name or a dict of those keys)."""
    u = _config_dict(unet_config)
    if isinstance(preset, str):
        if preset not in MOTION_PRESETS:
            raise LumenkitError(f"unknown motion preset {preset!r} (choose from {', '.join(MOTION_PRESETS)})")
        preset = MOTION_PRESETS[preset]
    cfg = {
        "block_out_channels": list(u["block_out_channels"]),
        "motion_layers_per_block": u["layers_per_block"],
        "motion_mid_block_layers_per_block": 1,  # SD's mid block has one ResNet-attention pair after the first ResNet
        "motion_norm_num_groups": u["norm_num_groups"],
        **dict(preset),
    }
    heads = cfg["motion_num_attention_heads"]
    heads = [heads] * len(cfg["block_out_channels"]) if isinstance(heads, int) else list(heads)
    for ch, h in zip(cfg["block_out_channels"], heads):
        if ch % h:
            raise LumenkitError(f"motion preset: {h} temporal heads do not divide the {ch} channels of the base UNet")
    return cfg


def build_motion_adapter(unet_config: Any, preset: str | Mapping[str, Any] = "shapes", *, zero_init: bool = True):
    """A fresh diffusers MotionAdapter fitting base UNet `unet_config` (see motion_adapter_config). With
    `zero_init` every motion module's proj_out is zero (AnimateDiff's initialisation): the video UNet
    then starts as the 2-D UNet applied per frame."""
    from diffusers import MotionAdapter

    adapter = MotionAdapter(**motion_adapter_config(unet_config, preset))
    if zero_init:
        zero_motion_outputs(adapter)
    return adapter


@torch.no_grad()
def zero_motion_outputs(module: torch.nn.Module) -> torch.nn.Module:
    """Zero the output projection (proj_out weight and bias) of every motion module in `module` (a
    MotionAdapter or UNetMotionModel): each temporal block becomes the identity map x + 0."""
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    n = 0
    for m in module.modules():
        if isinstance(m, AnimateDiffTransformer3D):
            m.proj_out.weight.zero_()
            m.proj_out.bias.zero_()
            n += 1
    if n == 0:
        raise LumenkitError(f"{type(module).__name__} has no motion modules to zero")
    return module


def motion_adapter_from_video_unet(video_unet, preset: str | Mapping[str, Any] = "shapes"):
    """The motion modules of UNetMotionModel `video_unet` as a diffusers MotionAdapter of motion preset
    `preset` (what the video UNet was built with), loaded strictly (same names: ``down_blocks.i.motion_modules...``)."""
    adapter = build_motion_adapter(video_unet.config, preset, zero_init=False)
    state = {k: v for k, v in video_unet.state_dict().items() if is_motion_module(k)}
    missing, unexpected = adapter.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LumenkitError(f"the video UNet's motion modules do not fit motion preset {preset!r} "
                            f"({(missing or unexpected)[0]})")
    return adapter


def _per_block(value: Any, n: int) -> list:
    return [value] * n if isinstance(value, int) else list(value)


def _adapter_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    """A MotionAdapter config.json dict with the keys it leaves out filled by MotionAdapter's defaults."""
    import inspect

    from diffusers import MotionAdapter

    sig = inspect.signature(MotionAdapter.__init__)
    defaults = {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}
    return {**defaults, **cfg}


def check_adapter_matches(unet_config: Any, adapter_config: Any, source: str = "motion adapter") -> None:
    """Raise a one-line LumenkitError naming `source` unless the MotionAdapter fits the base UNet: same
    number of blocks, block widths, layers per block, group-norm groups, a one-layer motion mid block, and
    no PIA input convolution. (diffusers checks only the first and third, with a bare ValueError; the
    others fail later inside load_state_dict or silently change the result.)"""
    u, a = _config_dict(unet_config), _adapter_defaults(_config_dict(adapter_config))
    ub, ab = list(u["block_out_channels"]), list(a["block_out_channels"])
    if len(ub) != len(ab):
        raise LumenkitError(f"{source}: {len(ab)} blocks, but the base UNet has {len(ub)} (block_out_channels {ab} vs {ub})")
    if ub != ab:
        raise LumenkitError(f"{source}: block_out_channels {ab} do not match the base UNet's {ub}")
    ul, al = _per_block(u["layers_per_block"], len(ub)), _per_block(a["motion_layers_per_block"], len(ab))
    if ul != al:
        raise LumenkitError(f"{source}: motion_layers_per_block {al} does not match the base UNet's layers_per_block {ul}")
    if int(a["motion_norm_num_groups"]) != int(u["norm_num_groups"]):
        raise LumenkitError(f"{source}: motion_norm_num_groups {a['motion_norm_num_groups']} does not match the base "
                            f"UNet's norm_num_groups {u['norm_num_groups']}")
    if a["use_motion_mid_block"] and int(a["motion_mid_block_layers_per_block"]) != 1:
        raise LumenkitError(f"{source}: motion_mid_block_layers_per_block {a['motion_mid_block_layers_per_block']} "
                            "(the base UNet's mid block takes 1)")
    if a.get("conv_in_channels"):
        raise LumenkitError(f"{source}: a PIA adapter (conv_in_channels {a['conv_in_channels']}) is not an AnimateDiff motion adapter")


# --------------------------------------------------------------------------------- the video UNet
def build_video_unet(unet2d, adapter, source: str = "motion adapter"):
    """UNetMotionModel.from_unet2d(unet2d, adapter) after check_adapter_matches: the base UNet's weights
    (ResBlocks, spatial and cross-attention, time embedding, conv in/out) plus the adapter's motion
    modules. Same dtype and device as `unet2d`, in eval mode.

    Forward (diffusers): sample [B, C, N, h, w], timestep [B] (one per clip), encoder_hidden_states
    [B*N, K, E] -> .sample [B, C, N, h, w]; lumenkit code calls it through `video_eps`."""
    from diffusers import UNetMotionModel

    check_adapter_matches(unet2d, adapter, source)
    with _quiet_diffusers():
        model = UNetMotionModel.from_unet2d(unet2d, adapter)
    return model.to(unet2d.device).eval()


def _check_folder(path: str | os.PathLike, what: str, flag: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise LumenkitError(f"{flag} {path}: no such folder ({what})")
    if not (path / "config.json").is_file():
        raise LumenkitError(f"{flag} {path}: no config.json in it (expected a diffusers {what} folder)")
    return path


def _read_config(path: Path, flag: str) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise LumenkitError(f"{flag} {path}: config.json is not valid JSON ({exc})") from None


def base_unet_folder(base: str | os.PathLike) -> Path:
    """The UNet folder of `base`: BASE/unet of a diffusers SD 1.x folder, or BASE itself when it is a
    UNet2DConditionModel folder (a config.json with that _class_name)."""
    base = Path(base)
    if (base / "unet" / "config.json").is_file():
        return base / "unet"
    if (base / "config.json").is_file() and _read_config(base, "--base").get("_class_name") == "UNet2DConditionModel":
        return base
    if not base.is_dir():
        raise LumenkitError(f"--base {base}: no such folder (a diffusers Stable Diffusion 1.x folder)")
    raise LumenkitError(f"--base {base}: no unet/config.json in it (expected a diffusers Stable Diffusion 1.x folder)")


def load_base_unet(base: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32):
    """UNet2DConditionModel from local folder `base` (see base_unet_folder; default: the shipped shapes
    model, lumenkit.t2i.pipeline.SHIPPED_MODEL). Nothing is downloaded."""
    from diffusers import UNet2DConditionModel

    if base is None:
        from lumenkit.t2i.pipeline import SHIPPED_MODEL

        base = SHIPPED_MODEL
    folder = base_unet_folder(base)
    try:
        with _quiet_diffusers():
            return UNet2DConditionModel.from_pretrained(folder, torch_dtype=dtype, local_files_only=True).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LumenkitError(f"--base {base}: cannot load its UNet ({first})") from None


def load_motion_adapter(path: str | os.PathLike, unet_config: Any | None = None, dtype: torch.dtype = torch.float32):
    """diffusers MotionAdapter from local folder `path` (config.json + diffusion_pytorch_model.safetensors,
    as AnimateDiff's published adapters). With `unet_config` the adapter's config is checked against the
    base UNet (check_adapter_matches) BEFORE its weights are read."""
    from diffusers import MotionAdapter

    path = _check_folder(path, "MotionAdapter", "--motion_adapter")
    cfg = _read_config(path, "--motion_adapter")
    if cfg.get("_class_name", "MotionAdapter") != "MotionAdapter":
        raise LumenkitError(f"--motion_adapter {path}: config.json is a {cfg['_class_name']}, not a MotionAdapter")
    if unet_config is not None:
        check_adapter_matches(unet_config, {**MotionAdapter.load_config(path)}, f"--motion_adapter {path}")
    try:
        with _quiet_diffusers():
            return MotionAdapter.from_pretrained(path, torch_dtype=dtype, local_files_only=True).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LumenkitError(f"--motion_adapter {path}: cannot load it ({first})") from None


def seeded_motion_adapter(unet_config: Any, preset: str | Mapping[str, Any] = "shapes", seed: int | None = 0,
                          dtype: torch.dtype = torch.float32):
    """A fresh zero-initialised MotionAdapter of motion preset `preset` for this base UNet, its random weights
    drawn under torch.manual_seed(seed) (the global RNG restored after; seed None: the current RNG)."""
    ctx = torch.random.fork_rng() if seed is not None else contextlib.nullcontext()
    with ctx:
        if seed is not None:
            torch.manual_seed(seed)
        with _quiet_diffusers():
            return build_motion_adapter(unet_config, preset).to(dtype)


def video_unet_from_pretrained(base: str | os.PathLike | None = None, motion_adapter: str | os.PathLike | None = None,
                               preset: str | Mapping[str, Any] = "shapes", *, device: str | torch.device = "cpu",
                               dtype: torch.dtype = torch.float32, seed: int | None = 0):
    """The video UNet of `lumenkit video ... --base DIR [--motion_adapter DIR]`: the base UNet of local SD
    folder `base` (default: the shipped shapes model) with the motion modules of local MotionAdapter folder
    `motion_adapter`, or, without one, a fresh zero-initialised adapter of motion preset `preset` (its
    random weights drawn under torch.manual_seed(seed) when seed is not None)."""
    unet2d = load_base_unet(base, dtype)
    if motion_adapter is not None:
        adapter = load_motion_adapter(motion_adapter, unet2d.config, dtype)
        source = f"--motion_adapter {motion_adapter}"
    else:
        adapter = seeded_motion_adapter(unet2d.config, preset, seed, dtype)
        source = f"motion preset {preset!r}"
    return build_video_unet(unet2d, adapter, source).to(device)


def video_eps(unet, x: torch.Tensor, t: torch.Tensor | int, context: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Run UNetMotionModel `unet` in lumenkit's frame-first layout.

    x [B, N, C, h, w] (N frames; for VideoMaker N = F + 1, reference latent last), t [B] or a scalar
    (one timestep per clip: diffusers embeds it once and repeats it over the N frames), context [B, K, E]
    (repeated per frame here: [B*N, K, E], repeat_interleave, as diffusers >= 0.31 expects)
    -> eps [B, N, C, h, w]. Any personalized-injection processors in `unet` get F = N - 1 for this call.
    kwargs go to the UNet (e.g. cross_attention_kwargs)."""
    from lumenkit.video.attention import pisa_frames

    if x.ndim != 5:
        raise LumenkitError(f"video latents must be [B, N, C, h, w], got shape {tuple(x.shape)}")
    b, n = x.shape[:2]
    if context.shape[0] != b:
        raise LumenkitError(f"context batch {context.shape[0]} does not match the {b} clips")
    max_len = getattr(unet.config, "motion_max_seq_length", None)
    if max_len is not None and n > max_len:
        raise LumenkitError(f"{n} frames exceed the motion modules' {max_len} positions (motion_max_seq_length)")
    ctx = context.repeat_interleave(n, dim=0)
    with pisa_frames(unet, n - 1):
        # contiguous: a strided x (e.g. a slice of the VAE's moments) made torch 2.13's CPU backward segfault
        out = unet(x.contiguous().permute(0, 2, 1, 3, 4), t, encoder_hidden_states=ctx, **kwargs).sample
    return out.permute(0, 2, 1, 3, 4)


# --------------------------------------------------------------------------------- saved weights
def videomaker_parameter_names(unet, *, motion_modules: bool = True) -> list[str]:
    """Names of VideoMaker's trainable parameters in `unet`: spatial self-attention (attn1 outside
    motion_modules) and, with `motion_modules`, every motion-module parameter."""
    return [n for n, _ in unet.named_parameters() if is_spatial_self_attention(n) or (motion_modules and is_motion_module(n))]


def _structure(config: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "norm_num_groups",
            "cross_attention_dim", "motion_num_attention_heads", "motion_max_seq_length", "use_motion_mid_block",
            "temporal_transformer_layers_per_block")
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(config).items() if k in keys}


def save_videomaker_weights(unet, path: str | os.PathLike, *, motion_modules: bool = True, names: list[str] | None = None) -> Path:
    """Write the trained VideoMaker weights of `unet` to one .safetensors file (atomically): the tensors of
    videomaker_parameter_names(unet, motion_modules=...) ({name: tensor}, the UNetMotionModel's own names)
    or of `names` (a baseline's set, lumenkit.video.baselines), metadata {"format": WEIGHTS_FORMAT, "unet":
    <structural config JSON>}. The frozen rest is the base's."""
    from lumenkit.common.fileio import save_state_dict

    path = Path(path)
    if path.suffix != ".safetensors":
        raise LumenkitError(f"{path}: VideoMaker weights are written as .safetensors")
    params = dict(unet.named_parameters())
    names = videomaker_parameter_names(unet, motion_modules=motion_modules) if names is None else names
    state = {n: params[n] for n in names}
    meta = {"format": WEIGHTS_FORMAT, "unet": json.dumps(_structure(unet.config))}
    return save_state_dict(path, state, meta)


def load_videomaker_weights(unet, path: str | os.PathLike) -> list[str]:
    """Load a save_videomaker_weights file into `unet` in place; returns the names loaded. A file of
    another format, or whose names / shapes / structure do not fit `unet`, raises a one-line LumenkitError
    before anything is changed."""
    from lumenkit.common.fileio import load_state_dict, read_safetensors_metadata

    path = Path(path)
    state = load_state_dict(path)
    meta = read_safetensors_metadata(path) if path.suffix == ".safetensors" else {}
    if meta.get("format") != WEIGHTS_FORMAT:
        raise LumenkitError(f"{path}: not a VideoMaker weights file (no format={WEIGHTS_FORMAT} in its metadata)")
    saved = json.loads(meta.get("unet", "{}"))
    mine = _structure(unet.config)
    diff = [k for k in saved if k in mine and saved[k] != mine[k]]
    if diff:
        raise LumenkitError(f"{path}: saved for another video UNet ({diff[0]} {saved[diff[0]]} vs {mine[diff[0]]})")
    own = unet.state_dict()
    missing = [k for k in state if k not in own]
    if missing:
        raise LumenkitError(f"{path}: {len(missing)} tensors not in this video UNet (first: {missing[0]})")
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise LumenkitError(f"{path}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, the UNet {tuple(own[bad[0]].shape)}")
    unet.load_state_dict(state, strict=False)
    return list(state)


def save_video_unet(unet, path: str | os.PathLike) -> Path:
    """The whole UNetMotionModel as a diffusers folder (config.json + diffusion_pytorch_model.safetensors),
    written atomically; load_video_unet (or UNetMotionModel.from_pretrained) reads it back."""
    from lumenkit.common.fileio import save_pretrained_atomic

    return save_pretrained_atomic(unet, path)


def load_video_unet(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """UNetMotionModel from a local save_video_unet / save_pretrained folder. Attention processors are not
    saved: install PISA again (lumenkit.video.attention.install_pisa)."""
    from diffusers import UNetMotionModel

    path = _check_folder(path, "UNetMotionModel", "--unet")
    try:
        with _quiet_diffusers():
            return UNetMotionModel.from_pretrained(path, torch_dtype=dtype, local_files_only=True).to(device).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LumenkitError(f"--unet {path}: cannot load it ({first})") from None
