"""Synthetic data with ground truth: a 2-D Gaussian mixture and its exact diffusion oracle.

Under the forward process x_t = sqrt(a) x_0 + sqrt(1 - a) eps, a mixture sum_k w_k N(mu_k, S_k) stays a
mixture: q_t(x) = sum_k w_k N(x; sqrt(a) mu_k, a S_k + (1 - a) I). Its score is analytic, hence so is the
optimal eps-predictor eps*(x, t) = -sqrt(1 - a) grad log q_t(x) (and x0* = E[x_0 | x_t] by Tweedie,
v* = sqrt(a) eps* - sqrt(1 - a) x0*). Sampling with this oracle isolates the sampler's own error.

Also here: the sliced-Wasserstein distance and a mixture fit (EM started from the truth) to measure
samples against the mixture.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.diffusion.schedule import PARAMETERIZATIONS, NoiseSchedule

_LOG2PI = math.log(2 * math.pi)


def _inv_logdet_2x2(C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form inverse and log-determinant of [..., 2, 2] SPD matrices."""
    a, b, c, d = C[..., 0, 0], C[..., 0, 1], C[..., 1, 0], C[..., 1, 1]
    det = a * d - b * c
    inv = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / det[..., None, None]
    return inv, det.log()


@dataclass(frozen=True, eq=False)
class GaussianMixture2D:
    """weights [K], means [K, 2], covs [K, 2, 2]; float64 CPU tensors."""

    weights: torch.Tensor
    means: torch.Tensor
    covs: torch.Tensor

    def __post_init__(self) -> None:
        w = torch.as_tensor(self.weights, dtype=torch.float64)
        m = torch.as_tensor(self.means, dtype=torch.float64)
        c = torch.as_tensor(self.covs, dtype=torch.float64)
        K = w.shape[0]
        if w.dim() != 1 or m.shape != (K, 2) or c.shape != (K, 2, 2):
            raise LumenkitError(f"mixture needs weights [K], means [K, 2], covs [K, 2, 2]; got {tuple(w.shape)}, {tuple(m.shape)}, {tuple(c.shape)}")
        if (w < 0).any() or abs(float(w.sum()) - 1.0) > 1e-6:
            raise LumenkitError("mixture weights must be >= 0 and sum to 1")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "means", m)
        object.__setattr__(self, "covs", c)

    @property
    def K(self) -> int:
        return int(self.weights.shape[0])

    @classmethod
    def default(cls) -> "GaussianMixture2D":
        """Five well separated, anisotropic components on a ring of radius 1.2, unequal weights."""
        K = 5
        ang = torch.tensor([90 + 72 * k for k in range(K)], dtype=torch.float64) * math.pi / 180
        means = 1.2 * torch.stack([ang.cos(), ang.sin()], -1)
        weights = torch.tensor([0.32, 0.24, 0.2, 0.14, 0.10], dtype=torch.float64)
        s_major = torch.tensor([0.25, 0.18, 0.22, 0.15, 0.2], dtype=torch.float64)
        s_minor = torch.tensor([0.08, 0.12, 0.06, 0.15, 0.1], dtype=torch.float64)
        rot = torch.tensor([20, -40, 75, 0, 130], dtype=torch.float64) * math.pi / 180
        R = torch.stack([torch.stack([rot.cos(), -rot.sin()], -1), torch.stack([rot.sin(), rot.cos()], -1)], -2)
        D = torch.diag_embed(torch.stack([s_major**2, s_minor**2], -1))
        return cls(weights, means, R @ D @ R.transpose(-1, -2))

    def noised(self, a: float) -> "GaussianMixture2D":
        """The marginal q_t at alpha-bar a: means sqrt(a) mu_k, covs a S_k + (1 - a) I."""
        eye = torch.eye(2, dtype=torch.float64)
        return GaussianMixture2D(self.weights, math.sqrt(a) * self.means, a * self.covs + (1 - a) * eye)

    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False):
        """n draws [n, 2] float64 (and component labels [n])."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        L = torch.linalg.cholesky(self.covs)
        z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        x = self.means[labels] + (L[labels] @ z[..., None])[..., 0]
        return (x, labels) if return_labels else x

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x; mu_k, S_k), [N, K]."""
        x = x.double().cpu()
        inv, logdet = _inv_logdet_2x2(self.covs)
        d = x[:, None, :] - self.means[None]
        maha = torch.einsum("nki,kij,nkj->nk", d, inv, d)
        return self.weights.clamp_min(1e-300).log()[None] - 0.5 * (maha + logdet[None] + 2 * _LOG2PI)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self.component_log_probs(x), -1)

    def score(self, x: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
        """grad_x log q_t(x) at alpha-bar a (scalar, or [N] per row) for x [N, 2]; float64 [N, 2]."""
        x = x.double()
        a = torch.as_tensor(a, dtype=torch.float64, device=x.device).reshape(-1)
        w, mu, S = (v.to(x.device) for v in (self.weights, self.means, self.covs))
        eye = torch.eye(2, dtype=torch.float64, device=x.device)
        if a.numel() == 1:  # one noise level for all rows: K covariances only
            C = a * S + (1 - a) * eye  # [K, 2, 2]
            inv, logdet = _inv_logdet_2x2(C)
            d = x[:, None, :] - (a.sqrt() * mu)[None]  # [N, K, 2]
            Cd = torch.einsum("kij,nkj->nki", inv, d)
        else:
            C = a[:, None, None, None] * S[None] + (1 - a)[:, None, None, None] * eye
            inv, logdet = _inv_logdet_2x2(C)  # [N, K, 2, 2], [N, K]
            d = x[:, None, :] - a.sqrt()[:, None, None] * mu[None]
            Cd = (inv @ d[..., None])[..., 0]
        logp = w.clamp_min(1e-300).log() - 0.5 * ((d * Cd).sum(-1) + logdet)
        r = torch.softmax(logp, -1)
        return -(r[..., None] * Cd).sum(1)

    def projected_quantiles(self, dirs: torch.Tensor, q: torch.Tensor, grid: int = 4096) -> torch.Tensor:
        """Quantiles [len(q), P] of the 1-D projections <x, dir_p> of the mixture (a 1-D mixture with
        means <mu_k, d>, variances d^T S_k d), by inverting its exact CDF on a fine grid."""
        m = self.means @ dirs.T  # [K, P]
        s = torch.einsum("pi,kij,pj->kp", dirs, self.covs, dirs).sqrt()
        lo, hi = (m - 8 * s).min(0).values, (m + 8 * s).max(0).values
        u = torch.linspace(0, 1, grid, dtype=torch.float64)[:, None]
        xs = lo + (hi - lo) * u  # [G, P]
        cdf = (self.weights[:, None, None] * 0.5 * (1 + torch.erf((xs[None] - m[:, None]) / (s[:, None] * math.sqrt(2))))).sum(0)
        c = cdf.T.contiguous()  # [P, G], monotone per projection: batched inverse-CDF interpolation
        qq = q[None].expand(c.shape[0], -1).contiguous()
        idx = torch.searchsorted(c, qq).clamp(1, grid - 1)
        c0, c1 = c.gather(1, idx - 1), c.gather(1, idx)
        xt = xs.T.contiguous()
        x0, x1 = xt.gather(1, idx - 1), xt.gather(1, idx)
        f = ((qq - c0) / (c1 - c0).clamp_min(1e-300)).clamp(0, 1)
        return (x0 + f * (x1 - x0)).T


class MixtureOracle:
    """The exact denoiser of a GaussianMixture2D under a NoiseSchedule, as a sampler model:
    model(x [B, 2], t LongTensor [B], cond) -> eps* (or x0* / v* per `parameterization`), in x's dtype."""

    def __init__(self, mixture: GaussianMixture2D, schedule: NoiseSchedule, parameterization: str = "eps"):
        if parameterization not in PARAMETERIZATIONS:
            raise LumenkitError(f"parameterization {parameterization!r} unknown (expected eps, x0 or v)")
        self.mixture = mixture
        self.schedule = schedule
        self.parameterization = parameterization
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != 2:
            raise LumenkitError(f"the mixture oracle takes x [B, 2], got {tuple(x.shape)}")
        self.calls += 1
        a = self.schedule.buffer("alphas_cumprod", x.device, torch.float64)[t.long()]
        xd = x.double()
        same = bool((t == t[0]).all())  # one noise level (every sampler): the fast path of score()
        eps = -(1 - a).sqrt()[:, None] * self.mixture.score(xd, a[:1] if same else a)
        if self.parameterization == "eps":
            out = eps
        else:
            x0 = (xd - (1 - a).sqrt()[:, None] * eps) / a.sqrt()[:, None]
            out = x0 if self.parameterization == "x0" else a.sqrt()[:, None] * eps - (1 - a).sqrt()[:, None] * x0
        return out.to(x.dtype)


# ---------------------------------------------------------------------------------------------- metrics
def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_proj: int = 256, p: int = 2, generator: torch.Generator | None = None) -> float:
    """Sliced p-Wasserstein distance between point sets x [N, D] and y [M, D] (Rabin et al. 2011):
    (mean over unit directions of W_p^p of the 1-D projections)^(1/p). In 2-D the directions are evenly
    spaced angles in [0, pi) (deterministic); otherwise random. Unequal N, M compare quantiles."""
    x, y = x.double().cpu().reshape(x.shape[0], -1), y.double().cpu().reshape(y.shape[0], -1)
    if x.shape[1] != y.shape[1]:
        raise LumenkitError(f"point sets differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    D = x.shape[1]
    if D == 2:
        dirs = _directions(n_proj)
    else:
        dirs = torch.randn(n_proj, D, generator=generator, dtype=torch.float64)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    px, py = (dirs @ x.T).sort(-1).values.T, (dirs @ y.T).sort(-1).values.T  # [N, P]
    if px.shape[0] != py.shape[0]:
        n = max(px.shape[0], py.shape[0])
        q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        px, py = _quantiles(px, q), _quantiles(py, q)
    return float(((px - py).abs() ** p).mean() ** (1.0 / p))


def _directions(n_proj: int) -> torch.Tensor:
    th = (torch.arange(n_proj, dtype=torch.float64) + 0.5) / n_proj * math.pi
    return torch.stack([th.cos(), th.sin()], -1)


def sliced_wasserstein_to_mixture(x: torch.Tensor, mixture: "GaussianMixture2D", n_proj: int = 128, p: int = 2) -> float:
    """Sliced p-Wasserstein distance between samples x [N, 2] and the exact mixture: each projection's
    sorted samples against the mixture's projected quantiles at (i + 0.5)/N. No second sample's noise."""
    x = x.double().cpu()
    dirs = _directions(n_proj)
    px = (dirs @ x.T).sort(-1).values  # [P, N]
    q = (torch.arange(x.shape[0], dtype=torch.float64) + 0.5) / x.shape[0]
    return float(((px - mixture.projected_quantiles(dirs, q).T).abs() ** p).mean() ** (1.0 / p))


def _quantiles(sorted_vals: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    n = sorted_vals.shape[0]
    pos = (q * n - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    f = (pos - lo)[:, None]
    return sorted_vals[lo] * (1 - f) + sorted_vals[hi] * f


def fit_mixture(x: torch.Tensor, init: GaussianMixture2D, iters: int = 30) -> GaussianMixture2D:
    """Maximum-likelihood K-component fit of x [N, 2] by EM started from `init` (the truth), vectorised."""
    x = x.double().cpu()
    m = init
    for _ in range(iters):
        r = torch.softmax(m.component_log_probs(x), -1)  # [N, K]
        nk = r.sum(0).clamp_min(1e-12)
        means = (r.T @ x) / nk[:, None]
        d = x[:, None, :] - means[None]
        covs = torch.einsum("nk,nki,nkj->kij", r, d, d) / nk[:, None, None] + 1e-9 * torch.eye(2, dtype=torch.float64)
        m = GaussianMixture2D(nk / nk.sum(), means, covs)
    return m


def mixture_errors(fit: GaussianMixture2D, truth: GaussianMixture2D) -> dict[str, float]:
    """Largest component errors: |w - w*|, ||mu - mu*||, ||S - S*||_F / ||S*||_F."""
    return {
        "weight_err": float((fit.weights - truth.weights).abs().max()),
        "mean_err": float((fit.means - truth.means).norm(dim=-1).max()),
        "cov_rel_err": float(((fit.covs - truth.covs).flatten(1).norm(dim=-1) / truth.covs.flatten(1).norm(dim=-1)).max()),
    }
