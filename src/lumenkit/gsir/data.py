"""GS-IR data: readers of NeRF-synthetic and TensoIR-synthetic scene folders, and their conventions.

Conventions
-----------
* Cameras in the json files are Blender/OpenGL camera-to-world matrices (x right, y up, looking
  down -z), as in NeRF-synthetic and TensoIR-synthetic; `View.camera` turns one into the
  rasterizer's `Camera` (camera.py: OpenCV world->camera view matrix and pinhole intrinsics with the
  principal point at (W/2, H/2); pixel i covers [i, i+1)).
* Images (rgba PNGs) are sRGB-encoded with straight (not premultiplied) alpha. Readers composite
  them over the background: rgb * a + bg * (1 - a), in sRGB, as 3DGS / GS-IR do.
* World is z-up. Environment maps are lat-long [H, 2H, 3] linear radiance (.hdr) in Mitsuba's
  `envmap` parameterisation rotated by ENV_TO_WORLD (local +y -> world +z); `envmap_directions`
  gives the world direction of every pixel.

Layouts (`read_scene(layout=...)`)
----------------------------------
* ``nerf``: DIR/transforms_{train,test}.json (camera_angle_x, frames[{file_path, transform_matrix}]),
  images at file_path + ".png"; lumenkit's test frames also name their GT maps (``normal_path``,
  ``albedo_path``, ...; synth.py writes this layout).
* ``tensoir``: DIR/train_XXX/ and DIR/test_XXX/, each with metadata.json (cam_angle_x,
  cam_transform_mat), rgba.png, and for test views albedo.png, normal.png, rgba_<env>.png.
* ``auto``: nerf when transforms_train.json exists, tensoir otherwise; where a folder has both (the
  TensoIR-synthetic download does) and only the TensoIR test views carry GT normals, tensoir.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lumenkit.common.config import check_choice, read_json
from lumenkit.common.errors import LumenkitError
from lumenkit.gsir.camera import Camera
from lumenkit.gsir.config import LAYOUTS

# local (Mitsuba envmap frame, +y up) -> world (z up)
ENV_TO_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
DEPTH_SCALE = 1e-3  # scene units per 16-bit step in *_depth.png
GT_KEYS = ("albedo", "normal", "depth", "mask", "roughness", "metallic")


def envmap_directions(height: int, width: int | None = None) -> np.ndarray:
    """World unit directions [H, W, 3] of lat-long pixel centres (Mitsuba envmap mapping, ENV_TO_WORLD)."""
    width = width or 2 * height
    u = (np.arange(width) + 0.5) / width
    v = (np.arange(height) + 0.5) / height
    phi, theta = np.meshgrid(u * 2 * np.pi, v * np.pi)
    local = np.stack([np.sin(theta) * np.sin(phi), np.cos(theta), -np.sin(theta) * np.cos(phi)], -1)
    return local @ ENV_TO_WORLD.T



# ========================================================================================= readers
@dataclass
class View:
    """One posed image. image: [3, H, W] sRGB in [0, 1] composited over the background;
    alpha: [1, H, W]; c2w: Blender/OpenGL [4, 4]; fov_x radians; gt_paths: extra ground truth files."""

    name: str
    image: torch.Tensor
    alpha: torch.Tensor
    c2w: np.ndarray
    fov_x: float
    gt_paths: dict[str, Path] = field(default_factory=dict)
    relit_paths: dict[str, Path] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return int(self.image.shape[2])

    @property
    def height(self) -> int:
        return int(self.image.shape[1])

    def camera(self, device: torch.device | str = "cpu") -> Camera:
        return Camera.from_fov(self.c2w, self.fov_x, self.width, self.height, device=device)


@dataclass
class SceneData:
    """A scene folder read into memory: train and test views plus its background colour."""

    root: Path
    train: list[View]
    test: list[View]
    background: tuple[float, float, float]
    extent: float  # radius of the camera centres' bounding sphere x 1.1 (3DGS cameras_extent)
    layout: str = "nerf"  # the layout read: nerf | tensoir
    layout_note: str = ""  # why (read_scene's choice under layout="auto")


def _resolve_image(root: Path, file_path: str, suffix: str = ".png") -> Path:
    p = (root / file_path).resolve() if not Path(file_path).is_absolute() else Path(file_path)
    if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".exr", ".hdr"):
        return p
    return p.with_name(p.name + suffix)


def _load_rgba(path: Path, background, resolution_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    import cv2

    from lumenkit.common.images import read_image

    img = read_image(path)
    if resolution_scale != 1.0:
        h, w = img.shape[:2]
        img = cv2.resize(img, (max(1, round(w / resolution_scale)), max(1, round(h / resolution_scale))), interpolation=cv2.INTER_AREA)
    if img.shape[2] == 4:
        rgb, a = img[..., :3], img[..., 3:4]
    else:
        rgb, a = img[..., :3], np.ones_like(img[..., :1])
    rgb = rgb * a + np.asarray(background, np.float32) * (1 - a)
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))), torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def is_nerf_synthetic(root: str | Path) -> bool:
    return (Path(root) / "transforms_train.json").is_file()


def is_tensoir_synthetic(root: str | Path) -> bool:
    return any(Path(root).glob("train_*/metadata.json"))


def _nerf_test_has_normals(root: Path) -> bool:
    path = root / "transforms_test.json"
    if not path.is_file():
        return False
    meta = read_json(path, what="transforms file")
    frames = meta.get("frames") if isinstance(meta, dict) else None
    return bool(frames) and all(isinstance(f, dict) and "normal_path" in f for f in frames)


def pick_layout(root: str | Path, layout: str = "auto") -> tuple[str, str]:
    """(layout, why) of a scene folder: 'nerf' or 'tensoir' (see the module docstring); an explicit
    layout the folder lacks, or a folder with neither, is a LumenkitError."""
    root = Path(root)
    check_choice("layout", layout, LAYOUTS)
    nerf, tensoir = is_nerf_synthetic(root), is_tensoir_synthetic(root)
    if layout == "nerf":
        if not nerf:
            raise LumenkitError(f"--layout nerf: {root} has no transforms_train.json")
        return "nerf", "as asked (--layout nerf)"
    if layout == "tensoir":
        if not tensoir:
            raise LumenkitError(f"--layout tensoir: {root} has no train_XXX/metadata.json folders")
        return "tensoir", "as asked (--layout tensoir)"
    if nerf and tensoir:
        if not _nerf_test_has_normals(root) and any(root.glob("test_*/normal.png")):
            return "tensoir", "both layouts present; only the TensoIR test views carry GT normals (--layout nerf to override)"
        return "nerf", "both layouts present; transforms_*.json chosen (--layout tensoir to override)"
    if nerf:
        return "nerf", "transforms_train.json"
    if tensoir:
        return "tensoir", "train_XXX/metadata.json folders"
    raise LumenkitError(
        f"-s/--source_path {root}: not a NeRF-synthetic or TensoIR-synthetic scene folder "
        "(expected transforms_train.json, or train_XXX/metadata.json folders)"
    )


def _read_transforms(root: Path, split: str, background, resolution_scale: float) -> list[View]:
    path = root / f"transforms_{split}.json"
    if not path.is_file():
        if split == "test":
            return []
        raise LumenkitError(f"{root}: not a NeRF-synthetic scene folder (no transforms_train.json; expected transforms_train.json / transforms_test.json with camera_angle_x and frames)")
    meta = read_json(path, what="transforms file")
    if not isinstance(meta, dict) or "camera_angle_x" not in meta or not isinstance(meta.get("frames"), list):
        raise LumenkitError(f"{path}: missing 'camera_angle_x' or 'frames' (NeRF-synthetic transforms file expected)")
    fov = float(meta["camera_angle_x"])
    views = []
    for k, fr in enumerate(meta["frames"]):
        if "file_path" not in fr or "transform_matrix" not in fr:
            raise LumenkitError(f"{path}: frame {k} lacks 'file_path' or 'transform_matrix'")
        c2w = np.asarray(fr["transform_matrix"], dtype=np.float64)
        if c2w.shape != (4, 4):
            raise LumenkitError(f"{path}: frame {k} transform_matrix has shape {c2w.shape}, expected 4x4")
        img_path = _resolve_image(root, fr["file_path"])
        if not img_path.is_file():
            raise LumenkitError(f"{path}: frame {k} image {img_path} does not exist")
        image, alpha = _load_rgba(img_path, background, resolution_scale)
        gt = {key: _resolve_image(root, fr[f"{key}_path"]) for key in GT_KEYS if f"{key}_path" in fr}
        relit = {n: _resolve_image(root, p) for n, p in (fr.get("relit_paths") or {}).items()}
        views.append(View(Path(fr["file_path"]).name, image, alpha, c2w, fov, gt, relit))
    return views


def _read_tensoir(root: Path, background, resolution_scale: float) -> tuple[list[View], list[View]]:
    """TensoIR-synthetic: root/train_XXX/{metadata.json, rgba.png}, root/test_XXX/{..., albedo.png, normal.png, rgba_<env>.png}."""
    splits: dict[str, list[View]] = {"train": [], "test": []}
    for split in splits:
        for d in sorted(root.glob(f"{split}_*")):
            mpath = d / "metadata.json"
            if not mpath.is_file():
                continue
            meta = read_json(mpath, what="TensoIR metadata file")
            if not isinstance(meta, dict) or "cam_transform_mat" not in meta or "cam_angle_x" not in meta:
                raise LumenkitError(f"{mpath}: missing 'cam_transform_mat' or 'cam_angle_x' (TensoIR-synthetic metadata expected)")
            vals = meta["cam_transform_mat"]
            try:
                vals = [float(v) for v in (vals.split(",") if isinstance(vals, str) else vals)]
                fov = float(meta["cam_angle_x"])
            except (TypeError, ValueError):
                raise LumenkitError(f"{mpath}: cam_transform_mat / cam_angle_x are not numbers") from None
            if len(vals) != 16:
                raise LumenkitError(f"{mpath}: cam_transform_mat has {len(vals)} values, expected 16 (a 4x4 matrix)")
            c2w = np.asarray(vals, dtype=np.float64).reshape(4, 4)
            if not (d / "rgba.png").is_file():
                raise LumenkitError(f"{d / 'rgba.png'}: missing (TensoIR view without its image)")
            image, alpha = _load_rgba(d / "rgba.png", background, resolution_scale)
            gt = {k: d / f"{k}.png" for k in ("albedo", "normal") if (d / f"{k}.png").is_file()}
            relit = {p.stem[5:]: p for p in d.glob("rgba_*.png")}
            splits[split].append(View(d.name, image, alpha, c2w, fov, gt, relit))
    return splits["train"], splits["test"]


def read_scene(root: str | Path, *, white_background: bool = False, resolution_scale: float = 1.0, eval: bool = True,
               layout: str = "auto") -> SceneData:
    """Read a NeRF-synthetic (transforms_*.json) or TensoIR-synthetic (train_XXX/metadata.json) folder.

    layout: auto | nerf | tensoir (`pick_layout`; the result's layout / layout_note say which and why).
    eval=False puts the test views into training as well (the 3DGS convention without --eval).
    """
    root = Path(root)
    if not root.is_dir():
        raise LumenkitError(f"-s/--source_path {root}: no such folder")
    if resolution_scale <= 0:
        raise LumenkitError(f"--resolution {resolution_scale}: must be positive")
    bg = (1.0, 1.0, 1.0) if white_background else (0.0, 0.0, 0.0)
    picked, note = pick_layout(root, layout)
    if picked == "nerf":
        train = _read_transforms(root, "train", bg, resolution_scale)
        test = _read_transforms(root, "test", bg, resolution_scale)
    else:
        train, test = _read_tensoir(root, bg, resolution_scale)
    if not train:
        raise LumenkitError(f"{root}: the scene has no training views")
    if not eval:
        train = train + test
    centres = np.stack([v.c2w[:3, 3] for v in train])
    extent = float(np.linalg.norm(centres - centres.mean(0), axis=1).max() * 1.1)
    return SceneData(root, train, test, bg, extent, picked, note)


def load_gt(view: View, key: str) -> np.ndarray:
    """Ground-truth map of a test view: albedo [H,W,3] sRGB, normal [H,W,3] world unit vectors (0 where
    no object), depth [H,W] z-depth, mask [H,W] bool, roughness/metallic [H,W]."""
    from lumenkit.common.images import read_image, read_png_text

    if key not in view.gt_paths:
        raise LumenkitError(f"view {view.name}: the scene has no ground-truth {key} map")
    path = view.gt_paths[key]
    img = read_image(path)
    if key == "normal":
        n = img[..., :3] * 2 - 1
        valid = (img[..., 3] > 0.5) if img.shape[2] == 4 else np.linalg.norm(n, axis=-1) > 0.5
        n = n / np.clip(np.linalg.norm(n, axis=-1, keepdims=True), 1e-8, None)
        n[~valid] = 0
        return n.astype(np.float32)
    if key == "depth":
        scale = float(read_png_text(path).get("depth_scale", DEPTH_SCALE))
        return (img[..., 0] * 65535.0 * scale).astype(np.float32)
    if key == "mask":
        return img[..., 0] > 0.5
    if key in ("roughness", "metallic"):
        return img[..., 0]
    return img[..., :3]
