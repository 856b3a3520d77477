"""Image I/O for every system: PNG 8/16-bit (with text metadata), JPEG, TIFF, Radiance .hdr, EXR.

Arrays are NumPy, [H, W, C] RGB(A) (never BGR), float32. LDR readers return values in [0, 1] as
stored (sRGB-encoded for ordinary photos: convert with srgb_to_linear); HDR readers return linear
radiance. Every writer is atomic (temporary file + rename).
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
import cv2  # noqa: E402

from lumenkit.common.errors import LumenkitError  # noqa: E402
from lumenkit.common.fileio import atomic_write_bytes  # noqa: E402

LDR_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
HDR_SUFFIXES = (".hdr", ".exr")
IMAGE_SUFFIXES = LDR_SUFFIXES + HDR_SUFFIXES


# ---------------------------------------------------------------------------------------- colour
def srgb_to_linear(x):
    """sRGB-encoded [0, 1] -> linear light (IEC 61966-2-1). Works on NumPy arrays and torch tensors."""
    if isinstance(x, np.ndarray):
        return np.where(x <= 0.04045, x / 12.92, ((np.clip(x, 0.04045, None) + 0.055) / 1.055) ** 2.4).astype(x.dtype)
    import torch

    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x):
    """Linear light -> sRGB-encoded (values above 1 pass the curve; clip afterwards for 8-bit)."""
    if isinstance(x, np.ndarray):
        xc = np.clip(x, 0.0031308, None)
        return np.where(x <= 0.0031308, x * 12.92, 1.055 * xc ** (1 / 2.4) - 0.055).astype(x.dtype)
    import torch

    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


# ---------------------------------------------------------------------------------------- reading
def _to_rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img[..., None]
    if img.shape[2] == 3:
        return img[..., ::-1]
    if img.shape[2] == 4:
        return img[..., [2, 1, 0, 3]]
    return img


def _quiet_imdecode(data: np.ndarray) -> np.ndarray | None:
    """cv2.imdecode without OpenCV's own log lines on stderr for a broken file (the caller raises one error)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)


def read_image(path: str | os.PathLike, *, keep_alpha: bool = True) -> np.ndarray:
    """Read any supported image as float32 [H, W, C] RGB(A).

    8-bit and 16-bit integers are scaled to [0, 1]; .hdr/.exr are returned as stored (linear radiance).
    Greyscale gives C = 1. Raises LumenkitError naming the file when it is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise LumenkitError(f"{path}: no such image file")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = _quiet_imdecode(data) if data.size else None
    if img is None:
        raise LumenkitError(f"{path}: not a readable image (supported: {', '.join(IMAGE_SUFFIXES)})")
    img = _to_rgb(img)
    if not keep_alpha and img.shape[2] == 4:
        img = img[..., :3]
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return np.ascontiguousarray(img, dtype=np.float32)


def read_image_bit_depth(path: str | os.PathLike) -> int:
    """8 or 16 (32 for float formats), as stored in the file."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise LumenkitError(f"{path}: not a readable image")
    return {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(img.dtype, 32)


def read_hdr(path: str | os.PathLike, *, latlong: bool = False) -> np.ndarray:
    """Radiance .hdr (or .exr) -> float32 [H, W, 3] linear RGB radiance.

    Radiance is finite and >= 0: a map with NaN, Inf or negative pixels is refused (LumenkitError naming
    the file and how many pixels). latlong=True (environment maps): the map must be equirectangular, W = 2H.
    """
    path = Path(path)
    if path.suffix.lower() not in HDR_SUFFIXES:
        raise LumenkitError(f"{path}: expected a .hdr or .exr environment map")
    img = read_image(path, keep_alpha=False)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] != 3:
        raise LumenkitError(f"{path}: {img.shape[2]} channels, expected RGB")
    finite = np.isfinite(img)
    nan, inf, neg = np.isnan(img).any(2), (~finite & ~np.isnan(img)).any(2), (img < 0).any(2)
    bad = nan | inf | neg
    if bad.any():
        kinds = ", ".join(f"{int(m.sum())} {k}" for k, m in (("NaN", nan), ("Inf", inf), ("negative", neg)) if m.any())
        raise LumenkitError(f"{path}: {int(bad.sum())} of {bad.size} pixels are not finite radiance >= 0 ({kinds})")
    if latlong and img.shape[1] != 2 * img.shape[0]:
        raise LumenkitError(f"{path}: {img.shape[1]}x{img.shape[0]} px is not a lat-long environment map (width must be 2x the height)")
    return img


