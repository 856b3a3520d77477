"""Motion prediction between aligned frame pairs: the interface and the optical-flow predictor.

For a pair (k, k+1) a predictor returns, on a low-resolution grid, a line vector per pixel for each
of the two frames (Delta_k, Delta_{k+1}, in pixels of that grid) and a weight map per frame (W_k,
W_{k+1}). The renderer (render.py, eq. 6) gathers frame i along x + s * Delta_i(x), s in [0, 1]: the
points of frame i that pass through output pixel x during the interval [k, k+1]. The learned
line-kernel network of the paper (a later issue) implements the same `MotionPredictor` protocol.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class PairMotion:
    """Line vectors and weights of one aligned frame pair, on a grid of size (h, w).

    delta_a, delta_b: [2, h, w] (x, y) line vectors in pixels of that grid, for frames k and k+1.
    weight_a, weight_b: [1, h, w] weights (sum to 1 where the predictor trusts both frames).
    """

    delta_a: torch.Tensor
    delta_b: torch.Tensor
    weight_a: torch.Tensor
    weight_b: torch.Tensor

    def resized(self, size: tuple[int, int]) -> "PairMotion":
        """Bilinear upsampling to (h, w) with vectors rescaled to the new pixel size."""
        h0, w0 = self.delta_a.shape[-2:]
        h, w = size
        if (h, w) == (h0, w0):
            return self
        scale = torch.tensor([w / w0, h / h0], dtype=self.delta_a.dtype, device=self.delta_a.device).view(2, 1, 1)

        def up(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t[None], size=(h, w), mode="bilinear", align_corners=False)[0]

        return PairMotion(up(self.delta_a) * scale, up(self.delta_b) * scale, up(self.weight_a), up(self.weight_b))

    @property
    def magnitude(self) -> torch.Tensor:
        """[h, w] max line length of the two frames (pixels of this grid)."""
        return torch.maximum(torch.sqrt((self.delta_a**2).sum(0)), torch.sqrt((self.delta_b**2).sum(0)))


class MotionPredictor(Protocol):
    """Anything that maps an aligned pair of linear frames [3, h, w] (values in [0, 1]) to PairMotion."""

    def __call__(self, frame_a: torch.Tensor, frame_b: torch.Tensor) -> PairMotion: ...


def _flow_gray(frame: torch.Tensor) -> np.ndarray:
    """Linear [3, h, w] -> contrast-normalised sRGB-like uint8 grey for optical flow."""
    g = frame.mean(0).clamp(min=0).cpu().numpy() ** (1 / 2.2)
    hi = max(float(np.percentile(g, 99.5)), 1e-3)
    return (np.clip(g / hi, 0, 1) * 255 + 0.5).astype(np.uint8)


def sweep_lines(flow: torch.Tensor, min_len: float = 0.5) -> torch.Tensor:
    """Line vectors from a flow field by sweeping each pixel's motion along its own path.

    flow [2, h, w]: motion of frame i's content towards the other frame. Every pixel p writes -flow(p)
    at the pixels p + s * flow(p), s in [0, 1]; where several paths cross a pixel the longest motion
    wins (moving content occludes the static scene). Pixels crossed by no path keep -flow(x). This is
    what a gather renderer needs: the line at output pixel x must reach back to the content that
    passes over x, which for a small fast object (a head light) lies outside the object's footprint.
    Returns [2, h, w]."""
    _, h, w = flow.shape
    mag = torch.sqrt((flow**2).sum(0)).reshape(-1)
    src = torch.nonzero(mag > min_len).squeeze(1)
    out = -flow.clone()
    if src.numel() == 0:
        return out
    n = int(torch.ceil(mag[src].max()).item()) + 1
    ys, xs = src // w, src % w
    fx, fy = flow[0].reshape(-1)[src], flow[1].reshape(-1)[src]
    key_best = torch.full((h * w,), -1, dtype=torch.int64, device=flow.device)
    qmag = (mag[src] * 64).round().to(torch.int64)
    packed = (qmag << 32) | src
    for k in range(n):
        t = k / max(n - 1, 1)
        tx = torch.round(xs + t * fx).to(torch.int64)
        ty = torch.round(ys + t * fy).to(torch.int64)
        ok = (tx >= 0) & (tx < w) & (ty >= 0) & (ty < h)
        key_best.scatter_reduce_(0, (ty * w + tx)[ok], packed[ok], reduce="amax")
    hit = key_best >= 0
    best_src = key_best[hit] & 0xFFFFFFFF
    own = mag[hit]
    better = (key_best[hit] >> 32).float() / 64 > own + 0.5  # only where the sweeping motion is larger
    idx = torch.nonzero(hit).squeeze(1)[better]
    flat = out.reshape(2, -1)
    flat[:, idx] = -flow.reshape(2, -1)[:, best_src[better]]
    return out


def _highlights(frame: torch.Tensor, rel: float = 0.8, floor: float = 0.45) -> np.ndarray:
    """Float mask [h, w] of clipped/near-clipped highlights (linear grey above rel * max and floor)."""
    g = frame.mean(0).cpu().numpy()
    thr = max(rel * float(g.max()), floor)
    return np.clip((g - thr) / max(1.0 - thr, 1e-3) * 4, 0, 1).astype(np.float32)


@dataclass
class OpticalFlowPredictor:
    """OpenCV DIS optical flow in both directions turned into line vectors with W = 1/2.

    Delta_k = -F_{k->k+1} and Delta_{k+1} = -F_{k+1->k}, each swept along the motion (sweep_lines) so
    lines reach content that crosses a pixel during the interval. Near clipped highlights (small
    bright lights that DIS loses among textured surroundings), the flow comes from DIS on the blurred
    highlight layer alone (highlight_sigma in fractions of the diagonal).
    """

    preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
    sweep: bool = True
    highlight_flow: bool = True
    highlight_sigma: float = 0.015

    def flow(self, a: np.ndarray, b: np.ndarray, preset: int | None = None) -> np.ndarray:
        dis = cv2.DISOpticalFlow_create(self.preset if preset is None else preset)
        return dis.calc(a, b, None)

    def _fused(self, fa: torch.Tensor, fb: torch.Tensor, ga: np.ndarray, gb: np.ndarray) -> np.ndarray:
        f = self.flow(ga, gb)
        if not self.highlight_flow:
            return f
        ha, hb = _highlights(fa), _highlights(fb)
        if ha.sum() < 2 or hb.sum() < 2:
            return f
        s = self.highlight_sigma * float(np.hypot(*ha.shape))
        la, lb = (cv2.GaussianBlur(m, (0, 0), s) for m in (ha, hb))
        la8, lb8 = (np.clip(m / max(float(m.max()), 1e-6) * 255, 0, 255).astype(np.uint8) for m in (la, lb))
        fh = self.flow(la8, lb8, cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        alpha = np.clip(cv2.GaussianBlur(ha, (0, 0), 1.5) * 3, 0, 1)[..., None]
        return alpha * fh + (1 - alpha) * f

    def __call__(self, frame_a: torch.Tensor, frame_b: torch.Tensor) -> PairMotion:
        ga, gb = _flow_gray(frame_a), _flow_gray(frame_b)
        fab = torch.from_numpy(self._fused(frame_a, frame_b, ga, gb)).permute(2, 0, 1).to(frame_a)
        fba = torch.from_numpy(self._fused(frame_b, frame_a, gb, ga)).permute(2, 0, 1).to(frame_a)
        da, db = (sweep_lines(fab), sweep_lines(fba)) if self.sweep else (-fab, -fba)
        half = torch.full_like(fab[:1], 0.5)
        return PairMotion(da, db, half, half.clone())


def predict_all(frames: list[torch.Tensor], predictor: MotionPredictor) -> list[PairMotion]:
    """PairMotion for every consecutive pair of aligned frames (K = len(frames) - 1 pairs)."""
    return [predictor(frames[k], frames[k + 1]) for k in range(len(frames) - 1)]


def flow_to_color(delta: torch.Tensor | np.ndarray, max_mag: float | None = None) -> np.ndarray:
    """[2, h, w] vectors -> [h, w, 3] float sRGB image (hue = direction, saturation = magnitude)."""
    d = delta.cpu().numpy() if isinstance(delta, torch.Tensor) else delta
    mag, ang = cv2.cartToPolar(d[0].astype(np.float32), d[1].astype(np.float32), angleInDegrees=True)
    m = max_mag or max(float(np.percentile(mag, 99)), 1e-6)
    hsv = np.stack([ang / 2, np.clip(mag / m, 0, 1) * 255, np.full_like(mag, 255)], -1).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32) / 255.0
