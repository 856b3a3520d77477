"""Motion prediction between aligned frame pairs: the interface and the optical-flow predictor.

For a pair (k, k+1) a predictor returns, on a low-resolution grid, a line vector per pixel for each
of the two frames (Delta_k, Delta_{k+1}, in pixels of that grid) and a weight map per frame (W_k,
W_{k+1}). The renderer (render.py, eq. 6) gathers frame i along x + s * Delta_i(x), s in [0, 1]: the
points of frame i that pass through output pixel x during the interval [k, k+1]. The learned
line-kernel network of the paper (a later issue) implements the same `MotionPredictor` protocol.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
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
    own_a, own_b: optional [2, h, w] line vectors of each pixel's own content (-F before sweeping);
    where they differ from delta, the line reaches other content that passes over the pixel, and the
    renderer checks each sample for that content (occlusion handling). None: lines are own motion.
    """

    delta_a: torch.Tensor
    delta_b: torch.Tensor
    weight_a: torch.Tensor
    weight_b: torch.Tensor
    own_a: torch.Tensor | None = None
    own_b: torch.Tensor | None = None

    def resized(self, size: tuple[int, int]) -> "PairMotion":
        """Bilinear upsampling to (h, w) with vectors rescaled to the new pixel size."""
        h0, w0 = self.delta_a.shape[-2:]
        h, w = size
        if (h, w) == (h0, w0):
            return self
        scale = torch.tensor([w / w0, h / h0], dtype=self.delta_a.dtype, device=self.delta_a.device).view(2, 1, 1)

        def up(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t[None], size=(h, w), mode="bilinear", align_corners=False)[0]

        own = [up(o) * scale if o is not None else None for o in (self.own_a, self.own_b)]
        return PairMotion(up(self.delta_a) * scale, up(self.delta_b) * scale, up(self.weight_a), up(self.weight_b), *own)

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


def _flow_channels(frame: torch.Tensor) -> np.ndarray:
    """Linear [3, h, w] -> per-channel contrast-normalised sRGB-like uint8 [h, w, 3] (as _flow_gray)."""
    g = frame.clamp(min=0).permute(1, 2, 0).cpu().numpy() ** (1 / 2.2)
    hi = np.maximum(np.percentile(g.reshape(-1, g.shape[-1]), 99.5, axis=0), 1e-3)
    return np.ascontiguousarray((np.clip(g / hi, 0, 1) * 255 + 0.5).astype(np.uint8))


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


@lru_cache(maxsize=4)
def _pixel_coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(xs, ys) float32 [h, w] pixel coordinates for cv2.remap maps (cached, read-only)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


