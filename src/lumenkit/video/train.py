"""VideoMaker training (seed 002) on the common training engine (lumenkit.common.train_loop).

(Contract stub: the runner is being written; VideoTrainConfig is final.)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lumenkit.common.config import check, check_range, param
from lumenkit.common.train_loop import TrainConfig
from lumenkit.video.losses import P_BOTH, P_REF, REG_BETA, REMINDER_ALPHA
from lumenkit.video.models import MOTION_PRESETS

MotionPreset = Literal["tiny", "shapes", "sd15"]
assert set(MotionPreset.__args__) == set(MOTION_PRESETS)  # type: ignore[attr-defined]


@dataclass
class VideoTrainConfig(TrainConfig):
    """`lumenkit video train --out DIR` flags: the engine's (TrainConfig) plus VideoMaker's."""

    base: str = param("", "diffusers SD 1.x folder (unet/, vae/, text_encoder/, tokenizer/); '' = the shipped shapes model")
    motion_adapter: str = param("", "diffusers MotionAdapter folder to start from; '' = a fresh zero-initialised one of --motion_preset")
    motion_preset: MotionPreset = param("shapes", "size of a fresh motion adapter (lumenkit.video.models.MOTION_PRESETS)")
    frames: int = param(8, "video frames per clip (F; the UNet sees F + 1 with the reference)")
    size: int = param(64, "frame size in px (the shipped model was trained at 64: its VAE gives 16x16 latents)")
    alpha: float = param(REMINDER_ALPHA, "GIR reminder noise: the reference is noised at t' = alpha * t")
    beta: float = param(REG_BETA, "weight of the GIR loss L_reg (0 = VideoMaker without GIR, baseline (c))")
    train_motion: bool = param(True, "train the motion modules too (off = spatial attn1 only, baseline (d))")
    p_ref_drop: float = param(P_REF, "probability of dropping the reference alone (classifier-free guidance)")
    p_both_drop: float = param(P_BOTH, "probability of dropping the reference and the text together")
    # engine defaults changed for this stage
    steps: int = 2000
    batch_size: int = 8
    lr: float = param(1e-4, "peak AdamW learning rate (paper: 1e-5 for pretrained AnimateDiff; fresh motion modules here need more)")
    warmup_steps: int = 100
    ema_decay: float = 0.999
    ckpt_every: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.motion_preset in MOTION_PRESETS, "motion_preset", self.motion_preset, f"expected one of {', '.join(MOTION_PRESETS)}")
        check(isinstance(self.frames, int) and 1 <= self.frames <= 31, "frames", self.frames,
              "must be an integer in [1, 31] (F + 1 <= the motion modules' 32 positions)")
        check(isinstance(self.size, int) and 32 <= self.size <= 256 and self.size % 8 == 0, "size", self.size,
              "must be a multiple of 8 in [32, 256]")
        check_range("alpha", self.alpha, 0, 1)
        check_range("beta", self.beta, 0)
        check_range("p_ref_drop", self.p_ref_drop, 0, 1)
        check_range("p_both_drop", self.p_both_drop, 0, 1)
        check(self.p_ref_drop + self.p_both_drop <= 1, "p_ref_drop", self.p_ref_drop,
              f"plus --p_both_drop {self.p_both_drop} must be <= 1")
        check(self.base == "" or Path(self.base).is_dir(), "base", self.base, "no such folder")
        check(self.motion_adapter == "" or Path(self.motion_adapter).is_dir(), "motion_adapter", self.motion_adapter, "no such folder")


def run_train(out: str | Path, cfg: VideoTrainConfig | None = None, device: str = "auto", progress: bool = True) -> dict:
    """Train VideoMaker into `out`; returns a summary dict. (stub)"""
    raise NotImplementedError("lumenkit.video.train.run_train is being written")
