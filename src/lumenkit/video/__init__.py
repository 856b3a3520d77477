"""lumenkit.video: VideoMaker zero-shot customized video generation (seed 002) on an AnimateDiff-style UNet.

data.py: the synthetic world with exact ground truth (textured sprite identities with a zero-shot
train/test split, captioned motions, backgrounds, reference images cut out of a frame, seeded batches).
models.py: the video UNet (diffusers UNetMotionModel from a t2i UNet + a MotionAdapter preset or a local
AnimateDiff adapter folder), its checks, and the VideoMaker weights as safetensors.
attention.py: the personalized-injection self-attention processor (PISA) on the spatial attn1 layers.
losses.py: the guidance-information-recognition (GIR) loss, condition dropout, the trainable subset.
train.py: GIR training on lumenkit.common.train_loop (VideoTrainConfig, run_train).
pipeline.py: VideoMakerPipeline (reference latent appended last, CFG with a zeroed reference + negative prompt).
cli.py: `lumenkit video sample | data | train` and the demo section.
Not built yet: evaluate.py (identity extractor, motion classifier, the paper's table) and the baselines.
"""
from __future__ import annotations

__all__ = ["attention", "cli", "data", "losses", "models", "pipeline", "train"]
