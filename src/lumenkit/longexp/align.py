"""Subject, tracking, alignment and frame selection (Tabellion et al. 2023, sections on subject
detection, alignment and frame selection).

All positions are in pixels of the (low-resolution) analysis images; homographies map frame i -> the
base frame (frame 0). Track lengths are in percent of the image diagonal, in the base frame's space.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import cv2
import numpy as np

from lumenkit.common.errors import LumenkitError

FOREGROUND_SELECTION = (98.0, 30.0)  # (percentile, target % of diagonal): seed, foreground blur
BACKGROUND_SELECTION = (80.0, 2.8)  # seed, background blur


def to_gray8(frame: np.ndarray, normalize: bool = True) -> np.ndarray:
    """[H, W, 3] float sRGB in [0, 1] -> uint8 [H, W] grey, stretched so its 99th percentile is 1
    (dark, under-exposed bursts still give trackable contrast)."""
    g = frame[..., :3].mean(-1) if frame.ndim == 3 else frame
    if normalize:
        g = g / max(float(np.percentile(g, 99)), 0.05)
    return (np.clip(g, 0, 1) * 255 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------- subject
def detect_faces(gray: np.ndarray, min_size_frac: float = 0.06) -> list[tuple[int, int, int, int]]:
    """Frontal faces (x, y, w, h) with OpenCV's shipped Haar cascade (cv2.data.haarcascades)."""
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise LumenkitError(f"{path}: OpenCV's Haar cascade could not be loaded")
    m = max(12, int(min_size_frac * min(gray.shape)))
    faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(m, m))
    return [tuple(int(v) for v in f) for f in (faces if len(faces) else [])]


def saliency_map(gray: np.ndarray) -> np.ndarray:
    """Spectral-residual saliency (Hou & Zhang 2007, OpenCV contrib) in [0, 1], [H, W] float32."""
    sal = cv2.saliency.StaticSaliencySpectralResidual_create()
    ok, s = sal.computeSaliency(gray)
    if not ok:
        return np.full(gray.shape, 0.5, np.float32)
    s = cv2.GaussianBlur(s.astype(np.float32), (0, 0), max(1.0, 0.02 * min(gray.shape)))
    return (s - s.min()) / max(float(s.max() - s.min()), 1e-6)


