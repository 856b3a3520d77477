"""Image metrics shared by systems (longexp, gsir, t2i): PSNR and SSIM on [0, 1] images (SSIM also as a
differentiable map, the 3DGS / GS-IR D-SSIM loss)."""
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


def gaussian_window_1d(size: int, sigma: float, device=None, dtype=torch.float64) -> torch.Tensor:
    """[size] normalised Gaussian weights, centred (the separable SSIM window)."""
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(pred: torch.Tensor, target: torch.Tensor, *, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5,
             padding: str = "same") -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03), per channel,
    differentiable, in the inputs' dtype. pred, target: [C, H, W] or [B, C, H, W] tensors.

    padding "same": zero padding, [B, C, H, W] out (3DGS's utils/loss_utils.ssim, the training loss);
    "valid": only windows inside the image, [B, C, H - 10, W - 10] (the metric `ssim`). The separable
    window runs as two 1-D convolutions over the five statistics at once (the 2-D window's values)."""
    if padding not in ("same", "valid"):
        raise ValueError(f"ssim_map padding {padding!r}: expected 'same' or 'valid'")
    p = pred[None] if pred.dim() == 3 else pred
    t = target[None] if target.dim() == 3 else target
    c = p.shape[1]
    g = gaussian_window_1d(window_size, sigma, p.device, p.dtype)
    k = 5 * c
    pad = window_size // 2 if padding == "same" else 0
    stats = torch.cat([p, t, p * p, t * t, p * t], 1)
    stats = torch.nn.functional.conv2d(stats, g.reshape(1, 1, 1, -1).expand(k, 1, 1, window_size), padding=(0, pad), groups=k)
    stats = torch.nn.functional.conv2d(stats, g.reshape(1, 1, -1, 1).expand(k, 1, window_size, 1), padding=(pad, 0), groups=k)
    mu1, mu2, e11, e22, e12 = stats.split(c, 1)
    s11, s22, s12 = e11 - mu1**2, e22 - mu2**2, e12 - mu1 * mu2
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))


def ssim(pred, target, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM as a number: `ssim_map` in float64 over the windows inside the image ("valid").
    pred, target: [H, W, C] NumPy or [C, H, W] / [B, C, H, W] tensors in [0, data_range]."""
    return float(ssim_map(_as_bchw(pred), _as_bchw(target), data_range=data_range, window_size=window_size, sigma=sigma,
                          padding="valid").mean())
