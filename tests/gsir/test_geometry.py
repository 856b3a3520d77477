"""depth_to_normal (GS-IR depthmapToNormalCUDA) against analytic planes and spheres."""
import math

import pytest
import torch

from lumenkit.gsir.geometry import depth_to_normal, normals_from_depth, valid_normal_pixels
from lumenkit.gsir.camera import Camera


def look_at_gl(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """Blender/OpenGL camera-to-world (camera looks down its -z axis) from eye to target."""
    eye, target, up = (torch.tensor(v, dtype=torch.float64) for v in (eye, target, up))
    back = eye - target
    back = back / back.norm()
    right = torch.linalg.cross(up, back)
    right = right / right.norm()
    true_up = torch.linalg.cross(back, right)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, back, eye
    return c2w


def camera_rays(cam: Camera) -> torch.Tensor:
    """[H, W, 3] camera-space rays with z = 1 through pixel centres."""
    K = cam.K.double()
    v, u = torch.meshgrid(torch.arange(cam.height) + 0.5, torch.arange(cam.width) + 0.5, indexing="ij")
    return torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], dim=-1).double()


def make_camera(eye, size=(48, 40)) -> Camera:
    cam = Camera.from_fov(look_at_gl(eye), math.radians(45.0), *size)
    return Camera(cam.viewmat.double(), cam.K.double(), cam.width, cam.height)


def test_plane_normals_exact():
    cam = make_camera((2.0, -3.0, 1.5))
    n = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    n = n / n.norm()
    c = 0.2  # plane n . X = c
    R, t = cam.viewmat[:3, :3], cam.viewmat[:3, 3]
    n_cam = R @ n
    depth = (c + n_cam @ t) / (camera_rays(cam) @ n_cam)  # [H, W] z of the ray / plane hit
    assert (depth > 0.5).all()
    normals = depth_to_normal(depth[None], cam)
    facing = n if torch.dot(n, cam.camera_center - c * n) > 0 else -n
    inner = normals[:, 1:-1, 1:-1]
    assert torch.allclose(inner, facing[:, None, None].expand_as(inner), atol=1e-9)
    # borders are skipped
    assert (normals[:, 0] == 0).all() and (normals[:, -1] == 0).all()
    assert (normals[:, :, 0] == 0).all() and (normals[:, :, -1] == 0).all()


def sphere_depth(cam: Camera, radius: float = 1.0):
    """z-depth of a sphere at the origin (0 where missed) and the exact world normals [3, H, W]."""
    rays_c = camera_rays(cam)  # [H, W, 3], z = 1
    R = cam.viewmat[:3, :3]
    o = cam.camera_center
    d = rays_c @ R  # world direction, not unit (its camera z is 1)
    a = (d * d).sum(-1)
    b = 2 * (d @ o)
    cc = o @ o - radius**2
    disc = b * b - 4 * a * cc
    hit = disc > 0
    s = (-b - torch.sqrt(disc.clamp_min(0))) / (2 * a)  # param along d; camera z equals s
    depth = torch.where(hit, s, torch.zeros_like(s))
    X = o + s[..., None] * d
    return depth, (X / radius).permute(2, 0, 1), hit


def sphere_normal_error(size):
    cam = make_camera((0.5, -3.5, 1.0), size=size)
    depth, n_true, _ = sphere_depth(cam)
    normals = depth_to_normal(depth[None], cam)
    valid = (normals != 0).any(0)
    return torch.rad2deg(torch.acos((normals * n_true).sum(0)[valid].clamp(-1, 1))).mean()


def test_sphere_normals_converge():
    """One-sided differences are first-order: halving the pixel size halves the mean error."""
    e1, e2 = sphere_normal_error((96, 80)), sphere_normal_error((192, 160))
    assert e1 < 1.5 and 0.4 < e2 / e1 < 0.6, (e1, e2)


def test_sphere_normals_and_invalid_handling():
    cam = make_camera((0.5, -3.5, 1.0), size=(96, 80))
    depth, n_true, hit = sphere_depth(cam)
    normals = depth_to_normal(depth[None], cam)
    valid = (normals != 0).any(0)
    # every pixel that has a normal is on the sphere and >2 px from the silhouette and the border
    hit_f = hit.double()[None, None]
    interior = -torch.nn.functional.max_pool2d(-hit_f, 5, 1, 2)[0, 0] > 0  # all 5x5 hit
    interior[0, :] = interior[-1, :] = interior[:, 0] = interior[:, -1] = False
    assert torch.equal(valid, interior)
    assert valid.sum() > 1000
    cos = (normals * n_true).sum(0)[valid].clamp(-1, 1)
    ang = torch.rad2deg(torch.acos(cos))
    assert ang.mean() < 1.5 and ang.max() < 3.0, (ang.mean(), ang.max())
    assert torch.allclose(normals.norm(dim=0)[valid], torch.ones(int(valid.sum()), dtype=torch.float64))