def subject_mask(gray0: np.ndarray, tracks: np.ndarray) -> np.ndarray:
    """Subject mask [H, W] float in [0, 1] from motion and saliency.

    Motion: tracks (from track_klt) that are outliers of the dominant (background) homography between
    the base frame and the last frame where they live are the motion-distinct subject; their base
    positions are splatted, blurred, weighted by saliency and the largest blob is kept. Without enough
    motion-distinct tracks, a centred saliency blob is used.
    """
    h, w = gray0.shape
    diag = float(np.hypot(h, w))
    sal = saliency_map(gray0)
    pts = _subject_points(tracks)
    heat = np.zeros((h, w), np.float32)
    if pts is not None and len(pts) >= 6:
        for x, y in pts:
            cv2.circle(heat, (int(x), int(y)), max(2, int(0.03 * diag)), 1.0, -1)
        heat = cv2.GaussianBlur(heat, (0, 0), 0.02 * diag)
        heat = heat / max(float(heat.max()), 1e-6) * (0.5 + 0.5 * sal)
    else:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        centre = np.exp(-(((xx - w / 2) / (0.3 * w)) ** 2 + ((yy - h / 2) / (0.3 * h)) ** 2))
        heat = sal * centre
    binm = (heat > 0.35 * float(heat.max())).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(binm)
    if n > 1:
        big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        binm = (lab == big).astype(np.uint8)
    cnts, _ = cv2.findContours(binm, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros((h, w), np.uint8)
    if cnts:
        cv2.fillPoly(out, [cv2.convexHull(np.concatenate(cnts))], 1)
    return out.astype(np.float32)


def _subject_points(tracks: np.ndarray) -> np.ndarray | None:
    """Base-frame positions of the tracks that move coherently but differently from the dominant motion.

    Between the base frame and frame j (the latest frame where at least half the tracks live), a RANSAC
    homography explains the dominant motion; the outliers' own RANSAC homography picks the coherent
    second motion (the subject), whose inliers are returned."""
    n, f = tracks.shape[:2]
    if f < 2:
        return None
    alive = ~np.isnan(tracks[..., 0])
    counts = alive.sum(0)
    j = max([i for i in range(1, f) if counts[i] >= 0.5 * counts[1]] or [1])
    ok = alive[:, j]
    if ok.sum() < 16:
        return None
    p0, pj = tracks[ok, 0], tracks[ok, j]
    H, inl = cv2.findHomography(pj, p0, cv2.RANSAC, 2.0)
    if H is None:
        return None
    out = inl.ravel() == 0
    if out.sum() < 8:
        return None
    H2, inl2 = cv2.findHomography(pj[out], p0[out], cv2.RANSAC, 2.0)
    if H2 is None:
        return None
    subj = p0[out][inl2.ravel() == 1]
    return subj if len(subj) >= 6 else None


# ---------------------------------------------------------------------------------------- tracking
def lk_fb(g0: np.ndarray, g1: np.ndarray, pts: np.ndarray, fb_thresh: float, win: int = 21, levels=(4, 1)) -> tuple[np.ndarray, np.ndarray]:
    """Pyramidal LK g0 -> g1 for pts [n, 1, 2] with a forward-backward check, trying each pyramid
    depth in `levels` for the points still failing (deep pyramids follow large motion but let a
    fast background drag a slow subject's coarse-level estimate; shallow ones do the opposite).
    Returns (positions [n, 2], ok [n] bool)."""
    out = np.full((len(pts), 2), np.nan, np.float32)
    ok = np.zeros(len(pts), bool)
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
    h, w = g0.shape
    for lv in levels:
        todo = np.flatnonzero(~ok)
        if len(todo) == 0:
            break
        p = pts[todo]
        nxt, st, _ = cv2.calcOpticalFlowPyrLK(g0, g1, p, None, winSize=(win, win), maxLevel=lv, criteria=crit)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(g1, g0, nxt, None, winSize=(win, win), maxLevel=lv, criteria=crit)
        fb = np.linalg.norm((back - p).reshape(-1, 2), axis=1)
        q = nxt.reshape(-1, 2)
        inside = (q[:, 0] >= 0) & (q[:, 0] < w) & (q[:, 1] >= 0) & (q[:, 1] < h)
        good = (st.ravel() == 1) & (st2.ravel() == 1) & (fb < fb_thresh) & inside
        out[todo[good]] = q[good]
        ok[todo[good]] = True
    return out, ok


def track_klt(grays: list[np.ndarray], max_corners: int = 1000, fb_thresh: float = 1.0, quality: float = 0.005) -> np.ndarray:
    """KLT tracks (goodFeaturesToTrack + calcOpticalFlowPyrLK) chained frame to frame.

    Each step is forward-backward checked (|p - back(forward(p))| < fb_thresh px); a track that fails
    is lost from then on. Returns float32 [n_tracks, n_frames, 2] (x, y), NaN where lost.
    """
    h, w = grays[0].shape
    min_dist = max(3, int(0.012 * np.hypot(h, w)))
    p0 = cv2.goodFeaturesToTrack(grays[0], maxCorners=max_corners, qualityLevel=quality, minDistance=min_dist, blockSize=5)
    if p0 is None or len(p0) < 8:
        raise LumenkitError("burst: too few trackable features in the base frame (a flat or black image?)")
    n, f = len(p0), len(grays)
    tracks = np.full((n, f, 2), np.nan, np.float32)
    tracks[:, 0] = p0.reshape(-1, 2)
    alive = np.ones(n, bool)
    for i in range(1, f):
        idx = np.flatnonzero(alive)
        if len(idx) == 0:
            break
        prev = tracks[idx, i - 1].reshape(-1, 1, 2)
        nxt, good = lk_fb(grays[i - 1], grays[i], prev, fb_thresh)
        tracks[idx[good], i] = nxt[good]
        alive[idx[~good]] = False
    return tracks


def track_direct(grays: list[np.ndarray], pts: np.ndarray, fb_thresh: float = 1.0, win: int = 21) -> np.ndarray:
    """Track base-frame points pts [n, 2] directly into every frame (pyramidal LK, forward-backward
    checked). Returns [n, F, 2], NaN where the check fails. Used for the alignment homographies."""
    n, f = len(pts), len(grays)
    out = np.full((n, f, 2), np.nan, np.float32)
    out[:, 0] = pts
    p0 = pts.reshape(-1, 1, 2).astype(np.float32)
    for i in range(1, f):
        nxt, good = lk_fb(grays[0], grays[i], p0, fb_thresh, win=win, levels=(5, 2))
        out[good, i] = nxt[good]
    return out


def fit_homographies(tracks: np.ndarray, use: np.ndarray | None = None, thresh: float = 1.5, failed: list[int] | None = None) -> list[np.ndarray]:
    """RANSAC homography frame i -> base frame for every frame, from the tracks selected by `use`.

    A frame with fewer than 8 usable tracks raises LumenkitError, unless a `failed` list is given:
    then the frame keeps the identity and its index is appended to `failed`.
    """
    sel = np.ones(len(tracks), bool) if use is None else use
    hs = [np.eye(3)]
    for i in range(1, tracks.shape[1]):
        ok = sel & ~np.isnan(tracks[:, i, 0])
        H = None
        if ok.sum() >= 8:
            H, _ = cv2.findHomography(tracks[ok, i], tracks[ok, 0], cv2.RANSAC, thresh, maxIters=2000, confidence=0.999)
        if H is None:
            if failed is None:
                raise LumenkitError(f"burst frame {i}: only {int(ok.sum())} tracked features to align on (need 8); frames too different?")
            failed.append(i)
            H = np.eye(3)
        hs.append(H)
    return hs


def transform_points(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to [..., 2] points (NaN in, NaN out)."""
    p = np.concatenate([pts, np.ones(pts.shape[:-1] + (1,), pts.dtype)], -1) @ H.T
    return p[..., :2] / p[..., 2:3]


# ---------------------------------------------------------------------------------------- selection
def aligned_track_lengths(tracks: np.ndarray, homographies: list[np.ndarray], image_size: tuple[int, int]) -> np.ndarray:
    """Cumulative length of every track after transforming it into the base frame's space.

    tracks [n, F, 2]; image_size (h, w). Returns [n, F] percent of the image diagonal: entry j is the
    length of the track's aligned polyline from frame 0 to frame j (lost tracks stop growing).
    """
    aligned = np.stack([transform_points(H, tracks[:, i]) for i, H in enumerate(homographies)], 1)
    seg = np.linalg.norm(np.diff(aligned, axis=1), axis=-1)
    seg = np.nan_to_num(seg, nan=0.0)
    lengths = np.concatenate([np.zeros((len(tracks), 1)), np.cumsum(seg, axis=1)], 1)
    return 100.0 * lengths / float(np.hypot(*image_size))


def select_frames(lengths: np.ndarray, percentile: float, target: float) -> int:
    """Number of frames to use (seed's frame selection): add frames 0, 1, 2, ... and stop at the first
    frame j where the `percentile`-th percentile of the track lengths [n, F] (percent of diagonal)
    reaches `target`; returns j + 1, or F if never reached (at least 2)."""
    if lengths.size == 0:
        return lengths.shape[1] if lengths.ndim == 2 else 2
    pct = np.percentile(lengths, percentile, axis=0)
    hit = np.flatnonzero(pct >= target)
    return int(max(2, hit[0] + 1)) if len(hit) else int(lengths.shape[1])


@dataclass
class Alignment:
    """Result of align_burst. homographies map frame i -> base (analysis resolution)."""

    homographies: list[np.ndarray]
    tracks: np.ndarray  # [n, F, 2]
    lengths: np.ndarray  # [n, F] percent of diagonal
    n_used: int
    subject: np.ndarray  # [H, W] float mask (analysis res)
    faces: list[tuple[int, int, int, int]]
    unaligned: list[int] = field(default_factory=list)  # frames whose alignment failed (background mode)


def align_burst(grays: list[np.ndarray], mode: str = "foreground", select: bool = True) -> Alignment:
    """Track, align (background for foreground blur, subject for background blur) and select frames."""
    if mode not in ("foreground", "background"):
        raise LumenkitError(f"--mode {mode!r}: expected foreground or background")
    grays = [cv2.GaussianBlur(g, (0, 0), 0.8) for g in grays]  # tame sensor noise before KLT
    tracks = track_klt(grays)
    faces = detect_faces(grays[0])
    subj = subject_mask(grays[0], tracks)
    for x, y, fw, fh in faces:
        subj[y : y + fh, x : x + fw] = 1.0
    failed: list[int] = []
    if mode == "background":  # align on the subject: dense features inside its mask, tracked directly
        m8 = (subj > 0.5).astype(np.uint8) * 255
        pts = cv2.goodFeaturesToTrack(grays[0], maxCorners=400, qualityLevel=0.001, minDistance=3, blockSize=5, mask=m8)
        if pts is None or len(pts) < 8:
            raise LumenkitError("--mode background: could not find a subject to track (fewer than 8 features on it)")
        hs = fit_homographies(track_direct(grays, pts.reshape(-1, 2), fb_thresh=2.0, win=11), thresh=2.0, failed=failed)
        if failed:
            warnings.warn(f"--mode background: subject not tracked in frames {failed}; those frames are left unaligned", stacklevel=2)
    else:
        direct = track_direct(grays, tracks[:, 0])
        direct = np.where(np.isnan(direct), tracks, direct)  # chained tracks where direct LK failed
        hs = fit_homographies(direct)
    lengths = aligned_track_lengths(tracks, hs, grays[0].shape)
    pct, target = FOREGROUND_SELECTION if mode == "foreground" else BACKGROUND_SELECTION
    n_used = select_frames(lengths, pct, target) if select else len(grays)
    return Alignment(hs, tracks, lengths, n_used, subj, faces, failed)
