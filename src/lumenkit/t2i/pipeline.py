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

`add_sample_args` / `sample_main` implement `lumenkit t2i sample` with the flags of CompVis
`scripts/txt2img.py`; `add_convert_args` / `convert_main` implement `lumenkit t2i convert`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lumenkit.common.errors import LumenkitError

SAMPLERS = ("ddim", "ddpm", "plms", "euler_a")
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


def default_model_dir() -> Path:
    """The small model trained here and shipped in the package (diffusers layout)."""
    return Path(__file__).resolve().parent / "pretrained" / "shapes"


def schedule_from_scheduler_config(cfg: dict) -> tuple[Any, str]:
    """diffusers scheduler_config.json -> (lumenkit NoiseSchedule, parameterization 'eps'|'v'|'x0')."""
    from lumenkit.diffusion import NoiseSchedule

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


def _tokenizer_from_files(files: dict[str, str]):
    """CLIPTokenizer from {filename: text} (vocab.json, merges.txt, tokenizer_config.json, ...)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            Path(tmp, Path(name).name).write_text(text, encoding="utf-8")
        return CLIPTokenizer.from_pretrained(tmp, local_files_only=True)


def _tokenizer_files(tokenizer) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        save_tokenizer(tokenizer, tmp)
        return {p.name: p.read_text(encoding="utf-8") for p in Path(tmp).iterdir() if p.is_file()}


def _load_tokenizer(path: str | Path):
    from transformers import CLIPTokenizer

    path = Path(path)
    has_bpe = (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    if not has_bpe and not (path / "tokenizer.json").is_file():
        raise LumenkitError(f"{path}: not a CLIP tokenizer folder (needs vocab.json and merges.txt)")
    return CLIPTokenizer.from_pretrained(str(path), local_files_only=True)


def save_tokenizer(tokenizer, folder: str | Path) -> Path:
    """Save a CLIPTokenizer in the classic SD layout: vocab.json + merges.txt + tokenizer_config.json +
    special_tokens_map.json (transformers 5 alone writes only tokenizer.json; we keep that too)."""
    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not (folder / "vocab.json").is_file():
        model = json.loads(backend.to_str())["model"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    if not (folder / "special_tokens_map.json").is_file():
        special = {k: str(getattr(tokenizer, k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token") if getattr(tokenizer, k, None)}
        (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return folder


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

        from lumenkit.common.device import resolve_device

        path = Path(path)
        if not path.is_dir():
            raise LumenkitError(f"{path}: no such model folder (want a diffusers-format SD folder)")
        missing = [c for c in COMPONENTS if not (path / c).is_dir()]
        if missing:
            raise LumenkitError(f"{path}: not a diffusers Stable Diffusion folder (missing {', '.join(c + '/' for c in missing)})")
        kw = dict(local_files_only=True)
        try:
            tokenizer = _load_tokenizer(path / "tokenizer")
            text_encoder = CLIPTextModel.from_pretrained(str(path / "text_encoder"), **kw)
            vae = AutoencoderKL.from_pretrained(str(path / "vae"), **kw)
            unet = UNet2DConditionModel.from_pretrained(str(path / "unet"), **kw)
        except LumenkitError:
            raise
        except (OSError, ValueError, EnvironmentError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LumenkitError(f"{path}: cannot load the model folder ({first})") from None
        sched_file = path / "scheduler" / "scheduler_config.json"
        sched_cfg = json.loads(sched_file.read_text()) if sched_file.is_file() else dict(SCHEDULER_CONFIG)
        schedule, pred = schedule_from_scheduler_config(sched_cfg)
        return cls(tokenizer, text_encoder, vae, unet, schedule, resolve_device(device), dtype, pred, sched_cfg)

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

        from lumenkit.common.device import resolve_device
        from lumenkit.t2i import convert
        from lumenkit.t2i.models import preset_config, text_config

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
            tokenizer = _tokenizer_from_files(json.loads(meta[convert.TOKENIZER_KEY]))
        elif isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = _load_tokenizer(tokenizer)
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
        from lumenkit.common.device import resolve_device
        from lumenkit.t2i.models import build_text_encoder, build_unet, build_vae, preset_config

        cfg = preset_config(preset)
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = _load_tokenizer(tokenizer)
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
        import diffusers

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            self.unet.save_pretrained(tmp / "unet", safe_serialization=True)
            self.vae.save_pretrained(tmp / "vae", safe_serialization=True)
            self.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
            save_tokenizer(self.tokenizer, tmp / "tokenizer")
            for name, module in (extra or {}).items():
                module.save_pretrained(tmp / name)
            (tmp / "scheduler").mkdir()
            (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(self.scheduler_config, indent=2) + "\n")
            index = {
                "_class_name": "StableDiffusionPipeline",
                "_diffusers_version": diffusers.__version__,
                "feature_extractor": [None, None],
                "requires_safety_checker": False,
                "safety_checker": [None, None],
                "scheduler": ["diffusers", self.scheduler_config.get("_class_name", "DDIMScheduler")],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            }
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
            if path.is_dir():  # keep what others put in the folder (clip/, oracle/, logs): copied, not moved
                for entry in path.iterdir():
                    if not (tmp / entry.name).exists():
                        (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    def save_single_file(self, path: str | os.PathLike, config: dict | None = None) -> Path:
        """Write an original-layout SD 1.x checkpoint (.safetensors or .ckpt) with config + tokenizer inside."""
        from lumenkit.t2i import convert

        cfg = config if config is not None else self.preset_dict()
        sd = convert.diffusers_to_original(
            self.unet.state_dict(), self.vae.state_dict(), self.text_encoder.state_dict(), cfg["unet"], cfg["vae"]
        )
        return convert.write_checkpoint(path, sd, cfg, _tokenizer_files(self.tokenizer))

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
        from lumenkit.diffusion import sample

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


# ================================================================================================ CLI


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", metavar="DIR", help="diffusers-format SD folder (default: the shipped shapes model)")
    g.add_argument("--ckpt", metavar="FILE", help="original-layout SD 1.x .safetensors/.ckpt (loaded safely)")
    p.add_argument("--tokenizer", metavar="DIR", help="CLIP tokenizer folder for a --ckpt that carries none (real SD files)")
    p.add_argument("--preset", default=None, help="architecture of --ckpt (sd15, shapes, tiny; default: stored in the file, else sd15)")
    p.add_argument("--use_ema", action="store_true", help="--ckpt: take the UNet's model_ema weights (CompVis training checkpoints)")


def load_pipeline(args: argparse.Namespace, device: torch.device | str = "auto") -> Text2Image:
    """The model named by --model / --ckpt (default: the shipped model)."""
    if getattr(args, "ckpt", None):
        return Text2Image.from_single_file(args.ckpt, device, config=args.preset, tokenizer=args.tokenizer, use_ema=args.use_ema)
    model = getattr(args, "model", None) or default_model_dir()
    if not getattr(args, "model", None) and not Path(model).is_dir():
        raise LumenkitError(f"no model given and the shipped model is missing at {model}: pass --model DIR or --ckpt FILE")
    return Text2Image.from_pretrained(model, device)


def add_sample_args(p: argparse.ArgumentParser) -> None:
    """Flags of CompVis scripts/txt2img.py (+ img2img's --init-img/--strength, --negative_prompt, --sampler)."""
    from lumenkit.common.device import add_device_arg

    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", type=str, nargs="?", default=None, help="the prompt to render")
    src.add_argument("--from-file", dest="from_file", metavar="FILE", help="one prompt per line")
    p.add_argument("--negative_prompt", default="", help="what to steer away from (replaces the empty unconditional prompt)")
    p.add_argument("--outdir", default="outputs/txt2img-samples", help="images go to OUTDIR/samples/NNNNN.png, grids to OUTDIR/grid-NNNN.png")
    p.add_argument("--skip_grid", action="store_true", help="do not write a grid")
    p.add_argument("--skip_save", action="store_true", help="do not write individual samples")
    p.add_argument("--ddim_steps", type=int, default=50, help="number of sampling steps")
    p.add_argument("--plms", action="store_true", help="use PLMS sampling (same as --sampler plms)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="ddim (default), ddpm, plms or euler_a")
    p.add_argument("--ddim_eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    p.add_argument("--n_iter", type=int, default=2, help="sample this often")
    p.add_argument("--H", type=int, default=None, help="image height in pixels (default: the model's size)")
    p.add_argument("--W", type=int, default=None, help="image width in pixels (default: the model's size)")
    p.add_argument("--n_samples", type=int, default=3, help="images per prompt per iteration (the batch size)")
    p.add_argument("--n_rows", type=int, default=0, help="columns in the grid (default: n_samples)")
    p.add_argument("--scale", type=float, default=7.5, help="classifier-free guidance scale (1: no guidance)")
    p.add_argument("--seed", type=int, default=42, help="seed (reproducible sampling)")
    p.add_argument("--init-img", dest="init_img", metavar="IMAGE", help="img2img: start from this image")
    p.add_argument("--strength", type=float, default=0.75, help="img2img: noise strength in [0, 1] (1 destroys the init image)")
    add_model_args(p)
    add_device_arg(p)


def _read_prompts(args: argparse.Namespace) -> list[str]:
    if args.from_file:
        f = Path(args.from_file)
        if not f.is_file():
            raise LumenkitError(f"--from-file {f}: no such file")
        prompts = [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not prompts:
            raise LumenkitError(f"--from-file {f}: no prompts in it")
        return prompts
    if not args.prompt:
        raise LumenkitError("give --prompt TEXT or --from-file FILE")
    return [args.prompt]


def _load_init_image(path: str, height: int | None, width: int | None, mult: int) -> np.ndarray:
    """Read an init image as [H, W, 3] in [0, 1], resized to HxW (default: its size rounded down to `mult`)."""
    import cv2

    from lumenkit.common.images import read_image

    img = read_image(path, keep_alpha=False)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    h, w = img.shape[:2]
    H = height or max(mult, h - h % mult)
    W = width or max(mult, w - w % mult)
    if (H, W) != (h, w):
        img = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA if W < w else cv2.INTER_CUBIC)
    return np.clip(img, 0, 1).astype(np.float32)


def sample_main(args: argparse.Namespace) -> int:
    """`lumenkit t2i sample`: txt2img (or img2img with --init-img), PNGs with prompt+params in tEXt."""
    from lumenkit.common.device import resolve_device
    from lumenkit.common.images import make_grid, write_image
    from lumenkit.common.seed import make_generator, seed_everything

    prompts = _read_prompts(args)
    for flag in ("n_samples", "n_iter", "ddim_steps"):
        if getattr(args, flag) < 1:
            raise LumenkitError(f"--{flag} must be >= 1")
    sampler = "plms" if args.plms else args.sampler
    device = resolve_device(args.device)
    pipe = load_pipeline(args, device)
    init = None
    if args.init_img:
        init = _load_init_image(args.init_img, args.H, args.W, pipe.size_multiple)
    H = args.H or (init.shape[0] if init is not None else pipe.default_size())
    W = args.W or (init.shape[1] if init is not None else pipe.default_size())

    outdir = Path(args.outdir)
    sample_dir = outdir / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    base_count = len(list(sample_dir.glob("*.png")))
    grid_count = len(list(outdir.glob("grid-*.png")))
    seed_everything(args.seed)
    generator = make_generator(args.seed, "cpu")
    model_name = args.ckpt or args.model or str(default_model_dir())
    written, grid_images = [], []
    for it in range(args.n_iter):
        for prompt in prompts:
            images = pipe(
                prompt,
                negative_prompt=args.negative_prompt or None,
                num_inference_steps=args.ddim_steps,
                guidance_scale=args.scale,
                eta=args.ddim_eta if sampler == "ddim" else None,
                sampler=sampler,
                height=H,
                width=W,
                num_images_per_prompt=args.n_samples,
                generator=generator,
                init_image=init,
                strength=args.strength,
            )
            for j, img in enumerate(images):
                meta = {
                    "prompt": prompt,
                    "negative_prompt": args.negative_prompt,
                    "sampler": sampler,
                    "steps": str(args.ddim_steps),
                    "scale": str(args.scale),
                    "eta": str(args.ddim_eta),
                    "seed": str(args.seed),
                    "iteration": str(it),
                    "index_in_batch": str(j),
                    "size": f"{W}x{H}",
                    "model": str(model_name),
                    "software": "lumenkit t2i sample",
                }
                if init is not None:
                    meta.update(init_img=str(args.init_img), strength=str(args.strength))
                if not args.skip_save:
                    p = write_image(sample_dir / f"{base_count:05}.png", img, metadata=meta)
                    written.append(p)
                    base_count += 1
                grid_images.append(img)
    if not args.skip_grid:
        ncols = args.n_rows if args.n_rows > 0 else args.n_samples
        grid = make_grid(list(grid_images), ncols=ncols)
        meta = {"prompts": json.dumps(prompts), "sampler": sampler, "steps": str(args.ddim_steps), "scale": str(args.scale),
                "seed": str(args.seed), "model": str(model_name), "software": "lumenkit t2i sample"}
        gp = write_image(outdir / f"grid-{grid_count:04}.png", grid, metadata=meta)
        print(f"grid: {gp}")
    print(f"{len(written)} samples in {sample_dir}")
    return 0


def add_convert_args(p: argparse.ArgumentParser) -> None:
    """Flags of diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py (subset), both directions."""
    p.add_argument("--checkpoint_path", required=True, help="input: an SD 1.x .safetensors/.ckpt, or a diffusers folder")
    p.add_argument("--dump_path", required=True, help="output: a folder (diffusers layout) or a .safetensors/.ckpt file (original layout)")
    p.add_argument("--tokenizer", metavar="DIR", help="CLIP tokenizer folder for a checkpoint that carries none")
    p.add_argument("--preset", default=None, help="architecture of the input checkpoint (default: stored in the file, else sd15)")
    p.add_argument("--extract_ema", action="store_true", help="take the UNet's EMA weights from a CompVis training checkpoint")


def convert_main(args: argparse.Namespace) -> int:
    """`lumenkit t2i convert`: single file -> diffusers folder, or diffusers folder -> single file."""
    src, dst = Path(args.checkpoint_path), Path(args.dump_path)
    if src.is_dir():
        pipe = Text2Image.from_pretrained(src, "cpu")
    else:
        pipe = Text2Image.from_single_file(src, "cpu", config=args.preset, tokenizer=args.tokenizer, use_ema=args.extract_ema)
    if dst.suffix in (".safetensors", ".ckpt"):
        pipe.save_single_file(dst)
    else:
        pipe.save_pretrained(dst)
    print(f"wrote {dst}")
    return 0
