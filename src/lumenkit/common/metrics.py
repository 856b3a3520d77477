"""Image metrics shared by systems (longexp, gsir, t2i): PSNR and SSIM on [0, 1] images."""
from __future__ import annotations

import numpy as np
import torch


def _as_bchw(x) -> torch.Tensor:
    """[H, W, C] NumPy or [C, H, W] / [B, C, H, W] tensor -> float64 [B, C, H, W] tensor."""
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
        t = t[..., None] if t.ndim == 2 else t
        t = t.permute(2, 0, 1)
    else:
        t = x.detach().to(torch.float64)
    return t[None] if t.ndim == 3 else t


def psnr(pred, target, data_range: float = 1.0, mask=None) -> float:
    """Peak signal-to-noise ratio in dB, averaged over all pixels (or those where mask is true)."""
    p, t = _as_bchw(pred), _as_bchw(target)
    err = (p - t) ** 2
    if mask is not None:
        m = _as_bchw(mask).to(torch.bool).expand_as(err)
        mse = err[m].mean()
    else:
        mse = err.mean()
    return float(10.0 * torch.log10(data_range**2 / mse.clamp(min=1e-20)))


def ssim(pred, target, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03), per channel."""
    p, t = _as_bchw(pred), _as_bchw(target)
    c = p.shape[1]
    coords = torch.arange(window_size, dtype=torch.float64) - (window_size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :]).expand(c, 1, window_size, window_size)

    def filt(x):
        return torch.nn.functional.conv2d(x, win, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_p, mu_t = filt(p), filt(t)
    var_p = filt(p * p) - mu_p**2
    var_t = filt(t * t) - mu_t**2
    cov = filt(p * t) - mu_p * mu_t
    s = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return float(s.mean())