def test_one_sided_difference_at_depth_edge():
    """Across a depth discontinuity the smaller-difference neighbour is used, so both sides keep the
    exact normal of their own plane (fronto-parallel planes at two depths)."""
    cam = make_camera((0.0, -4.0, 0.0), size=(40, 32))
    depth = torch.full((32, 40), 2.0, dtype=torch.float64)
    depth[:, 20:] = 3.0
    normals = depth_to_normal(depth, cam)
    facing = -cam.viewmat[2, :3]  # camera's -z axis in world = towards the camera
    inner = normals[:, 1:-1, 1:-1]
    assert torch.allclose(inner, facing[:, None, None].expand_as(inner), atol=1e-9)


def test_masks_and_normal_bg():
    cam = make_camera((0.5, -3.5, 1.0), size=(48, 40))
    depth, _, hit = sphere_depth(cam)
    depth[20, 24] = 0.005  # an invalid pixel inside the object (< 0.01) kills its 5x5 neighbourhood
    out = normals_from_depth(depth, cam, normal_bg=torch.tensor([0.0, 0.0, 1.0]))
    raw = depth_to_normal(depth, cam)
    assert (raw[:, 18:23, 22:27] == 0).all()
    assert torch.equal(out["mask_from_depth"][0], (raw == 0).all(0))
    assert (out["normal_map_from_depth"][:, out["mask_from_depth"][0]] == torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)[:, None]).all()
    # normal_bg has zero channels, so replaced pixels are not in normal_from_depth_mask
    assert torch.equal(out["normal_from_depth_mask"], (raw != 0).all(0))
    assert torch.equal(valid_normal_pixels(depth) & (raw != 0).any(0), (raw != 0).any(0))


def test_depth_shape_checked():
    cam = make_camera((0.0, -4.0, 0.0), size=(40, 32))
    with pytest.raises(ValueError):
        depth_to_normal(torch.ones(31, 40), cam)


def roof_depth(cam: Camera):
    """z-depth of a convex crease: two planes x + z = 0 and -x + z = 0 meeting along the world y axis,
    seen from +z; returns depth [H, W] and the exact world normals [3, H, W] of the face each ray hits."""
    rays_c = camera_rays(cam)
    R, o = cam.viewmat[:3, :3], cam.camera_center
    d = rays_c @ R  # world directions with camera z = 1
    normals = [torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64) / math.sqrt(2), torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64) / math.sqrt(2)]
    ts = torch.stack([-(o @ n) / (d @ n) for n in normals])  # ray parameter = camera z of each plane hit
    depth, face = ts.min(0)  # the roof z = -|x| is the lower envelope, seen from above: the nearer hit
    n = torch.stack(normals)[face].permute(2, 0, 1)
    return depth, n


def test_curvature_side_rule_keeps_crease_pixels_on_their_face():
    """At a crease the depth is continuous, so GS-IR's smaller-step rule differentiates across it and
    tilts the normals of the pixels next to it; the curvature rule (lumenkit option) picks the side
    that continues linearly and is exact everywhere but on pixels where no side is a single face."""
    cam = make_camera((0.3, -0.4, 3.0), size=(48, 40))
    depth, n_true = roof_depth(cam)
    inner = (slice(None), slice(2, -2), slice(2, -2))
    cos_err = lambda n: (n * n_true).sum(0)[inner[1:]]  # noqa: E731
    gsir = depth_to_normal(depth, cam, side_rule="depth")
    curv = depth_to_normal(depth, cam, side_rule="curvature")
    wrong_gsir = cos_err(gsir) < math.cos(math.radians(1.0))
    wrong_curv = cos_err(curv) < math.cos(math.radians(1.0))
    assert wrong_gsir.sum() >= 20  # a column of tilted normals along the crease
    assert wrong_curv.sum() < wrong_gsir.sum() / 4
    # away from the crease both rules are exact
    far = (n_true[inner][0].abs() > 0) & ~torch.nn.functional.max_pool2d(wrong_gsir[None, None].double(), 5, 1, 2)[0, 0].bool()
    assert torch.allclose(curv[inner][:, far], n_true[inner][:, far], atol=1e-6)
    with pytest.raises(ValueError, match="side_rule"):
        depth_to_normal(depth, cam, side_rule="median")
