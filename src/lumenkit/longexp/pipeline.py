"""The long-exposure run: align -> select frames -> predict motion -> render blur -> composite.

`prepare` does everything that does not depend on the rendering switches (so the evaluation renders
every ablation from one alignment and one set of flows); `finish` renders and composites.
All processing is in linear light; frames come in sRGB-encoded [H, W, 3] float in [0, 1].
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch

from lumenkit.common.config import check, check_choice, check_range, param
from lumenkit.common.images import LDR_SUFFIXES, linear_to_srgb, srgb_to_linear, write_image
from lumenkit.longexp import composite as comp
from lumenkit.longexp.align import Alignment, align_burst, to_gray8
from lumenkit.longexp.motion import MotionPredictor, OpticalFlowPredictor, PairMotion, flow_to_color, predict_all
from lumenkit.longexp.render import RenderConfig, render_blur, soft_gamma


@dataclass
class LongExpConfig:
    """One run (`lumenkit longexp run`). Defaults follow the paper (half-resolution blur, a = 0.16, b = 0.32, k = 3)."""

    mode: Literal["foreground", "background"] = param(
        "foreground", "foreground blur (tripod look: moving things blurred) or background blur (panning: subject sharp)")
    # seed frame selection (98th pct -> 30 % / 80th pct -> 2.8 % of the diagonal)
    select_frames: bool = param(True, "seed frame selection (stop adding frames once the motion target is reached)", flag="select")
    analysis_long_side: int = param(640, "KLT / alignment resolution (long side, px)")
    flow_long_side: int = param(480, "motion prediction resolution (long side, px)")
    render_scale: float = param(0.5, "blur rendering scale (the paper: half resolution)")
    render: RenderConfig = field(default_factory=lambda: RenderConfig(soft_gamma="auto"))
    composite: bool = param(True, "composite the blur with the sharp exposure (M_flow mask)")
    a: float = param(comp.ALPHA, "M_flow lower threshold a (x |F|_ref)")
    b: float = param(comp.BETA, "M_flow upper threshold b (x |F|_ref)")
    ref_percentile: float = param(comp.REF_PERCENTILE, "percentile of |F| taken as |F|_ref")
    merge_sharp: bool = param(True, "denoise the sharp frame with agreeing aligned frames")
    # also require blur != sharp for M (our addition, see composite.change_mask); None: foreground
    # mode only (in background blur nearly everything moves and flat background must keep the blur)
    change_mask: bool | None = param(None, "require blur != sharp for the mask (None: foreground mode only)", cli=False)
    gain: float = param(1.0, "exposure gain on the linear result (default 1, or scene.json's gain for synthetic bursts)")

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, ("foreground", "background"))
        check(isinstance(self.analysis_long_side, int) and self.analysis_long_side >= 32, "analysis_long_side", self.analysis_long_side, "must be an integer >= 32")
        check(isinstance(self.flow_long_side, int) and self.flow_long_side >= 16, "flow_long_side", self.flow_long_side, "must be an integer >= 16")
        check_range("render_scale", self.render_scale, 0.0, 1.0, lo_open=True)
        check_range("a", self.a, 0.0)
        check_range("b", self.b, 0.0)
        check(self.b > self.a, "b", self.b, f"must be > --a {self.a}")
        check_range("ref_percentile", self.ref_percentile, 0.0, 100.0, lo_open=True)
        check_range("gain", self.gain, 0.0, lo_open=True)
        check(isinstance(self.render, RenderConfig), "render", self.render, "must be a RenderConfig")


@dataclass
class RunConfig:
    """What `lumenkit longexp run` writes and how it reads and computes (the method is LongExpConfig)."""

    out: Path = param(help="output image (.png/.tif for 16-bit, .jpg)", short="-o")
    bit_depth: Literal[8, 16] = param(8, "output bit depth (16 needs .png or .tif)", flag="bit-depth")
    save_intermediates: bool = param(False, "write masks, flows and the half-res blur beside the output", flag="save-intermediates")
    max_frames: int | None = param(None, "read at most this many frames of the burst", flag="max-frames")
    threads: int = param(0, "torch threads (0: torch's default)")

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        check_choice("bit-depth", self.bit_depth, (8, 16))
        suffixes = (".png", ".tif", ".tiff") if self.bit_depth == 16 else LDR_SUFFIXES
        check(self.out.suffix.lower() in suffixes, "out", str(self.out),
              f"{self.bit_depth}-bit output needs one of {', '.join(suffixes)}")
        if self.max_frames is not None:
            check(isinstance(self.max_frames, int) and self.max_frames >= 2, "max-frames", self.max_frames, "must be an integer >= 2")
        check(isinstance(self.threads, int) and self.threads >= 0, "threads", self.threads, "must be an integer >= 0 (0: torch's default)")


@dataclass
class Prepared:
    frames: list[np.ndarray]  # sRGB [H, W, 3] used frames (full resolution, unaligned)
    homographies: list[np.ndarray]  # full-resolution frame i -> base
    alignment: Alignment
    render_frames: list[torch.Tensor]  # aligned linear [3, h, w] at render resolution
    motions: list[PairMotion]  # at render resolution
    sharp_index: int
    sharp: np.ndarray  # aligned linear [H, W, 3] regular exposure (full resolution)
    analysis_scale: float
    timings: dict = field(default_factory=dict)
    # soft-gamma encoded render-resolution frames per k (eq. 9 applied at full resolution, then
    # downsampled), built on demand by soft_gamma_frames
    encoded_frames: dict = field(default_factory=dict)

    def soft_gamma_frames(self, k: float) -> list[torch.Tensor]:
        """Aligned render-resolution frames [3, h, w] encoded with soft gamma k (cached)."""
        if k not in self.encoded_frames:
            size = tuple(self.render_frames[0].shape[-2:])
            dev = self.render_frames[0].device
            self.encoded_frames[k] = [torch.from_numpy(half_res_buffers(f, Hf, size, k, None)[1]).to(dev) for f, Hf in zip(self.frames, self.homographies)]
        return self.encoded_frames[k]


@dataclass
class Result:
    image: np.ndarray  # linear [H, W, 3] (after gain), not clipped
    frames_used: int
    sharp_index: int
    unaligned: list = field(default_factory=list)  # frames whose (subject) alignment failed
    intermediates: dict = field(default_factory=dict)  # name -> [h, w, C] float image (sRGB for display)
    timings: dict = field(default_factory=dict)
    soft_gamma: bool = False  # whether eq. 9 was applied (resolved from "auto")


_LUT = None


def _linear_lut() -> np.ndarray:
    """uint16 sRGB code -> linear float32 [65536] (built once)."""
    global _LUT
    if _LUT is None:
        _LUT = srgb_to_linear(np.arange(65536, dtype=np.float32) / 65535.0).astype(np.float32)
    return _LUT


def to_linear(img: np.ndarray) -> np.ndarray:
    """sRGB [0, 1] (float, or uint16 codes) -> linear float32 via a 16-bit lookup table (exact for
    8/16-bit inputs, fast at 12 MP)."""
    idx = img if img.dtype == np.uint16 else to_u16(img)
    return _linear_lut()[idx]


def to_u16(img: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint16 codes (cv2.convertScaleAbs-like, saturating)."""
    return np.clip(img * 65535.0 + 0.5, 0, 65535).astype(np.uint16)


