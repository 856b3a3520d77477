"""Motion-blur rendering from line vectors (seed eq. 6), spline paths (eq. 7, 8) and soft gamma (eq. 9).

Images are torch [C, H, W] on the render grid (half resolution in the pipeline); vectors are [2, H, W]
(x, y) in pixels of that grid; positions are pixel centres (x = column index).

Gather form used throughout: output pixel x accumulates frame i at positions rho(x, t) = x + g(t),
where g is a cubic Hermite with g(0) = 0, g(1) = Delta, g'(0) = mu0, g'(1) = mu1. The straight line of
eq. 6 is the special case mu0 = mu1 = Delta (then g(t) = t * Delta exactly).

Every pass contributes W(x) times a normalised weighted mean along its path, so the K pairs x 2 frames
(2K passes) each carry their share of the exposure time; N (samples per path) adapts per pixel to the
path length (pixels are grouped in buckets of equal N, no per-pixel Python loops).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lumenkit.common.config import check, check_range, param
from lumenkit.longexp.motion import PairMotion

N_BUCKETS = (2, 3, 5, 9, 17, 33, 65, 129)


def vnorm(v: torch.Tensor) -> torch.Tensor:
    """Length of [2, ...] vectors (explicit: torch.norm over dim 0 is very slow on CPU)."""
    return torch.sqrt(v[0] * v[0] + v[1] * v[1])


# ---------------------------------------------------------------------------------------- eq. 9
def soft_gamma(v: torch.Tensor, k: float) -> torch.Tensor:
    """Seed eq. 9: gamma_s(v) = v / (v + (1 - v) k) on [0, 1]; gamma_s(., 1/k) is its inverse."""
    v = v.clamp(0.0, 1.0)
    return v / (v + (1.0 - v) * k).clamp(min=1e-12)


# ---------------------------------------------------------------------------------------- sampling
def pixel_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[2, h, w] (x, y) pixel coordinates."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs, ys])


def bilinear(img: torch.Tensor, pos: torch.Tensor, hwc: np.ndarray | None = None) -> torch.Tensor:
    """Bilinear lookup of img [C, H, W] at pixel positions pos [2, *S] (x, y); returns [C, *S].

    Border pixels are repeated outside the image (texture clamp). On CPU this is cv2.remap (hwc: the
    image as a contiguous [H, W, C] float32 array, if already made), elsewhere torch grid_sample."""
    c, h, w = img.shape
    shape = pos.shape[1:]
    if img.device.type == "cpu" and img.dtype == torch.float32 and c <= 4:
        arr = hwc if hwc is not None else np.ascontiguousarray(img.permute(1, 2, 0).numpy())
        m = pos.reshape(2, -1)
        total = m.shape[1]
        cols = min(max(total, 1), 4096)  # remap needs map sides < 32767
        rows = -(-total // cols)
        if rows * cols != total:
            m = F.pad(m, (0, rows * cols - total))
        mx = m[0].reshape(rows, cols).contiguous().numpy()
        my = m[1].reshape(rows, cols).contiguous().numpy()
        out = cv2.remap(arr, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out = torch.from_numpy(out.reshape(rows * cols, c)[:total])
        return out.T.reshape(c, *shape)
    p = pos.reshape(2, 1, -1)
    gx = p[0] * (2.0 / max(w - 1, 1)) - 1.0
    gy = p[1] * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], -1)[None]  # [1, 1, M, 2]
    out = F.grid_sample(img[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0, :, 0].reshape(c, *shape)


# ---------------------------------------------------------------------------------------- eq. 6 / 8
def ramp_weights(n: int, ramp: bool = True, device=None) -> torch.Tensor:
    """w_n = 1 - n / N for n = 0..N-1 (seed eq. 6), or all ones without the ramp. [N]"""
    idx = torch.arange(n, device=device, dtype=torch.float32)
    return 1.0 - idx / n if ramp else torch.ones(n, device=device)


def hermite_basis(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cubic Hermite basis h00, h10, h01, h11 and their derivatives at t."""
    t2, t3 = t * t, t * t * t
    h00, h10, h01, h11 = 2 * t3 - 3 * t2 + 1, t3 - 2 * t2 + t, -2 * t3 + 3 * t2, t3 - t2
    d00, d10, d01, d11 = 6 * t2 - 6 * t, 3 * t2 - 4 * t + 1, -6 * t2 + 6 * t, 3 * t2 - 2 * t
    return h00, h10, h01, h11, d00, d10, d01, d11


