"""The attribute oracle: a small CNN that reads shape, colour, size, position and background of a
shapes-world image (GenEval's object detector, for our procedural world).

Trained on real procedural images of every attribute combination (the oracle is a measuring
instrument, not the generator, so it sees held-out colour+shape pairs too); its own accuracy on fresh
held-out images is reported beside every number it produces. Its 128-d penultimate features give the
"oracle-feature Fréchet distance" (a Fréchet distance like FID, but on these features: there is no
Inception network here).

Input: [B, 3, 64, 64] float in [-1, 1] (sRGB-encoded). Output: dict attribute -> logits [B, n_classes].
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lumenkit.common.errors import LumenkitError
from lumenkit.common.fileio import atomic_write_json, load_state_dict, save_state_dict
from lumenkit.t2i import data as D

HEADS = {k: len(D.ATTRIBUTE_VALUES[k]) for k in D.ATTRIBUTE_NAMES}


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Oracle(nn.Module):
    """Strided stem (64 -> 32 px), 3 conv blocks with max-pooling (-> 4 px), a flatten that keeps
    where things are (position and size heads need it) -> 128-d features -> 5 linear heads."""

    def __init__(self, width: int = 16, feature_dim: int = 128):
        super().__init__()
        self.width, self.feature_dim = width, feature_dim
        w = width
        self.body = nn.Sequential(
            _block(3, w, stride=2),
            _block(w, 2 * w), nn.MaxPool2d(2),
            _block(2 * w, 4 * w), nn.MaxPool2d(2),
            _block(4 * w, 4 * w), nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, feature_dim), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({k: nn.Linear(feature_dim, n) for k, n in HEADS.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 64, 64] in [-1, 1] -> [B, feature_dim]."""
        if x.shape[-2:] != (D.RESOLUTION, D.RESOLUTION):
            x = F.interpolate(x, size=(D.RESOLUTION, D.RESOLUTION), mode="area")
        return self.fc(self.body(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {k: h(f) for k, h in self.heads.items()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch: int = 256) -> dict[str, torch.Tensor]:
        """Class indices per attribute, dict -> long [B]."""
        self.eval()
        outs = [self(x[i : i + batch]) for i in range(0, x.shape[0], batch)]
        return {k: torch.cat([o[k] for o in outs]).argmax(1).cpu() for k in HEADS}

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
        self.eval()
        return torch.cat([self.features(x[i : i + batch]).float().cpu() for i in range(0, x.shape[0], batch)])

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_state_dict(folder / "oracle.safetensors", self.state_dict())
        atomic_write_json(folder / "config.json", {"width": self.width, "feature_dim": self.feature_dim, "heads": HEADS,
                                                    "values": {k: list(D.ATTRIBUTE_VALUES[k]) for k in HEADS}})
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "Oracle":
        folder = Path(folder)
        if (folder / "oracle").is_dir():
            folder = folder / "oracle"
        if not (folder / "oracle.safetensors").is_file():
            raise LumenkitError(f"{folder}: no oracle.safetensors (train it with `lumenkit t2i train oracle`)")
        cfg = json.loads((folder / "config.json").read_text())
        m = cls(cfg["width"], cfg["feature_dim"])
        m.load_state_dict(load_state_dict(folder / "oracle.safetensors"))
        return m.to(device).eval()


def oracle_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over heads of the cross-entropy."""
    return sum(F.cross_entropy(logits[k].float(), labels[k].to(logits[k].device)) for k in HEADS)


def verdicts(pred: dict[str, torch.Tensor], scenes: list[D.Scene]) -> dict[str, torch.Tensor]:
    """Per attribute bool [B]: prediction == the scene's attribute (first object); plus 'all'."""
    lab = D.labels_tensor(scenes)
    ok = {k: pred[k] == lab[k] for k in HEADS}
    ok["all"] = torch.stack(list(ok.values())).all(0)
    return ok


def describe(pred: dict[str, torch.Tensor], i: int) -> str:
    """The oracle's reading of image i as a caption."""
    obj = D.ShapeObject(*(D.ATTRIBUTE_VALUES[k][int(pred[k][i])] for k in ("shape", "colour", "size", "position")))
    return D.Scene((obj,), D.ATTRIBUTE_VALUES["background"][int(pred["background"][i])]).caption()


def degrade(images: torch.Tensor, generator: torch.Generator, max_blur: float = 1.5, max_noise: float = 0.06) -> torch.Tensor:
    """Soften and add noise the way a generator's output is imperfect: per image, a Gaussian blur with
    sigma ~ U(0, max_blur) px and Gaussian noise with std ~ U(0, max_noise) (on [-1, 1] values).
    Colours and geometry, the attributes the oracle reads, are unchanged. [B, 3, H, W] -> same."""
    from kornia.filters import gaussian_blur2d

    b = images.shape[0]
    sigma = (torch.rand(b, generator=generator) * max_blur).clamp(min=1e-3)
    blurred = gaussian_blur2d(images, 7, torch.stack([sigma, sigma], dim=1).to(images), border_type="replicate")
    noise_std = (torch.rand(b, 1, 1, 1, generator=generator) * max_noise).to(images)
    return (blurred + noise_std * torch.randn(images.shape, generator=generator).to(images)).clamp(-1, 1)


@torch.no_grad()
def heldout_accuracy(model: Oracle, n: int = 2000, seed: int = 31337, device: str | torch.device = "cpu", split: str = "all",
                     degraded: bool = False) -> dict[str, float]:
    """Accuracy per attribute and on all attributes at once, on n fresh images never seen in training
    (with `degraded`, after :func:`degrade` at its maximum strength range)."""
    rng = np.random.default_rng([seed, 99])
    b = D.make_batch(rng, n, split)
    images = degrade(b.images, torch.Generator().manual_seed(seed)) if degraded else b.images
    ok = verdicts(model.predict(images.to(device)), b.scenes)
    return {k: float(v.float().mean()) for k, v in ok.items()}