def flow_with_prior(dis, a: np.ndarray, b: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Flow a -> b [h, w, 2] searched around a prior flow: warp b back by the prior, estimate the
    residual motion with `dis` (a cv2 DenseOpticalFlow) and compose, F(p) = r(p) + prior(p + r(p)).
    (OpenCV's DIS binding does not take an initial flow.)"""
    xs, ys = _pixel_coords(*a.shape[:2])
    prior = np.ascontiguousarray(prior, dtype=np.float32)
    bw = cv2.remap(b, xs + prior[..., 0], ys + prior[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    r = dis.calc(a, bw, None)
    return r + cv2.remap(prior, xs + r[..., 0], ys + r[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def warp_error(a: np.ndarray, b: np.ndarray, flow: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Local photometric error |a(p) - b(p + flow(p))| (summed over channels, Gaussian-averaged over
    sigma px) of a flow a -> b. a, b: [h, w] or [h, w, C] uint8 or float; flow [h, w, 2]. Returns [h, w]."""
    xs, ys = _pixel_coords(*a.shape[:2])
    bw = cv2.remap(b.astype(np.float32), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    d = np.abs(a.astype(np.float32) - bw)
    return cv2.GaussianBlur(d.sum(-1) if d.ndim == 3 else d, (0, 0), sigma)


def _error_sigma(shape: tuple) -> float:
    return max(1.0, PRIOR_SIGMA * float(np.hypot(*shape[:2])))


def select_candidate(a: np.ndarray, b: np.ndarray, current: np.ndarray, cand: np.ndarray, sigma: float) -> np.ndarray:
    """Per pixel, the candidate flow a -> b where it warps with a clearly lower local error
    (below PRIOR_MARGIN x the current flow's; errors on a, b as given, e.g. colour)."""
    better = warp_error(a, b, cand, sigma) < PRIOR_MARGIN * warp_error(a, b, current, sigma)
    return np.where(better[..., None], cand, current)


PRIOR_MARGIN = 0.7  # the prior's candidate must warp with a clearly lower error than the plain one's
PRIOR_SIGMA = 0.0125  # warping errors are compared averaged over this Gaussian (fraction of the diagonal)


def temporal_prior_refine(layers: list[np.ndarray], fwd: list, bwd: list, preset: int) -> tuple[list, list]:
    """Constant-velocity prior across the burst: content at p in frame k that arrived with motion
    -F_{k->k-1}(p) most likely leaves with F_{k->k+1}(p) ~ -F_{k->k-1}(p) (and likewise backwards).

    For every pair, a second DIS estimate searched around that prior (flow_with_prior) competes with
    the plain estimate per pixel; the one with the lower local warping error wins. This resolves
    ambiguous matches (two similar lights or balls that cross: the plain coarse-to-fine search snaps
    to the nearer one). The errors are compared after a Gaussian average (PRIOR_SIGMA of the diagonal)
    and the prior must win by a margin (PRIOR_MARGIN), so that noise does not pick between two equally
    good flows pixel by pixel. layers: per-frame uint8 images [h, w] (None: no layer in that frame);
    fwd[k] / bwd[k]: flows k -> k+1 / k+1 -> k [h, w, 2] or None; the warping errors are measured on
    the layers. Returns refined (fwd, bwd)."""
    K = len(fwd)
    dis = cv2.DISOpticalFlow_create(preset)
    shape = next((x.shape for x in layers if x is not None), (1, 1))
    sig = _error_sigma(shape)
    out_f, out_b = list(fwd), list(bwd)
    for k in range(K):
        a, b = layers[k], layers[k + 1]
        if a is None or b is None or fwd[k] is None:
            continue
        if k > 0 and bwd[k - 1] is not None:
            out_f[k] = select_candidate(a, b, fwd[k], flow_with_prior(dis, a, b, -bwd[k - 1]), sig)
        if k < K - 1 and fwd[k + 1] is not None:
            out_b[k] = select_candidate(b, a, bwd[k], flow_with_prior(dis, b, a, -fwd[k + 1]), sig)
    return out_f, out_b


@dataclass
class OpticalFlowPredictor:
    """OpenCV DIS optical flow in both directions turned into line vectors with W = 1/2.

    Delta_k = -F_{k->k+1} and Delta_{k+1} = -F_{k+1->k}, each swept along the motion (sweep_lines) so
    lines reach content that crosses a pixel during the interval. Near clipped highlights (small
    bright lights that DIS loses among textured surroundings), the flow comes from DIS on the blurred
    highlight layer alone (highlight_sigma in fractions of the diagonal). colour_candidates: DIS
    also runs on each colour channel (edges between colours of equal brightness vanish in grey) and
    a channel's flow replaces the grey one where it warps the colour frames clearly better. On a whole
    burst (predict_burst), temporal_prior adds the constant-velocity candidates of
    temporal_prior_refine to both layers' flows.
    """

    preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
    sweep: bool = True
    highlight_flow: bool = True
    highlight_sigma: float = 0.015
    highlight_preset: int = cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST
    temporal_prior: bool = True
    colour_candidates: bool = True

    def flow(self, a: np.ndarray, b: np.ndarray, preset: int | None = None) -> np.ndarray:
        dis = cv2.DISOpticalFlow_create(self.preset if preset is None else preset)
        return dis.calc(a, b, None)

    def _highlight_layer(self, frame: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
        """(blurred highlight layer uint8 [h, w], highlight mask [h, w]) or None without highlights."""
        h = _highlights(frame)
        if h.sum() < 2:
            return None
        s = self.highlight_sigma * float(np.hypot(*h.shape))
        lay = cv2.GaussianBlur(h, (0, 0), s)
        return np.clip(lay / max(float(lay.max()), 1e-6) * 255, 0, 255).astype(np.uint8), h

    @staticmethod
    def _fuse(f: np.ndarray, fh: np.ndarray | None, mask: np.ndarray | None) -> np.ndarray:
        if fh is None or mask is None:
            return f
        alpha = np.clip(cv2.GaussianBlur(mask, (0, 0), 1.5) * 3, 0, 1)[..., None]
        return alpha * fh + (1 - alpha) * f

    def _motion(self, fab: np.ndarray, fba: np.ndarray, like: torch.Tensor) -> PairMotion:
        fab_t = torch.from_numpy(np.ascontiguousarray(fab, dtype=np.float32)).permute(2, 0, 1).to(like)
        fba_t = torch.from_numpy(np.ascontiguousarray(fba, dtype=np.float32)).permute(2, 0, 1).to(like)
        half = torch.full_like(fab_t[:1], 0.5)
        if not self.sweep:
            return PairMotion(-fab_t, -fba_t, half, half.clone())
        return PairMotion(sweep_lines(fab_t), sweep_lines(fba_t), half, half.clone(), -fab_t, -fba_t)

    def predict_burst(self, frames: list[torch.Tensor]) -> list[PairMotion]:
        """PairMotion for every consecutive pair of aligned linear frames [3, h, w] (K = len - 1)."""
        K = len(frames) - 1
        grays = [_flow_gray(f) for f in frames]
        fwd = [self.flow(grays[k], grays[k + 1]) for k in range(K)]
        bwd = [self.flow(grays[k + 1], grays[k]) for k in range(K)]
        colour = None
        if self.colour_candidates:
            colour = [_flow_channels(f) for f in frames]
            sig = _error_sigma(grays[0].shape)
            for k in range(K):
                for c in range(colour[k].shape[-1]):
                    fwd[k] = select_candidate(colour[k], colour[k + 1], fwd[k], self.flow(colour[k][..., c], colour[k + 1][..., c]), sig)
                    bwd[k] = select_candidate(colour[k + 1], colour[k], bwd[k], self.flow(colour[k + 1][..., c], colour[k][..., c]), sig)
        hl = [self._highlight_layer(f) for f in frames] if self.highlight_flow else [None] * len(frames)
        lay = [h[0] if h is not None else None for h in hl]
        both = [lay[k] is not None and lay[k + 1] is not None for k in range(K)]
        hf = [self.flow(lay[k], lay[k + 1], self.highlight_preset) if both[k] else None for k in range(K)]
        hb = [self.flow(lay[k + 1], lay[k], self.highlight_preset) if both[k] else None for k in range(K)]
        if self.temporal_prior and K > 1:
            fwd, bwd = temporal_prior_refine(grays, fwd, bwd, self.preset)
            hf, hb = temporal_prior_refine(lay, hf, hb, self.highlight_preset)
        out = []
        for k in range(K):
            ma = hl[k][1] if both[k] else None
            mb = hl[k + 1][1] if both[k] else None
            out.append(self._motion(self._fuse(fwd[k], hf[k], ma), self._fuse(bwd[k], hb[k], mb), frames[k]))
        return out

    def __call__(self, frame_a: torch.Tensor, frame_b: torch.Tensor) -> PairMotion:
        """One pair on its own (a single pair has no temporal prior)."""
        return self.predict_burst([frame_a, frame_b])[0]


def predict_all(frames: list[torch.Tensor], predictor: MotionPredictor) -> list[PairMotion]:
    """PairMotion for every consecutive pair of aligned frames (K = len(frames) - 1 pairs); a predictor
    with a predict_burst method (temporal context across pairs) gets the whole burst at once."""
    if hasattr(predictor, "predict_burst"):
        return predictor.predict_burst(frames)
    return [predictor(frames[k], frames[k + 1]) for k in range(len(frames) - 1)]


def flow_to_color(delta: torch.Tensor | np.ndarray, max_mag: float | None = None) -> np.ndarray:
    """[2, h, w] vectors -> [h, w, 3] float sRGB image (hue = direction, saturation = magnitude)."""
    d = delta.cpu().numpy() if isinstance(delta, torch.Tensor) else delta
    mag, ang = cv2.cartToPolar(d[0].astype(np.float32), d[1].astype(np.float32), angleInDegrees=True)
    m = max_mag or max(float(np.percentile(mag, 99)), 1e-6)
    hsv = np.stack([ang / 2, np.clip(mag / m, 0, 1) * 255, np.full_like(mag, 255)], -1).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32) / 255.0