def hermite(p0, p1, m0, m1, t):
    """Cubic Hermite curve rho(t) and rho'(t) with rho(0)=p0, rho(1)=p1, rho'(0)=m0, rho'(1)=m1.

    p0..m1: tensors [2, ...]; t: tensor broadcastable against them. Returns (rho, drho)."""
    h00, h10, h01, h11, d00, d10, d01, d11 = hermite_basis(t)
    return h00 * p0 + h10 * m0 + h01 * p1 + h11 * m1, d00 * p0 + d10 * m0 + d01 * p1 + d11 * m1


def path_samples(n: int, device=None) -> torch.Tensor:
    """t_n = n / (N - 1), uniform in the spline parameter. [N]"""
    return torch.linspace(0.0, 1.0, n, device=device)


def accumulate_pass(
    img: torch.Tensor,
    delta: torch.Tensor,
    mu0: torch.Tensor | None = None,
    mu1: torch.Tensor | None = None,
    *,
    ramp: bool = True,
    speed_weight: bool = True,
    step: float = 1.0,
    n_max: int = 65,
    min_length: float = 0.5,
    own: torch.Tensor | None = None,
    tolerance: tuple[float, float] = (0.3, 1.0),
    only: torch.Tensor | None = None,
    hwc: np.ndarray | None = None,
) -> torch.Tensor:
    """One pass: normalised weighted mean of img along each pixel's path. Returns [C, H, W].

    img [C, H, W]; delta [2, H, W] path end point offset; mu0, mu1 [2, H, W] path tangents at t = 0, 1
    (None: straight line, eq. 6). Weights w_n = 1 - n/N (ramp), times |rho'(t_n)| normalised over the
    path (eq. 8: compensates uneven spatial spacing of uniform t samples) when speed_weight and the
    path is curved. N per pixel = path length / step + 1, rounded up to a bucket in N_BUCKETS; paths
    shorter than min_length px (invisible blur) keep the pixel itself.

    own [2, H, W] (occlusion handling): img's own line vectors before sweeping. Where delta differs
    from own (the line reaches content that passes over the pixel), a sample at p counts in
    proportion to c = exp(-|own(p) - delta|^2 / (2 (tolerance[0] |delta| + tolerance[1])^2)), i.e. only
    if the content there really moves along the line; the rest of the weight goes to the pixel's own
    content (the pass along its own line): a static background is not smeared along a passing object.
    only: optional bool [H*W]: render just these pixels (the others keep img). hwc: img as a contiguous
    [H, W, C] float32 array, if already made (CPU lookups).
    """
    c, h, w = img.shape
    straight = mu0 is None
    dev = img.device
    length = vnorm(delta)
    if not straight:
        length = length + 0.25 * (vnorm(mu0 - delta) + vnorm(mu1 - delta))
    need = (length / step).ceil() + 1
    if hwc is None and img.device.type == "cpu":
        hwc = np.ascontiguousarray(img.permute(1, 2, 0).numpy())
    out = img.clone()  # N = 1 (paths shorter than ~0 px): the pixel itself
    flat_out = out.reshape(c, -1)
    buckets = torch.tensor([b for b in N_BUCKETS if b <= max(n_max, 2)], device=dev)
    bidx = torch.bucketize(need.clamp(max=float(buckets[-1])).reshape(-1), buckets.float())
    moving = length.reshape(-1) > min_length
    if only is not None:
        moving = moving & only
    if own is not None:
        swept = (vnorm(own - delta) > 0.5).reshape(-1)
        if bool(swept.any()):
            # the pixel's own content, needed only where the line was swept
            fallback = accumulate_pass(img, own, ramp=ramp, speed_weight=speed_weight, step=step, n_max=n_max, min_length=min_length, only=swept & moving, hwc=hwc).reshape(c, -1)
            own_hwc = np.ascontiguousarray(own.permute(1, 2, 0).numpy()) if own.device.type == "cpu" else None
        else:
            own = None
    for bi, n in enumerate(buckets.tolist()):
        sel = torch.nonzero(moving & (bidx == bi)).squeeze(1)
        if sel.numel() == 0:
            continue
        wn = ramp_weights(n, ramp, dev)  # [N]
        t = path_samples(n, dev)
        chunk = max(1, (1 << 18) // n)  # keep temporaries cache-sized
        for s in range(0, sel.numel(), chunk):
            ids = sel[s : s + chunk]
            x0 = torch.stack([(ids % w).to(img.dtype), torch.div(ids, w, rounding_mode="floor").to(img.dtype)])  # [2, M] (x, y)
            d = delta.reshape(2, -1)[:, ids]
            if straight:
                pos = x0[:, None] + t[None, :, None] * d[:, None]  # [2, N, M]
                wts = wn[:, None].expand(n, ids.numel())
            else:
                m0 = mu0.reshape(2, -1)[:, ids]
                m1 = mu1.reshape(2, -1)[:, ids]
                _, h10, h01, h11, _, d10, d01, d11 = (b[None, :, None] for b in hermite_basis(t))  # p0 = 0
                d_, m0_, m1_ = d[:, None], m0[:, None], m1[:, None]
                pos = x0[:, None] + h10 * m0_ + h01 * d_ + h11 * m1_
                dg = d10 * m0_ + d01 * d_ + d11 * m1_
                wts = wn[:, None].expand(n, ids.numel())
                if speed_weight:
                    sp = vnorm(dg)  # [N, M]
                    sp = sp / sp.mean(0, keepdim=True).clamp(min=1e-6)
                    wts = wts * torch.where(sp.mean(0, keepdim=True) > 0, sp, torch.ones_like(sp))
            vals = bilinear(img, pos, hwc)  # [C, N, M]
            wsum = wts.sum(0).clamp(min=1e-12)
            sw = swept[ids] if own is not None else None
            if sw is None or not bool(sw.any()):
                flat_out[:, ids] = (vals * wts[None]).sum(1) / wsum[None]
                continue
            ds = d[:, sw]
            miss = vnorm(bilinear(own, pos[:, :, sw], own_hwc) - ds[:, None])  # [N, S] own motion vs the line
            cn = torch.ones_like(wts)
            cn[:, sw] = torch.exp(-0.5 * (miss / (tolerance[0] * vnorm(ds)[None] + tolerance[1])) ** 2)
            wc = wts * cn
            cover = wc.sum(0) / wsum
            flat_out[:, ids] = (vals * wc[None]).sum(1) / wsum[None] + (1 - cover)[None] * fallback[:, ids]
    return out


# ---------------------------------------------------------------------------------------- eq. 7
def instantaneous_flow(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Seed eq. 7: delta = H(a, b) (theta / sin theta) x {1 if theta <= pi/2 else 1 - (2 theta/pi - 1)^4}.

    a, b: [2, ...] the outgoing (D+) and incoming (D-) motion at a frame, both pointing forward in time
    along the path. H is parallel to a + b with magnitude the harmonic mean of |a| and |b|; theta is
    the angle between a and b. Returns [2, ...].

    Reversals (theta -> pi): taken literally, theta / sin theta diverges as fast as the fall-off goes to
    0, so the magnitude tends to 8 |H| (and is 0 only at theta = pi exactly), while the direction of
    a + b (a nearly cancelling sum) is undefined: a ~1e-3 px change of a or b (float32 rounding, cv2's
    1/32-px lookups) turned the tangent by up to 180 degrees at ~8x the step length. Beyond pi/2 the
    arc factor theta / sin theta is therefore taken times sin theta (= theta): unchanged at pi/2
    (value and slope), and the tangent fades to 0 at a full reversal as the fall-off intends, so
    delta is continuous (Lipschitz) in a and b."""
    na, nb = vnorm(a), vnorm(b)
    s = a + b
    ns = vnorm(s)
    hm = 2 * na * nb / (na + nb).clamp(min=eps)
    cos = ((a * b).sum(0) / (na * nb).clamp(min=eps)).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    ratio = torch.where(theta < 1e-4, torch.ones_like(theta), theta / sin.clamp(min=eps))
    # theta > pi/2: (theta / sin theta) * sin theta * fall-off, see above
    mag = hm * torch.where(theta <= math.pi / 2, ratio, theta * (1 - (2 * theta / math.pi - 1) ** 4))
    ok = (ns > eps) & (na > eps) & (nb > eps)
    return torch.where(ok[None], s / ns.clamp(min=eps)[None] * mag[None], torch.zeros_like(s))


def extrapolate_endpoint(c: torch.Tensor, b: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
    """Seed fig. 7: extrapolate the track ... A, B, C past its end C to D.

    Reflect A about the perpendicular bisector of BC (giving A'), then clamp |CA'| to |BC|; without
    A (a two-frame burst), continue straight: D = C + (C - B). Points [2, ...]; returns D."""
    bc = c - b
    if a is None:
        return c + bc
    nbc = vnorm(bc)[None]
    u = bc / nbc.clamp(min=1e-9)
    mid = 0.5 * (b + c)
    a_ref = a - 2 * ((a - mid) * u).sum(0, keepdim=True) * u
    ca = a_ref - c
    nca = vnorm(ca)[None]
    ca = ca * torch.where(nca > nbc, nbc / nca.clamp(min=1e-9), torch.ones_like(nca))
    return torch.where(nbc > 1e-9, c + ca, c)


def frame_tangents(motions: list[PairMotion]) -> list[torch.Tensor]:
    """Instantaneous flow delta_i [2, H, W] at every frame i = 0..K from K pairs (eq. 7 + fig. 7).

    Motion at frame i: outgoing a_i = -Delta_i (pair i), incoming b_i = Delta_i (pair i-1); at the
    first and last frames the missing one comes from extrapolate_endpoint along the per-pixel track."""
    k = len(motions)
    h, w = motions[0].delta_a.shape[-2:]
    x = pixel_grid(h, w, motions[0].delta_a.device)
    outgoing = [-m.delta_a for m in motions]  # a_0..a_{K-1}
    incoming = [m.delta_b for m in motions]  # b_1..b_K
    # first frame: C = x, B = x + a_0, A = B + a_1(B); incoming b_0 = C - D
    bpt = x + outgoing[0]
    apt = bpt + bilinear(outgoing[1], bpt) if k > 1 else None
    b0 = x - extrapolate_endpoint(x, bpt, apt)
    # last frame: C = x, B = x - b_K, A = B - b_{K-1}(B); outgoing a_K = D - C
    bpt = x - incoming[-1]
    apt = bpt - bilinear(incoming[-2], bpt) if k > 1 else None
    ak = extrapolate_endpoint(x, bpt, apt) - x
    a_all = outgoing + [ak]
    b_all = [b0] + incoming
    return [instantaneous_flow(a_all[i], b_all[i]) for i in range(k + 1)]


# ---------------------------------------------------------------------------------------- driver
@dataclass
class RenderConfig:
    """Blur synthesis switches (paper defaults: all on, k = 3)."""

    spline: bool = param(True, "spline paths (eq. 7, 8) instead of straight lines")
    ramp: bool = param(True, "ramp weights w_n = 1 - n/N (eq. 6)")
    # eq. 9: True / False, or "auto" (the pipeline's default): on when the burst has moving clipped
    # highlights, the content soft gamma exists for (pipeline.soft_gamma_needed); render_blur itself
    # treats "auto" as on. On the CLI: --soft-gamma auto|on|off
    soft_gamma: bool | str = param(True, "soft gamma (eq. 9): True, False or 'auto'", cli=False)
    k: float = param(3.0, "soft gamma k (eq. 9; inverted with 1/k after accumulation)")
    speed_weight: bool = param(True, "weight path samples by the path speed |rho'| (uneven spatial spacing)")
    occlusion: bool = param(True, "check swept-line samples against the content's own motion (needs PairMotion.own_*)")
    # path sample spacing in render-grid px; None: max(1, diagonal / 720), so N depends on the relative
    # path length only and the cost grows linearly with the pixel count
    step: float | None = param(None, "path sample spacing in render px (default: max(1, diagonal / 720))")
    n_max: int = param(33, "most samples per path")

    def __post_init__(self) -> None:
        check(self.soft_gamma in (True, False, "auto"), "soft-gamma", self.soft_gamma, "expected on, off or auto")
        check_range("k", self.k, 0.0, lo_open=True)
        if self.step is not None:
            check_range("step", self.step, 0.0, lo_open=True)
        check(isinstance(self.n_max, int) and self.n_max >= 2, "n_max", self.n_max, "must be an integer >= 2")


def render_blur(frames: list[torch.Tensor], motions: list[PairMotion], cfg: RenderConfig = RenderConfig(), encoded: bool = False) -> torch.Tensor:
    """Accumulated motion blur of K + 1 aligned linear frames [3, H, W] with K PairMotion on the same grid.

    2K passes: for pair k, frame k along its line/spline towards frame k+1's time and frame k+1 back
    towards frame k's, each weighted by its W map; soft gamma (k, then 1/k) around the accumulation.
    encoded: the frames are already soft-gamma encoded with cfg.k (the pipeline encodes at full
    resolution before downsampling); only the inverse is applied. Returns linear [3, H, W]."""
    if len(frames) != len(motions) + 1:
        raise ValueError(f"render_blur: {len(frames)} frames need {len(frames) - 1} pair motions, got {len(motions)}")
    imgs = [soft_gamma(f, cfg.k) if cfg.soft_gamma and not encoded else f for f in frames]
    tangents = frame_tangents(motions) if cfg.spline else None
    num = torch.zeros_like(frames[0])
    den = torch.zeros_like(frames[0][:1])
    h, w = frames[0].shape[-2:]
    step = cfg.step if cfg.step is not None else max(1.0, math.hypot(h, w) / 720.0)
    # paths shorter than one sample step keep the pixel (sub-step blur; the compositing keeps such
    # nearly static pixels sharp anyway) -- also resolution-relative, so the cost stays linear
    kw = dict(ramp=cfg.ramp, speed_weight=cfg.speed_weight, step=step, n_max=cfg.n_max, min_length=max(0.5, 0.5 * step))
    x = pixel_grid(*motions[0].delta_a.shape[-2:], motions[0].delta_a.device) if tangents is not None else None  # spline end points
    for k, m in enumerate(motions):
        for img, delta, own, wmap, i, j in ((imgs[k], m.delta_a, m.own_a, m.weight_a, k, k + 1), (imgs[k + 1], m.delta_b, m.own_b, m.weight_b, k + 1, k)):
            kw["own"] = own if cfg.occlusion else None
            if tangents is None:
                acc = accumulate_pass(img, delta, **kw)
            else:
                # gather tangents: minus the motion tangent at this frame (forward pass) / plus it (backward)
                sign = -1.0 if j > i else 1.0
                mu0 = sign * tangents[i]
                mu1 = sign * bilinear(tangents[j], x + delta)
                acc = accumulate_pass(img, delta, mu0, mu1, **kw)
            num += wmap * acc
            den += wmap
    out = num / den.clamp(min=1e-12)
    return soft_gamma(out, 1.0 / cfg.k) if cfg.soft_gamma else out