# ---------------------------------------------------------------------------------------- writing
def _png_text_chunk(key: str, value: str) -> bytes:
    body = key.encode("latin-1") + b"\x00" + value.encode("latin-1", errors="replace")
    chunk_type = b"tEXt"
    return struct.pack(">I", len(body)) + chunk_type + body + struct.pack(">I", zlib.crc32(chunk_type + body) & 0xFFFFFFFF)


def _insert_png_text(png: bytes, metadata: dict[str, str]) -> bytes:
    """Insert tEXt chunks right after IHDR (PNG signature 8 bytes + IHDR 25 bytes)."""
    head = 8 + 25
    chunks = b"".join(_png_text_chunk(k, str(v)) for k, v in metadata.items())
    return png[:head] + chunks + png[head:]


def read_png_text(path: str | os.PathLike) -> dict[str, str]:
    """The tEXt chunks of a PNG as a dict (what write_image(metadata=...) stored)."""
    raw = Path(path).read_bytes()
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        raise LumenkitError(f"{path}: not a PNG file")
    pos, out = 8, {}
    while pos + 8 <= len(raw):
        (length,) = struct.unpack(">I", raw[pos : pos + 4])
        ctype = raw[pos + 4 : pos + 8]
        body = raw[pos + 8 : pos + 8 + length]
        if ctype == b"tEXt":
            key, _, value = body.partition(b"\x00")
            out[key.decode("latin-1")] = value.decode("latin-1")
        if ctype == b"IEND":
            break
        pos += 12 + length
    return out


def to_uint(img: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """Float [0, 1] -> uint8/uint16 with rounding and clipping."""
    if bit_depth not in (8, 16):
        raise LumenkitError(f"bit depth {bit_depth}: expected 8 or 16")
    maxv = 255 if bit_depth == 8 else 65535
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return (np.clip(np.nan_to_num(img), 0.0, 1.0) * maxv + 0.5).astype(dtype)


def write_image(
    path: str | os.PathLike,
    img: np.ndarray,
    *,
    bit_depth: int = 8,
    metadata: dict[str, str] | None = None,
    jpeg_quality: int = 95,
) -> Path:
    """Write [H, W, C] (or [H, W]) RGB(A) atomically; format from the suffix.

    Float input is taken as [0, 1] for LDR formats (8 or 16 bits; 16 only for PNG/TIFF) and as linear
    radiance for .hdr/.exr. uint8/uint16 input is written as is. PNG gets `metadata` as tEXt chunks.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise LumenkitError(f"{path}: cannot write an image of shape {img.shape} (want [H, W, 1|3|4])")
    if suffix in HDR_SUFFIXES:
        arr = np.ascontiguousarray(img[..., :3] if img.shape[2] >= 3 else np.repeat(img, 3, 2), dtype=np.float32)
        ext = suffix
    elif suffix in LDR_SUFFIXES:
        if img.dtype in (np.uint8, np.uint16):
            arr = img
        else:
            if bit_depth == 16 and suffix not in (".png", ".tif", ".tiff"):
                raise LumenkitError(f"{path}: 16-bit output needs .png or .tif")
            arr = to_uint(img, bit_depth)
        ext = ".jpg" if suffix == ".jpeg" else suffix
    else:
        raise LumenkitError(f"{path}: unknown image format {suffix!r} (supported: {', '.join(IMAGE_SUFFIXES)})")
    bgr = arr[..., 0] if arr.shape[2] == 1 else arr[..., ::-1] if arr.shape[2] == 3 else arr[..., [2, 1, 0, 3]]
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(bgr), params)
    if not ok:
        raise LumenkitError(f"{path}: OpenCV could not encode this image as {ext}")
    data = buf.tobytes()
    if metadata and ext == ".png":
        data = _insert_png_text(data, metadata)
    return atomic_write_bytes(path, data)


def write_hdr(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write linear float [H, W, 3] radiance as Radiance .hdr (RGBE) or .exr."""
    if Path(path).suffix.lower() not in HDR_SUFFIXES:
        raise LumenkitError(f"{path}: HDR output needs a .hdr or .exr suffix")
    return write_image(path, img)


def list_images(folder: str | os.PathLike, suffixes: tuple[str, ...] = LDR_SUFFIXES) -> list[Path]:
    """Image files in `folder`, sorted by name (natural order for numbered frames)."""
    import re

    folder = Path(folder)
    if not folder.is_dir():
        raise LumenkitError(f"{folder}: not a folder")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes]
    key = lambda p: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]  # noqa: E731
    return sorted(files, key=key)


def make_grid(images: list[np.ndarray], ncols: int | None = None, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile equal-size [H, W, C] float images into one grid image."""
    if not images:
        raise LumenkitError("make_grid: no images")
    n = len(images)
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    h, w, c = images[0].shape
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), pad_value, dtype=np.float32)
    for i, im in enumerate(images):
        r, q = divmod(i, ncols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = im
    return grid
