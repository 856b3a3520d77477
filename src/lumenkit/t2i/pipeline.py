"""Stable Diffusion text-to-image / image-to-image: the run (seed 003, "sampling phase").

Encode the prompt with the CLIP text tower -> context [B, K, E]; draw a seeded noise latent
[B, 4, H/f, W/f] (or noise an encoded init image, img2img); denoise with a lumenkit.diffusion sampler and
classifier-free guidance (uncond = "" or the negative prompt); decode with the VAE; images in [0, 1].

`Text2Image` is a small dataclass of the five parts (tokenizer, text_encoder, vae, unet, schedule):
- `Text2Image.from_pretrained(dir)`: a diffusers-format SD folder (unet/, vae/, text_encoder/, tokenizer/,
  scheduler/, model_index.json), local files only;
- `Text2Image.from_single_file(file)`: an original-layout SD 1.x .safetensors/.ckpt (convert.py);
- `save_pretrained(dir)`: diffusers layout, written atomically (temporary folder, then rename);
- `pipe(prompt, num_inference_steps=50, guidance_scale=7.5, generator=...) -> [B, H, W, 3]` in [0, 1].

`load_pipeline(model=None, ...)` is the one loader the CLI, the evaluation and the benchmarks use
(default: the model shipped in the package, `SHIPPED_MODEL`); `write_scheduler_and_index(dir, ...)`
writes the SD scheduler/scheduler_config.json and model_index.json of a diffusers folder.
The command line (`lumenkit t2i sample` / `convert`) is in cli.py.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from lumenkit.common.config import read_json
from lumenkit.common.device import resolve_device
from lumenkit.common.errors import LumenkitError
from lumenkit.common.fileio import atomic_dir, atomic_write_json
from lumenkit.diffusion import SAMPLERS, NoiseSchedule, sample
from lumenkit.t2i import convert
from lumenkit.t2i.models import build_text_encoder, build_unet, build_vae, preset_config, text_config
from lumenkit.t2i.tokenizer import load_tokenizer, save_tokenizer, tokenizer_files, tokenizer_from_files

# the small model trained here and shipped in the package (diffusers layout, plus clip/ and oracle/)
SHIPPED_MODEL = Path(__file__).resolve().parent / "pretrained" / "shapes"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer")
SCHEDULER_CONFIG = {  # Stable Diffusion 1.x's scheduler/scheduler_config.json (diffusers DDIMScheduler)
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
_PREDICTION = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
# diffusers beta_schedule name -> CompVis make_beta_schedule name
_BETA_KIND = {"scaled_linear": "linear", "linear": "sqrt_linear", "squaredcos_cap_v2": "cosine"}


def schedule_from_scheduler_config(cfg: dict) -> tuple[Any, str]:
    """diffusers scheduler_config.json -> (lumenkit NoiseSchedule, parameterization 'eps'|'v'|'x0')."""
    pred = _PREDICTION.get(cfg.get("prediction_type", "epsilon"))
    if pred is None:
        raise LumenkitError(f"scheduler_config.json: prediction_type {cfg.get('prediction_type')!r} unsupported")
    if cfg.get("trained_betas") is not None:
        return NoiseSchedule.from_config(given_betas=cfg["trained_betas"]), pred
    kind = _BETA_KIND.get(cfg.get("beta_schedule", "scaled_linear"))
    if kind is None:
        raise LumenkitError(f"scheduler_config.json: beta_schedule {cfg.get('beta_schedule')!r} unsupported")
    sched = NoiseSchedule.from_config(
        kind=kind,
        num_timesteps=int(cfg.get("num_train_timesteps", 1000)),
        linear_start=float(cfg.get("beta_start", 0.00085)),
        linear_end=float(cfg.get("beta_end", 0.012)),
    )
    return sched, pred


def scheduler_config_from_preset(schedule: dict, parameterization: str = "eps") -> dict:
    """models.py preset schedule {kind, num_timesteps, linear_start, linear_end} -> scheduler_config.json."""
    inv = {v: k for k, v in _BETA_KIND.items()}
    cfg = dict(SCHEDULER_CONFIG)
    cfg.update(
        beta_schedule=inv.get(schedule.get("kind", "linear"), "scaled_linear"),
        num_train_timesteps=int(schedule.get("num_timesteps", 1000)),
        beta_start=float(schedule.get("linear_start", 0.00085)),
        beta_end=float(schedule.get("linear_end", 0.012)),
        prediction_type={v: k for k, v in _PREDICTION.items()}[parameterization],
    )
    return cfg


@contextlib.contextmanager
def _no_loading_bars() -> Iterator[None]:
    """No transformers "Loading weights" bar on stderr while loading (the CLI's stderr is for errors)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def model_index(scheduler_class: str = "DDIMScheduler") -> dict:
    """model_index.json of a diffusers StableDiffusionPipeline folder (no safety checker)."""
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def write_scheduler_and_index(folder: str | os.PathLike, scheduler_config: dict | None = None) -> Path:
    """Write folder/scheduler/scheduler_config.json (default: SD 1.x's, SCHEDULER_CONFIG; for a models.py
    preset schedule use scheduler_config_from_preset(preset["schedule"])) and folder/model_index.json."""
    folder = Path(folder)
    cfg = dict(scheduler_config or SCHEDULER_CONFIG)
    atomic_write_json(folder / "scheduler" / "scheduler_config.json", cfg)
    atomic_write_json(folder / "model_index.json", model_index(cfg.get("_class_name", "DDIMScheduler")))
    return folder


def load_pipeline(model: str | os.PathLike | None = None, device: str | torch.device = "auto", *,
                  ckpt: str | os.PathLike | None = None, tokenizer: str | os.PathLike | None = None,
                  preset: str | None = None, use_ema: bool = False, dtype: torch.dtype = torch.float32) -> "Text2Image":
    """The model the user named: `ckpt` (an original-layout single file, see from_single_file) or the
    diffusers folder `model` (default: SHIPPED_MODEL, the model shipped in the package)."""
    if ckpt is not None:
        if model is not None:
            raise LumenkitError("--model and --ckpt exclude each other: give one")
        return Text2Image.from_single_file(ckpt, device, dtype, config=preset, tokenizer=tokenizer, use_ema=use_ema)
    if model is None and not SHIPPED_MODEL.is_dir():
        raise LumenkitError(f"no model given and the shipped model is missing at {SHIPPED_MODEL}: pass --model DIR or --ckpt FILE")
    return Text2Image.from_pretrained(model or SHIPPED_MODEL, device, dtype)


@dataclass
class Text2Image:
    """Stable Diffusion: tokenizer + CLIPTextModel + AutoencoderKL + UNet2DConditionModel + NoiseSchedule.

    Images are [B, H, W, 3] float in [0, 1] (sRGB-encoded, as the training images); the VAE works on
    [B, 3, H, W] in [-1, 1]; latents are [B, 4, H/f, W/f] multiplied by vae.config.scaling_factor.
    """

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    schedule: Any
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    parameterization: str = "eps"
    scheduler_config: dict = field(default_factory=lambda: dict(SCHEDULER_CONFIG))

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        for m in (self.text_encoder, self.vae, self.unet):
            m.to(self.device).eval().requires_grad_(False)
            if next(m.parameters()).dtype != self.dtype:
                m.to(self.dtype)

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "auto", dtype: torch.dtype = torch.float32) -> "Text2Image":
        """Load a diffusers-format Stable Diffusion folder from local disk (nothing is downloaded)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        path = Path(path)
        if not path.is_dir():
            raise LumenkitError(f"{path}: no such model folder (want a diffusers-format SD folder)")
        missing = [c for c in COMPONENTS if not (path / c).is_dir()]
        if missing:
            raise LumenkitError(f"{path}: not a diffusers Stable Diffusion folder (missing {', '.join(c + '/' for c in missing)})")
        tokenizer = load_tokenizer(path / "tokenizer")
        modules = {}
        for name, kind in (("text_encoder", CLIPTextModel), ("vae", AutoencoderKL), ("unet", UNet2DConditionModel)):
            try:
                with _no_loading_bars():
                    modules[name] = kind.from_pretrained(str(path / name), local_files_only=True)
            except (OSError, ValueError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise LumenkitError(f"{path / name}: cannot load the {kind.__name__} ({first})") from None
        sched_file = path / "scheduler" / "scheduler_config.json"
        sched_cfg = read_json(sched_file, what="scheduler config") if sched_file.is_file() else dict(SCHEDULER_CONFIG)
        schedule, pred = schedule_from_scheduler_config(sched_cfg)
        return cls(tokenizer, modules["text_encoder"], modules["vae"], modules["unet"], schedule, resolve_device(device), dtype, pred, sched_cfg)

    @classmethod
    def from_single_file(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32,
        *,
        config: str | dict | None = None,
        tokenizer: str | os.PathLike | Any | None = None,
        use_ema: bool = False,
    ) -> "Text2Image":
        """Load an original-layout SD 1.x checkpoint (.safetensors, or .ckpt with weights_only=True).

        config: preset name or dict (models.py); default: the config stored in the file by lumenkit,
        else `sd15`. tokenizer: a CLIPTokenizer folder (or object); default: the one stored in the file
        (real SD files carry none: pass the tokenizer/ folder of any SD 1.x model). use_ema: take the
        UNet from the `model_ema.` copy of a CompVis training checkpoint.
        """
        from accelerate import init_empty_weights
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        path = Path(path)
        sd, meta = convert.read_checkpoint(path)
        if config is None:
            config = json.loads(meta[convert.CONFIG_KEY]) if convert.CONFIG_KEY in meta else "sd15"
        cfg = preset_config(config)
        tok_emb = sd.get(convert.TEXT_PREFIX + "text_model.embeddings.token_embedding.weight")
        if tok_emb is None:
            raise LumenkitError(f"{path}: no text_model.embeddings.token_embedding.weight under {convert.TEXT_PREFIX!r}")
        tcfg = text_config(cfg, vocab_size=tok_emb.shape[0])
        with init_empty_weights(include_buffers=False):
            unet = UNet2DConditionModel(**cfg["unet"])
            vae = AutoencoderKL(**cfg["vae"])
            text_encoder = CLIPTextModel(tcfg)
        shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
        unet_sd, vae_sd, text_sd = convert.original_to_diffusers(
            sd, shapes(unet), shapes(vae), shapes(text_encoder), cfg["unet"], cfg["vae"], name=str(path), use_ema=use_ema
        )
        for m, w in ((unet, unet_sd), (vae, vae_sd), (text_encoder, text_sd)):
            m.load_state_dict({k: v.to(torch.float32) for k, v in w.items()}, strict=True, assign=True)
        if tokenizer is None:
            if convert.TOKENIZER_KEY not in meta:
                raise LumenkitError(
                    f"{path}: this checkpoint carries no tokenizer; pass a CLIP tokenizer folder "
                    "(--tokenizer DIR, the tokenizer/ folder of any SD 1.x model: vocab.json + merges.txt)"
                )
            tokenizer = tokenizer_from_files(json.loads(meta[convert.TOKENIZER_KEY]))
        elif isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(tokenizer)
        if len(tokenizer) > tok_emb.shape[0]:
            raise LumenkitError(f"{path}: tokenizer has {len(tokenizer)} tokens, the text encoder only {tok_emb.shape[0]}")
        sched_cfg = scheduler_config_from_preset(cfg.get("schedule", {}))
        schedule, pred = schedule_from_scheduler_config(sched_cfg)
        return cls(tokenizer, text_encoder, vae, unet, schedule, resolve_device(device), dtype, pred, sched_cfg)

    @classmethod
    def from_preset(
        cls, preset: str | dict, tokenizer: Any, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
        *, vocab_size: int | None = None, seed: int = 0,
    ) -> "Text2Image":
        """Randomly initialised model of a models.py preset (for training starts, tests and timing).
        vocab_size defaults to the preset's, else len(tokenizer)."""
        cfg = preset_config(preset)
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(tokenizer)
        vocab = vocab_size or cfg["text"].get("vocab_size") or len(tokenizer)
        torch.manual_seed(seed)
        text_encoder = build_text_encoder(cfg, vocab)
        vae, unet = build_vae(cfg), build_unet(cfg)
        sched_cfg = scheduler_config_from_preset(cfg.get("schedule", {}))
        schedule, pred = schedule_from_scheduler_config(sched_cfg)
        return cls(tokenizer, text_encoder, vae, unet, schedule, resolve_device(device), dtype, pred, sched_cfg)

    # ------------------------------------------------------------------------------ saving
    def save_pretrained(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write the diffusers layout (safetensors) atomically: a temporary sibling folder is renamed
        onto `path` (an existing folder there is replaced only after the new one is complete; its entries
        that this pipeline does not write, e.g. clip/ or a training log, are kept).
        `extra` = {subfolder: module with save_pretrained} adds folders of our own (e.g. clip/)."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            self.unet.save_pretrained(tmp / "unet", safe_serialization=True)
            self.vae.save_pretrained(tmp / "vae", safe_serialization=True)
            self.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
            save_tokenizer(self.tokenizer, tmp / "tokenizer")
            for name, module in (extra or {}).items():
                module.save_pretrained(tmp / name)
            write_scheduler_and_index(tmp, self.scheduler_config)
            if path.is_dir():  # keep what others put in the folder (clip/, oracle/, logs): copied, not moved
                for entry in path.iterdir():
                    if not (tmp / entry.name).exists():
                        (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
        return path

    def save_single_file(self, path: str | os.PathLike, config: dict | None = None) -> Path:
        """Write an original-layout SD 1.x checkpoint (.safetensors or .ckpt) with config + tokenizer inside."""
        cfg = config if config is not None else self.preset_dict()
        sd = convert.diffusers_to_original(
            self.unet.state_dict(), self.vae.state_dict(), self.text_encoder.state_dict(), cfg["unet"], cfg["vae"]
        )
        return convert.write_checkpoint(path, sd, cfg, tokenizer_files(self.tokenizer))

    def preset_dict(self) -> dict:
        """The models.py-style config of this pipeline (unet, vae, text, schedule, image_size, max_length)."""
        text = {k: v for k, v in self.text_encoder.config.to_dict().items() if k in _TEXT_CONFIG_KEYS}
        kind = _BETA_KIND.get(self.scheduler_config.get("beta_schedule", "scaled_linear"), "linear")
        return {
            "image_size": self.default_size(),
            "max_length": self.max_length,
            "schedule": {
                "kind": kind,
                "num_timesteps": int(self.scheduler_config.get("num_train_timesteps", 1000)),
                "linear_start": float(self.scheduler_config.get("beta_start", 0.00085)),
                "linear_end": float(self.scheduler_config.get("beta_end", 0.012)),
            },
            "text": text,
            "unet": _public_config(self.unet.config),
            "vae": _public_config(self.vae.config),
        }

    # ------------------------------------------------------------------------------ geometry
    @property
    def vae_factor(self) -> int:
        """Pixels per latent cell: 2^(number of VAE blocks - 1) (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (VAE factor x UNet downsampling)."""
        return self.vae_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def default_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_factor

    @property
    def max_length(self) -> int:
        """Tokens per prompt K (77 for SD): the tokenizer's length, capped by the text encoder's positions."""
        n = int(self.text_encoder.config.max_position_embeddings)
        m = getattr(self.tokenizer, "model_max_length", n)
        return int(min(m, n)) if m else n

    # ------------------------------------------------------------------------------ the run
    @torch.inference_mode()
    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> CLIP context [B, K, E] (padded to K tokens, last_hidden_state), like FrozenCLIPEmbedder."""
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    @torch.inference_mode()
    def encode_image(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Images [B, H, W, 3] (or [H, W, 3]) in [0, 1] -> scaled latents [B, 4, H/f, W/f] (posterior mean)."""
        x = torch.as_tensor(np.asarray(images, dtype=np.float32) if not torch.is_tensor(images) else images)
        if x.ndim == 3:
            x = x[None]
        x = x.permute(0, 3, 1, 2).to(self.device, self.dtype) * 2 - 1
        z = self.vae.encode(x).latent_dist.mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (z - shift) * self.vae.config.scaling_factor

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B, 4, h, w] -> images [B, 3, H, W] in [0, 1] (clamped)."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        x = self.vae.decode(latents.to(self.dtype) / self.vae.config.scaling_factor + shift).sample
        return (x / 2 + 0.5).clamp(0, 1)

    def eps_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The denoiser seen by the samplers: (x_t [B, 4, h, w], t [B] long, context [B, K, E]) -> UNet output."""
        return self.unet(x, t, encoder_hidden_states=cond).sample

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        eta: float | None = None,
        sampler: str = "ddim",
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        init_image: np.ndarray | torch.Tensor | None = None,
        strength: float = 0.8,
        output_type: str = "np",
        latents: torch.Tensor | None = None,
        callback: Callable | None = None,
        progress: bool = True,
    ):
        """Generate images. prompt: str or list (B = len * num_images_per_prompt).

        eta: DDIM eta (default 0) or Euler-a's ancestral eta (default 1); PLMS needs 0, DDPM ignores it.
        init_image [H, W, 3] or [B, H, W, 3] in [0, 1] switches to img2img: its latent (the VAE posterior
        mean) is noised to `strength` (0: returned unchanged, 1: pure noise) and the last
        int(strength * steps) steps are run.
        latents: the initial noise [B, 4, H/f, W/f] (else drawn from `generator`, on the CPU when the
        generator is a CPU one, as diffusers does). Returns [B, H, W, 3] float32 in [0, 1] ("np"),
        [B, 3, H, W] ("pt") or the final scaled latents ("latent").
        """
        if sampler not in SAMPLERS:
            raise LumenkitError(f"sampler {sampler!r} unknown (choose from {', '.join(SAMPLERS)})")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise LumenkitError("no prompt given")
        negs = [negative_prompt or ""] * len(prompts) if negative_prompt is None or isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negs) != len(prompts):
            raise LumenkitError(f"{len(negs)} negative prompts for {len(prompts)} prompts")
        n = int(num_images_per_prompt)
        prompts = [p for p in prompts for _ in range(n)]
        negs = [p for p in negs for _ in range(n)]
        B = len(prompts)

        init = None
        if init_image is not None:
            img = torch.as_tensor(np.asarray(init_image, dtype=np.float32)) if not torch.is_tensor(init_image) else init_image.float()
            if img.ndim == 3:
                img = img[None]
            if img.shape[0] == 1 and B > 1:
                img = img.expand(B, *img.shape[1:])
            if img.shape[0] != B:
                raise LumenkitError(f"{img.shape[0]} init images for {B} outputs")
            height, width = height or img.shape[1], width or img.shape[2]
            if (img.shape[1], img.shape[2]) != (height, width):
                raise LumenkitError(f"init image is {img.shape[2]}x{img.shape[1]}, the output {width}x{height}: resize it first")
            if not 0.0 <= strength <= 1.0:
                raise LumenkitError(f"strength must lie in [0, 1], got {strength}")
            init = self.encode_image(img)

        height = int(height or self.default_size())
        width = int(width or self.default_size())
        mult = self.size_multiple
        if height % mult or width % mult:
            raise LumenkitError(f"height and width must be multiples of {mult} for this model, got {height}x{width}")
        shape = (B, int(self.unet.config.in_channels), height // self.vae_factor, width // self.vae_factor)

        cond = self.encode_prompt(prompts)
        uncond = self.encode_prompt(negs) if guidance_scale != 1.0 else None
        if latents is not None and init is not None:
            raise LumenkitError("latents (the start noise) and init_image (img2img) exclude each other")
        if latents is None and init is None:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            latents = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise LumenkitError(f"latents have shape {tuple(latents.shape)}, want {shape}")
            latents = latents.to(self.device, self.dtype)

        kwargs: dict[str, Any] = dict(
            sampler=sampler,
            steps=int(num_inference_steps),
            spacing="leading",  # diffusers' SD scheduler config: exactly S steps, arange(S) * (T // S) + 1
            cond=cond,
            uncond=uncond,
            guidance_scale=float(guidance_scale),
            eta=eta,
            generator=generator,
            callback=callback,
            progress=progress,
            parameterization=self.parameterization,
        )
        if init is not None:
            kwargs.update(init=init, strength=float(strength))
        else:
            kwargs["x_T"] = latents
        out = sample(self.eps_model, self.schedule, **kwargs)
        z = out[0] if isinstance(out, tuple) else out
        if output_type == "latent":
            return z
        images = self.decode_latents(z).float()
        if output_type == "pt":
            return images
        if output_type != "np":
            raise LumenkitError(f"output_type {output_type!r}: use np, pt or latent")
        return images.permute(0, 2, 3, 1).cpu().numpy()


_TEXT_CONFIG_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "max_position_embeddings", "hidden_act", "projection_dim", "bos_token_id", "eos_token_id", "pad_token_id",
    "layer_norm_eps",
)


def _public_config(cfg) -> dict:
    """A diffusers FrozenDict config -> plain constructor kwargs (drops _class_name and friends)."""
    out = {}
    for k, v in dict(cfg).items():
        if k.startswith("_"):
            continue
        out[k] = list(v) if isinstance(v, tuple) else v
    return out
