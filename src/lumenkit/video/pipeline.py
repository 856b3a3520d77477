"""VideoMaker sampling (seed 002, "Inference"): one reference image + a prompt -> a video of that subject.

    pipe = VideoMakerPipeline.from_pretrained(base=None, motion_adapter=None, weights="videomaker.safetensors")
    frames = pipe(ref_image, "a red star with blue stripes moves left", num_frames=8, num_inference_steps=30,
                  guidance_scale=8.0, generator=torch.Generator().manual_seed(0))      # [F, 3, H, W] in [0, 1]

The parts (diffusers-like, but a small dataclass): `base`, a lumenkit.t2i Text2Image holding the tokenizer,
CLIP text encoder, VAE and noise schedule of a local SD 1.x folder (default: the shipped shapes model), and
`unet`, the AnimateDiff video UNet (lumenkit.video.models: the base's 2-D UNet + a MotionAdapter, a local
folder or a fresh preset) with the personalized-injection self-attention (PISA) on its spatial attn1
layers, plus the trained VideoMaker weights when given (models.load_videomaker_weights).

The run, as the official inference code:
- the reference image is resized to the model's size, VAE-encoded (posterior mean x scaling_factor) to
  r [1, C, h, w] and appended as the LAST frame of every UNet call, with NO noise, at every step;
- the sampler (any of lumenkit.diffusion.SAMPLERS) sees only the F video frames: its latent is
  frame-first z [B, F, C, h, w] (lumenkit's video layout; `sample()` takes any [B, ...] shape and draws
  its noise and updates elementwise). The denoiser handed to it (`eps_model`) builds [z ; r] [B, F+1, C,
  h, w], runs models.video_eps (text context repeated per frame there, PISA told F) and returns frames
  [:F], discarding the reference frame's output;
- classifier-free guidance: cond = {context: prompt, reference: r}, uncond = {context: negative prompt,
  reference: zeros} (the official unconditional branch: zeroed reference latent + negative prompt);
  lumenkit.diffusion batches both branches into ONE UNet call ([uncond, cond] along the batch) and mixes
  eps = eps_u + w (eps_c - eps_u) = w eps(z, c, r) + (1 - w) eps(z, c_neg, 0);
- the F frame latents are decoded by the VAE -> frames [F, 3, H, W] float in [0, 1] (sRGB-encoded).
Timesteps use diffusers' "leading" spacing (the SD / AnimateDiff DDIMScheduler config), as lumenkit.t2i.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from lumenkit.common.device import resolve_device
from lumenkit.common.errors import LumenkitError
from lumenkit.diffusion import SAMPLERS, sample
from lumenkit.diffusion.samplers import resolve_sampler
from lumenkit.t2i.pipeline import Text2Image, load_pipeline
from lumenkit.video import models as M

# trained VideoMaker weights for the shipped shapes model (written by the training issue; absent until then)
SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained" / "shapes"
SHIPPED_WEIGHTS = SHIPPED_DIR / "videomaker.safetensors"


def shipped_weights() -> Path | None:
    """SHIPPED_WEIGHTS when that file exists, else None (the video model is then untrained)."""
    return SHIPPED_WEIGHTS if SHIPPED_WEIGHTS.is_file() else None


# ------------------------------------------------------------------------------------------ the reference
def reference_array(image: Any, what: str = "reference image") -> np.ndarray:
    """A reference image as float32 [H, W, 3] in [0, 1] (sRGB-encoded): a file path (any format of
    lumenkit.common.images), a PIL image, a NumPy [H, W, 3|4|1] (uint8, or float in [0, 1]) or a torch
    tensor [3, H, W] / [1, 3, H, W] float in [0, 1]. Alpha is dropped, grey repeated to RGB."""
    if isinstance(image, (str, os.PathLike)):
        from lumenkit.common.images import read_image

        arr = read_image(image, keep_alpha=False)
    elif isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise LumenkitError(f"{what}: a tensor must be [3, H, W] in [0, 1], got shape {tuple(image.shape)}")
        arr = t.permute(1, 2, 0).numpy()
    else:
        if type(image).__module__.startswith("PIL."):
            image = image.convert("RGB")
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise LumenkitError(f"{what}: an array must be [H, W, 3], got shape {arr.shape}")
        arr = arr[..., :3]
        arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if not np.isfinite(arr).all():
        raise LumenkitError(f"{what}: has non-finite pixels")
    return np.ascontiguousarray(np.clip(arr, 0.0, 1.0), dtype=np.float32)


def fit_reference(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W, 3] -> [height, width, 3]: centre-cropped to the target aspect ratio, then resized (cv2
    INTER_AREA when shrinking, INTER_CUBIC when enlarging, clipped to [0, 1]); unchanged when it fits."""
    import cv2

    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if h * width != w * height:  # crop to the aspect ratio first (the subject is centred in our references)
        if h * width > w * height:
            ch = max(1, round(w * height / width))
            y0 = (h - ch) // 2
            image = image[y0:y0 + ch]
        else:
            cw = max(1, round(h * width / height))
            x0 = (w - cw) // 2
            image = image[:, x0:x0 + cw]
    shrink = image.shape[0] > height or image.shape[1] > width
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------ the pipeline
@dataclass
class VideoMakerPipeline:
    """VideoMaker = `base` (Text2Image: tokenizer, text encoder, VAE, schedule; its 2-D UNet is dropped once
    the video UNet is built from it) + `unet` (UNetMotionModel, PISA installed unless `pisa` is False).
    `weights`: the VideoMaker weights file loaded into `unet` (None: untrained attention / motion modules)."""

    base: Text2Image
    unet: Any
    pisa: bool = True
    weights: Path | None = None
    conditioning: str = "pisa"  # lumenkit.video.baselines.CONDITIONINGS: pisa (VideoMaker), none (a), ip_adapter (b)
    image_encoder: Any = None  # baselines.PooledImageEncoder of the ip_adapter baseline
    size: int | None = None  # frame size in px (None: the UNet's sample_size x the VAE factor)

    def __post_init__(self) -> None:
        self.unet.to(self.device).eval().requires_grad_(False)
        if next(self.unet.parameters()).dtype != self.dtype:
            with M._quiet_diffusers():  # diffusers' note on casting a loaded model with .to()
                self.unet.to(self.dtype)

    # -------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, base: str | os.PathLike | None = None, motion_adapter: str | os.PathLike | None = None,
                        weights: str | os.PathLike | None = None, *, preset: str | Mapping[str, Any] = "shapes",
                        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int | None = 0,
                        pisa: bool = True, conditioning: str = "pisa") -> "VideoMakerPipeline":
        """Local folders only. base: a diffusers SD 1.x folder (default: the shipped shapes model,
        lumenkit.t2i.pipeline.SHIPPED_MODEL). motion_adapter: a diffusers MotionAdapter folder (checked
        against the base UNet before its weights are read), or None for a fresh zero-initialised adapter of
        motion preset `preset` (lumenkit.video.models.MOTION_PRESETS; its weights from `seed`). weights: a
        VideoMaker .safetensors (models.save_videomaker_weights) applied on top. pisa: install the
        personalized-injection attention (False: the stock processors, the reference then reaches the
        video frames only through the motion modules). conditioning: "pisa" (VideoMaker), or a baseline of
        lumenkit.video.baselines: "none" (text-to-video, no reference) or "ip_adapter" (pooled CLIP image
        embedding through decoupled cross-attention; its image tower from the base folder)."""
        from lumenkit.video import baselines as BL

        BL.check_conditioning(conditioning)
        device = resolve_device(device)
        t2i = load_pipeline(base, device, dtype=dtype)
        unet2d = t2i.unet
        if motion_adapter is not None:
            adapter = M.load_motion_adapter(motion_adapter, unet2d.config, dtype)
            source = f"--motion_adapter {motion_adapter}"
        else:
            adapter = M.seeded_motion_adapter(unet2d.config, preset, seed, dtype)
            source = f"motion preset {preset!r}"
        unet = M.build_video_unet(unet2d, adapter, source)
        t2i.unet = None  # its weights were copied into the video UNet; keep one copy in memory
        encoder = None
        if conditioning == "pisa" and pisa:
            from lumenkit.video.attention import install_pisa

            install_pisa(unet)
        elif conditioning == "ip_adapter":
            from lumenkit.t2i.pipeline import SHIPPED_MODEL

            encoder = BL.load_image_encoder(base if base is not None else SHIPPED_MODEL, device)
            BL.install_ip_adapter(unet, encoder.embed_dim, seed=seed)
        loaded = None
        if weights is not None:
            M.load_videomaker_weights(unet, weights)
            loaded = Path(weights)
        return cls(t2i, unet, pisa and conditioning == "pisa", loaded, conditioning, encoder)

    # -------------------------------------------------------------------------- geometry
    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def vae_factor(self) -> int:
        return self.base.vae_factor

    def default_size(self) -> int:
        """Frame height = width in pixels: `size` (a trained folder's), else the UNet's sample_size x the VAE factor."""
        return int(self.size) if self.size else int(self.unet.config.sample_size) * self.vae_factor

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def max_frames(self) -> int:
        """The most video frames F one clip may have: the motion modules' positions minus the reference."""
        return int(getattr(self.unet.config, "motion_max_seq_length", 32)) - 1

    # -------------------------------------------------------------------------- the run
    def reference_images(self, ref_images: list) -> np.ndarray:
        """Reference images (each as reference_array takes it) -> [B, H, W, 3] float32 in [0, 1] at the model's size."""
        size = self.default_size()
        return np.stack([fit_reference(reference_array(r), size, size) for r in ref_images])

    def encode_reference(self, ref_image: Any) -> torch.Tensor:
        """Reference image (see reference_array) -> r [1, C, h, w]: resized to the model's size, VAE posterior
        mean x scaling_factor (Text2Image.encode_image)."""
        return self.base.encode_image(self.reference_images([ref_image]))

    def condition(self, ref_images: list, prompts: list[str], negative_prompt: str = "") -> tuple[dict, dict]:
        """(cond, uncond) of the CFG branches for B clips: {"context": [B, K, E]} + the reference as this
        conditioning takes it: "reference" [B, C, h, w] latent (pisa; uncond zeros), "image_embeds" [B, D]
        (ip_adapter; uncond zeros), nothing (none)."""
        cond = {"context": self.base.encode_prompt(list(prompts))}
        uncond = {"context": self.base.encode_prompt([negative_prompt or ""] * len(prompts))}
        if self.conditioning == "pisa":
            cond["reference"] = self.base.encode_image(self.reference_images(ref_images))
        elif self.conditioning == "ip_adapter":
            img = torch.from_numpy(self.reference_images(ref_images)).permute(0, 3, 1, 2)
            cond["image_embeds"] = self.image_encoder(img * 2 - 1).to(self.device, self.dtype)
        for k in ("reference", "image_embeds"):
            if k in cond:
                uncond[k] = torch.zeros_like(cond[k])
        return cond, uncond

    def eps_model(self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The denoiser seen by lumenkit.diffusion.sample: x [B, F, C, h, w] (video frames only), t [B],
        cond {"context": [B, K, E], "reference": [B, C, h, w]} -> eps [B, F, C, h, w]. The clean reference is
        appended as frame F+1; its output is discarded. The baselines: no reference frame; ip_adapter takes
        cond["image_embeds"] [B, D]."""
        if self.conditioning != "pisa":
            from lumenkit.video.baselines import ip_kwargs

            return M.video_eps(self.unet, x, t, cond["context"], **ip_kwargs(cond.get("image_embeds")))
        ref = cond["reference"].to(x.dtype)[:, None]
        eps = M.video_eps(self.unet, torch.cat([x, ref], dim=1), t, cond["context"])
        return eps[:, :-1]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """Frame latents [F, C, h, w] -> frames [F, 3, H, W] float32 in [0, 1], `chunk` frames per VAE call."""
        return torch.cat([self.base.decode_latents(latents[i:i + chunk]).float() for i in range(0, len(latents), chunk)])

    @torch.inference_mode()
    def __call__(
        self,
        ref_image: Any,
        prompt: str | list[str],
        *,
        num_frames: int = 8,
        num_inference_steps: int = 30,
        guidance_scale: float = 8.0,
        sampler: str = "ddim",
        negative_prompt: str = "",
        generator: torch.Generator | None = None,
        eta: float | None = None,
        latents: torch.Tensor | None = None,
        callback: Callable[[dict], Any] | None = None,
        progress: bool = True,
        output_type: str = "pt",
        use_reference: bool = True,
    ) -> torch.Tensor:
        """Generate a clip of `num_frames` frames of the reference's subject doing what `prompt` says.

        ref_image: path / PIL / NumPy [H, W, 3] / tensor [3, H, W] in [0, 1] (reference_array); resized to the
        model's size. guidance_scale w: eps = w eps(z, prompt, r) + (1 - w) eps(z, negative_prompt, 0); 1 turns
        guidance off (one branch). sampler: one of SAMPLERS; eta: DDIM / Euler-a eta (None: the sampler's
        default, DDIM 0, Euler-a 1; PLMS needs 0). generator seeds the start noise and every draw.
        latents: the start noise [1, F, C, h, w] (else drawn from `generator` on its device, as diffusers).
        Returns frames [F, 3, H, W] float32 in [0, 1] on the CPU ("pt"), or the final frame latents
        [F, C, h, w] ("latent"). use_reference False: the conditional branch gets the zeroed reference too
        (the same model as a text-to-video model, as CFG's unconditional branch sees it). A LIST of prompts (and a list of as many reference images) makes B clips in
        one batch: [B, F, 3, H, W] (latents [B, F, C, h, w]; start noise [B, F, C, h, w])."""
        sampler = resolve_sampler(sampler)
        if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
            raise LumenkitError(f"num_frames must be an integer >= 1, got {num_frames!r}")
        if num_frames > self.max_frames:
            raise LumenkitError(f"num_frames {num_frames}: the motion modules take at most {self.max_frames} video frames "
                                f"(+ the reference = motion_max_seq_length {self.max_frames + 1})")
        batched = isinstance(prompt, (list, tuple))
        prompts, refs = (list(prompt), list(ref_image)) if batched else ([prompt], [ref_image])
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise LumenkitError(f"prompt must be a string or a non-empty list of strings, got {type(prompt).__name__}")
        if len(refs) != len(prompts):
            raise LumenkitError(f"{len(prompts)} prompts but {len(refs)} reference images")
        if output_type not in ("pt", "latent"):
            raise LumenkitError(f"output_type {output_type!r}: use pt or latent")
        h = w = self.default_size() // self.vae_factor
        shape = (len(prompts), int(num_frames), self.latent_channels, h, w)
        cond, uncond = self.condition(refs, prompts, negative_prompt)
        if not use_reference:
            cond.update({k: v for k, v in uncond.items() if k != "context"})
        if float(guidance_scale) == 1.0:
            uncond = None
        if latents is None:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            latents = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise LumenkitError(f"latents have shape {tuple(latents.shape)}, want {shape} [B, F, C, h, w]")
        z, _ = sample(
            self.eps_model, self.base.schedule, sampler, int(num_inference_steps),
            x_T=latents.to(self.device, self.dtype), cond=cond, uncond=uncond, guidance_scale=float(guidance_scale),
            eta=eta, generator=generator, spacing="leading", parameterization=self.base.parameterization,
            callback=callback, progress=progress,
        )
        if output_type == "latent":
            return z if batched else z[0]
        frames = torch.stack([self.decode(zi).cpu() for zi in z])
        return frames if batched else frames[0]




# ------------------------------------------------------------------------------------------ trained folders
TRAIN_CONFIG_FORMAT = "lumenkit-videomaker-train-v1"  # OUT/config.json of `lumenkit video train` (video.train.model_config)


def load_trained(folder: str | os.PathLike, *, base: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, pisa: bool = True) -> VideoMakerPipeline:
    """The pipeline of a `lumenkit video train --out OUT` folder: OUT/config.json names the base SD folder,
    the motion adapter (or the fresh preset + seed it started from) and the weights file (OUT/videomaker.safetensors).
    `base` overrides the stored base path (e.g. a folder moved to another machine)."""
    from lumenkit.common.config import read_json

    folder = Path(folder)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise LumenkitError(f"--model {folder}: no config.json (expected the --out folder of `lumenkit video train`)")
    cfg = read_json(cfg_file, what="VideoMaker config")
    if not isinstance(cfg, dict) or cfg.get("format") != TRAIN_CONFIG_FORMAT:
        raise LumenkitError(f"--model {folder}: config.json is not a VideoMaker training config (format {TRAIN_CONFIG_FORMAT})")
    weights = folder / cfg.get("weights", "videomaker.safetensors")
    if not weights.is_file():
        raise LumenkitError(f"--model {folder}: no {weights.name} in it (training not finished?)")
    base = base if base is not None else (cfg.get("base") or None)
    if base is not None and not Path(base).is_dir():
        raise LumenkitError(f"--model {folder}: its base SD folder {base} does not exist here (pass --base DIR)")
    pipe = VideoMakerPipeline.from_pretrained(base, cfg.get("motion_adapter") or None, weights, preset=cfg.get("motion_preset", "shapes"),
                                              device=device, dtype=dtype, seed=cfg.get("seed", 0), pisa=pisa,
                                              conditioning=cfg.get("conditioning", "pisa"))
    pipe.size = int(cfg["size"]) if cfg.get("size") else None  # the size it was trained at
    return pipe


def load_shipped(device: str | torch.device = "cpu", *, pisa: bool = True) -> VideoMakerPipeline:
    """The shipped VideoMaker when SHIPPED_DIR holds a trained folder (config.json + videomaker.safetensors, on
    the shipped t2i model), else the untrained one: the shipped t2i model + a fresh `shapes` motion adapter,
    PISA on untrained attention (placeholder quality). `pipe.weights` is None for the untrained one."""
    from lumenkit.t2i.pipeline import SHIPPED_MODEL

    if shipped_weights() is not None and (SHIPPED_DIR / "config.json").is_file():
        return load_trained(SHIPPED_DIR, base=SHIPPED_MODEL, device=device, pisa=pisa)
    return VideoMakerPipeline.from_pretrained(None, None, None, preset="shapes", device=device, pisa=pisa)


__all__ = ["VideoMakerPipeline", "SHIPPED_DIR", "SHIPPED_WEIGHTS", "shipped_weights", "load_trained", "load_shipped",
           "reference_array", "fit_reference", "SAMPLERS"]
