"""The Gaussian model of GS-IR stage 1: 3DGS parameters plus per-Gaussian normal and PBR materials.

Parameters (raw, optimised) and activations, as 3DGS's GaussianModel / GS-IR's extension:
    xyz [N, 3] world, features_dc [N, 1, 3] + features_rest [N, (D+1)^2 - 1, 3] SH coefficients,
    scaling [N, 3] log-scales (exp), rotation [N, 4] wxyz (normalised), opacity [N, 1] logits (sigmoid),
    normal [N, 3] (normalised), albedo [N, 3], roughness [N, 1], metallic [N, 1] logits (sigmoid).
Densification (clone / split by view-space gradient, prune, opacity reset) and the optimizer (Adam
with 3DGS's per-parameter learning rates, exponential decay of the position LR) live here too.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lumenkit.gsir._torch_impl import quat_to_rotmat
from lumenkit.gsir.config import OptimConfig
from lumenkit.gsir.sh import rgb_to_sh0

__all__ = ["GaussianModel", "OptimConfig", "expon_lr", "inverse_sigmoid"]

PARAM_NAMES = ("xyz", "f_dc", "f_rest", "scaling", "rotation", "opacity", "normal", "albedo", "roughness", "metallic")


def inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x / (1 - x))


def expon_lr(step: int, lr_init: float, lr_final: float, lr_delay_steps: int = 0, lr_delay_mult: float = 1.0, max_steps: int = 1_000_000) -> float:
    """3DGS's get_expon_lr_func: log-linear from lr_init to lr_final over max_steps (with optional delay)."""
    if step < 0 or (lr_init == 0.0 and lr_final == 0.0):
        return 0.0
    if lr_delay_steps > 0:
        delay = lr_delay_mult + (1 - lr_delay_mult) * math.sin(0.5 * math.pi * min(max(step / lr_delay_steps, 0.0), 1.0))
    else:
        delay = 1.0
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return delay * math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)


