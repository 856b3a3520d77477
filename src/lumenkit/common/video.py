"""Video output for every system: a clip as .mp4 (H.264), .gif (looping) or a frame-strip .png.

A clip is [F, 3, H, W] float in [0, 1] (sRGB-encoded, a NumPy array or a torch tensor, as the pipelines
return it) or uint8 [F, H, W, 3]; floats are rounded to 8 bits (lumenkit.common.images.to_uint).
Every writer is atomic (a temporary file beside the target, renamed onto it: common.fileio.atomic_path).

- ``.mp4``: libx264 through imageio-ffmpeg's bundled ffmpeg, yuv420p (what every player reads), constant
  quality ``crf`` (default 16, visually lossless on smooth content). yuv420p needs even sizes: an odd
  height or width is PADDED by one row / column, replicating the last one (bottom / right edge), so no
  pixel is resampled; a reader gets the padded size back. Chroma is subsampled 2x2, so sharp colour
  edges lose some accuracy (PSNR > 30 dB on smooth clips).
- ``.gif``: imageio's pillow plugin, every frame full size, looping forever (loop=0), ``1000 / fps`` ms per
  frame (GIF stores centiseconds). GIF holds at most 256 colours per frame: clips with few colours round
  trip exactly, others are quantised.
- ``.png``: the frames side by side, left to right (a strip [H, F*W, 3]), via common.images.write_image.

Reading videos back lives in lumenkit.longexp.data.read_video (frames as float [H, W, 3]).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lumenkit.common.errors import LumenkitError
from lumenkit.common.fileio import atomic_path

VIDEO_SUFFIXES = (".mp4", ".gif", ".png")


def clip_to_uint8(clip: Any) -> np.ndarray:
    """A clip as uint8 [F, H, W, 3]: float [F, 3, H, W] in [0, 1] (NumPy or torch; clipped, rounded) or
    uint8 [F, H, W, 3] (passed through). Grey [F, 1, H, W] / [F, H, W, 1] is repeated to RGB."""
    try:
        import torch

        if isinstance(clip, torch.Tensor):
            clip = clip.detach().float().cpu().numpy() if clip.dtype != torch.uint8 else clip.cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    arr = np.asarray(clip)
    if arr.ndim != 4:
        raise LumenkitError(f"a clip must be [F, 3, H, W] float or [F, H, W, 3] uint8, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        if arr.shape[-1] not in (1, 3):
            raise LumenkitError(f"a uint8 clip must be [F, H, W, 3], got shape {arr.shape}")
        out = arr
    else:
        if arr.shape[1] not in (1, 3):
            raise LumenkitError(f"a float clip must be [F, 3, H, W] in [0, 1], got shape {arr.shape}")
        from lumenkit.common.images import to_uint

        out = to_uint(arr.transpose(0, 2, 3, 1).astype(np.float32), 8)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    if out.shape[0] < 1 or out.shape[1] < 1 or out.shape[2] < 1:
        raise LumenkitError(f"empty clip (shape {out.shape})")
    return np.ascontiguousarray(out)


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """uint8 [F, H, W, 3] -> [F, H + H % 2, W + W % 2, 3], the last row / column replicated (yuv420p)."""
    _, h, w, _ = frames.shape
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def frame_strip(clip: Any) -> np.ndarray:
    """The frames side by side: uint8 [H, F*W, 3] (frame i in columns [i*W, (i+1)*W))."""
    frames = clip_to_uint8(clip)
    return np.ascontiguousarray(np.concatenate(list(frames), axis=1))


def _write_mp4(path: Path, frames: np.ndarray, fps: float, crf: int) -> None:
    import imageio_ffmpeg

    frames = pad_to_even(frames)
    _, h, w, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), pix_fmt_in="rgb24", pix_fmt_out="yuv420p", fps=fps, quality=None, codec="libx264",
        macro_block_size=1, ffmpeg_log_level="error", output_params=["-crf", str(int(crf)), "-f", "mp4"],
    )
    writer.send(None)
    try:
        for f in frames:
            writer.send(np.ascontiguousarray(f))
    finally:
        writer.close()


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, list(frames), extension=".gif", plugin="pillow", duration=1000.0 / fps, loop=0, disposal=2)


def write_video(path: str | os.PathLike, clip: Any, *, fps: float = 8.0, crf: int = 16) -> Path:
    """Write `clip` (see clip_to_uint8) to `path`, format from the suffix: .mp4 (H.264 yuv420p, `crf`),
    .gif (looping, `fps`) or .png (frame strip). Atomic; returns the path. An unknown suffix, a bad
    shape or fps <= 0 raise a one-line LumenkitError before anything is written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise LumenkitError(f"{path}: unknown video format {suffix or '(no suffix)'!r} (supported: {', '.join(VIDEO_SUFFIXES)})")
    if not (isinstance(fps, (int, float)) and np.isfinite(fps) and fps > 0):
        raise LumenkitError(f"{path}: fps must be a positive number, got {fps!r}")
    frames = clip_to_uint8(clip)
    if suffix == ".png":
        from lumenkit.common.images import write_image

        return write_image(path, frame_strip(frames))
    with atomic_path(path) as tmp:
        try:
            (_write_mp4(tmp, frames, float(fps), crf) if suffix == ".mp4" else _write_gif(tmp, frames, float(fps)))
        except (OSError, RuntimeError, ValueError) as exc:  # ffmpeg / pillow failures: one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LumenkitError(f"{path}: cannot write the {suffix[1:]} ({first})") from None
    return path


def strip_path(path: str | os.PathLike) -> Path:
    """Where the frame strip of video `path` goes: out.mp4 -> out_strip.png (beside it)."""
    path = Path(path)
    return path.with_name(f"{path.stem}_strip.png")


__all__ = ["VIDEO_SUFFIXES", "clip_to_uint8", "pad_to_even", "frame_strip", "write_video", "strip_path"]
