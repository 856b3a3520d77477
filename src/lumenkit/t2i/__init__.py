"""lumenkit.t2i: Stable Diffusion text-to-image (seed 003) with CLIP, trained here and loading real SD 1.x.

Public API: `Text2Image` (pipeline.py: from_pretrained / from_single_file / save_pretrained / __call__),
model presets and builders (models.py), checkpoint key conversion (convert.py).
Heavy libraries are imported lazily so that `import lumenkit.t2i` stays fast.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Text2Image", "PRESETS", "preset_config", "build_text_encoder", "build_clip_model", "build_vae", "build_unet"]


def __getattr__(name: str) -> Any:
    if name == "Text2Image":
        from lumenkit.t2i.pipeline import Text2Image

        return Text2Image
    if name in ("PRESETS", "preset_config", "build_text_encoder", "build_clip_model", "build_vae", "build_unet"):
        from lumenkit.t2i import models

        return getattr(models, name)
    raise AttributeError(f"module 'lumenkit.t2i' has no attribute {name!r}")