def warp_linear(frame: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Full-resolution sRGB frame -> aligned linear float32: warp the 16-bit codes (half the memory
    traffic of float32), then the lookup table."""
    return to_linear(warp(to_u16(frame), H))


def _scale_h(H: np.ndarray, s: float) -> np.ndarray:
    S = np.diag([s, s, 1.0])
    return S @ H @ np.linalg.inv(S)


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    interp = cv2.INTER_AREA if h < img.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def _size(h: int, w: int, s: float) -> tuple[int, int]:
    return max(8, int(round(h * s))), max(8, int(round(w * s)))


def warp(img: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Warp into the base frame's space (H maps this frame -> base), border replicated."""
    h, w = img.shape[:2]
    return cv2.warpPerspective(img, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def half_res_buffers(frame: np.ndarray, H: np.ndarray, size: tuple[int, int], k: float | None, flow_size: tuple[int, int] | None):
    """The aligned low-resolution buffers of one full-resolution sRGB frame [H, W, 3].

    Linearise at full resolution, area-downsample in linear light (a box filter on radiance, so a small
    clipped light keeps its energy), then warp into the base frame at the low resolution (homography H:
    full-resolution frame -> base). With k, also the soft-gamma buffer of seed eq. 9: gamma_s(., k)
    applied to the full-resolution linear frame *before* downsampling (the downsampling is an average
    like the blur itself, and a clipped highlight that covers a fraction of a half-resolution pixel must
    keep its emphasis). With flow_size (different from size), the linear frame for optical flow at that
    size. Returns (linear [3, h, w], encoded [3, h, w] or None, flow [3, hf, wf] or None) float32."""
    Ww = frame.shape[1]
    codes = frame if frame.dtype == np.uint16 else to_u16(frame)
    lin = to_linear(codes)

    def low(img: np.ndarray, sz: tuple[int, int]) -> np.ndarray:
        out = warp(_resize(img, sz), _scale_h(H, sz[1] / Ww))
        return np.ascontiguousarray(out.transpose(2, 0, 1))

    lin_r = low(lin, size)
    flow = low(lin, flow_size) if flow_size is not None and tuple(flow_size) != tuple(size) else None
    enc = None
    if k is not None:
        del lin
        enc = low(_soft_gamma_lut(k)[codes], size)
    return lin_r, enc, flow


_SG_LUTS: dict = {}


def _soft_gamma_lut(k: float) -> np.ndarray:
    """uint16 sRGB code -> soft_gamma(linear, k) float32 (exact for 8/16-bit inputs, one gather at 12 MP)."""
    if k not in _SG_LUTS:
        _SG_LUTS[k] = soft_gamma(torch.from_numpy(_linear_lut()), k).numpy()  # soft_gamma clamps to [0, 1]
    return _SG_LUTS[k]


CLIP_LEVEL = 0.98  # linear sensor value (before gain) counted as clipped
SOFT_GAMMA_MIN_FRACTION = 1e-4  # share of render-grid pixels with moving clipped content that turns "auto" on


def any_clipped(frames: list[np.ndarray]) -> bool:
    """Whether some pixel of the sRGB frames (float [0, 1] or uint16 codes) reaches CLIP_LEVEL in linear light."""
    thr = float(linear_to_srgb(np.array([CLIP_LEVEL], np.float32))[0])
    return any(float(f.max()) >= (thr * 65535.0 if f.dtype == np.uint16 else thr) for f in frames)


def prepare(frames: list[np.ndarray], cfg: LongExpConfig, predictor: MotionPredictor | None = None, device: torch.device | str = "cpu") -> Prepared:
    """Alignment, frame selection, aligned render-resolution frames, motion and the sharp exposure."""
    t0 = time.perf_counter()
    tm: dict = {}
    H, W = frames[0].shape[:2]
    s_an = min(1.0, cfg.analysis_long_side / max(H, W))
    an_size = _size(H, W, s_an)
    grays = [to_gray8(_resize(f, an_size)) for f in frames]
    al = align_burst(grays, cfg.mode, select=cfg.select_frames)
    n = al.n_used
    frames = frames[:n]
    hs_full = [_scale_h(Hh, 1.0 / s_an) for Hh in al.homographies[:n]]
    tm["align_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    r_size = _size(H, W, cfg.render_scale)
    s_fl = min(1.0, cfg.flow_long_side / max(H, W))
    fl_size = _size(H, W, s_fl)
    # soft-gamma buffers in the same pass when they may be used: "auto" can only switch eq. 9 on for a
    # burst that clips somewhere (finish decides; Prepared.soft_gamma_frames builds them if missing)
    sg = cfg.render.soft_gamma
    k_sg = cfg.render.k if sg is True or (sg == "auto" and any_clipped(frames)) else None
    render_frames, encoded, flow_frames = [], [], []
    for f, Hf in zip(frames, hs_full):
        lin, enc, fl = half_res_buffers(f, Hf, r_size, k_sg, fl_size)
        render_frames.append(torch.from_numpy(lin).to(device))
        if enc is not None:
            encoded.append(torch.from_numpy(enc).to(device))
        flow_frames.append(torch.from_numpy(fl).to(device) if fl is not None else render_frames[-1])
    predictor = predictor or OpticalFlowPredictor()
    motions = [m.resized(r_size) for m in predict_all(flow_frames, predictor)]
    del flow_frames
    tm["motion_s"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    an_aligned = [warp(g, _scale_h(Hf, s_an)) for g, Hf in zip(grays[:n], hs_full)]
    sharp_index = int(np.argmax([comp.sharpness(g) for g in an_aligned]))
    sharp = warp_linear(frames[sharp_index], hs_full[sharp_index])
    if cfg.merge_sharp and n > 1:
        idx = [i for i in range(n) if i != sharp_index]
        small = [f.permute(1, 2, 0).cpu().numpy() for f in render_frames]
        others = (warp_linear(frames[i], hs_full[i]) for i in idx)
        sharp = comp.robust_merge(sharp, others, small[sharp_index], [small[i] for i in idx])
    tm["sharp_s"] = time.perf_counter() - t2
    prep = Prepared(frames, hs_full, al, render_frames, motions, sharp_index, sharp.astype(np.float32), s_an, tm)
    if k_sg is not None:
        prep.encoded_frames[k_sg] = encoded
    return prep


def moving_clipped_fraction(prep: Prepared, min_motion_px: float = 1.0) -> float:
    """Share of render-grid pixels that are clipped (some channel >= CLIP_LEVEL, linear, before gain)
    in some aligned frame and move by more than min_motion_px (render px) in some pair: the saturated
    highlights whose trails soft gamma (eq. 9) exists to keep bright."""
    clipped = torch.stack([f.amax(0) for f in prep.render_frames]).amax(0) >= CLIP_LEVEL
    moving = torch.stack([m.magnitude for m in prep.motions]).amax(0) > min_motion_px
    return float((clipped & moving).float().mean())


def soft_gamma_needed(prep: Prepared, cfg: LongExpConfig) -> bool:
    """Resolve cfg.render.soft_gamma: True / False as given; "auto" = on iff moving_clipped_fraction
    >= SOFT_GAMMA_MIN_FRACTION. Soft gamma averages in a non-linear space: it gives clipped lights their
    energy back, but on a burst without clipping it only brightens every trail of a bright object over
    a darker background compared with the linear-light exposure (measured in benchmarks/longexp.py)."""
    sg = cfg.render.soft_gamma
    if sg == "auto":
        return moving_clipped_fraction(prep) >= SOFT_GAMMA_MIN_FRACTION
    return bool(sg)


def finish(prep: Prepared, cfg: LongExpConfig, intermediates: bool = False) -> Result:
    """Render the blur (cfg.render) and composite it with the sharp exposure at full resolution."""
    t0 = time.perf_counter()
    H, W = prep.sharp.shape[:2]
    use_sg = soft_gamma_needed(prep, cfg)
    rcfg = replace(cfg.render, soft_gamma=use_sg)
    if use_sg:  # buffers encoded at full resolution before downsampling (eq. 9)
        blur_r = render_blur(prep.soft_gamma_frames(rcfg.k), prep.motions, rcfg, encoded=True)
    else:
        blur_r = render_blur(prep.render_frames, prep.motions, rcfg)
    blur_r = blur_r.permute(1, 2, 0).cpu().numpy() * cfg.gain
    blur = _resize(blur_r, (H, W))
    tm = dict(prep.timings, render_s=time.perf_counter() - t0)
    t1 = time.perf_counter()
    inter: dict = {}
    if cfg.composite:
        mag = torch.stack([m.magnitude for m in prep.motions]).amax(0).cpu().numpy()
        s_m = min(1.0, cfg.flow_long_side / max(mag.shape))  # masks at the (low) motion resolution
        mag = _resize(mag, _size(*mag.shape, s_m))
        mraw = comp.m_flow(mag, cfg.a, cfg.b, cfg.ref_percentile)
        rh, rw = mraw.shape
        guide = np.clip(linear_to_srgb(_resize(prep.sharp * cfg.gain, (rh, rw))), 0, 1)
        if cfg.change_mask or (cfg.change_mask is None and cfg.mode == "foreground"):
            blur_m = np.clip(linear_to_srgb(np.clip(_resize(blur_r, (rh, rw)), 0, 1)), 0, 1)
            mraw = mraw * comp.change_mask(blur_m, guide)
        mref = comp.refine_mask(mraw, guide)
        s = rw / (W * prep.analysis_scale)
        faces = [tuple(int(v * s) for v in f) for f in prep.alignment.faces]
        ref = float(np.percentile(mag, cfg.ref_percentile))
        mref = comp.face_protection(mref, faces, mag, cfg.a * max(ref, 1e-6))
        mask = _resize(mref, (H, W))
        out = comp.blend(blur, prep.sharp * cfg.gain, mask)
        if intermediates:
            inter.update(m_flow=mraw, mask_refined=mref, subject=prep.alignment.subject)
    else:
        out = blur
    tm["composite_s"] = time.perf_counter() - t1
    if intermediates:
        inter["blur_halfres"] = np.clip(linear_to_srgb(blur_r), 0, 1)
        inter["sharp"] = np.clip(linear_to_srgb(prep.sharp * cfg.gain), 0, 1)
        for k, m in enumerate(prep.motions):
            inter[f"flow_{k:02d}"] = flow_to_color(m.delta_a)
    return Result(out, len(prep.render_frames), prep.sharp_index, list(prep.alignment.unaligned), inter, tm, use_sg)


def run_longexp(frames: list[np.ndarray], cfg: LongExpConfig | None = None, predictor: MotionPredictor | None = None, intermediates: bool = False, device="cpu") -> Result:
    """The whole pipeline on sRGB frames [H, W, 3]. Returns a linear full-resolution Result."""
    cfg = cfg or LongExpConfig()
    return finish(prepare(frames, cfg, predictor, device), cfg, intermediates)


def naive_average(frames: list[np.ndarray], gain: float = 1.0) -> np.ndarray:
    """Baseline: mean of the unaligned burst in linear light. [H, W, 3]"""
    return np.mean([to_linear(f) for f in frames], axis=0) * gain


def aligned_average(prep: Prepared, gain: float = 1.0) -> np.ndarray:
    """Baseline: mean of the aligned frames in linear light at full resolution. [H, W, 3]"""
    acc = np.zeros_like(prep.sharp)
    for f, Hf in zip(prep.frames, prep.homographies):
        acc += warp_linear(f, Hf)
    return acc / len(prep.frames) * gain


def save_result(res: Result, out: str | Path, bit_depth: int = 8) -> Path:
    """Write the sRGB result (8 or 16 bit) and, if present, the intermediates beside it."""
    out = Path(out)
    check_choice("bit-depth", bit_depth, (8, 16))
    meta = {"lumenkit": "longexp", "frames_used": str(res.frames_used), "sharp_frame": str(res.sharp_index)}
    write_image(out, np.clip(linear_to_srgb(np.clip(res.image, 0, 1)), 0, 1), bit_depth=bit_depth, metadata=meta)
    if res.intermediates:
        idir = out.with_name(out.stem + "_intermediates")
        for name, img in res.intermediates.items():
            write_image(idir / f"{name}.png", np.clip(img, 0, 1), bit_depth=8)
    return out


def with_render(cfg: LongExpConfig, **kw) -> LongExpConfig:
    """A copy of cfg with some RenderConfig fields replaced."""
    return replace(cfg, render=replace(cfg.render, **kw))
