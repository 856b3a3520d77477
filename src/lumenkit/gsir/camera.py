"""The pinhole camera of the rasterizer and its one constructor from NeRF-/TensoIR-synthetic poses.

Conventions
-----------
* Scene files give Blender/OpenGL camera-to-world matrices (x right, y up, looking down -z), as in
  NeRF-synthetic (``transform_matrix``) and TensoIR-synthetic (``cam_transform_mat``).
* `Camera` holds the OpenCV world->camera view matrix (x right, y down, z forward) and pinhole
  intrinsics in pixels; pixel (row i, column j) has its centre at continuous image coordinate
  (j + 0.5, i + 0.5), the coordinates ``K`` maps to, so the principal point (W/2, H/2) is the middle
  of the image (as gsplat).
* World is z-up in the scenes lumenkit synthesizes (`look_at_blender` builds their poses).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

BLENDER_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # c2w_gl @ this = c2w_cv


def focal_from_fov(fov_x: float, width: int) -> float:
    """Focal length in pixels for a horizontal field of view fov_x (radians)."""
    return 0.5 * width / math.tan(0.5 * fov_x)


def intrinsics(fov_x: float, width: int, height: int, fov_y: float | None = None) -> np.ndarray:
    """[3, 3] pinhole K, principal point at the image centre; square pixels (fy = fx) unless fov_y
    (radians) is given."""
    fx = focal_from_fov(fov_x, width)
    fy = fx if fov_y is None else 0.5 * height / math.tan(0.5 * fov_y)
    return np.array([[fx, 0.0, width / 2.0], [0.0, fy, height / 2.0], [0.0, 0.0, 1.0]])


def viewmat_from_blender(c2w_gl) -> np.ndarray:
    """Blender/OpenGL camera-to-world [4, 4] -> OpenCV world-to-camera [4, 4] (float64)."""
    return np.linalg.inv(np.asarray(c2w_gl, dtype=np.float64) @ BLENDER_TO_OPENCV)


def project_points(points: np.ndarray, c2w_gl: np.ndarray, fov_x: float, width: int, height: int) -> np.ndarray:
    """World points [N, 3] -> continuous pixel coordinates [N, 2] (x right, y down; pixel i = [i, i+1))."""
    vm = viewmat_from_blender(c2w_gl)
    pc = points @ vm[:3, :3].T + vm[:3, 3]
    uv = pc @ intrinsics(fov_x, width, height).T
    return uv[:, :2] / uv[:, 2:3]


def look_at_blender(eye: np.ndarray, target: np.ndarray = np.zeros(3), up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """Blender/OpenGL c2w [4, 4] of a camera at `eye` looking at `target` (world z up)."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    if np.linalg.norm(right) < 1e-8:
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    upv = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, upv, back, eye
    return m


@dataclass
class Camera:
    """A pinhole camera, OpenCV convention.

    viewmat: [4, 4] world -> camera (x right, y down, z forward); K: [3, 3] intrinsics in pixels
    (pixel centres at j + 0.5); width, height in pixels; near/far clip planes on view-space z.
    """

    viewmat: Tensor
    K: Tensor
    width: int
    height: int
    near: float = 0.01
    far: float = 100.0

    @property
    def camera_center(self) -> Tensor:
        """[3] camera position in world coordinates (-R^T t)."""
        R, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -R.T @ t

    @property
    def c2w(self) -> Tensor:
        """[4, 4] camera -> world, OpenCV axes."""
        return torch.linalg.inv(self.viewmat)

    @property
    def fov_x(self) -> float:
        """Horizontal field of view in radians."""
        return 2.0 * math.atan(self.width / (2.0 * float(self.K[0, 0])))

    @property
    def fov_y(self) -> float:
        """Vertical field of view in radians."""
        return 2.0 * math.atan(self.height / (2.0 * float(self.K[1, 1])))

    @classmethod
    def from_fov(cls, c2w_opengl, fov_x: float, width: int, height: int, *, fov_y: float | None = None,
                 near: float = 0.01, far: float = 100.0, device: torch.device | str = "cpu") -> "Camera":
        """Camera from a Blender/NeRF-synthetic camera-to-world matrix (OpenGL axes) and fov in radians.

        c2w_opengl: [4, 4] array or tensor (``transform_matrix`` of transforms_*.json); fov_x:
        ``camera_angle_x`` (radians); fov_y defaults to square pixels (fy = fx). Principal point at the
        image centre. viewmat and K are computed in float64 and stored as float32 on `device`.
        """
        if torch.is_tensor(c2w_opengl):
            c2w_opengl = c2w_opengl.detach().cpu().numpy()
        vm = torch.tensor(viewmat_from_blender(c2w_opengl), dtype=torch.float32, device=device)
        K = torch.tensor(intrinsics(fov_x, width, height, fov_y), dtype=torch.float32, device=device)
        return cls(viewmat=vm, K=K, width=int(width), height=int(height), near=near, far=far)

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "Camera":
        return Camera(self.viewmat.to(device, dtype), self.K.to(device, dtype), self.width, self.height, self.near, self.far)

    def project(self, points: Tensor) -> Tensor:
        """World points [..., 3] -> pixel coordinates [..., 2] (continuous, centres at j + 0.5)."""
        p = points @ self.viewmat[:3, :3].T.to(points) + self.viewmat[:3, 3].to(points)
        uv = p[..., :2] / p[..., 2:3]
        K = self.K.to(points)
        return torch.stack([K[0, 0] * uv[..., 0] + K[0, 2], K[1, 1] * uv[..., 1] + K[1, 2]], dim=-1)