class GaussianModel:
    """3D Gaussians with SH colour, normal and PBR materials (3DGS GaussianModel + GS-IR fields)."""

    def __init__(self, sh_degree: int = 3, device: torch.device | str = "cpu", cull_backfacing_normals: bool = False,
                 planar_depth: bool = False):
        self.max_sh_degree = int(sh_degree)
        # lumenkit render conventions (False = GS-IR), kept with the model so that every render agrees
        # with training: see view_normals and rasterize(planar_depth=...)
        self.cull_backfacing_normals = bool(cull_backfacing_normals)
        self.planar_depth = bool(planar_depth)
        self.active_sh_degree = 0
        self.device = torch.device(device)
        self.params: dict[str, torch.nn.Parameter] = {}
        self.optimizer: torch.optim.Adam | None = None
        self.spatial_lr_scale = 1.0
        self.optim_cfg = OptimConfig()
        self.max_radii2D = torch.empty(0, device=self.device)
        self.xyz_gradient_accum = torch.empty(0, 1, device=self.device)
        self.denom = torch.empty(0, 1, device=self.device)

    # ------------------------------------------------------------------ activated attributes
    @property
    def num_points(self) -> int:
        return int(self.params["xyz"].shape[0]) if self.params else 0

    @property
    def xyz(self) -> torch.Tensor:
        return self.params["xyz"]

    @property
    def scales(self) -> torch.Tensor:
        return torch.exp(self.params["scaling"])

    @property
    def quats(self) -> torch.Tensor:
        return F.normalize(self.params["rotation"], dim=-1)

    @property
    def opacities(self) -> torch.Tensor:
        """[N] in (0, 1)."""
        return torch.sigmoid(self.params["opacity"]).squeeze(-1)

    @property
    def sh(self) -> torch.Tensor:
        """[N, (D+1)^2, 3] SH coefficients (all bands; unused bands are masked by sh_degree)."""
        return torch.cat([self.params["f_dc"], self.params["f_rest"]], 1)

    @property
    def normals(self) -> torch.Tensor:
        return F.normalize(self.params["normal"], dim=-1)

    def view_normals(self, camera_center: torch.Tensor) -> torch.Tensor:
        """[N, 3] world normals that one view blends into its normal map.

        GS-IR blends every Gaussian's unit normal. With cull_backfacing_normals (lumenkit addition),
        normals facing away from the camera at camera_center [3] (world) are zeroed: such a Gaussian
        lies on a surface turned away, so it only shows through partial coverage (silhouettes,
        creases), where it drags the normalised blend off the visible surface."""
        n = self.normals
        if not self.cull_backfacing_normals:
            return n
        facing = ((camera_center - self.xyz.detach()) * n.detach()).sum(-1, keepdim=True) >= 0
        return n * facing

    @property
    def albedo(self) -> torch.Tensor:
        return torch.sigmoid(self.params["albedo"])

    @property
    def roughness(self) -> torch.Tensor:
        return torch.sigmoid(self.params["roughness"])

    @property
    def metallic(self) -> torch.Tensor:
        return torch.sigmoid(self.params["metallic"])

    # ------------------------------------------------------------------ creation
    def create_from_points(self, points: torch.Tensor, colors: torch.Tensor, spatial_lr_scale: float) -> None:
        """Init as 3DGS create_from_pcd: scale = mean distance to the 3 nearest neighbours, identity
        rotation, opacity 0.1; GS-IR: normal (0, 0, 1), material logits 1."""
        from scipy.spatial import cKDTree

        self.spatial_lr_scale = float(spatial_lr_scale)
        pts = points.detach().cpu().double().numpy()
        k = min(4, len(pts))
        d, _ = cKDTree(pts).query(pts, k=k)
        dist2 = np.clip((d[:, 1:] ** 2).mean(1) if k > 1 else np.full(len(pts), 1e-2), 1e-7, None)
        n = pts.shape[0]
        dev = self.device
        n_rest = (self.max_sh_degree + 1) ** 2 - 1
        rot = torch.zeros(n, 4, device=dev)
        rot[:, 0] = 1
        normal = torch.zeros(n, 3, device=dev)
        normal[:, 2] = 1
        init = {
            "xyz": points.float().to(dev),
            "f_dc": rgb_to_sh0(colors.float().to(dev))[:, None, :],
            "f_rest": torch.zeros(n, n_rest, 3, device=dev),
            "scaling": torch.log(torch.sqrt(torch.from_numpy(dist2).float())).to(dev)[:, None].repeat(1, 3),
            "rotation": rot,
            "opacity": inverse_sigmoid(0.1 * torch.ones(n, 1, device=dev)),
            "normal": normal,
            "albedo": torch.ones(n, 3, device=dev),
            "roughness": torch.ones(n, 1, device=dev),
            "metallic": torch.ones(n, 1, device=dev),
        }
        self.params = {k: torch.nn.Parameter(v.contiguous().requires_grad_(True)) for k, v in init.items()}
        self._reset_stats()

    def create_random(self, num_points: int, bound: float, spatial_lr_scale: float, generator: torch.Generator | None = None) -> None:
        """3DGS's synthetic-scene init: uniform points in [-bound, bound]^3 with random colours."""
        pts = (torch.rand(num_points, 3, generator=generator) * 2 - 1) * bound
        cols = torch.rand(num_points, 3, generator=generator)
        self.create_from_points(pts, cols, spatial_lr_scale)

    def _reset_stats(self) -> None:
        n, dev = self.num_points, self.device
        self.max_radii2D = torch.zeros(n, device=dev)
        self.xyz_gradient_accum = torch.zeros(n, 1, device=dev)
        self.denom = torch.zeros(n, 1, device=dev)

    # ------------------------------------------------------------------ optimizer
    def training_setup(self, cfg: OptimConfig) -> None:
        """Adam with one named group per parameter, 3DGS learning rates (eps 1e-15)."""
        self.optim_cfg = cfg
        lrs = {
            "xyz": cfg.position_lr_init * self.spatial_lr_scale,
            "f_dc": cfg.feature_lr,
            "f_rest": cfg.feature_lr / 20.0,
            "scaling": cfg.scaling_lr,
            "rotation": cfg.rotation_lr,
            "opacity": cfg.opacity_lr,
            "normal": cfg.normal_lr,
            "albedo": cfg.material_lr,
            "roughness": cfg.material_lr,
            "metallic": cfg.material_lr,
        }
        groups = [{"params": [self.params[k]], "lr": lrs[k], "name": k} for k in PARAM_NAMES]
        try:  # fused Adam (CPU and CUDA in torch >= 2.4): one kernel per group instead of ~10 ops
            self.optimizer = torch.optim.Adam(groups, lr=0.0, eps=1e-15, fused=True)
        except (RuntimeError, TypeError):
            self.optimizer = torch.optim.Adam(groups, lr=0.0, eps=1e-15)

    def update_learning_rate(self, iteration: int) -> float:
        """Exponential position LR decay (3DGS xyz_scheduler_args); returns the new xyz LR."""
        c = self.optim_cfg
        lr = expon_lr(iteration, c.position_lr_init * self.spatial_lr_scale, c.position_lr_final * self.spatial_lr_scale, 0, c.position_lr_delay_mult, c.position_lr_max_steps)
        for g in self.optimizer.param_groups:
            if g["name"] == "xyz":
                g["lr"] = lr
        return lr

    def oneup_sh_degree(self) -> None:
        if self.active_sh_degree < self.max_sh_degree:
            self.active_sh_degree += 1

    # ------------------------------------------------------------------ densification
    def _replace_params(self, new: dict[str, torch.Tensor], keep_state: torch.Tensor | None, n_new: int) -> None:
        """Swap every parameter for `new[name]`, carrying Adam moments: rows kept by `keep_state`
        (bool mask over old rows, or None for all) followed by n_new zero rows."""
        for group in self.optimizer.param_groups:
            name = group["name"]
            old = group["params"][0]
            p = torch.nn.Parameter(new[name].contiguous().requires_grad_(True))
            state = self.optimizer.state.pop(old, None)
            if state is not None:
                for key in ("exp_avg", "exp_avg_sq"):
                    t = state[key] if keep_state is None else state[key][keep_state]
                    state[key] = torch.cat([t, torch.zeros((n_new, *t.shape[1:]), device=t.device, dtype=t.dtype)], 0)
                self.optimizer.state[p] = state
            group["params"][0] = p
            self.params[name] = p

    def prune_points(self, prune_mask: torch.Tensor) -> None:
        keep = ~prune_mask
        self._replace_params({k: v.detach()[keep] for k, v in self.params.items()}, keep, 0)
        self.xyz_gradient_accum = self.xyz_gradient_accum[keep]
        self.denom = self.denom[keep]
        self.max_radii2D = self.max_radii2D[keep]

    def densification_postfix(self, new: dict[str, torch.Tensor]) -> None:
        n_new = next(iter(new.values())).shape[0]
        cat = {k: torch.cat([self.params[k].detach(), new[k]], 0) for k in self.params}
        self._replace_params(cat, None, n_new)
        self._reset_stats()

    def densify_and_clone(self, grads: torch.Tensor, grad_threshold: float, scene_extent: float) -> None:
        sel = (grads.norm(dim=-1) >= grad_threshold) & (self.scales.max(dim=1).values <= self.optim_cfg.percent_dense * scene_extent)
        self.densification_postfix({k: v.detach()[sel] for k, v in self.params.items()})

    def densify_and_split(self, grads: torch.Tensor, grad_threshold: float, scene_extent: float, n_split: int = 2) -> None:
        n0 = self.num_points
        padded = torch.zeros(n0, device=self.device)
        padded[: grads.shape[0]] = grads.squeeze(-1)
        sel = (padded >= grad_threshold) & (self.scales.max(dim=1).values > self.optim_cfg.percent_dense * scene_extent)
        stds = self.scales[sel].detach().repeat(n_split, 1)
        samples = torch.normal(torch.zeros_like(stds), stds)
        rots = quat_to_rotmat(self.quats[sel].detach()).repeat(n_split, 1, 1)
        new = {k: v.detach()[sel].repeat(n_split, *([1] * (v.dim() - 1))) for k, v in self.params.items()}
        new["xyz"] = (rots @ samples[..., None]).squeeze(-1) + self.xyz[sel].detach().repeat(n_split, 1)
        new["scaling"] = torch.log(self.scales[sel].detach().repeat(n_split, 1) / (0.8 * n_split))
        self.densification_postfix(new)
        prune = torch.cat([sel, torch.zeros(n_split * int(sel.sum()), dtype=torch.bool, device=self.device)])
        self.prune_points(prune)

    def densify_and_prune(self, max_grad: float, min_opacity: float, extent: float, max_screen_size: float | None) -> None:
        """3DGS densify_and_prune: clone small / split large Gaussians whose mean view-space gradient
        >= max_grad, then prune low opacity (< min_opacity), and (after the first opacity reset) Gaussians
        too large on screen (radius > max_screen_size px) or in the world (> 0.1 extent)."""
        grads = self.xyz_gradient_accum / self.denom
        grads[grads.isnan()] = 0.0
        self.densify_and_clone(grads, max_grad, extent)
        self.densify_and_split(grads, max_grad, extent)
        prune = self.opacities < min_opacity
        if max_screen_size:
            big_vs = self.max_radii2D > max_screen_size
            big_ws = self.scales.max(dim=1).values > 0.1 * extent
            prune = prune | big_vs | big_ws
        self.prune_points(prune)

    def add_densification_stats(self, viewspace_grad: torch.Tensor, visibility: torch.Tensor, radii: torch.Tensor) -> None:
        """Accumulate |dL/d(mean2D)| (NDC units, as 3DGS) and max screen radius of visible Gaussians."""
        vis = visibility[:, None]
        self.max_radii2D = torch.where(visibility, torch.maximum(self.max_radii2D, radii.float()), self.max_radii2D)
        self.xyz_gradient_accum += torch.where(vis, viewspace_grad[:, :2].norm(dim=-1, keepdim=True), 0.0)
        self.denom += vis.float()

    def reset_opacity(self) -> None:
        """3DGS opacity reset: opacity := min(opacity, 0.01), with fresh Adam moments for it."""
        new = inverse_sigmoid(torch.minimum(torch.sigmoid(self.params["opacity"].detach()), torch.full_like(self.params["opacity"], 0.01)))
        for group in self.optimizer.param_groups:
            if group["name"] == "opacity":
                old = group["params"][0]
                p = torch.nn.Parameter(new.requires_grad_(True))
                state = self.optimizer.state.pop(old, None)
                if state is not None:
                    state["exp_avg"] = torch.zeros_like(new)
                    state["exp_avg_sq"] = torch.zeros_like(new)
                    self.optimizer.state[p] = state
                group["params"][0] = p
                self.params["opacity"] = p

    # ------------------------------------------------------------------ state
    def state_dict(self, with_optimizer: bool = True) -> dict:
        """A safe state dict (tensors, ints, floats, str, lists, dicts) for torch.load(weights_only=True)."""
        sd = {
            "max_sh_degree": self.max_sh_degree,
            "active_sh_degree": self.active_sh_degree,
            "cull_backfacing_normals": self.cull_backfacing_normals,
            "planar_depth": self.planar_depth,
            "spatial_lr_scale": float(self.spatial_lr_scale),
            "params": {k: v.detach().cpu().clone() for k, v in self.params.items()},
            "max_radii2D": self.max_radii2D.cpu().clone(),
            "xyz_gradient_accum": self.xyz_gradient_accum.cpu().clone(),
            "denom": self.denom.cpu().clone(),
        }
        if with_optimizer and self.optimizer is not None:
            osd = self.optimizer.state_dict()
            sd["optimizer"] = {
                "state": {int(i): {k: (v.cpu().clone() if torch.is_tensor(v) else v) for k, v in s.items()} for i, s in osd["state"].items()},
                "param_groups": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in osd["param_groups"]],
            }
        return sd

    def load_state_dict(self, sd: dict, cfg: OptimConfig | None = None) -> None:
        from lumenkit.common.errors import LumenkitError

        missing = [k for k in PARAM_NAMES if k not in sd.get("params", {})]
        if missing:
            raise LumenkitError(f"checkpoint: missing Gaussian parameters {', '.join(missing)} (not a lumenkit gsir checkpoint?)")
        self.max_sh_degree = int(sd["max_sh_degree"])
        self.active_sh_degree = int(sd["active_sh_degree"])
        self.cull_backfacing_normals = bool(sd.get("cull_backfacing_normals", False))
        self.planar_depth = bool(sd.get("planar_depth", False))
        self.spatial_lr_scale = float(sd["spatial_lr_scale"])
        self.params = {k: torch.nn.Parameter(sd["params"][k].to(self.device).requires_grad_(True)) for k in PARAM_NAMES}
        self._reset_stats()
        if "max_radii2D" in sd and sd["max_radii2D"].shape[0] == self.num_points:
            self.max_radii2D = sd["max_radii2D"].to(self.device)
            self.xyz_gradient_accum = sd["xyz_gradient_accum"].to(self.device)
            self.denom = sd["denom"].to(self.device)
        if cfg is not None:
            self.training_setup(cfg)
            if "optimizer" in sd:
                osd = sd["optimizer"]
                groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in osd["param_groups"]]
                self.optimizer.load_state_dict({"state": {int(k): v for k, v in osd["state"].items()}, "param_groups": groups})
