"""lumenkit.video: VideoMaker zero-shot customized video generation (seed 002) on an AnimateDiff-style UNet.

data.py: the synthetic world with exact ground truth (textured sprite identities with a zero-shot
train/test split, captioned motions, backgrounds, reference images cut out of a frame, seeded batches).
"""
from __future__ import annotations

__all__ = ["data"]
