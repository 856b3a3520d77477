"""lumenkit.video: VideoMaker zero-shot customized video generation (seed 002) on an AnimateDiff-style UNet.

data.py: the synthetic world with exact ground truth (textured sprite identities with a zero-shot
train/test split, captioned motions, backgrounds, reference images cut out of a frame, seeded batches).
models.py: the video UNet (diffusers UNetMotionModel from a t2i UNet + a MotionAdapter preset or a local
AnimateDiff adapter folder), its checks, and the VideoMaker weights as safetensors.
attention.py: the personalized-injection self-attention processor (PISA) on the spatial attn1 layers.
losses.py: the guidance-information-recognition (GIR) loss, condition dropout, the trainable subset.
Not built yet: train.py (on lumenkit.common.train_loop), pipeline.py (sampling), evaluate.py, cli.py.
"""
from __future__ import annotations

__all__ = ["attention", "data", "losses", "models"]
