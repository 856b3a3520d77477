"""What every sampler shares besides the step math: the model wrapper and the per-step hooks.

`Denoiser` turns the user's model into eps(x_t, step k): classifier-free guidance batched into one
model call (x, t and cond concatenated [uncond, cond], as the seed), x0 / v parameterization converted
to eps, the score corrector. `Hooks` carries the noise source, inpainting, the callback, intermediates
and the progress bar. Both are built once per `sample()` call; the sampler functions only read them.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.diffusion.timesteps import StepPlan

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def _cat_cond(uncond: Any, cond: Any) -> Any:
    """torch.cat([uncond, cond]) for a tensor, or per entry for a dict / list of tensors (CompVis c_crossattn)."""
    if isinstance(cond, torch.Tensor):
        if not isinstance(uncond, torch.Tensor):
            raise LumenkitError("uncond must have the same structure as cond (a tensor here)")
        return torch.cat([uncond, cond])
    if isinstance(cond, dict):
        if not isinstance(uncond, dict) or set(uncond) != set(cond):
            raise LumenkitError(f"uncond must be a dict with the same keys as cond ({sorted(cond)})")
        return {k: _cat_cond(uncond[k], cond[k]) for k in cond}
    if isinstance(cond, (list, tuple)):
        if not isinstance(uncond, (list, tuple)) or len(uncond) != len(cond):
            raise LumenkitError("uncond must be a list of the same length as cond")
        return [_cat_cond(u, c) for u, c in zip(uncond, cond)]
    raise LumenkitError(f"cond must be a tensor, a dict or a list of tensors for guidance, got {type(cond).__name__}")


class Denoiser:
    """eps(x_t, step k) from the user's model: CFG batched into one call, parameterization -> eps,
    score corrector. Timestep tensors for every step are built once ([n, B] or [n, 2B] long)."""

    def __init__(
        self,
        model: ModelFn,
        plan: StepPlan,
        batch: int,
        device: torch.device,
        *,
        cond: Any = None,
        uncond: Any = None,
        guidance_scale: float = 1.0,
        parameterization: str = "eps",
        score_corrector: Any = None,
        corrector_kwargs: dict | None = None,
    ):
        self.model = model
        self.cfg = uncond is not None and guidance_scale != 1.0
        self.scale = float(guidance_scale)
        self.cond = cond
        self.c_in = _cat_cond(uncond, cond) if self.cfg else cond
        reps = 2 if self.cfg else 1
        n = len(plan)
        ts = torch.as_tensor(plan.timesteps, dtype=torch.long).to(device)
        self.t_in = ts.view(n, 1).expand(n, reps * batch).contiguous()
        self.t_single = self.t_in[:, :batch] if self.cfg else self.t_in
        self.sqrt_a = np.sqrt(plan.a).tolist()
        self.sqrt_1ma = np.sqrt(1.0 - plan.a).tolist()
        self.parameterization = parameterization
        self.score_corrector = score_corrector
        self.corrector_kwargs = corrector_kwargs or {}

    def __call__(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """x [B, ...] in VP space at step k's timestep -> eps [B, ...]."""
        if self.cfg:
            out = self.model(torch.cat([x, x]), self.t_in[k], self.c_in)
            out_u, out_c = out.chunk(2)
            out = torch.lerp(out_u, out_c, self.scale)  # out_u + s (out_c - out_u); linear, so before conversion
        else:
            out = self.model(x, self.t_in[k], self.cond)
        if out.shape != x.shape:
            raise LumenkitError(f"model returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        if self.parameterization == "x0":  # eps = (x - sqrt(a) x0) / sqrt(1 - a)
            out = (x - out * self.sqrt_a[k]) / self.sqrt_1ma[k]
        elif self.parameterization == "v":  # eps = sqrt(a) v + sqrt(1 - a) x
            out = torch.add(out * self.sqrt_a[k], x, alpha=self.sqrt_1ma[k])
        if self.score_corrector is not None:
            sc = self.score_corrector
            fn = sc.modify_score if hasattr(sc, "modify_score") else sc
            out = fn(self.model, out, x, self.t_single[k], self.cond, **self.corrector_kwargs)
        return out


class Hooks:
    """What every sampler shares: the noise source, inpainting, callback, intermediates, progress bar."""

    def __init__(
        self,
        n: int,
        *,
        noise: Callable[[torch.Tensor], torch.Tensor],
        x0: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        callback: Callable[[dict], Any] | None = None,
        log_every_t: int = 100,
        progress: bool = True,
        desc: str = "sampling",
        timesteps: np.ndarray | None = None,
    ):
        self.n = n
        self.noise = noise
        self.x0 = x0
        self.mask = mask
        self.callback = callback
        self.log_every_t = max(int(log_every_t), 1)
        self.progress = progress
        self.desc = desc
        self.timesteps = timesteps.tolist() if timesteps is not None else list(range(n))
        self.intermediates: dict[str, list[torch.Tensor]] = {"x_inter": [], "pred_x0": []}

    def steps(self):
        if not self.progress:
            return range(self.n)
        from tqdm.auto import tqdm

        return tqdm(range(self.n), desc=self.desc, total=self.n, leave=False)

    def _logged(self, k: int) -> bool:
        index = self.n - k - 1  # CompVis: index counts down to 0
        return index % self.log_every_t == 0 or index == self.n - 1

    def wants_x0(self, k: int) -> bool:
        """Whether step k must materialise pred_x0 (callback or logged step)."""
        return self.callback is not None or self._logged(k)

    def record(self, k: int, x: torch.Tensor, pred_x0: Callable[[], torch.Tensor] | torch.Tensor | None) -> None:
        if not self.wants_x0(k):
            return
        p = pred_x0() if callable(pred_x0) else pred_x0
        if self._logged(k):
            self.intermediates["x_inter"].append(x)
            self.intermediates["pred_x0"].append(p)
        if self.callback is not None:
            self.callback({"x": x, "i": k, "t": self.timesteps[k], "denoised": p})

    def inpaint(self, x: torch.Tensor, scale: float, noise_scale: float) -> torch.Tensor:
        """CompVis: img = q_sample(x0, t) * mask + (1 - mask) * img (mask == 1 keeps x0, re-noised)."""
        if self.mask is None:
            return x
        known = torch.add(self.x0 * scale, self.noise(self.x0), alpha=noise_scale)
        return known * self.mask + (1.0 - self.mask) * x
